//! The randomized simulation: hundreds of seeds per `cargo test`, each a
//! group of brokers publishing over a faulty network, every guarantee
//! checked. `ORDO_SIM_SEEDS=N` runs N seeds (long mode); `ORDO_SIM_SEED=S`
//! with the `replay` test replays one seed verbosely.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use ordo_broker::sim::{replay_command, run_seed};

/// Seeds `cargo test` runs by default.
const DEFAULT_SEEDS: u64 = 500;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn many_seeds() {
    let n = env_u64("ORDO_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let first = env_u64("ORDO_SIM_FIRST_SEED").unwrap_or(0);
    let started = Instant::now();
    let mut failed = Vec::new();
    let mut naks = 0;
    let mut repairs = 0;
    for seed in first..first + n {
        let r = run_seed(seed);
        naks += r.totals.naks_sent;
        repairs += r.totals.retransmissions_sent;
        if !r.ok() {
            eprintln!("{}", r.render());
            failed.push(seed);
        }
    }
    eprintln!(
        "{n} seeds in {:?}: {} failed; {naks} NAKs, {repairs} retransmissions",
        started.elapsed(),
        failed.len()
    );
    // The faults were real: losses happened and were repaired.
    assert!(naks > 0 && repairs > 0, "no NAK or repair in {n} seeds");
    assert!(
        failed.is_empty(),
        "{} seed(s) failed: {failed:?}; replay the first with:\n  {}",
        failed.len(),
        replay_command(failed[0])
    );
}

#[test]
fn replay() {
    let seed = env_u64("ORDO_SIM_SEED").unwrap_or(0);
    let r = run_seed(seed);
    println!("{}", r.render());
    assert!(
        r.ok(),
        "seed {seed} failed; replay with {}",
        replay_command(seed)
    );
}

#[test]
fn a_seed_replays_exactly() {
    // Same seed, same run: every counter and fault count identical.
    for seed in [5, 11, 17] {
        let a = run_seed(seed);
        let b = run_seed(seed);
        assert_eq!(a.render(), b.render());
        assert_eq!(format!("{:?}", a.totals), format!("{:?}", b.totals));
    }
}

/// Engine throughput on one core, simulator included (not a timed
/// assertion), and delivery latency in virtual time, for each ordering (and
/// `safe`) relative to fifo in the same run, on 3 brokers:
/// `cargo test --release -p ordo-broker --features sim --test sim -- --ignored throughput --nocapture`.
#[test]
#[ignore]
fn throughput() {
    use ordo_broker::sim::{Sim, SimConfig};
    use ordo_wire::Ordering;
    use std::time::Duration;
    let per: u32 = std::env::var("ORDO_SIM_THROUGHPUT_MSGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    for loss in [0.0, 0.1] {
        let mut fifo_rate = 0.0;
        for (ordering, safe) in [
            (Ordering::Fifo, false),
            (Ordering::Causal, false),
            (Ordering::TotalIsis, false),
            (Ordering::TotalSeq, false),
            (Ordering::Fifo, true),
            (Ordering::TotalSeq, true),
        ] {
            let mut c = SimConfig::basic(1, 3);
            c.publishers_per_node = 1;
            c.messages_per_publisher = per;
            c.traffic_span = Duration::from_secs(1);
            c.retransmit_buffer_bytes = 64 << 20;
            c.faults.loss = loss;
            c.payload_size = Some(128);
            c.only = Some((ordering, safe));
            let mut sim = Sim::new(c);
            assert!(sim.form_group());
            // A publisher at every broker, concurrently.
            sim.plan_traffic(Duration::from_millis(1), &[0, 1, 2]);
            let started = Instant::now();
            let r = sim.run();
            let wall = started.elapsed();
            assert!(r.ok(), "{}", r.render());
            let rate = r.totals.messages_delivered as f64 / wall.as_secs_f64();
            if ordering == Ordering::Fifo && !safe {
                fifo_rate = rate;
            }
            println!(
                "loss {:>2.0}% {:<10}{:<5}: {:>7} deliveries in {:>8.2?} wall = {:>7.0}/s ({:>5.2}x fifo); virtual latency p50 {:>9.2?} p99 {:>9.2?}; {} datagrams",
                loss * 100.0,
                ordering.to_string(),
                if safe { "safe" } else { "" },
                r.totals.messages_delivered,
                wall,
                rate,
                rate / fifo_rate,
                r.latency_p50,
                r.latency_p99,
                r.totals.datagrams_sent
            );
        }
    }
}
