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
//! The context a message carries is minimal in the sense that matters
//! most: it leaves out what FIFO from its own origin already implies. A
//! message is delivered only after its origin's previous causal message,
//! whose context was met first, so an entry no higher than one the origin
//! already sent is implied, and so is the origin's own entry. A single
//! publisher's messages (the common case) therefore carry an empty
//! context, and the check on arrival is O(entries) with no allocation;
//! delivered sets stay causally closed, so implied entries need no
//! repeating (a delivery's context, given to clients, names its direct
//! dependencies and itself; the rest follows transitively).
//!
//! At a view change the departed origins' streams end at the agreed cut,
//! and what a context still names of them beyond what we delivered is a
//! message no survivor holds. A departed origin's message still held here
//! (the flush handed it over) is waited for, so the flush delivers those in
//! causal order (sim seeds 3153, 3173, 4204: a broker cut off alone
//! delivered one departed origin's message before another's that it
//! followed). A departed origin's message whose context names such a lost
//! message is discarded, with the rest of its origin's stream: every
//! survivor holds the same departed messages and the same survivors'
//! streams at the install, so every one discards the same (agreement), and
//! none delivers a message before one it depends on (sim seeds 8663,
//! 15839: a broker cut off alone received a responder's reply but not the
//! message it answered, both from brokers on the other side). For a
//! surviving member's message such an entry is void and it is delivered:
//! that context came from a client that saw the message at a broker which
//! failed before any survivor held it (its own subscribers are gone with
//! it), and waiting would block its origin for good; one still waiting at
//! the install (for a message no member holds) is delivered, counted as
//! forced. So
//! nothing held crosses a view, and the sender forgets what it sent: the
//! first causal message of a view carries the whole clock again, so a
//! joiner (which starts at the view's digest) never relies on a message it
//! did not receive.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ordo_wire::group::COUNTER_LIMIT;
use ordo_wire::{CausalContext, Origin, Seq};

use super::{Out, Ready};

/// The causal layer: the delivered clock and the per-origin hold-back queues.
#[derive(Debug, Default)]
pub(crate) struct Causal {
    /// This member's origin: its own causal messages update `sent`.
    me: Option<Origin>,
    delivered: BTreeMap<Origin, Seq>,
    /// Per origin, the highest entry our own causal messages carried in
    /// this view (so every later one of ours implies it).
    sent: BTreeMap<Origin, Seq>,
    /// Hold-back queues; an origin has an entry only while it holds messages.
    held: BTreeMap<Origin, VecDeque<Ready>>,
    held_count: usize,
    held_bytes: usize,
    members: BTreeSet<Origin>,
    /// Planted bug: deliver at once, without hold-back.
    pub(crate) no_holdback: bool,
    /// Messages delivered at a view change with a dependency still unmet
    /// (a context naming a message no member holds: a client's bad context).
    pub(crate) forced: u64,
    /// Departed origins' messages discarded at a view change: their context
    /// names a message no survivor holds (see the module docs).
    pub(crate) discarded: u64,
}

impl Causal {
    /// The causal layer of member `me`.
    pub(crate) fn new(me: Origin) -> Self {
        Causal {
            me: Some(me),
            ..Causal::default()
        }
    }

    /// Takes a complete causal message of `ready.origin` (in its stream order).
    pub(crate) fn accept(&mut self, ready: Ready, out: &mut Out<'_>) {
        if Some(ready.origin) == self.me {
            for &(o, s) in ready.msg.context.entries() {
                let e = self.sent.entry(o).or_default();
                *e = (*e).max(s);
            }
        }
        // The common case: nothing of this origin waits and the context is
        // met, so it is delivered without touching a queue. Holding it back
        // instead cannot unblock anything else: no clock entry moved.
        let queued = self.held.contains_key(&ready.origin);
        if !queued && self.satisfied(&ready) {
            self.deliver(ready, out);
            if self.held_count > 0 {
                self.deliver_ready(out);
            }
            return;
        }
        self.held_bytes += ready.msg.payload.len();
        self.held_count += 1;
        self.held.entry(ready.origin).or_default().push_back(ready);
    }

    /// The context for our next causal publish: everything delivered here
    /// happened before it, plus `carried` (what the client brought from
    /// other brokers), less what FIFO from us implies (our own entry and
    /// entries no higher than our previous messages carried) and less
    /// origins outside the view (nothing can be waited for from them). So
    /// it holds at most one entry per other member, each below the wire's
    /// counter limit (a larger one would make every peer drop the frame).
    pub(crate) fn publish_context(&self, carried: &CausalContext) -> CausalContext {
        let needed = |o: Origin, s: Seq| {
            Some(o) != self.me
                && s.0 > 0
                && self.members.contains(&o)
                && s > self.sent.get(&o).copied().unwrap_or_default()
        };
        let limit = Seq(COUNTER_LIMIT - 1);
        let entries: Vec<(Origin, Seq)> = self
            .delivered
            .iter()
            .map(|(o, s)| (*o, (*s).max(carried.get(*o).min(limit))))
            .chain(
                carried
                    .entries()
                    .iter()
                    .filter(|(o, _)| !self.delivered.contains_key(o))
                    .map(|(o, s)| (*o, (*s).min(limit))),
            )
            .filter(|&(o, s)| needed(o, s))
            .collect();
        CausalContext::from_entries(entries)
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
        // handed over by the flush (their cut), so what a context still names
        // of them beyond it is a message no survivor will ever hold.
        self.members.retain(|m| members.contains(m));
        loop {
            self.deliver_ready(out);
            // A survivor's message first (its context came from a client
            // of a failed broker): delivered, forced, in a fixed order (by
            // origin, then stream order) so all members agree; it may be
            // what a departed message waits for.
            if let Some(origin) = self.held.keys().find(|o| self.members.contains(o)).copied() {
                if let Some(r) = self.pop(origin) {
                    self.forced += 1;
                    self.deliver(r, out);
                }
                continue;
            }
            // Only departed origins' messages are left, each waiting for a
            // lost message: discarded with the rest of their streams.
            let Some(origin) = self.held.keys().next().copied() else {
                break;
            };
            while self.pop(origin).is_some() {
                self.discarded += 1;
            }
        }
        self.members = members.iter().copied().collect();
        for (o, s) in digest {
            let e = self.delivered.entry(*o).or_default();
            *e = (*e).max(*s);
        }
        let keep = &self.members;
        self.delivered.retain(|o, _| keep.contains(o));
        // The view's first causal message of ours carries the whole clock.
        self.sent.clear();
    }

    fn satisfied(&self, r: &Ready) -> bool {
        if self.no_holdback {
            return true;
        }
        // A departed origin's message (the flush handed it over) waits for
        // its departed dependencies for real: one no survivor holds makes
        // it void (discarded at the install). A member's message takes a
        // departed origin's entry that nothing held here covers as void
        // instead (see the module docs).
        let departed = !self.members.contains(&r.origin);
        r.msg.context.entries().iter().all(|(o, s)| {
            *o == r.origin
                || self.delivered.get(o).copied().unwrap_or_default() >= *s
                || (!departed && !self.members.contains(o) && !self.holds_upto(*o, *s))
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
    /// Few origins hold messages at once, so a scan per delivery is cheap
    /// and allocates nothing.
    fn deliver_ready(&mut self, out: &mut Out<'_>) {
        loop {
            let next = self
                .held
                .iter()
                .find(|(_, q)| q.front().is_some_and(|r| self.satisfied(r)))
                .map(|(o, _)| *o);
            let Some(o) = next else {
                return;
            };
            if let Some(r) = self.pop(o) {
                self.deliver(r, out);
            }
        }
    }

    /// Takes the next held message of `origin`, dropping its queue once empty.
    fn pop(&mut self, origin: Origin) -> Option<Ready> {
        let q = self.held.get_mut(&origin)?;
        let r = q.pop_front();
        if q.is_empty() {
            self.held.remove(&origin);
        }
        let r = r?;
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
        let mut c = Causal::new(o(3));
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
        assert_eq!(c.delivered[&o(1)], Seq(5));
        assert_eq!(c.delivered[&o(2)], Seq(2));
    }

    #[test]
    fn contexts_naming_non_members_are_satisfied_and_a_view_change_flushes() {
        let mut c = Causal::new(o(3));
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

    fn ctx(c: &Causal, carried: &[(u32, u64)]) -> Vec<(u32, u64)> {
        let carried = CausalContext::from_entries(carried.iter().map(|(n, s)| (o(*n), Seq(*s))));
        c.publish_context(&carried)
            .entries()
            .iter()
            .map(|(o, s)| (o.node.0, s.0))
            .collect()
    }

    #[test]
    fn a_single_publishers_messages_carry_no_context() {
        let mut c = Causal::new(o(1));
        let (mut ev, mut topics) = (VecDeque::new(), TopicCache::default());
        let mut out = Out::new(&mut ev, &mut topics);
        c.install(&[o(1), o(2), o(3)], &BTreeMap::new(), &mut out);
        for seq in 1..=3 {
            let context = ctx(&c, &[(1, seq - 1)]);
            assert!(
                context.is_empty(),
                "our own entry is implied by FIFO: {context:?}"
            );
            c.accept(msg(1, seq, &[]), &mut out);
        }
        assert_eq!(out.delivered, 3);
        assert!(c.held.is_empty(), "delivered without a queue");
    }

    #[test]
    fn a_context_names_only_what_our_previous_messages_did_not() {
        let mut c = Causal::new(o(1));
        let (mut ev, mut topics) = (VecDeque::new(), TopicCache::default());
        let mut out = Out::new(&mut ev, &mut topics);
        c.install(&[o(1), o(2), o(3)], &BTreeMap::new(), &mut out);
        c.accept(msg(2, 4, &[]), &mut out);
        // Delivered 2:4; the client carried 3:7 (from another broker), 9:1
        // (no member) and our own 1:50.
        let first = ctx(&c, &[(3, 7), (9, 1), (1, 50)]);
        assert_eq!(first, [(2, 4), (3, 7)]);
        c.accept(msg(1, 1, &first), &mut out);
        // Our 1:1 carried both: the next message implies them.
        assert_eq!(ctx(&c, &[(3, 7)]), []);
        c.accept(msg(2, 5, &[]), &mut out);
        assert_eq!(ctx(&c, &[(3, 6)]), [(2, 5)], "only what moved");
        // A carried entry past the wire's counter limit is capped below it.
        assert_eq!(ctx(&c, &[(3, u64::MAX)]), [(2, 5), (3, COUNTER_LIMIT - 1)]);
        // A new view: the first message carries the whole clock again.
        c.install(&[o(1), o(2), o(3)], &BTreeMap::new(), &mut out);
        assert_eq!(ctx(&c, &[]), [(2, 5)]);
    }

    #[test]
    fn a_held_message_is_released_by_another_origins_delivery() {
        let mut c = Causal::new(o(9));
        let (mut ev, mut topics) = (VecDeque::new(), TopicCache::default());
        let mut out = Out::new(&mut ev, &mut topics);
        c.install(&[o(1), o(2), o(3)], &BTreeMap::new(), &mut out);
        c.accept(msg(3, 1, &[(2, 1)]), &mut out);
        c.accept(msg(2, 1, &[(1, 1)]), &mut out);
        c.accept(msg(3, 2, &[]), &mut out);
        assert_eq!(c.held(), (3, 9));
        c.accept(msg(1, 1, &[]), &mut out);
        assert_eq!(delivered(out.events), ["1:1", "2:1", "3:1", "3:2"]);
        assert_eq!(c.held(), (0, 0));
        assert!(c.held.is_empty());
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
        // Its view of itself alone: 3:1 is lost for good, so 2:1 cannot be
        // delivered in causal order, nor 1:1 after it (seeds 8663, 15839).
        c.install(&[o(4)], &BTreeMap::new(), &mut out);
        assert_eq!(out.delivered, 0);
        assert_eq!((c.forced, c.discarded), (0, 2));
        assert_eq!(c.held(), (0, 0));
        // The next view starts clean: a message of the new view is delivered.
        c.accept(msg(4, 1, &[]), &mut out);
        assert_eq!(delivered(out.events), ["4:1"]);
    }

    #[test]
    fn a_survivors_message_naming_a_lost_one_is_delivered_and_releases_departed_ones() {
        let mut c = Causal::new(o(4));
        let (mut ev, mut topics) = (VecDeque::new(), TopicCache::default());
        let mut out = Out::new(&mut ev, &mut topics);
        c.install(&[o(1), o(2), o(3), o(4)], &BTreeMap::new(), &mut out);
        // 2:1 names 3:1 (never received: its client saw it at node 3); 1:1
        // follows 2:1, and node 1 departs with node 3.
        c.accept(msg(2, 1, &[(3, 1)]), &mut out);
        c.accept(msg(1, 1, &[(2, 1)]), &mut out);
        c.install(&[o(2), o(4)], &BTreeMap::new(), &mut out);
        // Node 2 survives: what its message names of departed node 3 is
        // void, so it is delivered; then the departed 1:1 has what it
        // depends on.
        assert_eq!(delivered(out.events), ["2:1", "1:1"]);
        assert_eq!((c.forced, c.discarded), (0, 0));
    }
}
