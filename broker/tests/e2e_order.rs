//! End-to-end tests of the ordering layers with real `ordo-broker`
//! processes on loopback multicast and real clients (`ordo_client`): three
//! brokers, a publisher at each publishing concurrently to one topic of each
//! ordering, a subscriber at each, and a responder that reads at one broker
//! and republishes at another with the delivery's causal context (a causal
//! chain across brokers). Every guarantee is checked on what subscribers
//! received. Also: topic declarations agreed cluster-wide, conflicts, and
//! the table reaching a broker that joins later.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod e2e_order_check;

use std::time::{Duration, Instant};

use common::broker;
use e2e_order_check::{connect, run_and_check, wait_members, wait_tables_agree};
use futures_util::StreamExt;
use ordo_broker::testkit::{BrokerProcess, ClusterSpec};
use ordo_client::Event;
use ordo_wire::Ordering;

fn start_cluster(cluster: &ClusterSpec, ids: std::ops::RangeInclusive<u32>) -> Vec<BrokerProcess> {
    ids.map(|id| {
        broker()
            .cluster(cluster)
            .args(["--node-id".to_string(), id.to_string()])
            .start()
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ordering_holds_across_three_brokers() {
    let cluster = ClusterSpec::new();
    let brokers = start_cluster(&cluster, 1..=3);
    wait_members(&brokers, 3);
    run_and_check(&brokers, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_declarations_resolve_the_same_everywhere_and_reach_a_joiner() {
    let cluster = ClusterSpec::new();
    let mut brokers = start_cluster(&cluster, 1..=3);
    wait_members(&brokers, 3);
    let a = connect(&brokers[0]).await;
    let b = connect(&brokers[1]).await;
    let (ra, rb) = tokio::join!(
        a.declare("o.x", Ordering::Causal, false),
        b.declare("o.x", Ordering::TotalSeq, true)
    );
    let (winner, loser) = match (&ra, &rb) {
        (Ok(()), Err(e)) => (Ordering::Causal, e.to_string()),
        (Err(e), Ok(())) => (Ordering::TotalSeq, e.to_string()),
        other => panic!("exactly one declaration must win: {other:?}"),
    };
    assert!(
        loser.contains("causal") && loser.contains("total-seq"),
        "the conflict names both: {loser}"
    );
    // The same declaration again succeeds; the table is the same everywhere.
    a.declare("o.y", Ordering::TotalIsis, false).await.unwrap();
    b.declare("o.y", Ordering::TotalIsis, false).await.unwrap();
    let want = [("o.x", winner), ("o.y", Ordering::TotalIsis)];
    wait_tables_agree(&brokers, &want).await;
    // A broker that joins later receives the table with the state transfer.
    brokers.extend(start_cluster(&cluster, 4..=4));
    wait_members(&brokers, 4);
    wait_tables_agree(&brokers, &want).await;
}

/// Figures for the closing note (not a timed assertion): throughput and
/// p50/p99 delivery latency of each ordering on 3 real brokers, relative to
/// fifo in the same run.
/// `cargo test --release -p ordo-broker --test e2e_order -- --ignored figures --nocapture`
/// (`ORDO_FIGURES_MSGS` messages per publisher, default 3000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn figures() {
    use std::time::{SystemTime, UNIX_EPOCH};
    let per: usize = std::env::var("ORDO_FIGURES_MSGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let micros = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64)
    };
    let cluster = ClusterSpec::new();
    let brokers = start_cluster(&cluster, 1..=3);
    wait_members(&brokers, 3);
    let admin = connect(&brokers[0]).await;
    let cases = [
        ("f.fifo", Ordering::Fifo, false),
        ("f.causal", Ordering::Causal, false),
        ("f.isis", Ordering::TotalIsis, false),
        ("f.seq", Ordering::TotalSeq, false),
        ("f.fifo.safe", Ordering::Fifo, true),
        ("f.seq.safe", Ordering::TotalSeq, true),
    ];
    let mut fifo_rate = 0.0;
    for (topic, ordering, safe) in cases {
        admin.declare(topic, ordering, safe).await.unwrap();
        wait_tables_agree(&brokers, &[(topic, ordering)]).await;
        let mut subs = Vec::new();
        for b in &brokers {
            let c = connect(b).await;
            let s = c.subscribe(topic).await.unwrap();
            subs.push((c, s));
        }
        let started = Instant::now();
        let mut pubs = Vec::new();
        for b in &brokers {
            let c = connect(b).await;
            pubs.push(tokio::spawn(async move {
                for _ in 0..per {
                    c.publish(topic, micros().to_be_bytes().to_vec())
                        .await
                        .unwrap();
                }
                c.flush().await.unwrap();
                c
            }));
        }
        let mut lat = Vec::new();
        let mut readers = Vec::new();
        for (c, mut s) in subs {
            readers.push(tokio::spawn(async move {
                let mut l = Vec::with_capacity(3 * per);
                while l.len() < 3 * per {
                    match tokio::time::timeout(Duration::from_secs(60), s.next()).await {
                        Ok(Some(Ok(Event::Message(m)))) => {
                            let sent = u64::from_be_bytes(m.payload[..8].try_into().unwrap());
                            l.push(micros().saturating_sub(sent));
                        }
                        other => panic!("after {}: {other:?}", l.len()),
                    }
                }
                drop(c);
                l
            }));
        }
        for r in readers {
            lat.extend(r.await.unwrap());
        }
        let wall = started.elapsed();
        for p in pubs {
            p.await.unwrap();
        }
        lat.sort_unstable();
        let rate = (3 * per) as f64 / wall.as_secs_f64();
        if ordering == Ordering::Fifo && !safe {
            fifo_rate = rate;
        }
        println!(
            "{:<12} {:<10}{:<5}: {:>6} msgs in {:>7.2?} = {:>7.0} msg/s ({:.2}x fifo); latency p50 {:>6} us p99 {:>7} us",
            topic,
            ordering.to_string(),
            if safe { "safe" } else { "" },
            3 * per,
            wall,
            rate,
            rate / fifo_rate,
            lat[lat.len() / 2],
            lat[lat.len() * 99 / 100]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_topics_go_through_the_same_agreement() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, ordering: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!("[[topics]]\nname = \"cfg.a\"\nordering = \"{ordering}\"\n[[topics]]\nname = \"cfg.{name}\"\nordering = \"total-isis\"\n"),
        )
        .unwrap();
        path.to_str().unwrap().to_string()
    };
    // Two brokers configured differently for one topic: the group agrees on
    // one of the two, and each broker's own topic reaches the other.
    let (one, two) = (file("one", "total-seq"), file("two", "causal"));
    let cluster = ClusterSpec::new();
    let brokers: Vec<BrokerProcess> = [(1, one), (2, two)]
        .into_iter()
        .map(|(id, cfg)| {
            broker()
                .cluster(&cluster)
                .args([
                    "--node-id".to_string(),
                    id.to_string(),
                    "--config".into(),
                    cfg,
                ])
                .start()
        })
        .collect();
    wait_members(&brokers, 2);
    let want = [
        ("cfg.one", Ordering::TotalIsis),
        ("cfg.two", Ordering::TotalIsis),
    ];
    wait_tables_agree(&brokers, &want).await;
    let table = connect(&brokers[0]).await.list_topics().await.unwrap();
    let a = table.iter().find(|t| t.name == "cfg.a").unwrap();
    assert!(
        matches!(a.ordering, Ordering::TotalSeq | Ordering::Causal),
        "{table:?}"
    );
}
