//! One origin's stream as a member holds it: received messages until they
//! are stable, the contiguous prefix, the highest known sequence number, and
//! the NAK state of its gaps.
//!
//! Sequence numbers of one origin are dense, so the held messages live in a
//! ring indexed by `seq - base` ([`SeqMap`]): receiving is a push at the
//! back, stability a run of pops at the front, a lookup an index. Only a
//! message claimed to be implausibly far ahead goes to a small ordered map,
//! so such a claim cannot make the ring allocate for the whole distance.

use std::collections::{BTreeMap, VecDeque};
use std::ops::{Bound, RangeBounds};
use std::time::{Duration, Instant};

use ordo_wire::group::DataMsg;
use ordo_wire::Seq;

/// Most slots the ring spans (first to last held message). Flow control
/// keeps an origin's unstable messages to its send window (64 Ki messages by
/// default), so a stream in normal operation stays within it.
const DENSE_SPAN: u64 = 1 << 17;

/// Removals over which a [`SeqMap`] watches its ring's peak before it
/// gives back capacity the peak did not use.
const SHRINK_WINDOW: u32 = 64;

/// A message held for delivery (out of order) or for repair (until stable).
#[derive(Debug, Clone)]
pub(crate) struct Held {
    pub(crate) msg: DataMsg,
    /// Bytes charged to the retransmit buffer.
    pub(crate) size: usize,
    /// When it was last repeated (by us or another holder), to suppress duplicate repairs.
    pub(crate) last_repair: Option<Instant>,
}

/// Held messages of one origin by sequence number, with the subset of the
/// `BTreeMap` interface the reliability layer uses. Keys are the messages'
/// own `msg.seq`.
///
/// Slots `[base, base + ring.len())` live in `ring` (a vacant slot is a
/// message missing or removed); the first and last slot are always occupied.
/// Messages at or beyond `base + DENSE_SPAN` live in `far` until the ring's
/// base catches up with them.
#[derive(Debug, Clone, Default)]
pub(crate) struct SeqMap {
    base: u64,
    ring: VecDeque<Option<Held>>,
    far: BTreeMap<Seq, Held>,
    len: usize,
    /// The ring's longest span in the current window of removals.
    peak: usize,
    /// Removals in the current window (see [`SHRINK_WINDOW`]).
    removals: u32,
}

impl SeqMap {
    /// Number of messages held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether no message is held.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn slot(&self, seq: Seq) -> Option<usize> {
        let i = seq.0.checked_sub(self.base)?;
        (i < self.ring.len() as u64).then_some(i as usize)
    }

    /// The message `seq`, if held.
    pub(crate) fn get(&self, seq: &Seq) -> Option<&Held> {
        match self.slot(*seq) {
            Some(i) => self.ring[i].as_ref(),
            None if self.far.is_empty() => None,
            None => self.far.get(seq),
        }
    }

    /// The message `seq`, if held, to update.
    pub(crate) fn get_mut(&mut self, seq: &Seq) -> Option<&mut Held> {
        match self.slot(*seq) {
            Some(i) => self.ring[i].as_mut(),
            None if self.far.is_empty() => None,
            None => self.far.get_mut(seq),
        }
    }

    /// Whether `seq` is held.
    pub(crate) fn contains_key(&self, seq: &Seq) -> bool {
        self.get(seq).is_some()
    }

    /// Holds `held` as message `seq` (its `msg.seq`); returns the message
    /// it replaces, if any.
    pub(crate) fn insert(&mut self, seq: Seq, held: Held) -> Option<Held> {
        debug_assert_eq!(held.msg.seq, seq, "a held message is keyed by its seq");
        if self.ring.is_empty() {
            // Re-anchor: at the new message, or at the first far one below it.
            self.base = match self.far.first_key_value() {
                Some((f, _)) if f.0 < seq.0 => f.0,
                _ => seq.0,
            };
            self.absorb();
        }
        let old = if seq.0 < self.base {
            let gap = (self.base - seq.0) as usize;
            self.ring.reserve(gap);
            for _ in 1..gap {
                self.ring.push_front(None);
            }
            self.ring.push_front(Some(held));
            self.base = seq.0;
            // Keep the span: the top of the ring moves to `far`.
            while self.ring.len() as u64 > DENSE_SPAN {
                if let Some(Some(h)) = self.ring.pop_back() {
                    self.far.insert(h.msg.seq, h);
                }
            }
            self.trim_back();
            None
        } else if let Some(i) = self.slot(seq) {
            self.ring[i].replace(held)
        } else if seq.0 - self.base < DENSE_SPAN {
            let i = (seq.0 - self.base) as usize;
            self.ring.resize_with(i, || None);
            self.ring.push_back(Some(held));
            None
        } else {
            self.far.insert(seq, held)
        };
        if old.is_none() {
            self.len += 1;
        }
        self.peak = self.peak.max(self.ring.len());
        old
    }

    /// Removes and returns message `seq`, if held.
    pub(crate) fn remove(&mut self, seq: &Seq) -> Option<Held> {
        let old = match self.slot(*seq) {
            Some(i) => {
                let old = self.ring[i].take();
                if i == 0 {
                    self.trim_front();
                } else if i + 1 == self.ring.len() {
                    self.trim_back();
                }
                old
            }
            None if self.far.is_empty() => None,
            None => self.far.remove(seq),
        };
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// The lowest held message.
    pub(crate) fn first_key_value(&self) -> Option<(&Seq, &Held)> {
        match self.ring.front() {
            Some(Some(h)) => Some((&h.msg.seq, h)),
            _ => self.far.first_key_value(),
        }
    }

    /// The highest held message.
    pub(crate) fn last_key_value(&self) -> Option<(&Seq, &Held)> {
        if let Some(kv) = self.far.last_key_value() {
            return Some(kv);
        }
        match self.ring.back() {
            Some(Some(h)) => Some((&h.msg.seq, h)),
            _ => None,
        }
    }

    /// Held messages within `range`, in order.
    pub(crate) fn range<R: RangeBounds<Seq>>(
        &self,
        range: R,
    ) -> impl Iterator<Item = (&Seq, &Held)> + '_ {
        let lo = match range.start_bound() {
            Bound::Included(s) => s.0,
            Bound::Excluded(s) => s.0.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let hi = match range.end_bound() {
            Bound::Included(s) => s.0.saturating_add(1),
            Bound::Excluded(s) => s.0,
            Bound::Unbounded => u64::MAX,
        };
        let end = self.base.saturating_add(self.ring.len() as u64);
        let a = lo.clamp(self.base, end) - self.base;
        let b = hi.clamp(self.base, end) - self.base;
        let a = a.min(b) as usize;
        let dense = self
            .ring
            .range(a..b as usize)
            .filter_map(|s| s.as_ref().map(|h| (&h.msg.seq, h)));
        // `far` is empty nearly always; ranging over an empty map is cheap.
        let far = (lo < hi)
            .then(|| {
                self.far
                    .range((Bound::Included(Seq(lo)), Bound::Excluded(Seq(hi))))
            })
            .into_iter()
            .flatten();
        dense.chain(far)
    }

    /// Removes every message at or below `upto`; returns the bytes they were charged.
    pub(crate) fn remove_upto(&mut self, upto: Seq) -> usize {
        let mut freed = 0;
        while self.base <= upto.0 {
            let Some(slot) = self.ring.pop_front() else {
                break;
            };
            self.base += 1;
            if let Some(h) = slot {
                freed += h.size;
                self.len -= 1;
            }
        }
        while let Some(entry) = self.far.first_entry() {
            if *entry.key() > upto {
                break;
            }
            freed += entry.remove().size;
            self.len -= 1;
        }
        self.trim_front();
        // Give back the memory of a burst once the ring stayed mostly empty
        // for a window of removals. Not sooner: a ring that fills and empties
        // between acknowledgements would shrink and regrow each time, and a
        // regrown ring of this size is fresh memory whose pages the kernel
        // must fault in and zero (3-8% of a broker's CPU at full rate).
        self.removals += 1;
        if self.removals >= SHRINK_WINDOW {
            if self.ring.capacity() > 4 * self.peak + 4096 {
                self.ring.shrink_to(2 * self.peak);
            }
            self.removals = 0;
            self.peak = self.ring.len();
        }
        freed
    }

    /// Drops vacant slots at the front (the first slot is always occupied).
    fn trim_front(&mut self) {
        while let Some(None) = self.ring.front() {
            self.ring.pop_front();
            self.base += 1;
        }
        self.absorb();
    }

    /// Drops vacant slots at the back (the last slot is always occupied).
    fn trim_back(&mut self) {
        while let Some(None) = self.ring.back() {
            self.ring.pop_back();
        }
    }

    /// Moves far messages that now fit the ring's span into it.
    fn absorb(&mut self) {
        while let Some(entry) = self.far.first_entry() {
            let seq = entry.key().0;
            if seq < self.base || seq - self.base >= DENSE_SPAN {
                break;
            }
            let h = entry.remove();
            let i = (seq - self.base) as usize;
            if i >= self.ring.len() {
                self.ring.resize_with(i, || None);
                self.ring.push_back(Some(h));
            } else {
                self.ring[i] = Some(h);
            }
        }
    }
}

/// When to ask for this origin's gaps again, and how long asking takes.
#[derive(Debug, Clone)]
pub(crate) struct NakState {
    /// The next NAK, if any gap waits for one.
    pub(crate) due: Option<Instant>,
    /// Wait before the next retry of an unanswered NAK; doubles per retry.
    pub(crate) backoff: Duration,
    /// `contiguous` when the last NAK went out: progress past it resets the backoff.
    pub(crate) head: Seq,
    /// `contiguous` when the last NAK went out (kept apart from `head`,
    /// which the release path moves on progress): progress past it means
    /// that NAK was answered.
    pub(crate) asked: Seq,
    /// When the last NAK went out, until its answer is timed.
    pub(crate) sent_at: Option<Instant>,
    /// Smoothed time from a NAK to the repair of the first gap it named
    /// (none measured yet: the configured delays apply).
    pub(crate) srtt: Option<Duration>,
}

impl NakState {
    /// Folds one NAK-to-repair time into the estimate (gain 1/8, as TCP's SRTT).
    pub(crate) fn sample(&mut self, rtt: Duration) {
        self.srtt = Some(match self.srtt {
            None => rtt,
            Some(s) => (s * 7 + rtt) / 8,
        });
    }
}

/// One origin's stream.
#[derive(Debug, Clone)]
pub(crate) struct OriginLog {
    pub(crate) msgs: SeqMap,
    /// Every message up to this one was received.
    pub(crate) contiguous: Seq,
    /// Every message up to this one was handed to delivery; it trails
    /// `contiguous` while a `safe` message waits for every member to hold it.
    pub(crate) delivered: Seq,
    /// The highest sequence number known to exist.
    pub(crate) highest: Seq,
    /// Everything up to this one is stable and no longer held.
    pub(crate) stable: Seq,
    /// Bytes of `msgs`.
    pub(crate) bytes: usize,
    pub(crate) nak: NakState,
}

impl OriginLog {
    /// A stream whose first `start` messages are behind us (delivered or not ours to deliver).
    pub(crate) fn starting_after(start: Seq, backoff: Duration) -> Self {
        OriginLog {
            msgs: SeqMap::default(),
            contiguous: start,
            delivered: start,
            highest: start,
            stable: start,
            bytes: 0,
            nak: NakState {
                due: None,
                backoff,
                head: start,
                asked: start,
                sent_at: None,
                srtt: None,
            },
        }
    }

    /// Whether a sequence number between `contiguous` and `highest` is missing.
    pub(crate) fn has_gap(&self) -> bool {
        self.highest > self.contiguous
    }

    /// The highest message received (held beyond the contiguous prefix), or
    /// `contiguous` when none is.
    pub(crate) fn held_top(&self) -> Seq {
        match self.msgs.last_key_value() {
            Some((s, _)) if *s > self.contiguous => *s,
            _ => self.contiguous,
        }
    }

    /// Messages received beyond the contiguous prefix.
    pub(crate) fn out_of_order(&self) -> usize {
        self.msgs.range(Seq(self.contiguous.0 + 1)..).count()
    }

    /// The missing sequence numbers as inclusive ranges, at most `max_ranges`.
    pub(crate) fn missing(&self, max_ranges: usize) -> Vec<(Seq, Seq)> {
        let mut out = Vec::new();
        let mut next = self.contiguous.0 + 1;
        for &s in self.msgs.range(Seq(next)..).map(|(s, _)| s) {
            if out.len() >= max_ranges {
                return out;
            }
            if s.0 > next {
                out.push((Seq(next), Seq(s.0 - 1)));
            }
            next = s.0 + 1;
        }
        if next <= self.highest.0 && out.len() < max_ranges {
            out.push((Seq(next), self.highest));
        }
        out
    }

    /// Removes everything at or below `upto`; returns the bytes freed.
    pub(crate) fn free_upto(&mut self, upto: Seq) -> usize {
        if upto <= self.stable {
            return 0;
        }
        self.stable = upto;
        let freed = self.msgs.remove_upto(upto);
        self.bytes -= freed;
        freed
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ordo_wire::{CausalContext, Ordering};

    fn held(seq: u64) -> Held {
        Held {
            msg: DataMsg {
                seq: Seq(seq),
                topic: Bytes::new(),
                ordering: Ordering::Fifo,
                safe: false,
                publisher: 0,
                context: CausalContext::new(),
                published_at_us: 0,
                fragment: None,
                payload: Bytes::from_static(b"xy"),
            },
            size: 2,
            last_repair: None,
        }
    }

    /// A ring that fills and empties between acknowledgements keeps its
    /// capacity (no regrowth per cycle); one that stays nearly empty for a
    /// window of removals gives the capacity back.
    #[test]
    fn a_swinging_ring_keeps_its_capacity_an_idle_one_gives_it_back() {
        let mut map = SeqMap::default();
        let mut next = 1u64;
        let mut cycle = |map: &mut SeqMap, n: u64| {
            for _ in 0..n {
                map.insert(Seq(next), held(next));
                next += 1;
            }
            map.remove_upto(Seq(next - 2));
        };
        cycle(&mut map, 20_000);
        let grown = map.ring.capacity();
        assert!(grown >= 20_000, "{grown}");
        for _ in 0..(3 * SHRINK_WINDOW) {
            cycle(&mut map, 20_000);
            assert_eq!(map.ring.capacity(), grown);
        }
        for _ in 0..(2 * SHRINK_WINDOW) {
            cycle(&mut map, 1);
        }
        assert!(map.ring.capacity() < 4096, "{}", map.ring.capacity());
        assert_eq!(map.len(), 1);
    }

    /// The ring behaves as the ordered map it replaced, under random
    /// inserts (near, behind and far ahead), removals at both ends and in
    /// the middle, and stability cuts.
    #[test]
    fn seq_map_matches_a_btree_map() {
        use rand::{Rng, SeedableRng};
        for seed in 0..40u64 {
            let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
            let mut map = SeqMap::default();
            let mut model: BTreeMap<Seq, usize> = BTreeMap::new();
            let mut floor = 0u64;
            for _ in 0..3000 {
                let top = model.last_key_value().map_or(floor, |(s, _)| s.0);
                match rng.gen_range(0..10) {
                    0..=4 => {
                        let s = match rng.gen_range(0..20) {
                            0 => top + DENSE_SPAN + rng.gen_range(0..3 * DENSE_SPAN),
                            1 => floor + 1 + rng.gen_range(0..4),
                            _ => top + rng.gen_range(1..5),
                        };
                        let mut h = held(s);
                        h.size = s as usize;
                        assert_eq!(
                            map.insert(Seq(s), h).map(|h| h.size),
                            model.insert(Seq(s), s as usize)
                        );
                    }
                    5 => {
                        let first = model.first_key_value().map(|(s, _)| *s);
                        if let Some(f) = first {
                            assert_eq!(map.remove(&f).map(|h| h.size), model.remove(&f));
                        }
                    }
                    6 => {
                        let last = model.last_key_value().map(|(s, _)| *s);
                        if let Some(l) = last {
                            assert_eq!(map.remove(&l).map(|h| h.size), model.remove(&l));
                        }
                    }
                    7 => {
                        let s = Seq(floor + rng.gen_range(0..(top - floor + 2)));
                        assert_eq!(map.remove(&s).map(|h| h.size), model.remove(&s));
                    }
                    _ => {
                        let upto = floor + rng.gen_range(0..(top - floor + 2)) / 2;
                        let keep = model.split_off(&Seq(upto + 1));
                        let freed: usize = model.values().sum();
                        model = keep;
                        assert_eq!(map.remove_upto(Seq(upto)), freed);
                        floor = floor.max(upto);
                    }
                }
                assert_eq!(map.len(), model.len());
                assert_eq!(map.is_empty(), model.is_empty());
                assert_eq!(
                    map.first_key_value().map(|(s, _)| *s),
                    model.first_key_value().map(|(s, _)| *s)
                );
                assert_eq!(
                    map.last_key_value().map(|(s, _)| *s),
                    model.last_key_value().map(|(s, _)| *s)
                );
                let probe = Seq(floor + rng.gen_range(0..(top - floor + 3)));
                assert_eq!(map.contains_key(&probe), model.contains_key(&probe));
                assert_eq!(map.get(&probe).map(|h| h.size), model.get(&probe).copied());
                let a = Seq(floor + rng.gen_range(0..(top - floor + 2)));
                let got: Vec<Seq> = map.range(a..).map(|(s, _)| *s).collect();
                let want: Vec<Seq> = model.range(a..).map(|(s, _)| *s).collect();
                assert_eq!(got, want);
                let b = Seq(a.0 + rng.gen_range(0..50));
                assert_eq!(map.range(a..=b).count(), model.range(a..=b).count());
                assert!(map.ring.len() as u64 <= DENSE_SPAN);
            }
        }
    }

    #[test]
    fn missing_lists_holes_and_the_unseen_tail() {
        let mut log = OriginLog::starting_after(Seq(2), Duration::from_millis(1));
        for s in [4, 5, 8] {
            log.msgs.insert(Seq(s), held(s));
            log.bytes += 2;
        }
        log.highest = Seq(10);
        assert_eq!(
            log.missing(10),
            vec![(Seq(3), Seq(3)), (Seq(6), Seq(7)), (Seq(9), Seq(10))]
        );
        assert_eq!(log.missing(2).len(), 2);
        assert_eq!(log.out_of_order(), 3);
        assert_eq!(log.free_upto(Seq(5)), 4);
        assert_eq!(log.bytes, 2);
        assert_eq!(log.free_upto(Seq(4)), 0);
    }
}
