//! The randomized simulation: hundreds of seeds per `cargo test`, each a
//! group of brokers publishing over a faulty network, every guarantee
//! checked. About 40% of the seeds also crash, restart, stall or cut off
//! brokers (see `FaultPlan::membership_faults`). `ORDO_SIM_SEEDS=N` runs N
//! seeds (long mode, from `ORDO_SIM_FIRST_SEED`); `ORDO_SIM_SEED=S` with
//! the `replay` test (`-- replay --exact`) replays one seed verbosely.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use ordo_broker::sim::{replay_command, run_seed};

/// Seeds `cargo test` runs by default.
const DEFAULT_SEEDS: u64 = 500;

/// Seeds that fail on an engine bug already reported, with the bug.
/// `many_seeds` still runs them and prints their violations and replay
/// command, but does not fail on them (every other seed must pass). List
/// a seed here only while its bug is open, and move it to
/// [`FIXED_SEEDS`] once the engine is fixed (`many_seeds` says when a
/// listed seed passes).
const KNOWN_ENGINE_BUGS: &[(u64, &str)] = &[
    (
        74281,
        "liveness: as 68953 (a one-way partition of two brokers of five and a stall of one); \
         surfaced when frames started carrying their sender's frame counter, a timing change",
    ),
    (
        68953,
        "liveness: after a one-way partition of two brokers of five and a symmetric one of a \
         third (every view non-primary by then), the views merge and split again for longer than \
         the 10 s bound after the last fault healed; surfaced when prompt acknowledgements started \
         going out at once (ad80e9e), passes on de9300d by timing",
    ),
];

/// Seeds past the default range that once failed (found by soaks of seeds
/// 500..20000), with what they catch: `once_failing_seeds` runs them in
/// every `cargo test`.
const FIXED_SEEDS: &[(u64, &str)] = &[
    (
        39033,
        "a broker that cannot hear the next coordinator (a directed link cut) proposes the same view \
         number without it while the coordinator proposes; the others flush for the coordinator's \
         proposal, and counting their acknowledgements for the other proposal installed two \
         primary views numbered 4 (total order restarted at gseq 1): flush acknowledgements now \
         name the proposers they answer. Found on ad80e9e (de9300d passed it by timing alone)",
    ),
    (
        8663,
        "causal: a broker cut off alone (symmetric partition) holds a responder's reply but not the \
         message it answered, both from brokers on the other side: it must discard the reply, not \
         deliver it before what it depends on",
    ),
    (
        15839,
        "causal: the same as 8663 (a departed origin's message depending on a message no survivor \
         holds is discarded at the install). Both failed on 9bdcedf; the acknowledgement timing \
         changed since, so on this code they no longer reach that state (the unit tests in \
         delivery/causal.rs pin the rule)",
    ),
    (
        1753,
        "a publisher's broker stalled past failure detection publishes as it resumes, while the \
         others flush it out: they must not confirm what the cut discards",
    ),
    (
        1413,
        "causal delivery across the rejoin of a broker as a new incarnation",
    ),
    (
        3153,
        "a broker cut off alone delivers the departed origins' messages the flush hands it in \
         causal order",
    ),
    (
        3173,
        "the same, with the sequencer crashing during the partition",
    ),
    (4204, "the same, after a one-way partition"),
    (
        13101,
        "a second cut of one side within the first (the harness merges them: it never fired)",
    ),
    (14702, "the same, one way"),
    (18433, "the same"),
    (
        14993,
        "a joiner two coordinators admitted at once: the losing view's dissolve must not wait \
         for it",
    ),
];

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
    let mut known = Vec::new();
    let mut slowest: Vec<(std::time::Duration, u64)> = Vec::new();
    for seed in first..first + n {
        let t = Instant::now();
        let r = run_seed(seed);
        slowest.push((t.elapsed(), seed));
        naks += r.totals.naks_sent;
        repairs += r.totals.retransmissions_sent;
        let bug = KNOWN_ENGINE_BUGS.iter().find(|(s, _)| *s == seed);
        match (r.ok(), bug) {
            (true, None) => {}
            (true, Some(_)) => {
                eprintln!("seed {seed} passes now: remove it from KNOWN_ENGINE_BUGS");
            }
            (false, None) => {
                eprintln!("{}", r.render());
                failed.push(seed);
            }
            (false, Some((_, why))) => {
                eprintln!("KNOWN ENGINE BUG ({why}):\n{}", r.render());
                known.push(seed);
            }
        }
    }
    slowest.sort();
    slowest.reverse();
    slowest.truncate(5);
    eprintln!(
        "{n} seeds in {:?}: {} failed, {} more on known engine bugs {known:?}; {naks} NAKs, {repairs} retransmissions; slowest {slowest:?}",
        started.elapsed(),
        failed.len(),
        known.len()
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

/// The seeds of [`FIXED_SEEDS`] pass.
#[test]
fn once_failing_seeds() {
    let failing: Vec<u64> = FIXED_SEEDS
        .iter()
        .filter(|(seed, why)| {
            let r = run_seed(*seed);
            if !r.ok() {
                eprintln!("{why}:\n{}", r.render());
            }
            !r.ok()
        })
        .map(|(seed, _)| *seed)
        .collect();
    assert!(failing.is_empty(), "failing again: {failing:?}");
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
    // Same seed, same run: every counter and fault count identical (seed 3
    // crashes the sequencer, 10 stalls a broker, 12 cuts one off one way).
    for seed in [3, 5, 10, 11, 12, 17] {
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

/// Figures for the closing note, in virtual time over many seeds: the
/// sequencer (also the coordinator) of 4 brokers under 5% loss is killed
/// mid-stream; prints the failure-detection time and view-change time the
/// engines measured, the time until every survivor installed a view
/// without it, and the longest pause of a total topic, each as median and
/// worst: `cargo test -p ordo-broker --test sim -- --ignored failover_figures --nocapture`.
#[test]
#[ignore]
fn failover_figures() {
    use ordo_broker::sim::{Action, Sim, SimConfig, Victim};
    use std::time::Duration;
    let n = env_u64("ORDO_SIM_FIGURE_SEEDS").unwrap_or(50);
    let (mut detect, mut change, mut recover, mut pause) = (vec![], vec![], vec![], vec![]);
    for seed in 0..n {
        let mut c = SimConfig::basic(seed, 4);
        c.faults.loss = 0.05;
        c.only = Some((ordo_wire::Ordering::TotalSeq, false));
        c.traffic_span = Duration::from_millis(4000);
        let mut sim = Sim::new(c);
        assert!(sim.form_group());
        sim.plan_traffic(Duration::from_millis(5), &[0, 1, 2, 3]);
        sim.schedule(
            Duration::from_millis(1000 + seed * 7),
            Action::Crash(Victim::Sequencer, None),
        );
        let r = sim.run();
        assert!(r.ok(), "{}", r.render());
        detect.push(Duration::from_millis(
            *r.detection_ms.iter().max().unwrap_or(&0),
        ));
        change.push(Duration::from_millis(
            *r.view_change_ms.iter().max().unwrap_or(&0),
        ));
        recover.extend(r.recoveries.iter().copied());
        pause.push(r.max_total_gap);
    }
    for (name, mut v) in [
        ("failure detection (engine gauge)", detect),
        ("view change (engine gauge)", change),
        ("crash to every survivor in a view without it", recover),
        ("longest total-seq delivery pause", pause),
    ] {
        v.sort();
        println!(
            "{name}: median {:?}, worst {:?} over {} runs",
            v.get(v.len() / 2).copied().unwrap_or_default(),
            v.last().copied().unwrap_or_default(),
            v.len()
        );
    }
}
