//! Reliability: per-origin streams, gap detection, NAKs, repairs by any
//! holder, the bounded retransmit buffer and stability.
//!
//! Every member keeps an [`OriginLog`] per view member, its own included.
//! Gaps are found from data (a sequence number beyond the next expected) and
//! from digests (another member knows of a higher one), so the tail of a
//! burst is repaired without further traffic. A member asks for its gaps
//! after a random delay, stays quiet when another member's NAK already asked
//! for the same (NORM/PGM-style suppression), backs off exponentially and is
//! rate-capped. The origin repairs at once; other holders repair after a
//! random delay unless they see someone else's repair first.
//!
//! The retransmit buffer is bounded in bytes. Each origin's unstable
//! messages are held to a window of `limit / (2 * members)` by flow control
//! at the origin. A member must keep what it has not delivered yet (safe
//! messages wait for stability); everything truly unstable fits in half the
//! buffer, so a member can always take the next message of every stream and
//! no cycle of full buffers can form. Others' delivered messages are kept
//! for repairs only while room remains, and out-of-order ones give way to a
//! stream's next message, so receiving always progresses.
//!
//! That argument needs the origins' windows to drain, which needs stability,
//! which needs every member's digest. A member that cannot hear one broker
//! (a one-way cut) never learns what it holds, so nothing it keeps for
//! stability is freed and its buffer fills; only the view change that
//! removes the unheard broker frees it, and that flush waits for repairs.
//! So during a flush a message that extends its stream may take the buffer
//! up to a quarter beyond the bound (the hard bound the simulator checks).

mod log;
mod nak;
mod repair;
mod stability;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ordo_wire::group::{DataFrameWriter, DataMsg, Flags};
use ordo_wire::{Ordering, Origin, Seq};
use rand::rngs::SmallRng;
use rand::Rng;

use super::{ConfirmToken, Stats};
pub(crate) use log::{Held, OriginLog};
use nak::NakPacer;
use repair::RepairQueue;

/// The reliability knobs, copied from the engine's configuration.
#[derive(Debug, Clone)]
pub(crate) struct RelConfig {
    pub(crate) limit: usize,
    pub(crate) send_window: usize,
    pub(crate) nak_delay_max: Duration,
    pub(crate) nak_backoff_initial: Duration,
    pub(crate) nak_backoff_max: Duration,
    pub(crate) repair_delay: Duration,
    pub(crate) nak_rate_per_sec: u32,
    pub(crate) nak_burst: u32,
    pub(crate) max_ahead: u64,
    /// How long the end of a burst may go without asking the others for a
    /// prompt digest when nobody waits for one (see [`Reliability::fill`]).
    pub(crate) ack_interval: Duration,
    pub(crate) bugs: super::Bugs,
}

/// What a received message turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Received {
    /// New; stored (and released if it extends the contiguous prefix).
    New,
    /// Already received (or already stable).
    Duplicate,
    /// Not kept: out of the window or no room; it will be asked for again.
    Dropped,
}

/// The reliability state of one engine.
#[derive(Debug)]
pub(crate) struct Reliability {
    me: Origin,
    cfg: RelConfig,
    logs: BTreeMap<Origin, OriginLog>,
    /// Each other member's latest digest: what it has of each origin (what
    /// it vouches for, see `stability`).
    peers: BTreeMap<Origin, BTreeMap<Origin, Seq>>,
    held_bytes: usize,
    /// Members in the view: each origin's window is a share of the buffer.
    members: usize,
    /// Own messages handed to the driver up to this one.
    sent: Seq,
    confirms: BTreeMap<Seq, (ConfirmToken, bool)>,
    /// Something sent (or about to be) waits for the others' digests: a
    /// confirmation, a `safe` message, total-order data or control. The
    /// next datagram that ends a burst asks for a prompt digest.
    ack_urgent: bool,
    /// Own messages sent since a datagram last asked for a prompt digest.
    unrequested: usize,
    /// When a datagram last asked for a prompt digest.
    last_request: Option<Instant>,
    repairs: RepairQueue,
    pacer: NakPacer,
    /// Per departing origin, the most a view change lets us deliver: what
    /// we reported in our flush, then the agreed cut (see `membership`).
    caps: BTreeMap<Origin, Seq>,
    /// (member, origin) -> what `member` holds of `origin` where that is
    /// more than it vouches for (it flushes `origin` out; see `stability`).
    /// Both are view members: at most one entry per pair of them.
    held_beyond: BTreeMap<(Origin, Origin), Seq>,
}

impl Reliability {
    /// State for `me`, whose stream continues after `last_seq`.
    pub(crate) fn new(me: Origin, last_seq: Seq, cfg: RelConfig) -> Self {
        let mut logs = BTreeMap::new();
        logs.insert(
            me,
            OriginLog::starting_after(last_seq, cfg.nak_backoff_initial),
        );
        Reliability {
            me,
            pacer: NakPacer::new(cfg.nak_rate_per_sec, cfg.nak_burst),
            cfg,
            logs,
            peers: BTreeMap::new(),
            held_bytes: 0,
            members: 1,
            sent: last_seq,
            confirms: BTreeMap::new(),
            ack_urgent: false,
            unrequested: 0,
            last_request: None,
            repairs: RepairQueue::default(),
            caps: BTreeMap::new(),
            held_beyond: BTreeMap::new(),
        }
    }

    // ----- flush caps -----

    /// Delivers nothing of `origin` beyond `upto` (lowering is allowed:
    /// the agreed cut may be below what we hold, never below what we delivered).
    pub(crate) fn set_cap(&mut self, origin: Origin, upto: Seq) {
        self.caps.insert(origin, upto);
    }

    /// The cap on `origin`'s deliveries, if any.
    pub(crate) fn cap(&self, origin: Origin) -> Option<Seq> {
        self.caps.get(&origin).copied()
    }

    /// Lifts every cap (the view change they belonged to is over).
    pub(crate) fn clear_caps(&mut self) {
        self.caps.clear();
    }

    /// What we hold contiguously of `origin`.
    pub(crate) fn contiguous_of(&self, origin: Origin) -> Option<Seq> {
        self.logs.get(&origin).map(|l| l.contiguous)
    }

    /// Every origin we keep a stream of, ourselves included.
    pub(crate) fn origins(&self) -> Vec<Origin> {
        self.logs.keys().copied().collect()
    }

    /// Planted bug (`departed_on_one_survivor`): hands every message held
    /// of `origin` beyond what was delivered to `deliver`, gaps and cut ignored.
    pub(crate) fn deliver_everything_held(
        &mut self,
        origin: Origin,
        mut deliver: impl FnMut(&DataMsg),
    ) {
        let Some(log) = self.logs.get_mut(&origin) else {
            return;
        };
        let from = log.delivered.next();
        for (s, h) in log.msgs.range(from..) {
            deliver(&h.msg);
            log.delivered = *s;
        }
    }

    // ----- views -----

    /// Starts a view: streams of departed origins are dropped, joiners'
    /// streams start after their digest entry, and everything at or below
    /// the digest is stable (the flush made every member hold it).
    /// Returns the origins dropped.
    pub(crate) fn install(
        &mut self,
        members: &[Origin],
        digest: &BTreeMap<Origin, Seq>,
    ) -> Vec<Origin> {
        let gone: Vec<Origin> = self
            .logs
            .keys()
            .filter(|o| **o != self.me && !members.contains(o))
            .copied()
            .collect();
        for o in &gone {
            self.logs.remove(o);
        }
        self.repairs.retain_origins(members);
        for m in members {
            let cut = digest.get(m).copied().unwrap_or_default();
            let log = self
                .logs
                .entry(*m)
                .or_insert_with(|| OriginLog::starting_after(cut, self.cfg.nak_backoff_initial));
            if log.highest < cut {
                log.highest = cut;
            }
            if log.contiguous >= cut {
                // The caller delivered everything flushed before installing.
                let upto = if *m == self.me {
                    cut
                } else {
                    cut.min(log.delivered)
                };
                log.free_upto(upto);
            }
        }
        self.members = members.len();
        self.peers.clear();
        // The agreed cut for us never exceeds what we sent.
        let sent = self.sent;
        let me = self.me;
        for p in members.iter().filter(|p| **p != self.me) {
            self.peers.insert(
                *p,
                members
                    .iter()
                    .map(|o| {
                        let cut = digest.get(o).copied().unwrap_or_default();
                        (*o, if *o == me { cut.min(sent) } else { cut })
                    })
                    .collect(),
            );
        }
        self.recount();
        gone
    }

    /// Frees every message of `origin` (alone in a view, all of it is stable).
    pub(crate) fn free_all_own(&mut self) {
        if let Some(log) = self.logs.get_mut(&self.me) {
            let c = log.contiguous;
            log.free_upto(c);
        }
        self.sent = self.last_seq();
        self.recount();
    }

    // ----- our own stream -----

    /// Our last sequence number.
    pub(crate) fn last_seq(&self) -> Seq {
        self.logs
            .get(&self.me)
            .map(|l| l.contiguous)
            .unwrap_or_default()
    }

    /// Bytes of our messages not yet stable.
    pub(crate) fn own_unstable_bytes(&self) -> usize {
        self.logs.get(&self.me).map_or(0, |l| l.bytes)
    }

    /// The window flow control keeps our own unstable messages within.
    pub(crate) fn own_limit(&self) -> usize {
        self.cfg.limit / (2 * self.members.max(1))
    }

    /// Makes room for `units` more own messages of `bytes` in all, if flow
    /// control allows: our unstable messages stay within the send window and
    /// half the buffer, and the whole buffer within its bound.
    pub(crate) fn reserve_own(&mut self, bytes: usize, units: usize, stats: &mut Stats) -> bool {
        let held = self.logs.get(&self.me).map_or(0, |l| l.msgs.len());
        if self.own_unstable_bytes() + bytes > self.own_limit()
            || held + units > self.cfg.send_window
        {
            return false;
        }
        let me = self.me;
        self.held_bytes + bytes <= self.cfg.limit || self.make_room(bytes, false, me, stats)
    }

    /// Whether a message of `bytes` would be admitted (for `can_publish`).
    pub(crate) fn window_open(&self, bytes: usize) -> bool {
        let held = self.logs.get(&self.me).map_or(0, |l| l.msgs.len());
        self.own_unstable_bytes() + bytes <= self.own_limit()
            && held < self.cfg.send_window
            && self.held_bytes < self.cfg.limit
    }

    /// Appends one of our messages (sequence number already assigned).
    pub(crate) fn push_own(&mut self, msg: DataMsg) {
        let size = msg.payload.len() + msg.topic.len();
        // Safe delivery, total-order decisions (applied once a quorum holds
        // them) and control messages (empty topic) wait for the others'
        // digests: ask for them promptly.
        if msg.safe
            || msg.topic.is_empty()
            || matches!(msg.ordering, Ordering::TotalSeq | Ordering::TotalIsis)
        {
            self.ack_urgent = true;
        }
        let me = self.me;
        if let Some(log) = self.logs.get_mut(&me) {
            log.contiguous = msg.seq;
            log.highest = msg.seq;
            log.bytes += size;
            log.msgs.insert(
                msg.seq,
                Held {
                    msg,
                    size,
                    last_repair: None,
                },
            );
            self.held_bytes += size;
        }
    }

    /// Registers a confirmation awaiting others' digests.
    pub(crate) fn await_confirm(&mut self, seq: Seq, token: ConfirmToken, safe: bool) {
        self.confirms.insert(seq, (token, safe));
        self.ack_urgent = true;
    }

    /// Whether own messages wait to be sent.
    pub(crate) fn has_unsent(&self) -> bool {
        self.sent < self.last_seq()
    }

    /// Packs unsent own messages into `w`; returns whether more remain.
    ///
    /// A datagram asks the others for a prompt digest
    /// ([`Flags::ACK_REQUESTED`]) only when one is worth its cost: every
    /// prompt digest is a datagram that wakes every member, and at a steady
    /// 10k msg/s asking at the end of every burst made each receiver send
    /// one per `ack_delay`. It asks when it ends a burst and someone waits
    /// (see `ack_urgent`) or `ack_interval` passed since the last request
    /// (so stability, and a lost tail, are never left to the heartbeat
    /// alone under steady traffic), and whenever the messages sent since
    /// the last request reach a sixteenth of the send window (flow control
    /// must see them freed long before the window closes, and the logs'
    /// rings stay small). A burst's lost
    /// tail is exposed by [`Reliability::tail_unrequested`] otherwise.
    pub(crate) fn fill(&mut self, w: &mut DataFrameWriter, now: Instant) -> bool {
        let last = self.last_seq();
        let Some(log) = self.logs.get(&self.me) else {
            return false;
        };
        while self.sent < last {
            let next = self.sent.next();
            // A message already stable (a one-member view) is skipped: nobody needs it.
            if let Some(h) = log.msgs.get(&next) {
                if !w.push(&h.msg) {
                    break;
                }
                self.unrequested += 1;
            }
            self.sent = next;
        }
        let more = self.sent < last;
        let window_share = self.unrequested >= (self.cfg.send_window / 16).max(1)
            || self.own_unstable_bytes() >= self.own_limit() / 16;
        let interval_over = self
            .last_request
            .is_none_or(|t| now.saturating_duration_since(t) >= self.cfg.ack_interval);
        if window_share || (!more && (self.ack_urgent || interval_over)) {
            w.add_flags(Flags::ACK_REQUESTED);
            self.ack_urgent = false;
            self.unrequested = 0;
            self.last_request = Some(now);
        }
        more
    }

    /// Whether own messages went out since the last datagram that asked
    /// for a prompt digest: if the last of them was lost somewhere, nothing
    /// after it shows the gap, so the engine tells its stream's end with a
    /// heartbeat once the burst has been over for `ack_interval`.
    pub(crate) fn tail_unrequested(&self) -> bool {
        self.unrequested > 0
    }

    /// The stream's end was told (a heartbeat carries it).
    pub(crate) fn tail_told(&mut self) {
        self.unrequested = 0;
    }

    // ----- receiving -----

    /// Takes a message of another origin. Updates gap counters and NAK timers.
    pub(crate) fn receive(
        &mut self,
        origin: Origin,
        msg: DataMsg,
        now: Instant,
        rng: &mut SmallRng,
        stats: &mut Stats,
    ) -> Received {
        let limit = self.cfg.limit;
        let max_ahead = self.cfg.max_ahead;
        let seq = msg.seq;
        let Some(log) = self.logs.get_mut(&origin) else {
            return Received::Dropped;
        };
        if seq <= log.contiguous || log.msgs.contains_key(&seq) {
            stats.duplicates += 1;
            return Received::Duplicate;
        }
        if seq.0 > log.contiguous.0.saturating_add(max_ahead) {
            stats.dropped_buffer_full += 1;
            return Received::Dropped;
        }
        let new_high = seq > log.highest;
        let size = msg.payload.len() + msg.topic.len();
        let next_expected = seq == log.contiguous.next();
        // During a flush (caps set), a message that extends its stream may
        // overshoot the bound by a quarter: a member that cannot hear one
        // broker never learns it holds anything, so nothing it keeps for
        // stability (own messages, `--safe` ones) is ever freed, and its
        // buffer fills; refusing the repairs the flush waits for would then
        // wedge the view change that removes the unheard broker and frees
        // the buffer (the one-way cut toward the last-ranked broker).
        let room = self.held_bytes + size <= limit
            || self.make_room(size, next_expected, origin, stats)
            || (next_expected
                && !self.caps.is_empty()
                && self.held_bytes + size <= limit.saturating_add(limit / 4));
        let Some(log) = self.logs.get_mut(&origin) else {
            return Received::Dropped;
        };
        if new_high {
            stats.gaps_detected += seq.0 - log.highest.0 - 1;
            log.highest = seq;
        }
        if !room {
            // Not kept: it is missing (again) and will be asked for.
            if new_high {
                stats.gaps_detected += 1;
            }
            stats.dropped_buffer_full += 1;
            self.schedule_nak(origin, now, rng);
            return Received::Dropped;
        }
        if !new_high {
            stats.gaps_repaired += 1;
        }
        log.bytes += size;
        log.msgs.insert(
            seq,
            Held {
                msg,
                size,
                last_repair: None,
            },
        );
        self.held_bytes += size;
        Received::New
    }

    /// Extends `origin`'s contiguous prefix over what arrived and hands the
    /// deliverable messages to `deliver`, in order (see [`Reliability::deliver_ready`]).
    pub(crate) fn release(
        &mut self,
        origin: Origin,
        now: Instant,
        rng: &mut SmallRng,
        deliver: impl FnMut(&DataMsg),
    ) {
        let initial = self.cfg.nak_backoff_initial;
        let Some(log) = self.logs.get_mut(&origin) else {
            return;
        };
        while log.msgs.contains_key(&log.contiguous.next()) {
            log.contiguous = log.contiguous.next();
        }
        if log.contiguous > log.highest {
            log.highest = log.contiguous;
        }
        if log.contiguous > log.nak.head {
            // The gap we asked for is repaired: the next one starts afresh.
            log.nak.backoff = initial;
            log.nak.head = log.contiguous;
        }
        if log.has_gap() {
            self.schedule_nak(origin, now, rng);
        } else if let Some(log) = self.logs.get_mut(&origin) {
            log.nak.due = None;
        }
        self.deliver_ready(origin, Seq(0), deliver);
    }

    /// Hands `origin`'s received messages to `deliver` in order, stopping at
    /// a `safe` message not yet held by every member (unless at or below
    /// `flushed`: a completed flush proved every member holds those). By
    /// reference: the log keeps each message for repairs, and the delivery
    /// layers copy only what they keep (FIFO keeps nothing but the payload).
    pub(crate) fn deliver_ready(
        &mut self,
        origin: Origin,
        flushed: Seq,
        mut deliver: impl FnMut(&DataMsg),
    ) {
        if origin == self.me {
            return;
        }
        let stable = self.stable_point(origin).max(flushed);
        let cap = self.caps.get(&origin).copied();
        let Some(log) = self.logs.get_mut(&origin) else {
            return;
        };
        let upto = cap.map_or(log.contiguous, |c| c.min(log.contiguous));
        while log.delivered < upto {
            let next = log.delivered.next();
            let Some(h) = log.msgs.get(&next) else {
                break;
            };
            if h.msg.safe && next > stable && !self.cfg.bugs.early_safe {
                break;
            }
            deliver(&h.msg);
            log.delivered = next;
        }
    }

    /// Origins with received messages not yet delivered (safe ones waiting).
    pub(crate) fn waiting_origins(&self) -> Vec<Origin> {
        self.logs
            .iter()
            .filter(|(o, l)| {
                **o != self.me
                    && l.delivered < l.contiguous
                    && self.caps.get(o).is_none_or(|c| l.delivered < *c)
            })
            .map(|(o, _)| *o)
            .collect()
    }

    // ----- digests and gauges -----

    /// Our contiguous prefix of each origin.
    #[cfg(feature = "sim")]
    pub(crate) fn contiguous(&self) -> BTreeMap<Origin, Seq> {
        self.logs.iter().map(|(o, l)| (*o, l.contiguous)).collect()
    }

    /// The next NAK or repair deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let nak = self.logs.values().filter_map(|l| l.nak.due).min();
        let repair = self.repairs.next_due();
        match (nak, repair) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Bytes held in the retransmit buffer.
    pub(crate) fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// Messages waiting for an earlier one.
    pub(crate) fn out_of_order(&self) -> usize {
        self.logs.values().map(OriginLog::out_of_order).sum()
    }

    /// Whether `origin`'s stream has a gap.
    pub(crate) fn has_gap(&self, origin: Origin) -> bool {
        self.logs.get(&origin).is_some_and(OriginLog::has_gap)
    }

    /// Whether any stream has a gap.
    #[cfg(feature = "sim")]
    pub(crate) fn has_gaps(&self) -> bool {
        self.logs.values().any(OriginLog::has_gap)
    }

    /// Makes room for `size` bytes of `origin`'s message: evicts others'
    /// delivered messages (kept only to help repairs), then, for a message
    /// that extends its stream, others' out-of-order ones.
    fn make_room(
        &mut self,
        size: usize,
        next_expected: bool,
        origin: Origin,
        stats: &mut Stats,
    ) -> bool {
        let limit = self.cfg.limit;
        let me = self.me;
        for (_, log) in self.logs.iter_mut().filter(|(o, _)| **o != me) {
            while self.held_bytes + size > limit {
                let Some(first) = log.msgs.first_key_value().map(|(s, _)| *s) else {
                    break;
                };
                if first > log.delivered {
                    break;
                }
                if let Some(h) = log.msgs.remove(&first) {
                    log.bytes -= h.size;
                    self.held_bytes -= h.size;
                }
            }
        }
        if self.held_bytes + size > limit && next_expected {
            for (o, log) in self.logs.iter_mut().filter(|(o, _)| **o != me) {
                while self.held_bytes + size > limit {
                    let Some(last) = log.msgs.last_key_value().map(|(s, _)| *s) else {
                        break;
                    };
                    if last <= log.contiguous || (*o == origin && last == log.contiguous.next()) {
                        break;
                    }
                    if let Some(h) = log.msgs.remove(&last) {
                        log.bytes -= h.size;
                        self.held_bytes -= h.size;
                        stats.gaps_detected += 1;
                        stats.dropped_buffer_full += 1;
                    }
                }
            }
        }
        self.held_bytes + size <= limit
    }

    fn recount(&mut self) {
        self.held_bytes = self.logs.values().map(|l| l.bytes).sum();
    }
}

/// A uniformly random duration in `[0, max]`.
pub(crate) fn random_upto(rng: &mut SmallRng, max: Duration) -> Duration {
    let nanos = max.as_nanos().min(u128::from(u64::MAX)) as u64;
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(rng.gen_range(0..=nanos))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use bytes::Bytes;
    use ordo_wire::group::{ClusterId, Frame, Header};
    use ordo_wire::{CausalContext, Incarnation, NodeId, ViewId};

    use super::*;
    use crate::engine::EngineConfig;

    fn origin(n: u32) -> Origin {
        Origin {
            node: NodeId(n),
            incarnation: Incarnation(1),
        }
    }

    /// Node 1 in a view of nodes 1, 2, 3, with `window` own messages at most.
    fn rel(window: usize) -> Reliability {
        let mut config = EngineConfig::new(NodeId(1), Incarnation(1), "unit");
        config.send_window = window;
        let mut r = Reliability::new(origin(1), Seq(0), config.reliability());
        let members: Vec<Origin> = (1..=3).map(origin).collect();
        r.install(&members, &BTreeMap::new());
        r
    }

    fn publish(r: &mut Reliability, ordering: Ordering, safe: bool) {
        let seq = r.last_seq().next();
        r.push_own(DataMsg {
            seq,
            topic: Bytes::from_static(b"t"),
            ordering,
            safe,
            publisher: 1,
            context: CausalContext::new(),
            published_at_us: 0,
            fragment: None,
            payload: Bytes::from_static(b"payload"),
        });
    }

    /// Sends everything unsent; per datagram, whether it asked for a prompt digest.
    fn send(r: &mut Reliability, now: Instant) -> Vec<bool> {
        let header = Header {
            flags: Flags::default(),
            cluster: ClusterId::from_name("unit"),
            sender: origin(1),
            view: ViewId(1),
            tag: 0,
            beat: 0,
        };
        let mut asked = Vec::new();
        while r.has_unsent() {
            let mut w = DataFrameWriter::new(&header, origin(1), 200);
            r.fill(&mut w, now);
            let frame = Frame::decode(&w.finish()).unwrap();
            asked.push(frame.header.flags.contains(Flags::ACK_REQUESTED));
        }
        asked
    }

    #[test]
    fn steady_fifo_traffic_asks_for_digests_once_per_interval() {
        let mut r = rel(1 << 16);
        let t0 = Instant::now();
        let interval = r.cfg.ack_interval;
        publish(&mut r, Ordering::Fifo, false);
        // The first burst asks (nothing asked yet); its end is told.
        assert_eq!(send(&mut r, t0), [true]);
        assert!(!r.tail_unrequested());
        // Bursts within the interval do not ask; their end is left to tell.
        for i in 1..5 {
            publish(&mut r, Ordering::Fifo, false);
            assert_eq!(send(&mut r, t0 + interval * i / 10), [false]);
            assert!(r.tail_unrequested());
        }
        // Once the interval is over, the next burst end asks again.
        publish(&mut r, Ordering::Fifo, false);
        assert_eq!(send(&mut r, t0 + interval), [true]);
        assert!(!r.tail_unrequested());
        // A heartbeat that told the tail clears it.
        publish(&mut r, Ordering::Fifo, false);
        assert_eq!(send(&mut r, t0 + interval), [false]);
        r.tail_told();
        assert!(!r.tail_unrequested());
    }

    #[test]
    fn a_burst_someone_waits_on_asks_at_its_end() {
        let t0 = Instant::now();
        for (ordering, safe, confirm) in [
            (Ordering::TotalSeq, false, false),
            (Ordering::TotalIsis, false, false),
            (Ordering::Fifo, true, false),
            (Ordering::Causal, false, true),
        ] {
            let mut r = rel(1 << 16);
            publish(&mut r, Ordering::Fifo, false);
            assert_eq!(send(&mut r, t0), [true]);
            // Several datagrams: only the burst's end asks.
            for _ in 0..12 {
                publish(&mut r, ordering, safe);
            }
            if confirm {
                let token = ConfirmToken { conn: 1, req: 1 };
                r.await_confirm(r.last_seq(), token, false);
            }
            let asked = send(&mut r, t0);
            assert!(asked.len() > 1, "{asked:?}");
            let (last, rest) = asked.split_last().unwrap();
            assert!(
                *last && !rest.contains(&true),
                "{ordering:?} safe {safe}: {asked:?}"
            );
            // Asked once: the next plain burst within the interval does not.
            publish(&mut r, Ordering::Fifo, false);
            assert_eq!(send(&mut r, t0), [false]);
        }
    }

    #[test]
    fn a_sixteenth_of_the_window_asks_even_mid_burst() {
        let mut r = rel(128);
        let t0 = Instant::now();
        publish(&mut r, Ordering::Fifo, false);
        assert_eq!(send(&mut r, t0), [true]);
        // 8 messages (a sixteenth of 128) fill more than a 200-byte datagram:
        // the datagram that reaches the eighth asks although more follow.
        for _ in 0..24 {
            publish(&mut r, Ordering::Fifo, false);
        }
        let asked = send(&mut r, t0);
        assert!(asked.len() > 2, "{asked:?}");
        assert!(asked.iter().filter(|a| **a).count() >= 2, "{asked:?}");
        assert!(asked[..asked.len() - 1].iter().any(|a| *a), "{asked:?}");
    }
}
