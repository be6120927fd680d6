//! `ordo bench` against real `ordo-broker` processes: the JSON report of a
//! small run says every message arrived once and in order, with rates and
//! latencies measured. No timing assertions: only that numbers exist.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output, Stdio};

use ordo_broker::testkit::{BrokerProcess, ClusterSpec};
use serde_json::Value;

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ordo"))
        .arg("bench")
        .args(args)
        .env_remove("ORDO_TOKEN")
        .env_remove("ORDO_SERVER")
        .stdin(Stdio::null())
        .output()
        .expect("run ordo bench")
}

fn report(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "ordo bench failed ({:?}):\n{stdout}\n{stderr}",
        out.status
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn assert_clean(r: &Value, msgs: u64, subs: u64) {
    assert_eq!(r["msgs"], msgs, "{r}");
    assert_eq!(r["subs"], subs, "{r}");
    for k in ["lost", "reordered", "duplicates", "invalid"] {
        assert_eq!(r[k], 0, "{k} in {r}");
    }
    assert_eq!(r["ok"], true, "{r}");
    for k in ["pub_rate", "sub_rate_mean", "sub_rate_min"] {
        assert!(r[k].as_f64().unwrap() > 0.0, "{k} in {r}");
    }
    for k in ["p50_us", "p90_us", "p99_us", "p999_us", "max_us"] {
        assert!(r[k].as_u64().is_some(), "{k} in {r}");
    }
    assert!(r["p50_us"].as_u64() <= r["p99_us"].as_u64(), "{r}");
    assert!(r["p99_us"].as_u64() <= r["max_us"].as_u64(), "{r}");
    let per_sub = r["per_sub"].as_array().unwrap();
    assert_eq!(per_sub.len() as u64, subs);
    for s in per_sub {
        assert_eq!(s["received"], msgs, "{r}");
    }
}

#[test]
fn one_publisher_two_subscribers_get_everything_in_order() {
    let b = BrokerProcess::start(&[]);
    let addr = b.addr().to_string();
    let out = bench(&[
        "--servers",
        &addr,
        "--pub",
        "1",
        "--sub",
        "2",
        "--msgs",
        "2000",
        "--size",
        "64",
        "--topic",
        "bench.t1",
        "--json",
    ]);
    let r = report(&out);
    assert_clean(&r, 2000, 2);
    assert_eq!(r["ordering"], "fifo");
    assert_eq!(r["size"], 64);
    assert_eq!(r["pubs"], 1);
}

#[test]
fn paced_confirmed_run_with_two_publishers_over_two_brokers() {
    let cluster = ClusterSpec::new();
    let brokers: Vec<BrokerProcess> = (1..=2)
        .map(|i| {
            BrokerProcess::builder()
                .cluster(&cluster)
                .arg("--node-id")
                .arg(i.to_string())
                .start()
        })
        .collect();
    for b in &brokers {
        b.wait_for_members(2, std::time::Duration::from_secs(30))
            .unwrap();
    }
    let servers = brokers
        .iter()
        .map(|b| b.addr().to_string())
        .collect::<Vec<_>>()
        .join(",");
    let out = bench(&[
        "--servers",
        &servers,
        "--pub",
        "2",
        "--sub",
        "2",
        "--msgs",
        "600",
        "--rate",
        "2000",
        "--confirm",
        "--topic",
        "bench.t2",
        "--json",
    ]);
    let r = report(&out);
    assert_clean(&r, 600, 2);
    let per_pub = r["per_pub"].as_array().unwrap();
    assert_eq!(per_pub[0]["sent"], 300);
    assert_eq!(per_pub[1]["server"], brokers[1].addr().to_string());
    assert_eq!(r["per_sub"][1]["server"], brokers[1].addr().to_string());
}

#[test]
fn human_output_and_usage_errors() {
    let b = BrokerProcess::start(&[]);
    let out = Command::new(env!("CARGO_BIN_EXE_ordo"))
        .args([
            "bench", "--sub", "1", "--msgs", "500", "--topic", "bench.t3",
        ])
        .env("ORDO_SERVER", b.addr().to_string())
        .env_remove("ORDO_TOKEN")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("Pub stats:"), "{text}");
    assert!(text.contains("Sub stats:"), "{text}");
    assert!(
        text.contains("lost 0 | reordered 0 | duplicates 0"),
        "{text}"
    );

    let small = bench(&["--server", &b.addr().to_string(), "--size", "8"]);
    assert_eq!(small.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&small.stderr).contains("--size"));
}
