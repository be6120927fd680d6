//! The deterministic simulator: engines on a virtual clock over a faulty
//! simulated multicast network. One seed decides everything (workload,
//! faults, every engine's RNG), so a failing seed replays exactly.
//!
//! [`run_seed`] is the randomized run `cargo test` repeats over hundreds of
//! seeds; [`Sim`] is the harness scenario tests script directly.
//!
//! ```text
//! cargo test -p ordo-broker --features sim                        # 500 seeds + scenarios + planted bugs
//! ORDO_SIM_SEEDS=100000 cargo test -p ordo-broker --features sim --test sim -- many_seeds --nocapture
//! ORDO_SIM_SEED=1234 cargo test -p ordo-broker --features sim --test sim -- replay --nocapture
//! ORDO_SIM_SCENARIO_SEEDS=300 ORDO_SIM_SCENARIO_LOSS=0.3 cargo test -p ordo-broker --features sim --test sim_scenarios
//! ```
//!
//! The workload mixes every ordering: publisher `p` publishes on
//! [`TOPICS`]`[p % 4]` (fifo, causal, total-isis, total-seq), every third
//! publisher `safe`, and a responder reads causal messages at slot 0 and
//! republishes at slot 1 with the delivery's causal context, so causal
//! chains cross brokers.
//!
//! Checked on every run: no loss, no duplicates, FIFO per publisher, the
//! virtual-synchrony delivery sets (see [`check`]), causal order against
//! the happened-before relation computed from the run's history (each
//! publisher's order, everything delivered at the publishing broker, the
//! responder's chains), total order (each total message has the same `gseq`
//! on every broker, and each broker's `gseq`s of a topic grow by one), one
//! agreed topic table, safe messages delivered only once every member holds
//! them, every buffer within its bound at every step, no datagram above the
//! maximum, retransmit buffers drained once traffic stops, every member in
//! one view, every planned fault fired.

pub mod check;
pub mod net;
pub mod workload;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use ordo_wire::{CausalContext, Incarnation, NodeId, Ordering, Origin};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::engine::{Engine, EngineConfig, Event, Publish, PublishError, Stats};
use check::{Life, Past, Published, ViewKey};
use net::{Corrupt, Duplicate, Jitter, Loss, Network, Partition, PartitionWindow};
use workload::PlannedPublish;

/// The command that replays one seed of the randomized run.
pub fn replay_command(seed: u64) -> String {
    format!(
        "ORDO_SIM_SEED={seed} cargo test -p ordo-broker --features sim --test sim -- replay --nocapture"
    )
}

/// The faults a run plans.
#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    /// Loss rate on every link.
    pub loss: f64,
    /// Directed links with their own loss rate (asymmetric loss).
    pub lossy_links: Vec<(usize, usize, f64)>,
    pub duplicate: f64,
    pub jitter: Duration,
    pub corrupt: f64,
    /// Partitions: (start after traffic begins, length, side, one-way).
    pub partitions: Vec<(Duration, Duration, BTreeSet<usize>, bool)>,
}

/// Everything one run needs.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub nodes: usize,
    pub publishers_per_node: usize,
    pub messages_per_publisher: u32,
    /// Publishes are spread over this much virtual time.
    pub traffic_span: Duration,
    pub max_datagram: usize,
    pub retransmit_buffer_bytes: usize,
    pub base_latency: Duration,
    pub faults: FaultPlan,
    /// Every payload this size (bytes) instead of random sizes.
    pub payload_size: Option<usize>,
    /// Every publish on this ordering (and `safe` as given) instead of the
    /// mix by publisher id (throughput mode).
    pub only: Option<(Ordering, bool)>,
    /// The engines' bound on causal hold-back and pending total messages.
    pub ordering_limit: Option<usize>,
    /// The run fails if it is not quiescent (everything delivered, buffers
    /// drained) this long after it started.
    pub deadline: Duration,
    #[cfg(feature = "bug-injection")]
    pub bugs: crate::engine::Bugs,
}

impl SimConfig {
    /// A quiet network and a small workload; scenario tests adjust it.
    pub fn basic(seed: u64, nodes: usize) -> Self {
        SimConfig {
            seed,
            nodes,
            publishers_per_node: 2,
            messages_per_publisher: 50,
            traffic_span: Duration::from_millis(500),
            max_datagram: 1400,
            retransmit_buffer_bytes: 256 * 1024,
            base_latency: Duration::from_micros(200),
            faults: FaultPlan::default(),
            payload_size: None,
            only: None,
            ordering_limit: None,
            deadline: Duration::from_secs(120),
            #[cfg(feature = "bug-injection")]
            bugs: crate::engine::Bugs::default(),
        }
    }

    /// The randomized configuration of a seed: 3 to 5 brokers, 2 publishers
    /// each, loss from 0 to 30% with some asymmetric links, and per seed a
    /// chance of duplication, jitter, corruption and partitions.
    pub fn from_seed(seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x005e_ed0f_0bd0);
        let nodes = rng.gen_range(3..=5);
        let mut cfg = SimConfig::basic(seed, nodes);
        cfg.messages_per_publisher = rng.gen_range(40..=70);
        cfg.retransmit_buffer_bytes = [48 * 1024, 96 * 1024, 4 << 20][rng.gen_range(0..3)];
        let loss = [0.0, 0.03, 0.05, 0.1, 0.2, 0.3][(seed % 6) as usize];
        let f = &mut cfg.faults;
        f.loss = loss;
        if rng.gen_bool(0.3) {
            let from = rng.gen_range(0..nodes);
            let to = (from + rng.gen_range(1..nodes)) % nodes;
            f.lossy_links.push((from, to, rng.gen_range(0.1..0.3)));
        }
        if rng.gen_bool(0.3) {
            f.duplicate = rng.gen_range(0.03..0.06);
        }
        if rng.gen_bool(0.5) {
            f.jitter = Duration::from_micros(rng.gen_range(100..3000));
        }
        if rng.gen_bool(0.2) {
            f.corrupt = 0.03;
        }
        if rng.gen_bool(0.25) {
            let side = BTreeSet::from([rng.gen_range(0..nodes)]);
            let start = Duration::from_millis(rng.gen_range(0..400));
            let len = Duration::from_millis(rng.gen_range(50..300));
            f.partitions.push((start, len, side, rng.gen_bool(0.5)));
        }
        cfg
    }

    /// One line describing the run.
    pub fn describe(&self) -> String {
        let f = &self.faults;
        format!(
            "seed {} | {} brokers x {} publishers x {} msgs | buffer {} B | loss {:.0}% (+{} lossy links) dup {:.0}% jitter {:?} corrupt {:.0}% partitions {}",
            self.seed,
            self.nodes,
            self.publishers_per_node,
            self.messages_per_publisher,
            self.retransmit_buffer_bytes,
            f.loss * 100.0,
            f.lossy_links.len(),
            f.duplicate * 100.0,
            f.jitter,
            f.corrupt * 100.0,
            f.partitions.len()
        )
    }
}

/// The outcome of a run.
#[derive(Debug, Clone)]
pub struct SimReport {
    pub seed: u64,
    pub config: String,
    /// Empty when every check passed.
    pub violations: Vec<String>,
    /// Each planned fault and how often it fired.
    pub faults: Vec<(String, u64)>,
    /// Engine counters summed over every life.
    pub totals: Stats,
    /// Virtual time the run took.
    pub elapsed: Duration,
    /// How to replay it, for the randomized runs.
    pub replay: Option<String>,
    /// Delivery latency in virtual time (publish to each delivery,
    /// everywhere): median and 99th percentile.
    pub latency_p50: Duration,
    pub latency_p99: Duration,
    /// The most messages any engine's ordering layers held at once (causal
    /// hold-back or pending total order).
    pub peak_ordering_held: u64,
}

impl SimReport {
    /// Whether every check passed.
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// A readable report, with the replay command on failure.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{}", self.config);
        let t = &self.totals;
        let _ = writeln!(
            s,
            "  virtual {:?}: published {} delivered {} datagrams {} naks {} (suppressed {}) retransmissions {} (suppressed {}) duplicates {} gaps {}/{} stalls {} views {}",
            self.elapsed,
            t.messages_published,
            t.messages_delivered,
            t.datagrams_sent,
            t.naks_sent,
            t.naks_suppressed,
            t.retransmissions_sent,
            t.retransmissions_suppressed,
            t.duplicates,
            t.gaps_repaired,
            t.gaps_detected,
            t.flow_control_stalls,
            t.view_changes
        );
        for (name, n) in &self.faults {
            let _ = writeln!(s, "  fault {name}: fired {n}");
        }
        for v in &self.violations {
            let _ = writeln!(s, "  VIOLATION: {v}");
        }
        if let (false, Some(cmd)) = (self.ok(), &self.replay) {
            let _ = writeln!(s, "  replay: {cmd}");
        }
        s
    }
}

/// Something the harness does to a node at a planned instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Start an engine in an empty slot.
    Start(usize),
    /// Leave gracefully; the slot empties once the leave completed.
    Leave(usize),
    /// Crash the engine and start the next incarnation at once.
    Restart(usize),
}

#[derive(Debug)]
struct Slot {
    engine: Option<Engine>,
    life: usize,
    incarnation: u64,
    leaving: bool,
}

/// The harness: engines, network, workload and records.
#[derive(Debug)]
pub struct Sim {
    cfg: SimConfig,
    rng: SmallRng,
    start: Instant,
    now: Instant,
    net: Network,
    slots: Vec<Slot>,
    plan: VecDeque<PlannedPublish>,
    blocked: BTreeMap<u64, VecDeque<PlannedPublish>>,
    actions: Vec<(Instant, Action)>,
    lives: Vec<Life>,
    published: Vec<Published>,
    violations: Vec<String>,
    /// Counters of engines that are gone, so totals cover every life.
    retired: Vec<Stats>,
    publisher_ids: u64,
    bound_breaches: BTreeSet<String>,
    /// Each causal message's past, computed from the history.
    past: BTreeMap<(u64, u32), Past>,
    /// Responses planned by the responder: their context and past.
    responses: BTreeMap<(u64, u32), (CausalContext, Past)>,
    responded: u32,
    /// Virtual publish time of each message, and delivery latencies seen.
    sent_at: BTreeMap<(u64, u32), Instant>,
    latencies: Vec<Duration>,
    peak_ordering_held: u64,
}

/// The topics the workload uses, one per ordering: publisher `p` publishes
/// on `TOPICS[p % 4]` (and `safe` when `p % 3 == 0`, so safe messages occur
/// on every ordering).
pub const TOPICS: [(&str, Ordering); 4] = [
    ("sim.fifo", Ordering::Fifo),
    ("sim.causal", Ordering::Causal),
    ("sim.isis", Ordering::TotalIsis),
    ("sim.seq", Ordering::TotalSeq),
];

/// The responder's publisher id at a slot: it listens at slot 0 and, after
/// some causal deliveries there, publishes at slot 1 carrying the delivery's
/// context (a receive-then-publish chain across brokers). `≡ 1 (mod 4)`: causal.
const RESPONDER: u64 = 4_000_001;
/// Most responses per run.
const MAX_RESPONSES: u32 = 24;

fn topic_of(publisher: u64) -> (&'static str, Ordering) {
    TOPICS[(publisher % 4) as usize]
}

impl Sim {
    /// A harness with `cfg.nodes` empty slots; nothing runs yet.
    pub fn new(cfg: SimConfig) -> Sim {
        let start = Instant::now();
        let mut net = Network::new(cfg.base_latency);
        let f = &cfg.faults;
        let mut loss = Loss::uniform(f.loss);
        for &(a, b, r) in &f.lossy_links {
            loss = loss.link(a, b, r);
        }
        if f.loss > 0.0 || !f.lossy_links.is_empty() {
            net.add_fault(Box::new(loss));
        }
        if f.duplicate > 0.0 {
            net.add_fault(Box::new(Duplicate::new(
                f.duplicate,
                Duration::from_millis(2),
            )));
        }
        if f.jitter > Duration::ZERO {
            net.add_fault(Box::new(Jitter::new(f.jitter)));
        }
        if f.corrupt > 0.0 {
            net.add_fault(Box::new(Corrupt::new(f.corrupt)));
        }
        let slots = (0..cfg.nodes)
            .map(|_| Slot {
                engine: None,
                life: usize::MAX,
                incarnation: 0,
                leaving: false,
            })
            .collect();
        Sim {
            rng: SmallRng::seed_from_u64(cfg.seed),
            start,
            now: start,
            net,
            slots,
            plan: VecDeque::new(),
            blocked: BTreeMap::new(),
            actions: Vec::new(),
            lives: Vec::new(),
            published: Vec::new(),
            violations: Vec::new(),
            retired: Vec::new(),
            publisher_ids: 0,
            bound_breaches: BTreeSet::new(),
            past: BTreeMap::new(),
            responses: BTreeMap::new(),
            responded: 0,
            sent_at: BTreeMap::new(),
            latencies: Vec::new(),
            peak_ordering_held: 0,
            cfg,
        }
    }

    /// The virtual clock.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The engine in `slot`, if one runs there.
    pub fn engine(&self, slot: usize) -> Option<&Engine> {
        self.slots.get(slot).and_then(|s| s.engine.as_ref())
    }

    /// Adds an empty slot (for a broker joining later); returns its index.
    pub fn add_slot(&mut self) -> usize {
        self.slots.push(Slot {
            engine: None,
            life: usize::MAX,
            incarnation: 0,
            leaving: false,
        });
        self.slots.len() - 1
    }

    /// Plans an action `after` from now.
    pub fn schedule(&mut self, after: Duration, action: Action) {
        self.actions.push((self.now + after, action));
        self.actions.sort_by_key(|(t, _)| *t);
    }

    /// Starts every empty slot at once and runs until they agree on one view
    /// of all of them; faults act from then on. Returns whether they converged.
    pub fn form_group(&mut self) -> bool {
        for slot in 0..self.slots.len() {
            self.start_slot(slot);
        }
        let give_up = self.now + Duration::from_secs(10);
        while self.now < give_up {
            if self.converged() {
                self.declare_topics();
                self.net.faults_from(self.now);
                self.plan_partitions();
                return true;
            }
            if !self.step(give_up) {
                break;
            }
        }
        self.violations.push(format!(
            "the brokers did not converge to one view: {}",
            self.views_summary()
        ));
        false
    }

    /// Declares the workload's topics at the first engine (cluster-wide).
    fn declare_topics(&mut self) {
        let first = self.slots.iter().position(|s| s.engine.is_some());
        let Some(i) = first else { return };
        if let Some(e) = self.slots[i].engine.as_mut() {
            for (t, o) in TOPICS {
                let token = crate::engine::ConfirmToken { conn: 0, req: 0 };
                if let Err(err) = e.declare(t, o, false, token) {
                    self.violations.push(format!("declaring {t} failed: {err}"));
                }
            }
        }
        self.drain(i);
    }

    /// Plans traffic: `publishers_per_node` publishers on each of `slots`,
    /// starting `after` from now and spread over the configured span.
    pub fn plan_traffic(&mut self, after: Duration, slots: &[usize]) {
        self.plan_traffic_over(after, self.cfg.traffic_span, slots);
    }

    /// Like [`Sim::plan_traffic`], spread over `span`.
    pub fn plan_traffic_over(&mut self, after: Duration, span: Duration, slots: &[usize]) {
        let mut publishers = Vec::new();
        for &slot in slots {
            for _ in 0..self.cfg.publishers_per_node {
                self.publisher_ids += 1;
                publishers.push((slot, self.publisher_ids));
            }
        }
        let mut plan = workload::plan(
            &mut self.rng,
            self.now + after,
            span,
            &publishers,
            self.cfg.messages_per_publisher,
            self.cfg.max_datagram,
        );
        if let Some(size) = self.cfg.payload_size {
            plan.iter_mut().for_each(|p| p.size = size);
        }
        let mut all: Vec<PlannedPublish> = self.plan.drain(..).chain(plan).collect();
        all.sort_by_key(|p| (p.at, p.publisher, p.index));
        self.plan = all.into();
    }

    /// Lets the planned faults act from now on, even before a group formed.
    pub fn faults_from_now(&mut self) {
        self.net.faults_from(self.now);
    }

    /// The origins of the running engines, by slot.
    pub fn origins(&self) -> Vec<Option<Origin>> {
        self.slots
            .iter()
            .map(|s| s.engine.as_ref().map(Engine::origin))
            .collect()
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        while self.step(until) {}
        self.now = self.now.max(until);
    }

    /// Runs until the work is done and the group is quiet (or the deadline),
    /// then checks everything.
    pub fn run(mut self) -> SimReport {
        let deadline = self.start + self.cfg.deadline;
        let mut next_check = self.now;
        loop {
            if self.now >= next_check {
                if self.quiescent() {
                    break;
                }
                next_check = self.now + Duration::from_millis(10);
            }
            if !self.step(deadline) {
                break;
            }
        }
        self.finish()
    }

    // ----- the loop -----

    /// Advances to the next event before `until` and handles everything due
    /// then; false once nothing is due before `until`.
    fn step(&mut self, until: Instant) -> bool {
        let mut next: Option<Instant> = self.net.next_arrival();
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n: Instant| n.min(t)));
            }
        };
        for s in &self.slots {
            consider(s.engine.as_ref().and_then(Engine::poll_timeout));
        }
        consider(self.plan.front().map(|p| p.at));
        consider(self.actions.first().map(|(t, _)| *t));
        if !self.blocked.is_empty() {
            consider(Some(self.now + Duration::from_millis(1)));
        }
        let Some(t) = next else {
            return false;
        };
        if t > until {
            return false;
        }
        self.now = self.now.max(t);
        let now = self.now;

        while let Some((to, d)) = self.net.pop_due(now) {
            if let Some(e) = self.slots.get_mut(to).and_then(|s| s.engine.as_mut()) {
                e.handle_datagram_bytes(d, now);
            }
            self.drain(to);
        }
        for i in 0..self.slots.len() {
            let due = self.slots[i]
                .engine
                .as_ref()
                .and_then(Engine::poll_timeout)
                .is_some_and(|t| t <= now);
            if due {
                if let Some(e) = self.slots[i].engine.as_mut() {
                    e.handle_timeout(now);
                }
                self.drain(i);
            }
        }
        while self.actions.first().is_some_and(|(t, _)| *t <= now) {
            let (_, a) = self.actions.remove(0);
            self.act(a);
        }
        while self.plan.front().is_some_and(|p| p.at <= now) {
            if let Some(p) = self.plan.pop_front() {
                self.blocked.entry(p.publisher).or_default().push_back(p);
            }
        }
        self.publish_ready();
        for i in 0..self.slots.len() {
            self.drain(i);
        }
        self.check_bounds();
        true
    }

    /// Publishes whatever flow control admits, each publisher in order.
    fn publish_ready(&mut self) {
        let now = self.now;
        let publishers: Vec<u64> = self.blocked.keys().copied().collect();
        for publisher in publishers {
            while let Some(p) = self
                .blocked
                .get(&publisher)
                .and_then(|q| q.front())
                .cloned()
            {
                let Some(slot) = self.slots.get_mut(p.node) else {
                    break;
                };
                let life = slot.life;
                let Some(e) = slot.engine.as_mut() else {
                    break;
                };
                if !e.can_publish() {
                    break;
                }
                let view = view_key(e);
                let (topic, ordering, safe) = match self.cfg.only {
                    Some((o, safe)) => {
                        let t = TOPICS
                            .iter()
                            .find(|(_, to)| *to == o)
                            .map_or("sim.fifo", |t| t.0);
                        (t, o, safe)
                    }
                    None => {
                        let (t, o) = topic_of(publisher);
                        // Every third publisher publishes `safe` messages.
                        (t, o, publisher % 3 == 0)
                    }
                };
                let (context, mut past) = self
                    .responses
                    .get(&(publisher, p.index))
                    .cloned()
                    .unwrap_or_default();
                let msg = Publish {
                    topic: topic.into(),
                    ordering,
                    safe,
                    publisher,
                    context,
                    payload: workload::payload(publisher, p.index, p.size),
                    confirm: None,
                    published_at_us: 0,
                };
                match e.publish(msg, now) {
                    Ok(()) => {
                        self.sent_at.insert((publisher, p.index), now);
                        if ordering == Ordering::Causal {
                            // Its past: the publisher's earlier messages,
                            // everything delivered at this broker (the
                            // broker's clock goes with every publish) and
                            // what the client carried in.
                            past.insert(publisher, p.index);
                            if let Some(l) = self.lives.get(life) {
                                check::merge(&mut past, &l.clock);
                            }
                            self.past.insert((publisher, p.index), past);
                            self.responses.remove(&(publisher, p.index));
                        }
                        self.published.push(Published {
                            publisher,
                            index: p.index,
                            life,
                            view,
                        });
                        if let Some(q) = self.blocked.get_mut(&publisher) {
                            q.pop_front();
                        }
                    }
                    Err(PublishError::WouldBlock) => break,
                    Err(PublishError::Unavailable(why)) => {
                        self.violations
                            .push(format!("publish refused on slot {}: {why}", p.node));
                        if let Some(q) = self.blocked.get_mut(&publisher) {
                            q.pop_front();
                        }
                    }
                }
            }
            if self.blocked.get(&publisher).is_some_and(VecDeque::is_empty) {
                self.blocked.remove(&publisher);
            }
        }
    }

    /// Moves an engine's datagrams into the network and records its events.
    fn drain(&mut self, i: usize) {
        let now = self.now;
        let live: Vec<usize> = (0..self.slots.len())
            .filter(|j| self.slots[*j].engine.is_some())
            .collect();
        let Some(slot) = self.slots.get_mut(i) else {
            return;
        };
        let life = slot.life;
        let Some(e) = slot.engine.as_mut() else {
            return;
        };
        while let Some(d) = e.poll_transmit() {
            if d.len() > self.cfg.max_datagram {
                self.violations.push(format!(
                    "slot {i} sent a {}-byte datagram, above the {}-byte maximum",
                    d.len(),
                    self.cfg.max_datagram
                ));
            }
            self.net
                .send(i, live.iter().copied(), &d, now, &mut self.rng);
        }
        let mut safe = Vec::new();
        let mut respond = Vec::new();
        while let Some(ev) = e.poll_event() {
            let Some(rec) = self.lives.get_mut(life) else {
                continue;
            };
            match ev {
                Event::Deliver(d) => match workload::verify(&d.payload) {
                    Some(tag) if tag.publisher == d.publisher => {
                        rec.deliveries
                            .entry(tag.publisher)
                            .or_default()
                            .push(tag.index);
                        let m = (tag.publisher, tag.index);
                        if let Some(t) = self.sent_at.get(&m) {
                            self.latencies.push(now - *t);
                        }
                        match d.ordering {
                            Ordering::Causal => {
                                rec.causal.push(m);
                                if let Some(p) = self.past.get(&m) {
                                    check::merge(&mut rec.clock, p);
                                }
                                check::merge(&mut rec.clock, &Past::from([(m.0, m.1 + 1)]));
                                if i == 0 && m.0 != RESPONDER && (m.1 % 7 == 3) {
                                    respond.push((d.context.clone(), m));
                                }
                            }
                            Ordering::TotalIsis | Ordering::TotalSeq => {
                                rec.total.entry(d.topic.to_string()).or_default().push((
                                    m.0,
                                    m.1,
                                    d.gseq.map(|g| g.0),
                                ));
                            }
                            Ordering::Fifo => {}
                        }
                        let is_safe = match self.cfg.only {
                            Some((_, safe)) => safe,
                            None => tag.publisher % 3 == 0,
                        };
                        if is_safe {
                            safe.push((d.origin, d.seq, e.view().id));
                        }
                    }
                    _ => self.violations.push(format!(
                        "slot {i} delivered a corrupted payload ({} bytes) from {}",
                        d.payload.len(),
                        d.origin
                    )),
                },
                Event::ViewInstalled(v) => {
                    let coordinator = v.members.first().copied().unwrap_or_default();
                    rec.views.insert((v.id, coordinator));
                    rec.origin = e.origin();
                }
                Event::Discontinuity { from, to, reason } => {
                    rec.discontinuities += 1;
                    self.violations.push(format!(
                        "slot {i} reported a discontinuity from view {from} to {to}: {reason}"
                    ));
                }
                Event::Confirmed(_) | Event::TopicDeclared { .. } => {}
            }
        }
        for (context, m) in respond {
            self.respond(context, m);
        }
        let Some(slot) = self.slots.get_mut(i) else {
            return;
        };
        let Some(e) = slot.engine.as_mut() else {
            return;
        };
        if slot.leaving && e.has_left() {
            self.retired.push(e.stats().clone());
            slot.engine = None;
            slot.leaving = false;
        }
        // A safe message is delivered nowhere until every member holds it.
        for (origin, seq, view) in safe {
            for (j, other) in self.slots.iter().enumerate() {
                let Some(o) = &other.engine else { continue };
                if !o.in_view() || o.view().id != view {
                    continue;
                }
                let has = o
                    .digest_for_tests()
                    .get(&origin)
                    .copied()
                    .unwrap_or_default();
                if has < seq {
                    self.violations.push(format!(
                        "slot {i} delivered safe message {origin}/{seq} that slot {j} does not hold (it has up to {has})"
                    ));
                }
            }
        }
    }

    /// The responder received `m` at slot 0: it publishes at slot 1 with the
    /// delivery's context, so its message causally follows `m` everywhere.
    fn respond(&mut self, context: CausalContext, m: (u64, u32)) {
        if self.responded >= MAX_RESPONSES || self.slots.len() < 2 || self.cfg.only.is_some() {
            return;
        }
        if self.slots[1].engine.is_none() || self.slots[1].leaving {
            return;
        }
        let index = self.responded;
        self.responded += 1;
        let mut past = self.past.get(&m).cloned().unwrap_or_default();
        check::merge(&mut past, &Past::from([(m.0, m.1 + 1)]));
        self.responses.insert((RESPONDER, index), (context, past));
        self.blocked
            .entry(RESPONDER)
            .or_default()
            .push_back(PlannedPublish {
                at: self.now,
                node: 1,
                publisher: RESPONDER,
                index,
                size: 40,
            });
    }

    fn act(&mut self, a: Action) {
        match a {
            Action::Start(s) => self.start_slot(s),
            Action::Leave(s) => {
                // Publishes still waiting at a leaving broker are never
                // accepted (their clients get an error), so nobody expects them.
                self.plan.retain(|p| p.node != s);
                for q in self.blocked.values_mut() {
                    q.retain(|p| p.node != s);
                }
                self.blocked.retain(|_, q| !q.is_empty());
                let now = self.now;
                if let Some(slot) = self.slots.get_mut(s) {
                    if let Some(e) = slot.engine.as_mut() {
                        e.leave(now);
                        slot.leaving = true;
                    }
                }
                self.drain(s);
            }
            Action::Restart(s) => {
                if let Some(slot) = self.slots.get_mut(s) {
                    if let Some(e) = slot.engine.take() {
                        self.retired.push(e.stats().clone());
                        if let Some(l) = self.lives.get_mut(slot.life) {
                            l.crashed = true;
                        }
                    }
                }
                self.start_slot(s);
            }
        }
    }

    fn start_slot(&mut self, s: usize) {
        let now = self.now;
        let seed = self.cfg.seed;
        let Some(slot) = self.slots.get_mut(s) else {
            return;
        };
        if slot.engine.is_some() {
            return;
        }
        slot.incarnation += 1;
        let mut c = EngineConfig::new(NodeId(s as u32 + 1), Incarnation(slot.incarnation), "sim");
        c.seed = seed
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add((s as u64) << 32 | slot.incarnation);
        c.max_datagram = self.cfg.max_datagram;
        c.retransmit_buffer_bytes = self.cfg.retransmit_buffer_bytes;
        if let Some(l) = self.cfg.ordering_limit {
            c.ordering_limit = l;
        }
        #[cfg(feature = "bug-injection")]
        {
            c.bugs = self.cfg.bugs;
        }
        let e = Engine::new(c, now);
        self.lives.push(Life {
            slot: s,
            origin: e.origin(),
            ..Life::default()
        });
        slot.life = self.lives.len() - 1;
        slot.engine = Some(e);
        self.drain(s);
    }

    fn plan_partitions(&mut self) {
        let windows: Vec<PartitionWindow> = self
            .cfg
            .faults
            .partitions
            .iter()
            .map(|(start, len, side, one_way)| PartitionWindow {
                from: self.now + *start,
                until: self.now + *start + *len,
                side: side.clone(),
                one_way: *one_way,
            })
            .collect();
        if !windows.is_empty() {
            self.net.add_fault(Box::new(Partition::new(windows)));
        }
    }

    // ----- checks -----

    fn check_bounds(&mut self) {
        let mut found = Vec::new();
        // One partial message per origin at most, each below the largest message.
        let reassembly_bound = (self.slots.len() * 3 * self.cfg.max_datagram) as u64;
        for (i, s) in self.slots.iter().enumerate() {
            let Some(e) = &s.engine else { continue };
            let st = e.stats();
            if st.retransmit_buffer_bytes > st.retransmit_buffer_limit {
                found.push(format!(
                    "slot {i}: retransmit buffer {} B above its bound {} B",
                    st.retransmit_buffer_bytes, st.retransmit_buffer_limit
                ));
            }
            if st.unstable_own_bytes > st.retransmit_buffer_limit / 2 {
                found.push(format!(
                    "slot {i}: own unstable {} B above the send window",
                    st.unstable_own_bytes
                ));
            }
            // The ordering layers' bound is one of admission (a broker
            // takes no publish while its layers hold `ordering_limit`), not a
            // hard cap on what others send: recorded, reported, not failed.
            self.peak_ordering_held = self
                .peak_ordering_held
                .max(st.causal_holdback_messages)
                .max(st.total_pending_messages);
            if st.reassembly_bytes > reassembly_bound {
                found.push(format!(
                    "slot {i}: reassembly {} B above its bound {reassembly_bound} B",
                    st.reassembly_bytes
                ));
            }
        }
        // The first breach of each bound per slot is enough to report.
        for f in found {
            let key = f
                .split(" B")
                .next()
                .map(|k| k.split(' ').take(3).collect::<String>());
            if key
                .as_ref()
                .is_some_and(|k| self.bound_breaches.insert(k.clone()))
            {
                self.violations.push(f);
            }
        }
    }

    fn live(&self) -> impl Iterator<Item = &Engine> {
        self.slots.iter().filter_map(|s| s.engine.as_ref())
    }

    fn converged(&self) -> bool {
        let origins: BTreeSet<Origin> = self.live().map(Engine::origin).collect();
        self.live().all(|e| {
            e.in_view()
                && e.view().members.iter().copied().collect::<BTreeSet<_>>() == origins
                && e.view().id == self.live().next().map_or(e.view().id, |f| f.view().id)
        })
    }

    fn quiescent(&self) -> bool {
        if !self.plan.is_empty()
            || !self.blocked.is_empty()
            || !self.actions.is_empty()
            || self.slots.iter().any(|s| s.leaving)
            || !self.converged()
        {
            return false;
        }
        if self
            .live()
            .any(|e| e.stats().retransmit_buffer_bytes > 0 || e.has_gaps())
        {
            return false;
        }
        check::deliveries(&self.lives, &self.published).is_empty()
    }

    /// Each engine's identity and view, for debugging a scenario.
    pub fn views_summary(&self) -> String {
        let mut s = String::new();
        for (i, slot) in self.slots.iter().enumerate() {
            if let Some(e) = &slot.engine {
                let members: Vec<String> = e.view().members.iter().map(|m| m.to_string()).collect();
                let _ = write!(
                    s,
                    "[slot {i} {} in_view={} view {} {:?}] ",
                    e.origin(),
                    e.in_view(),
                    e.view().id,
                    members
                );
            }
        }
        s
    }

    fn finish(mut self) -> SimReport {
        let mut v = std::mem::take(&mut self.violations);
        v.extend(check::deliveries(&self.lives, &self.published));
        v.extend(check::causal(&self.lives, &self.past));
        v.extend(check::total(&self.lives));
        let tables: BTreeSet<Vec<(String, Ordering, bool)>> =
            self.live().map(Engine::agreed_topics).collect();
        if tables.len() > 1 {
            v.push(format!(
                "TOPICS: brokers disagree on the topic table: {tables:?}"
            ));
        }
        if !self.converged() {
            v.push(format!(
                "members do not share one view: {}",
                self.views_summary()
            ));
        }
        for (i, s) in self.slots.iter().enumerate() {
            let Some(e) = &s.engine else { continue };
            let st = e.stats();
            if st.retransmit_buffer_bytes > 0 {
                v.push(format!(
                    "slot {i}: retransmit buffer not drained after traffic stopped ({} B)",
                    st.retransmit_buffer_bytes
                ));
            }
            if st.causal_forced > 0 || st.control_unknown > 0 || st.control_malformed > 0 {
                v.push(format!(
                    "slot {i}: ordering anomalies: {} causal message(s) forced at a view change, {} control entries for unknown messages, {} undecodable control messages",
                    st.causal_forced, st.control_unknown, st.control_malformed
                ));
            }
            if st.unrecoverable > 0 {
                v.push(format!(
                    "slot {i}: {} unrecoverable message(s)",
                    st.unrecoverable
                ));
            }
            if s.leaving {
                v.push(format!("slot {i}: leave never completed"));
            }
        }
        if !self.plan.is_empty() || !self.blocked.is_empty() {
            v.push(format!(
                "{} publishes never admitted (flow control stuck)",
                self.plan.len() + self.blocked.values().map(VecDeque::len).sum::<usize>()
            ));
        }
        let faults = self.net.fault_report();
        for (name, n) in &faults {
            if *n == 0 {
                v.push(format!("planned fault {name} never fired"));
            }
        }
        let mut totals = Stats::default();
        let all: Vec<Stats> = self
            .retired
            .iter()
            .cloned()
            .chain(self.live().map(|e| e.stats().clone()))
            .collect();
        for s in &all {
            add_stats(&mut totals, s);
        }
        let mut lat = std::mem::take(&mut self.latencies);
        lat.sort();
        let pct = |q: f64| {
            lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        let (latency_p50, latency_p99) = (pct(0.5), pct(0.99));
        SimReport {
            peak_ordering_held: self.peak_ordering_held,
            latency_p50,
            latency_p99,
            seed: self.cfg.seed,
            config: self.cfg.describe(),
            violations: v,
            faults,
            totals,
            elapsed: self.now - self.start,
            replay: None,
        }
    }
}

fn view_key(e: &Engine) -> ViewKey {
    (
        e.view().id,
        e.view().members.first().copied().unwrap_or_default(),
    )
}

fn add_stats(t: &mut Stats, s: &Stats) {
    t.messages_published += s.messages_published;
    t.messages_delivered += s.messages_delivered;
    t.datagrams_sent += s.datagrams_sent;
    t.naks_sent += s.naks_sent;
    t.naks_suppressed += s.naks_suppressed;
    t.retransmissions_sent += s.retransmissions_sent;
    t.gaps_detected += s.gaps_detected;
    t.gaps_repaired += s.gaps_repaired;
    t.flow_control_stalls += s.flow_control_stalls;
    t.view_changes += s.view_changes;
    t.dropped_checksum += s.dropped_checksum;
    t.unrecoverable += s.unrecoverable;
    t.fragments += s.fragments;
    t.duplicates += s.duplicates;
    t.retransmissions_suppressed += s.retransmissions_suppressed;
    t.naks_received += s.naks_received;
}

/// The randomized run of one seed: form a group, publish, check.
pub fn run_seed(seed: u64) -> SimReport {
    let mut r = run_config(SimConfig::from_seed(seed));
    r.replay = Some(replay_command(seed));
    r
}

/// A randomized run of an explicit configuration.
pub fn run_config(cfg: SimConfig) -> SimReport {
    let nodes = cfg.nodes;
    let mut sim = Sim::new(cfg);
    if sim.form_group() {
        let all: Vec<usize> = (0..nodes).collect();
        sim.plan_traffic(Duration::from_millis(5), &all);
    }
    sim.run()
}
