//! The simulated multicast network: every datagram is copied to every other
//! node through a chain of composable faults, each of which counts how often
//! it fired so a run can prove its planned faults really happened; and an
//! optional [`Adversary`] on the network that records datagrams and injects
//! replays, bit-flipped copies and forgeries later.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::fmt::Debug;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ordo_wire::group::Frame;
use ordo_wire::key::ClusterKey;
use rand::rngs::SmallRng;
use rand::Rng;

/// One copy of a datagram on its way over one directed link.
#[derive(Debug, Clone)]
pub struct Transit {
    pub from: usize,
    pub to: usize,
    /// When it was sent.
    pub sent: Instant,
    /// Delay until delivery; faults may add to it.
    pub delay: Duration,
    pub dropped: bool,
    /// Extra copies to deliver (each with its own extra delay).
    pub duplicates: Vec<Duration>,
    /// Flip one bit of the delivered copy.
    pub corrupt: bool,
}

/// A network fault: looks at each transit and may drop, delay, duplicate or corrupt it.
pub trait Fault: Debug {
    /// A short name for reports.
    fn name(&self) -> String;
    /// Acts on one transit.
    fn apply(&mut self, t: &mut Transit, rng: &mut SmallRng);
    /// How many transits it acted on.
    fn fired(&self) -> u64;
    /// Whether it never had anything to act on (a partition no datagram
    /// crossed: both sides silent, or one side down), so not firing is no
    /// sign of a broken plan.
    fn idle(&self) -> bool {
        false
    }
}

/// Drops each datagram with a probability per directed link (asymmetric allowed).
#[derive(Debug, Clone)]
pub struct Loss {
    default: f64,
    links: BTreeMap<(usize, usize), f64>,
    fired: u64,
    /// Drops expected so far (the sum of the rates it was applied with).
    expected: f64,
}

/// Fewer drops than this expected, a loss that dropped nothing is no sign
/// of a broken plan (e.g. a lossy link from a broker that crashed early:
/// at 20% over 10 datagrams, nothing drops one seed in ten).
const LOSS_EXPECTED_TO_FIRE: f64 = 10.0;

impl Loss {
    /// The same rate on every link.
    pub fn uniform(rate: f64) -> Self {
        Loss {
            default: rate,
            links: BTreeMap::new(),
            fired: 0,
            expected: 0.0,
        }
    }

    /// A different rate on one directed link.
    pub fn link(mut self, from: usize, to: usize, rate: f64) -> Self {
        self.links.insert((from, to), rate);
        self
    }
}

impl Fault for Loss {
    fn name(&self) -> String {
        format!(
            "loss({:.0}%, {} asymmetric links)",
            self.default * 100.0,
            self.links.len()
        )
    }

    fn apply(&mut self, t: &mut Transit, rng: &mut SmallRng) {
        let rate = self
            .links
            .get(&(t.from, t.to))
            .copied()
            .unwrap_or(self.default);
        if t.dropped || rate <= 0.0 {
            return;
        }
        self.expected += rate.min(1.0);
        if rng.gen_bool(rate.min(1.0)) {
            t.dropped = true;
            self.fired += 1;
        }
    }

    fn fired(&self) -> u64 {
        self.fired
    }

    fn idle(&self) -> bool {
        self.expected < LOSS_EXPECTED_TO_FIRE
    }
}

/// Delivers an extra copy of a datagram with some probability.
#[derive(Debug, Clone)]
pub struct Duplicate {
    pub rate: f64,
    pub max_extra_delay: Duration,
    fired: u64,
}

impl Duplicate {
    pub fn new(rate: f64, max_extra_delay: Duration) -> Self {
        Duplicate {
            rate,
            max_extra_delay,
            fired: 0,
        }
    }
}

impl Fault for Duplicate {
    fn name(&self) -> String {
        format!("duplicate({:.0}%)", self.rate * 100.0)
    }

    fn apply(&mut self, t: &mut Transit, rng: &mut SmallRng) {
        if !t.dropped && rng.gen_bool(self.rate) {
            let extra = rng.gen_range(Duration::ZERO..=self.max_extra_delay);
            t.duplicates.push(extra);
            self.fired += 1;
        }
    }

    fn fired(&self) -> u64 {
        self.fired
    }
}

/// Adds a random delay to each datagram, which reorders them.
#[derive(Debug, Clone)]
pub struct Jitter {
    pub max: Duration,
    fired: u64,
}

impl Jitter {
    pub fn new(max: Duration) -> Self {
        Jitter { max, fired: 0 }
    }
}

impl Fault for Jitter {
    fn name(&self) -> String {
        format!("jitter({:?})", self.max)
    }

    fn apply(&mut self, t: &mut Transit, rng: &mut SmallRng) {
        if !t.dropped {
            let d = rng.gen_range(Duration::ZERO..=self.max);
            if d > Duration::ZERO {
                t.delay += d;
                self.fired += 1;
            }
        }
    }

    fn fired(&self) -> u64 {
        self.fired
    }
}

/// Flips one bit of a datagram with some probability (the checksum must catch it).
#[derive(Debug, Clone)]
pub struct Corrupt {
    pub rate: f64,
    fired: u64,
    /// Corruptions expected so far (as [`Loss`]'s).
    expected: f64,
}

impl Corrupt {
    pub fn new(rate: f64) -> Self {
        Corrupt {
            rate,
            fired: 0,
            expected: 0.0,
        }
    }
}

impl Fault for Corrupt {
    fn name(&self) -> String {
        format!("corrupt({:.1}%)", self.rate * 100.0)
    }

    fn apply(&mut self, t: &mut Transit, rng: &mut SmallRng) {
        if t.dropped {
            return;
        }
        self.expected += self.rate;
        if rng.gen_bool(self.rate) {
            t.corrupt = true;
            self.fired += 1;
        }
    }

    fn fired(&self) -> u64 {
        self.fired
    }

    /// As [`Loss`]: corrupting nothing where fewer than ten were expected
    /// (seed 66924: 3% of the few datagrams a 3-broker run with its
    /// sequencer crashed early still sent) is no sign of a broken plan.
    fn idle(&self) -> bool {
        self.expected < LOSS_EXPECTED_TO_FIRE
    }
}

/// Temporary partitions: during each window, datagrams from `side` to the
/// rest (and, unless one-way, back) are dropped.
#[derive(Debug, Clone)]
pub struct Partition {
    windows: Vec<PartitionWindow>,
    fired: u64,
    /// Transits that crossed a window and were not dropped already by an
    /// earlier fault (random loss, or a link cut the planner keeps apart).
    crossing: u64,
}

/// One partition.
#[derive(Debug, Clone)]
pub struct PartitionWindow {
    pub from: Instant,
    pub until: Instant,
    pub side: BTreeSet<usize>,
    /// Only traffic leaving `side` is cut (an asymmetric partition).
    pub one_way: bool,
    /// With `one_way`: only traffic from `side` to this node is cut (one
    /// directed link).
    pub only_to: Option<usize>,
}

impl Partition {
    pub fn new(windows: Vec<PartitionWindow>) -> Self {
        Partition {
            windows,
            fired: 0,
            crossing: 0,
        }
    }
}

impl Fault for Partition {
    fn name(&self) -> String {
        if let [w] = self.windows.as_slice() {
            if let Some(to) = w.only_to {
                return format!(
                    "link cut({:?} -> {to} for {:?})",
                    w.side,
                    w.until.saturating_duration_since(w.from)
                );
            }
            return format!(
                "partition({:?}{} for {:?})",
                w.side,
                if w.one_way { " one-way" } else { "" },
                w.until.saturating_duration_since(w.from)
            );
        }
        let one_way = self.windows.iter().filter(|w| w.one_way).count();
        format!(
            "partition({} windows, {one_way} one-way)",
            self.windows.len()
        )
    }

    fn apply(&mut self, t: &mut Transit, _rng: &mut SmallRng) {
        for w in &self.windows {
            if t.sent < w.from || t.sent >= w.until {
                continue;
            }
            let out = w.side.contains(&t.from)
                && !w.side.contains(&t.to)
                && w.only_to.is_none_or(|to| to == t.to);
            let back = !w.side.contains(&t.from) && w.side.contains(&t.to);
            if out || (back && !w.one_way) {
                // Every transit that crossed may have been lost at random
                // already (a 60 ms cut under 30% loss, seeds 45653,
                // 46468): then it had nothing to cut. Overlapping cuts of
                // one side are merged by the planner instead.
                if !t.dropped {
                    self.crossing += 1;
                    t.dropped = true;
                    self.fired += 1;
                }
                return;
            }
        }
    }

    fn fired(&self) -> u64 {
        self.fired
    }

    fn idle(&self) -> bool {
        self.crossing == 0
    }
}

/// What an [`Adversary`] does; part of a run's fault plan.
#[derive(Debug, Clone)]
pub struct AdversaryPlan {
    /// Share of the datagrams sent that it records.
    pub record: f64,
    /// Per datagram sent, the chance that it injects one attack.
    pub rate: f64,
    /// An injection lands up to this long after the send that triggered it
    /// (a replay can be seconds old: other views, dead incarnations).
    pub max_delay: Duration,
    /// The key the brokers use (to read captured frames), if any.
    pub key: Option<ClusterKey>,
    /// Another key, to sign forgeries with.
    pub foreign: ClusterKey,
}

impl AdversaryPlan {
    /// A busy attacker against brokers using `key`.
    pub fn new(key: Option<ClusterKey>) -> Self {
        AdversaryPlan {
            record: 0.3,
            rate: 0.08,
            max_delay: Duration::from_secs(3),
            key,
            #[allow(clippy::expect_used)]
            foreign: ClusterKey::from_secrets([&b"an attacker's own key, not the cluster's"[..]])
                .expect("a constant key longer than the minimum"),
        }
    }
}

/// The attacks an [`Adversary`] makes, in report order.
const ATTACKS: [&str; 4] = [
    "adversary replays",
    "adversary bit-flipped copies",
    "adversary frames signed with another key",
    "adversary unsigned copies",
];

/// An attacker on the network: it records some of the datagrams sent and,
/// at random instants, multicasts one of them again (a replay), a copy with
/// one bit flipped, the same frame signed with another key, or (against a
/// keyed cluster) without any MAC. Every injection goes to every node.
#[derive(Debug)]
pub struct Adversary {
    plan: AdversaryPlan,
    /// Recorded datagrams; bounded, a new one replaces a random old one.
    captured: Vec<Bytes>,
    fired: [u64; 4],
    /// Injections so far: the attacks take turns, so each one fires.
    injected: usize,
}

/// Most datagrams an adversary keeps.
const CAPTURE_LIMIT: usize = 4096;

impl Adversary {
    pub fn new(plan: AdversaryPlan) -> Self {
        Adversary {
            plan,
            captured: Vec::new(),
            fired: [0; 4],
            injected: 0,
        }
    }

    /// Sees a datagram being sent; returns what to inject (delay, datagram).
    fn observe(&mut self, datagram: &Bytes, rng: &mut SmallRng) -> Option<(Duration, Bytes)> {
        if rng.gen_bool(self.plan.record) {
            if self.captured.len() < CAPTURE_LIMIT {
                self.captured.push(datagram.clone());
            } else {
                let i = rng.gen_range(0..self.captured.len());
                self.captured[i] = datagram.clone();
            }
        }
        if self.captured.is_empty() || !rng.gen_bool(self.plan.rate) {
            return None;
        }
        let old = self.captured[rng.gen_range(0..self.captured.len())].clone();
        let kinds = if self.plan.key.is_some() { 4 } else { 3 };
        let kind = self.injected % kinds;
        self.injected += 1;
        let attack = match kind {
            0 => old,
            1 => {
                let mut v = old.to_vec();
                let i = rng.gen_range(0..v.len().max(1));
                if let Some(b) = v.get_mut(i) {
                    *b ^= 1 << rng.gen_range(0..8);
                }
                Bytes::from(v)
            }
            _ => {
                // Re-sealed: with another key, or with none at all.
                let frame = Frame::decode_with(&old, self.plan.key.as_ref()).ok()?;
                let key = (kind == 2).then_some(&self.plan.foreign);
                frame.encode_with(key)
            }
        };
        self.fired[kind] += 1;
        let delay = rng.gen_range(Duration::ZERO..=self.plan.max_delay);
        Some((delay, attack))
    }

    fn report(&self) -> Vec<(String, u64)> {
        let kinds = if self.plan.key.is_some() { 4 } else { 3 };
        (0..kinds)
            .map(|k| (ATTACKS[k].to_string(), self.fired[k]))
            .collect()
    }
}

/// Datagrams in flight, delivered in time order (ties in send order).
#[derive(Debug)]
pub struct Network {
    base_latency: Duration,
    faults: Vec<Box<dyn Fault>>,
    /// Faults apply only from this instant (membership forms on a quiet network).
    faults_from: Option<Instant>,
    queue: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    payloads: BTreeMap<u64, Bytes>,
    next_id: u64,
    adversary: Option<Adversary>,
    /// Datagrams sent into the network and copies delivered.
    pub sent: u64,
    pub delivered: u64,
}

impl Network {
    pub fn new(base_latency: Duration) -> Self {
        Network {
            base_latency,
            faults: Vec::new(),
            faults_from: None,
            queue: BinaryHeap::new(),
            payloads: BTreeMap::new(),
            next_id: 0,
            adversary: None,
            sent: 0,
            delivered: 0,
        }
    }

    /// Adds a fault to the chain.
    pub fn add_fault(&mut self, f: Box<dyn Fault>) {
        self.faults.push(f);
    }

    /// Faults act from `at` on (before it the network is perfect).
    pub fn faults_from(&mut self, at: Instant) {
        self.faults_from = Some(at);
    }

    /// Puts an adversary on the network (it acts, like the faults, only
    /// from [`Network::faults_from`] on).
    pub fn add_adversary(&mut self, a: Adversary) {
        self.adversary = Some(a);
    }

    /// The faults and how often each fired (the adversary's attacks last).
    pub fn fault_report(&self) -> Vec<(String, u64)> {
        let mut r: Vec<_> = self.faults.iter().map(|f| (f.name(), f.fired())).collect();
        if let Some(a) = &self.adversary {
            r.extend(a.report());
        }
        r
    }

    /// Per fault (as in [`Network::fault_report`]), whether it never had
    /// anything to act on.
    pub fn fault_idle(&self) -> Vec<bool> {
        let mut r: Vec<_> = self.faults.iter().map(|f| f.idle()).collect();
        if let Some(a) = &self.adversary {
            r.extend(a.report().iter().map(|_| false));
        }
        r
    }

    /// Multicasts `datagram` from `from` to every node in `to`.
    pub fn send(
        &mut self,
        from: usize,
        to: impl Iterator<Item = usize>,
        datagram: &Bytes,
        now: Instant,
        rng: &mut SmallRng,
    ) {
        self.sent += 1;
        let faulty = self.faults_from.is_some_and(|t| now >= t);
        let to: Vec<usize> = to.collect();
        if faulty {
            if let Some((delay, attack)) = self
                .adversary
                .as_mut()
                .and_then(|a| a.observe(datagram, rng))
            {
                // Multicast, so the sender hears it too.
                for &dest in &to {
                    self.enqueue(now + self.base_latency + delay, dest, attack.clone());
                }
            }
        }
        for dest in to.into_iter().filter(|d| *d != from) {
            let mut t = Transit {
                from,
                to: dest,
                sent: now,
                delay: self.base_latency,
                dropped: false,
                duplicates: Vec::new(),
                corrupt: false,
            };
            if faulty {
                for f in &mut self.faults {
                    f.apply(&mut t, rng);
                }
            }
            if t.dropped {
                continue;
            }
            let copy = if t.corrupt {
                let mut v = datagram.to_vec();
                let i = rng.gen_range(0..v.len().max(1));
                if let Some(b) = v.get_mut(i) {
                    *b ^= 1 << rng.gen_range(0..8);
                }
                Bytes::from(v)
            } else {
                datagram.clone()
            };
            self.enqueue(now + t.delay, dest, copy.clone());
            for extra in t.duplicates {
                self.enqueue(now + t.delay + extra, dest, copy.clone());
            }
        }
    }

    fn enqueue(&mut self, at: Instant, to: usize, d: Bytes) {
        let id = self.next_id;
        self.next_id += 1;
        self.payloads.insert(id, d);
        self.queue.push(Reverse((at, id, to)));
    }

    /// When the next datagram arrives.
    pub fn next_arrival(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse((t, _, _))| *t)
    }

    /// The next datagram due at `now`, with its destination.
    pub fn pop_due(&mut self, now: Instant) -> Option<(usize, Bytes)> {
        let Reverse((t, id, to)) = *self.queue.peek()?;
        if t > now {
            return None;
        }
        self.queue.pop();
        self.delivered += 1;
        self.payloads.remove(&id).map(|d| (to, d))
    }

    /// Datagrams still in flight.
    pub fn in_flight(&self) -> usize {
        self.queue.len()
    }
}
