//! Reading the Grafana dashboard: its panels, their queries, and the
//! substitutions Grafana would make before sending a query to Prometheus.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;

/// The dashboard file, relative to the broker crate.
pub fn path() -> PathBuf {
    grafana_path("dashboards/ordo.json")
}

/// A path inside the `grafana/` folder.
pub fn grafana_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../grafana")
        .join(rel)
}

/// A file of the `grafana/` folder as text.
pub fn grafana_file(rel: &str) -> String {
    let p = grafana_path(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// The parsed dashboard.
pub fn load() -> Value {
    let text = std::fs::read_to_string(path()).expect("read the dashboard JSON");
    serde_json::from_str(&text).expect("the dashboard is well-formed JSON")
}

/// Every panel, rows' nested panels included, in file order.
pub fn panels(dash: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            if let Some(nested) = p.get("panels") {
                walk(nested, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    out
}

/// One query of one panel.
#[derive(Debug, Clone)]
pub struct Query {
    pub panel_id: u64,
    pub panel: String,
    pub ref_id: String,
    /// The expression as written in the dashboard.
    pub expr: String,
}

impl Query {
    /// `panel "Title" (id 3) target A` for messages.
    pub fn name(&self) -> String {
        format!(
            "panel {:?} (id {}) target {}",
            self.panel, self.panel_id, self.ref_id
        )
    }
}

/// Every query of every panel.
pub fn queries(dash: &Value) -> Vec<Query> {
    let mut out = Vec::new();
    for p in panels(dash) {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(Query {
                panel_id: p["id"].as_u64().unwrap_or(0),
                panel: p["title"].as_str().unwrap_or("").to_string(),
                ref_id: t["refId"].as_str().unwrap_or("").to_string(),
                expr: t["expr"].as_str().unwrap_or("").to_string(),
            });
        }
    }
    out
}

/// The expression Grafana would send with every broker selected and
/// `$__rate_interval` worth `window` (e.g. `"30s"`). Panics on a variable
/// this test does not know how to fill, so a new one cannot slip through.
pub fn substitute(expr: &str, window: &str) -> String {
    let mut e = expr.to_string();
    for (var, value) in [
        ("${instance}", ".*"),
        ("${instance:regex}", ".*"),
        ("$instance", ".*"),
        ("${__rate_interval}", window),
        ("$__rate_interval", window),
    ] {
        e = e.replace(var, value);
    }
    assert!(
        !e.contains('$'),
        "unknown template variable left in {expr:?} -> {e:?}"
    );
    e
}

/// Names of the metrics an expression reads: identifiers with our
/// prefixes, so PromQL functions, labels and keywords are left out.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut in_string = false;
    let mut ident = String::new();
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c == '"' {
            in_string = !in_string;
        }
        if !in_string && (c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            ident.push(c);
            continue;
        }
        if ident.starts_with("ordo_") || ident.starts_with("process_") {
            names.insert(std::mem::take(&mut ident));
        }
        ident.clear();
    }
    names
}

#[test]
fn substitution_and_metric_names() {
    let e = r#"sum by (le) (rate(ordo_x_bucket{instance=~"$instance", a="ordo_no"}[$__rate_interval])) / process_y"#;
    assert_eq!(
        substitute(e, "30s"),
        r#"sum by (le) (rate(ordo_x_bucket{instance=~".*", a="ordo_no"}[30s])) / process_y"#
    );
    assert_eq!(
        metric_names(e).into_iter().collect::<Vec<_>>(),
        ["ordo_x_bucket", "process_y"]
    );
}

#[test]
#[should_panic(expected = "unknown template variable")]
fn unknown_variables_are_refused() {
    substitute("rate(x[$__interval])", "30s");
}
