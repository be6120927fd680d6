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
    m.protocol_error("undecodable_frame");
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
// The dashboard against the catalog through a real Prometheus: three
// in-process metric endpoints (the broker's own `Metrics` and `/metrics`
// server) moved through the catalog's API. It isolates dashboard and
// Prometheus problems from broker behaviour, which the live test below adds.
// ---------------------------------------------------------------------------

/// What the in-process endpoints were made to show.
const CATALOG_EXPECTED: &[(&str, &str, Expect)] = &[
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
    ("Inter-broker datagrams", "A", Expect::Positive),
    ("Inter-broker datagrams", "B", Expect::Positive),
    ("NAKs", "A", Expect::Positive),
    ("NAKs", "B", Expect::Positive),
    ("Retransmissions", "A", Expect::Positive),
    ("Gaps detected / repaired", "A", Expect::Positive),
    ("Gaps detected / repaired", "B", Expect::Positive),
    ("Heartbeats sent", "A", Expect::Positive),
    ("Retransmit buffer occupancy", "A", Expect::Positive),
    ("Retransmit buffer occupancy", "B", Expect::All(1048576.0)),
    ("Build info", "A", Expect::All(1.0)),
    ("View members", "A", Expect::All(BROKERS as f64)),
    ("View id", "A", Expect::All(3.0)),
    (
        "Client connections",
        "A",
        Expect::SumAtLeast(BROKERS as f64),
    ),
    (
        "Subscriptions",
        "A",
        Expect::SumAtLeast(2.0 * BROKERS as f64),
    ),
    ("Slow-consumer disconnects", "A", Expect::Positive),
    ("Client protocol errors", "A", Expect::Positive),
    ("View changes", "A", Expect::Positive),
    ("View changes by cause", "A", Expect::Positive),
    ("View changes by cause", "B", Expect::Positive),
    ("View changes by cause", "C", Expect::Positive),
    ("View changes by cause", "D", Expect::Positive),
    (
        "Suspicions, disputes, exclusions, join fallbacks",
        "A",
        Expect::Positive,
    ),
    (
        "Suspicions, disputes, exclusions, join fallbacks",
        "B",
        Expect::Positive,
    ),
    (
        "Suspicions, disputes, exclusions, join fallbacks",
        "C",
        Expect::Positive,
    ),
    (
        "Suspicions, disputes, exclusions, join fallbacks",
        "D",
        Expect::Positive,
    ),
    (
        "Suspicions, disputes, exclusions, join fallbacks",
        "E",
        Expect::Positive,
    ),
    (
        "Suspicions, disputes, exclusions, join fallbacks",
        "F",
        Expect::Positive,
    ),
    (
        "Suspicions, disputes, exclusions, join fallbacks",
        "G",
        Expect::Positive,
    ),
    (
        "Primary view and no-quorum publishes",
        "A",
        Expect::All(1.0),
    ),
    (
        "Primary view and no-quorum publishes",
        "B",
        Expect::Positive,
    ),
    ("Failure detection time", "A", Expect::All(1.6)),
    ("View-change duration", "A", Expect::All(0.03)),
];

#[test]
fn dashboard_panels_return_data_from_the_catalog() {
    use ordo_broker::engine::Stats;
    use ordo_broker::http::{serve_on, Health};
    use ordo_broker::metrics::Metrics;
    use ordo_wire::{Incarnation, NodeId, ViewId};
    use std::sync::Arc;

    let Some((prometheus_bin, _)) =
        tools::prometheus_and_promtool("dashboard_panels_return_data_from_the_catalog")
    else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut endpoints = Vec::new();
    for node in 1..=BROKERS {
        let metrics = Arc::new(Metrics::new());
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (_health, health_rx) =
            tokio::sync::watch::channel(Health::starting(NodeId(node), Incarnation(1)));
        let mut stopped = stopped.clone();
        rt.spawn(serve_on(listener, metrics.clone(), health_rx, async move {
            let _ = stopped.wait_for(|s| *s).await;
        }));
        endpoints.push((addr, metrics, _health));
    }
    let targets: Vec<_> = endpoints.iter().map(|(a, _, _)| *a).collect();
    let prom = Prometheus::start(&prometheus_bin, &targets, PATIENCE);
    scraped_twice(&prom, BROKERS);

    // Events spread over several scrapes, as a broker would see them.
    for round in 1..=4u64 {
        for (_, m, _) in &endpoints {
            for o in ORDERINGS {
                m.observe_publish(o);
                m.observe_delivery(o, Duration::from_millis(round));
            }
            m.observe_engine(&Stats {
                datagrams_sent: 100 * round,
                datagrams_received: 90 * round,
                bytes_sent: 10_000 * round,
                bytes_received: 9_000 * round,
                naks_sent: 5 * round,
                naks_received: 7 * round,
                retransmissions_sent: 6 * round,
                gaps_detected: 5 * round,
                gaps_repaired: 5 * round,
                heartbeats_sent: 10 * round,
                view_changes: round,
                view_changes_join: round,
                view_changes_leave: round,
                view_changes_crash: round,
                view_changes_merge: round,
                suspicions: round,
                exclusions: round,
                duplicate_node_refusals: round,
                suspicions_disputed: round,
                proposals_disputed: round,
                join_rounds_unanswered: round,
                join_fallbacks: round,
                publishes_no_quorum: round,
                primary: 1,
                last_failure_detection_ms: 1600,
                last_view_change_ms: 30,
                retransmit_buffer_bytes: 4096,
                retransmit_buffer_limit: 1 << 20,
                ..Stats::default()
            });
            if round == 1 {
                m.client_connected();
                m.subscription_added();
                m.subscription_added();
            }
            if round == 3 {
                m.set_view(ViewId(3), BROKERS as usize);
                m.slow_consumer();
                m.protocol_error("undecodable_frame");
            }
        }
        std::thread::sleep(Duration::from_millis(1100));
    }
    prom.wait_for("Prometheus to scrape the last events", PATIENCE, || {
        prom.value(r#"min(ordo_messages_published_total{ordering="fifo"})"#) == Some(4.0)
    });
    std::thread::sleep(Duration::from_secs(2));

    let failures = evaluate_panels(&prom, CATALOG_EXPECTED);
    let _ = stop.send(true);
    drop(prom);
    rt.shutdown_timeout(Duration::from_secs(5));
    assert!(
        failures.is_empty(),
        "{} dashboard problems against the catalog:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
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
    /// The series whose label (first) has this value (second) is above zero.
    PositiveWith(&'static str, &'static str),
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
    ("Heartbeats sent", "A", Expect::Positive),
    ("Retransmit buffer occupancy", "B", Expect::Positive),
    ("Build info", "A", Expect::All(1.0)),
    ("View members", "A", Expect::All(BROKERS as f64)),
    ("Client connections", "A", Expect::SumAtLeast(5.0)),
    ("Subscriptions", "A", Expect::SumAtLeast(BROKERS as f64)),
    ("Client protocol errors", "A", Expect::Positive),
    // The loss itself, counted by `--inject-loss-percent`.
    (
        "Datagrams dropped by reason",
        "A",
        Expect::PositiveWith("reason", "injected"),
    ),
    ("View changes", "A", Expect::Positive),
    // The last broker joins while Prometheus watches.
    ("View changes by cause", "A", Expect::Positive),
    // Every broker of the live cluster is in the one primary view.
    (
        "Primary view and no-quorum publishes",
        "A",
        Expect::All(1.0),
    ),
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
    // All brokers but the last, then Prometheus (told every address), then
    // the last broker joins while Prometheus watches: a view change to show.
    let mut cluster = Cluster::plan(BROKERS, LOSS_PERCENT);
    for _ in 1..BROKERS {
        cluster.start_next();
    }
    cluster.wait_for_view(PATIENCE);
    let prom = Prometheus::start(&prometheus_bin, cluster.metrics_addrs(), PATIENCE);
    // Rates start at a series' first sample: every running broker is
    // scraped twice before anything the test checks happens.
    scraped_twice(&prom, BROKERS - 1);
    cluster.start_next();
    cluster.wait_for_view(PATIENCE);
    scraped_twice(&prom, BROKERS);

    // One subscriber per broker, publishers on two brokers.
    let mut subs: Vec<Conn> = cluster
        .brokers
        .iter()
        .enumerate()
        .map(|(i, b)| Conn::open(b.addr(), &format!("obs-sub-{}", i + 1)))
        .collect();
    let mut pubs: Vec<Conn> = cluster.brokers[..2]
        .iter()
        .enumerate()
        .map(|(i, b)| Conn::open(b.addr(), &format!("obs-pub-{}", i + 1)))
        .collect();
    for o in ORDERINGS {
        pubs[0].declare(&topic(o), o);
    }
    for (i, s) in subs.iter_mut().enumerate() {
        s.subscribe(i as u64 + 1, "obs.>");
    }

    // A client that breaks the protocol: an unknown frame kind.
    let mut rogue = Conn::open(cluster.brokers[2].addr(), "obs-rogue");
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
                    "{} publishes of publisher {p} never confirmed",
                    pending[p].len()
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
                None => panic!("subscriber on broker {} got {got:?} of {published}", i + 1),
            }
        }
    }

    // Panels are read once every broker was scraped twice more after the
    // traffic (a barrier on Prometheus' own `up`, not on the metrics under
    // test, so a counter that never moves is reported below, not waited for).
    let traffic_end = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    prom.wait_for("two scrapes after the traffic", PATIENCE, || {
        prom.value(r#"min(timestamp(up{job="ordo"}))"#)
            .is_some_and(|t| t > traffic_end + 2.0)
    });

    // `promtool check metrics` on each broker's own exposition.
    for b in &cluster.brokers {
        let (status, body) = http::get(b.metrics_addr(), "/metrics").unwrap();
        assert_eq!(status, 200, "GET /metrics of {}", b.metrics_addr());
        if let Err(e) = tools::promtool(&promtool, &["check", "metrics"], &body) {
            panic!("promtool check metrics on {}:\n{e}", b.metrics_addr());
        }
    }

    let failures = evaluate_panels(&prom, EXPECTED);
    assert!(
        failures.is_empty(),
        "{} dashboard problems against a live cluster:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
    drop(subs);
    drop(pubs);
}

/// Waits until Prometheus has scraped `n` targets successfully at least
/// twice each, so later increments fall inside their series.
fn scraped_twice(prom: &Prometheus, n: u32) {
    prom.wait_for(&format!("two scrapes of {n} brokers"), PATIENCE, || {
        prom.value(r#"count(count_over_time(ordo_build_info{job="ordo"}[1m]) >= 2)"#)
            == Some(f64::from(n))
    });
}

/// Evaluates every query of every panel through Prometheus, with
/// `$__rate_interval` covering everything Prometheus saw: the problems
/// found (no series, an error, or an `expected` value not met).
fn evaluate_panels(prom: &Prometheus, expected: &[(&str, &str, Expect)]) -> Vec<String> {
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
    for &(panel, ref_id, expect) in expected {
        let Some(samples) = results.get(&(panel.to_string(), ref_id.to_string())) else {
            if !failures.iter().any(|f| f.contains(&format!("{panel:?}"))) {
                failures.push(format!(
                    "panel {panel:?} target {ref_id} is not on the dashboard"
                ));
            }
            continue;
        };
        if let Some(why) = check(samples, expect) {
            failures.push(format!(
                "panel {panel:?} target {ref_id} (rate window {window}): {why}"
            ));
        }
    }
    failures
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
        Expect::PositiveWith(label, value) => samples
            .iter()
            .any(|s| s.labels.get(label).map(String::as_str) == Some(value) && s.value > 0.0),
    };
    (!ok).then(|| format!("expected {expect:?}, got [{}]", show()))
}
