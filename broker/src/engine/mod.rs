//! The group engine: a deterministic, sans-IO state machine.
//!
//! It never touches a socket, a clock or a thread. Inputs arrive through
//! `handle_*` and [`Engine::publish`], each taking `now`; outputs leave
//! through [`Engine::poll_transmit`] (datagrams to multicast),
//! [`Engine::poll_event`] (deliveries, confirmations, view changes) and
//! [`Engine::poll_timeout`] (the next deadline). The I/O shell and the
//! simulator drive the same engine.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ordo_wire::{CausalContext, GlobalSeq, Incarnation, NodeId, Ordering, Origin, Seq, ViewId};

/// Everything the engine needs to start; no field is read from the environment.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub node: NodeId,
    pub incarnation: Incarnation,
    /// Cluster name; frames of other clusters are dropped and counted.
    pub cluster: String,
    /// Seeds every random choice (NAK backoff, jitter).
    pub seed: u64,
    /// Largest datagram the engine emits, headers included.
    pub max_datagram: usize,
    /// Bound on the retransmit buffer, in payload bytes.
    pub retransmit_buffer_bytes: usize,
    /// Interval between heartbeats (which carry the digest).
    pub heartbeat_interval: Duration,
}

impl EngineConfig {
    /// Defaults suited to loopback and a LAN.
    pub fn new(node: NodeId, incarnation: Incarnation, cluster: impl Into<String>) -> Self {
        EngineConfig {
            node,
            incarnation,
            cluster: cluster.into(),
            seed: u64::from(node.0) ^ incarnation.0,
            max_datagram: 8192,
            retransmit_buffer_bytes: 64 * 1024 * 1024,
            heartbeat_interval: Duration::from_millis(100),
        }
    }
}

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
    pub seq: Seq,
    /// On causal topics, the context after this message; empty otherwise.
    pub context: CausalContext,
    /// On total topics, the message's position in the topic's order.
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
}

/// What the engine tells its driver.
#[derive(Debug, Clone)]
pub enum Event {
    /// Hand this message to the matching subscribers.
    Deliver(Arc<Delivered>),
    /// The publish identified by the token is safe; answer the client.
    Confirmed(ConfirmToken),
    /// A new view was installed.
    ViewInstalled(View),
    /// Messages may be missing between two views (partition, rejoin); tell subscribers.
    Discontinuity {
        from: ViewId,
        to: ViewId,
        reason: String,
    },
}

/// Why a publish was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// Flow control: the send window or retransmit buffer is full; retry once
    /// [`Engine::can_publish`] is true again. The message was not taken.
    #[error("send window full")]
    WouldBlock,
    /// The message cannot be published now (no view, no quorum for a total topic).
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// Counters the metrics endpoint exports; all monotonically increasing
/// unless named as a gauge.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub published: u64,
    pub delivered: u64,
    pub datagrams_sent: u64,
    pub datagrams_received: u64,
    /// Gauge: bytes held in the retransmit buffer.
    pub retransmit_buffer_bytes: u64,
}

/// The group engine.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    me: Origin,
    view: View,
    next_seq: Seq,
    events: VecDeque<Event>,
    transmit: VecDeque<Bytes>,
    stats: Stats,
}

impl Engine {
    /// A fresh engine, alone in its first view.
    pub fn new(config: EngineConfig, _now: Instant) -> Self {
        let me = Origin {
            node: config.node,
            incarnation: config.incarnation,
        };
        let view = View {
            id: ViewId(1),
            members: vec![me],
            coordinator: me.node,
            sequencer: Some(me.node),
        };
        Engine {
            config,
            me,
            events: VecDeque::from([Event::ViewInstalled(view.clone())]),
            view,
            next_seq: Seq(1),
            transmit: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// Accepts a message from a local client.
    pub fn publish(&mut self, msg: Publish, _now: Instant) -> Result<(), PublishError> {
        if !self.can_publish() {
            return Err(PublishError::WouldBlock);
        }
        let seq = self.next_seq;
        self.next_seq = seq.next();
        self.stats.published += 1;
        // Alone in the view: the message is stable the moment it is accepted.
        if let Some(token) = msg.confirm {
            self.events.push_back(Event::Confirmed(token));
        }
        let mut context = CausalContext::new();
        if msg.ordering == Ordering::Causal {
            context = msg.context;
            context.observe(self.me, seq);
        }
        self.stats.delivered += 1;
        self.events.push_back(Event::Deliver(Arc::new(Delivered {
            topic: msg.topic,
            ordering: msg.ordering,
            publisher: msg.publisher,
            origin: self.me,
            seq,
            context,
            gseq: msg.ordering.is_total().then_some(GlobalSeq(seq.0)),
            payload: msg.payload,
            published_at_us: msg.published_at_us,
        })));
        Ok(())
    }

    /// Whether [`Engine::publish`] would accept a message now (flow control).
    pub fn can_publish(&self) -> bool {
        true
    }

    /// A datagram arrived from the group.
    pub fn handle_datagram(&mut self, _datagram: &[u8], _now: Instant) {
        self.stats.datagrams_received += 1;
    }

    /// The deadline returned by [`Engine::poll_timeout`] has passed.
    pub fn handle_timeout(&mut self, _now: Instant) {}

    /// The next instant at which [`Engine::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    /// The next datagram to multicast to the group.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.transmit.pop_front()
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Leaves the group gracefully (on shutdown).
    pub fn leave(&mut self, _now: Instant) {}

    /// The installed view.
    pub fn view(&self) -> &View {
        &self.view
    }

    /// This engine's identity in the group.
    pub fn origin(&self) -> Origin {
        self.me
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Counters and gauges for metrics.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
}
