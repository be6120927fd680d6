//! The failure detector: phi accrual (Hayashibara et al., 2004), one
//! history per member over the inter-arrival times of any frame from it.
//!
//! Instead of a fixed timeout, each member's history of inter-arrival times
//! (a bounded window) gives a normal distribution; `phi` is `-log10` of the
//! probability that the next frame comes even later than the silence seen
//! so far. Members send a heartbeat every `heartbeat_interval`, and any
//! frame counts, so a busy member has short intervals and an idle one
//! heartbeat-spaced ones. Two knobs keep a jittery network from looking
//! like a crash: the standard deviation is floored at `min_std_dev`, and
//! `acceptable_pause` is added to the mean (a GC pause, a loaded host, a
//! few lost heartbeats). A member is suspected once `phi` exceeds
//! `threshold`.
//!
//! Defaults (heartbeat 100 ms, pause 1 s, floor 100 ms, threshold 8): a
//! silent member is suspected about 1.6 s after its last frame (mean +
//! pause + ~5.6 floors), and a gap of a few hundred ms keeps `phi` near
//! zero. The trade-off: a lower threshold or pause detects a crash sooner
//! but suspects a live member on a congested or lossy network (it is then
//! excluded and rejoins as a new incarnation, a discontinuity for its
//! subscribers); a higher one keeps a dead member in the view longer, and
//! while it is there its unstable messages pin the retransmit buffers and
//! total-order topics wait for it.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use ordo_wire::Origin;

/// Inter-arrival samples kept per member.
pub(crate) const MAX_SAMPLES: usize = 200;

/// The detector's knobs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DetectorConfig {
    pub(crate) threshold: f64,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) acceptable_pause: Duration,
    pub(crate) min_std_dev: Duration,
}

/// One member's arrival history.
#[derive(Debug, Clone)]
struct History {
    last: Instant,
    /// Inter-arrival times in milliseconds, oldest first.
    samples: VecDeque<f64>,
    sum: f64,
    sum_sq: f64,
}

impl History {
    /// A history seeded with one heartbeat interval, so a member that fell
    /// silent right after it was first heard is still suspected in time.
    fn new(now: Instant, interval: Duration) -> Self {
        let mut h = History {
            last: now,
            samples: VecDeque::new(),
            sum: 0.0,
            sum_sq: 0.0,
        };
        h.push(ms(interval));
        h
    }

    fn push(&mut self, x: f64) {
        if self.samples.len() >= MAX_SAMPLES {
            if let Some(old) = self.samples.pop_front() {
                self.sum -= old;
                self.sum_sq -= old * old;
            }
        }
        self.samples.push_back(x);
        self.sum += x;
        self.sum_sq += x * x;
    }

    fn mean(&self) -> f64 {
        self.sum / self.samples.len().max(1) as f64
    }

    fn std_dev(&self) -> f64 {
        let n = self.samples.len().max(1) as f64;
        let mean = self.sum / n;
        (self.sum_sq / n - mean * mean).max(0.0).sqrt()
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Phi-accrual histories of the members of the view.
#[derive(Debug, Clone)]
pub(crate) struct Detector {
    cfg: DetectorConfig,
    members: BTreeMap<Origin, History>,
}

impl Detector {
    pub(crate) fn new(cfg: DetectorConfig) -> Self {
        Detector {
            cfg,
            members: BTreeMap::new(),
        }
    }

    /// Watches exactly `members` (a new view); a member not watched yet
    /// starts as if heard at `now`, so one never heard is suspected too.
    pub(crate) fn watch(&mut self, members: &[Origin], now: Instant) {
        self.members.retain(|o, _| members.contains(o));
        for m in members {
            self.members
                .entry(*m)
                .or_insert_with(|| History::new(now, self.cfg.heartbeat_interval));
        }
    }

    /// A frame from `origin` arrived at `now`.
    pub(crate) fn heard(&mut self, origin: Origin, now: Instant) {
        if let Some(h) = self.members.get_mut(&origin) {
            let gap = now.saturating_duration_since(h.last);
            h.last = now;
            h.push(ms(gap));
        }
    }

    /// Forgets the current silences (we were paused ourselves): every
    /// member counts as heard at `now`, with its history kept.
    pub(crate) fn restart(&mut self, now: Instant) {
        for h in self.members.values_mut() {
            h.last = now;
        }
    }

    /// When `origin` was last heard.
    pub(crate) fn last_heard(&self, origin: Origin) -> Option<Instant> {
        self.members.get(&origin).map(|h| h.last)
    }

    /// The suspicion level of `origin` at `now` (0 for one not watched).
    pub(crate) fn phi(&self, origin: Origin, now: Instant) -> f64 {
        let Some(h) = self.members.get(&origin) else {
            return 0.0;
        };
        let elapsed = ms(now.saturating_duration_since(h.last));
        let mean = h.mean() + ms(self.cfg.acceptable_pause);
        let std = h.std_dev().max(ms(self.cfg.min_std_dev)).max(0.001);
        phi(elapsed, mean, std)
    }

    /// Whether `origin`'s suspicion level is above the threshold.
    pub(crate) fn suspects(&self, origin: Origin, now: Instant) -> bool {
        self.phi(origin, now) > self.cfg.threshold
    }
}

/// `-log10(P(X > elapsed))` for X normal with `mean` and `std`, by the
/// logistic approximation of the normal CDF (as Akka and Cassandra use).
fn phi(elapsed: f64, mean: f64, std: f64) -> f64 {
    let y = (elapsed - mean) / std;
    let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
    let p_later = if elapsed > mean {
        e / (1.0 + e)
    } else {
        1.0 - 1.0 / (1.0 + e)
    };
    // Past ~37 standard deviations the probability underflows: cap it.
    -p_later.max(1e-300).log10()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use ordo_wire::{Incarnation, NodeId};

    fn cfg() -> DetectorConfig {
        DetectorConfig {
            threshold: 8.0,
            heartbeat_interval: Duration::from_millis(100),
            acceptable_pause: Duration::from_secs(1),
            min_std_dev: Duration::from_millis(100),
        }
    }

    fn o(n: u32) -> Origin {
        Origin {
            node: NodeId(n),
            incarnation: Incarnation(1),
        }
    }

    /// How long after its last frame a member falls silent and is suspected.
    fn detection_time(d: &Detector, who: Origin, from: Instant) -> Duration {
        let mut t = Duration::ZERO;
        while !d.suspects(who, from + t) {
            t += Duration::from_millis(10);
            assert!(t < Duration::from_secs(60), "never suspected");
        }
        t
    }

    #[test]
    fn a_silent_member_is_suspected_in_about_two_seconds_and_not_before_the_pause() {
        let t0 = Instant::now();
        let mut d = Detector::new(cfg());
        d.watch(&[o(1), o(2)], t0);
        let mut now = t0;
        for _ in 0..50 {
            now += Duration::from_millis(100);
            d.heard(o(2), now);
        }
        let t = detection_time(&d, o(2), now);
        assert!(
            t >= Duration::from_millis(1100) && t <= Duration::from_secs(3),
            "{t:?}"
        );
        // Never heard at all: suspected from the watch time in the same way.
        let t = detection_time(&d, o(1), t0);
        assert!(t <= Duration::from_secs(3), "{t:?}");
    }

    #[test]
    fn jitter_of_a_few_hundred_ms_is_not_suspicion() {
        let t0 = Instant::now();
        let mut d = Detector::new(cfg());
        d.watch(&[o(2)], t0);
        let mut now = t0;
        // Heartbeats every 100 ms, some 400 ms late (lost ones, a loaded host).
        for i in 0..200u64 {
            let gap = if i % 7 == 0 { 500 } else { 100 };
            let before = now + Duration::from_millis(gap - 1);
            assert!(
                d.phi(o(2), before) < 1.0,
                "phi at {i}: {}",
                d.phi(o(2), before)
            );
            now += Duration::from_millis(gap);
            d.heard(o(2), now);
        }
    }

    #[test]
    fn the_window_is_bounded_and_phi_grows_with_silence() {
        let t0 = Instant::now();
        let mut d = Detector::new(cfg());
        d.watch(&[o(2)], t0);
        for i in 1..=1000u64 {
            d.heard(o(2), t0 + Duration::from_millis(i));
        }
        assert_eq!(d.members[&o(2)].samples.len(), MAX_SAMPLES);
        let last = t0 + Duration::from_millis(1000);
        let a = d.phi(o(2), last + Duration::from_millis(500));
        let b = d.phi(o(2), last + Duration::from_millis(1500));
        let c = d.phi(o(2), last + Duration::from_secs(100));
        assert!(a < b && b < c, "{a} {b} {c}");
        assert!(c.is_finite());
        // Watching a new view forgets departed members.
        d.watch(&[o(3)], last);
        assert_eq!(d.phi(o(2), last + Duration::from_secs(100)), 0.0);
    }
}
