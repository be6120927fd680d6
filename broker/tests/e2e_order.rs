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

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::broker;
use futures_util::StreamExt;
use ordo_broker::testkit::{BrokerProcess, ClusterSpec};
use ordo_client::{Client, ClientOptions, Event, Message};
use ordo_wire::client::Request;
use ordo_wire::{Ordering, Origin, Seq};

const TOPICS: [(&str, Ordering); 4] = [
    ("o.fifo", Ordering::Fifo),
    ("o.causal", Ordering::Causal),
    ("o.isis", Ordering::TotalIsis),
    ("o.seq", Ordering::TotalSeq),
];

/// Messages per publisher per topic.
const N: usize = 150;
/// The responder answers every `EVERY`-th message of each publisher.
const EVERY: usize = 10;

fn start_cluster(cluster: &ClusterSpec, ids: std::ops::RangeInclusive<u32>) -> Vec<BrokerProcess> {
    ids.map(|id| {
        broker()
            .cluster(cluster)
            .args(["--node-id".to_string(), id.to_string()])
            .start()
    })
    .collect()
}

fn wait_members(brokers: &[BrokerProcess], n: usize) {
    tokio::task::block_in_place(|| {
        for b in brokers {
            b.wait_for_members(n, Duration::from_secs(20)).unwrap();
        }
    });
}

async fn connect(b: &BrokerProcess) -> Client {
    Client::connect(&b.addr().to_string(), ClientOptions::default())
        .await
        .unwrap()
}

/// Waits until every broker lists `want` (name → ordering, safe) and they all agree.
async fn wait_tables_agree(brokers: &[BrokerProcess], want: &[(&str, Ordering)]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut clients = Vec::new();
    for b in brokers {
        clients.push(connect(b).await);
    }
    loop {
        let mut tables = Vec::new();
        for c in &clients {
            let t: Vec<(String, Ordering, bool)> = c
                .list_topics()
                .await
                .unwrap()
                .into_iter()
                .map(|t| (t.name, t.ordering, t.safe))
                .collect();
            tables.push(t);
        }
        let complete = tables.iter().all(|t| {
            want.iter()
                .all(|(n, o)| t.iter().any(|(tn, to, _)| tn == n && to == o))
        });
        if complete && tables.windows(2).all(|w| w[0] == w[1]) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "topic tables never agreed: {tables:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One delivery as a subscriber saw it.
#[derive(Debug, Clone)]
struct Got {
    topic: String,
    payload: String,
    origin: Origin,
    seq: Seq,
    context: BTreeMap<Origin, Seq>,
    gseq: Option<u64>,
}

impl From<Message> for Got {
    fn from(m: Message) -> Got {
        Got {
            topic: m.topic,
            payload: String::from_utf8_lossy(&m.payload).into_owned(),
            origin: m.origin,
            seq: m.seq,
            context: m.context.entries().iter().copied().collect(),
            gseq: m.gseq.map(|g| g.0),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ordering_holds_across_three_brokers() {
    let cluster = ClusterSpec::new();
    let brokers = start_cluster(&cluster, 1..=3);
    wait_members(&brokers, 3);
    let admin = connect(&brokers[0]).await;
    for (t, o) in TOPICS {
        admin.declare(t, o, false).await.unwrap();
    }
    wait_tables_agree(&brokers, &TOPICS).await;

    let mut subs = Vec::new();
    for b in &brokers {
        let c = connect(b).await;
        let s = c.subscribe("o.>").await.unwrap();
        subs.push((c, s));
    }
    // The responder reads causal messages at broker 1 and answers at broker
    // 2, carrying the context of what it read (as a client spanning brokers does).
    let reader = connect(&brokers[0]).await;
    let mut rsub = reader.subscribe("o.causal").await.unwrap();
    let mut writer = common::Client::connect(brokers[1].addr()).await;
    let responses = 3 * N / EVERY;
    let responder = tokio::spawn(async move {
        let mut sent = 0;
        while sent < responses {
            let Some(Ok(Event::Message(m))) = rsub.next().await else {
                panic!("responder subscription ended");
            };
            let p = String::from_utf8_lossy(&m.payload).into_owned();
            let Some(i) = p.rsplit('-').next().and_then(|i| i.parse::<usize>().ok()) else {
                continue;
            };
            if p.starts_with('r') || i % EVERY != 0 {
                continue;
            }
            writer
                .send(&Request::Publish {
                    confirm: None,
                    topic: "o.causal".into(),
                    context: m.context.clone(),
                    payload: Bytes::from(format!("r{p}")),
                })
                .await;
            sent += 1;
        }
        (reader, writer)
    });

    // A publisher at each broker, all topics interleaved, concurrently.
    let mut pubs = Vec::new();
    for (k, b) in brokers.iter().enumerate() {
        let c = connect(b).await;
        pubs.push(tokio::spawn(async move {
            for i in 0..N {
                for (t, _) in TOPICS {
                    c.publish(t, format!("p{k}-{i}")).await.unwrap();
                }
            }
            c.flush().await.unwrap();
            c
        }));
    }
    let expected = 3 * N * TOPICS.len() + responses;
    let mut got: Vec<Vec<Got>> = Vec::new();
    let deadline = Duration::from_secs(60);
    for (_, s) in subs.iter_mut() {
        let mut v = Vec::new();
        while v.len() < expected {
            match tokio::time::timeout(deadline, s.next()).await {
                Ok(Some(Ok(Event::Message(m)))) => v.push(Got::from(m)),
                other => panic!("after {} of {expected} deliveries: {other:?}", v.len()),
            }
        }
        got.push(v);
    }
    for p in pubs {
        p.await.unwrap();
    }
    responder.await.unwrap();

    for (b, v) in got.iter().enumerate() {
        // FIFO per publisher and topic, nothing lost, nothing twice.
        let mut next: HashMap<(String, String), usize> = HashMap::new();
        for g in v {
            let (who, i) = g.payload.rsplit_once('-').unwrap();
            let i: usize = i.parse().unwrap();
            if who.starts_with('r') {
                continue;
            }
            let n = next.entry((g.topic.clone(), who.to_string())).or_default();
            assert_eq!(i, *n, "broker {b}: {} from {who} out of order", g.topic);
            *n += 1;
        }
        assert!(next.values().all(|n| *n == N), "broker {b}: {next:?}");
        // Metadata: context on causal deliveries only, gseq on total ones only.
        for g in v {
            let ordering = TOPICS.iter().find(|(t, _)| *t == g.topic).unwrap().1;
            assert_eq!(g.gseq.is_some(), ordering.is_total(), "{g:?}");
            assert_eq!(!g.context.is_empty(), ordering == Ordering::Causal, "{g:?}");
        }
    }
    // Total topics: the same sequence everywhere, gseq 1..=count.
    for (t, o) in TOPICS.iter().filter(|(_, o)| o.is_total()) {
        let seqs: Vec<Vec<(String, Option<u64>)>> = got
            .iter()
            .map(|v| {
                v.iter()
                    .filter(|g| g.topic == *t)
                    .map(|g| (g.payload.clone(), g.gseq))
                    .collect()
            })
            .collect();
        assert_eq!(
            seqs[0], seqs[1],
            "{t} ({o}) differs between brokers 1 and 2"
        );
        assert_eq!(
            seqs[0], seqs[2],
            "{t} ({o}) differs between brokers 1 and 3"
        );
        for (k, (_, g)) in seqs[0].iter().enumerate() {
            assert_eq!(*g, Some(k as u64 + 1), "{t}: gseq must count 1, 2, 3, …");
        }
    }
    // Causal: each response after what it answered (history), and every
    // causal delivery after everything its context names (if delivered here).
    for (b, v) in got.iter().enumerate() {
        let causal: Vec<&Got> = v.iter().filter(|g| g.topic == "o.causal").collect();
        let pos: HashMap<&str, usize> = causal
            .iter()
            .enumerate()
            .map(|(k, g)| (g.payload.as_str(), k))
            .collect();
        for (k, g) in causal.iter().enumerate() {
            if let Some(answered) = g.payload.strip_prefix('r') {
                assert!(
                    pos[answered] < k,
                    "broker {b}: response {} before {answered}",
                    g.payload
                );
            }
        }
        for (k, g) in causal.iter().enumerate() {
            for (j, h) in causal.iter().enumerate().skip(k + 1) {
                // Different messages: g's context naming h means h came first.
                let named = g.context.get(&h.origin).is_some_and(|s| *s >= h.seq);
                assert!(
                    !named,
                    "broker {b}: {} (position {k}) names {}:{} in its context, delivered later at {j}",
                    g.payload,
                    h.origin,
                    h.seq
                );
            }
        }
    }
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
