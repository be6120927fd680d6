//! One origin's stream as a member holds it: received messages until they
//! are stable, the contiguous prefix, the highest known sequence number, and
//! the NAK state of its gaps.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ordo_wire::group::DataMsg;
use ordo_wire::Seq;

/// A message held for delivery (out of order) or for repair (until stable).
#[derive(Debug, Clone)]
pub(crate) struct Held {
    pub(crate) msg: DataMsg,
    /// Bytes charged to the retransmit buffer.
    pub(crate) size: usize,
    /// When it was last repeated (by us or another holder), to suppress duplicate repairs.
    pub(crate) last_repair: Option<Instant>,
}

/// When to ask for this origin's gaps again.
#[derive(Debug, Clone)]
pub(crate) struct NakState {
    /// The next NAK, if any gap waits for one.
    pub(crate) due: Option<Instant>,
    /// Current backoff; doubles per unanswered NAK, reset when the gap at the head is repaired.
    pub(crate) backoff: Duration,
    /// `contiguous` when the last NAK went out: progress past it resets the backoff.
    pub(crate) head: Seq,
}

/// One origin's stream.
#[derive(Debug, Clone)]
pub(crate) struct OriginLog {
    pub(crate) msgs: BTreeMap<Seq, Held>,
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
            msgs: BTreeMap::new(),
            contiguous: start,
            delivered: start,
            highest: start,
            stable: start,
            bytes: 0,
            nak: NakState {
                due: None,
                backoff,
                head: start,
            },
        }
    }

    /// Whether a sequence number between `contiguous` and `highest` is missing.
    pub(crate) fn has_gap(&self) -> bool {
        self.highest > self.contiguous
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
        let keep = self.msgs.split_off(&Seq(upto.0 + 1));
        let freed: usize = self.msgs.values().map(|h| h.size).sum();
        self.msgs = keep;
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
