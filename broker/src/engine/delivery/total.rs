//! Total order, two ways, and what total order carries: `gseq` and the
//! agreed topic table.
//!
//! **total-isis** (Birman 1987). Every member that receives a message
//! proposes a priority above any it proposed or saw agreed (ties broken by
//! node id) and queues the message under it; the origin collects every
//! member's proposal, fixes the maximum (raised above its previous final, so
//! each origin's order is kept) and sends the final; a member delivers while
//! the head of its queue is final. Keys are (priority, origin, seq), unique.
//!
//! **total-seq**. The view's sequencer appends every total-seq message it
//! receives to its order; members deliver in that order once they hold the
//! data (an order can arrive before the data; it waits).
//!
//! Proposals, finals and orders are control messages batched into the
//! sender's own reliable stream (see `ordo_wire::group::Control`), so they
//! are repaired like data, and a view change's flush makes every member hold
//! the same ones. Finals and orders are applied (by their sender too) only
//! once a quorum of the view holds them ([`Total::release`]; the engine
//! judges holding from digests), so whatever they deliver survives into
//! every possible next primary view. At the install into a primary view
//! every member resolves what is pending identically: ISIS messages with a
//! final in final order, then the rest by (origin, seq); sequenced messages
//! in order, then the rest by (origin, seq). Whatever a member delivered
//! before is a prefix of that. Into a non-primary view only the install's
//! agreed frontier (counts per layer) is delivered (see `membership`).
//! What we held of the last primary view's decisions when we left it (the
//! sequencer orders by count, the highest ISIS place with a final) is kept
//! for the quorum rule: a new incarnation reports it for its old self, and
//! a member that discarded some of it no longer counts for that view.
//!
//! `gseq` counts a topic's messages in the agreed order; a joiner receives
//! every topic's count in the install. Topic declarations ride as
//! total-seq control messages: the first declaration of a name wins
//! everywhere.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use ordo_wire::group::{Control, Priority, TopicState, TotalCounts};
use ordo_wire::{GlobalSeq, NodeId, Ordering, Origin, Seq};

use super::{Out, Ready};
use crate::engine::Delivered;

type Key = (Priority, Origin, Seq);

/// A total-seq message waiting for its place in the sequencer's order.
#[derive(Debug)]
enum Held {
    /// Its delivery, built on arrival (while its datagram is still in
    /// cache); only the `gseq` is filled in when its place is known. Boxed
    /// in the `Arc` it is delivered in, so holding it moves 8 bytes.
    Msg(Arc<Delivered>),
    /// A topic declaration (decoded when its place is reached).
    Declare(Box<Ready>),
}

/// What [`Total::take_seq`] found for an order entry.
enum Taken {
    Held(Held),
    /// Delivered before (only a second sequencer orders a message twice).
    Twice,
    /// Not here (yet): the order came before the data.
    Missing,
}

/// One origin's total-seq messages not yet delivered, in stream order,
/// and the last one delivered. Orders are FIFO per origin, so a message's
/// place is almost always at the front: no search, no map per message.
#[derive(Debug, Default)]
struct SeqOrigin {
    held: VecDeque<(Seq, Held)>,
    done: Option<Seq>,
}

impl SeqOrigin {
    /// Whether `s` was delivered already (only a second sequencer can
    /// order a message twice).
    fn delivered(&self, s: Seq) -> bool {
        self.done.is_some_and(|d| d >= s)
    }

    /// Takes message `s` out if we hold it.
    fn take(&mut self, s: Seq) -> Option<Held> {
        match self.held.front() {
            Some((f, _)) if *f == s => self.held.pop_front().map(|(_, h)| h),
            // Out of FIFO order (a broken or second sequencer): search.
            Some(_) => {
                let i = self.held.binary_search_by_key(&s, |(q, _)| *q).ok()?;
                self.held.remove(i).map(|(_, h)| h)
            }
            None => None,
        }
    }
}

/// A total-isis message without a final priority yet.
#[derive(Debug)]
struct IsisEntry {
    seq: Seq,
    /// Its delivery, built on arrival; the `gseq` is set when delivered.
    d: Arc<Delivered>,
}

/// The proposals for one of our messages, one per member (a handful).
type Proposals = Vec<(Origin, Priority)>;

/// Records `sender`'s proposal (a later one replaces an earlier one).
fn propose(props: &mut Proposals, sender: Origin, p: Priority) {
    match props.iter_mut().find(|(o, _)| *o == sender) {
        Some(e) => e.1 = p,
        None => props.push((sender, p)),
    }
}

/// The agreed settings of a topic.
pub(crate) type Spec = (Ordering, bool);

/// Both total-order layers, the per-topic `gseq` and the agreed topic table.
#[derive(Debug, Default)]
pub(crate) struct Total {
    me: Origin,
    members: Vec<Origin>,
    sequencer: Option<NodeId>,
    /// Largest entries per control message (fits one datagram).
    batch: usize,
    // ----- ISIS -----
    counter: u64,
    /// Per origin, its messages without a final, in stream order (an
    /// origin fixes its finals in stream order, so a final almost always
    /// names the front: no search, no map entry per message).
    isis: BTreeMap<Origin, VecDeque<IsisEntry>>,
    /// Messages in `isis`.
    isis_len: usize,
    /// The priorities we proposed, ascending (each above the last): the
    /// places of messages without a final, plus stale ones of messages that
    /// got theirs since (skipped at the front, see [`Total::deliver_isis`]).
    tentative: VecDeque<Key>,
    /// Messages with a final priority, not yet delivered, in final order.
    finals: BTreeMap<Key, Arc<Delivered>>,
    /// Our own messages collecting proposals, in stream order.
    collecting: BTreeMap<Seq, Proposals>,
    /// Our own ISIS messages in the layer whose final we have not fixed,
    /// in stream order (which of `collecting` are here).
    own_open: VecDeque<Seq>,
    last_final: Priority,
    /// Our last message with a final (finals are fixed in stream order).
    final_upto: Seq,
    proposals_out: Vec<(Origin, Seq, Priority)>,
    finals_out: Vec<(Seq, Priority)>,
    // ----- sequencer -----
    /// Per origin, the messages held for their order and the last delivered.
    seq: BTreeMap<Origin, SeqOrigin>,
    /// Messages in `seq` (the sum of its queues).
    seq_held: usize,
    seq_order: VecDeque<(Origin, Seq)>,
    order_out: Vec<(Origin, Seq)>,
    /// Control messages built and not yet in our stream.
    ctl: VecDeque<Control>,
    /// The others' finals and orders, per sender in stream order, until a
    /// quorum of the view holds them (see [`Total::release`]).
    deferred: BTreeMap<Origin, VecDeque<(Seq, Control)>>,
    /// What we delivered in this view, per layer (reported in the flush).
    done: TotalCounts,
    /// The agreed frontier of the view being left (the install's): into a
    /// non-primary view exactly this much of the old view is delivered.
    frontier: TotalCounts,
    /// Set with the frontier: delivery waits for the install.
    frozen: bool,
    /// What we delivered in the last primary view we left.
    left_primary: TotalCounts,
    /// What we held of its decisions when we left it ([`Total::held`]).
    left_primary_held: TotalCounts,
    /// The place of the last ISIS message we delivered in this view.
    last_key: Key,
    /// The same in the last primary view we left.
    left_primary_last: Key,
    /// The highest ISIS place we held a final for when we left it.
    left_primary_final: Key,
    /// Whether a view was installed here.
    installed: bool,
    // ----- agreed state -----
    gseq: BTreeMap<Arc<str>, u64>,
    agreed: BTreeMap<String, Spec>,
    /// Planted bugs.
    pub(crate) skip_max: bool,
    pub(crate) two_sequencers: bool,
    pub(crate) stale_sequencer: bool,
    /// The previous view's sequencer (only the planted bug listens to it).
    prev_sequencer: Option<NodeId>,
    /// Whether the view is primary: total order works only in one.
    primary: bool,
    /// Total-order messages discarded because the view is not primary.
    pub(crate) discarded: u64,
    /// Control entries naming a message we do not hold (counted, ignored).
    pub(crate) unknown: u64,
}

impl Total {
    pub(crate) fn new(me: Origin, batch: usize) -> Self {
        Total {
            me,
            batch: batch.max(1),
            ..Total::default()
        }
    }

    /// Messages pending in both layers and control entries not yet sent.
    pub(crate) fn pending(&self) -> usize {
        self.isis_len
            + self.finals.len()
            + self.seq_held
            + self.seq_order.len()
            + self.deferred.values().map(VecDeque::len).sum::<usize>()
    }

    /// The agreed topic table.
    pub(crate) fn agreed(&self) -> &BTreeMap<String, Spec> {
        &self.agreed
    }

    /// Planted bug (`stale_sequencer_acts`): `node` sequenced a view
    /// before ours (we are its next incarnation) and keeps acting.
    pub(crate) fn remember_stale_sequencer(&mut self, node: NodeId) {
        if self.stale_sequencer {
            self.prev_sequencer = Some(node);
        }
    }

    /// Whether we act as sequencer in this view.
    fn sequencing(&self) -> bool {
        self.sequencer == Some(self.me.node)
            || (self.two_sequencers && self.members.get(1).is_some_and(|m| *m == self.me))
            || (self.stale_sequencer && self.prev_sequencer == Some(self.me.node))
    }

    /// Orders count only from the installed view's sequencer (a pure
    /// function of the view), so two sequencers never act in one view.
    fn accepts_order_from(&self, sender: Origin) -> bool {
        self.sequencer == Some(sender.node)
            || (self.two_sequencers && self.members.get(1) == Some(&sender))
            || (self.stale_sequencer && self.prev_sequencer == Some(sender.node))
    }

    // ----- data -----

    /// A complete total-isis message (ours included), in its stream order.
    pub(crate) fn accept_isis(&mut self, ready: Ready, out: &mut Out<'_>) {
        if !self.primary {
            self.discarded += 1;
            return;
        }
        let d = Arc::new(super::delivered(ready, out.topics));
        self.accept_isis_built(d, out);
    }

    /// A whole total-isis message, its delivery already built (see
    /// `Delivery::accept`).
    pub(crate) fn accept_isis_built(&mut self, d: Arc<Delivered>, out: &mut Out<'_>) {
        if !self.primary {
            self.discarded += 1;
            return;
        }
        self.counter += 1;
        let p = Priority {
            counter: self.counter,
            node: self.me.node,
        };
        let (o, s) = (d.origin, d.seq);
        let key = (p, o, s);
        self.isis
            .entry(o)
            .or_default()
            .push_back(IsisEntry { seq: s, d });
        self.isis_len += 1;
        self.tentative.push_back(key);
        if o == self.me {
            self.own_open.push_back(s);
            let n = self.members.len();
            let props = self
                .collecting
                .entry(s)
                .or_insert_with(|| Vec::with_capacity(n));
            propose(props, self.me, p);
            self.try_finalize();
        } else {
            self.proposals_out.push((o, s, p));
        }
        self.deliver_isis(out);
    }

    /// A complete total-seq message (or declaration), ours included.
    pub(crate) fn accept_seq(&mut self, ready: Ready, out: &mut Out<'_>) {
        if !self.primary {
            self.discarded += 1;
            return;
        }
        let (o, s) = (ready.origin, ready.seq);
        let held = if ready.msg.topic.is_empty() {
            Held::Declare(Box::new(ready))
        } else {
            Held::Msg(Arc::new(super::delivered(ready, out.topics)))
        };
        self.hold_seq(o, s, held, out);
    }

    /// A whole total-seq message on a client topic, its delivery already
    /// built (see `Delivery::accept`: no clone of the message on the way).
    pub(crate) fn accept_seq_built(&mut self, d: Arc<Delivered>, out: &mut Out<'_>) {
        if !self.primary {
            self.discarded += 1;
            return;
        }
        let (o, s) = (d.origin, d.seq);
        self.hold_seq(o, s, Held::Msg(d), out);
    }

    fn hold_seq(&mut self, o: Origin, s: Seq, held: Held, out: &mut Out<'_>) {
        self.seq.entry(o).or_default().held.push_back((s, held));
        self.seq_held += 1;
        if self.sequencing() {
            self.order_out.push((o, s));
        }
        self.deliver_seq(out);
    }

    // ----- control received from another member's stream -----

    pub(crate) fn on_control(&mut self, sender: Origin, c: Control, out: &mut Out<'_>) {
        match c {
            Control::IsisProposal(v) => {
                for (o, s, p) in v {
                    if o != self.me {
                        continue;
                    }
                    if s <= self.final_upto {
                        // Already final: a peer that proposes twice is broken.
                        self.unknown += 1;
                        continue;
                    }
                    // Our message may not be in the layer yet (held until
                    // stable behind a safe one): its proposals wait for it.
                    propose(self.collecting.entry(s).or_default(), sender, p);
                }
                self.try_finalize();
            }
            Control::IsisFinal(v) => {
                for (s, p) in v {
                    self.apply_final(sender, s, p);
                }
                self.deliver_isis(out);
            }
            Control::SequencerOrder(v) => {
                if self.accepts_order_from(sender) {
                    self.seq_order.extend(v);
                    self.deliver_seq(out);
                } else {
                    self.unknown += v.len() as u64;
                }
            }
            // Declarations are data of the total-seq layer, not handled here.
            Control::Declare { .. } => self.unknown += 1,
        }
    }

    /// A control message of `sender`'s stream at `seq`: proposals act at
    /// once (they decide nothing); finals and orders wait until a quorum
    /// holds them, so what is delivered by them is known to every possible
    /// next primary view.
    pub(crate) fn defer_control(
        &mut self,
        sender: Origin,
        seq: Seq,
        c: Control,
        out: &mut Out<'_>,
    ) {
        match c {
            Control::IsisFinal(_) | Control::SequencerOrder(_) => {
                self.deferred.entry(sender).or_default().push_back((seq, c));
            }
            Control::IsisProposal(_) | Control::Declare { .. } => self.on_control(sender, c, out),
        }
    }

    /// Applies the deferred control of each sender up to `held(sender)`.
    pub(crate) fn release(&mut self, held: impl Fn(Origin) -> Seq, out: &mut Out<'_>) {
        // Called after every input: walk the senders without collecting
        // them (at most one per member), each from the one after the last.
        let mut next = self.deferred.keys().next().copied();
        while let Some(sender) = next {
            let upto = held(sender);
            while let Some(q) = self.deferred.get_mut(&sender) {
                if q.front().is_none_or(|(s, _)| *s > upto) {
                    break;
                }
                let Some((_, c)) = q.pop_front() else {
                    break;
                };
                self.on_control(sender, c, out);
            }
            if self.deferred.get(&sender).is_some_and(VecDeque::is_empty) {
                self.deferred.remove(&sender);
            }
            next = self
                .deferred
                .range((Bound::Excluded(sender), Bound::Unbounded))
                .next()
                .map(|(o, _)| *o);
        }
    }

    /// What we delivered in this view, per layer; from now on nothing
    /// more is delivered until the install (a flush began: what we
    /// report is what we delivered).
    pub(crate) fn freeze(&mut self) -> TotalCounts {
        self.frozen = true;
        self.done
    }

    /// Whether a view was installed in this layer.
    pub(crate) fn installed(&self) -> bool {
        self.installed
    }

    /// How far into this view's agreed order our decisions reach: what we
    /// delivered plus the ISIS finals and sequencer orders we hold and have
    /// not delivered (applied or still waiting for a quorum). An order
    /// another member delivered may be among them, so a new incarnation of
    /// ours counts for us only where this much is known (see
    /// `Membership::quorum`). The sequencer's orders form one sequence, so
    /// the count names a prefix of it; ISIS finals do not, and the count is
    /// only compared against a side that resolves all it holds.
    fn held(&self) -> TotalCounts {
        let deferred = |isis: bool| -> u64 {
            self.deferred
                .values()
                .flatten()
                .map(|(_, c)| match c {
                    Control::IsisFinal(v) if isis => v.len() as u64,
                    Control::SequencerOrder(v) if !isis => v.len() as u64,
                    _ => 0,
                })
                .sum()
        };
        TotalCounts {
            isis: self.done.isis + self.finals.len() as u64 + deferred(true),
            seq: self.done.seq + self.seq_order.len() as u64 + deferred(false),
        }
    }

    /// The highest ISIS place we delivered or hold a final for in this view.
    fn held_final(&self) -> Key {
        let applied = self.finals.keys().next_back().copied();
        let deferred = self.deferred.iter().flat_map(|(o, q)| {
            q.iter().flat_map(move |(_, c)| match c {
                Control::IsisFinal(v) => v.iter().map(|(s, p)| (*p, *o, *s)).collect(),
                _ => Vec::new(),
            })
        });
        applied
            .into_iter()
            .chain(deferred)
            .fold(self.last_key, std::cmp::max)
    }

    /// What we held of our last primary view's decisions (the current one's
    /// if it is primary): a rejoin reports it (see `Join::primary_held`,
    /// `Join::primary_final`).
    pub(crate) fn primary_held(&self) -> (TotalCounts, Key) {
        if self.primary {
            (self.held(), self.held_final())
        } else {
            (self.left_primary_held, self.left_primary_final)
        }
    }

    /// What of our last primary view's order our side is sure to deliver:
    /// in it still, all we hold (a primary successor resolves it all); after
    /// a move to a non-primary view, what we delivered (the rest was
    /// discarded there).
    /// Whether we kept every decision of our last primary view we held:
    /// still in it, or we delivered all we held when we left it (a move to
    /// a non-primary view discards the rest, see [`Total::install`]).
    pub(crate) fn primary_intact(&self) -> bool {
        self.primary
            || (self.left_primary_held.seq <= self.left_primary.seq
                && self.left_primary_final <= self.left_primary_last)
    }

    /// For ISIS, only the place of the last message we delivered: finals
    /// are no one sequence, but every message we did not deliver is placed
    /// above it, so whoever held finals only up to it held none beyond
    /// what we delivered.
    pub(crate) fn primary_known(&self) -> (TotalCounts, Key) {
        if self.primary {
            (self.held(), self.last_key)
        } else {
            (self.left_primary, self.left_primary_last)
        }
    }

    /// The agreed frontier for the next [`Total::install`] into a
    /// non-primary view.
    /// Until then nothing is delivered by the usual rules (the old view's
    /// control is applied, the install picks what to deliver).
    pub(crate) fn set_frontier(&mut self, f: TotalCounts) {
        self.frontier = f;
        self.frozen = true;
    }

    // ----- control we send -----

    /// The next control message to put in our stream (see [`Total::sent`]).
    pub(crate) fn next_control(&mut self) -> Option<Control> {
        self.build();
        self.ctl.pop_front()
    }

    /// A control message from [`Total::next_control`] did not fit our window: keep it.
    pub(crate) fn unsent(&mut self, c: Control) {
        self.ctl.push_front(c);
    }

    /// A control message is in our stream: apply it here as the others will.
    pub(crate) fn sent(&mut self, c: &Control, out: &mut Out<'_>) {
        match c {
            Control::IsisFinal(v) => {
                for (s, p) in v {
                    self.apply_final(self.me, *s, *p);
                }
                self.deliver_isis(out);
            }
            Control::SequencerOrder(v) => {
                self.seq_order.extend(v.iter().copied());
                self.deliver_seq(out);
            }
            Control::IsisProposal(_) | Control::Declare { .. } => {}
        }
    }

    fn build(&mut self) {
        let b = self.batch;
        while !self.proposals_out.is_empty() {
            let n = self.proposals_out.len().min(b);
            let v: Vec<_> = self.proposals_out.drain(..n).collect();
            self.ctl.push_back(Control::IsisProposal(v));
        }
        while !self.finals_out.is_empty() {
            let n = self.finals_out.len().min(b);
            let v: Vec<_> = self.finals_out.drain(..n).collect();
            self.ctl.push_back(Control::IsisFinal(v));
        }
        while !self.order_out.is_empty() {
            let n = self.order_out.len().min(b);
            let v: Vec<_> = self.order_out.drain(..n).collect();
            self.ctl.push_back(Control::SequencerOrder(v));
        }
    }

    // ----- ISIS internals -----

    /// Fixes the final priority of our oldest messages that have every proposal.
    fn try_finalize(&mut self) {
        while let Some((&s, props)) = self.collecting.first_key_value() {
            let here = match self.own_open.front() {
                Some(f) if *f == s => true,
                Some(f) if *f > s => false,
                Some(_) => self.own_open.binary_search(&s).is_ok(),
                None => false,
            };
            if !here {
                // Our messages enter in stream order: if a later one is here,
                // this seq is no ISIS message of ours (a broken peer's
                // proposal); otherwise it has not entered yet.
                let later = self.own_open.back().is_some_and(|b| *b > s);
                if later {
                    self.collecting.remove(&s);
                    self.unknown += 1;
                    continue;
                }
                return;
            }
            if !self
                .members
                .iter()
                .all(|m| props.iter().any(|(o, _)| o == m))
            {
                return;
            }
            let max = if self.skip_max {
                props
                    .iter()
                    .find(|(o, _)| *o == self.me)
                    .map(|(_, p)| *p)
                    .unwrap_or_default()
            } else {
                props.iter().map(|(_, p)| *p).max().unwrap_or_default()
            };
            // Above our previous final, so our messages keep their order.
            let fin = if max > self.last_final {
                max
            } else {
                Priority {
                    counter: self.last_final.counter + 1,
                    node: self.me.node,
                }
            };
            self.last_final = fin;
            self.final_upto = s;
            self.counter = self.counter.max(fin.counter);
            self.finals_out.push((s, fin));
            self.collecting.remove(&s);
            if self.own_open.front() == Some(&s) {
                self.own_open.pop_front();
            } else if let Ok(i) = self.own_open.binary_search(&s) {
                self.own_open.remove(i);
            }
        }
    }

    fn apply_final(&mut self, origin: Origin, s: Seq, p: Priority) {
        self.counter = self.counter.max(p.counter);
        let Some(e) = self.take_isis(origin, s) else {
            // Unknown, or final already (an origin fixes each final once).
            self.unknown += 1;
            return;
        };
        self.finals.insert((p, origin, s), e.d);
    }

    /// Where `origin`'s message `s` is in its queue of messages without a final.
    fn isis_index(&self, origin: Origin, s: Seq) -> Option<usize> {
        let q = self.isis.get(&origin)?;
        match q.front() {
            Some(f) if f.seq == s => Some(0),
            Some(f) if f.seq > s => None,
            Some(_) => q.binary_search_by_key(&s, |e| e.seq).ok(),
            None => None,
        }
    }

    /// Whether `origin`'s message `s` is here without a final.
    fn isis_holds(&self, origin: Origin, s: Seq) -> bool {
        self.isis_index(origin, s).is_some()
    }

    /// Takes `origin`'s message `s` out of the messages without a final.
    fn take_isis(&mut self, origin: Origin, s: Seq) -> Option<IsisEntry> {
        let i = self.isis_index(origin, s)?;
        let e = self.isis.get_mut(&origin)?.remove(i)?;
        self.isis_len -= 1;
        Some(e)
    }

    /// Delivers while the lowest place of all pending messages is final:
    /// the first final is below every proposal still tentative.
    fn deliver_isis(&mut self, out: &mut Out<'_>) {
        if self.frozen {
            return;
        }
        loop {
            while let Some(&(_, o, s)) = self.tentative.front() {
                if self.isis_holds(o, s) {
                    break;
                }
                self.tentative.pop_front(); // it has its final now
            }
            let Some((first, _)) = self.finals.first_key_value() else {
                return;
            };
            if self.tentative.front().is_some_and(|t| t < first) {
                return;
            }
            let Some((key, d)) = self.finals.pop_first() else {
                return;
            };
            self.done.isis += 1;
            self.last_key = key;
            self.emit_delivered(d, out);
        }
    }

    // ----- sequencer internals -----

    fn deliver_seq(&mut self, out: &mut Out<'_>) {
        if self.frozen {
            return;
        }
        while let Some(&(o, s)) = self.seq_order.front() {
            match self.take_seq(o, s) {
                Taken::Twice => {
                    self.seq_order.pop_front();
                }
                Taken::Missing => return, // the order came before the data
                Taken::Held(h) => {
                    self.seq_order.pop_front();
                    self.done.seq += 1;
                    self.emit_held(h, out);
                }
            }
        }
    }

    /// Takes the message the order names, marking it delivered.
    fn take_seq(&mut self, o: Origin, s: Seq) -> Taken {
        let Some(q) = self.seq.get_mut(&o) else {
            return Taken::Missing;
        };
        if q.delivered(s) {
            return Taken::Twice;
        }
        let Some(h) = q.take(s) else {
            return Taken::Missing;
        };
        q.done = Some(s);
        self.seq_held -= 1;
        Taken::Held(h)
    }

    // ----- delivery, gseq and declarations -----

    fn emit_held(&mut self, h: Held, out: &mut Out<'_>) {
        match h {
            Held::Msg(d) => self.emit_delivered(d, out),
            Held::Declare(r) => self.declaration(*r, out),
        }
    }

    /// Delivers with the topic's next `gseq`.
    fn emit_delivered(&mut self, mut d: Arc<Delivered>, out: &mut Out<'_>) {
        let g = if let Some(g) = self.gseq.get_mut(&d.topic) {
            *g += 1;
            *g
        } else {
            self.gseq.insert(d.topic.clone(), 1);
            1
        };
        let gseq = Some(GlobalSeq(g));
        match Arc::get_mut(&mut d) {
            Some(m) => m.gseq = gseq,
            // Never shared before delivery; if it were, deliver a copy.
            None => {
                let mut c = Delivered::clone(&d);
                c.gseq = gseq;
                d = Arc::new(c);
            }
        }
        out.push(d);
    }

    fn declaration(&mut self, r: Ready, out: &mut Out<'_>) {
        let Ok(Control::Declare {
            name,
            ordering,
            safe,
            req,
        }) = Control::decode(&r.msg.payload)
        else {
            self.unknown += 1;
            return;
        };
        let requested = (ordering, safe);
        let agreed = *self.agreed.entry(name.clone()).or_insert(requested);
        let token = (r.origin == self.me).then_some(super::super::ConfirmToken {
            conn: r.msg.publisher,
            req,
        });
        out.declared(name, requested, agreed, token);
    }

    // ----- views -----

    /// A new view: resolve everything pending the same way on every member
    /// (the flush made them hold the same messages and control), then start
    /// afresh under the new members and sequencer.
    pub(crate) fn install(
        &mut self,
        me: Origin,
        members: &[Origin],
        sequencer: Option<NodeId>,
        primary: bool,
        out: &mut Out<'_>,
    ) {
        if self.primary {
            self.left_primary_held = self.held();
            self.left_primary_final = self.held_final();
        }
        if !primary {
            // The view lost its quorum. Deliver exactly the agreed frontier:
            // as many ISIS messages (finals in final order, skipping those
            // without one) and sequenced ones (in order) as the member that
            // delivered most of the old view did. That member delivered the
            // same sequence (a message without a final that sorts before a
            // final one it delivered gets a final above it), and the flush
            // gave us its finals, orders and data. The rest has no agreed
            // place and would be placed apart from the primary side: it is
            // delivered nowhere here.
            while self.done.isis < self.frontier.isis {
                let Some((key, d)) = self.finals.pop_first() else {
                    break;
                };
                self.done.isis += 1;
                self.last_key = key;
                self.emit_delivered(d, out);
            }
            while self.done.seq < self.frontier.seq {
                let Some(&(o, s)) = self.seq_order.front() else {
                    break;
                };
                match self.take_seq(o, s) {
                    Taken::Twice => {
                        self.seq_order.pop_front();
                    }
                    Taken::Missing => break,
                    Taken::Held(h) => {
                        self.seq_order.pop_front();
                        self.done.seq += 1;
                        self.emit_held(h, out);
                    }
                }
            }
            self.discarded += (self.isis_len + self.finals.len() + self.seq_held) as u64;
            self.isis.clear();
            self.isis_len = 0;
            self.finals.clear();
            self.tentative.clear();
            for q in self.seq.values_mut() {
                q.held.clear();
            }
            self.seq_held = 0;
            self.seq_order.clear();
        }
        // ISIS: finals in final order, then the rest by (origin, seq).
        while let Some((_, d)) = self.finals.pop_first() {
            self.emit_delivered(d, out);
        }
        for q in std::mem::take(&mut self.isis).into_values() {
            for e in q {
                self.emit_delivered(e.d, out);
            }
        }
        self.isis_len = 0;
        self.tentative.clear();
        self.collecting.clear();
        self.own_open.clear();
        self.proposals_out.clear();
        self.finals_out.clear();
        self.last_final = Priority::default();
        // Sequencer: its order, then the rest by (origin, seq).
        while let Some((o, s)) = self.seq_order.pop_front() {
            if let Some(q) = self.seq.get_mut(&o) {
                if let Some(h) = q.take(s) {
                    q.done = Some(s);
                    self.seq_held -= 1;
                    self.emit_held(h, out);
                }
            }
        }
        let origins: Vec<Origin> = self.seq.keys().copied().collect();
        for o in origins {
            while let Some((s, h)) = self.seq.get_mut(&o).and_then(|q| q.held.pop_front()) {
                if let Some(q) = self.seq.get_mut(&o) {
                    q.done = Some(s);
                }
                self.seq_held -= 1;
                self.emit_held(h, out);
            }
        }
        self.order_out.clear();
        self.ctl.clear();
        // What no quorum held was released nowhere (the caller released
        // everything into a primary successor).
        self.deferred.clear();
        if self.primary {
            self.left_primary = self.done;
            self.left_primary_last = self.last_key;
        }
        self.done = TotalCounts::default();
        self.last_key = Key::default();
        self.installed = true;
        self.frontier = TotalCounts::default();
        self.frozen = false;
        self.me = me;
        self.members = members.to_vec();
        if self.sequencer.is_some() && self.sequencer != sequencer {
            self.prev_sequencer = self.sequencer;
        }
        self.sequencer = sequencer;
        self.primary = primary;
        let keep = &self.members;
        self.seq.retain(|o, _| keep.contains(o));
    }

    /// The agreed state a joiner needs: topics and their `gseq`.
    pub(crate) fn state(&self) -> Vec<TopicState> {
        // Every topic in use was declared (the driver declares a topic on
        // its first use), so the table covers every gseq.
        self.agreed
            .iter()
            .map(|(name, (ordering, safe))| TopicState {
                name: name.clone(),
                ordering: *ordering,
                safe: *safe,
                gseq: self.gseq.get(name.as_str()).copied().unwrap_or(0),
            })
            .collect()
    }

    /// A joiner takes the group's state from its first install.
    pub(crate) fn load(&mut self, state: &[TopicState], out: &mut Out<'_>) {
        for t in state {
            if t.gseq > 0 {
                self.gseq.insert(Arc::from(t.name.as_str()), t.gseq);
            }
            if self.agreed.contains_key(&t.name) {
                continue;
            }
            let spec = (t.ordering, t.safe);
            self.agreed.insert(t.name.clone(), spec);
            out.declared(t.name.clone(), spec, spec, None);
        }
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
    use ordo_wire::{CausalContext, Incarnation};

    fn o(n: u32) -> Origin {
        Origin {
            node: NodeId(n),
            incarnation: Incarnation(1),
        }
    }

    fn msg(origin: u32, seq: u64, ordering: Ordering) -> Ready {
        Ready {
            origin: o(origin),
            seq: Seq(seq),
            msg: DataMsg {
                seq: Seq(seq),
                topic: Bytes::from_static(b"t"),
                ordering,
                safe: false,
                publisher: 1,
                context: CausalContext::new(),
                published_at_us: 0,
                fragment: None,
                payload: Bytes::from(format!("{origin}:{seq}")),
            },
        }
    }

    fn delivered(events: &mut VecDeque<Event>) -> Vec<(String, u64)> {
        events
            .drain(..)
            .filter_map(|e| match e {
                Event::Deliver(d) => Some((
                    String::from_utf8_lossy(&d.payload).into_owned(),
                    d.gseq.map_or(0, |g| g.0),
                )),
                _ => None,
            })
            .collect()
    }

    fn p(counter: u64, node: u32) -> Priority {
        Priority {
            counter,
            node: NodeId(node),
        }
    }

    #[test]
    fn isis_origin_fixes_the_maximum_and_keeps_its_own_order() {
        let mut t = Total::new(o(1), 100);
        let (mut ev, mut topics) = (VecDeque::new(), TopicCache::default());
        let mut out = Out::new(&mut ev, &mut topics);
        t.install(o(1), &[o(1), o(2)], Some(NodeId(1)), true, &mut out);
        t.accept_isis(msg(1, 1, Ordering::TotalIsis), &mut out);
        t.accept_isis(msg(1, 2, Ordering::TotalIsis), &mut out);
        // Node 2 proposes high for the first and low for the second.
        t.on_control(
            o(2),
            Control::IsisProposal(vec![(o(1), Seq(1), p(9, 2)), (o(1), Seq(2), p(1, 2))]),
            &mut out,
        );
        let c = t.next_control().unwrap();
        // The second's final is raised above the first's, keeping FIFO.
        assert_eq!(
            c,
            Control::IsisFinal(vec![(Seq(1), p(9, 2)), (Seq(2), p(10, 1))])
        );
        assert_eq!(out.delivered, 0, "finals apply once in our stream");
        t.sent(&c, &mut out);
        assert_eq!(
            delivered(out.events),
            [("1:1".into(), 1), ("1:2".into(), 2)]
        );
    }

    #[test]
    fn isis_waits_while_a_tentative_priority_is_lower() {
        let mut t = Total::new(o(3), 100);
        let (mut ev, mut topics) = (VecDeque::new(), TopicCache::default());
        let mut out = Out::new(&mut ev, &mut topics);
        t.install(o(3), &[o(1), o(2), o(3)], Some(NodeId(1)), true, &mut out);
        t.accept_isis(msg(1, 1, Ordering::TotalIsis), &mut out); // we propose 1.3
        t.accept_isis(msg(2, 1, Ordering::TotalIsis), &mut out); // we propose 2.3
        t.on_control(o(2), Control::IsisFinal(vec![(Seq(1), p(2, 3))]), &mut out);
        assert_eq!(out.delivered, 0, "1:1 (tentative 1.3) may still come first");
        t.on_control(o(1), Control::IsisFinal(vec![(Seq(1), p(2, 2))]), &mut out);
        assert_eq!(
            delivered(out.events),
            [("1:1".into(), 1), ("2:1".into(), 2)]
        );
    }

    #[test]
    fn sequenced_messages_wait_for_data_and_order_and_resolve_at_a_view_change() {
        let mut t = Total::new(o(2), 100);
        let (mut ev, mut topics) = (VecDeque::new(), TopicCache::default());
        let mut out = Out::new(&mut ev, &mut topics);
        t.install(o(2), &[o(1), o(2), o(3)], Some(NodeId(1)), true, &mut out);
        t.on_control(
            o(1),
            Control::SequencerOrder(vec![(o(3), Seq(1)), (o(2), Seq(1))]),
            &mut out,
        );
        t.accept_seq(msg(2, 1, Ordering::TotalSeq), &mut out);
        assert_eq!(out.delivered, 0, "3:1 comes first and is not here yet");
        // Orders from a member that is not the sequencer are ignored.
        t.on_control(
            o(3),
            Control::SequencerOrder(vec![(o(2), Seq(1))]),
            &mut out,
        );
        assert_eq!(t.unknown, 1);
        t.accept_seq(msg(3, 1, Ordering::TotalSeq), &mut out);
        t.accept_seq(msg(3, 2, Ordering::TotalSeq), &mut out);
        assert_eq!(
            delivered(out.events),
            [("3:1".into(), 1), ("2:1".into(), 2)]
        );
        // 3:2 was never ordered: the view change delivers it, gseq continuing.
        t.install(o(2), &[o(2), o(3)], Some(NodeId(2)), true, &mut out);
        assert_eq!(delivered(out.events), [("3:2".into(), 3)]);
        assert_eq!(t.state(), vec![]);
    }

    #[test]
    fn isis_delivers_finals_in_final_order_past_stale_proposals() {
        // We are node 3; nodes 1 and 2 each send two messages.
        let mut t = Total::new(o(3), 100);
        let (mut ev, mut topics) = (VecDeque::new(), TopicCache::default());
        let mut out = Out::new(&mut ev, &mut topics);
        t.install(o(3), &[o(1), o(2), o(3)], Some(NodeId(1)), true, &mut out);
        for (origin, seq) in [(1, 1), (2, 1), (1, 2), (2, 2)] {
            t.accept_isis(msg(origin, seq, Ordering::TotalIsis), &mut out);
        }
        // We proposed 1.3, 2.3, 3.3, 4.3. Node 2's messages get finals
        // first (above our first proposal): nothing may be delivered.
        t.on_control(
            o(2),
            Control::IsisFinal(vec![(Seq(1), p(5, 1)), (Seq(2), p(7, 2))]),
            &mut out,
        );
        assert_eq!(out.delivered, 0, "1:1 (tentative 1.3) may still come first");
        // Node 1's: 1:1 lands between node 2's, 1:2 after both.
        t.on_control(
            o(1),
            Control::IsisFinal(vec![(Seq(1), p(6, 1)), (Seq(2), p(8, 1))]),
            &mut out,
        );
        assert_eq!(
            delivered(out.events),
            [
                ("2:1".into(), 1),
                ("1:1".into(), 2),
                ("2:2".into(), 3),
                ("1:2".into(), 4)
            ]
        );
        // A second final for a delivered message is counted, not applied.
        t.on_control(o(1), Control::IsisFinal(vec![(Seq(2), p(9, 1))]), &mut out);
        assert_eq!(t.unknown, 1);
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn sequenced_orders_out_of_stream_order_and_twice_are_handled() {
        let mut t = Total::new(o(2), 100);
        let (mut ev, mut topics) = (VecDeque::new(), TopicCache::default());
        let mut out = Out::new(&mut ev, &mut topics);
        t.install(o(2), &[o(1), o(2), o(3)], Some(NodeId(1)), true, &mut out);
        for seq in 1..=3 {
            t.accept_seq(msg(3, seq, Ordering::TotalSeq), &mut out);
        }
        // A (broken) order naming 3:2 before 3:1 (found behind the front),
        // then 3:1: as before, an origin's order is taken to be FIFO, so
        // 3:1 counts as passed and is skipped, both times.
        t.on_control(
            o(1),
            Control::SequencerOrder(vec![(o(3), Seq(2)), (o(3), Seq(1)), (o(3), Seq(1))]),
            &mut out,
        );
        assert_eq!(delivered(out.events), [("3:2".into(), 1)]);
        assert_eq!(t.pending(), 2, "3:1 and 3:3 are held, nothing is ordered");
        // The view change delivers what was never delivered, by seq.
        t.install(o(2), &[o(2), o(3)], Some(NodeId(2)), true, &mut out);
        assert_eq!(
            delivered(out.events),
            [("3:1".into(), 2), ("3:3".into(), 3)]
        );
        assert_eq!(t.pending(), 0);
    }
}
