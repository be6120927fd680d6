//! Failure scenarios of issue 5 in the simulator with the engine's failure
//! handling: the sequencer (also the coordinator) restarted in the middle
//! of a stream, a publisher's broker restarted under loss, and two
//! restarts in a row. A restart is a crash whose old incarnation falls
//! silent: the survivors flush its stream up to the agreed cut, the next
//! member takes over as coordinator and sequencer, and the new incarnation
//! rejoins with the group's state. Every run ends with the simulator's
//! full checks (agreement, no loss among survivors, FIFO, causal, one total
//! order and gseq).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use ordo_broker::sim::{Action, Sim, SimConfig, SimReport};

/// Seeds per scenario; `ORDO_SIM_FAILURE_SEEDS` raises it for soak runs.
fn seeds() -> std::ops::Range<u64> {
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let first = env("ORDO_SIM_FAILURE_FIRST_SEED").unwrap_or(0);
    first..first + env("ORDO_SIM_FAILURE_SEEDS").unwrap_or(10)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn lossy(seed: u64, nodes: usize, loss: f64) -> SimConfig {
    let mut c = SimConfig::basic(seed, nodes);
    c.faults.loss = loss;
    c.faults.jitter = Duration::from_micros(500);
    c.faults.duplicate = 0.03;
    c
}

/// Runs until `done` holds, for at most 30 s of virtual time.
fn run_until(sim: &mut Sim, done: impl Fn(&Sim) -> bool) {
    for _ in 0..300 {
        if done(sim) {
            return;
        }
        sim.run_for(ms(100));
    }
}

fn assert_ok(r: &SimReport) {
    println!("{}", r.render());
    assert!(r.ok(), "scenario failed:\n{}", r.render());
}

/// Restarts `slot` at `at` during traffic from every slot and waits until
/// slot `watch` sees the new incarnation in its view.
fn restart_during_traffic(seed: u64, nodes: usize, loss: f64, slot: usize, watch: usize) {
    let mut sim = Sim::new(lossy(seed, nodes, loss));
    assert!(sim.form_group());
    let all: Vec<usize> = (0..nodes).collect();
    let others: Vec<usize> = all.iter().copied().filter(|s| *s != slot).collect();
    sim.plan_traffic_over(ms(5), ms(250), &[slot]);
    sim.plan_traffic_over(ms(5), ms(800), &others);
    sim.schedule(ms(200), Action::Restart(slot));
    sim.run_for(ms(210));
    let new = sim.origins()[slot].unwrap();
    sim.plan_traffic_over(ms(800), ms(200), &[slot]);
    run_until(&mut sim, |sim| {
        sim.engine(watch)
            .is_some_and(|e| e.in_view() && e.view().members.contains(&new))
    });
    let view = sim.engine(watch).unwrap().view().clone();
    assert!(view.members.contains(&new), "seed {seed}: {view:?}");
    assert!(view.primary, "seed {seed}: {view:?}");
    assert_ok(&sim.run());
}

#[test]
fn the_sequencer_restarts_in_the_middle_of_a_stream() {
    for seed in seeds() {
        restart_during_traffic(seed, 3, 0.05, 0, 1);
    }
}

#[test]
fn a_publishers_broker_restarts_under_loss() {
    for seed in seeds() {
        restart_during_traffic(seed, 4, 0.1, 2, 0);
    }
}

#[test]
fn two_brokers_restart_one_after_the_other() {
    for seed in seeds() {
        let mut sim = Sim::new(lossy(seed, 4, 0.05));
        assert!(sim.form_group());
        // A rolling restart: the second once the first is back in the view
        // (two of four lost before a view change would take the quorum).
        // Each crashed broker publishes only while every survivor is in the
        // view, so all of them judge its messages (slot 1 hosts the
        // simulator's responder throughout, so it is not restarted).
        sim.plan_traffic_over(ms(5), ms(140), &[0]);
        sim.plan_traffic_over(ms(5), ms(300), &[1, 3]);
        sim.schedule(ms(150), Action::Restart(0));
        sim.run_for(ms(160));
        let a = sim.origins()[0].unwrap();
        run_until(&mut sim, |sim| {
            sim.engine(3)
                .is_some_and(|e| e.in_view() && e.view().members.contains(&a))
        });
        sim.plan_traffic_over(ms(5), ms(300), &[0, 1, 2, 3]);
        sim.schedule(ms(150), Action::Restart(2));
        sim.run_for(ms(160));
        let b = sim.origins()[2].unwrap();
        run_until(&mut sim, |sim| {
            sim.engine(3)
                .is_some_and(|e| e.in_view() && e.view().members.contains(&b))
        });
        let view = sim.engine(3).unwrap().view().clone();
        assert!(
            view.members.contains(&a) && view.members.contains(&b) && view.primary,
            "seed {seed}: {view:?}"
        );
        sim.plan_traffic_over(ms(5), ms(200), &[2]);
        assert_ok(&sim.run());
    }
}

/// Slot 2 cannot reach slot 1 (a one-way cut of one link) while everyone
/// publishes for 4 s: slot 1 suspects slot 2 (it gets slot 2's messages
/// only as repairs from the others, always a little behind), the group
/// excludes slot 2 mid-stream (once the disputed suspicion stood a whole
/// pause: the coordinator still hears slot 2), and the flush must bring
/// slot 1 up to the cut the others hold.
#[cfg(feature = "bug-injection")]
fn unheard_publisher(seed: u64, bugs: ordo_broker::engine::Bugs) -> SimReport {
    unheard_link(seed, bugs, 1)
}

/// Slot 2 cannot reach slot `deaf`; as [`unheard_publisher`].
#[cfg(feature = "bug-injection")]
fn unheard_link(seed: u64, bugs: ordo_broker::engine::Bugs, deaf: usize) -> SimReport {
    let mut c = SimConfig::basic(seed, 4);
    c.faults.lossy_links.push((2, deaf, 1.0));
    c.traffic_span = ms(4000);
    c.messages_per_publisher = 400;
    c.deadline = Duration::from_secs(40);
    c.bugs = bugs;
    ordo_broker::sim::run_config(c)
}

#[cfg(feature = "bug-injection")]
fn survivors_disagree(r: &SimReport) -> bool {
    r.violations
        .iter()
        .any(|v| v.contains("VIRTUAL SYNCHRONY") || v.contains("FIFO GAP"))
}

#[cfg(feature = "bug-injection")]
#[test]
fn the_flush_brings_a_lagging_survivor_to_the_cut_and_the_planted_bugs_break_it() {
    use ordo_broker::engine::Bugs;
    let seeds = 0..4;
    for seed in seeds.clone() {
        let r = unheard_publisher(seed, Bugs::default());
        println!("{}", r.render());
        assert!(!survivors_disagree(&r), "{}", r.render());
    }
    // (`departed_on_one_survivor` is inert here: the survivor it is planted
    // on is slot 1, the lagging one, which holds nothing beyond the cut;
    // sim_bugs and the engine test `crash_with_uneven_holdings` catch it.)
    {
        let bugs = Bugs {
            skip_failure_flush: true,
            ..Bugs::default()
        };
        let caught = seeds
            .clone()
            .map(|seed| unheard_publisher(seed, bugs))
            .filter(survivors_disagree)
            .count();
        assert!(caught > 0, "{bugs:?} went unnoticed");
    }
}

/// The same one-way cut, but toward slot 3 (the last-ranked broker):
/// slot 3 never hears slot 2's digests, so it never learns slot 2 holds
/// anything, frees nothing it keeps for stability, and its buffer fills;
/// the flush that removes slot 2 then needs repairs a full buffer refused,
/// and the group wedged (flow control stalled every publisher, the view
/// change never installed; 9bdcedf too). A flush may now take repairs that
/// extend a stream a quarter beyond the bound. Survivors must agree and
/// every publish end delivered or answered.
#[cfg(feature = "bug-injection")]
#[test]
fn a_one_way_cut_toward_the_last_ranked_broker_does_not_wedge_the_group() {
    for seed in seeds().take(4) {
        let r = unheard_link(seed, ordo_broker::engine::Bugs::default(), 3);
        let stuck: Vec<&String> = r
            .violations
            .iter()
            .filter(|v| !v.contains("reported a discontinuity"))
            .collect();
        assert!(stuck.is_empty(), "{}", r.render());
    }
}
