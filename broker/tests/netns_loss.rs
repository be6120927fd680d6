//! Three `ordo-broker` processes, each in its own network namespace on a
//! bridge, with nftables dropping 10% and then 30% of the multicast datagrams
//! arriving in every namespace: every message must still reach every
//! subscriber exactly once and in each publisher's order, and the brokers'
//! `/metrics` must show NAKs and retransmissions (so the loss was real and
//! repaired, not absent). Skips loudly without root/iproute2/nftables.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod netns;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use common::Client;
use netns::Netns;
use ordo_broker::testkit::BrokerProcess;

/// Messages each broker's publisher sends per phase.
const PER_PUBLISHER: u64 = 500;
/// Padding per payload, so the messages span many datagrams (the engine
/// batches small ones) and the loss hits data, not just a few frames.
const PAD: usize = 400;
const BROKERS: usize = 3;

fn unique_group() -> SocketAddrV4 {
    let pid = std::process::id();
    SocketAddrV4::new(
        Ipv4Addr::new(239, 252, (pid % 251) as u8, (pid / 251 % 251) as u8),
        7400,
    )
}

/// A sample's value in a Prometheus text exposition (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse::<f64>().ok())?
        })
        .unwrap_or(0.0)
}

/// The sum of `series` over every broker.
fn cluster_metric(brokers: &[BrokerProcess], series: &str) -> f64 {
    brokers
        .iter()
        .map(|b| {
            let (status, body) = b.http_get("/metrics").unwrap();
            assert_eq!(status, 200);
            metric(&body, series)
        })
        .sum()
}

/// Waits (the driver copies engine counters into the metrics periodically)
/// until the cluster-wide sum of `series` exceeds `above`; returns it.
fn wait_metric_above(brokers: &[BrokerProcess], series: &str, above: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = cluster_metric(brokers, series);
        if v > above || Instant::now() >= deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until every broker reports a view with all of them in it.
fn wait_for_full_view(brokers: &[BrokerProcess]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    'outer: loop {
        for b in brokers {
            let ok = b.http_get("/healthz").ok().is_some_and(|(status, body)| {
                status == 200
                    && serde_json::from_str::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v["members"].as_array().map(Vec::len))
                        == Some(BROKERS)
            });
            if !ok {
                assert!(
                    Instant::now() < deadline,
                    "brokers did not agree on a {BROKERS}-member view; last stderr:\n{}",
                    b.stderr()
                );
                std::thread::sleep(Duration::from_millis(100));
                continue 'outer;
            }
        }
        return;
    }
}

/// Publishes PER_PUBLISHER messages at every broker on `topic` and checks
/// that every subscriber (one per broker) gets all of them, once each, in
/// each publisher's order.
async fn phase(net: &Netns, brokers: &[BrokerProcess], topic: &str) {
    let mut subscribers = Vec::new();
    for b in brokers {
        let mut c = Client::connect(b.addr()).await;
        c.subscribe(1, topic).await;
        subscribers.push(c);
    }
    // Read concurrently so no subscriber is disconnected as slow.
    let readers: Vec<_> = subscribers
        .into_iter()
        .enumerate()
        .map(|(at, mut c)| {
            tokio::spawn(async move {
                let want = PER_PUBLISHER * BROKERS as u64;
                let mut next: BTreeMap<u64, u64> = BTreeMap::new();
                for _ in 0..want {
                    let d = c.message().await;
                    let text = String::from_utf8(d.payload.to_vec()).unwrap();
                    let mut parts = text.splitn(3, ':');
                    let (publisher, n) = (parts.next().unwrap(), parts.next().unwrap());
                    let (publisher, n): (u64, u64) = (publisher.parse().unwrap(), n.parse().unwrap());
                    let expected = next.entry(publisher).or_insert(0);
                    // Exactly once and in order: each publisher's next number.
                    assert_eq!(
                        n, *expected,
                        "subscriber at broker {at}: publisher {publisher} out of order or duplicated"
                    );
                    *expected += 1;
                }
                next
            })
        })
        .collect();

    let mut publishers = Vec::new();
    for b in brokers {
        publishers.push(Client::connect(b.addr()).await);
    }
    for n in 0..PER_PUBLISHER {
        for (i, p) in publishers.iter_mut().enumerate() {
            p.publish(topic, format!("{i}:{n}:{}", "x".repeat(PAD)))
                .await;
        }
    }
    for (at, r) in readers.into_iter().enumerate() {
        let got = tokio::time::timeout(Duration::from_secs(120), r)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "subscriber at broker {at} did not get everything in 120 s; broker stderr:\n{}",
                    brokers[at].stderr()
                )
            })
            .unwrap();
        for i in 0..BROKERS as u64 {
            assert_eq!(got.get(&i), Some(&PER_PUBLISHER), "at broker {at}");
        }
    }
    let dropped: Vec<u64> = (0..BROKERS).map(|i| net.dropped(i)).collect();
    eprintln!("{topic}: nftables dropped {dropped:?} datagrams per namespace");
    for (i, d) in dropped.iter().enumerate() {
        assert!(*d > 0, "nftables dropped nothing in namespace {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_brokers_deliver_everything_under_10_and_30_percent_loss() {
    let Some(net) = Netns::create("netns_loss", BROKERS) else {
        return;
    };
    let group = unique_group();
    let cluster = format!("netns-loss-{}", std::process::id());
    // Declared after `net`, so dropped (killed) before the namespaces go.
    let brokers = net.start_brokers(&cluster, group);
    wait_for_full_view(&brokers);

    let mut before = (0.0, 0.0);
    for (percent, topic) in [(10u8, "loss.ten"), (30, "loss.thirty")] {
        net.set_loss_all(group, percent);
        phase(&net, &brokers, topic).await;
        let naks = wait_metric_above(&brokers, "ordo_naks_sent_total", before.0);
        let retransmissions =
            wait_metric_above(&brokers, "ordo_retransmissions_sent_total", before.1);
        eprintln!(
            "{percent}% loss: NAKs sent {naks}, retransmissions {retransmissions} (cumulative)"
        );
        assert!(
            naks > before.0,
            "no NAKs under {percent}% loss: the loss was not repaired by NAK"
        );
        assert!(
            retransmissions > before.1,
            "no retransmissions under {percent}% loss"
        );
        before = (naks, retransmissions);
    }
    assert_eq!(
        cluster_metric(&brokers, "ordo_unrecoverable_messages_total"),
        0.0
    );
    net.set_loss_all(group, 0);
}
