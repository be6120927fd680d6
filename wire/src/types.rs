//! The protocol's nouns as newtypes, so a mixed-up argument does not compile.

use std::fmt;
use std::str::FromStr;

use smallvec::SmallVec;

/// A broker's configured identity, unique within a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NodeId(pub u32);

/// One run of a broker process. A restarted broker gets a new, larger
/// incarnation and is a new sender: its sequence numbers start afresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Incarnation(pub u64);

/// A per-sender sequence number. The first message of an incarnation is 1;
/// 0 means "nothing yet".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Seq(pub u64);

/// A membership view number; every member installs views in the same order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ViewId(pub u64);

/// The position of a message in its total-order topic; the same on every broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GlobalSeq(pub u64);

/// A sender in the group: a node in one of its incarnations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Origin {
    pub node: NodeId,
    pub incarnation: Incarnation,
}

impl Seq {
    /// The sequence number after this one.
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

impl ViewId {
    /// The view id after this one, or `None` once ids are exhausted (peers
    /// never send an id at or above 2^63, so this only fails on a bug).
    pub fn checked_next(self) -> Option<ViewId> {
        self.0.checked_add(1).map(ViewId)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for ViewId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for GlobalSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.node, self.incarnation)
    }
}

/// How a topic's messages are ordered for its subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Ordering {
    /// Each publisher's messages in publish order.
    #[default]
    Fifo,
    /// Happened-before respected across all causal topics (vector clocks).
    Causal,
    /// One order for all subscribers, agreed by ISIS priority proposals.
    TotalIsis,
    /// One order for all subscribers, assigned by a sequencer.
    TotalSeq,
}

impl Ordering {
    /// Every ordering, in wire-code order.
    pub const ALL: [Ordering; 4] = [
        Ordering::Fifo,
        Ordering::Causal,
        Ordering::TotalIsis,
        Ordering::TotalSeq,
    ];

    /// The name used on the command line and in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Ordering::Fifo => "fifo",
            Ordering::Causal => "causal",
            Ordering::TotalIsis => "total-isis",
            Ordering::TotalSeq => "total-seq",
        }
    }

    /// The one-byte wire code.
    pub fn code(self) -> u8 {
        match self {
            Ordering::Fifo => 0,
            Ordering::Causal => 1,
            Ordering::TotalIsis => 2,
            Ordering::TotalSeq => 3,
        }
    }

    /// The ordering for a wire code, if it is one.
    pub fn from_code(code: u8) -> Option<Ordering> {
        Ordering::ALL.get(usize::from(code)).copied()
    }

    /// Whether subscribers get a `gseq` on this ordering.
    pub fn is_total(self) -> bool {
        matches!(self, Ordering::TotalIsis | Ordering::TotalSeq)
    }
}

impl fmt::Display for Ordering {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no ordering.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown ordering {0:?}: expected fifo, causal, total-isis or total-seq")]
pub struct ParseOrderingError(pub String);

impl FromStr for Ordering {
    type Err = ParseOrderingError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ordering::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| ParseOrderingError(s.to_string()))
    }
}

/// A causal context: for each sender, the highest sequence number of its
/// messages that happened before the message carrying the context.
/// Entries are kept sorted by origin and unique. One entry is held inline
/// (a delivery's context is usually just its own origin and sequence
/// number), so the common context costs no allocation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CausalContext {
    entries: SmallVec<[(Origin, Seq); 1]>,
}

/// Up to this many entries, [`CausalContext::merge`] inserts one by one;
/// beyond, it appends and sorts once (inserting would be quadratic).
const MERGE_BY_INSERT: usize = 8;

impl CausalContext {
    /// An empty context (nothing happened before).
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a context from entries in any order; duplicates keep the maximum.
    pub fn from_entries(entries: impl IntoIterator<Item = (Origin, Seq)>) -> Self {
        // Sort once rather than insert one by one: a client's context may
        // hold many entries in any order, and inserting would be quadratic.
        let mut ctx = CausalContext {
            entries: entries.into_iter().collect(),
        };
        ctx.normalize();
        ctx
    }

    /// Builds a context from decoded entries in any order (no second buffer).
    pub(crate) fn from_decoded(entries: SmallVec<[(Origin, Seq); 1]>) -> Self {
        let mut ctx = CausalContext { entries };
        ctx.normalize();
        ctx
    }

    /// Sorts by origin and keeps the maximum per origin.
    fn normalize(&mut self) {
        if self.entries.len() < 2 {
            return;
        }
        self.entries
            .sort_unstable_by(|(a, x), (b, y)| a.cmp(b).then(y.cmp(x)));
        self.entries.dedup_by_key(|(o, _)| *o);
    }

    /// Records that `origin`'s message `seq` (and so all before it) happened before.
    pub fn observe(&mut self, origin: Origin, seq: Seq) {
        match self.entries.binary_search_by(|(o, _)| o.cmp(&origin)) {
            Ok(i) => {
                if self.entries[i].1 < seq {
                    self.entries[i].1 = seq;
                }
            }
            Err(i) => self.entries.insert(i, (origin, seq)),
        }
    }

    /// Merges another context into this one (entry-wise maximum).
    pub fn merge(&mut self, other: &CausalContext) {
        // A client merges every delivery's context (usually one entry it
        // already names): update in place, no sort, no allocation.
        if other.entries.len() <= MERGE_BY_INSERT {
            for &(o, q) in &other.entries {
                self.observe(o, q);
            }
            return;
        }
        self.entries.extend_from_slice(&other.entries);
        self.normalize();
    }

    /// The entry for `origin`, or `Seq(0)`.
    pub fn get(&self, origin: Origin) -> Seq {
        self.entries
            .binary_search_by(|(o, _)| o.cmp(&origin))
            .map(|i| self.entries[i].1)
            .unwrap_or_default()
    }

    /// The entries, sorted by origin.
    pub fn entries(&self) -> &[(Origin, Seq)] {
        &self.entries
    }

    /// Whether the context names no sender.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many senders it names.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordering_names_round_trip() {
        for o in Ordering::ALL {
            assert_eq!(o.as_str().parse::<Ordering>(), Ok(o));
            assert_eq!(Ordering::from_code(o.code()), Some(o));
        }
        assert!("total".parse::<Ordering>().is_err());
        assert_eq!(Ordering::from_code(9), None);
    }

    #[test]
    fn a_huge_context_in_reverse_order_is_built_in_n_log_n() {
        let n = 300_000u32;
        let entries = (0..n).rev().flat_map(|i| {
            let o = Origin {
                node: NodeId(i),
                incarnation: Incarnation(1),
            };
            [(o, Seq(u64::from(i))), (o, Seq(u64::from(i) + 1))]
        });
        let t = std::time::Instant::now();
        let c = CausalContext::from_entries(entries);
        let mut m = CausalContext::new();
        m.merge(&c);
        m.merge(&c);
        // Inserting one by one takes minutes here; sorting well under a second.
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(m.len(), n as usize);
        assert_eq!(m.entries()[0].1, Seq(1));
        assert!(m.entries().windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn context_keeps_maximum_per_origin() {
        let a = Origin {
            node: NodeId(1),
            incarnation: Incarnation(7),
        };
        let b = Origin {
            node: NodeId(2),
            incarnation: Incarnation(1),
        };
        let mut ctx = CausalContext::from_entries([(b, Seq(3)), (a, Seq(5)), (a, Seq(2))]);
        assert_eq!(ctx.get(a), Seq(5));
        ctx.merge(&CausalContext::from_entries([(b, Seq(9))]));
        assert_eq!(ctx.entries(), &[(a, Seq(5)), (b, Seq(9))]);
    }

    fn o(n: u32) -> Origin {
        Origin {
            node: NodeId(n),
            incarnation: Incarnation(1),
        }
    }

    #[test]
    fn a_one_entry_context_is_inline_and_observe_keeps_order() {
        let mut c = CausalContext::new();
        c.observe(o(5), Seq(2));
        assert!(!c.entries.spilled(), "one entry needs no allocation");
        c.observe(o(5), Seq(1));
        c.observe(o(3), Seq(7));
        c.observe(o(9), Seq(1));
        assert_eq!(
            c.entries(),
            &[(o(3), Seq(7)), (o(5), Seq(2)), (o(9), Seq(1))]
        );
    }

    proptest::proptest! {
        #[test]
        fn merge_is_the_entry_wise_maximum(
            a in proptest::collection::vec((0u32..40, 0u64..100), 0..30),
            b in proptest::collection::vec((0u32..40, 0u64..100), 0..30),
        ) {
            use std::collections::BTreeMap;
            let mut want = BTreeMap::new();
            for &(n, s) in a.iter().chain(&b) {
                let e = want.entry(o(n)).or_insert(Seq(0));
                *e = (*e).max(Seq(s));
            }
            let mut m = CausalContext::from_entries(a.iter().map(|&(n, s)| (o(n), Seq(s))));
            m.merge(&CausalContext::from_entries(b.iter().map(|&(n, s)| (o(n), Seq(s)))));
            let want: Vec<(Origin, Seq)> = want.into_iter().collect();
            proptest::prop_assert_eq!(m.entries(), &want[..]);
        }
    }
}
