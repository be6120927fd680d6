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
//! ORDO_SIM_SEED=1234 cargo test -p ordo-broker --features sim --test sim -- replay --exact --nocapture
//! ORDO_SIM_TRACE=1 ...                                             # publishes and view installs, as they happen
//! ORDO_SIM_LOG=info ...                                            # the engines' own logs, each with its slot and virtual ms
//! ORDO_SIM_SCENARIO_SEEDS=300 ORDO_SIM_SCENARIO_LOSS=0.3 cargo test -p ordo-broker --features sim --test sim_scenarios
//! ORDO_SIM_FAILURE_SEEDS=100 cargo test -p ordo-broker --features sim --test sim_scenarios   # failure scenarios
//! ```
//!
//! The workload mixes every ordering: publisher `p` publishes on
//! [`TOPICS`]`[p % 4]` (fifo, causal, total-isis, total-seq), every third
//! publisher `safe`, and a responder reads causal messages at slot 0 and
//! republishes at slot 1 with the delivery's causal context, so causal
//! chains cross brokers.
//!
//! Faults: loss (per link too), duplication, jitter, corruption, partitions
//! (symmetric or one way; short ones must lose nothing, long ones split the
//! view), a single directed link cut for seconds (one broker cannot hear
//! another that everyone else hears), and membership faults the harness makes at planned instants
//! ([`Action`]): a crash drops an engine (it processes and sends nothing
//! more; datagrams in flight still arrive), optionally followed by a new
//! incarnation on the same node id; a stall freezes an engine (a GC pause:
//! datagrams wait in its socket buffer) so the others may falsely suspect
//! it. A crash's victim can be picked from the engines' state when it
//! fires ([`Victim`]: the sequencer, the coordinator, the origin of an
//! unresolved isis message, a broker right after it publishes). Every
//! planned fault must fire.
//!
//! Checked on every run (see [`check`]): each message delivered only in the
//! view it was sent in (so never across a split), the same set delivered in
//! a view by every engine that went on from it to the same next view
//! (virtual synchrony, agreement on a crashed member's messages), no loss
//! among engines that went on together (and confirmed messages of a
//! crashed publisher reach the others), no duplicates, FIFO (a prefix of a
//! publisher's messages per view), causal order against the happened-before
//! relation computed from the run's history, total order (one `gseq` per
//! message and one message per `gseq` among engines that did not crash,
//! `gseq`s growing by one except across a discontinuity, total topics
//! delivered only in primary views, publishes to them refused only outside
//! one), one agreed topic table, safe messages delivered only once every
//! member going on with the deliverer holds them, every buffer within its
//! bound at every step, no datagram above the maximum, every buffer drained
//! once traffic stops, discontinuities only when membership faults were
//! planned, and liveness: every live engine in one view within
//! [`SimConfig::liveness_bound`] after the last fault healed.

pub mod check;
pub mod net;
pub mod workload;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ordo_wire::{CausalContext, Incarnation, NodeId, Ordering, Origin};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::engine::{Engine, EngineConfig, Event, Publish, PublishError, Stats};
use check::{Life, Past, Published, ViewKey};
use net::{Adversary, Corrupt, Duplicate, Jitter, Loss, Network, Partition, PartitionWindow};
use workload::PlannedPublish;

/// The cluster key of the simulated runs that use one.
pub fn sim_key() -> ordo_wire::key::ClusterKey {
    #[allow(clippy::expect_used)]
    ordo_wire::key::ClusterKey::parse(b"the simulated cluster's key, 0123456789")
        .expect("a constant key longer than the minimum")
}

/// The command that replays one seed of the randomized run.
pub fn replay_command(seed: u64) -> String {
    format!(
        "ORDO_SIM_SEED={seed} cargo test -p ordo-broker --features sim --test sim -- replay --exact --nocapture"
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
    /// Shorter than failure detection they must lose nothing; longer, they
    /// split the view (see [`check`]).
    pub partitions: Vec<(Duration, Duration, BTreeSet<usize>, bool)>,
    /// Crashes, from when traffic begins.
    pub crashes: Vec<PlannedCrash>,
    /// Stalls (a GC pause: the node processes nothing, then resumes):
    /// (start after traffic begins, slot, length).
    pub stalls: Vec<(Duration, usize, Duration)>,
    /// One directed link cut completely for a while, every other link
    /// working (`to` cannot hear `from`, everyone else hears both): (start
    /// after traffic begins, length, from, to). The asymmetric case where
    /// the one that cannot hear is the one that suspects.
    pub link_cuts: Vec<(Duration, Duration, usize, usize)>,
    /// An attacker on the network replaying recorded datagrams, and
    /// injecting bit-flipped copies and forgeries (see [`net::Adversary`]).
    pub adversary: Option<net::AdversaryPlan>,
}

impl FaultPlan {
    /// One or two random membership faults among `nodes` brokers: crashes
    /// (of the sequencer, the coordinator, the origin of an unresolved isis
    /// message, any broker; some restarted), stalls shorter or longer than
    /// failure detection, and partitions longer than it (symmetric or one
    /// way), all while traffic flows. At most a minority is ever down at
    /// once, so total topics always have a primary side.
    pub fn membership_faults(&mut self, rng: &mut SmallRng, nodes: usize) {
        let count = if nodes >= 5 && rng.gen_bool(0.3) {
            2
        } else {
            1
        };
        let mut down = 0;
        for _ in 0..count {
            let at = Duration::from_millis(rng.gen_range(30..450));
            let slot = rng.gen_range(0..nodes);
            let restart = Some(Duration::from_millis(rng.gen_range(200..3000)));
            let minority = (nodes - 1) / 2;
            match rng.gen_range(0..8) {
                0 if down < minority => {
                    down += 1;
                    self.crashes.push(PlannedCrash {
                        at,
                        victim: Victim::Sequencer,
                        restart_after: None,
                    });
                }
                1 if down < minority => {
                    down += 1;
                    self.crashes.push(PlannedCrash {
                        at,
                        victim: Victim::IsisOrigin,
                        restart_after: None,
                    });
                }
                2 => self.crashes.push(PlannedCrash {
                    at,
                    victim: Victim::Coordinator,
                    restart_after: restart,
                }),
                3 => self.crashes.push(PlannedCrash {
                    at,
                    victim: Victim::Slot(slot),
                    restart_after: if rng.gen_bool(0.5) {
                        restart
                    } else {
                        Some(Duration::ZERO)
                    },
                }),
                4 | 5 => {
                    let len = Duration::from_millis(rng.gen_range(100..4000));
                    self.stalls.push((at, slot, len));
                    // Sometimes under heavy jitter too: late heartbeats on
                    // top of the pause feed false suspicions.
                    if rng.gen_bool(0.3) {
                        self.jitter = self
                            .jitter
                            .max(Duration::from_millis(rng.gen_range(10..40)));
                    }
                }
                _ => {
                    // A minority cut off for longer than failure detection.
                    let size = rng.gen_range(1..=minority.max(1));
                    let first = rng.gen_range(0..nodes);
                    let side: BTreeSet<usize> = (0..size).map(|k| (first + k) % nodes).collect();
                    let len = Duration::from_millis(rng.gen_range(2000..5000));
                    let one_way = rng.gen_bool(0.3);
                    // A second cut of the same side while another lasts
                    // may drop nothing of its own (the first drops it all,
                    // and it counts as never fired): one longer cut instead.
                    let same = self
                        .partitions
                        .iter_mut()
                        .find(|(from, l, s, _)| *s == side && at < *from + *l && *from < at + len);
                    match same {
                        Some((from, l, _, ow)) => {
                            let until = (*from + *l).max(at + len);
                            *from = (*from).min(at);
                            *l = until - *from;
                            *ow &= one_way;
                        }
                        None => self.partitions.push((at, len, side, one_way)),
                    }
                }
            }
        }
    }

    /// Whether the plan has faults that change the membership (crashes,
    /// stalls, partitions or link cuts longer than `short`).
    pub fn changes_membership(&self, short: Duration) -> bool {
        !self.crashes.is_empty()
            || !self.stalls.is_empty()
            || self.partitions.iter().any(|p| p.1 > short)
            || self.link_cuts.iter().any(|c| c.1 > short)
    }
}

/// A crash the plan makes at an instant; the victim is picked then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedCrash {
    /// When, from when traffic begins.
    pub at: Duration,
    pub victim: Victim,
    /// Start the next incarnation on the same slot (same node id) this
    /// long after the crash.
    pub restart_after: Option<Duration>,
}

/// Which node a planned crash kills, decided from the engines' state at the
/// crash instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Victim {
    Slot(usize),
    /// The total-seq sequencer of the view (the first live engine's view).
    Sequencer,
    /// The view's coordinator.
    Coordinator,
    /// The broker at this slot right after it next sends a burst of
    /// publishes (1 µs later: nothing is acknowledged or repaired yet).
    Publisher(usize),
    /// The origin of a total-isis message no engine has delivered yet (its
    /// proposals or final priority are still in flight); one some engine
    /// delivered but not all if there is none.
    IsisOrigin,
}

impl std::fmt::Display for Victim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Victim::Slot(s) => write!(f, "slot {s}"),
            Victim::Publisher(s) => write!(f, "slot {s} right after it publishes"),
            Victim::Sequencer => f.write_str("the sequencer"),
            Victim::Coordinator => f.write_str("the coordinator"),
            Victim::IsisOrigin => f.write_str("the origin of an unresolved isis message"),
        }
    }
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
    /// Adjusts every engine's configuration (timers, detector) for a run.
    pub tune: Option<fn(&mut EngineConfig)>,
    /// The cluster key every engine uses (frames signed and verified).
    pub cluster_key: Option<ordo_wire::key::ClusterKey>,
    /// The run fails if it is not quiescent (everything delivered, buffers
    /// drained) this long after it started.
    pub deadline: Duration,
    /// After the last planned fault healed, every live engine must be in
    /// one view within this much virtual time (liveness).
    pub liveness_bound: Duration,
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
            tune: None,
            cluster_key: None,
            deadline: Duration::from_secs(120),
            liveness_bound: Duration::from_secs(10),
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
        // Membership faults draw from their own generator, so the choices
        // above (and the seeds' runs without such faults) stay as they were.
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x0c4a_54ed_5eed);
        if rng.gen_bool(0.4) {
            cfg.faults.membership_faults(&mut rng, nodes);
        }
        // A directed link cut longer than failure detection, from a third
        // generator: the seeds above keep every fault they had.
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x11c0_ffee_c075);
        if rng.gen_bool(0.08) {
            let from = rng.gen_range(0..nodes);
            let to = (from + rng.gen_range(1..nodes)) % nodes;
            let at = Duration::from_millis(rng.gen_range(30..450));
            let len = Duration::from_millis(rng.gen_range(2000..5000));
            // Not while a partition cuts that link anyway: the cut would
            // drop nothing of its own (and count as never fired).
            let covered = cfg
                .faults
                .partitions
                .iter()
                .any(|(p_at, p_len, side, one_way)| {
                    let overlaps = *p_at < at + len && at < *p_at + *p_len;
                    let cuts = side.contains(&from) != side.contains(&to)
                        && (!*one_way || side.contains(&from));
                    overlaps && cuts
                });
            if !covered {
                cfg.faults.link_cuts.push((at, len, from, to));
            }
        }
        // The cluster key too, for the same reason. (The adversary runs
        // over these configurations in `tests/sim_adversary.rs`.)
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x006b_6579_5f61_6476);
        if rng.gen_bool(0.3) {
            cfg.cluster_key = Some(sim_key());
        }
        cfg
    }

    /// One line describing the run.
    pub fn describe(&self) -> String {
        let f = &self.faults;
        format!(
            "seed {} | {} brokers x {} publishers x {} msgs | buffer {} B | loss {:.0}% (+{} lossy links) dup {:.0}% jitter {:?} corrupt {:.0}% partitions {:?} crashes {:?} stalls {:?}{}{}{}",
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
            f.partitions
                .iter()
                .map(|(at, len, side, one_way)| format!(
                    "{side:?}{} at {at:?} for {len:?}",
                    if *one_way { " one-way" } else { "" }
                ))
                .collect::<Vec<_>>(),
            f.crashes
                .iter()
                .map(|c| format!(
                    "{} at {:?}{}",
                    c.victim,
                    c.at,
                    c.restart_after
                        .map_or(String::new(), |r| format!(" restarted after {r:?}"))
                ))
                .collect::<Vec<_>>(),
            f.stalls
                .iter()
                .map(|(at, slot, len)| format!("slot {slot} at {at:?} for {len:?}"))
                .collect::<Vec<_>>(),
            f.link_cuts
                .iter()
                .map(|(at, len, from, to)| format!(
                    " link cut {from}->{to} at {at:?} for {len:?}"
                ))
                .collect::<String>(),
            if self.cluster_key.is_some() {
                " | cluster key"
            } else {
                ""
            },
            if f.adversary.is_some() {
                " | adversary (replays, bit flips, forgeries)"
            } else {
                ""
            },
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
    /// Each engine life's views in install order (what went where), shown
    /// with the violations of a failed run.
    pub lives: Vec<String>,
    /// Delivery latency in virtual time (publish to each delivery,
    /// everywhere): median and 99th percentile.
    pub latency_p50: Duration,
    pub latency_p99: Duration,
    /// The most messages any engine's ordering layers held at once (causal
    /// hold-back or pending total order).
    pub peak_ordering_held: u64,
    /// Discontinuity events the engines reported (exclusions, merges).
    pub discontinuities: u64,
    /// Total-topic deliveries a member made in the view it crashed in
    /// whose `gseq` the survivors gave another message (allowed: agreement
    /// binds the survivors; shown for the record).
    pub departed_divergences: u64,
    /// Publishes to total topics refused outside a primary view.
    pub refused: u64,
    /// Deliveries made in views that are not primary (the minority side).
    pub minority_deliveries: u64,
    /// Per crash: virtual time from the crash until every running engine
    /// had installed a view without the crashed member (failure detection
    /// plus the view change).
    pub recoveries: Vec<Duration>,
    /// The longest virtual time between two consecutive deliveries of one
    /// total topic at one engine (a failover's pause, under steady traffic).
    pub max_total_gap: Duration,
    /// Engines refused for claiming a node id in use, and why.
    pub refusals: Vec<String>,
    /// Per running engine at the end, its last failure-detection time and
    /// last view-change time as it measured them (ms; 0 if none).
    pub detection_ms: Vec<u64>,
    pub view_change_ms: Vec<u64>,
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
        if !self.recoveries.is_empty() || self.discontinuities > 0 || self.refused > 0 {
            let _ = writeln!(
                s,
                "  membership: recoveries {:?}, discontinuities {}, crashed members' total deliveries the survivors ordered otherwise {}, total publishes refused off-primary {}, deliveries off-primary {}, longest total-topic pause {:?}",
                self.recoveries,
                self.discontinuities,
                self.departed_divergences,
                self.refused,
                self.minority_deliveries,
                self.max_total_gap
            );
        }
        for v in &self.violations {
            let _ = writeln!(s, "  VIOLATION: {v}");
        }
        if !self.ok() {
            for l in &self.lives {
                let _ = writeln!(s, "  {l}");
            }
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
    /// Crash: drop the engine (it processes and sends nothing more;
    /// datagrams already in flight still arrive). With a delay, the next
    /// incarnation starts on the same slot (same node id) that much later.
    Crash(Victim, Option<Duration>),
    /// A pause (GC, swapping): the node processes nothing for the duration
    /// (datagrams wait in its socket buffer), then resumes.
    Stall(usize, Duration),
    /// The end of a stall (scheduled by [`Action::Stall`]).
    Resume(usize),
}

impl Action {
    /// Whether this is a fault the run must report as fired.
    fn is_fault(&self) -> bool {
        !matches!(
            self,
            Action::Start(_) | Action::Leave(_) | Action::Resume(_)
        )
    }

    fn describe(&self) -> String {
        match self {
            Action::Start(s) => format!("start slot {s}"),
            Action::Leave(s) => format!("leave slot {s}"),
            Action::Restart(s) => format!("restart slot {s}"),
            Action::Crash(v, None) => format!("crash {v}"),
            Action::Crash(v, Some(d)) => format!("crash {v}, restart after {d:?}"),
            Action::Stall(s, d) => format!("stall slot {s} for {d:?}"),
            Action::Resume(s) => format!("resume slot {s}"),
        }
    }
}

/// Datagrams a stalled node's socket buffer holds; more are dropped (and
/// counted), as the kernel would.
const STALL_BUFFER: usize = 4096;

/// How many times ([`VICTIM_RETRY`] apart) a planned crash looks for its
/// victim (say, an unresolved isis message) before it counts as never fired.
const VICTIM_PATIENCE: u32 = 600;

/// How often a planned crash looks for its victim again.
const VICTIM_RETRY: Duration = Duration::from_millis(10);

#[derive(Debug)]
struct Slot {
    engine: Option<Engine>,
    life: usize,
    incarnation: u64,
    leaving: bool,
    /// Stalled until then: nothing is processed.
    stalled_until: Option<Instant>,
    /// Datagrams that arrived during a stall.
    inbox: VecDeque<Bytes>,
    /// The node id its engines use, if not the slot's own (`slot + 1`).
    node: Option<u32>,
}

impl Slot {
    fn empty() -> Slot {
        Slot {
            engine: None,
            life: usize::MAX,
            incarnation: 0,
            leaving: false,
            stalled_until: None,
            inbox: VecDeque::new(),
            node: None,
        }
    }

    /// The engine, if it runs and is not stalled.
    fn active(&mut self) -> Option<&mut Engine> {
        if self.stalled_until.is_some() {
            return None;
        }
        self.engine.as_mut()
    }
}

/// A fault the harness makes (crash, restart, stall) and whether it fired.
#[derive(Debug, Clone)]
struct FaultRecord {
    name: String,
    fired: u64,
    attempts: u32,
    /// It gave up because the workload left it nothing to act on (a crash
    /// of an unresolved isis message's origin after the last isis publish).
    idle: bool,
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
    /// Planned actions in time order, with their fault record if a fault.
    actions: Vec<(Instant, Action, Option<usize>)>,
    faults_made: Vec<FaultRecord>,
    /// Datagrams a stalled node's full socket buffer dropped.
    stall_overflow: u64,
    /// When the last planned fault ends (heals); liveness counts from then.
    last_fault_end: Option<Instant>,
    /// When every live engine was first seen in one view after that.
    settled_at: Option<Instant>,
    /// Faults that can change the membership were planned: views may
    /// split and engines may rejoin with a discontinuity.
    membership_faults: bool,
    /// Safe deliveries made while another member of the view lacked the
    /// message: (deliverer's life, the other's life, view, description).
    safe_doubts: Vec<(usize, usize, ViewKey, String)>,
    /// Publishes to a total topic refused in a non-primary view.
    refused: u64,
    /// A slot claims another's node id; and the refusals seen.
    duplicates_planned: bool,
    refusals: Vec<String>,
    minority_deliveries: u64,
    /// Crashed members not yet out of every running engine's view, with
    /// the crash instant; and the times they took.
    crash_watch: Vec<(Origin, Instant)>,
    recoveries: Vec<Duration>,
    /// Per (life, total topic), the last delivery instant; the longest gap.
    last_total: BTreeMap<(usize, String), Instant>,
    max_total_gap: Duration,
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
    /// A restarted slot gets new publishers (the randomized runs).
    replan_on_restart: bool,
    /// Virtual publish time of each message, and delivery latencies seen.
    sent_at: BTreeMap<(u64, u32), Instant>,
    latencies: Vec<Duration>,
    peak_ordering_held: u64,
}

/// Partitions up to this long are shorter than failure detection: they
/// must be repaired by NAKs with nothing lost and no view change.
pub const SHORT_PARTITION: Duration = Duration::from_millis(400);

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
pub const RESPONDER: u64 = 4_000_001;
/// Most responses per run.
const MAX_RESPONSES: u32 = 24;

/// The span an engine's logs carry while the harness drives it (shown
/// with `ORDO_SIM_LOG`): its slot and the virtual time.
fn engine_span(slot: usize, at: Duration) -> tracing::Span {
    tracing::info_span!("sim", slot, ms = at.as_millis() as u64)
}

fn topic_of(publisher: u64) -> (&'static str, Ordering) {
    TOPICS[(publisher % 4) as usize]
}

impl Sim {
    /// A harness with `cfg.nodes` empty slots; nothing runs yet.
    pub fn new(cfg: SimConfig) -> Sim {
        if let Ok(filter) = std::env::var("ORDO_SIM_LOG") {
            // Once per process (later calls fail harmlessly): the engines'
            // tracing output, each line inside the span of its slot.
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_writer(std::io::stderr)
                .without_time()
                .with_target(false)
                .with_ansi(false)
                .try_init();
        }
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
        if let Some(plan) = &f.adversary {
            net.add_adversary(Adversary::new(plan.clone()));
        }
        let slots = (0..cfg.nodes).map(|_| Slot::empty()).collect();
        Sim {
            rng: SmallRng::seed_from_u64(cfg.seed),
            start,
            now: start,
            net,
            slots,
            plan: VecDeque::new(),
            blocked: BTreeMap::new(),
            actions: Vec::new(),
            faults_made: Vec::new(),
            stall_overflow: 0,
            last_fault_end: None,
            settled_at: None,
            membership_faults: cfg.faults.changes_membership(SHORT_PARTITION),
            refused: 0,
            duplicates_planned: false,
            refusals: Vec::new(),
            safe_doubts: Vec::new(),
            minority_deliveries: 0,
            crash_watch: Vec::new(),
            recoveries: Vec::new(),
            last_total: BTreeMap::new(),
            max_total_gap: Duration::ZERO,
            lives: Vec::new(),
            published: Vec::new(),
            violations: Vec::new(),
            retired: Vec::new(),
            publisher_ids: 0,
            bound_breaches: BTreeSet::new(),
            past: BTreeMap::new(),
            responses: BTreeMap::new(),
            responded: 0,
            replan_on_restart: false,
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
        self.slots.push(Slot::empty());
        self.slots.len() - 1
    }

    /// Adds an empty slot whose engines claim the node id of slot `of`,
    /// with a higher incarnation (a second live broker configured with an
    /// id already in use): it must be refused, and the run reports the
    /// refusal instead of failing on it.
    pub fn add_duplicate_slot(&mut self, of: usize) -> usize {
        let mut slot = Slot::empty();
        slot.node = Some(of as u32 + 1);
        slot.incarnation = 1000;
        self.slots.push(slot);
        self.duplicates_planned = true;
        self.slots.len() - 1
    }

    /// Plans an action `after` from now. A fault (crash, restart, stall)
    /// must fire, or the run fails; liveness is counted from when the last
    /// one ends.
    pub fn schedule(&mut self, after: Duration, action: Action) {
        let at = self.now + after;
        let record = action.is_fault().then(|| {
            self.faults_made.push(FaultRecord {
                name: format!("{} at +{:?}", action.describe(), at - self.start),
                fired: 0,
                attempts: 0,
                idle: false,
            });
            self.faults_made.len() - 1
        });
        let end = match action {
            Action::Crash(_, Some(d)) | Action::Stall(_, d) => Some(at + d),
            Action::Crash(_, None) | Action::Restart(_) => Some(at),
            Action::Start(_) | Action::Leave(_) | Action::Resume(_) => None,
        };
        if let Some(end) = end {
            self.note_fault_end(end);
        }
        if matches!(action, Action::Crash(..) | Action::Stall(..)) {
            self.membership_faults = true;
        }
        self.push_action(at, action, record);
    }

    fn push_action(&mut self, at: Instant, action: Action, record: Option<usize>) {
        self.actions.push((at, action, record));
        // Stable: actions planned for one instant run in planning order.
        self.actions.sort_by_key(|(t, _, _)| *t);
    }

    fn note_fault_end(&mut self, end: Instant) {
        self.last_fault_end = Some(self.last_fault_end.map_or(end, |e| e.max(end)));
        self.settled_at = None;
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
                self.plan_crashes_and_stalls();
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

    /// The causal messages (publisher, index) the engine life in `slot`
    /// delivered so far, in delivery order. A scenario can judge them
    /// strictly: [`check::causal`] leaves a predecessor never delivered to
    /// the loss check, which compares only engines that went on together.
    pub fn causal_delivered(&self, slot: usize) -> &[check::Msg] {
        self.slots
            .get(slot)
            .and_then(|s| self.lives.get(s.life))
            .map_or(&[], |l| l.causal.as_slice())
    }

    /// The happened-before past the harness computed for a causal message.
    pub fn causal_past(&self, m: check::Msg) -> Option<&Past> {
        self.past.get(&m)
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
                self.note_settled();
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
            if s.stalled_until.is_none() {
                consider(s.engine.as_ref().and_then(Engine::poll_timeout));
            }
        }
        consider(self.plan.front().map(|p| p.at));
        consider(self.actions.first().map(|(t, _, _)| *t));
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
            let Some(slot) = self.slots.get_mut(to) else {
                continue;
            };
            if slot.stalled_until.is_some() && slot.engine.is_some() {
                // The socket buffer holds it until the node resumes.
                if slot.inbox.len() < STALL_BUFFER {
                    slot.inbox.push_back(d);
                } else {
                    self.stall_overflow += 1;
                }
                continue;
            }
            if let Some(e) = slot.engine.as_mut() {
                let _span = engine_span(to, now - self.start).entered();
                e.handle_datagram_bytes(d, now);
            }
            self.drain(to);
        }
        for i in 0..self.slots.len() {
            let slot = &mut self.slots[i];
            let due = slot.stalled_until.is_none()
                && slot
                    .engine
                    .as_ref()
                    .and_then(Engine::poll_timeout)
                    .is_some_and(|t| t <= now);
            if due {
                let _span = engine_span(i, now - self.start).entered();
                if let Some(e) = slot.active() {
                    e.handle_timeout(now);
                }
                self.drain(i);
            }
        }
        while self.actions.first().is_some_and(|(t, _, _)| *t <= now) {
            let (_, a, record) = self.actions.remove(0);
            self.act(a, record);
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
        if !self.crash_watch.is_empty() {
            self.watch_crashes();
        }
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
                // A stalled broker reads nothing from its clients either.
                let Some(e) = slot.active() else {
                    break;
                };
                if !e.can_publish() {
                    break;
                }
                let view = view_key(e);
                let primary = e.view().primary;
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
                    confirm: Some(crate::engine::ConfirmToken {
                        conn: publisher,
                        req: self.published.len() as u64,
                    }),
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
                        if std::env::var("ORDO_SIM_TRACE").is_ok() {
                            eprintln!(
                                "TRACE {:?} publish {publisher}/{} at slot {} origin {} view {:?} in_view {}",
                                now - self.start,
                                p.index,
                                p.node,
                                e.origin(),
                                view,
                                e.in_view()
                            );
                        }
                        self.published.push(Published {
                            publisher,
                            index: p.index,
                            life,
                            view,
                            confirmed: false,
                            failed: false,
                            total: matches!(ordering, Ordering::TotalIsis | Ordering::TotalSeq),
                        });
                        if let Some(q) = self.blocked.get_mut(&publisher) {
                            q.pop_front();
                        }
                    }
                    Err(PublishError::WouldBlock) => break,
                    Err(PublishError::Unavailable(why)) => {
                        // Total topics take no publish outside a primary
                        // view (the minority side of a split): expected.
                        let total = matches!(ordering, Ordering::TotalIsis | Ordering::TotalSeq);
                        if total && !primary {
                            self.refused += 1;
                        } else {
                            self.violations.push(format!(
                                "publish refused on slot {} (primary view: {primary}): {why}",
                                p.node
                            ));
                        }
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
        let Some(e) = slot.active() else {
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
                        let m = (tag.publisher, tag.index);
                        rec.delivered(m);
                        if rec
                            .current()
                            .is_some_and(|v| rec.primary.get(&v) == Some(&false))
                        {
                            self.minority_deliveries += 1;
                        }
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
                                let primary = rec
                                    .current()
                                    .and_then(|v| rec.primary.get(&v))
                                    .copied()
                                    .unwrap_or(false);
                                let view = rec.current();
                                let key = (life, d.topic.to_string());
                                if let Some(t) = self.last_total.insert(key, now) {
                                    self.max_total_gap = self.max_total_gap.max(now - t);
                                }
                                rec.total.entry(d.topic.to_string()).or_default().push(
                                    check::TotalDelivery {
                                        msg: m,
                                        gseq: d.gseq.map(|g| g.0),
                                        epoch: rec.discontinuities,
                                        primary,
                                        view,
                                    },
                                );
                            }
                            Ordering::Fifo => {}
                        }
                        let is_safe = match self.cfg.only {
                            Some((_, safe)) => safe,
                            None => tag.publisher % 3 == 0,
                        };
                        if is_safe {
                            safe.push((d.origin, d.seq, rec.current()));
                        }
                    }
                    _ => self.violations.push(format!(
                        "slot {i} delivered a corrupted payload ({} bytes) from {}",
                        d.payload.len(),
                        d.origin
                    )),
                },
                Event::ViewInstalled(v) => {
                    if std::env::var("ORDO_SIM_TRACE").is_ok() {
                        eprintln!(
                            "TRACE {:?} slot {i} {} installs {} {:?} primary {}",
                            now - self.start,
                            e.origin(),
                            v.id,
                            v.members,
                            v.primary
                        );
                    }
                    let coordinator = v.members.first().copied().unwrap_or_default();
                    let key = (v.id, coordinator);
                    if !rec.views.insert(key) {
                        self.violations.push(format!(
                            "slot {i} ({}) installed view {} of {coordinator} twice",
                            e.origin(),
                            v.id
                        ));
                    }
                    rec.view_seq.push(key);
                    rec.members.insert(key, v.members.clone());
                    rec.primary.insert(key, v.primary);
                    rec.origin_in.insert(key, e.origin());
                    rec.origin = e.origin();
                }
                Event::Discontinuity { from, to, reason } => {
                    rec.discontinuities += 1;
                    // Only an exclusion (partition, stall, false
                    // suspicion) may cost an engine continuity.
                    if !self.membership_faults {
                        self.violations.push(format!(
                            "slot {i} reported a discontinuity from view {from} to {to}: {reason}"
                        ));
                    }
                }
                Event::Confirmed(token) => {
                    if std::env::var("ORDO_SIM_TRACE").is_ok() {
                        eprintln!(
                            "TRACE {:?} slot {i} {} confirms publish #{} (publisher {})",
                            now - self.start,
                            e.origin(),
                            token.req,
                            token.conn
                        );
                    }
                    if let Some(p) = usize::try_from(token.req)
                        .ok()
                        .and_then(|k| self.published.get_mut(k))
                    {
                        if p.confirmed || p.failed {
                            self.violations.push(format!(
                                "slot {i} answered publish #{} ({}/{}) twice (confirmed after {})",
                                token.req,
                                p.publisher,
                                p.index,
                                if p.failed {
                                    "failing it"
                                } else {
                                    "confirming it"
                                }
                            ));
                        }
                        p.confirmed = true;
                    }
                }
                Event::PublishFailed { token, reason } => {
                    if std::env::var("ORDO_SIM_TRACE").is_ok() {
                        eprintln!(
                            "TRACE {:?} slot {i} {} fails publish #{} (publisher {}): {reason}",
                            now - self.start,
                            e.origin(),
                            token.req,
                            token.conn
                        );
                    }
                    // Connection 0 is `declare_topics`' declarations, not a publish.
                    if let Some(p) = usize::try_from(token.req)
                        .ok()
                        .filter(|_| token.conn != 0)
                        .and_then(|k| self.published.get_mut(k))
                    {
                        if p.confirmed || p.failed {
                            self.violations.push(format!(
                                "slot {i} answered publish #{} ({}/{}) twice (failed after {})",
                                token.req,
                                p.publisher,
                                p.index,
                                if p.failed {
                                    "failing it"
                                } else {
                                    "confirming it"
                                }
                            ));
                        }
                        p.failed = true;
                    }
                }
                Event::TopicDeclared { .. } => {}
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
            if let Some(l) = self.lives.get_mut(life) {
                l.left = true;
            }
        } else if let Some(why) = e.refused().map(str::to_owned) {
            // Refused (a duplicate node id): it left; its slot empties.
            if !self.duplicates_planned {
                self.violations
                    .push(format!("slot {i} ({}) was refused: {why}", e.origin()));
            }
            self.refusals
                .push(format!("slot {i} ({}): {why}", e.origin()));
            self.retired.push(e.stats().clone());
            slot.engine = None;
            if let Some(l) = self.lives.get_mut(life) {
                l.left = true;
            }
        }
        // A safe message is delivered nowhere until every member holds it
        // (every member that goes on with the deliverer: a view change's
        // flush delivers what the survivors hold, whatever the departing
        // members lack, so this is judged at the end of the run).
        for (origin, seq, view) in safe {
            for (j, other) in self.slots.iter().enumerate() {
                let Some(o) = &other.engine else { continue };
                let Some(key) = view else { continue };
                // Members of the view it was delivered in hold it; once its
                // origin departed (the flush delivered it to all survivors
                // or none) the digests no longer track it.
                if !o.in_view() || Some(view_key(o)) != view || !o.view().members.contains(&origin)
                {
                    continue;
                }
                let has = o
                    .digest_for_tests()
                    .get(&origin)
                    .copied()
                    .unwrap_or_default();
                if has < seq {
                    self.safe_doubts.push((
                        life,
                        other.life,
                        key,
                        format!(
                            "slot {i} delivered safe message {origin}/{seq} that slot {j} does not hold (it has up to {has})"
                        ),
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

    fn act(&mut self, a: Action, record: Option<usize>) {
        let fired = match a {
            Action::Start(s) => {
                let restarted = self.slots.get(s).is_some_and(|x| x.incarnation > 0);
                self.start_slot(s);
                if restarted && self.replan_on_restart {
                    // The restarted broker's clients publish again, as new publishers.
                    self.plan_traffic_over(
                        Duration::from_millis(5),
                        Duration::from_millis(200),
                        &[s],
                    );
                }
                true
            }
            Action::Leave(s) => {
                self.forget_plans_at(s);
                let now = self.now;
                if let Some(slot) = self.slots.get_mut(s) {
                    if let Some(e) = slot.engine.as_mut() {
                        e.leave(now);
                        slot.leaving = true;
                    }
                }
                self.drain(s);
                true
            }
            Action::Restart(s) => {
                let crashed = self.crash_slot(s);
                self.start_slot(s);
                crashed
            }
            Action::Crash(Victim::Publisher(s), restart) => {
                // Moves to just after the slot's next planned publish.
                match self.plan.iter().find(|p| p.node == s && p.at >= self.now) {
                    Some(p) => {
                        let at = p.at + Duration::from_micros(1);
                        self.push_action(at, Action::Crash(Victim::Slot(s), restart), record);
                    }
                    None => {
                        if let Some(f) = record.and_then(|r| self.faults_made.get_mut(r)) {
                            f.attempts = VICTIM_PATIENCE;
                        }
                    }
                }
                // Counted when the moved crash fires.
                return;
            }
            Action::Crash(victim, restart) => match self.victim(victim) {
                Some(s) => {
                    self.crash_slot(s);
                    // Its clients die with it: their pending publishes are gone.
                    self.forget_plans_at(s);
                    if let Some(after) = restart {
                        self.push_action(self.now + after, Action::Start(s), None);
                    }
                    true
                }
                None => {
                    // Not there yet (say, no isis message in flight): try again shortly.
                    let next_isis = self
                        .plan
                        .iter()
                        .find(|p| self.ordering_of(p.publisher) == Ordering::TotalIsis)
                        .map(|p| p.at + Duration::from_micros(100));
                    let patient = record
                        .and_then(|r| self.faults_made.get_mut(r))
                        .is_some_and(|f| {
                            f.attempts += 1;
                            // No isis publish left and none unresolved:
                            // there is nothing to crash (seed 52556).
                            f.idle = victim == Victim::IsisOrigin && next_isis.is_none();
                            f.attempts < VICTIM_PATIENCE
                        });
                    if patient {
                        // An isis message is unresolved for about a round
                        // trip: look again just after the next one is sent.
                        let mut at = self.now + VICTIM_RETRY;
                        if victim == Victim::IsisOrigin {
                            if let Some(t) = next_isis.filter(|t| *t > self.now) {
                                at = at.min(t);
                            }
                        }
                        self.push_action(at, a, record);
                    }
                    false
                }
            },
            Action::Stall(s, len) => {
                // A stall planned on a slot whose engine is gone stalls the
                // next running one, so the planned fault still happens.
                let n = self.slots.len();
                let target = (0..n).map(|k| (s + k) % n).find(|k| {
                    self.slots[*k].engine.is_some() && self.slots[*k].stalled_until.is_none()
                });
                match target {
                    Some(t) => {
                        self.slots[t].stalled_until = Some(self.now + len);
                        self.push_action(self.now + len, Action::Resume(t), None);
                        true
                    }
                    None => false,
                }
            }
            Action::Resume(s) => {
                let now = self.now;
                // An event loop resuming may run its late timers before or
                // after reading the socket buffer: either order, by seed.
                let timers_first = self.rng.gen_bool(0.5);
                if let Some(slot) = self.slots.get_mut(s) {
                    slot.stalled_until = None;
                    let inbox = std::mem::take(&mut slot.inbox);
                    if let Some(e) = slot.engine.as_mut() {
                        let _span = engine_span(s, now - self.start).entered();
                        let due = |e: &Engine| e.poll_timeout().is_some_and(|t| t <= now);
                        if timers_first && due(e) {
                            e.handle_timeout(now);
                        }
                        for d in inbox {
                            e.handle_datagram_bytes(d, now);
                        }
                        if !timers_first && due(e) {
                            e.handle_timeout(now);
                        }
                    }
                }
                self.drain(s);
                true
            }
        };
        if let Some(f) = record.and_then(|r| self.faults_made.get_mut(r)) {
            if fired {
                f.fired += 1;
            }
        }
    }

    /// Publishes still waiting at a broker that leaves or crashes are never
    /// accepted (their clients get an error or die), so nobody expects them.
    fn forget_plans_at(&mut self, s: usize) {
        self.plan.retain(|p| p.node != s);
        for q in self.blocked.values_mut() {
            q.retain(|p| p.node != s);
        }
        self.blocked.retain(|_, q| !q.is_empty());
    }

    /// Drops the engine of slot `s` (a crash); false if none ran there.
    fn crash_slot(&mut self, s: usize) -> bool {
        let Some(slot) = self.slots.get_mut(s) else {
            return false;
        };
        slot.stalled_until = None;
        slot.inbox.clear();
        slot.leaving = false;
        let Some(e) = slot.engine.take() else {
            return false;
        };
        self.retired.push(e.stats().clone());
        if let Some(l) = self.lives.get_mut(slot.life) {
            l.crashed = true;
        }
        self.crash_watch.push((e.origin(), self.now));
        true
    }

    /// Records the recovery of crashes every running engine has moved past.
    fn watch_crashes(&mut self) {
        let now = self.now;
        let mut done = Vec::new();
        for (k, (dead, _)) in self.crash_watch.iter().enumerate() {
            let past = self
                .slots
                .iter()
                .filter_map(|s| s.engine.as_ref())
                .all(|e| e.in_view() && !e.view().members.contains(dead));
            if past {
                done.push(k);
            }
        }
        for k in done.into_iter().rev() {
            let (_, at) = self.crash_watch.remove(k);
            self.recoveries.push(now - at);
        }
    }

    /// The slot a planned crash kills now, if its victim exists.
    fn victim(&self, v: Victim) -> Option<usize> {
        let running = |s: usize| self.slots.get(s).is_some_and(|x| x.engine.is_some());
        let slot_of = |node: NodeId| (node.0 as usize).checked_sub(1).filter(|s| running(*s));
        // The view of the largest group (the primary side, if split).
        let view = self
            .live()
            .filter(|e| e.in_view())
            .max_by_key(|e| (e.view().primary, e.view().members.len()))
            .map(Engine::view);
        match v {
            // A slot an earlier crash emptied: the next running one, so the
            // planned crash still happens.
            Victim::Slot(s) | Victim::Publisher(s) => {
                let n = self.slots.len();
                (0..n).map(|k| (s + k) % n).find(|k| running(*k))
            }
            Victim::Sequencer => view.and_then(|v| v.sequencer).and_then(slot_of),
            Victim::Coordinator => view.and_then(|v| slot_of(v.coordinator)),
            Victim::IsisOrigin => {
                let live_lives: Vec<usize> = self
                    .slots
                    .iter()
                    .filter(|x| x.engine.is_some())
                    .map(|x| x.life)
                    .collect();
                let delivered_by = |p: &Published| {
                    live_lives
                        .iter()
                        .filter(|l| {
                            self.lives.get(**l).is_some_and(|life| {
                                life.deliveries
                                    .get(&p.publisher)
                                    .is_some_and(|d| d.contains(&p.index))
                            })
                        })
                        .count()
                };
                let candidates: Vec<(usize, usize)> = self
                    .published
                    .iter()
                    .rev()
                    .filter(|p| self.ordering_of(p.publisher) == Ordering::TotalIsis)
                    .filter_map(|p| {
                        let slot = self.lives.get(p.life)?.slot;
                        let current = self.slots.get(slot)?.life == p.life && running(slot);
                        let n = delivered_by(p);
                        (current && n < live_lives.len()).then_some((n, slot))
                    })
                    .collect();
                // Prefer a message nobody delivered: its final priority is not fixed.
                candidates
                    .iter()
                    .find(|(n, _)| *n == 0)
                    .or(candidates.first())
                    .map(|(_, s)| *s)
            }
        }
    }

    /// The ordering a publisher's messages use.
    fn ordering_of(&self, publisher: u64) -> Ordering {
        match self.cfg.only {
            Some((o, _)) => o,
            None => topic_of(publisher).1,
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
        let node = slot.node.unwrap_or(s as u32 + 1);
        let mut c = EngineConfig::new(NodeId(node), Incarnation(slot.incarnation), "sim");
        c.seed = seed
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add((s as u64) << 32 | slot.incarnation);
        c.max_datagram = self.cfg.max_datagram;
        c.retransmit_buffer_bytes = self.cfg.retransmit_buffer_bytes;
        if let Some(l) = self.cfg.ordering_limit {
            c.ordering_limit = l;
        }
        // Configured like a deployment: the group's size is known, so a
        // broker alone (say, restarted while cut off) forms no primary view.
        c.cluster_size = self.cfg.nodes;
        c.cluster_key = self.cfg.cluster_key.clone();
        if let Some(tune) = self.cfg.tune {
            tune(&mut c);
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
                only_to: None,
            })
            .chain(
                self.cfg
                    .faults
                    .link_cuts
                    .iter()
                    .map(|(start, len, from, to)| PartitionWindow {
                        from: self.now + *start,
                        until: self.now + *start + *len,
                        side: BTreeSet::from([*from]),
                        one_way: true,
                        only_to: Some(*to),
                    }),
            )
            .collect();
        // One fault per window, so each must fire on its own.
        for w in windows {
            self.note_fault_end(w.until);
            self.net.add_fault(Box::new(Partition::new(vec![w])));
        }
    }

    /// Schedules the planned crashes and stalls, from now.
    fn plan_crashes_and_stalls(&mut self) {
        let f = self.cfg.faults.clone();
        for c in &f.crashes {
            self.schedule(c.at, Action::Crash(c.victim, c.restart_after));
        }
        for (at, slot, len) in &f.stalls {
            self.schedule(*at, Action::Stall(*slot, *len));
        }
    }

    // ----- checks -----

    /// Notes when every live engine is first in one view after the last fault.
    fn note_settled(&mut self) {
        let healed = self.last_fault_end.is_some_and(|t| self.now >= t);
        if healed && self.settled_at.is_none() && self.actions.is_empty() && self.converged() {
            self.settled_at = Some(self.now);
        }
    }

    fn check_bounds(&mut self) {
        let mut found = Vec::new();
        // One partial message per origin at most, each below the largest message.
        let reassembly_bound = (self.slots.len() * 3 * self.cfg.max_datagram) as u64;
        for (i, s) in self.slots.iter().enumerate() {
            let Some(e) = &s.engine else { continue };
            let st = e.stats();
            // A flush may take repairs a quarter beyond the bound
            // (`Reliability::receive`: the flush reserve).
            let hard_bound = st.retransmit_buffer_limit + st.retransmit_buffer_limit / 4;
            if st.retransmit_buffer_bytes > hard_bound {
                found.push(format!(
                    "slot {i}: retransmit buffer {} B above its bound {} B (+ a quarter in flushes)",
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
        // Faults still acting (a partition not healed yet) keep the run going.
        if self.last_fault_end.is_some_and(|t| self.now < t)
            || self.settled_at.is_none() && self.last_fault_end.is_some()
        {
            return false;
        }
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
        if self.live().any(|e| {
            let st = e.stats();
            st.causal_holdback_messages > 0 || st.total_pending_messages > 0
        }) {
            return false;
        }
        !check::outstanding(&self.lives, &self.published)
    }

    /// Each engine's identity and view, for debugging a scenario.
    pub fn views_summary(&self) -> String {
        let mut s = String::new();
        for (i, slot) in self.slots.iter().enumerate() {
            if let Some(e) = &slot.engine {
                let members: Vec<String> = e.view().members.iter().map(|m| m.to_string()).collect();
                let _ = write!(
                    s,
                    "[slot {i} {} in_view={} view {} {:?}{}{}] ",
                    e.origin(),
                    e.in_view(),
                    e.view().id,
                    members,
                    if e.has_left() { " LEFT" } else { "" },
                    e.refused()
                        .map_or(String::new(), |r| format!(" REFUSED: {r}"))
                );
            }
        }
        s
    }

    fn finish(mut self) -> SimReport {
        for slot in &self.slots {
            let Some(e) = &slot.engine else { continue };
            if let Some(l) = self.lives.get_mut(slot.life) {
                let last = l.current().and_then(|v| l.origin_in.get(&v)).copied();
                l.rejoining = last.is_some_and(|o| o != e.origin());
            }
        }
        let mut v = std::mem::take(&mut self.violations);
        v.extend(check::answers(&self.lives, &self.published));
        v.extend(check::deliveries(&self.lives, &self.published));
        v.extend(check::causal(&self.lives, &self.past));
        let (total, diverged) = check::total(&self.lives);
        v.extend(total);
        for (a, b, view, what) in &self.safe_doubts {
            if check::went_on_together(&self.lives, *a, *b, view) {
                v.push(what.clone());
            }
        }
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
            // A member that departs can take a causal message's predecessor
            // (or a message an order names) with it: the survivors then
            // deliver without it, which the causal and total checks above
            // judge on what was delivered. Without such faults it is a bug.
            let excused = self.membership_faults;
            let forced = if excused { 0 } else { st.causal_forced };
            let unknown = if excused { 0 } else { st.control_unknown };
            if forced > 0 || unknown > 0 || st.control_malformed > 0 {
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
            if st.causal_holdback_messages > 0 || st.total_pending_messages > 0 {
                v.push(format!(
                    "slot {i}: ordering layers not drained after traffic stopped: {} causal held back, {} total pending",
                    st.causal_holdback_messages, st.total_pending_messages
                ));
            }
            if s.leaving {
                v.push(format!("slot {i}: leave never completed"));
            }
        }
        if let Some(heal) = self.last_fault_end {
            let bound = self.cfg.liveness_bound;
            match self.settled_at {
                Some(t) if t - heal <= bound => {}
                Some(t) => v.push(format!(
                    "LIVENESS: the live engines reached one view {:?} after the last fault healed (bound {bound:?})",
                    t - heal
                )),
                None => v.push(format!(
                    "LIVENESS: the live engines never reached one view after the last fault healed (bound {bound:?}): {}",
                    self.views_summary()
                )),
            }
        }
        if !self.plan.is_empty() || !self.blocked.is_empty() {
            v.push(format!(
                "{} publishes never admitted (flow control stuck)",
                self.plan.len() + self.blocked.values().map(VecDeque::len).sum::<usize>()
            ));
        }
        let mut faults = self.net.fault_report();
        faults.extend(self.faults_made.iter().map(|f| (f.name.clone(), f.fired)));
        if self.stall_overflow > 0 {
            faults.push(("stalled socket buffer overflow".into(), self.stall_overflow));
        }
        // A partition no datagram crossed (its side down or silent for the
        // whole window) had nothing to cut.
        let excused: BTreeSet<usize> = self
            .net
            .fault_idle()
            .iter()
            .copied()
            .chain(self.faults_made.iter().map(|f| f.idle))
            .enumerate()
            .filter(|(_, idle)| *idle)
            .map(|(k, _)| k)
            .collect();
        for (k, (name, n)) in faults.iter().enumerate() {
            if *n == 0 && !excused.contains(&k) {
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
        let discontinuities = self.lives.iter().map(|l| l.discontinuities).sum();
        let detection_ms = self
            .live()
            .map(|e| e.stats().last_failure_detection_ms)
            .collect();
        let view_change_ms = self.live().map(|e| e.stats().last_view_change_ms).collect();
        SimReport {
            refusals: std::mem::take(&mut self.refusals),
            detection_ms,
            view_change_ms,
            departed_divergences: diverged,
            discontinuities,
            refused: self.refused,
            minority_deliveries: self.minority_deliveries,
            recoveries: std::mem::take(&mut self.recoveries),
            max_total_gap: self.max_total_gap,
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
            lives: self
                .lives
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    let views: Vec<String> = l
                        .view_seq
                        .iter()
                        .map(|v| {
                            let members: Vec<String> = l
                                .members
                                .get(v)
                                .map(|m| m.iter().map(ToString::to_string).collect())
                                .unwrap_or_default();
                            let primary = if l.primary.get(v) == Some(&true) {
                                ""
                            } else {
                                " (not primary)"
                            };
                            format!("{}@{}{primary} {members:?}", v.0, v.1)
                        })
                        .collect();
                    format!(
                        "life {i} slot {} {}{}: {}",
                        l.slot,
                        l.origin,
                        if l.crashed {
                            " crashed"
                        } else if l.left {
                            " left"
                        } else {
                            ""
                        },
                        views.join(" -> ")
                    )
                })
                .collect(),
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
    t.dropped_unauthenticated += s.dropped_unauthenticated;
    t.dropped_bad_mac += s.dropped_bad_mac;
    t.dropped_stale_incarnation += s.dropped_stale_incarnation;
    t.dropped_wrong_view += s.dropped_wrong_view;
    t.dropped_not_member += s.dropped_not_member;
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
    sim.replan_on_restart = true;
    if sim.form_group() {
        let all: Vec<usize> = (0..nodes).collect();
        sim.plan_traffic(Duration::from_millis(5), &all);
    }
    sim.run()
}
