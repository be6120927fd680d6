//! The ordering workload and checks shared by the end-to-end tests
//! (`e2e_order.rs` on loopback, `e2e_order_netns.rs` under nftables loss):
//! a publisher at each broker publishing concurrently to one topic of each
//! ordering, a subscriber at each broker, a responder that reads at the
//! first broker and republishes at the second with the delivery's causal
//! context; then every guarantee is checked on what the subscribers got.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use ordo_broker::testkit::BrokerProcess;
use ordo_client::{Client, ClientOptions, Event, Message};
use ordo_wire::client::Request;
use ordo_wire::{Ordering, Origin, Seq};

use crate::common;

pub const TOPICS: [(&str, Ordering); 4] = [
    ("o.fifo", Ordering::Fifo),
    ("o.causal", Ordering::Causal),
    ("o.isis", Ordering::TotalIsis),
    ("o.seq", Ordering::TotalSeq),
];

/// Messages per publisher per topic.
pub const N: usize = 150;
/// The responder answers every `EVERY`-th message of each publisher.
pub const EVERY: usize = 10;

pub fn wait_members(brokers: &[BrokerProcess], n: usize) {
    tokio::task::block_in_place(|| {
        for b in brokers {
            b.wait_for_members(n, Duration::from_secs(20)).unwrap();
        }
    });
}

pub async fn connect(b: &BrokerProcess) -> Client {
    Client::connect(&b.addr().to_string(), ClientOptions::default())
        .await
        .unwrap()
}

/// Waits until every broker lists `want` (name → ordering, safe) and they all agree.
pub async fn wait_tables_agree(brokers: &[BrokerProcess], want: &[(&str, Ordering)]) {
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
pub struct Got {
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
            // The padding (see `run_and_check`) is not part of the name.
            payload: String::from_utf8_lossy(&m.payload)
                .trim_start_matches('x')
                .to_string(),
            origin: m.origin,
            seq: m.seq,
            context: m.context.entries().iter().copied().collect(),
            gseq: m.gseq.map(|g| g.0),
        }
    }
}

/// Runs the workload on `brokers` (at least 2, all in one view) with
/// payloads padded by `pad` bytes, and checks every guarantee.
pub async fn run_and_check(brokers: &[BrokerProcess], pad: usize) {
    let admin = connect(&brokers[0]).await;
    for (t, o) in TOPICS {
        admin.declare(t, o, false).await.unwrap();
    }
    wait_tables_agree(brokers, &TOPICS).await;

    let mut subs = Vec::new();
    for b in brokers {
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
            let p = String::from_utf8_lossy(&m.payload)
                .trim_start_matches('x')
                .to_string();
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
                    c.publish(t, format!("{}p{k}-{i}", "x".repeat(pad)))
                        .await
                        .unwrap();
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
                let Some(&at) = pos.get(answered) else {
                    panic!(
                        "broker {b}: response {} to {answered:?}, never delivered here",
                        g.payload
                    );
                };
                assert!(
                    at < k,
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
