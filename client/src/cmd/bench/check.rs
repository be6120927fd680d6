//! Per-publisher exactly-once, in-order checking of what one subscriber
//! received: every sequence number 0..published once, in increasing order.
//!
//! Memory stays bounded: only the holes (sequence numbers skipped and not yet
//! seen) are kept, as ranges, at most [`MAX_HOLES`] of them; a sequence
//! number implausibly far ahead is counted as `invalid` instead of opening a
//! huge hole.

use std::collections::BTreeMap;

/// Most hole ranges kept per publisher; past it, new gaps count as lost at once.
pub const MAX_HOLES: usize = 100_000;

/// A sequence number more than this far past the highest seen is not trusted.
pub const MAX_JUMP: u64 = 1 << 32;

/// What one arrival was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The next expected sequence number.
    InOrder,
    /// Ahead of the next expected: the ones between are missing so far.
    Ahead,
    /// Behind a higher one already seen, and not seen before: reordered.
    Late,
    /// Seen before.
    Duplicate,
    /// Implausibly far ahead; ignored.
    Invalid,
}

/// The verdict for one (subscriber, publisher) pair, or their sum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Distinct messages received.
    pub received: u64,
    /// Published but never received.
    pub lost: u64,
    /// Received after a higher sequence number of the same publisher.
    pub reordered: u64,
    /// Received more than once (extra copies).
    pub duplicates: u64,
    /// Sequence numbers that cannot have been published.
    pub invalid: u64,
}

impl Counts {
    /// Adds another pair's counts.
    pub fn add(&mut self, o: &Counts) {
        self.received += o.received;
        self.lost += o.lost;
        self.reordered += o.reordered;
        self.duplicates += o.duplicates;
        self.invalid += o.invalid;
    }

    /// True when nothing was lost, reordered, duplicated or invalid.
    pub fn clean(&self) -> bool {
        self.lost == 0 && self.reordered == 0 && self.duplicates == 0 && self.invalid == 0
    }
}

/// Order checker for one publisher's stream as one subscriber sees it.
#[derive(Debug, Default)]
pub struct OrderCheck {
    /// One past the highest sequence number seen.
    high: u64,
    /// Missing ranges below `high`: start -> end (exclusive).
    holes: BTreeMap<u64, u64>,
    /// Messages given up on because `holes` was full.
    overflow_lost: u64,
    counts: Counts,
}

impl OrderCheck {
    /// A checker expecting sequence number 0 first.
    pub fn new() -> OrderCheck {
        OrderCheck::default()
    }

    /// One past the highest sequence number seen (the publisher's flow-control
    /// window is measured against it, as in the peer harness).
    pub fn high(&self) -> u64 {
        self.high
    }

    /// Records the arrival of `seq`.
    pub fn observe(&mut self, seq: u64) -> Arrival {
        if seq == self.high {
            self.high += 1;
            self.counts.received += 1;
            return Arrival::InOrder;
        }
        if seq > self.high {
            if seq - self.high > MAX_JUMP {
                self.counts.invalid += 1;
                return Arrival::Invalid;
            }
            if self.holes.len() < MAX_HOLES {
                self.holes.insert(self.high, seq);
            } else {
                self.overflow_lost += seq - self.high;
            }
            self.high = seq + 1;
            self.counts.received += 1;
            return Arrival::Ahead;
        }
        // Behind: is it in a hole?
        let found = self
            .holes
            .range(..=seq)
            .next_back()
            .map(|(s, e)| (*s, *e))
            .filter(|(_, e)| seq < *e);
        match found {
            Some((start, end)) => {
                self.holes.remove(&start);
                if start < seq {
                    self.holes.insert(start, seq);
                }
                if seq + 1 < end {
                    self.holes.insert(seq + 1, end);
                }
                self.counts.received += 1;
                self.counts.reordered += 1;
                Arrival::Late
            }
            None => {
                self.counts.duplicates += 1;
                Arrival::Duplicate
            }
        }
    }

    /// The verdict once the publisher said it sent `published` messages
    /// (sequence numbers 0..published).
    pub fn finish(&self, published: u64) -> Counts {
        let holes: u64 = self.holes.iter().map(|(s, e)| e - s).sum();
        let mut c = self.counts;
        c.lost = holes + self.overflow_lost + published.saturating_sub(self.high);
        // Anything at or past `published` was never sent by this run.
        if self.high > published {
            c.invalid += self.high - published;
        }
        c
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn run(seqs: &[u64], published: u64) -> Counts {
        let mut c = OrderCheck::new();
        for s in seqs {
            c.observe(*s);
        }
        c.finish(published)
    }

    #[test]
    fn in_order_stream_is_clean() {
        let c = run(&[0, 1, 2, 3, 4], 5);
        assert!(c.clean(), "{c:?}");
        assert_eq!(c.received, 5);
    }

    #[test]
    fn missing_tail_and_middle_are_lost() {
        let c = run(&[0, 1, 3, 4], 7);
        assert_eq!(c.lost, 3); // 2, 5, 6
        assert_eq!(c.reordered, 0);
        assert_eq!(c.received, 4);
    }

    #[test]
    fn late_arrivals_are_reordered_not_lost() {
        let mut c = OrderCheck::new();
        assert_eq!(c.observe(0), Arrival::InOrder);
        assert_eq!(c.observe(3), Arrival::Ahead);
        assert_eq!(c.observe(2), Arrival::Late);
        assert_eq!(c.observe(1), Arrival::Late);
        assert_eq!(c.observe(4), Arrival::InOrder);
        let v = c.finish(5);
        assert_eq!(v.lost, 0);
        assert_eq!(v.reordered, 2);
        assert_eq!(v.received, 5);
    }

    #[test]
    fn a_hole_filled_in_its_middle_keeps_both_sides_missing() {
        let mut c = OrderCheck::new();
        c.observe(10);
        assert_eq!(c.observe(5), Arrival::Late);
        let v = c.finish(11);
        assert_eq!(v.lost, 9); // 0..5 and 6..10
        assert_eq!(c.observe(0), Arrival::Late);
        assert_eq!(c.observe(9), Arrival::Late);
        assert_eq!(c.finish(11).lost, 7);
    }

    #[test]
    fn duplicates_are_counted_once_each_extra_copy() {
        let c = run(&[0, 1, 1, 2, 0, 2], 3);
        assert_eq!(c.duplicates, 3);
        assert_eq!(c.received, 3);
        assert_eq!(c.lost, 0);
        assert_eq!(c.reordered, 0);
        assert!(!c.clean());
    }

    #[test]
    fn a_late_copy_of_a_filled_hole_is_a_duplicate() {
        let c = run(&[1, 0, 0], 2);
        assert_eq!(c.reordered, 1);
        assert_eq!(c.duplicates, 1);
    }

    #[test]
    fn absurd_jumps_and_unsent_numbers_are_invalid() {
        let mut c = OrderCheck::new();
        assert_eq!(c.observe(MAX_JUMP + 1), Arrival::Invalid);
        assert_eq!(c.high(), 0);
        let v = run(&[0, 1, 2], 2);
        assert_eq!(v.invalid, 1);
    }

    #[test]
    fn hole_table_is_bounded() {
        let mut c = OrderCheck::new();
        // Every other number: one hole per arrival.
        for i in 0..(MAX_HOLES as u64 + 10) {
            c.observe(2 * i + 1);
        }
        assert!(c.holes.len() <= MAX_HOLES);
        let v = c.finish(2 * (MAX_HOLES as u64 + 10));
        assert_eq!(v.lost, MAX_HOLES as u64 + 10);
    }
}
