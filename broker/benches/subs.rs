//! Micro-benchmark of the subscription matcher (`ordo_broker::subs::SubTrie`)
//! on a table like a busy broker's: many literal subscriptions, some
//! wildcards, and topics that match a few of them.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use ordo_broker::subs::SubTrie;

fn table(n: usize) -> SubTrie<u64> {
    let mut t = SubTrie::new();
    for i in 0..n {
        t.insert(&format!("orders.region{}.shop{}", i % 50, i), i as u64)
            .unwrap();
        if i % 10 == 0 {
            t.insert(&format!("orders.region{}.*", i % 50), i as u64)
                .unwrap();
        }
    }
    t.insert("orders.>", 0).unwrap();
    t.insert("ordo.bench", 1).unwrap();
    t.insert("ordo.bench", 2).unwrap();
    t.insert("ordo.bench", 3).unwrap();
    t
}

fn matcher(c: &mut Criterion) {
    let mut g = c.benchmark_group("subs");
    for n in [10usize, 10_000] {
        let t = table(n);
        g.bench_function(format!("match_literal_3subs_of_{n}"), |b| {
            b.iter(|| {
                let mut hits = 0u64;
                t.for_each_match(black_box("ordo.bench"), |v| hits += *v);
                black_box(hits)
            })
        });
        g.bench_function(format!("match_wildcards_of_{n}"), |b| {
            b.iter(|| {
                let mut hits = 0u64;
                t.for_each_match(black_box("orders.region7.shop7"), |v| hits += *v);
                black_box(hits)
            })
        });
        g.bench_function(format!("match_none_of_{n}"), |b| {
            b.iter(|| {
                let mut hits = 0u64;
                t.for_each_match(black_box("metrics.cpu.load"), |v| hits += *v);
                black_box(hits)
            })
        });
    }
    g.bench_function("insert_remove", |b| {
        let mut t = table(1000);
        b.iter(|| {
            let k = t.insert(black_box("orders.region3.shop99999"), 5).unwrap();
            black_box(t.remove(k))
        })
    });
    g.finish();
}

criterion_group!(benches, matcher);
criterion_main!(benches);
