//! The simulator's checks are shown to fail: each test plants one bug in the
//! engine (feature `bug-injection`) and asserts the simulator reports the
//! violation it causes. A checker that never fails would fail these tests.
//! The failure bugs run on failures that make them matter: a publisher
//! crashed mid-burst under heavy loss (skipping the flush, delivering a
//! departed member's messages on one survivor) and a sequencer cut off,
//! merged back, then traffic (a stale sequencer); the same runs without a
//! bug pass.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use ordo_broker::engine::Bugs;
use ordo_broker::sim::{run_config, PlannedCrash, Sim, SimConfig, SimReport, Victim};
use ordo_wire::Ordering;

/// Runs a few lossy seeds with `bugs` planted and returns their reports.
fn with_bug(bugs: Bugs) -> Vec<SimReport> {
    with_bug_seeds(bugs, 4)
}

fn with_bug_seeds(bugs: Bugs, seeds: u64) -> Vec<SimReport> {
    (0..seeds)
        .map(|seed| {
            let mut c = SimConfig::from_seed(seed);
            c.faults.loss = 0.2;
            c.faults.partitions.clear();
            // No membership faults: these bugs show on a stable view.
            c.faults.crashes.clear();
            c.faults.stalls.clear();
            // A stuck run fails at the deadline; keep it short.
            c.deadline = std::time::Duration::from_secs(20);
            c.bugs = bugs;
            run_config(c)
        })
        .collect()
}

/// A failure run: 4 brokers under 15% loss, all publishing for a second,
/// and `fault` planned on top.
fn failure_run(seed: u64, bugs: Bugs, fault: impl Fn(&mut SimConfig)) -> SimReport {
    let mut c = SimConfig::basic(seed, 4);
    c.faults.loss = 0.15;
    c.traffic_span = Duration::from_millis(1000);
    c.deadline = Duration::from_secs(30);
    c.bugs = bugs;
    fault(&mut c);
    run_config(c)
}

/// A publisher's broker crashes right after it sends a burst and restarts
/// at once (its new incarnation speaking proves the old one dead, so the
/// view change starts within a discovery period). Heavy loss on its links
/// leaves the survivors with different parts of its last messages, some
/// with holes nobody can fill, and slow repairs between survivors make
/// the flush wait for them. The survivors must agree on a cut.
fn crash_a_publisher(c: &mut SimConfig) {
    c.publishers_per_node = 3;
    for to in [0, 2, 3] {
        c.faults.lossy_links.push((1, to, 0.5));
    }
    c.tune = Some(|e| e.repair_delay = Duration::from_millis(800));
    c.faults.crashes.push(PlannedCrash {
        at: Duration::from_millis(300 + c.seed * 40),
        victim: Victim::Publisher(1),
        restart_after: Some(Duration::ZERO),
    });
}

/// Every message is total-seq; the sequencer is cut off (symmetric) for
/// longer than failure detection while nothing is published, the others
/// go on with a new sequencer, it merges back, and traffic resumes: from
/// then on only the new sequencer may order.
fn sequencer_cut_off_and_back(seed: u64, bugs: Bugs) -> SimReport {
    let mut c = SimConfig::basic(seed, 4);
    c.faults.loss = 0.1;
    c.only = Some((Ordering::TotalSeq, false));
    c.deadline = Duration::from_secs(30);
    c.bugs = bugs;
    c.faults.partitions.push((
        Duration::from_millis(400),
        Duration::from_millis(2500),
        std::collections::BTreeSet::from([0]),
        false,
    ));
    let mut sim = Sim::new(c);
    assert!(sim.form_group());
    let all = [0, 1, 2, 3];
    sim.plan_traffic_over(Duration::from_millis(5), Duration::from_millis(300), &all);
    sim.plan_traffic_over(
        Duration::from_millis(5000),
        Duration::from_millis(800),
        &all,
    );
    sim.run()
}

fn with_failure_bug(bugs: Bugs, fault: fn(&mut SimConfig)) -> Vec<SimReport> {
    with_failure_bug_seeds(bugs, fault, 6)
}

fn with_failure_bug_seeds(bugs: Bugs, fault: fn(&mut SimConfig), seeds: u64) -> Vec<SimReport> {
    (0..seeds)
        .map(|seed| failure_run(seed, bugs, fault))
        .collect()
}

fn assert_reported(reports: &[SimReport], needle: &str) {
    assert_reported_any(reports, &[needle]);
}

fn assert_reported_any(reports: &[SimReport], needles: &[&str]) {
    let hits = reports
        .iter()
        .filter(|r| {
            r.violations
                .iter()
                .any(|v| needles.iter().any(|n| v.contains(n)))
        })
        .count();
    for r in reports {
        println!("{}", r.render());
    }
    assert!(
        hits > 0,
        "no run reported any of {needles:?} although a bug was planted"
    );
}

#[test]
fn the_same_seeds_pass_without_a_bug() {
    for r in with_bug(Bugs::default()) {
        assert!(r.ok(), "{}", r.render());
    }
}

#[test]
fn dropping_every_retransmission_is_reported_as_loss() {
    let reports = with_bug(Bugs {
        drop_retransmissions: true,
        ..Bugs::default()
    });
    assert_reported(&reports, "LOSS");
    assert_reported(&reports, "not drained");
}

#[test]
fn delivering_out_of_order_is_reported_as_a_fifo_violation() {
    let reports = with_bug(Bugs {
        reorder_delivery: true,
        ..Bugs::default()
    });
    assert_reported(&reports, "FIFO VIOLATION");
}

#[test]
fn forgetting_a_nak_is_reported_as_loss() {
    let reports = with_bug(Bugs {
        forget_nak: true,
        ..Bugs::default()
    });
    assert_reported(&reports, "LOSS");
}

#[test]
fn freeing_before_stability_is_reported_as_unrecoverable() {
    let reports = with_bug(Bugs {
        premature_free: true,
        ..Bugs::default()
    });
    assert_reported(&reports, "unrecoverable");
}

#[test]
fn delivering_safe_messages_early_is_reported() {
    let reports = with_bug(Bugs {
        early_safe: true,
        ..Bugs::default()
    });
    assert_reported(&reports, "does not hold");
}

#[test]
fn delivering_causal_without_hold_back_is_reported() {
    let reports = with_bug(Bugs {
        causal_no_holdback: true,
        ..Bugs::default()
    });
    assert_reported(&reports, "CAUSAL VIOLATION");
}

#[test]
fn skipping_the_max_over_isis_proposals_is_reported() {
    let reports = with_bug(Bugs {
        isis_skip_max: true,
        ..Bugs::default()
    });
    assert_reported(&reports, "TOTAL ORDER");
}

#[test]
fn two_sequencers_are_reported() {
    // 12 seeds: whether a second sequencer's order reaches a member before
    // the first's depends on the trajectory (4 of these catch it; seeds 0-3
    // stopped catching it when causal contexts shrank and batching moved).
    let reports = with_bug_seeds(
        Bugs {
            two_sequencers: true,
            ..Bugs::default()
        },
        12,
    );
    assert_reported(&reports, "TOTAL ORDER");
}

#[test]
fn the_same_failure_runs_pass_without_a_bug() {
    for r in with_failure_bug(Bugs::default(), crash_a_publisher) {
        assert!(r.ok(), "{}", r.render());
    }
    for seed in 0..4 {
        let r = sequencer_cut_off_and_back(seed, Bugs::default());
        assert!(r.ok(), "{}", r.render());
    }
}

#[test]
fn skipping_the_failure_flush_is_reported() {
    let reports = with_failure_bug(
        Bugs {
            skip_failure_flush: true,
            ..Bugs::default()
        },
        crash_a_publisher,
    );
    assert_reported_any(&reports, &["VIRTUAL SYNCHRONY", "LOSS", "FIFO GAP"]);
}

#[test]
fn a_stale_sequencer_acting_after_failover_is_reported() {
    let bugs = Bugs {
        stale_sequencer_acts: true,
        ..Bugs::default()
    };
    let reports: Vec<SimReport> = (0..4)
        .map(|seed| sequencer_cut_off_and_back(seed, bugs))
        .collect();
    assert_reported(&reports, "TOTAL ORDER");
}

#[test]
fn delivering_a_departed_members_messages_on_one_survivor_is_reported() {
    let reports = with_failure_bug_seeds(
        Bugs {
            departed_on_one_survivor: true,
            ..Bugs::default()
        },
        crash_a_publisher,
        30,
    );
    assert_reported_any(&reports, &["VIRTUAL SYNCHRONY", "FIFO GAP"]);
}
