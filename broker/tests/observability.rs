//! The Grafana dashboard proven against a real Prometheus scrape: static
//! checks of `grafana/` first, then a 3-broker cluster with injected loss,
//! client traffic, and a real Prometheus whose answers to every panel query
//! must show what the test made happen (issue 6, "How it is checked").
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "observability/cluster.rs"]
mod cluster;
#[path = "observability/dashboard.rs"]
mod dashboard;
#[path = "observability/http.rs"]
mod http;
#[path = "observability/prometheus.rs"]
mod prometheus;
#[path = "observability/tools.rs"]
mod tools;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

use ordo_wire::client::Reply;
use ordo_wire::Ordering;

use cluster::{Cluster, Conn};
use prometheus::{Prometheus, Sample};

/// Bound on waiting for something that must happen on a loaded machine.
/// Never a timing assertion.
const PATIENCE: Duration = Duration::from_secs(60);

/// The datasource reference every panel and query must carry.
const DS_UID: &str = "${datasource}";

// ---------------------------------------------------------------------------
// Static checks: no cluster, no Prometheus server.
// ---------------------------------------------------------------------------

#[test]
fn dashboard_is_well_formed() {
    let text = std::fs::read_to_string(dashboard::path()).unwrap();
    // `${DS_...}` inputs break file provisioning: the datasource is a variable.
    assert!(!text.contains("${DS_"), "dashboard uses ${{DS_...}} inputs");
    let dash = dashboard::load();
    assert!(dash.get("__inputs").is_none(), "dashboard has __inputs");
    assert_eq!(dash["uid"], "ordo-overview");
    assert!(dash["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(dash["schemaVersion"].as_u64().is_some());

    let vars = dash["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no template variable {name}"))
    };
    let ds = var("datasource");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    let instance = var("instance");
    assert_eq!(instance["type"], "query");
    assert_eq!(instance["datasource"]["uid"], DS_UID);
    assert_eq!(
        instance["query"]["query"],
        "label_values(ordo_build_info, instance)"
    );
    assert_eq!(instance["includeAll"], true);

    let panels = dashboard::panels(&dash);
    assert!(panels.len() > 20, "only {} panels", panels.len());
    let mut ids = HashSet::new();
    let mut titles = HashSet::new();
    for p in &panels {
        let id = p["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("panel without id: {p}"));
        assert!(ids.insert(id), "duplicate panel id {id}");
        let title = p["title"].as_str().expect("panel title");
        // The end-to-end test finds panels by title.
        assert!(titles.insert(title), "duplicate panel title {title:?}");
        let grid = &p["gridPos"];
        let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
        assert!(
            x + w <= 24 && grid["h"].as_u64().unwrap() > 0,
            "{title}: bad gridPos"
        );
        if p["type"] == "row" {
            assert!(p.get("targets").is_none(), "row {title} has queries");
            continue;
        }
        assert_eq!(p["datasource"]["uid"], DS_UID, "{title}: panel datasource");
        assert_eq!(p["datasource"]["type"], "prometheus", "{title}");
        assert!(
            p["description"].as_str().is_some_and(|d| d.len() > 20),
            "{title}: no description"
        );
        assert!(
            p["fieldConfig"]["defaults"]["unit"].as_str().is_some(),
            "{title}: no unit"
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no queries");
        let mut refs = HashSet::new();
        for t in targets {
            assert_eq!(t["datasource"]["uid"], DS_UID, "{title}: query datasource");
            assert!(
                refs.insert(t["refId"].as_str().expect("refId")),
                "{title}: refId twice"
            );
            let expr = t["expr"].as_str().expect("expr");
            assert!(!expr.is_empty(), "{title}: empty expr");
            if expr.contains("rate(") || expr.contains("increase(") {
                assert!(
                    expr.contains("[$__rate_interval]"),
                    "{title}: fixed range in {expr}"
                );
            }
            if expr.contains("ordo_") {
                assert!(
                    expr.contains(r#"instance=~"$instance""#),
                    "{title}: ignores $instance: {expr}"
                );
            }
        }
    }

    let latency = panels
        .iter()
        .find(|p| p["title"] == "Delivery latency p50 / p99 by ordering")
        .expect("latency panel");
    assert!(latency["description"]
        .as_str()
        .unwrap()
        .contains("synchronised clocks"));
    let exprs: Vec<&str> = latency["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["expr"].as_str().unwrap())
        .collect();
    for q in ["0.5", "0.99"] {
        assert!(
            exprs
                .iter()
                .any(|e| e.starts_with(&format!("histogram_quantile({q},"))
                    && e.contains("ordo_delivery_latency_seconds_bucket")
                    && e.contains("by (ordering, le)")),
            "no p{q} latency query by ordering"
        );
    }
}

/// Every metric a panel reads is one the broker exports, so a renamed or
/// missing metric fails here, without a cluster.
#[test]
fn dashboard_reads_only_exported_metrics() {
    let m = ordo_broker::metrics::Metrics::new();
    // A family of labelled series without pre-created labels appears only
    // after its first event; make one so it is listed.
    m.protocol_error("bad_frame");
    let exported: BTreeSet<String> = m
        .render()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect();
    let dash = dashboard::load();
    let mut used = BTreeSet::new();
    for q in dashboard::queries(&dash) {
        let names = dashboard::metric_names(&q.expr);
        assert!(
            !names.is_empty(),
            "{} reads no ordo_/process_ metric",
            q.name()
        );
        for name in names {
            assert!(
                exported.contains(&name),
                "{} reads {name}, which the broker does not export",
                q.name()
            );
            used.insert(name);
        }
    }
    // Every ordo_ family of the catalog is on the dashboard somewhere.
    for name in &exported {
        let family = name
            .strip_suffix("_bucket")
            .or_else(|| name.strip_suffix("_sum"))
            .or_else(|| name.strip_suffix("_count"))
            .unwrap_or(name);
        let shown = used.iter().any(|u| u.starts_with(family));
        assert!(
            shown || !family.starts_with("ordo_"),
            "{family} is exported but no panel shows it"
        );
    }
}

/// Every panel query is valid PromQL, checked by `promtool check rules` on
/// a rules file holding one recording rule per query.
#[test]
fn dashboard_queries_parse() {
    let Some((_, promtool)) = tools::prometheus_and_promtool("dashboard_queries_parse") else {
        return;
    };
    let dash = dashboard::load();
    let mut rules = String::from("groups:\n  - name: ordo_dashboard\n    rules:\n");
    let queries = dashboard::queries(&dash);
    for q in &queries {
        let expr = dashboard::substitute(&q.expr, "30s");
        rules.push_str(&format!(
            "      - record: panel_{}_{}\n        expr: {}\n",
            q.panel_id,
            q.ref_id,
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-rules.yml");
    std::fs::write(&file, &rules).unwrap();
    let out = tools::promtool(&promtool, &["check", "rules", file.to_str().unwrap()], "")
        .unwrap_or_else(|e| panic!("promtool rejects a dashboard query:\n{e}\n{rules}"));
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", queries.len())),
        "{out}"
    );
}

/// The scrape config is valid and scrapes the local cluster; the
/// provisioning files point where the compose file mounts things.
#[test]
fn provisioning_files_agree() {
    let prom = dashboard::grafana_file("prometheus.yml");
    for port in [9411, 9412, 9413] {
        assert!(
            prom.contains(&format!("127.0.0.1:{port}")),
            "prometheus.yml misses :{port}"
        );
    }
    let compose = dashboard::grafana_file("docker-compose.yml");
    let dashboards = dashboard::grafana_file("provisioning/dashboards/ordo.yml");
    let datasources = dashboard::grafana_file("provisioning/datasources/prometheus.yml");
    assert!(compose.contains("./prometheus.yml:/etc/prometheus/prometheus.yml"));
    assert!(compose.contains("./provisioning:/etc/grafana/provisioning"));
    assert!(compose.contains("./dashboards:/var/lib/grafana/dashboards/ordo"));
    assert!(dashboards.contains("path: /var/lib/grafana/dashboards/ordo"));
    assert!(datasources.contains("type: prometheus"));
    assert!(datasources.contains("url: http://127.0.0.1:9090"));
    assert!(compose.contains("--web.listen-address=127.0.0.1:9090"));

    let Some((_, promtool)) = tools::prometheus_and_promtool("provisioning_files_agree") else {
        return;
    };
    let path = dashboard::grafana_path("prometheus.yml");
    tools::promtool(&promtool, &["check", "config", path.to_str().unwrap()], "")
        .unwrap_or_else(|e| panic!("promtool check config grafana/prometheus.yml:\n{e}"));
}

// ---------------------------------------------------------------------------
// End to end: brokers, traffic with loss, Prometheus, every panel.
// ---------------------------------------------------------------------------

/// Layers the test publishes on; each gets its own topic.
const ORDERINGS: [Ordering; 4] = [
    Ordering::Fifo,
    Ordering::Causal,
    Ordering::TotalIsis,
    Ordering::TotalSeq,
];
/// Messages per topic per publisher.
const PER_TOPIC: usize = 150;
/// Percentage of received datagrams each broker drops before its engine.
const LOSS_PERCENT: u32 = 10;
const BROKERS: u32 = 3;

/// What a panel query must show after the test's traffic.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Some series is above zero.
    Positive,
    /// For every ordering the test used, the series labelled with it is above zero.
    PositivePerOrdering,
    /// Every series equals this value.
    All(f64),
    /// The series' values add up to at least this.
    SumAtLeast(f64),
}

/// The panels for what the test injected (title, refId, expectation).
/// Everything else only has to return data.
const EXPECTED: &[(&str, &str, Expect)] = &[
    ("Publish rate by ordering", "A", Expect::PositivePerOrdering),
    (
        "Delivery rate by ordering",
        "A",
        Expect::PositivePerOrdering,
    ),
    (
        "Delivery latency p50 / p99 by ordering",
        "A",
        Expect::PositivePerOrdering,
    ),
    (
        "Delivery latency p50 / p99 by ordering",
        "B",
        Expect::PositivePerOrdering,
    ),
    ("NAKs", "A", Expect::Positive),
    ("NAKs", "B", Expect::Positive),
    ("Retransmissions", "A", Expect::Positive),
    ("Gaps detected / repaired", "A", Expect::Positive),
    ("Gaps detected / repaired", "B", Expect::Positive),
    ("Inter-broker datagrams", "A", Expect::Positive),
    ("Inter-broker datagrams", "B", Expect::Positive),
    ("Inter-broker bytes", "A", Expect::Positive),
    ("Inter-broker bytes", "B", Expect::Positive),
    ("Build info", "A", Expect::All(1.0)),
    ("View members", "A", Expect::All(BROKERS as f64)),
    ("Client connections", "A", Expect::SumAtLeast(5.0)),
    ("Subscriptions", "A", Expect::SumAtLeast(BROKERS as f64)),
    ("Client protocol errors", "A", Expect::Positive),
    ("View changes", "A", Expect::Positive),
    ("Resident memory", "A", Expect::Positive),
];

fn topic(o: Ordering) -> String {
    format!("obs.{}", o.as_str())
}

#[test]
fn dashboard_panels_show_a_live_cluster() {
    let Some((prometheus_bin, promtool)) =
        tools::prometheus_and_promtool("dashboard_panels_show_a_live_cluster")
    else {
        return;
    };
    let cluster = Cluster::start(BROKERS, LOSS_PERCENT, PATIENCE);
    let targets: Vec<_> = cluster.brokers.iter().map(|b| b.metrics_addr).collect();
    let prom = Prometheus::start(&prometheus_bin, &targets, PATIENCE);

    // Rates start at the first sample: let every target be scraped twice
    // before any traffic so none of it falls before the series begin.
    prom.wait_for("two scrapes of every broker", PATIENCE, || {
        prom.value(r#"count(count_over_time(up{job="ordo"}[1m]) >= 2 and up{job="ordo"} == 1)"#)
            == Some(BROKERS as f64)
    });

    // One subscriber per broker, publishers on two brokers.
    let mut subs: Vec<Conn> = cluster
        .brokers
        .iter()
        .map(|b| Conn::open(b.client_addr, &format!("obs-sub-{}", b.node)))
        .collect();
    let mut pubs: Vec<Conn> = cluster.brokers[..2]
        .iter()
        .map(|b| Conn::open(b.client_addr, &format!("obs-pub-{}", b.node)))
        .collect();
    for o in ORDERINGS {
        pubs[0].declare(&topic(o), o);
    }
    for (i, s) in subs.iter_mut().enumerate() {
        s.subscribe(i as u64 + 1, "obs.>");
    }

    // A client that breaks the protocol: an unknown frame kind.
    let mut rogue = Conn::open(cluster.brokers[2].client_addr, "obs-rogue");
    rogue.send_raw(&[0, 0, 0, 1, 0xEE]);
    while rogue.recv(Duration::from_secs(5)).is_some() {}

    // Spread the traffic over a few seconds so rates span several scrapes.
    let mut pending: Vec<BTreeSet<u64>> = vec![BTreeSet::new(); pubs.len()];
    for batch in 0..PER_TOPIC / 25 {
        for (p, conn) in pubs.iter_mut().enumerate() {
            for o in ORDERINGS {
                for n in 0..25 {
                    let id = conn.publish(&topic(o), &format!("p{p} #{}", batch * 25 + n));
                    pending[p].insert(id);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(400));
    }
    let published = pubs.len() * ORDERINGS.len() * PER_TOPIC;
    for (p, conn) in pubs.iter_mut().enumerate() {
        let deadline = Instant::now() + PATIENCE;
        while !pending[p].is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match conn.recv(left) {
                Some(Reply::Ok { req }) => {
                    pending[p].remove(&req);
                }
                Some(Reply::Error { code, message, .. }) => {
                    panic!("publish refused: {code:?} {message}")
                }
                Some(_) => {}
                None => panic!(
                    "{} publishes of publisher {p} never confirmed; logs:\n{}",
                    pending[p].len(),
                    cluster.logs()
                ),
            }
        }
    }
    for (i, s) in subs.iter_mut().enumerate() {
        let mut got: BTreeMap<String, usize> = BTreeMap::new();
        let deadline = Instant::now() + PATIENCE;
        while got.values().sum::<usize>() < published {
            let left = deadline.saturating_duration_since(Instant::now());
            match s.recv(left) {
                Some(Reply::Message(d)) => *got.entry(d.topic.clone()).or_default() += 1,
                Some(_) => {}
                None => panic!(
                    "subscriber on broker {} got {got:?} of {published}; logs:\n{}",
                    i + 1,
                    cluster.logs()
                ),
            }
        }
    }

    // Prometheus must have scraped the final counts before panels are read.
    let want_delivered = (published * cluster.brokers.len()) as f64;
    prom.wait_for("Prometheus to scrape the traffic", PATIENCE, || {
        prom.value("sum(ordo_messages_published_total)") >= Some(published as f64)
            && prom.value("sum(ordo_messages_delivered_total)") >= Some(want_delivered)
    });
    // One more scrape so the last samples are inside every rate window.
    std::thread::sleep(Duration::from_secs(2));

    // `promtool check metrics` on each broker's own exposition.
    for b in &cluster.brokers {
        let (status, body) = http::get(b.metrics_addr, "/metrics").unwrap();
        assert_eq!(status, 200, "GET /metrics of broker {}", b.node);
        if let Err(e) = tools::promtool(&promtool, &["check", "metrics"], &body) {
            panic!("promtool check metrics on broker {}:\n{e}", b.node);
        }
    }

    // Every query of every panel, with a window covering the whole test.
    let window = format!("{}s", prom.age().as_secs().max(30) + 5);
    let dash = dashboard::load();
    let mut failures = Vec::new();
    let mut results: BTreeMap<(String, String), Vec<Sample>> = BTreeMap::new();
    for q in dashboard::queries(&dash) {
        let expr = dashboard::substitute(&q.expr, &window);
        match prom.query(&expr) {
            Ok(samples) if samples.is_empty() => {
                failures.push(format!("{} returned no series: {expr}", q.name()))
            }
            Ok(samples) => {
                results.insert((q.panel.clone(), q.ref_id.clone()), samples);
            }
            Err(e) => failures.push(format!("{} failed: {e}: {expr}", q.name())),
        }
    }
    for &(panel, ref_id, expect) in EXPECTED {
        let Some(samples) = results.get(&(panel.to_string(), ref_id.to_string())) else {
            if !failures.iter().any(|f| f.contains(&format!("{panel:?}"))) {
                failures.push(format!(
                    "panel {panel:?} target {ref_id} is not on the dashboard"
                ));
            }
            continue;
        };
        if let Some(why) = check(samples, expect) {
            failures.push(format!("panel {panel:?} target {ref_id}: {why}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} dashboard problems against a live cluster:\n  {}\n(rate window {window})",
        failures.len(),
        failures.join("\n  ")
    );
    drop(subs);
    drop(pubs);
}

/// Why `samples` do not meet `expect`, if they do not.
fn check(samples: &[Sample], expect: Expect) -> Option<String> {
    let show = || {
        samples
            .iter()
            .map(|s| format!("{:?}={}", s.labels, s.value))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let ok = match expect {
        Expect::Positive => samples.iter().any(|s| s.value > 0.0),
        Expect::PositivePerOrdering => ORDERINGS.iter().all(|o| {
            samples.iter().any(|s| {
                s.labels.get("ordering").map(String::as_str) == Some(o.as_str()) && s.value > 0.0
            })
        }),
        Expect::All(v) => samples.iter().all(|s| s.value == v),
        Expect::SumAtLeast(v) => samples.iter().map(|s| s.value).sum::<f64>() >= v,
    };
    (!ok).then(|| format!("expected {expect:?}, got [{}]", show()))
}
