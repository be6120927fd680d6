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
//! origin's messages were all delivered by the flush that removed it, and a
//! context cannot name a future one. At a view change every held message is
//! delivered (the flush makes every member hold the same ones), so nothing
//! held crosses a view.

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
                || !self.members.contains(o)
                || self.delivered.get(o).copied().unwrap_or_default() >= *s
        })
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
