//! The engine driver: one task that owns the [`Engine`], the topic registry
//! and the subscription trie, and moves work between client connections,
//! the multicast transport and the engine's timers.
//!
//! All local delivery goes through the engine (`publish` → `Event::Deliver`),
//! exactly as a message from another broker does, so the multicast engine
//! slots in without reshaping the shell. Connections talk to the driver over
//! one bounded channel. A publish the engine cannot take (flow control)
//! stalls, with every command after it, in a queue of at most one batch;
//! while anything is stalled the channel is not read, so it fills,
//! connection readers wait, and TCP backpressure slows the publishers.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ordo_wire::client::{ClusterView, ErrorCode, Reply, TopicInfo};
use ordo_wire::CausalContext;
use tokio::sync::{mpsc, watch, Semaphore};

use crate::config::TopicDecl;
use crate::engine::{ConfirmToken, Delivered, Engine, Event, Publish, PublishError};
use crate::http::Health;
use crate::metrics::{DeliveryRecorder, Metrics};
use crate::server::outbox::{Out, Outbox, PushError};
use crate::shell::transport::{RecvBatch, Transport};
use crate::subs::{SubKey, SubTrie};
use crate::topics::{Declared, Topic, TopicError, TopicRegistry, TopicSpec};

/// Commands handled per wake-up before outputs are flushed.
const COMMAND_BATCH: usize = 256;
/// Datagrams taken from the socket per wake-up.
const RECV_SLOTS: usize = 32;
/// How long a graceful leave may take at shutdown.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often engine counters are copied into the metrics.
const METRICS_EVERY: Duration = Duration::from_millis(100);

/// What a connection asks of the driver. Every command but `Register`
/// names its connection; the driver answers through that connection's outbox.
#[derive(Debug)]
pub enum Command {
    /// A client finished its handshake; answers go to `outbox`.
    Register { conn: u64, outbox: Outbox },
    /// Publish a message (already checked against `--max-payload`).
    Publish {
        conn: u64,
        confirm: Option<u64>,
        topic: String,
        context: CausalContext,
        payload: Bytes,
    },
    /// Publishes of one connection, in order (what one read brought in):
    /// one command and one budget acquisition for all of them.
    PublishBatch { conn: u64, items: Vec<PublishItem> },
    /// Declare a topic.
    Declare {
        conn: u64,
        req: u64,
        topic: String,
        spec: TopicSpec,
    },
    /// Subscribe `sid` to `pattern`; `Ok` is answered once it is in effect.
    Subscribe {
        conn: u64,
        req: u64,
        sid: u64,
        pattern: String,
    },
    /// End subscription `sid`.
    Unsubscribe { conn: u64, req: u64, sid: u64 },
    /// Answer the topic table.
    ListTopics { conn: u64, req: u64 },
    /// Answer the current view.
    Cluster { conn: u64, req: u64 },
}

/// One publish of a [`Command::PublishBatch`].
#[derive(Debug)]
pub struct PublishItem {
    pub confirm: Option<u64>,
    pub topic: String,
    pub context: CausalContext,
    pub payload: Bytes,
}

/// The driver has stopped (the broker is shutting down).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the broker is shutting down")]
pub struct DriverGone;

/// How connections reach the driver; cheap to clone.
#[derive(Debug, Clone)]
pub struct DriverHandle {
    commands: mpsc::Sender<Command>,
    gone: mpsc::UnboundedSender<u64>,
    /// Bytes of publishes queued for the driver, bounded by
    /// [`DriverConfig::command_queue_bytes`]; the driver gives them back
    /// once the engine took (or refused) the message.
    budget: Arc<Semaphore>,
    budget_max: u32,
}

impl DriverHandle {
    /// Sends a command, waiting while the driver's queue is full, in
    /// commands or (for publishes) in bytes: this is the backpressure that
    /// reaches publishers' sockets.
    pub async fn send(&self, cmd: Command) -> Result<(), DriverGone> {
        if let Command::Publish { topic, payload, .. } = &cmd {
            let charge = publish_charge(topic.len(), payload.len(), self.budget_max);
            self.budget
                .acquire_many(charge)
                .await
                .map_err(|_| DriverGone)?
                .forget();
        }
        self.commands.send(cmd).await.map_err(|_| DriverGone)
    }

    /// Sends publishes of one connection in as few commands as the byte
    /// budget allows (each command's charges together fit it), in order.
    pub async fn send_publishes(
        &self,
        conn: u64,
        items: &mut Vec<PublishItem>,
    ) -> Result<(), DriverGone> {
        while !items.is_empty() {
            // The longest prefix whose charges fit the budget (at least one).
            let mut charge: u32 = 0;
            let mut n = 0;
            for it in items.iter() {
                let c = publish_charge(it.topic.len(), it.payload.len(), self.budget_max);
                if n > 0 && charge.saturating_add(c) > self.budget_max {
                    break;
                }
                charge = charge.saturating_add(c);
                n += 1;
            }
            let batch: Vec<PublishItem> = if n == items.len() {
                std::mem::take(items)
            } else {
                items.drain(..n).collect()
            };
            self.budget
                .acquire_many(charge)
                .await
                .map_err(|_| DriverGone)?
                .forget();
            self.commands
                .send(Command::PublishBatch { conn, items: batch })
                .await
                .map_err(|_| DriverGone)?;
        }
        Ok(())
    }

    /// Tells the driver a connection ended; its subscriptions are removed.
    /// Never blocks (one message per connection, so the channel stays small).
    pub fn gone(&self, conn: u64) {
        let _ = self.gone.send(conn);
    }
}

/// Driver settings beyond the engine's own.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Ordering of topics used before they are declared.
    pub default_ordering: ordo_wire::Ordering,
    /// Most subscriptions one connection may hold.
    pub max_subscriptions: usize,
    /// Topics declared by configuration, applied at start.
    pub topics: Vec<TopicDecl>,
    /// Capacity of the command channel, in commands (the backlog across clients).
    pub command_queue: usize,
    /// Bound on the payload bytes of publishes queued for the driver.
    pub command_queue_bytes: usize,
    /// Largest datagram accepted from the group.
    pub max_datagram: usize,
    /// Most topics created here (declared or first used).
    pub max_topics: usize,
    /// Largest reply frame sent to a client (the broker's `--max-frame`,
    /// which clients accept).
    pub max_frame: usize,
}

/// Deliveries collected for one connection before they are pushed as one
/// batch; a batch this long is pushed at once (bounding what waits here).
const DELIVERY_BATCH: usize = 1024;
/// ... or this many payload bytes: one queued item then stays about one
/// write of the connection's writer, whatever the message size.
const DELIVERY_BATCH_BYTES: usize = 1024 * 1024;

/// Per-connection state held by the driver.
#[derive(Debug)]
struct ConnState {
    outbox: Outbox,
    sids: HashMap<u64, SubKey>,
    /// Deliveries of the current pass, pushed as one [`Out::Deliveries`]
    /// at the end of the pass or before anything else queued for the connection.
    pending: Vec<(u64, Arc<Delivered>)>,
    /// Payload and topic bytes of `pending`.
    pending_bytes: usize,
    /// Length of the last batch pushed: `pending` starts a pass with room
    /// for as many, instead of growing (and copying) from empty each pass.
    batch_hint: usize,
}

impl ConnState {
    fn new(outbox: Outbox) -> Self {
        ConnState {
            outbox,
            sids: HashMap::new(),
            pending: Vec::new(),
            pending_bytes: 0,
            batch_hint: 0,
        }
    }

    /// Pushes the pending deliveries; false when the outbox overflowed.
    fn push_pending(&mut self) -> bool {
        if self.pending.is_empty() {
            return true;
        }
        self.pending_bytes = 0;
        let mut batch = std::mem::take(&mut self.pending);
        self.batch_hint = batch.len().min(DELIVERY_BATCH);
        let item = match batch.pop() {
            Some((sid, msg)) if batch.is_empty() => Out::Deliver { sid, msg },
            Some(last) => {
                batch.push(last);
                Out::Deliveries(batch)
            }
            None => return true,
        };
        self.outbox.push_direct(item) != Err(PushError::Full)
    }

    /// Queues `item` after the pending deliveries; false when the outbox overflowed.
    fn push(&mut self, item: Out) -> bool {
        self.push_pending() && self.outbox.push_direct(item) != Err(PushError::Full)
    }
}

/// The driver task's state; run it with [`Driver::run`].
#[derive(Debug)]
pub struct Driver {
    config: DriverConfig,
    engine: Engine,
    transport: Transport,
    registry: TopicRegistry,
    /// The topic of the last publish as the registry resolved it:
    /// publishes to the topic of the one before (the usual stream) skip the
    /// registry's hash lookups. Cleared whenever the registry changes.
    last_topic: Option<Topic>,
    subs: SubTrie<(u64, u64)>,
    conns: ConnMap<ConnState>,
    /// Wall clock (µs) of the current pass: stamps publishes and times
    /// deliveries, read once per pass rather than once per message.
    pass_us: u64,
    commands: mpsc::Receiver<Command>,
    gone: mpsc::UnboundedReceiver<u64>,
    metrics: Arc<Metrics>,
    health: watch::Sender<Health>,
    /// Byte budget of queued publishes, shared with every [`DriverHandle`].
    budget: Arc<Semaphore>,
    budget_max: u32,
    /// Deliveries counted and timed locally, merged once per pass.
    deliveries: DeliveryRecorder,
    /// Reused per flush: datagrams to multicast.
    transmit: Vec<Bytes>,
    /// Connections that overflowed during the current dispatch.
    slow: Vec<u64>,
    /// Connections with pending deliveries (may repeat or name gone ones).
    dirty: Vec<u64>,
    /// Commands taken off the channel that wait for the engine's window to
    /// reopen (a batch can overshoot it); at most one batch.
    stalled: VecDeque<Command>,
    /// The engine refused a publish although `can_publish()` allowed it (a
    /// large message can exceed what is left of the window): retry only
    /// after the next input, which is what can free room, so as not to spin.
    await_input: bool,
    /// Declarations (configured ones, and topics created by first use)
    /// still to be carried through the engine's total order.
    configured: Vec<(String, TopicSpec)>,
    io_errors: IoErrorLog,
    last_metrics: Instant,
}

impl Driver {
    /// Builds the driver around an engine and an open transport, applying the
    /// configured topic declarations. The handle goes to the client server.
    pub fn new(
        config: DriverConfig,
        engine: Engine,
        transport: Transport,
        metrics: Arc<Metrics>,
        health: watch::Sender<Health>,
    ) -> Result<(Driver, DriverHandle), TopicError> {
        let mut registry = TopicRegistry::new(config.default_ordering, config.max_topics);
        // Configured topics are checked here and declared cluster-wide
        // through the engine once it is in a view (see `declare_configured`);
        // until then they apply locally.
        for t in &config.topics {
            let spec = TopicSpec {
                ordering: t.ordering,
                safe: t.safe,
            };
            registry.declare(&t.name, spec)?;
        }
        let configured = config
            .topics
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    TopicSpec {
                        ordering: t.ordering,
                        safe: t.safe,
                    },
                )
            })
            .collect();
        let (cmd_tx, cmd_rx) = mpsc::channel(config.command_queue.max(1));
        let (gone_tx, gone_rx) = mpsc::unbounded_channel();
        let budget_max = u32::try_from(config.command_queue_bytes.max(1)).unwrap_or(u32::MAX);
        let budget = Arc::new(Semaphore::new(budget_max as usize));
        let driver = Driver {
            config,
            engine,
            transport,
            registry,
            last_topic: None,
            subs: SubTrie::new(),
            conns: ConnMap::default(),
            pass_us: unix_micros(),
            commands: cmd_rx,
            gone: gone_rx,
            metrics: Arc::clone(&metrics),
            health,
            budget: Arc::clone(&budget),
            budget_max,
            deliveries: metrics.delivery_recorder(),
            transmit: Vec::new(),
            slow: Vec::new(),
            dirty: Vec::new(),
            stalled: VecDeque::new(),
            await_input: false,
            configured,
            io_errors: IoErrorLog::default(),
            last_metrics: Instant::now(),
        };
        let handle = DriverHandle {
            commands: cmd_tx,
            gone: gone_tx,
            budget,
            budget_max,
        };
        Ok((driver, handle))
    }

    /// Runs until `shutdown` turns true: then takes the commands already
    /// queued, leaves the group, flushes, and returns (dropping every outbox,
    /// which lets the connection writers finish and close).
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        // Slots of the UDP maximum, not of our own --max-datagram: a member
        // on an interface with a larger MTU may send larger datagrams, and a
        // truncated one would be lost (counted as corrupt) on every retry.
        let mut recv = RecvBatch::new(RECV_SLOTS, crate::shell::transport::MAX_DATAGRAM);
        let mut cmds: Vec<Command> = Vec::with_capacity(COMMAND_BATCH);
        self.flush().await;
        loop {
            if !self.stalled.is_empty() && self.publish_open() {
                let now = Instant::now();
                // Taken whole: a command that stalls again must stay ahead
                // of the ones after it.
                for cmd in std::mem::take(&mut self.stalled) {
                    self.command(cmd, now);
                }
                self.flush().await;
                continue;
            }
            // Read clients while nothing waits for the engine's window: a
            // publish it cannot take stalls (with everything after it), and
            // then the channel fills and TCP backpressure reaches publishers.
            let take_commands = self.stalled.is_empty();
            let deadline = self.engine.poll_timeout();
            // Order matters under load: timers and the group's datagrams
            // (acks, NAKs, digests that reopen the window) come before more
            // client work, so a busy publisher cannot starve the protocol.
            tokio::select! {
                biased;
                _ = crate::server::stopped(&mut shutdown) => break,
                Some(conn) = self.gone.recv() => self.drop_conn(conn),
                _ = sleep_until_opt(deadline) => {
                    self.engine.handle_timeout(Instant::now());
                    self.await_input = false;
                }
                r = self.transport.recv_batch(&mut recv) => match r {
                    Ok(_) => {
                        let now = Instant::now();
                        for datagram in recv.drain() {
                            self.engine.handle_datagram_bytes(datagram, now);
                        }
                        self.await_input = false;
                    }
                    Err(e) => {
                        self.io_errors.report("receive", &e);
                        // Do not spin on a persistent socket error.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                n = self.commands.recv_many(&mut cmds, COMMAND_BATCH), if take_commands => {
                    if n == 0 {
                        // Every handle is gone: nothing can reach us any more.
                        break;
                    }
                    let now = Instant::now();
                    self.pass_us = unix_micros();
                    for cmd in cmds.drain(..) {
                        self.command(cmd, now);
                    }
                }
            }
            self.flush().await;
            if let Some(reason) = self.engine.refused() {
                // Another live broker holds our node id: running on would
                // only disturb the group. Nothing of ours is in a view.
                tracing::error!("refused by the group: {reason}");
                std::process::exit(1);
            }
        }
        self.stop(&mut recv).await;
    }

    /// Graceful stop: publish what clients already handed over, leave the
    /// group (driving the engine until it has left, bounded by
    /// [`LEAVE_TIMEOUT`]), flush.
    async fn stop(&mut self, recv: &mut RecvBatch) {
        let now = Instant::now();
        for cmd in std::mem::take(&mut self.stalled) {
            self.command(cmd, now);
        }
        let mut taken = 0;
        while self.stalled.is_empty() && taken < self.config.command_queue {
            match self.commands.try_recv() {
                Ok(cmd) => self.command(cmd, now),
                Err(_) => break,
            }
            taken += 1;
        }
        if !self.stalled.is_empty() {
            tracing::warn!(
                commands = self.stalled.len(),
                "shutting down with publishes the engine could not take"
            );
        }
        // Those get their one answer too: never published, so delivered nowhere.
        for cmd in std::mem::take(&mut self.stalled) {
            let reqs: Vec<(u64, u64)> = match cmd {
                Command::Publish {
                    conn,
                    confirm: Some(req),
                    ..
                }
                | Command::Declare { conn, req, .. } => vec![(conn, req)],
                Command::PublishBatch { conn, items } => items
                    .iter()
                    .filter_map(|it| it.confirm.map(|req| (conn, req)))
                    .collect(),
                _ => Vec::new(),
            };
            for (conn, req) in reqs {
                self.reply(
                    conn,
                    Reply::Error {
                        req,
                        code: ErrorCode::ShuttingDown,
                        message: "not published: this broker is shutting down; the message reached no member".into(),
                    },
                );
            }
        }
        self.flush().await;
        self.engine.leave(Instant::now());
        self.flush().await;
        let deadline = tokio::time::Instant::now() + LEAVE_TIMEOUT;
        while !self.engine.has_left() {
            let timeout = self.engine.poll_timeout();
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!("leaving the group timed out; the others will notice our absence");
                    break;
                }
                r = self.transport.recv_batch(recv) => {
                    if r.is_ok() {
                        let now = Instant::now();
                        for datagram in recv.drain() {
                            self.engine.handle_datagram_bytes(datagram, now);
                        }
                    }
                }
                _ = sleep_until_opt(timeout) => self.engine.handle_timeout(Instant::now()),
            }
            self.flush().await;
        }
        // A leave that timed out leaves confirmations unanswered: answer them.
        self.engine
            .abandon_pending("this broker shut down before the group confirmed the message");
        self.flush().await;
        crate::http::publish_health(&self.health, &self.engine);
        self.metrics.observe_engine(self.engine.stats());
        tracing::info!(connections = self.conns.len(), "engine driver stopped");
    }

    /// Sends every datagram the engine has queued and dispatches every event.
    /// Carries pending declarations (configured topics, topics created by
    /// first use) through the engine once it can take them.
    fn declare_configured(&mut self) {
        while let Some((name, spec)) = self.configured.first().cloned() {
            if !self.engine.in_view() || !self.engine.can_publish() {
                return;
            }
            let agreed = self
                .engine
                .agreed_topics()
                .iter()
                .any(|(n, _, _)| *n == name);
            if !agreed {
                let token = ConfirmToken { conn: 0, req: 0 };
                if self
                    .engine
                    .declare(&name, spec.ordering, spec.safe, token)
                    .is_err()
                {
                    return;
                }
            }
            self.configured.remove(0);
        }
    }

    async fn flush(&mut self) {
        self.pass_us = unix_micros();
        self.declare_configured();
        loop {
            while let Some(d) = self.engine.poll_transmit() {
                self.transmit.push(d);
            }
            if !self.transmit.is_empty() {
                if let Err(e) = self.transport.send_batch(&self.transmit).await {
                    // The engine's NAK repair covers datagrams lost here.
                    self.io_errors.report("send", &e);
                }
                self.transmit.clear();
            }
            let mut any = false;
            while let Some(ev) = self.engine.poll_event() {
                any = true;
                self.event(ev);
            }
            if !any {
                break;
            }
        }
        // After the events: a view change, exclusion or rejoin shows on
        // `/healthz` as soon as the engine is in it.
        crate::http::publish_health(&self.health, &self.engine);
        self.push_deliveries();
        self.kill_slow();
        self.deliveries.flush();
        if self.last_metrics.elapsed() >= METRICS_EVERY {
            self.metrics.observe_engine(self.engine.stats());
            self.last_metrics = Instant::now();
        }
    }

    /// Handles one command, or stalls it (and everything after it, to keep
    /// each client's order) while the engine cannot take a publish.
    fn command(&mut self, cmd: Command, now: Instant) {
        let blocked = !self.stalled.is_empty()
            || (matches!(
                cmd,
                Command::Publish { .. } | Command::PublishBatch { .. } | Command::Declare { .. }
            ) && !self.publish_open());
        if blocked {
            self.stalled.push_back(cmd);
            return;
        }
        match cmd {
            Command::Register { conn, outbox } => {
                // A connection that ended before its registration was read
                // already sent `gone`; do not resurrect it.
                if !outbox.is_closed() {
                    self.conns.insert(conn, ConnState::new(outbox));
                }
            }
            Command::Publish {
                conn,
                confirm,
                topic,
                context,
                payload,
            } => {
                let back = self.publish(conn, confirm, &topic, context, payload, now);
                self.budget.add_permits(back as usize);
                // Dispatch what the publish delivered before the next command,
                // so an answer to a later request never overtakes it.
                while let Some(ev) = self.engine.poll_event() {
                    self.event(ev);
                }
            }
            Command::PublishBatch { conn, items } => {
                let mut back: usize = 0;
                let mut items = items.into_iter();
                while let Some(it) = items.next() {
                    if !self.stalled.is_empty() || !self.publish_open() {
                        // The engine is full: this one and the rest wait, in
                        // order, each still charged to the budget.
                        for it in std::iter::once(it).chain(items.by_ref()) {
                            self.stalled.push_back(Command::Publish {
                                conn,
                                confirm: it.confirm,
                                topic: it.topic,
                                context: it.context,
                                payload: it.payload,
                            });
                        }
                        break;
                    }
                    back += self.publish(conn, it.confirm, &it.topic, it.context, it.payload, now)
                        as usize;
                    while let Some(ev) = self.engine.poll_event() {
                        self.event(ev);
                    }
                }
                if back > 0 {
                    self.budget.add_permits(back);
                }
            }
            Command::Declare {
                conn,
                req,
                topic,
                spec,
            } => {
                // Known (agreed, or created here) topics answer at once;
                // a new one is answered once the group agreed on it.
                if let Err(e) = crate::topics::validate_topic(&topic) {
                    self.reply(conn, topic_error(req, e));
                    return;
                }
                if self.registry.get(&topic).is_some() {
                    self.last_topic = None;
                    let reply = match self.registry.declare(&topic, spec) {
                        Ok(Declared::Existing | Declared::New) => Reply::Ok { req },
                        Err(e) => topic_error(req, e),
                    };
                    self.reply(conn, reply);
                    return;
                }
                if let Err(e) = self.registry.check_room() {
                    self.metrics.topic_refused();
                    self.reply(conn, topic_error(req, e));
                    return;
                }
                let token = ConfirmToken { conn, req };
                match self.engine.declare(&topic, spec.ordering, spec.safe, token) {
                    Ok(()) => {}
                    Err(PublishError::WouldBlock) => {
                        self.await_input = true;
                        self.stalled.push_back(Command::Declare {
                            conn,
                            req,
                            topic,
                            spec,
                        });
                    }
                    Err(PublishError::Unavailable(reason)) => self.reply(
                        conn,
                        Reply::Error {
                            req,
                            code: ErrorCode::Unavailable,
                            message: format!("cannot declare now: {reason}; retry later"),
                        },
                    ),
                }
            }
            Command::Subscribe {
                conn,
                req,
                sid,
                pattern,
            } => {
                let reply = self.subscribe(conn, req, sid, &pattern);
                self.reply(conn, reply);
            }
            Command::Unsubscribe { conn, req, sid } => {
                let reply = match self.conns.get_mut(&conn).and_then(|c| c.sids.remove(&sid)) {
                    Some(key) => {
                        self.subs.remove(key);
                        self.metrics.subscription_removed();
                        Reply::Ok { req }
                    }
                    None => Reply::Error {
                        req,
                        code: ErrorCode::InvalidName,
                        message: format!("no subscription with id {sid} on this connection"),
                    },
                };
                self.reply(conn, reply);
            }
            Command::ListTopics { conn, req } => {
                let reply = topics_reply(req, self.registry.list(), self.config.max_frame);
                self.reply(conn, reply);
            }
            Command::Cluster { conn, req } => {
                let view = cluster_view(&self.engine);
                self.reply(conn, Reply::Cluster { req, view });
            }
        }
    }

    /// Whether a publish may be offered to the engine now.
    fn publish_open(&self) -> bool {
        !self.await_input && self.engine.can_publish()
    }

    fn subscribe(&mut self, conn: u64, req: u64, sid: u64, pattern: &str) -> Reply {
        let Some(state) = self.conns.get_mut(&conn) else {
            return Reply::Ok { req }; // gone; the answer is dropped anyway
        };
        if state.sids.contains_key(&sid) {
            return Reply::Error {
                req,
                code: ErrorCode::Protocol,
                message: format!(
                    "subscription id {sid} is already in use on this connection; unsubscribe it or pick another id"
                ),
            };
        }
        if state.sids.len() >= self.config.max_subscriptions {
            return Reply::Error {
                req,
                code: ErrorCode::Limit,
                message: format!(
                    "this connection holds {} subscriptions, the broker's limit (--max-subscriptions); \
                     unsubscribe some or use wildcards",
                    state.sids.len()
                ),
            };
        }
        match self.subs.insert(pattern, (conn, sid)) {
            Ok(key) => {
                state.sids.insert(sid, key);
                self.metrics.subscription_added();
                Reply::Ok { req }
            }
            Err(e) => Reply::Error {
                req,
                code: ErrorCode::InvalidName,
                message: e.to_string(),
            },
        }
    }

    fn publish(
        &mut self,
        conn: u64,
        confirm: Option<u64>,
        topic: &str,
        context: CausalContext,
        payload: Bytes,
        now: Instant,
    ) -> u32 {
        // The budget goes back (the caller returns it) unless the publish
        // stalls again (then it stays charged until it is finally taken).
        let charge = publish_charge(topic.len(), payload.len(), self.budget_max);
        let resolved = match &self.last_topic {
            Some(last) if *last.name == *topic => last,
            _ => {
                let first_use = self.registry.get(topic).is_none();
                let resolved = match self.registry.resolve(topic) {
                    Ok(t) => t,
                    Err(e) => {
                        if matches!(e, TopicError::Limit { .. }) {
                            self.metrics.topic_refused();
                        }
                        let reply = topic_error(confirm.unwrap_or(0), e);
                        self.reply(conn, reply);
                        return charge;
                    }
                };
                if first_use {
                    // First use: created with the default ordering here at
                    // once, and declared to the group so every broker agrees on it.
                    self.configured
                        .push((resolved.name.to_string(), resolved.spec));
                }
                self.last_topic.insert(resolved)
            }
        };
        let (name, spec) = (Arc::clone(&resolved.name), resolved.spec);
        // Kept (cheap: reference counts, and the context is usually empty)
        // because a refused publish is handed back to us by value only.
        let retry = (context.clone(), payload.clone());
        let msg = Publish {
            topic: name,
            ordering: spec.ordering,
            safe: spec.safe,
            publisher: conn,
            context,
            payload,
            confirm: confirm.map(|req| ConfirmToken { conn, req }),
            published_at_us: self.pass_us,
        };
        let ordering = msg.ordering;
        let result = self.engine.publish(msg, now);
        let back = if matches!(result, Err(PublishError::WouldBlock)) {
            0
        } else {
            charge
        };
        match result {
            Ok(()) => self.metrics.observe_publish(ordering),
            Err(PublishError::WouldBlock) => {
                // Flow control: hold it (and, through `stalled`, everything
                // after it) until the engine has room again.
                self.await_input = true;
                self.stalled.push_back(Command::Publish {
                    conn,
                    confirm,
                    topic: topic.to_string(),
                    context: retry.0,
                    payload: retry.1,
                });
            }
            Err(PublishError::Unavailable(reason)) => self.reply(
                conn,
                Reply::Error {
                    req: confirm.unwrap_or(0),
                    code: ErrorCode::Unavailable,
                    message: format!("cannot publish now: {reason}; retry later"),
                },
            ),
        }
        back
    }

    fn event(&mut self, ev: Event) {
        match ev {
            Event::Deliver(msg) => {
                self.deliveries.observe(
                    msg.ordering,
                    Duration::from_micros(self.pass_us.saturating_sub(msg.published_at_us)),
                );
                for &(conn, sid) in self.subs.matches(&msg.topic) {
                    let Some(state) = self.conns.get_mut(&conn) else {
                        continue;
                    };
                    if state.pending.is_empty() {
                        self.dirty.push(conn);
                        state.pending.reserve(state.batch_hint);
                    }
                    state.pending.push((sid, Arc::clone(&msg)));
                    state.pending_bytes += msg.payload.len() + msg.topic.len();
                    if (state.pending.len() >= DELIVERY_BATCH
                        || state.pending_bytes >= DELIVERY_BATCH_BYTES)
                        && !state.push_pending()
                    {
                        self.slow.push(conn);
                    }
                }
            }
            Event::Confirmed(ConfirmToken { conn, req }) => self.reply(conn, Reply::Ok { req }),
            Event::PublishFailed {
                token: ConfirmToken { conn, req },
                reason,
            } => {
                // Our stream ended before the group vouched for it; the
                // client gets its one answer now rather than its timeout.
                tracing::debug!(conn, req, %reason, "publish not confirmed");
                if conn != 0 {
                    self.reply(
                        conn,
                        Reply::Error {
                            req,
                            code: ErrorCode::Unavailable,
                            message: reason,
                        },
                    );
                }
            }
            Event::Discontinuity { from, to, reason } => {
                tracing::warn!(%from, %to, %reason, "discontinuity");
                for (&conn, state) in &mut self.conns {
                    let sids: Vec<u64> = state.sids.keys().copied().collect();
                    for sid in sids {
                        let item = Out::Reply(Reply::Discontinuity {
                            sid,
                            from_view: from,
                            to_view: to,
                            reason: reason.clone(),
                        });
                        if !state.push(item) {
                            self.slow.push(conn);
                            break;
                        }
                    }
                }
            }
            Event::TopicDeclared {
                name,
                requested,
                agreed,
                token,
            } => {
                let agreed = TopicSpec {
                    ordering: agreed.0,
                    safe: agreed.1,
                };
                let requested = TopicSpec {
                    ordering: requested.0,
                    safe: requested.1,
                };
                if self.registry.get(&name) != Some(agreed) {
                    tracing::info!(topic = %name, spec = %agreed, "topic agreed");
                }
                self.registry.apply_agreed(&name, agreed);
                self.last_topic = None;
                if let Some(ConfirmToken { conn, req }) = token.filter(|t| t.conn != 0) {
                    let reply = if requested == agreed {
                        Reply::Ok { req }
                    } else {
                        topic_error(
                            req,
                            TopicError::Conflict {
                                name: name.to_string(),
                                existing: agreed,
                                requested,
                            },
                        )
                    };
                    self.reply(conn, reply);
                } else if requested != agreed && token.is_some() {
                    tracing::warn!(topic = %name, "declared {requested} here, but the group agreed on {agreed} first");
                }
            }
            Event::ViewInstalled(view) => {
                self.metrics.set_view(view.id, view.members.len());
                // `/healthz` follows at the end of the pass (`flush`).
                tracing::info!(view = %view.id, members = view.members.len(), "view installed");
            }
        }
    }

    /// Queues an answer (after the deliveries pending for the connection,
    /// which came first); an overflowing queue marks a slow consumer.
    fn reply(&mut self, conn: u64, reply: Reply) {
        if let Some(state) = self.conns.get_mut(&conn) {
            if !state.push(Out::Reply(reply)) {
                self.slow.push(conn);
            }
        }
    }

    /// Pushes every connection's pending deliveries, one batch each.
    fn push_deliveries(&mut self) {
        for conn in std::mem::take(&mut self.dirty) {
            if let Some(state) = self.conns.get_mut(&conn) {
                if !state.push_pending() {
                    self.slow.push(conn);
                }
            }
        }
    }

    /// Disconnects every connection whose queue overflowed.
    fn kill_slow(&mut self) {
        while let Some(conn) = self.slow.pop() {
            let Some(state) = self.conns.remove(&conn) else {
                continue; // already handled (several overflows in one batch)
            };
            self.metrics.slow_consumer();
            tracing::warn!(
                conn,
                queued_bytes = state.outbox.queued_bytes(),
                "disconnecting slow consumer"
            );
            state.outbox.kill();
            for key in state.sids.into_values() {
                self.subs.remove(key);
                self.metrics.subscription_removed();
            }
        }
    }

    fn drop_conn(&mut self, conn: u64) {
        if let Some(state) = self.conns.remove(&conn) {
            for key in state.sids.into_values() {
                self.subs.remove(key);
                self.metrics.subscription_removed();
            }
        }
    }
}

fn topic_error(req: u64, e: TopicError) -> Reply {
    let code = match e {
        TopicError::InvalidName { .. } => ErrorCode::InvalidName,
        TopicError::Conflict { .. } => ErrorCode::Conflict,
        TopicError::Limit { .. } => ErrorCode::Limit,
    };
    Reply::Error {
        req,
        code,
        message: e.to_string(),
    }
}

/// The topic table as one reply, or a `limit` error when it would not fit a
/// frame of `max_frame` bytes (clients refuse larger frames).
fn topics_reply(req: u64, topics: Vec<TopicInfo>, max_frame: usize) -> Reply {
    // kind, req, count; then per topic a length-prefixed name, ordering, safe.
    let size = 1 + 8 + 4 + topics.iter().map(|t| 2 + t.name.len() + 2).sum::<usize>();
    if size <= max_frame {
        return Reply::Topics { req, topics };
    }
    Reply::Error {
        req,
        code: ErrorCode::Limit,
        message: format!(
            "the topic table ({} topics, {size} bytes) exceeds the largest reply frame of {max_frame} bytes; \
             raise --max-frame on the broker and the client",
            topics.len()
        ),
    }
}

/// The last view installed here, and whether this broker is still in it.
fn cluster_view(engine: &Engine) -> ClusterView {
    let view = engine.view();
    ClusterView {
        view_id: view.id,
        this: engine.origin(),
        members: view.members.clone(),
        coordinator: view.coordinator,
        sequencer: view.sequencer,
        status: Some(ordo_wire::client::ViewStatus {
            state: engine.membership_state().0,
            primary: view.primary,
        }),
    }
}

/// The budget bytes a publish holds while queued for the driver (at most
/// the whole budget, so one large message can always pass alone).
fn publish_charge(topic_len: usize, payload_len: usize, max: u32) -> u32 {
    u32::try_from(topic_len + payload_len)
        .unwrap_or(u32::MAX)
        .clamp(1, max)
}

/// Logs multicast socket errors at most once a second, with how many were
/// suppressed, so a persistent failure cannot flood the log.
#[derive(Debug, Default)]
struct IoErrorLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl IoErrorLog {
    fn report(&mut self, op: &'static str, e: &std::io::Error) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(error = %e, suppressed = self.suppressed, "multicast {op} failed");
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// Connection ids are ours (sequential, never chosen by a client), so a
/// multiply hashes them as well as SipHash at a fraction of its cost; the
/// driver looks one up per delivery.
#[derive(Debug, Default, Clone, Copy)]
struct ConnIdHasher(u64);

impl std::hash::Hasher for ConnIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Map keyed by connection id.
type ConnMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<ConnIdHasher>>;

/// Wall-clock microseconds since the Unix epoch (0 if the clock is before it).
fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Sleeps until `deadline`, or forever when there is none.
async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        // tokio's timer wheel ticks in whole milliseconds and rounds a
        // deadline up to the next tick: one that passed while we handled
        // input (a prompt acknowledgement due a moment ago) is served on
        // this pass, not up to a millisecond later.
        Some(d) if d <= Instant::now() => {}
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::engine::EngineConfig;
    use crate::server::outbox::{outbox, OutboxReceiver};
    use crate::shell::transport::TransportConfig;
    use crate::testkit::ClusterSpec;
    use bytes::BytesMut;
    use ordo_wire::{Incarnation, NodeId, Ordering};
    use std::collections::BTreeMap;

    /// A driver alone in its own cluster on loopback, with a small
    /// retransmit buffer so flow control engages.
    async fn driver(
        retransmit: usize,
    ) -> (
        DriverHandle,
        watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    ) {
        driver_with(retransmit, 1000).await
    }

    async fn driver_with(
        retransmit: usize,
        max_topics: usize,
    ) -> (
        DriverHandle,
        watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    ) {
        let spec = ClusterSpec::new();
        let transport = Transport::open(&TransportConfig {
            group: spec.group,
            iface: std::net::Ipv4Addr::LOCALHOST,
            ttl: 0,
            recv_buffer: 1 << 20,
            send_buffer: 1 << 20,
        })
        .unwrap();
        let mut ec = EngineConfig::new(NodeId(1), Incarnation(1), spec.name);
        ec.retransmit_buffer_bytes = retransmit;
        ec.discovery_timeout = Duration::from_millis(20);
        let engine = Engine::new(ec, Instant::now());
        let (health, _) = watch::channel(Health::starting(NodeId(1), Incarnation(1)));
        let (d, handle) = Driver::new(
            DriverConfig {
                default_ordering: Ordering::Fifo,
                max_subscriptions: 10,
                topics: Vec::new(),
                command_queue: 64,
                command_queue_bytes: 256 * 1024,
                max_datagram: 8192,
                max_topics,
                max_frame: 1 << 20,
            },
            engine,
            transport,
            Arc::new(Metrics::new()),
            health,
        )
        .unwrap();
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(d.run(stop_rx));
        (handle, stop, task)
    }

    /// An outbox receiver that hands out one delivery at a time, whether
    /// the driver queued it alone or in a batch.
    struct TestRx {
        rx: OutboxReceiver,
        queued: VecDeque<Out>,
    }

    impl TestRx {
        fn new(rx: OutboxReceiver) -> Self {
            TestRx {
                rx,
                queued: VecDeque::new(),
            }
        }
    }

    async fn next(t: &mut TestRx) -> Out {
        if let Some(item) = t.queued.pop_front() {
            return item;
        }
        let mut v = Vec::with_capacity(1);
        let n = tokio::time::timeout(Duration::from_secs(10), t.rx.recv_many(&mut v, 1))
            .await
            .expect("driver answered nothing within 10 s");
        assert_eq!(n, 1, "outbox closed");
        let item = v.pop().unwrap();
        t.rx.release(item.charge(), item.frames());
        match item {
            Out::Deliveries(items) => {
                t.queued.extend(
                    items
                        .into_iter()
                        .map(|(sid, msg)| Out::Deliver { sid, msg }),
                );
                t.queued.pop_front().unwrap()
            }
            other => other,
        }
    }

    fn publish(conn: u64, confirm: Option<u64>, payload: Bytes) -> Command {
        Command::Publish {
            conn,
            confirm,
            topic: "t".into(),
            context: CausalContext::new(),
            payload,
        }
    }

    #[tokio::test]
    async fn commands_keep_their_order_through_flow_control() {
        let (h, stop, task) = driver(64 * 1024).await;
        let (tx, rx) = outbox(10_000, 64 << 20);
        let mut rx = TestRx::new(rx);
        h.send(Command::Register {
            conn: 1,
            outbox: tx,
        })
        .await
        .unwrap();
        h.send(Command::Subscribe {
            conn: 1,
            req: 1,
            sid: 1,
            pattern: "t".into(),
        })
        .await
        .unwrap();
        // 300 KiB through a window of a few dozen KiB: publishes stall, and
        // the subscription sent after them must not overtake them.
        const N: u32 = 300;
        for i in 0..N {
            let mut p = i.to_be_bytes().to_vec();
            p.resize(1024, 0);
            h.send(publish(1, None, p.into())).await.unwrap();
        }
        h.send(Command::Subscribe {
            conn: 1,
            req: 2,
            sid: 2,
            pattern: "t".into(),
        })
        .await
        .unwrap();
        h.send(publish(1, Some(3), Bytes::from_static(b"last")))
            .await
            .unwrap();

        assert!(matches!(
            next(&mut rx).await,
            Out::Reply(Reply::Ok { req: 1 })
        ));
        for i in 0..N {
            match next(&mut rx).await {
                Out::Deliver { sid: 1, msg } => assert_eq!(&msg.payload[..4], &i.to_be_bytes()),
                other => panic!("message {i}: got {other:?}"),
            }
        }
        assert!(matches!(
            next(&mut rx).await,
            Out::Reply(Reply::Ok { req: 2 })
        ));
        // The last publish reaches both subscriptions; its confirmation may
        // come before or after the deliveries.
        let mut sids = Vec::new();
        let mut confirmed = false;
        while sids.len() < 2 || !confirmed {
            match next(&mut rx).await {
                Out::Deliver { sid, msg } => {
                    assert_eq!(msg.payload, Bytes::from_static(b"last"));
                    sids.push(sid);
                }
                Out::Reply(Reply::Ok { req: 3 }) => confirmed = true,
                other => panic!("unexpected {other:?}"),
            }
        }
        sids.sort_unstable();
        assert_eq!(sids, vec![1, 2]);
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn no_topic_is_created_beyond_max_topics() {
        let (h, stop, task) = driver_with(64 << 20, 2).await;
        let (tx, rx) = outbox(10_000, 64 << 20);
        let mut rx = TestRx::new(rx);
        h.send(Command::Register {
            conn: 1,
            outbox: tx,
        })
        .await
        .unwrap();
        for (req, topic) in [(1, "a"), (2, "b"), (3, "c"), (4, "a")] {
            h.send(Command::Publish {
                conn: 1,
                confirm: Some(req),
                topic: topic.into(),
                context: CausalContext::new(),
                payload: Bytes::from_static(b"x"),
            })
            .await
            .unwrap();
        }
        h.send(Command::Declare {
            conn: 1,
            req: 5,
            topic: "d".into(),
            spec: TopicSpec {
                ordering: Ordering::Fifo,
                safe: false,
            },
        })
        .await
        .unwrap();
        let mut replies = BTreeMap::new();
        while replies.len() < 5 {
            match next(&mut rx).await {
                Out::Reply(Reply::Ok { req }) => {
                    replies.insert(req, None);
                }
                Out::Reply(Reply::Error { req, code, .. }) => {
                    replies.insert(req, Some(code));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(replies[&1], None);
        assert_eq!(replies[&2], None);
        assert_eq!(replies[&3], Some(ErrorCode::Limit));
        assert_eq!(replies[&4], None, "a known topic still takes publishes");
        assert_eq!(replies[&5], Some(ErrorCode::Limit));
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[test]
    fn a_topic_list_beyond_the_frame_is_a_limit_error() {
        let topics: Vec<TopicInfo> = (0..1000)
            .map(|i| TopicInfo {
                name: format!("topic.{i:05}"),
                ordering: Ordering::Fifo,
                safe: false,
            })
            .collect();
        let fits = topics_reply(7, topics.clone(), 1 << 20);
        let mut out = BytesMut::new();
        fits.encode(&mut out);
        // The size computed is the encoded size (plus the 4-byte prefix).
        let Reply::Topics { .. } = fits else {
            panic!("{fits:?}")
        };
        let exact = out.len() - 4;
        assert!(matches!(
            topics_reply(7, topics.clone(), exact),
            Reply::Topics { .. }
        ));
        match topics_reply(7, topics, exact - 1) {
            Reply::Error {
                req: 7,
                code,
                message,
            } => {
                assert_eq!(code, ErrorCode::Limit);
                assert!(message.contains("1000 topics"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn overflowing_outbox_is_killed_and_unsubscribed() {
        let (h, stop, task) = driver(64 << 20).await;
        let (slow_tx, slow_rx) = outbox(4, 1 << 20);
        let (fast_tx, fast_rx) = outbox(10_000, 64 << 20);
        let mut fast_rx = TestRx::new(fast_rx);
        let watch = slow_rx.kill_watch();
        h.send(Command::Register {
            conn: 1,
            outbox: slow_tx,
        })
        .await
        .unwrap();
        h.send(Command::Register {
            conn: 2,
            outbox: fast_tx,
        })
        .await
        .unwrap();
        for conn in [1, 2] {
            h.send(Command::Subscribe {
                conn,
                req: 1,
                sid: 1,
                pattern: "t".into(),
            })
            .await
            .unwrap();
        }
        for i in 0..10u32 {
            h.send(publish(2, None, Bytes::from(i.to_be_bytes().to_vec())))
                .await
                .unwrap();
        }
        tokio::time::timeout(Duration::from_secs(10), watch.killed())
            .await
            .expect("the slow consumer was not killed");
        assert!(matches!(
            next(&mut fast_rx).await,
            Out::Reply(Reply::Ok { req: 1 })
        ));
        for i in 0..10u32 {
            match next(&mut fast_rx).await {
                Out::Deliver { msg, .. } => assert_eq!(&msg.payload[..], &i.to_be_bytes()),
                other => panic!("{other:?}"),
            }
        }
        stop.send(true).unwrap();
        task.await.unwrap();
        drop(slow_rx);
    }
}
