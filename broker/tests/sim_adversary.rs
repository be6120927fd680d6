//! The cluster key against an attacker on the network, in the simulator:
//! an adversary records datagrams and later multicasts them again
//! (replays, seconds old: other views, dead incarnations), bit-flipped
//! copies, the same frames signed with another key, and unsigned copies.
//! Over many randomized seeds (loss, duplication, jitter, corruption,
//! partitions, crashes, stalls as in `sim.rs`), every guarantee check must
//! still pass: replays are deduplicated or ignored as stale, forgeries are
//! dropped and counted, never acted on. Unkeyed clusters are run against
//! the same replays (a MAC does not stop replays; the protocol must).
//!
//! `ORDO_SIM_ADVERSARY_SEEDS=N` (and `ORDO_SIM_ADVERSARY_FIRST_SEED`) for soak runs.
//!
//! Found by this adversary and fixed: replays of a crashed broker's frames
//! got its restart refused for good (members no longer refuse on hearing
//! an old incarnation); and after a partition healed while two
//! coordinators proposed the same view, a member that had flushed for the
//! other proposal kept a surviving origin's stream capped below the
//! install's cut, delivering the rest in the new view (the install's cut
//! now replaces every cap). Both are frames delayed by seconds, which
//! DESIGN's network may do: protocol bugs the key does not cause.
//!
//! Replayed frames of a broker cut off from the others counted as signs of
//! life, so the majority never suspected it and total order broke at the
//! merge (seeds 889 keyed, 4129 unkeyed): frames now carry their sender's
//! frame counter and only a newer frame is a sign of life.
//!
//! Open: [`KNOWN`] seeds miss the convergence bound (liveness, no safety
//! violation).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ordo_broker::sim::net::AdversaryPlan;
use ordo_broker::sim::{run_config, sim_key, SimConfig, SimReport};

fn seeds(default: u64) -> std::ops::Range<u64> {
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let first = env("ORDO_SIM_ADVERSARY_FIRST_SEED").unwrap_or(0);
    first..first + env("ORDO_SIM_ADVERSARY_SEEDS").unwrap_or(default)
}

/// Seeds of a 5,000-seed soak (keyed and unkeyed each) that fail, with
/// why: soak runs print them but do not fail on them. The default seeds
/// include none.
const KNOWN: &[(bool, u64, &str)] = &[
    (
        false,
        681,
        "liveness: the views merge and split for 95 s after the last fault (bound 10 s), the \
         merge-convergence weakness of sim seeds 68953 and 74281 (KNOWN_ENGINE_BUGS in sim.rs)",
    ),
    (
        false,
        1571,
        "liveness: as 681 (a symmetric partition of two brokers and a stall, under replays)",
    ),
];

/// Runs the randomized configuration of each seed with the adversary, the
/// cluster keyed or not; returns the reports (each checked).
fn run_all(keyed: bool, seeds: std::ops::Range<u64>) -> Vec<SimReport> {
    let mut failed = Vec::new();
    let mut reports = Vec::new();
    for seed in seeds {
        let mut cfg = SimConfig::from_seed(seed);
        cfg.cluster_key = keyed.then(sim_key);
        cfg.faults.adversary = Some(AdversaryPlan::new(cfg.cluster_key.clone()));
        let r = run_config(cfg);
        if !r.ok() {
            println!("{}", r.render());
            if let Some((_, _, why)) = KNOWN.iter().find(|k| (k.0, k.1) == (keyed, seed)) {
                println!("seed {seed} (keyed: {keyed}) is a known failure: {why}");
            } else {
                failed.push(seed);
            }
        }
        reports.push(r);
    }
    assert!(
        failed.is_empty(),
        "seeds {failed:?} failed (keyed: {keyed}); rerun one with ORDO_SIM_ADVERSARY_FIRST_SEED=S ORDO_SIM_ADVERSARY_SEEDS=1"
    );
    reports
}

fn fired(r: &SimReport, name: &str) -> u64 {
    r.faults
        .iter()
        .find(|(n, _)| n == name)
        .map_or(0, |(_, n)| *n)
}

#[test]
fn a_keyed_cluster_keeps_every_guarantee_under_replays_and_forgeries() {
    let reports = run_all(true, seeds(40));
    // Every kind of attack happened in every run (a planned fault that
    // never fires fails the run), and the forgeries were dropped for their
    // MAC (bit flips, another key) or its absence. Summed over the runs: a
    // run may end before an injection made seconds later lands.
    let sum = |f: fn(&SimReport) -> u64| reports.iter().map(f).sum::<u64>();
    assert!(sum(|r| fired(r, "adversary unsigned copies")) > 0);
    assert!(sum(|r| r.totals.dropped_bad_mac) > 0);
    assert!(sum(|r| r.totals.dropped_unauthenticated) > 0);
    // Nothing is ever taken for a checksum error: the MAC replaces it.
    assert_eq!(sum(|r| r.totals.dropped_checksum), 0);
}

#[test]
fn an_unkeyed_cluster_keeps_every_guarantee_under_replays() {
    let reports = run_all(false, seeds(25));
    // Frames signed with a key the cluster does not use are refused.
    let sum = |f: fn(&SimReport) -> u64| reports.iter().map(f).sum::<u64>();
    assert!(sum(|r| fired(r, "adversary frames signed with another key")) > 0);
    assert!(sum(|r| r.totals.dropped_unauthenticated) > 0);
    assert_eq!(sum(|r| r.totals.dropped_bad_mac), 0);
}

/// Randomized seeds whose adversary replayed a crashed broker's frames after
/// it restarted: the members took the old incarnation for a live duplicate
/// and refused the restarted broker for good (3 of 500 seeds, when the
/// randomized runs of `sim.rs` had the adversary). Each must pass, with
/// nobody refused (the engine test of the same name pins the rule).
#[test]
fn replays_of_a_crashed_brokers_frames_do_not_keep_its_restart_out() {
    for seed in [67, 232, 235] {
        let mut cfg = SimConfig::from_seed(seed);
        cfg.faults.adversary = Some(AdversaryPlan::new(cfg.cluster_key.clone()));
        let r = run_config(cfg);
        assert!(r.ok(), "seed {seed}:\n{}", r.render());
        assert!(r.refusals.is_empty(), "seed {seed}: {:?}", r.refusals);
    }
}

/// Seeds (unkeyed) where a member delivered in the new view what the others
/// delivered in the old one: a partition healed while two coordinators
/// proposed the same view, and this member's flush for the other proposal
/// had capped a surviving origin's stream below the install's cut.
#[test]
fn the_installs_cut_replaces_the_caps_of_another_proposals_flush() {
    for seed in [2083, 559] {
        let mut cfg = SimConfig::from_seed(seed);
        cfg.cluster_key = None;
        cfg.faults.adversary = Some(AdversaryPlan::new(None));
        let r = run_config(cfg);
        assert!(r.ok(), "seed {seed}:\n{}", r.render());
    }
}
