//! The engine's configuration and the bugs tests may plant in it.

use std::time::Duration;

use ordo_wire::key::ClusterKey;
use ordo_wire::{Incarnation, NodeId};

use super::membership::DetectorConfig;
use super::reliability::RelConfig;

/// Smallest datagram the engine accepts to work with (headers plus a useful message).
pub const MIN_DATAGRAM: usize = 512;

/// Default [`EngineConfig::max_message`]: the broker's default `--max-payload`.
pub const DEFAULT_MAX_MESSAGE: usize = 1024 * 1024;

/// Default [`EngineConfig::reassembly_limit`]: 64 origins each mid-way
/// through a largest message.
pub const DEFAULT_REASSEMBLY_LIMIT: usize = 64 * 1024 * 1024;

/// Default [`EngineConfig::max_join_attempts`]: about 5 s of unanswered
/// joins with the default `acceptable_heartbeat_pause`, three failure
/// detections, so a coordinator that is merely slow to admit (a view
/// change under heavy loss took 3 s in the simulator) is not given up on.
pub const DEFAULT_MAX_JOIN_ATTEMPTS: u32 = 5;

/// Everything the engine needs to start; no field is read from the environment.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub node: NodeId,
    pub incarnation: Incarnation,
    /// Cluster name; frames of other clusters are dropped and counted.
    pub cluster: String,
    /// The cluster key: with one, every frame sent is signed with its first
    /// key and only frames one of its keys verifies are acted on; frames
    /// without a MAC, or with one no key verifies, are dropped and counted.
    /// Without one, frames carrying a MAC are dropped and counted.
    pub cluster_key: Option<ClusterKey>,
    /// Seeds every random choice (NAK backoff, jitter).
    pub seed: u64,
    /// Largest datagram the engine emits, headers included.
    pub max_datagram: usize,
    /// Bound on the retransmit buffer, in payload bytes. Flow control holds
    /// each origin's unstable messages to `1 / (2 * members)` of it, which
    /// also caps the size of one message.
    pub retransmit_buffer_bytes: usize,
    /// Interval between heartbeats (which carry the digest).
    pub heartbeat_interval: Duration,
    /// Failure detector (phi accrual, see `membership::detector`): a member
    /// is suspected once its suspicion level exceeds this. Lower detects a
    /// crash sooner but suspects live members on a jittery network.
    pub phi_threshold: f64,
    /// Silence tolerated on top of the mean heartbeat interval before
    /// suspicion grows (GC pauses, loaded hosts, a few lost heartbeats).
    pub acceptable_heartbeat_pause: Duration,
    /// Floor of the standard deviation of heartbeat inter-arrival times,
    /// so a very regular history does not make a small delay look fatal.
    pub min_heartbeat_std_dev: Duration,
    /// How many brokers the cluster has, if known (0: unknown). Before any
    /// primary view exists, a view is primary only with a majority of it;
    /// unknown, the first view a group forms is primary, so a broker
    /// restarted while cut off from its running group (finding nobody) would
    /// form a second primary view and order total topics on its own.
    pub cluster_size: usize,
    /// Longest wait between the join attempts of a broker that keeps being
    /// excluded (it backs off exponentially up to this, so a member the
    /// group cannot hear does not disrupt it forever).
    pub max_rejoin_backoff: Duration,
    /// Join rounds (each asks one coordinator for an
    /// `acceptable_heartbeat_pause`) left unanswered before a joiner founds
    /// a view of its own and lets the partition merge unite it with the
    /// group once they hear each other (a coordinator that cannot hear the
    /// joiner would keep it out forever). Zero: never give up.
    pub max_join_attempts: u32,
    /// How long a starting engine listens for an existing group before
    /// forming a view of its own. Zero: form one at once.
    pub discovery_timeout: Duration,
    /// Retry interval of membership messages (join, leave, propose, install).
    pub view_retry: Duration,
    /// Upper bound of the random delay before the first NAK of a gap.
    pub nak_delay_max: Duration,
    /// Wait before asking again for an unanswered gap; doubles each time.
    pub nak_backoff_initial: Duration,
    /// Ceiling of the NAK backoff.
    pub nak_backoff_max: Duration,
    /// NAKs per second at most (token bucket), and the burst allowed.
    pub nak_rate_per_sec: u32,
    pub nak_burst: u32,
    /// A member that holds another origin's message repairs it after a
    /// random delay in `[repair_delay, 2 * repair_delay]`, unless someone
    /// repaired it first; the origin repairs at once.
    pub repair_delay: Duration,
    /// Least time between prompt acknowledgements (digests answering data
    /// that asks for one): the first goes out at once, later requests
    /// within this time share one sent when it ends.
    pub ack_delay: Duration,
    /// Longest time our data goes without asking the others for a prompt
    /// acknowledgement when nobody waits for one (no confirmation, `safe`
    /// or total-order message): steady traffic then causes one digest per
    /// member per interval rather than one per `ack_delay`. Also how long
    /// after a burst without such a request a heartbeat tells its end.
    pub ack_interval: Duration,
    /// Most own messages (fragments count one each) not yet stable.
    pub send_window: usize,
    /// Messages further than this beyond the contiguous prefix are dropped.
    pub max_receive_ahead: u64,
    /// Bound on the causal hold-back queue and on pending total-order
    /// messages (each), enforced at admission: while either is reached, new
    /// publishes at this broker wait (flow control). Messages from other
    /// brokers are never dropped for it, so a member that lags (repairing a
    /// loss) can hold more for a while; the gauges show how much.
    pub ordering_limit: usize,
    /// Largest message (payload bytes) joined from fragments; a larger one is
    /// dropped and counted (`Stats::dropped_oversized`), and refused when
    /// published here. Set it to the broker's `--max-payload`.
    pub max_message: usize,
    /// Bound on the bytes of partially received fragmented messages, all
    /// origins together; a message that would exceed it is dropped and
    /// counted like an oversized one.
    pub reassembly_limit: usize,
    /// Planted bugs for the simulator's self-tests; all off by default.
    #[cfg(feature = "bug-injection")]
    pub bugs: Bugs,
}

/// Bugs the tests plant to prove the simulator catches them. Only settable
/// with the `bug-injection` feature; always off otherwise.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bugs {
    /// Build repairs but never send them.
    pub drop_retransmissions: bool,
    /// Swap each pair of consecutive deliveries of an origin.
    pub reorder_delivery: bool,
    /// Ask for a gap once and never again.
    pub forget_nak: bool,
    /// Free our own messages as soon as they are sent, before every member has them.
    pub premature_free: bool,
    /// Deliver `safe` messages as soon as they arrive, before every member holds them.
    pub early_safe: bool,
    /// Deliver causal messages at once, without waiting for their context.
    pub causal_no_holdback: bool,
    /// ISIS: fix the origin's own proposal as final instead of the maximum.
    pub isis_skip_max: bool,
    /// Total-seq: the second member also acts as a sequencer and its orders are obeyed.
    pub two_sequencers: bool,
    /// Install a failure view without waiting for the survivors to repair
    /// each other up to the agreed cut of the departed members' streams.
    pub skip_failure_flush: bool,
    /// After a failover, the old sequencer keeps ordering (once it is back,
    /// falsely suspected and rejoined under its node id) and the survivors
    /// obey it beside the new one.
    pub stale_sequencer_acts: bool,
    /// One survivor delivers a departed member's messages beyond the agreed cut.
    pub departed_on_one_survivor: bool,
}

impl EngineConfig {
    /// Defaults suited to loopback and a LAN.
    pub fn new(node: NodeId, incarnation: Incarnation, cluster: impl Into<String>) -> Self {
        EngineConfig {
            node,
            incarnation,
            cluster: cluster.into(),
            cluster_key: None,
            seed: u64::from(node.0) ^ incarnation.0,
            max_datagram: 8192,
            retransmit_buffer_bytes: 64 * 1024 * 1024,
            heartbeat_interval: Duration::from_millis(100),
            phi_threshold: 8.0,
            acceptable_heartbeat_pause: Duration::from_secs(1),
            min_heartbeat_std_dev: Duration::from_millis(100),
            max_rejoin_backoff: Duration::from_secs(10),
            max_join_attempts: DEFAULT_MAX_JOIN_ATTEMPTS,
            cluster_size: 0,
            discovery_timeout: Duration::from_millis(300),
            view_retry: Duration::from_millis(50),
            nak_delay_max: Duration::from_millis(5),
            nak_backoff_initial: Duration::from_millis(20),
            nak_backoff_max: Duration::from_millis(250),
            nak_rate_per_sec: 2000,
            nak_burst: 64,
            repair_delay: Duration::from_millis(10),
            ack_delay: Duration::from_millis(1),
            ack_interval: Duration::from_millis(10),
            send_window: 64 * 1024,
            max_receive_ahead: 1 << 20,
            ordering_limit: 16 * 1024,
            max_message: DEFAULT_MAX_MESSAGE,
            reassembly_limit: DEFAULT_REASSEMBLY_LIMIT,
            #[cfg(feature = "bug-injection")]
            bugs: Bugs::default(),
        }
    }

    /// The configuration with every interval at least 1 ms and room for a
    /// message in a datagram, so no setting can make the engine spin or
    /// refuse everything. [`Engine::new`](super::Engine::new) applies it.
    pub fn sanitized(mut self) -> Self {
        const MIN: Duration = Duration::from_millis(1);
        self.heartbeat_interval = self.heartbeat_interval.max(MIN);
        self.view_retry = self.view_retry.max(MIN);
        if !self.phi_threshold.is_finite() || self.phi_threshold <= 0.0 {
            self.phi_threshold = 8.0;
        }
        self.min_heartbeat_std_dev = self.min_heartbeat_std_dev.max(MIN);
        self.max_rejoin_backoff = self.max_rejoin_backoff.max(self.view_retry);
        self.nak_backoff_initial = self.nak_backoff_initial.max(MIN);
        self.nak_backoff_max = self.nak_backoff_max.max(self.nak_backoff_initial);
        self.max_datagram = self.max_datagram.max(MIN_DATAGRAM);
        self.send_window = self.send_window.max(1);
        self.max_receive_ahead = self.max_receive_ahead.max(1);
        self.ordering_limit = self.ordering_limit.max(1);
        self.max_message = self.max_message.max(1);
        self.reassembly_limit = self.reassembly_limit.max(self.max_message);
        self
    }

    pub(crate) fn bugs(&self) -> Bugs {
        #[cfg(feature = "bug-injection")]
        return self.bugs;
        #[cfg(not(feature = "bug-injection"))]
        Bugs::default()
    }

    pub(crate) fn detector(&self) -> DetectorConfig {
        DetectorConfig {
            threshold: self.phi_threshold,
            heartbeat_interval: self.heartbeat_interval,
            acceptable_pause: self.acceptable_heartbeat_pause,
            min_std_dev: self.min_heartbeat_std_dev,
        }
    }

    pub(crate) fn reliability(&self) -> RelConfig {
        RelConfig {
            limit: self.retransmit_buffer_bytes,
            send_window: self.send_window,
            nak_delay_max: self.nak_delay_max,
            nak_backoff_initial: self.nak_backoff_initial,
            nak_backoff_max: self.nak_backoff_max,
            repair_delay: self.repair_delay,
            nak_rate_per_sec: self.nak_rate_per_sec,
            nak_burst: self.nak_burst,
            max_ahead: self.max_receive_ahead,
            ack_interval: self.ack_interval,
            bugs: self.bugs(),
        }
    }
}
