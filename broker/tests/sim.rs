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
/// assertion): `cargo test --release -p ordo-broker --features sim --test sim
/// -- --ignored throughput --nocapture`.
#[test]
#[ignore]
fn throughput() {
    use ordo_broker::sim::{Sim, SimConfig};
    use std::time::Duration;
    for loss in [0.0, 0.1] {
        let mut c = SimConfig::basic(1, 3);
        c.publishers_per_node = 1;
        c.messages_per_publisher = 30_000;
        c.traffic_span = Duration::from_secs(1);
        c.retransmit_buffer_bytes = 64 << 20;
        c.faults.loss = loss;
        c.payload_size = Some(128);
        let mut sim = Sim::new(c);
        assert!(sim.form_group());
        sim.plan_traffic(Duration::from_millis(1), &[0]);
        let started = Instant::now();
        let r = sim.run();
        let wall = started.elapsed();
        assert!(r.ok(), "{}", r.render());
        println!(
            "loss {:.0}%: {} deliveries of 128-byte messages in {:?} wall ({:.0}/s), {} datagrams",
            loss * 100.0,
            r.totals.messages_delivered,
            wall,
            r.totals.messages_delivered as f64 / wall.as_secs_f64(),
            r.totals.datagrams_sent
        );
    }
}
