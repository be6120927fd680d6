//! The simulator's checks are shown to fail: each test plants one bug in the
//! engine (feature `bug-injection`) and asserts the simulator reports the
//! violation it causes. A checker that never fails would fail these tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ordo_broker::engine::Bugs;
use ordo_broker::sim::{run_config, SimConfig, SimReport};

/// Runs a few lossy seeds with `bugs` planted and returns their reports.
fn with_bug(bugs: Bugs) -> Vec<SimReport> {
    (0..4)
        .map(|seed| {
            let mut c = SimConfig::from_seed(seed);
            c.faults.loss = 0.2;
            c.faults.partitions.clear();
            // A stuck run fails at the deadline; keep it short.
            c.deadline = std::time::Duration::from_secs(20);
            c.bugs = bugs;
            run_config(c)
        })
        .collect()
}

fn assert_reported(reports: &[SimReport], needle: &str) {
    let hits = reports
        .iter()
        .filter(|r| r.violations.iter().any(|v| v.contains(needle)))
        .count();
    for r in reports {
        println!("{}", r.render());
    }
    assert!(
        hits > 0,
        "no run reported {needle:?} although a bug was planted"
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
    let reports = with_bug(Bugs {
        two_sequencers: true,
        ..Bugs::default()
    });
    assert_reported(&reports, "TOTAL ORDER");
}
