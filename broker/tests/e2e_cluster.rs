//! End-to-end tests of several real `ordo-broker` processes on loopback
//! multicast: a publish at any broker reaches the matching subscribers at
//! every broker, exactly once and in each publisher's order.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{broker, metric, Client};
use ordo_broker::testkit::{BrokerProcess, ClusterSpec};
use ordo_wire::client::{Reply, Request};

/// Starts `n` brokers of one fresh cluster, node ids 1..=n.
fn start_cluster(n: u32) -> Vec<BrokerProcess> {
    start_cluster_with(n, &[])
}

/// Starts `n` brokers of one fresh cluster with extra arguments each.
fn start_cluster_with(n: u32, extra: &[&str]) -> Vec<BrokerProcess> {
    let cluster = ClusterSpec::new();
    (1..=n)
        .map(|id| {
            broker()
                .cluster(&cluster)
                .args(["--node-id".to_string(), id.to_string()])
                .args(extra.iter().map(|a| a.to_string()))
                .start()
        })
        .collect()
}

/// Waits until the broker behind `c` reports a view of `members` members.
async fn wait_for_view(c: &mut Client, members: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = c.request(|req| Request::Cluster { req }).await;
        let Reply::Cluster { view, .. } = r else {
            panic!("{r:?}")
        };
        if view.members.len() == members {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {members}-member view after 20 s; last: {view:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_reach_subscribers_on_every_broker_in_fifo_order() {
    let brokers = start_cluster(3);
    fan_out_in_fifo_order(&brokers, 500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_loss_is_repaired_by_naks() {
    // Every broker drops a fifth of the group datagrams it receives.
    let brokers = start_cluster_with(3, &["--inject-loss-percent", "20"]);
    fan_out_in_fifo_order(&brokers, 2000).await;
    let series = |name: &str| -> f64 { brokers.iter().map(|b| metric(b, name)).sum() };
    // The loss was real and the repair is what delivered everything.
    assert!(series(r#"ordo_datagrams_dropped_total{reason="injected"}"#) > 0.0);
    let deadline = Instant::now() + Duration::from_secs(10);
    // Engine counters reach /metrics on the driver's next refresh.
    while series("ordo_naks_sent_total") == 0.0 || series("ordo_retransmissions_sent_total") == 0.0
    {
        assert!(
            Instant::now() < deadline,
            "loss was injected but no NAK or retransmission was counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publishers on two brokers, a subscriber on each broker: every subscriber
/// receives each publisher's `n` messages exactly once, in order.
async fn fan_out_in_fifo_order(brokers: &[BrokerProcess], n: u64) {
    tokio::task::block_in_place(|| {
        for b in brokers {
            b.wait_for_members(3, Duration::from_secs(20)).unwrap();
        }
    });
    let mut subs = Vec::new();
    for b in brokers {
        let mut c = Client::connect(b.addr()).await;
        c.subscribe(1, "news.>").await;
        subs.push(c);
    }
    // Publishers on two different brokers, interleaved.
    let mut pa = Client::connect(brokers[0].addr()).await;
    let mut pb = Client::connect(brokers[1].addr()).await;
    for i in 0..n {
        pa.publish("news.a", format!("a{i}")).await;
        pb.publish("news.b", format!("b{i}")).await;
    }
    let r = pa.publish_confirmed("news.a", "a-end").await;
    assert!(matches!(r, Reply::Ok { .. }), "{r:?}");
    let r = pb.publish_confirmed("news.b", "b-end").await;
    assert!(matches!(r, Reply::Ok { .. }), "{r:?}");

    for (k, s) in subs.iter_mut().enumerate() {
        // Per (origin, publisher): payloads in publish order, none twice.
        let mut next: HashMap<&str, u64> = HashMap::new();
        let mut ended = 0;
        while ended < 2 {
            let m = s.message().await;
            let text = String::from_utf8(m.payload.to_vec()).unwrap();
            let stream = if m.topic == "news.a" { "a" } else { "b" };
            if text.ends_with("-end") {
                assert_eq!(
                    next.get(stream),
                    Some(&n),
                    "subscriber {k}: {stream} ended early"
                );
                ended += 1;
                continue;
            }
            let want = next.entry(stream).or_insert(0);
            assert_eq!(
                text,
                format!("{stream}{want}"),
                "subscriber {k} out of order"
            );
            *want += 1;
        }
    }
    // Origins are the brokers the publishers used.
    pa.publish("news.a", Bytes::from_static(b"origin")).await;
    for s in &mut subs {
        let m = s.message().await;
        assert_eq!(m.origin.node, pa.node);
        assert_eq!(m.publisher, pa.client_id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_leaving_gracefully_does_not_stop_the_others() {
    let mut brokers = start_cluster(3);
    let mut a = Client::connect(brokers[0].addr()).await;
    wait_for_view(&mut a, 3).await;
    let mut sub_b = Client::connect(brokers[1].addr()).await;
    sub_b.subscribe(1, "t").await;

    brokers[2].terminate();
    let status = brokers[2]
        .wait_exit(Duration::from_secs(10))
        .expect("broker 3 did not exit");
    assert!(status.success());
    wait_for_view(&mut a, 2).await;

    for i in 0..100u32 {
        a.publish("t", i.to_string()).await;
    }
    for i in 0..100u32 {
        assert_eq!(sub_b.message().await.payload, Bytes::from(i.to_string()));
    }
}
