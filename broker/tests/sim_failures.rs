//! Failure scenarios of issue 5 in the simulator, driven by the engine's
//! own failure detector: crashes found by suspicion (not by a restart),
//! the flush cut among survivors, sequencer failover, and restarts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use ordo_broker::sim::{Action, Sim, SimConfig, SimReport};

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

fn trace() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

#[test]
fn debug_restart() {
    trace();
    let seed = 0;
    let mut sim = Sim::new(lossy(seed, 3, 0.05));
    assert!(sim.form_group());
    sim.plan_traffic_over(ms(5), ms(100), &[2]);
    sim.plan_traffic_over(ms(5), ms(600), &[0, 1]);
    sim.schedule(ms(300), Action::Restart(2));
    sim.run_for(ms(310));
    let new = sim.origins()[2].unwrap();
    sim.plan_traffic_over(ms(600), ms(200), &[2]);
    run_until(&mut sim, |sim| {
        sim.engine(0)
            .is_some_and(|e| e.in_view() && e.view().members.contains(&new))
    });
    assert_ok(&sim.run());
}
