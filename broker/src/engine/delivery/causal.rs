//! Causal delivery (Birman 1991, CBCAST over per-origin sequence numbers).
//!
//! Every causal message carries a causal context: for each origin, the
//! highest sequence number of that origin's causal messages that happened
//! before it. Origins' streams are already reliable and in order, so "this
//! member delivered origin j's causal messages up to seq c" is the natural
//! vector-clock entry. A message waits in its origin's hold-back queue until
//! the delivered clock covers its context; happened-before spans every
//! causal topic (one clock for all of them).
//!
//! Entries for origins outside the view are taken as satisfied: a departed
//! origin's messages were all delivered by the flush that removed it (up to
//! the agreed cut; a message of a crashed broker beyond it, which only that
//! broker delivered, is no dependency), and a context cannot name a future one.
//! But a departed origin's message still held here (the flush handed it
//! over) is waited for, so the flush delivers those in causal order too
//! (sim seeds 3153, 3173, 4204: a broker cut off alone delivered one
//! departed origin's message before another's that it followed). At a view
//! change every held message is delivered (the flush makes every member
//! hold the same ones), so nothing held crosses a view.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ordo_wire::{CausalContext, Origin, Seq};

use super::{Out, Ready};

/// The causal layer: the delivered clock and the per-origin hold-back queues.
#[derive(Debug, Default)]
pub(crate) struct Causal {
    delivered: BTreeMap<Origin, Seq>,
    held: BTreeMap<Origin, VecDeque<Ready>>,
    held_count: usize,
    held_bytes: usize,
    members: BTreeSet<Origin>,
    /// Planted bug: deliver at once, without hold-back.
    pub(crate) no_holdback: bool,
    /// Messages delivered at a view change with a dependency still unmet
    /// (a context naming a message no member holds: a client's bad context).
    pub(crate) forced: u64,
}

impl Causal {
    /// Takes a complete causal message of `ready.origin` (in its stream order).
    pub(crate) fn accept(&mut self, ready: Ready, out: &mut Out<'_>) {
        self.held_bytes += ready.msg.payload.len();
        self.held_count += 1;
        self.held.entry(ready.origin).or_default().push_back(ready);
        self.deliver_ready(out);
    }

    /// The clock of what this member delivered, for a local publish's context.
    pub(crate) fn clock(&self) -> CausalContext {
        CausalContext::from_entries(
            self.delivered
                .iter()
                .filter(|(_, s)| s.0 > 0)
                .map(|(o, s)| (*o, *s)),
        )
    }

    /// Messages and payload bytes held back.
    pub(crate) fn held(&self) -> (usize, usize) {
        (self.held_count, self.held_bytes)
    }

    /// A new view: delivers everything held (the flush made every member
    /// hold the same messages), then takes the view's starting digest as
    /// delivered (a joiner starts there) and forgets departed origins.
    pub(crate) fn install(
        &mut self,
        members: &[Origin],
        digest: &BTreeMap<Origin, Seq>,
        out: &mut Out<'_>,
    ) {
        self.deliver_ready(out);
        // Departed origins: everything of theirs any member will deliver was
        // delivered by the flush above (their cut), so what a context still
        // names of them (delivered only at a broker that failed, and seen by
        // a client there) is void, not a dependency to wait for.
        self.members.retain(|m| members.contains(m));
        self.deliver_ready(out);
        // What is left waits for a message no member holds: deliver it in a
        // fixed order (by origin, then stream order) so all members agree.
        while let Some(origin) = self.held.keys().next().copied() {
            while let Some(r) = self.pop(origin) {
                self.forced += 1;
                self.deliver(r, out);
            }
            self.held.remove(&origin);
            self.deliver_ready(out);
        }
        self.members = members.iter().copied().collect();
        for (o, s) in digest {
            let e = self.delivered.entry(*o).or_default();
            *e = (*e).max(*s);
        }
        let keep = &self.members;
        self.delivered.retain(|o, _| keep.contains(o));
    }

    fn satisfied(&self, r: &Ready) -> bool {
        if self.no_holdback {
            return true;
        }
        r.msg.context.entries().iter().all(|(o, s)| {
            *o == r.origin
                || self.delivered.get(o).copied().unwrap_or_default() >= *s
                || (!self.members.contains(o) && !self.holds_upto(*o, *s))
        })
    }

    /// Whether a message of `origin` at or below `seq` is still held.
    fn holds_upto(&self, origin: Origin, seq: Seq) -> bool {
        self.held
            .get(&origin)
            .and_then(VecDeque::front)
            .is_some_and(|r| r.seq <= seq)
    }

    /// Delivers every held message whose context is covered, until none is.
    fn deliver_ready(&mut self, out: &mut Out<'_>) {
        loop {
            let mut progress = false;
            let origins: Vec<Origin> = self.held.keys().copied().collect();
            for o in origins {
                while self
                    .held
                    .get(&o)
                    .and_then(VecDeque::front)
                    .is_some_and(|r| self.satisfied(r))
                {
                    if let Some(r) = self.pop(o) {
                        self.deliver(r, out);
                        progress = true;
                    }
                }
                if self.held.get(&o).is_some_and(VecDeque::is_empty) {
                    self.held.remove(&o);
                }
            }
            if !progress {
                return;
            }
        }
    }

    fn pop(&mut self, origin: Origin) -> Option<Ready> {
        let r = self.held.get_mut(&origin)?.pop_front()?;
        self.held_count -= 1;
        self.held_bytes -= r.msg.payload.len();
        Some(r)
    }

    fn deliver(&mut self, r: Ready, out: &mut Out<'_>) {
        let e = self.delivered.entry(r.origin).or_default();
        *e = (*e).max(r.seq);
        out.deliver(r, None);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::engine::topics::TopicCache;
    use crate::engine::Event;
    use bytes::Bytes;
    use ordo_wire::group::DataMsg;
    use ordo_wire::{Incarnation, NodeId, Ordering};

    fn o(n: u32) -> Origin {
        Origin {
            node: NodeId(n),
            incarnation: Incarnation(1),
        }
    }

    fn msg(origin: u32, seq: u64, ctx: &[(u32, u64)]) -> Ready {
        Ready {
            origin: o(origin),
            seq: Seq(seq),
            msg: DataMsg {
                seq: Seq(seq),
                topic: Bytes::from_static(b"c"),
                ordering: Ordering::Causal,
                safe: false,
                publisher: 1,
                context: CausalContext::from_entries(ctx.iter().map(|(n, s)| (o(*n), Seq(*s)))),
                published_at_us: 0,
                fragment: None,
                payload: Bytes::from(format!("{origin}:{seq}")),
            },
        }
    }

    fn delivered(events: &mut VecDeque<Event>) -> Vec<String> {
        events
            .drain(..)
            .filter_map(|e| match e {
                Event::Deliver(d) => Some(String::from_utf8_lossy(&d.payload).into_owned()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_message_waits_for_what_its_context_names() {
        let mut c = Causal::default();
        let (mut ev, mut topics) = (VecDeque::new(), TopicCache::default());
        let mut out = Out::new(&mut ev, &mut topics);
        c.install(&[o(1), o(2), o(3)], &BTreeMap::new(), &mut out);
        // 2:1 follows 1:5, which has not arrived.
        c.accept(msg(2, 1, &[(1, 5)]), &mut out);
        // 2:2 follows 2:1 only (FIFO), but must wait behind it.
        c.accept(msg(2, 2, &[(2, 1)]), &mut out);
        assert_eq!(c.held(), (2, 6));
        assert_eq!(out.delivered, 0);
        c.accept(msg(1, 5, &[]), &mut out);
        assert_eq!(delivered(out.events), ["1:5", "2:1", "2:2"]);
        assert_eq!(c.held(), (0, 0));
        assert_eq!(c.clock().get(o(1)), Seq(5));
        assert_eq!(c.clock().get(o(2)), Seq(2));
    }

    #[test]
    fn contexts_naming_non_members_are_satisfied_and_a_view_change_flushes() {
        let mut c = Causal::default();
        let (mut ev, mut topics) = (VecDeque::new(), TopicCache::default());
        let mut out = Out::new(&mut ev, &mut topics);
        c.install(&[o(1), o(2)], &BTreeMap::new(), &mut out);
        c.accept(msg(2, 1, &[(9, 4)]), &mut out);
        c.accept(msg(2, 2, &[(1, 7)]), &mut out);
        assert_eq!(out.delivered, 1, "node 9 is no member: nothing to wait for");
        // 1:7 never comes (a bad context): the view change delivers it anyway.
        c.install(&[o(1), o(2)], &BTreeMap::from([(o(1), Seq(3))]), &mut out);
        assert_eq!(delivered(out.events), ["2:1", "2:2"]);
        assert_eq!(c.forced, 1);
    }

    #[test]
    fn departed_origins_messages_the_flush_hands_over_keep_their_causal_order() {
        let mut c = Causal::default();
        let (mut ev, mut topics) = (VecDeque::new(), TopicCache::default());
        let mut out = Out::new(&mut ev, &mut topics);
        c.install(&[o(1), o(2), o(3), o(4)], &BTreeMap::new(), &mut out);
        // Cut off alone, node 4 holds 2:1 (which waits for 3:1, never
        // received) and 1:1, which follows 2:1.
        c.accept(msg(2, 1, &[(3, 1)]), &mut out);
        c.accept(msg(1, 1, &[(2, 1)]), &mut out);
        assert_eq!(out.delivered, 0);
        // Its view of itself alone: 3:1 is void, 2:1 still comes before 1:1.
        c.install(&[o(4)], &BTreeMap::new(), &mut out);
        assert_eq!(delivered(out.events), ["2:1", "1:1"]);
        assert_eq!(c.forced, 0);
    }
}
