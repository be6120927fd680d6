//! Micro-benchmark of the group engine's data path, sans I/O: two engines
//! in one view exchange datagrams in memory on a virtual clock; one
//! publishes 128-byte FIFO messages, the other delivers them, and the acks
//! flow back so the sender's window keeps moving. Measures the engine's own
//! cost per message (batching, reliability, FIFO delivery) without sockets.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ordo_broker::engine::{Engine, EngineConfig, Event, Publish};
use ordo_wire::{CausalContext, Incarnation, NodeId, Ordering};

const BATCH: u64 = 1000;

struct Pair {
    a: Engine,
    b: Engine,
    now: Instant,
    delivered: u64,
}

impl Pair {
    fn new() -> Pair {
        let now = Instant::now();
        let cfg = |n: u32| EngineConfig::new(NodeId(n), Incarnation(1), "bench");
        let mut p = Pair {
            a: Engine::new(cfg(1), now),
            b: Engine::new(cfg(2), now),
            now,
            delivered: 0,
        };
        // Let them discover each other and agree on a two-member view.
        for _ in 0..100_000 {
            if p.a.in_view()
                && p.b.in_view()
                && p.a.view().members.len() == 2
                && p.b.view().members.len() == 2
            {
                return p;
            }
            p.now += Duration::from_millis(1);
            p.a.handle_timeout(p.now);
            p.b.handle_timeout(p.now);
            p.route();
        }
        panic!("the two engines did not form a view");
    }

    /// Moves every pending datagram to the other engine and drains events.
    fn route(&mut self) {
        loop {
            let mut moved = false;
            while let Some(d) = self.a.poll_transmit() {
                self.b.handle_datagram_bytes(d, self.now);
                moved = true;
            }
            while let Some(d) = self.b.poll_transmit() {
                self.a.handle_datagram_bytes(d, self.now);
                moved = true;
            }
            while let Some(e) = self.b.poll_event() {
                if let Event::Deliver(_) = e {
                    self.delivered += 1;
                }
            }
            while self.a.poll_event().is_some() {}
            if !moved {
                return;
            }
        }
    }

    /// Publishes `n` messages from A and runs until B delivered them all.
    fn publish(&mut self, n: u64, topic: &Arc<str>, payload: &Bytes) {
        let target = self.delivered + n;
        let mut sent = 0;
        while self.delivered < target {
            while sent < n && self.a.can_publish() {
                let msg = Publish {
                    topic: topic.clone(),
                    ordering: Ordering::Fifo,
                    safe: false,
                    publisher: 1,
                    context: CausalContext::new(),
                    payload: payload.clone(),
                    confirm: None,
                    published_at_us: 0,
                };
                if self.a.publish(msg, self.now).is_err() {
                    break;
                }
                sent += 1;
            }
            self.route();
            // Let timers fire (batch flush, acks, stability) on the virtual clock.
            self.now += Duration::from_micros(200);
            self.a.handle_timeout(self.now);
            self.b.handle_timeout(self.now);
            self.route();
        }
    }
}

fn engine(c: &mut Criterion) {
    let mut pair = Pair::new();
    let topic: Arc<str> = Arc::from("ordo.bench");
    let payload = Bytes::from(vec![7u8; 128]);
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(BATCH));
    g.bench_function("fifo_2_members_publish_to_delivery_x1000", |b| {
        b.iter(|| pair.publish(BATCH, &topic, &payload))
    });
    g.finish();
}

criterion_group!(benches, engine);
criterion_main!(benches);
