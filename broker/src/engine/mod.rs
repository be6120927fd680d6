//! The group engine: a deterministic, sans-IO state machine.
//!
//! It never touches a socket, a clock or a thread. Inputs arrive through
//! `handle_*` and [`Engine::publish`], each taking `now`; outputs leave
//! through [`Engine::poll_transmit`] (datagrams to multicast),
//! [`Engine::poll_event`] (deliveries, confirmations, view changes) and
//! [`Engine::poll_timeout`] (the next deadline). The I/O shell and the
//! simulator drive the same engine.
//!
//! Layers, bottom up as in DESIGN.md: frames (`ordo_wire::group`),
//! `membership` (agreed views: discovery, join, flush, install, leave; the
//! phi-accrual failure detector, crash and partition views with an agreed
//! cut, primary views and quorum, merges, duplicate node ids),
//! `reliability` (per-origin streams, NAKs, repairs, stability, flow
//! control) and `delivery` (one layer per ordering: fifo, causal,
//! total-isis, total-seq; plus the agreed topic table and `gseq`).

mod config;
mod delivery;
mod membership;
mod reliability;
mod stats;
mod timer;
mod topics;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use ordo_wire::group::view_tag;
use ordo_wire::group::{
    Body, ClusterId, Control, DataFrameWriter, DataMsg, Digest, Flags, Fragment, Frame, Header,
    Stable, TotalCounts, DATA_FRAME_OVERHEAD,
};
use ordo_wire::{CausalContext, GlobalSeq, NodeId, Ordering, Origin, Seq, ViewId, WireError};
use rand::rngs::SmallRng;
use rand::SeedableRng;

pub use config::{Bugs, EngineConfig, DEFAULT_MAX_JOIN_ATTEMPTS};
use membership::{Detector, Membership};
use reliability::{Received, Reliability};
pub use stats::Stats;
use timer::{Timer, TimerTable};
use topics::TopicCache;

/// Senders whose newest frame counter is remembered (see `Engine::beats`);
/// more (a storm of forged origins without a key) and the table starts over.
const MAX_BEATS: usize = 4096;

/// Identifies a publish awaiting confirmation: the client connection and its request id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConfirmToken {
    pub conn: u64,
    pub req: u64,
}

/// A message handed to the engine by a client connection.
#[derive(Debug, Clone)]
pub struct Publish {
    pub topic: Arc<str>,
    pub ordering: Ordering,
    pub safe: bool,
    /// The publishing connection's id at this broker.
    pub publisher: u64,
    /// Causal context the client carried in (causal topics); may be empty.
    pub context: CausalContext,
    pub payload: Bytes,
    pub confirm: Option<ConfirmToken>,
    /// Wall-clock publish time at the origin (µs since the Unix epoch), set by
    /// the shell; carried opaque to every delivery for latency metrics.
    pub published_at_us: u64,
}

/// A message the engine delivers, in the order its topic's layer requires.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub topic: Arc<str>,
    pub ordering: Ordering,
    pub publisher: u64,
    pub origin: Origin,
    /// The origin's sequence number for this message (of its first
    /// fragment, for a message sent in fragments).
    pub seq: Seq,
    /// On causal topics, the context after this message; empty otherwise.
    pub context: CausalContext,
    /// On total topics, the message's position in the topic's order: the
    /// same on every broker, one more than the topic's previous message.
    pub gseq: Option<GlobalSeq>,
    pub payload: Bytes,
    /// Copied from [`Publish::published_at_us`] at the origin.
    pub published_at_us: u64,
}

/// The agreed membership view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub id: ViewId,
    /// Members in join order; the first is the coordinator.
    pub members: Vec<Origin>,
    pub coordinator: NodeId,
    /// The total-seq sequencer of this view.
    pub sequencer: Option<NodeId>,
    /// Whether this view is primary: it holds a quorum of the last primary
    /// view (see `membership`), so total-order topics deliver and accept
    /// publishes in it. A view that is not primary (the minority side of a
    /// partition) keeps fifo and causal topics working only.
    pub primary: bool,
}

/// What the engine tells its driver.
#[derive(Debug, Clone)]
pub enum Event {
    /// Hand this message to the matching subscribers.
    Deliver(Arc<Delivered>),
    /// The publish identified by the token is safe; answer the client.
    Confirmed(ConfirmToken),
    /// The publish (or topic declaration) identified by the token will
    /// never be confirmed: this broker's stream ended before the group
    /// vouched for it (excluded from the view, refused, shut down). Answer
    /// the client with an error saying `reason`. Every token gets exactly
    /// one answer: `Confirmed` (`TopicDeclared` for a declaration) or this.
    PublishFailed { token: ConfirmToken, reason: String },
    /// A new view was installed.
    ViewInstalled(View),
    /// Messages may be missing between two views (partition, rejoin); tell subscribers.
    Discontinuity {
        from: ViewId,
        to: ViewId,
        reason: String,
    },
    /// A topic declaration reached its place in the group's total order (or
    /// came with the state a joiner received). The first declaration of a
    /// name wins everywhere: `agreed` is what the topic is; `requested` what
    /// this declaration asked for (a conflict if they differ). `token` names
    /// the local client that declared it, which waits for this answer.
    TopicDeclared {
        name: Arc<str>,
        requested: (Ordering, bool),
        agreed: (Ordering, bool),
        token: Option<ConfirmToken>,
    },
}

/// Why a publish was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// Flow control: the send window or retransmit buffer is full, or a view
    /// change is in progress; retry once [`Engine::can_publish`] is true
    /// again. The message was not taken.
    #[error("send window full")]
    WouldBlock,
    /// The message cannot be published now (no view, no quorum for a total topic).
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// The group engine.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    me: Origin,
    cluster: ClusterId,
    rng: SmallRng,
    view: View,
    in_view: bool,
    membership: Membership,
    detector: Detector,
    rel: Reliability,
    delivery: delivery::Delivery,
    topics: TopicCache,
    events: VecDeque<Event>,
    transmit: VecDeque<Bytes>,
    timers: TimerTable,
    last_ack: Option<Instant>,
    /// Our frame counter ([`Header::beat`]): one more per frame header.
    beat: u64,
    /// The newest frame counter heard from each sender: only a newer frame
    /// is a sign of life (at most [`MAX_BEATS`] senders, then forgotten).
    beats: BTreeMap<Origin, u64>,
    /// The time of the latest input (`poll_transmit` takes none): dates
    /// the requests for prompt digests (see `Reliability::fill`).
    clock: Instant,
    /// Our own messages waiting for every member to hold them (a `safe`
    /// one and everything published after it), with their last sequence number.
    local_pending: VecDeque<(Seq, delivery::Ready)>,
    /// Our own ordering control (sequencer orders, ISIS finals) in our
    /// stream, applied here only once another member holds it: a broker the
    /// others cannot hear then orders nothing the survivors would order
    /// otherwise (the flush cut includes whatever a survivor holds).
    own_control: VecDeque<(Seq, Control)>,
    /// The agreed frontier of total order carried by the install being
    /// settled (`Install::delivered`).
    frontier: TotalCounts,
    newer_self_warned: bool,
    /// The agreed cut of origins that departed (what every survivor held
    /// of them when the view without them was installed), for the
    /// simulator's checks of safe delivery; bounded.
    departed_cuts: std::collections::BTreeMap<Origin, Seq>,
    /// Our topic declarations not yet answered by
    /// [`Event::TopicDeclared`] (bounded by the send window, like the
    /// declarations themselves), so that a declaration our stream loses is
    /// answered with [`Event::PublishFailed`].
    pending_declares: VecDeque<ConfirmToken>,
    /// Bytes the last refused publish needed: `can_publish` stays false
    /// until they fit, so a driver never spins on a message that does not.
    wanted: usize,
    stats: Stats,
}

impl Engine {
    /// A fresh engine. It listens for an existing group for
    /// [`EngineConfig::discovery_timeout`] and joins it, or forms a view of
    /// its own; [`Event::ViewInstalled`] tells when it is in one.
    pub fn new(config: EngineConfig, now: Instant) -> Self {
        let config = config.sanitized();
        let me = Origin {
            node: config.node,
            incarnation: config.incarnation,
        };
        let delivery = fresh_delivery(&config, me);
        let mut engine = Engine {
            cluster: ClusterId::from_name(&config.cluster),
            rng: SmallRng::seed_from_u64(config.seed),
            view: View {
                id: ViewId(0),
                members: Vec::new(),
                coordinator: me.node,
                sequencer: None,
                primary: false,
            },
            in_view: false,
            membership: Membership::default(),
            detector: Detector::new(config.detector()),
            rel: Reliability::new(me, Seq(0), config.reliability()),
            delivery,
            topics: TopicCache::default(),
            events: VecDeque::new(),
            transmit: VecDeque::new(),
            timers: TimerTable::default(),
            last_ack: None,
            beat: 0,
            beats: BTreeMap::new(),
            clock: now,
            wanted: 0,
            pending_declares: VecDeque::new(),
            local_pending: VecDeque::new(),
            own_control: VecDeque::new(),
            frontier: TotalCounts::default(),
            newer_self_warned: false,
            departed_cuts: std::collections::BTreeMap::new(),
            stats: Stats {
                retransmit_buffer_limit: config.retransmit_buffer_bytes as u64,
                ordering_limit: config.ordering_limit as u64,
                reassembly_limit: config.reassembly_limit as u64,
                ..Stats::default()
            },
            me,
            config,
        };
        engine.start(now);
        engine
    }

    /// Accepts a message from a local client. It is delivered locally at
    /// once (a `safe` one once every member holds it) and multicast with the
    /// next [`Engine::poll_transmit`]; a message larger than a datagram is
    /// split into fragments, each with its own sequence number.
    pub fn publish(&mut self, msg: Publish, now: Instant) -> Result<(), PublishError> {
        self.clock = self.clock.max(now);
        if self.membership.has_left() {
            return Err(PublishError::Unavailable(
                "this broker left the group".into(),
            ));
        }
        if !self.sending_allowed() {
            self.stats.flow_control_stalls += 1;
            return Err(PublishError::WouldBlock);
        }
        if matches!(msg.ordering, Ordering::TotalIsis | Ordering::TotalSeq) && !self.view.primary {
            self.stats.publishes_no_quorum += 1;
            return Err(PublishError::Unavailable(self.no_quorum()));
        }
        if msg.topic.len() > usize::from(u16::MAX) {
            return Err(PublishError::Unavailable(format!(
                "topic of {} bytes is longer than the 65535 the protocol carries",
                msg.topic.len()
            )));
        }
        if self.ordering_full() {
            self.stats.flow_control_stalls += 1;
            return Err(PublishError::WouldBlock);
        }
        let mut msg = msg;
        if msg.ordering == Ordering::Causal {
            // What was delivered here and what the client carried, less
            // what FIFO from us implies (see `delivery::causal`).
            msg.context = self.delivery.causal_context(&msg.context);
        } else {
            msg.context = CausalContext::new();
        }
        let topic = self.topics.bytes(&msg.topic);
        let len = msg.payload.len();
        if len > self.config.max_message {
            return Err(PublishError::Unavailable(format!(
                "a message of {len} bytes exceeds the maximum of {} bytes",
                self.config.max_message
            )));
        }
        let whole = DataMsg::overhead(topic.len(), &msg.context, false) + len;
        let units = if DATA_FRAME_OVERHEAD + whole <= self.config.max_datagram {
            1
        } else {
            let per = DataMsg::overhead(topic.len(), &msg.context, true) + DATA_FRAME_OVERHEAD;
            let chunk = self.config.max_datagram.saturating_sub(per);
            if chunk == 0 {
                return Err(PublishError::Unavailable(format!(
                    "topic and causal context do not fit a {}-byte datagram",
                    self.config.max_datagram
                )));
            }
            len.div_ceil(chunk)
        };
        let charge = len + units * topic.len();
        if charge > self.rel.own_limit() || u32::try_from(units).is_err() {
            self.wanted = 0;
            return Err(PublishError::Unavailable(format!(
                "a message of {len} bytes exceeds the send window of {} bytes",
                self.rel.own_limit()
            )));
        }
        if !self.rel.reserve_own(charge, units, &mut self.stats) {
            self.stats.flow_control_stalls += 1;
            self.wanted = charge;
            return Err(PublishError::WouldBlock);
        }
        self.wanted = 0;
        let first = self.rel.last_seq().next();
        let chunk = len.div_ceil(units).max(1);
        for i in 0..units {
            let seq = Seq(first.0 + i as u64);
            let payload = if units == 1 {
                msg.payload.clone()
            } else {
                msg.payload
                    .slice((i * chunk).min(len)..((i + 1) * chunk).min(len))
            };
            self.rel.push_own(DataMsg {
                seq,
                topic: topic.clone(),
                ordering: msg.ordering,
                safe: msg.safe,
                publisher: msg.publisher,
                context: msg.context.clone(),
                published_at_us: msg.published_at_us,
                fragment: (units > 1).then_some(Fragment {
                    index: i as u32,
                    count: units as u32,
                }),
                payload,
            });
        }
        if units > 1 {
            self.stats.fragmented_messages += 1;
            self.stats.fragments += units as u64;
        }
        if let Some(token) = msg.confirm {
            if self.view.members.len() <= 1 {
                self.events.push_back(Event::Confirmed(token));
            } else {
                self.rel.await_confirm(self.rel.last_seq(), token, msg.safe);
            }
        }
        self.stats.published += 1;
        self.stats.messages_published += 1;
        let local = delivery::Ready {
            origin: self.me,
            seq: first,
            msg: DataMsg {
                seq: first,
                topic,
                ordering: msg.ordering,
                safe: msg.safe,
                publisher: msg.publisher,
                context: msg.context,
                published_at_us: msg.published_at_us,
                fragment: None,
                payload: msg.payload,
            },
        };
        self.enter_local(local);
        self.refresh_gauges();
        Ok(())
    }

    /// Declares a topic cluster-wide: the declaration is ordered like a
    /// `total-seq` message and [`Event::TopicDeclared`] (with `token`) tells,
    /// on every member, whether it was the first for its name.
    pub fn declare(
        &mut self,
        name: &str,
        ordering: Ordering,
        safe: bool,
        token: ConfirmToken,
    ) -> Result<(), PublishError> {
        if self.membership.has_left() {
            return Err(PublishError::Unavailable(
                "this broker left the group".into(),
            ));
        }
        if !self.sending_allowed() {
            self.stats.flow_control_stalls += 1;
            return Err(PublishError::WouldBlock);
        }
        if !self.view.primary {
            // Declarations are ordered like total-seq messages.
            self.stats.publishes_no_quorum += 1;
            return Err(PublishError::Unavailable(self.no_quorum()));
        }
        let payload = Control::Declare {
            name: name.to_string(),
            ordering,
            safe,
            req: token.req,
        }
        .encode();
        if DATA_FRAME_OVERHEAD + DataMsg::FIXED_LEN + payload.len() > self.config.max_datagram {
            return Err(PublishError::Unavailable(format!(
                "a declaration of {} bytes does not fit a datagram",
                payload.len()
            )));
        }
        if !self.rel.reserve_own(payload.len(), 1, &mut self.stats) {
            self.stats.flow_control_stalls += 1;
            return Err(PublishError::WouldBlock);
        }
        let seq = self.rel.last_seq().next();
        let msg = DataMsg {
            seq,
            topic: Bytes::new(),
            ordering: Ordering::TotalSeq,
            safe: false,
            publisher: token.conn,
            context: CausalContext::new(),
            published_at_us: 0,
            fragment: None,
            payload,
        };
        self.rel.push_own(msg.clone());
        self.pending_declares.push_back(token);
        self.enter_local(delivery::Ready {
            origin: self.me,
            seq,
            msg,
        });
        self.refresh_gauges();
        Ok(())
    }

    /// Why total-order work is refused in a view that is not primary.
    fn no_quorum(&self) -> String {
        format!(
            "no quorum: this broker is in view {} with {} member(s), which does not hold a majority of the last primary view (a network partition?); total-order topics and topic declarations are unavailable here until it heals, fifo and causal topics keep working",
            self.view.id,
            self.view.members.len()
        )
    }

    /// The topic table every member agreed on (name, ordering, safe), sorted by name.
    pub fn agreed_topics(&self) -> Vec<(String, Ordering, bool)> {
        self.delivery.agreed_topics()
    }

    /// Hands one of our messages to its delivery layer, or holds it (and
    /// every later one, for our order) until every member holds it.
    fn enter_local(&mut self, local: delivery::Ready) {
        let early = self.config.bugs().early_safe;
        if (local.msg.safe && !early) || !self.local_pending.is_empty() {
            // Safe: delivered nowhere, here included, until every member holds it.
            self.local_pending.push_back((self.rel.last_seq(), local));
            self.deliver_local(false);
        } else {
            self.layer_local(local);
        }
    }

    fn layer_local(&mut self, local: delivery::Ready) {
        let n = self
            .delivery
            .accept_local(local, &mut self.topics, &mut self.events);
        self.stats.delivered += n as u64;
        self.stats.messages_delivered += n as u64;
    }

    /// Puts the ordering layers' control messages (proposals, finals,
    /// orders) into our stream while our window has room; never during a
    /// flush (the stream must end at the flushed point). Called when the
    /// driver asks for datagrams, so everything the inputs since the last
    /// call produced goes out batched: one control message carries many
    /// entries, and many control messages share a frame with data.
    fn pump_control(&mut self) {
        if !self.in_view || self.membership.flushing() {
            return;
        }
        while let Some(c) = self.delivery.next_control() {
            let payload = c.encode();
            if !self.rel.reserve_own(payload.len(), 1, &mut self.stats) {
                self.delivery.unsent(c);
                return;
            }
            let seq = self.rel.last_seq().next();
            self.rel.push_own(DataMsg {
                seq,
                topic: Bytes::new(),
                ordering: Ordering::Fifo,
                safe: false,
                publisher: 0,
                context: CausalContext::new(),
                published_at_us: 0,
                fragment: None,
                payload,
            });
            self.stats.control_messages_sent += 1;
            self.own_control.push_back((seq, c));
        }
        self.release_control(Release::Quorum);
    }

    /// Applies ordering control (ours, and the finals and orders of the
    /// others) once a quorum of the view holds it (see
    /// [`Reliability::held_by_quorum`]): a decision delivered here then
    /// survives into every possible next primary view. Frozen during a
    /// flush (what we applied is what we reported). See [`Release`].
    fn release_control(&mut self, mode: Release) {
        if matches!(mode, Release::Quorum) && self.membership.flushing() {
            return;
        }
        // Asked per sender only when something of it waits (this runs
        // after every input).
        let (rel, members) = (&self.rel, &self.view.members);
        let held = |o: Origin| {
            if !members.contains(&o) {
                return Seq::default();
            }
            match mode {
                Release::All => Seq(u64::MAX),
                Release::Quorum => rel.held_by_quorum(o, members),
            }
        };
        let mine = if self.own_control.is_empty() {
            Seq::default()
        } else {
            held(self.me)
        };
        while let Some((seq, _)) = self.own_control.front() {
            if *seq > mine {
                break;
            }
            let Some((_, c)) = self.own_control.pop_front() else {
                break;
            };
            let n = self.delivery.sent(&c, &mut self.topics, &mut self.events);
            self.stats.delivered += n as u64;
            self.stats.messages_delivered += n as u64;
        }
        let n = self
            .delivery
            .release_control(held, &mut self.topics, &mut self.events);
        self.stats.delivered += n as u64;
        self.stats.messages_delivered += n as u64;
    }

    /// Whether the ordering layers hold as much as their bound: new
    /// publishes wait (flow control) until they drain.
    fn ordering_full(&self) -> bool {
        let (held, held_bytes, pending) = self.delivery.occupancy();
        held >= self.config.ordering_limit
            || pending >= self.config.ordering_limit
            || held_bytes >= self.config.retransmit_buffer_bytes / 4
    }

    /// Whether [`Engine::publish`] would accept a message now: a small one,
    /// or after a refusal, one as large as the message refused.
    pub fn can_publish(&self) -> bool {
        // Capped by the window: a message that can never fit (the view grew
        // and the window shrank) is let through to be refused as unavailable.
        let need = self.wanted.clamp(1, self.rel.own_limit().max(1));
        self.sending_allowed() && self.rel.window_open(need) && !self.ordering_full()
    }

    /// A datagram arrived from the group (copied once; see
    /// [`Engine::handle_datagram_bytes`] to avoid the copy).
    pub fn handle_datagram(&mut self, datagram: &[u8], now: Instant) {
        self.handle_datagram_bytes(Bytes::copy_from_slice(datagram), now);
    }

    /// A datagram arrived from the group; payloads delivered from it share its memory.
    pub fn handle_datagram_bytes(&mut self, datagram: Bytes, now: Instant) {
        self.stats.datagrams_received += 1;
        self.stats.bytes_received += datagram.len() as u64;
        // The one place frames are checked: with a key, the MAC is verified
        // before any byte of the frame is interpreted.
        let frame = match Frame::decode_with(&datagram, self.config.cluster_key.as_ref()) {
            Ok(f) => f,
            Err(e) => {
                self.count_decode_error(&e);
                tracing::debug!(error = %e, "dropped an undecodable datagram");
                return;
            }
        };
        let h = frame.header;
        if h.cluster != self.cluster {
            self.stats.dropped_foreign_cluster += 1;
            return;
        }
        if h.sender == self.me {
            // Our own datagram, looped back by the multicast socket.
            return;
        }
        if let Body::Refuse(r) = frame.body {
            self.on_refuse(r);
            return;
        }
        if self.membership.refused_reason.is_some() {
            return;
        }
        if h.sender.node == self.me.node {
            if h.sender.incarnation > self.me.incarnation {
                if !self.newer_self_warned {
                    // Two brokers configured with one node id, or we were replaced.
                    self.newer_self_warned = true;
                    tracing::warn!(sender = %h.sender, "a newer incarnation of this node id is running");
                }
                self.on_newer_self(h.sender, now);
            }
            self.stats.dropped_stale_incarnation += 1;
            return;
        }
        // Only a frame newer than every earlier one of its sender is a sign
        // of life: a replayed or long-delayed copy (an attacker's, or the
        // network's) kept the others from suspecting a broker cut off from
        // them, and the views split (adversary seeds 889, 4129).
        if self.fresh(h.sender, h.beat) {
            self.detector.heard(h.sender, now);
        }
        if self.membership.note_sender(&self.view, h.sender, now) {
            self.stats.dropped_stale_incarnation += 1;
            return;
        }
        match frame.body {
            Body::Data(d) => self.on_data(&h, d, now),
            Body::Heartbeat(d) => self.on_heartbeat(&h, d, now),
            Body::Nak(n) => self.on_nak(&h, n, now),
            Body::Stable(s) => self.on_stable(&h, s, now),
            Body::Join(j) => self.on_join(h.sender, j, now),
            Body::Propose(p) => self.on_propose(h.sender, p, now),
            Body::FlushAck(f) => self.on_flush_ack(h.sender, f, now),
            Body::Install(i) => self.on_install_part(h.sender, i, now),
            Body::InstallAck(v) => self.on_install_ack(h.sender, v, now),
            Body::Leave => self.on_leave(h.sender, now),
            Body::Suspect(s) => self.on_suspect(h.sender, s, now),
            Body::Refuse(_) => {}
        }
        self.after_input(now);
    }

    /// The deadline returned by [`Engine::poll_timeout`] has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.timers.is_due(Timer::Membership, now) {
            self.timers.clear(Timer::Membership);
            self.membership_tick(now);
        }
        if self.timers.is_due(Timer::Detector, now) {
            self.timers.clear(Timer::Detector);
            if !self.membership.has_left() {
                self.timers
                    .set(Timer::Detector, now + self.config.heartbeat_interval);
            }
            self.failure_tick(now);
        }
        if self.timers.is_due(Timer::Tail, now) {
            self.timers.clear(Timer::Tail);
            if self.rel.tail_unrequested() {
                // A burst ended without asking for digests: tell its end,
                // so a member that lost its last datagram asks for it.
                self.timers.set(Timer::Heartbeat, now);
            }
        }
        if self.timers.is_due(Timer::Heartbeat, now) || self.timers.is_due(Timer::Ack, now) {
            self.timers.clear(Timer::Ack);
            self.send_heartbeat(now);
        }
        for nak in self.rel.due_naks(now, &mut self.rng, &mut self.stats) {
            self.stats.naks_sent += 1;
            self.send(Flags::default(), Body::Nak(nak));
        }
        let repairs = self.rel.due_repairs(now);
        for (origin, msgs) in repairs {
            self.send_repairs(origin, msgs);
        }
        self.after_input(now);
    }

    /// The next instant at which [`Engine::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.timers.next(), self.rel.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next datagram to multicast to the group. Control frames and
    /// repairs go first; then as many pending messages as fit one datagram.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        let datagram = match self.transmit.pop_front() {
            Some(d) => d,
            None => {
                self.pump_control();
                if !self.data_allowed() || !self.rel.has_unsent() {
                    return None;
                }
                let header = self.header(Flags::default());
                let mut w = DataFrameWriter::keyed(
                    &header,
                    self.me,
                    self.config.max_datagram,
                    self.config.cluster_key.as_ref(),
                );
                self.rel.fill(&mut w, self.clock);
                if w.is_empty() {
                    return None;
                }
                if self.rel.tail_unrequested() {
                    self.timers
                        .set(Timer::Tail, self.clock + self.config.ack_interval);
                } else {
                    self.timers.clear(Timer::Tail);
                }
                w.finish()
            }
        };
        self.stats.datagrams_sent += 1;
        self.stats.bytes_sent += datagram.len() as u64;
        Some(datagram)
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<Event> {
        let ev = self.events.pop_front();
        if let Some(Event::TopicDeclared { token: Some(t), .. }) = &ev {
            self.pending_declares.retain(|p| p != t);
        }
        ev
    }

    /// Answers every publish and declaration still awaiting confirmation
    /// with [`Event::PublishFailed`] (`reason` says why): for a driver that
    /// stops without completing [`Engine::leave`]. Nothing is left unanswered.
    pub fn abandon_pending(&mut self, reason: &str) {
        self.resolve_confirms(None, reason);
    }

    /// Our stream ends (or the view it was sent in does): answer every
    /// confirmation still waiting, and every declaration still unordered.
    /// With `settled` = (view, cut), an installed view `view` carries the
    /// cut of our stream: every member of that view delivers our messages
    /// up to `cut` (confirmed: more than another member holding them) and
    /// none of them delivers a later one. Without it nothing is known
    /// beyond this broker. `why` says what happened.
    pub(crate) fn resolve_confirms(&mut self, settled: Option<(ViewId, Seq)>, why: &str) {
        for (seq, token) in self.rel.take_confirms() {
            let reason = match settled {
                Some((_, cut)) if seq <= cut => {
                    self.events.push_back(Event::Confirmed(token));
                    continue;
                }
                Some((view, _)) => format!(
                    "not confirmed: {why}; view {view} of the group ends this broker's messages before this one, so no member of view {view} delivered it (subscribers of this broker may have)"
                ),
                None => format!(
                    "not confirmed: {why}; the message may or may not have reached the other members"
                ),
            };
            self.stats.publishes_unconfirmed += 1;
            self.events
                .push_back(Event::PublishFailed { token, reason });
        }
        self.fail_declarations(why);
    }

    /// Answers our declarations that the ordering layers dropped unordered
    /// (`why` says why) and that no queued [`Event::TopicDeclared`] answers.
    pub(crate) fn fail_declarations(&mut self, why: &str) {
        let pending = std::mem::take(&mut self.pending_declares);
        for token in pending {
            let answered = self
                .events
                .iter()
                .any(|e| matches!(e, Event::TopicDeclared { token: Some(t), .. } if *t == token));
            if answered {
                self.pending_declares.push_back(token);
                continue;
            }
            self.stats.publishes_unconfirmed += 1;
            self.events.push_back(Event::PublishFailed {
                token,
                reason: format!(
                    "topic declaration not agreed: {why}; the group may or may not have ordered it, declare it again"
                ),
            });
        }
    }

    /// Leaves the group gracefully (on shutdown): the view is flushed and a
    /// new one without us installed. Drive the engine until
    /// [`Engine::has_left`] before dropping it.
    pub fn leave(&mut self, now: Instant) {
        self.start_leave(now);
    }

    /// Whether a [`Engine::leave`] completed (or there was no group to leave).
    pub fn has_left(&self) -> bool {
        self.membership.has_left()
    }

    /// The installed view (id 0 and no members before the first).
    pub fn view(&self) -> &View {
        &self.view
    }

    /// Whether this engine is a member of an installed view.
    pub fn in_view(&self) -> bool {
        self.in_view
    }

    /// This engine's identity in the group (a new incarnation after a rejoin).
    pub fn origin(&self) -> Origin {
        self.me
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Why the group refused this broker (its node id is taken by a live
    /// member), once it did: the engine has stopped, and the driver should
    /// report the reason and exit with an error.
    pub fn refused(&self) -> Option<&str> {
        self.membership.refused_reason.as_deref()
    }

    /// Counters and gauges for metrics.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    // ----- inputs by frame kind -----

    fn on_data(&mut self, h: &Header, d: ordo_wire::group::DataFrame, now: Instant) {
        if !self.in_view || !self.view.members.contains(&h.sender) {
            self.stats.dropped_not_member += 1;
            return;
        }
        if !self.in_our_view(h) {
            self.stats.dropped_wrong_view += 1;
            self.on_view_mismatch(h.sender, h.view, None, now);
            return;
        }
        let origin = d.origin;
        if !self.view.members.contains(&origin) {
            self.stats.dropped_not_member += 1;
            return;
        }
        let repair = h.flags.contains(Flags::RETRANSMIT);
        if origin == self.me {
            // Another holder repaired one of ours: no need for us to.
            for m in &d.msgs {
                self.rel.on_seen(origin, m.seq, now, &mut self.stats);
            }
            return;
        }
        let had_gap = self.rel.has_gap(origin);
        let mut progressed = false;
        for m in d.msgs {
            if repair {
                self.rel.on_seen(origin, m.seq, now, &mut self.stats);
            }
            if self
                .rel
                .receive(origin, m, now, &mut self.rng, &mut self.stats)
                == Received::New
            {
                progressed = true;
            }
        }
        if progressed {
            self.release(origin, now);
        }
        // A prompt digest when asked, when a gap closed (the others wait for
        // it to free buffers and confirm), and on any progress during a flush.
        let gap_closed = had_gap && !self.rel.has_gap(origin);
        if h.flags.contains(Flags::ACK_REQUESTED)
            || gap_closed
            || (progressed && self.membership.flushing())
        {
            self.schedule_ack(now);
        }
    }

    fn on_heartbeat(&mut self, h: &Header, d: Digest, now: Instant) {
        let member = self.view.members.contains(&h.sender);
        if member && self.in_our_view(h) {
            self.rel
                .on_digest(h.sender, &d.entries, now, &mut self.rng, &mut self.stats);
        } else if !member || !self.in_view {
            self.on_view_mismatch(h.sender, h.view, Some(&d), now);
            self.on_foreign_view(h.sender, h.view, &d, now);
        } else {
            self.on_view_mismatch(h.sender, h.view, Some(&d), now);
        }
    }

    fn on_nak(&mut self, h: &Header, nak: ordo_wire::group::Nak, now: Instant) {
        if !self.view.members.contains(&h.sender) || !self.in_our_view(h) {
            self.stats.dropped_not_member += 1;
            return;
        }
        self.stats.naks_received += 1;
        if let Some(stable) = self.rel.on_nak(&nak, now, &mut self.rng, &mut self.stats) {
            // They ask for messages we freed: tell them they are gone.
            self.send(
                Flags::default(),
                Body::Stable(Stable {
                    entries: vec![(self.me, stable)],
                }),
            );
        }
        if nak.origin == self.me {
            // Our own repairs go out at once (due now).
            for (origin, msgs) in self.rel.due_repairs(now) {
                self.send_repairs(origin, msgs);
            }
        }
    }

    fn on_stable(&mut self, h: &Header, s: Stable, now: Instant) {
        if !self.view.members.contains(&h.sender) || !self.in_our_view(h) {
            self.stats.dropped_not_member += 1;
            return;
        }
        for (origin, upto) in s.entries {
            let lost = self.rel.on_stable(origin, upto);
            if lost > 0 {
                self.stats.unrecoverable += lost;
                tracing::error!(
                    %origin, upto = %upto, lost,
                    "messages needed are held by no member any more; rejoining as a new incarnation"
                );
                self.rejoin(
                    now,
                    format!("{lost} message(s) of {origin} could not be repaired"),
                );
                return;
            }
        }
    }

    // ----- shared helpers -----

    /// Delivers `origin`'s newly contiguous messages.
    fn release(&mut self, origin: Origin, now: Instant) {
        let (delivery, topics, events, stats) = (
            &mut self.delivery,
            &mut self.topics,
            &mut self.events,
            &mut self.stats,
        );
        self.rel.release(origin, now, &mut self.rng, |m| {
            deliver_remote(delivery, topics, events, stats, origin, m);
        });
    }

    /// Delivers `origin`'s messages that were waiting (safe ones, until
    /// stable; with `flushed`, everything up to it).
    fn deliver_waiting(&mut self, origin: Origin, flushed: Seq) {
        let (delivery, topics, events, stats) = (
            &mut self.delivery,
            &mut self.topics,
            &mut self.events,
            &mut self.stats,
        );
        self.rel.deliver_ready(origin, flushed, |m| {
            deliver_remote(delivery, topics, events, stats, origin, m);
        });
    }

    /// Delivers our own messages waiting for stability (safe ones and those
    /// published after them); with `all`, every one (a flush completed).
    fn deliver_local(&mut self, all: bool) {
        let stable = self.rel.stable_point(self.me);
        while let Some((last, _)) = self.local_pending.front() {
            if !all && *last > stable {
                break;
            }
            if let Some((_, d)) = self.local_pending.pop_front() {
                self.layer_local(d);
            }
        }
    }

    /// Stability, confirmations, view-change progress and gauges after any input.
    fn after_input(&mut self, now: Instant) {
        self.clock = self.clock.max(now);
        if self.in_view {
            for origin in self.rel.waiting_origins() {
                self.deliver_waiting(origin, Seq(0));
            }
            self.deliver_local(false);
            self.release_control(Release::Quorum);
            let done = if self.view.members.len() == 1 {
                self.rel.advance_stability(&mut self.stats);
                self.rel.confirm_all()
            } else {
                self.rel.advance_stability(&mut self.stats)
            };
            self.events.extend(done.into_iter().map(Event::Confirmed));
        }
        self.coordinator_progress(now);
        self.refresh_gauges();
    }

    fn refresh_gauges(&mut self) {
        self.stats.retransmit_buffer_bytes = self.rel.held_bytes() as u64;
        self.stats.unstable_own_bytes = self.rel.own_unstable_bytes() as u64;
        self.stats.reassembly_bytes = self.delivery.reassembly_bytes() as u64;
        let (held, held_bytes, pending) = self.delivery.occupancy();
        self.stats.causal_holdback_messages = held as u64;
        self.stats.causal_holdback_bytes = held_bytes as u64;
        self.stats.total_pending_messages = pending as u64;
        let (forced, discarded, unknown) = self.delivery.anomalies();
        self.stats.causal_forced = forced;
        self.stats.causal_discarded = discarded;
        self.stats.control_unknown = unknown;
        self.stats.control_malformed = self.delivery.bad_control;
    }

    /// Whether new publishes are admitted (in a view, not flushing, not leaving).
    fn sending_allowed(&self) -> bool {
        self.in_view && !self.membership.flushing() && !self.membership.leaving()
    }

    /// Whether our pending data may go out (it belongs to the current view).
    fn data_allowed(&self) -> bool {
        self.in_view
    }

    /// Whether frame `beat` of `sender` is newer than every earlier one
    /// (then remembered). One lookup for a known sender: this runs for
    /// every datagram.
    fn fresh(&mut self, sender: Origin, beat: u64) -> bool {
        if let Some(b) = self.beats.get_mut(&sender) {
            let newer = beat > *b;
            *b = (*b).max(beat);
            return newer;
        }
        if self.beats.len() >= MAX_BEATS {
            self.beats.clear();
        }
        self.beats.insert(sender, beat);
        true
    }

    fn header(&mut self, flags: Flags) -> Header {
        self.beat += 1;
        Header {
            flags,
            cluster: self.cluster,
            sender: self.me,
            view: if self.in_view {
                self.view.id
            } else {
                ViewId(0)
            },
            tag: if self.in_view {
                view_tag(&self.view.members)
            } else {
                0
            },
            beat: self.beat,
        }
    }

    /// Whether a frame was sent in our view: same number and same tag (a
    /// view of the same number installed apart has other members).
    fn in_our_view(&self, h: &Header) -> bool {
        self.in_view && h.view == self.view.id && h.tag == view_tag(&self.view.members)
    }

    fn send(&mut self, flags: Flags, body: Body) {
        let frame = Frame {
            header: self.header(flags),
            body,
        };
        self.transmit
            .push_back(frame.encode_with(self.config.cluster_key.as_ref()));
    }

    fn send_repairs(&mut self, origin: Origin, msgs: Vec<DataMsg>) {
        if self.config.bugs().drop_retransmissions {
            return;
        }
        let header = self.header(Flags::RETRANSMIT);
        let key = self.config.cluster_key.as_ref();
        let max = self.config.max_datagram;
        let mut w = DataFrameWriter::keyed(&header, origin, max, key);
        for m in &msgs {
            if !w.push(m) {
                let full =
                    std::mem::replace(&mut w, DataFrameWriter::keyed(&header, origin, max, key));
                self.transmit.push_back(full.finish());
                w.push(m);
            }
            self.stats.retransmissions_sent += 1;
        }
        if !w.is_empty() {
            self.transmit.push_back(w.finish());
        }
    }

    fn send_heartbeat(&mut self, now: Instant) {
        let interval = if self.membership.flushing() {
            self.config.heartbeat_interval.min(self.config.view_retry)
        } else {
            self.config.heartbeat_interval
        };
        self.timers.set(Timer::Heartbeat, now + interval);
        if !self.in_view {
            return;
        }
        self.last_ack = Some(now);
        // The digest carries our stream's end.
        self.rel.tail_told();
        self.stats.heartbeats_sent += 1;
        // Counting costs a walk over the buffers: refreshed per heartbeat.
        self.stats.out_of_order_messages = self.rel.out_of_order() as u64;
        let coordinator = self.membership.coordinator(&self.view).unwrap_or(self.me);
        self.send(
            Flags::default(),
            Body::Heartbeat(Digest {
                coordinator,
                view_size: u32::try_from(self.view.members.len()).unwrap_or(u32::MAX),
                primary: self.view.primary,
                entries: self.rel.digest(),
            }),
        );
    }

    /// A prompt digest: at once (after this input) unless one went out
    /// within the last `ack_delay`, else that long after it, so at most one
    /// per `ack_delay` however fast data asks. Waiting out a fixed delay
    /// after each request instead made every total-order message at a low
    /// rate wait that delay (plus the runtime's timer tick) at its origin,
    /// which applies its own orders and finals once another member's
    /// digest shows it holds them.
    fn schedule_ack(&mut self, now: Instant) {
        let mut at = now;
        if let Some(last) = self.last_ack {
            at = at.max(last + self.config.ack_delay);
        }
        self.timers.set_earliest(Timer::Ack, at);
    }

    fn count_decode_error(&mut self, e: &WireError) {
        match e {
            WireError::Checksum => self.stats.dropped_checksum += 1,
            WireError::MacMissing | WireError::MacUnexpected => {
                self.stats.dropped_unauthenticated += 1
            }
            WireError::BadMac => self.stats.dropped_bad_mac += 1,
            WireError::Version { .. } => self.stats.dropped_bad_version += 1,
            WireError::UnknownKind(_) => self.stats.dropped_unknown_kind += 1,
            _ => self.stats.dropped_malformed += 1,
        }
    }

    /// Our contiguous prefix of every origin (for the simulator's checks).
    #[cfg(feature = "sim")]
    pub fn digest_for_tests(&self) -> std::collections::BTreeMap<Origin, Seq> {
        let mut d = self.departed_cuts.clone();
        d.extend(self.rel.contiguous());
        d
    }

    /// Whether any stream of ours has a gap (for the simulator's checks).
    #[cfg(feature = "sim")]
    pub fn has_gaps(&self) -> bool {
        self.rel.has_gaps()
    }
}

/// The delivery layers of a new engine (or incarnation), bugs planted.
fn fresh_delivery(config: &EngineConfig, me: Origin) -> delivery::Delivery {
    // Control entries per message: what fits one datagram beside the headers.
    let room = config
        .max_datagram
        .saturating_sub(DATA_FRAME_OVERHEAD + DataMsg::FIXED_LEN + Control::HEADER_LEN);
    let batch = room
        / Control::PROPOSAL_LEN
            .max(Control::FINAL_LEN)
            .max(Control::ORDER_LEN);
    #[allow(unused_mut)]
    let mut d = delivery::Delivery::new(me, batch, config.max_message, config.reassembly_limit);
    #[cfg(feature = "bug-injection")]
    d.plant_bugs(config.bugs);
    d
}

/// How far [`Engine::release_control`] applies ordering control.
#[derive(Debug, Clone, Copy)]
enum Release {
    /// What a quorum of the view holds (normal operation).
    Quorum,
    /// Everything: the flush gave the successor's members the same control
    /// (into a non-primary successor, what is delivered is then limited to
    /// the agreed frontier, see `delivery::total`).
    All,
}

/// Hands one message of `origin`'s stream to the delivery layers.
fn deliver_remote(
    delivery: &mut delivery::Delivery,
    topics: &mut TopicCache,
    events: &mut VecDeque<Event>,
    stats: &mut Stats,
    origin: Origin,
    m: &DataMsg,
) {
    match delivery.accept(origin, m, topics, events) {
        Ok(n) => {
            stats.delivered += n as u64;
            stats.messages_delivered += n as u64;
        }
        Err(e @ delivery::ReassemblyError::OutOfPlace { .. }) => {
            stats.dropped_malformed += 1;
            tracing::warn!(%origin, error = %e, "origin broke fragmentation");
        }
        Err(e) => {
            // Every member with the same limits drops it alike.
            stats.dropped_oversized += 1;
            tracing::warn!(%origin, error = %e, "dropped a message too large to join");
        }
    }
}

#[cfg(test)]
mod tests;
