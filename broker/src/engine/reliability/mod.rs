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
//! The retransmit buffer is bounded in bytes. Our own messages are kept until
//! stable (every member's digest shows them) and admitted by flow control to
//! at most half the bound; others' messages are kept for repair only while
//! room remains and are evicted first, so receiving can always progress.

mod log;
mod nak;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use ordo_wire::group::{DataFrameWriter, DataMsg, DigestEntry, Flags, Nak};
use ordo_wire::{Origin, Seq};
use rand::rngs::SmallRng;
use rand::Rng;

use super::{ConfirmToken, Stats};
pub(crate) use log::{Held, OriginLog};
use nak::NakPacer;

/// Most ranges one NAK names.
const MAX_NAK_RANGES: usize = 32;
/// Most sequence numbers acted on per NAK received.
const MAX_REPAIR_PER_NAK: u64 = 1024;
/// Most repairs waiting at once.
const MAX_PENDING_REPAIRS: usize = 16 * 1024;

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
    /// Each other member's latest digest: what it has of each origin.
    peers: BTreeMap<Origin, BTreeMap<Origin, Seq>>,
    held_bytes: usize,
    /// Own messages handed to the driver up to this one.
    sent: Seq,
    confirms: BTreeMap<Seq, (ConfirmToken, bool)>,
    /// Pending repairs: when each is due, and whether it is forced (a
    /// repair was already seen and the NAK persists, so seeing another one
    /// does not cancel it: the receiver may hear us but not the origin).
    repairs: BTreeMap<(Origin, Seq), (Instant, bool)>,
    repair_queue: BTreeSet<(Instant, Origin, Seq)>,
    pacer: NakPacer,
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
            sent: last_seq,
            confirms: BTreeMap::new(),
            repairs: BTreeMap::new(),
            repair_queue: BTreeSet::new(),
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
        self.repairs.retain(|(o, _), _| members.contains(o));
        self.repair_queue.retain(|(_, o, _)| members.contains(o));
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
                log.free_upto(cut);
            }
        }
        self.peers.clear();
        for p in members.iter().filter(|p| **p != self.me) {
            self.peers.insert(
                *p,
                members
                    .iter()
                    .map(|o| (*o, digest.get(o).copied().unwrap_or_default()))
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

    /// The bound flow control keeps our own unstable messages within.
    pub(crate) fn own_limit(&self) -> usize {
        self.cfg.limit / 2
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
    }

    /// Whether own messages wait to be sent.
    pub(crate) fn has_unsent(&self) -> bool {
        self.sent < self.last_seq()
    }

    /// Packs unsent own messages into `w`; returns whether more remain.
    pub(crate) fn fill(&mut self, w: &mut DataFrameWriter) -> bool {
        let last = self.last_seq();
        let Some(log) = self.logs.get(&self.me) else {
            return false;
        };
        while self.sent < last {
            let next = self.sent.next();
            // A message already stable (a one-member view) is skipped: nobody needs it.
            if let Some(h) = log.msgs.get(&next) {
                if !w.push(&h.msg) {
                    return true;
                }
            }
            self.sent = next;
        }
        let more = self.sent < last;
        if !more {
            // The end of a burst: a prompt digest from the others confirms
            // it, frees it sooner and exposes a lost tail at once.
            w.add_flags(Flags::ACK_REQUESTED);
        }
        more
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
        let room =
            self.held_bytes + size <= limit || self.make_room(size, next_expected, origin, stats);
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

    /// Hands `origin`'s newly contiguous messages to `deliver`, in order.
    pub(crate) fn release(
        &mut self,
        origin: Origin,
        now: Instant,
        rng: &mut SmallRng,
        mut deliver: impl FnMut(DataMsg),
    ) {
        let initial = self.cfg.nak_backoff_initial;
        let Some(log) = self.logs.get_mut(&origin) else {
            return;
        };
        while let Some(h) = log.msgs.get(&log.contiguous.next()) {
            deliver(h.msg.clone());
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
    }

    /// Another member's digest: what it has, and what exists.
    pub(crate) fn on_digest(
        &mut self,
        from: Origin,
        entries: &[DigestEntry],
        now: Instant,
        rng: &mut SmallRng,
        stats: &mut Stats,
    ) {
        let Some(peer) = self.peers.get_mut(&from) else {
            return;
        };
        for e in entries {
            if let Some(have) = peer.get_mut(&e.origin) {
                if e.contiguous > *have {
                    *have = e.contiguous;
                }
            }
        }
        let mut gaps = Vec::new();
        for e in entries {
            if e.origin == self.me {
                continue;
            }
            if let Some(log) = self.logs.get_mut(&e.origin) {
                let known = e.highest.max(e.contiguous);
                let cap = Seq(log.contiguous.0.saturating_add(self.cfg.max_ahead));
                let known = known.min(cap);
                if known > log.highest {
                    stats.gaps_detected += known.0 - log.highest.0;
                    log.highest = known;
                    gaps.push(e.origin);
                }
            }
        }
        for o in gaps {
            self.schedule_nak(o, now, rng);
        }
    }

    /// Frees what every member has; returns the confirmations now due.
    pub(crate) fn advance_stability(&mut self, stats: &mut Stats) -> Vec<ConfirmToken> {
        let origins: Vec<Origin> = self.logs.keys().copied().collect();
        for o in origins {
            let point = self.stable_point(o);
            if let Some(log) = self.logs.get_mut(&o) {
                log.free_upto(point);
            }
        }
        self.recount();
        // Confirm once any other member has it (all members for `safe`).
        let me = self.me;
        let any = self
            .peers
            .values()
            .filter_map(|p| p.get(&me).copied())
            .max()
            .unwrap_or_default();
        let all = self.stable_point(me);
        let mut done = Vec::new();
        let ready: Vec<Seq> = self
            .confirms
            .range(..=any)
            .filter(|(s, (_, safe))| !*safe || **s <= all)
            .map(|(s, _)| *s)
            .collect();
        for s in ready {
            if let Some((t, _)) = self.confirms.remove(&s) {
                done.push(t);
            }
        }
        stats.retransmit_buffer_bytes = self.held_bytes as u64;
        done
    }

    /// Confirms everything waiting (alone in the view).
    pub(crate) fn confirm_all(&mut self) -> Vec<ConfirmToken> {
        std::mem::take(&mut self.confirms)
            .into_values()
            .map(|(t, _)| t)
            .collect()
    }

    /// What every member has of `origin`.
    pub(crate) fn stable_point(&self, origin: Origin) -> Seq {
        let Some(log) = self.logs.get(&origin) else {
            return Seq(0);
        };
        if origin == self.me && self.cfg.bugs.premature_free {
            // Planted bug: trust that whatever was sent arrived.
            return self.sent;
        }
        self.peers
            .values()
            .map(|p| p.get(&origin).copied().unwrap_or_default())
            .fold(log.contiguous, Seq::min)
    }

    // ----- NAKs -----

    fn schedule_nak(&mut self, origin: Origin, now: Instant, rng: &mut SmallRng) {
        let max = self.cfg.nak_delay_max;
        if let Some(log) = self.logs.get_mut(&origin) {
            if log.nak.due.is_none() && log.has_gap() {
                let delay = random_upto(rng, max);
                log.nak.due = Some(now + delay);
            }
        }
    }

    /// NAKs due at `now`, each with its origin.
    pub(crate) fn due_naks(
        &mut self,
        now: Instant,
        rng: &mut SmallRng,
        stats: &mut Stats,
    ) -> Vec<Nak> {
        let mut out = Vec::new();
        let max_backoff = self.cfg.nak_backoff_max;
        let forget = self.cfg.bugs.forget_nak;
        for (origin, log) in &mut self.logs {
            if log.nak.due.is_none_or(|d| d > now) {
                continue;
            }
            let mut ranges = log.missing(MAX_NAK_RANGES);
            if forget {
                // Planted bug: a gap asked for once is never asked for again.
                let f = log.nak.head;
                ranges.retain(|(_, b)| *b > f);
            }
            if ranges.is_empty() {
                log.nak.due = None;
                continue;
            }
            if let Err(at) = self.pacer.take(now) {
                stats.naks_rate_limited += 1;
                log.nak.due = Some(at);
                continue;
            }
            let backoff = log.nak.backoff;
            log.nak.due = Some(now + backoff + random_upto(rng, backoff / 2));
            log.nak.backoff = (backoff * 2).min(max_backoff);
            log.nak.head = if forget { log.highest } else { log.contiguous };
            tracing::trace!(%origin, ?ranges, "nak");
            out.push(Nak {
                origin: *origin,
                ranges,
            });
        }
        out
    }

    /// A NAK from another member. Schedules our repairs of what we hold,
    /// suppresses our own identical NAK, and returns our stable point if
    /// it asks for our own messages we already freed (they are gone).
    pub(crate) fn on_nak(
        &mut self,
        nak: &Nak,
        now: Instant,
        rng: &mut SmallRng,
        stats: &mut Stats,
    ) -> Option<Seq> {
        let mut gone = None;
        let repair_delay = self.cfg.repair_delay;
        let holdoff = self.cfg.nak_backoff_initial / 2;
        let log = self.logs.get_mut(&nak.origin)?;
        // Suppression: someone asked for everything we miss.
        if nak.origin != self.me && log.nak.due.is_some() {
            let mine = log.missing(MAX_NAK_RANGES);
            let covered = mine
                .iter()
                .all(|(a, b)| nak.ranges.iter().any(|(x, y)| x <= a && b <= y));
            if covered && !mine.is_empty() {
                stats.naks_suppressed += 1;
                let later = now + log.nak.backoff;
                if log.nak.due.is_some_and(|d| d < later) {
                    log.nak.due = Some(later);
                }
            }
        }
        let mut budget = MAX_REPAIR_PER_NAK;
        let mut wanted: Vec<(Seq, bool)> = Vec::new();
        for &(a, b) in &nak.ranges {
            if a <= log.stable && nak.origin == self.me {
                gone = Some(log.stable);
            }
            let from = a.max(log.stable.next());
            let to = b.min(log.contiguous.max(log.highest));
            let mut s = from;
            while s <= to && budget > 0 {
                budget -= 1;
                if let Some(h) = log.msgs.get(&s) {
                    if h.last_repair
                        .is_none_or(|t| now.saturating_duration_since(t) >= holdoff)
                    {
                        wanted.push((s, h.last_repair.is_some()));
                    }
                }
                s = s.next();
            }
        }
        let origin = nak.origin;
        tracing::trace!(%origin, ranges = ?nak.ranges, ?wanted, ?gone, "nak received");
        for (s, force) in wanted {
            if self.repairs.contains_key(&(origin, s)) || self.repairs.len() >= MAX_PENDING_REPAIRS
            {
                continue;
            }
            // The origin answers at once; other holders wait, in case it does.
            let due = if origin == self.me {
                now
            } else {
                now + repair_delay + random_upto(rng, repair_delay)
            };
            self.repairs.insert((origin, s), (due, force));
            self.repair_queue.insert((due, origin, s));
        }
        gone
    }

    /// Someone sent `origin`'s message `seq`: ours to repair need not go out.
    pub(crate) fn on_seen(&mut self, origin: Origin, seq: Seq, now: Instant, stats: &mut Stats) {
        if let Some(&(due, false)) = self.repairs.get(&(origin, seq)) {
            self.repairs.remove(&(origin, seq));
            self.repair_queue.remove(&(due, origin, seq));
            stats.retransmissions_suppressed += 1;
        }
        if let Some(h) = self
            .logs
            .get_mut(&origin)
            .and_then(|l| l.msgs.get_mut(&seq))
        {
            h.last_repair = Some(now);
        }
    }

    /// Repairs due at `now`, grouped by origin.
    pub(crate) fn due_repairs(&mut self, now: Instant) -> BTreeMap<Origin, Vec<DataMsg>> {
        let mut out: BTreeMap<Origin, Vec<DataMsg>> = BTreeMap::new();
        while let Some(&(due, origin, seq)) = self.repair_queue.first() {
            if due > now {
                break;
            }
            self.repair_queue.pop_first();
            self.repairs.remove(&(origin, seq));
            if let Some(h) = self
                .logs
                .get_mut(&origin)
                .and_then(|l| l.msgs.get_mut(&seq))
            {
                h.last_repair = Some(now);
                out.entry(origin).or_default().push(h.msg.clone());
            }
        }
        out
    }

    /// A member says `origin`'s messages up to `upto` are stable and freed.
    /// Returns how many of them we miss: no member holds them any more.
    pub(crate) fn on_stable(&self, origin: Origin, upto: Seq) -> u64 {
        if origin == self.me {
            return 0;
        }
        let Some(log) = self.logs.get(&origin) else {
            return 0;
        };
        if upto <= log.contiguous {
            return 0;
        }
        let held = log.msgs.range(log.contiguous.next()..=upto).count() as u64;
        (upto.0 - log.contiguous.0) - held
    }

    // ----- digests and gauges -----

    /// Our digest: per view member, contiguous and highest known.
    /// Our own entry names what we sent, not what is still queued, so
    /// nobody asks for messages already on their way.
    pub(crate) fn digest(&self) -> Vec<DigestEntry> {
        self.logs
            .iter()
            .map(|(o, l)| {
                let (contiguous, highest) = if *o == self.me {
                    (self.sent, self.sent)
                } else {
                    (l.contiguous, l.highest.max(l.contiguous))
                };
                DigestEntry {
                    origin: *o,
                    contiguous,
                    highest,
                }
            })
            .collect()
    }

    /// Our contiguous prefix of each origin.
    #[cfg(feature = "sim")]
    pub(crate) fn contiguous(&self) -> BTreeMap<Origin, Seq> {
        self.logs.iter().map(|(o, l)| (*o, l.contiguous)).collect()
    }

    /// What `member` last said it has of `origin`.
    pub(crate) fn peer_has(&self, member: Origin, origin: Origin) -> Option<Seq> {
        if member == self.me {
            return self.logs.get(&origin).map(|l| l.contiguous);
        }
        self.peers
            .get(&member)
            .and_then(|p| p.get(&origin))
            .copied()
    }

    /// The next NAK or repair deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let nak = self.logs.values().filter_map(|l| l.nak.due).min();
        let repair = self.repair_queue.first().map(|(t, _, _)| *t);
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
        for (o, log) in self.logs.iter_mut().filter(|(o, _)| **o != me) {
            while self.held_bytes + size > limit {
                let Some(first) = log.msgs.first_key_value().map(|(s, _)| *s) else {
                    break;
                };
                if first > log.contiguous {
                    break;
                }
                if let Some(h) = log.msgs.remove(&first) {
                    log.bytes -= h.size;
                    self.held_bytes -= h.size;
                }
                let _ = o;
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
