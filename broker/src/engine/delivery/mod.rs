//! Delivery layers: turn each origin's in-order stream of messages into
//! deliveries, in the order the topic's ordering requires.
//!
//! Reliability hands every message to [`Delivery::accept`] exactly once, in
//! its origin's sequence order (our own through [`Delivery::accept_local`]).
//! Fragments are joined first; then each message goes to its ordering's
//! layer: `fifo` delivers at once, `causal` holds back until its context is
//! delivered, `total` orders by ISIS priorities or by the sequencer.
//! Messages on the empty topic are the layers' own control traffic.

mod causal;
mod fifo;
mod total;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use ordo_wire::group::{Control, DataMsg, Priority, TopicState, TotalCounts};
use ordo_wire::{CausalContext, GlobalSeq, NodeId, Ordering, Origin, Seq};

use super::topics::TopicCache;
use super::{ConfirmToken, Delivered, Event};
use causal::Causal;
pub(crate) use fifo::{Fifo, ReassemblyError};
use total::Total;

/// A complete message (fragments joined) in its origin's order.
#[derive(Debug)]
pub(crate) struct Ready {
    pub(crate) origin: Origin,
    /// The sequence number of its first fragment.
    pub(crate) seq: Seq,
    pub(crate) msg: DataMsg,
}

/// Where layers put what they deliver.
pub(crate) struct Out<'a> {
    pub(crate) events: &'a mut VecDeque<Event>,
    pub(crate) topics: &'a mut TopicCache,
    /// Messages delivered through this `Out`.
    pub(crate) delivered: usize,
}

impl<'a> Out<'a> {
    /// An `Out` that has delivered nothing yet.
    pub(crate) fn new(events: &'a mut VecDeque<Event>, topics: &'a mut TopicCache) -> Self {
        Out {
            events,
            topics,
            delivered: 0,
        }
    }

    /// Delivers a message to subscribers, with its `gseq` on a total topic.
    pub(crate) fn deliver(&mut self, ready: Ready, gseq: Option<u64>) {
        let mut d = delivered(ready, self.topics);
        d.gseq = gseq.map(GlobalSeq);
        self.delivered += 1;
        self.events.push_back(Event::Deliver(Arc::new(d)));
    }

    /// Delivers a delivery built beforehand (its `gseq` set).
    pub(crate) fn push(&mut self, d: Arc<Delivered>) {
        self.delivered += 1;
        self.events.push_back(Event::Deliver(d));
    }

    /// A topic declaration reached its place in the total order.
    pub(crate) fn declared(
        &mut self,
        name: String,
        requested: (Ordering, bool),
        agreed: (Ordering, bool),
        token: Option<ConfirmToken>,
    ) {
        self.events.push_back(Event::TopicDeclared {
            name: Arc::from(name),
            requested,
            agreed,
            token,
        });
    }
}

/// One ordering's delivery layer.
pub(crate) trait Layer {
    /// Takes a complete message; pushes whatever may now be delivered.
    fn accept(&mut self, ready: Ready, topics: &mut TopicCache, out: &mut VecDeque<Event>);
}

/// Every ordering's layer plus the shared reassembly in front of them.
#[derive(Debug, Default)]
pub(crate) struct Delivery {
    fifo: Fifo,
    causal: Causal,
    total: Total,
    /// Control payloads that did not decode (a broken peer): counted, dropped.
    pub(crate) bad_control: u64,
}

impl Delivery {
    /// The layers of `me`; control batches hold at most `batch` entries;
    /// reassembly joins messages up to `max_message` bytes and holds at
    /// most `reassembly_limit` bytes of partial ones.
    pub(crate) fn new(
        me: Origin,
        batch: usize,
        max_message: usize,
        reassembly_limit: usize,
    ) -> Self {
        Delivery {
            fifo: Fifo::new(max_message, reassembly_limit),
            causal: Causal::new(me),
            total: Total::new(me, batch),
            ..Delivery::default()
        }
    }

    /// Takes the next message (or fragment) of `origin`'s stream. Returns the
    /// number of messages delivered.
    pub(crate) fn accept(
        &mut self,
        origin: Origin,
        msg: &DataMsg,
        topics: &mut TopicCache,
        events: &mut VecDeque<Event>,
    ) -> Result<usize, ReassemblyError> {
        if msg.ordering == Ordering::Fifo
            && msg.fragment.is_none()
            && !msg.topic.is_empty()
            && self.fifo.passes_through(origin)
        {
            // The common case: a whole FIFO message is delivered at once,
            // built from the log's copy without cloning it first.
            events.push_back(Event::Deliver(Arc::new(delivered_whole(
                origin, msg, topics,
            ))));
            return Ok(1);
        }
        if matches!(msg.ordering, Ordering::TotalSeq | Ordering::TotalIsis)
            && msg.fragment.is_none()
            && !msg.topic.is_empty()
            && self.fifo.passes_through(origin)
        {
            // A whole total-order message waits for its place as the
            // delivery it will become (no clone of the message, topic
            // looked up while the datagram is in cache).
            let mut out = Out::new(events, topics);
            let d = Arc::new(delivered_whole(origin, msg, out.topics));
            if msg.ordering == Ordering::TotalSeq {
                self.total.accept_seq_built(d, &mut out);
            } else {
                self.total.accept_isis_built(d, &mut out);
            }
            return Ok(out.delivered);
        }
        let Some(ready) = self.fifo.reassemble(origin, msg.clone())? else {
            return Ok(0);
        };
        let mut out = Out::new(events, topics);
        self.dispatch(ready, &mut out);
        Ok(out.delivered)
    }

    /// Takes one of our own complete messages (published here).
    pub(crate) fn accept_local(
        &mut self,
        ready: Ready,
        topics: &mut TopicCache,
        events: &mut VecDeque<Event>,
    ) -> usize {
        let mut out = Out::new(events, topics);
        self.dispatch(ready, &mut out);
        out.delivered
    }

    fn dispatch(&mut self, ready: Ready, out: &mut Out<'_>) {
        if ready.msg.topic.is_empty() {
            // Control: a declaration is ordered like total-seq data; the
            // rest acts at once, in the sender's stream order.
            if ready.msg.ordering == Ordering::TotalSeq {
                self.total.accept_seq(ready, out);
                return;
            }
            match Control::decode(&ready.msg.payload) {
                Ok(c) => self.total.defer_control(ready.origin, ready.seq, c, out),
                Err(e) => {
                    self.bad_control += 1;
                    tracing::warn!(origin = %ready.origin, error = %e, "undecodable control message");
                }
            }
            return;
        }
        match ready.msg.ordering {
            Ordering::Fifo => {
                let before = out.events.len();
                self.fifo.accept(ready, out.topics, out.events);
                out.delivered += out.events.len() - before;
            }
            Ordering::Causal => self.causal.accept(ready, out),
            Ordering::TotalIsis => self.total.accept_isis(ready, out),
            Ordering::TotalSeq => self.total.accept_seq(ready, out),
        }
    }

    /// The next control message for our stream; hand it back with
    /// [`Delivery::unsent`] if it did not fit, confirm with [`Delivery::sent`].
    pub(crate) fn next_control(&mut self) -> Option<Control> {
        self.total.next_control()
    }

    pub(crate) fn unsent(&mut self, c: Control) {
        self.total.unsent(c);
    }

    pub(crate) fn sent(
        &mut self,
        c: &Control,
        topics: &mut TopicCache,
        events: &mut VecDeque<Event>,
    ) -> usize {
        let mut out = Out::new(events, topics);
        self.total.sent(c, &mut out);
        out.delivered
    }

    /// Applies the others' deferred finals and orders that a quorum holds
    /// (`held` gives, per sender, how much of its stream a quorum holds).
    pub(crate) fn release_control(
        &mut self,
        held: impl Fn(Origin) -> Seq,
        topics: &mut TopicCache,
        events: &mut VecDeque<Event>,
    ) -> usize {
        let mut out = Out::new(events, topics);
        self.total.release(held, &mut out);
        out.delivered
    }

    /// What this member delivered of total order in this view, per
    /// layer; total-order delivery stops until the install.
    pub(crate) fn freeze_total(&mut self) -> TotalCounts {
        self.total.freeze()
    }

    /// Whether a view was installed in these layers.
    pub(crate) fn installed(&self) -> bool {
        self.total.installed()
    }

    /// What we held of our last primary view's decisions (see [`Total`]).
    pub(crate) fn primary_held(&self) -> (TotalCounts, (Priority, Origin, Seq)) {
        self.total.primary_held()
    }

    /// Whether we kept every decision of our last primary view we held.
    pub(crate) fn primary_intact(&self) -> bool {
        self.total.primary_intact()
    }

    /// What of our last primary view's order we are sure to deliver.
    pub(crate) fn primary_known(&self) -> (TotalCounts, (Priority, Origin, Seq)) {
        self.total.primary_known()
    }

    /// The agreed frontier for the next install into a non-primary view.
    pub(crate) fn set_frontier(&mut self, f: TotalCounts) {
        self.total.set_frontier(f);
    }

    /// The context for our next causal publish, given what the client
    /// carried (see [`Causal::publish_context`]).
    pub(crate) fn causal_context(&self, carried: &CausalContext) -> CausalContext {
        self.causal.publish_context(carried)
    }

    /// A new view (after every old-view message was handed over): resolves
    /// what the ordering layers still hold, identically on every member.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn install(
        &mut self,
        me: Origin,
        members: &[Origin],
        sequencer: Option<NodeId>,
        primary: bool,
        digest: &BTreeMap<Origin, Seq>,
        topics: &mut TopicCache,
        events: &mut VecDeque<Event>,
    ) -> usize {
        let mut out = Out::new(events, topics);
        self.causal.install(members, digest, &mut out);
        self.total
            .install(me, members, sequencer, primary, &mut out);
        out.delivered
    }

    /// The agreed state for a joiner.
    pub(crate) fn state(&self) -> Vec<TopicState> {
        self.total.state()
    }

    /// Loads the group's agreed state (we joined).
    pub(crate) fn load_state(
        &mut self,
        state: &[TopicState],
        topics: &mut TopicCache,
        events: &mut VecDeque<Event>,
    ) {
        let mut out = Out::new(events, topics);
        self.total.load(state, &mut out);
    }

    /// The agreed topic table.
    pub(crate) fn agreed_topics(&self) -> Vec<(String, Ordering, bool)> {
        self.total
            .agreed()
            .iter()
            .map(|(n, (o, s))| (n.clone(), *o, *s))
            .collect()
    }

    /// Occupancy: causal hold-back (messages, bytes) and total-order pending messages.
    pub(crate) fn occupancy(&self) -> (usize, usize, usize) {
        let (n, b) = self.causal.held();
        (n, b, self.total.pending())
    }

    /// Counters: causal messages forced and discarded at a view change,
    /// control entries naming unknown messages.
    pub(crate) fn anomalies(&self) -> (u64, u64, u64) {
        (
            self.causal.forced,
            self.causal.discarded,
            self.total.unknown,
        )
    }

    /// Forgets a departed origin's partial messages.
    pub(crate) fn forget(&mut self, origin: Origin) {
        self.fifo.forget(origin);
    }

    /// Planted bug `stale_sequencer_acts`: see [`Total::remember_stale_sequencer`].
    pub(crate) fn remember_stale_sequencer(&mut self, node: NodeId) {
        self.total.remember_stale_sequencer(node);
    }

    /// Bytes of fragments waiting for the rest of their message.
    pub(crate) fn reassembly_bytes(&self) -> usize {
        self.fifo.partial_bytes()
    }

    #[cfg(feature = "bug-injection")]
    pub(crate) fn plant_bugs(&mut self, bugs: super::Bugs) {
        if bugs.reorder_delivery {
            self.fifo.plant_reorder_bug();
        }
        self.causal.no_holdback = bugs.causal_no_holdback;
        self.total.skip_max = bugs.isis_skip_max;
        self.total.two_sequencers = bugs.two_sequencers;
        self.total.stale_sequencer = bugs.stale_sequencer_acts;
    }
}

/// Builds the delivery a subscriber sees.
pub(crate) fn delivered(ready: Ready, topics: &mut TopicCache) -> Delivered {
    let Ready { origin, seq, msg } = ready;
    let context = if msg.ordering == Ordering::Causal {
        let mut ctx = msg.context;
        ctx.observe(origin, seq);
        ctx
    } else {
        CausalContext::new()
    };
    Delivered {
        topic: topics.name(&msg.topic),
        ordering: msg.ordering,
        publisher: msg.publisher,
        origin,
        seq,
        context,
        gseq: None,
        payload: msg.payload,
        published_at_us: msg.published_at_us,
    }
}

/// The delivery of a whole FIFO or total-order message as received (no
/// context; a total-order one gets its `gseq` when its place is known).
fn delivered_whole(origin: Origin, msg: &DataMsg, topics: &mut TopicCache) -> Delivered {
    Delivered {
        topic: topics.name(&msg.topic),
        ordering: msg.ordering,
        publisher: msg.publisher,
        origin,
        seq: msg.seq,
        context: CausalContext::new(),
        gseq: None,
        payload: msg.payload.clone(),
        published_at_us: msg.published_at_us,
    }
}

/// Wraps a delivery as an event.
pub(crate) fn event(d: Delivered) -> Event {
    Event::Deliver(Arc::new(d))
}
