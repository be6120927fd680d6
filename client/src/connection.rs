//! The connection task: one reader and one writer over the broker's socket,
//! multiplexing requests by `req` id and subscriptions by `sid`.
//!
//! The writer drains every queued command into one buffer before it writes,
//! so a burst of publishes costs one syscall, not one per message. The reader
//! decodes every whole frame a read brought in and hands each subscription
//! its deliveries of that read as one batch (one channel send, one lock and
//! one wake-up per batch instead of per message). A subscription's channel is
//! bounded in events and in payload bytes: when the application stops
//! reading, the reader waits for room and so stops reading the socket, and
//! the broker's slow-consumer policy decides what happens next (rather than
//! this process buffering without bound).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::{Bytes, BytesMut};
use ordo_wire::client::{ErrorCode, Reply, Request};
use ordo_wire::CausalContext;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::error::Error;
use crate::subscription::{Discontinuity, Event, Message};

/// The writer stops draining the command queue once this much is buffered,
/// and writes it out.
const WRITE_BATCH: usize = 256 * 1024;

/// Initial and minimum free room of the read buffer.
const READ_CHUNK: usize = 64 * 1024;

/// How long the reader may look for the broker's reason after a write failed.
const LAST_WORD_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Pongs owed to the broker that may wait for the writer; more are dropped
/// (and counted): a broker that pings faster than we can answer learns
/// nothing new from every answer.
const MAX_QUEUED_PONGS: usize = 64;

/// Most deliveries the reader collects for one subscription before it hands
/// them over, so one huge read does not wait whole in the reader.
const DELIVERY_BATCH: usize = 256;

/// What a client handle asks the connection task to do, in order.
#[derive(Debug)]
pub(crate) enum Command {
    /// Send a request; its answer (if any) was registered in `pending` first.
    Request(Request),
    /// Publish; the writer attaches the causal context current at that moment.
    Publish {
        confirm: Option<u64>,
        topic: String,
        payload: Bytes,
    },
    /// Write everything queued so far, close the sending side, and end.
    Close(oneshot::Sender<()>),
}

/// The connection's end of one subscription: a channel of event batches
/// and two budgets bounding the events and the payload bytes waiting in it.
#[derive(Debug, Clone)]
pub(crate) struct SubSender {
    pub(crate) tx: mpsc::Sender<Queued>,
    pub(crate) events: Arc<Budget>,
    pub(crate) bytes: Arc<Budget>,
}

/// A batch of events in a subscription's channel with what it holds of the
/// budgets; the subscription gives them back once it handed out the last
/// event of the batch.
#[derive(Debug)]
pub(crate) struct Queued {
    pub(crate) events: Vec<Event>,
    /// Charged to the event budget.
    pub(crate) count: usize,
    /// Charged to the byte budget.
    pub(crate) bytes: usize,
}

/// Events or payload bytes waiting in one subscription's channel, bounded:
/// one atomic add per batch on each side (a semaphore permit cost a lock on
/// release), and a wake-up only when the connection reader waits for room.
#[derive(Debug)]
pub(crate) struct Budget {
    used: AtomicUsize,
    max: usize,
    /// Set by a reader about to wait; the next release wakes it.
    waiting: AtomicBool,
    room: Notify,
}

impl Budget {
    pub(crate) fn new(max: usize) -> Self {
        Budget {
            used: AtomicUsize::new(0),
            max: max.max(1),
            waiting: AtomicBool::new(false),
            room: Notify::new(),
        }
    }

    /// What an event of `size` payload bytes is charged: at most the whole
    /// budget, so one large message always fits an empty channel.
    pub(crate) fn charge(&self, size: usize) -> usize {
        size.min(self.max)
    }

    /// The bound.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Takes `n` bytes if they fit.
    pub(crate) fn try_take(&self, n: usize) -> bool {
        if n == 0 {
            return true;
        }
        let before = self.used.fetch_add(n, AtomicOrdering::SeqCst);
        if before + n <= self.max {
            return true;
        }
        // Undone without `release`: waking ourselves would make `take` spin.
        self.used.fetch_sub(n, AtomicOrdering::SeqCst);
        false
    }

    /// Takes `n` bytes (at most `max`), waiting for the subscription to make room.
    pub(crate) async fn take(&self, n: usize) {
        loop {
            self.waiting.store(true, AtomicOrdering::SeqCst);
            if self.try_take(n) {
                return;
            }
            // A release after the failed take stored a wake-up in `room`.
            self.room.notified().await;
        }
    }

    /// Gives back `n` bytes.
    pub(crate) fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.used.fetch_sub(n, AtomicOrdering::SeqCst);
        if self.waiting.swap(false, AtomicOrdering::SeqCst) {
            self.room.notify_one();
        }
    }
}

/// The answer to one request.
pub(crate) type ReplyResult = Result<Reply, Error>;

/// A request waiting for its answer.
#[derive(Debug)]
struct Pending {
    tx: oneshot::Sender<ReplyResult>,
    /// A flush: it also reports a refusal that had no request to answer.
    barrier: bool,
}

/// State shared by the client handles and the connection task.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Wakes the writer when `State::control` has frames.
    control: Notify,
    pub(crate) stats: Counters,
}

#[derive(Debug, Default)]
struct State {
    /// Requests waiting for their answer, by `req` id.
    pending: HashMap<u64, Pending>,
    /// Live subscriptions, by `sid`.
    subs: HashMap<u64, SubSender>,
    /// Everything this client has seen delivered (DESIGN.md "Causal").
    context: CausalContext,
    /// Frames the writer must send that no command carries: pongs owed to
    /// the broker and unsubscriptions of dropped subscriptions.
    control: Vec<Request>,
    /// Set once the connection has ended, with the reason.
    closed: Option<Error>,
}

/// Counters kept by the connection; read with [`crate::Client::stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) published: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) dropped_unsubscribed: AtomicU64,
    pub(crate) backpressure_waits: AtomicU64,
    pub(crate) pongs_dropped: AtomicU64,
    pub(crate) writes: AtomicU64,
    pub(crate) reads: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, AtomicOrdering::Relaxed);
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves plain maps behind;
        // they are still consistent enough to fail everyone cleanly.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a waiter for the answer to `req`, unless the connection is
    /// over; a `barrier` (flush) also fails on a refusal that came before it.
    pub(crate) fn register(
        &self,
        req: u64,
        barrier: bool,
    ) -> Result<oneshot::Receiver<ReplyResult>, Error> {
        let mut st = self.state();
        if let Some(e) = &st.closed {
            return Err(e.clone());
        }
        let (tx, rx) = oneshot::channel();
        st.pending.insert(req, Pending { tx, barrier });
        Ok(rx)
    }

    fn is_barrier(&self, req: u64) -> bool {
        self.state().pending.get(&req).is_some_and(|p| p.barrier)
    }

    /// Forgets the waiter for `req` (it gave up or was cancelled).
    pub(crate) fn forget(&self, req: u64) {
        self.state().pending.remove(&req);
    }

    /// Registers subscription `sid`'s channel before its subscribe is sent,
    /// so deliveries that follow the broker's Ok find it.
    pub(crate) fn add_subscription(&self, sid: u64, tx: SubSender) -> Result<(), Error> {
        let mut st = self.state();
        if let Some(e) = &st.closed {
            return Err(e.clone());
        }
        st.subs.insert(sid, tx);
        Ok(())
    }

    /// Stops routing deliveries to `sid`; with `notify_broker`, also queues
    /// an unsubscribe frame (`req` is a fresh id whose answer nobody awaits).
    pub(crate) fn remove_subscription(&self, sid: u64, notify_broker: Option<u64>) {
        let mut st = self.state();
        st.subs.remove(&sid);
        if let (Some(req), None) = (notify_broker, &st.closed) {
            st.control.push(Request::Unsubscribe { req, sid });
            drop(st);
            self.control.notify_one();
        }
    }

    /// Why the connection ended, if it has.
    pub(crate) fn closed(&self) -> Option<Error> {
        self.state().closed.clone()
    }

    /// The error to report when the connection task is gone.
    pub(crate) fn gone(&self) -> Error {
        self.closed().unwrap_or_else(|| Error::Disconnected {
            code: None,
            reason: "the connection task ended".into(),
        })
    }

    /// The causal context this client would attach to a publish now.
    pub(crate) fn context(&self) -> CausalContext {
        self.state().context.clone()
    }

    /// Ends the connection: every waiter gets `err`, every subscription
    /// stream ends (reporting `err` unless it is [`Error::Closed`]).
    fn finish(&self, err: Error) {
        let mut st = self.state();
        if st.closed.is_none() {
            st.closed = Some(err.clone());
        }
        for (_, p) in st.pending.drain() {
            let _ = p.tx.send(Err(err.clone()));
        }
        st.subs.clear();
        st.control.clear();
    }
}

/// Runs the connection until it fails, the client closes it, or every
/// handle is gone. `buf` holds bytes read past the handshake. The stream is
/// a plain TCP socket's halves or a TLS stream's.
pub(crate) async fn run<R, W>(
    rd: R,
    wr: W,
    buf: BytesMut,
    max_frame: usize,
    cmds: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let reader = read_loop(rd, buf, max_frame, &shared);
    tokio::pin!(reader);
    let end = tokio::select! {
        err = &mut reader => err,
        res = write_loop(wr, cmds, &shared) => match res {
            Ok(()) => Error::Closed,
            // A broker that closes says why first; a write can fail before
            // that reached us, so let the reader catch up before blaming the
            // socket.
            Err(write_err) => tokio::time::timeout(LAST_WORD_GRACE, &mut reader)
                .await
                .unwrap_or(write_err),
        },
    };
    tracing::debug!(reason = %end, "client connection ended");
    shared.finish(end);
}

/// Reads and dispatches frames until the connection breaks; returns why.
async fn read_loop<R: AsyncRead + Unpin>(
    mut rd: R,
    mut buf: BytesMut,
    max_frame: usize,
    shared: &Shared,
) -> Error {
    // A connection-level error (`Error { req: 0 }`) is either the broker's
    // last word before it closes (then it is the reason we report) or a
    // refusal of something that had no req id, such as a publish without
    // confirmation (then the next flush reports it: the broker answers a
    // connection's requests in order, after what it sent before).
    let mut last_word: Option<(ErrorCode, String)> = None;
    let mut unreported: Option<(ErrorCode, String)> = None;
    let mut batches = Batches::default();
    loop {
        // Every whole frame already buffered first: one read often brings many.
        loop {
            let reply = match Reply::decode(&mut buf, max_frame) {
                Ok(Some(reply)) => reply,
                Ok(None) => break,
                Err(e) => return Error::Protocol(format!("bad frame from the broker: {e}")),
            };
            let full = match reply {
                Reply::Message(d) => {
                    let d = *d;
                    batches.add(d.sid, Event::Message(Message::from_delivery(d)))
                }
                Reply::Discontinuity {
                    sid,
                    from_view,
                    to_view,
                    reason,
                } => batches.add(
                    sid,
                    Event::Discontinuity(Discontinuity {
                        from_view,
                        to_view,
                        reason,
                    }),
                ),
                Reply::Error {
                    req: 0,
                    code,
                    message,
                } => {
                    tracing::warn!(code = code.as_str(), %message, "broker reported an error");
                    last_word = Some((code, message.clone()));
                    unreported = Some((code, message));
                    continue;
                }
                reply => {
                    // Whatever was delivered before an answer is in its
                    // subscription before the answer is (a flush relies on it).
                    batches.hand_over(shared).await;
                    match reply {
                        Reply::Cluster { req, .. }
                            if unreported.is_some() && shared.is_barrier(req) =>
                        {
                            if let Some((code, message)) = unreported.take() {
                                complete(
                                    shared,
                                    req,
                                    Err(Error::from_connection_error(code, message)),
                                );
                            }
                        }
                        reply => {
                            if let Err(e) = dispatch(reply, shared) {
                                return e;
                            }
                        }
                    }
                    false
                }
            };
            if full {
                batches.hand_over(shared).await;
            }
            last_word = None;
        }
        batches.hand_over(shared).await;
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) => {
                return match last_word {
                    Some((code, message)) => Error::from_connection_error(code, message),
                    None => Error::Disconnected {
                        code: None,
                        reason: "the broker closed the connection".into(),
                    },
                }
            }
            Ok(_) => bump(&shared.stats.reads),
            Err(e) => return Error::io(&e),
        }
    }
}

/// Events decoded from the bytes of one read, per subscription, not yet
/// handed over: at most [`DELIVERY_BATCH`] per subscription, and at most
/// what one read brought in.
#[derive(Debug, Default)]
struct Batches {
    /// By `sid`; a connection has few subscriptions, so a `Vec`.
    by_sid: Vec<(u64, Vec<Event>)>,
}

impl Batches {
    /// Adds an event for `sid`; true when its batch is full.
    fn add(&mut self, sid: u64, event: Event) -> bool {
        let i = match self.by_sid.iter().position(|(s, _)| *s == sid) {
            Some(i) => i,
            None => {
                self.by_sid.push((sid, Vec::with_capacity(16)));
                self.by_sid.len() - 1
            }
        };
        let batch = &mut self.by_sid[i].1;
        batch.push(event);
        batch.len() >= DELIVERY_BATCH
    }

    /// Hands every batch to its subscription, in order. Waits only when a
    /// subscription's channel is full, which is the back-pressure this
    /// reader exerts.
    async fn hand_over(&mut self, shared: &Shared) {
        for (sid, events) in self.by_sid.drain(..) {
            let messages = events
                .iter()
                .filter(|e| matches!(e, Event::Message(_)))
                .count();
            shared
                .stats
                .delivered
                .fetch_add(messages as u64, AtomicOrdering::Relaxed);
            let sub = {
                let mut st = shared.state();
                for e in &events {
                    if let Event::Message(m) = e {
                        if !m.context.is_empty() {
                            st.context.merge(&m.context);
                        }
                    }
                }
                st.subs.get(&sid).cloned()
            };
            match sub {
                Some(sub) => send_events(&sub, events, shared).await,
                None => {
                    shared
                        .stats
                        .dropped_unsubscribed
                        .fetch_add(events.len() as u64, AtomicOrdering::Relaxed);
                }
            }
        }
    }
}

/// Sends `events` to one subscription in chunks that fit its budgets
/// (usually one chunk), waiting for room.
async fn send_events(sub: &SubSender, events: Vec<Event>, shared: &Shared) {
    let size = |e: &Event| match e {
        Event::Message(m) => m.payload.len(),
        Event::Discontinuity(_) => 0,
    };
    let (max_events, max_bytes) = (sub.events.max(), sub.bytes.max());
    let total: usize = events.iter().map(size).sum();
    if events.len() <= max_events && total <= max_bytes {
        send_chunk(sub, events, total, shared).await;
        return;
    }
    let mut chunk = Vec::new();
    let mut bytes = 0;
    for e in events {
        let n = size(&e);
        if !chunk.is_empty() && (chunk.len() >= max_events || bytes + n > max_bytes) {
            send_chunk(sub, std::mem::take(&mut chunk), bytes, shared).await;
            bytes = 0;
        }
        bytes += n;
        chunk.push(e);
    }
    if !chunk.is_empty() {
        send_chunk(sub, chunk, bytes, shared).await;
    }
}

/// Sends one chunk (within the event bound; a single event may exceed the
/// byte bound and is charged the whole of it).
async fn send_chunk(sub: &SubSender, events: Vec<Event>, bytes: usize, shared: &Shared) {
    let count = sub.events.charge(events.len());
    let bytes = sub.bytes.charge(bytes);
    let have_events = sub.events.try_take(count);
    if !(have_events && sub.bytes.try_take(bytes)) {
        // Counted before waiting: the wait may last until the broker gives up on us.
        bump(&shared.stats.backpressure_waits);
        if !have_events {
            sub.events.take(count).await;
        }
        sub.bytes.take(bytes).await;
    }
    let n = events.len();
    let queued = Queued {
        events,
        count,
        bytes,
    };
    // The budgets bound the channel before its own capacity does, so this
    // does not wait but for a moment of reordering between the two.
    if sub.tx.send(queued).await.is_err() {
        sub.events.release(count);
        sub.bytes.release(bytes);
        shared
            .stats
            .dropped_unsubscribed
            .fetch_add(n as u64, AtomicOrdering::Relaxed);
    }
}

/// Routes one frame from the broker that is not a delivery.
fn dispatch(reply: Reply, shared: &Shared) -> Result<(), Error> {
    match reply {
        Reply::Message(_) | Reply::Discontinuity { .. } => {
            // Batched by the reader; never routed here.
        }
        Reply::Ok { req } => complete(shared, req, Ok(Reply::Ok { req })),
        r @ Reply::Error { req, .. } => complete(shared, req, Ok(r)),
        r @ Reply::Topics { req, .. } => complete(shared, req, Ok(r)),
        r @ Reply::Cluster { req, .. } => complete(shared, req, Ok(r)),
        r @ Reply::Pong { nonce } => complete(shared, nonce, Ok(r)),
        Reply::Ping { nonce } => {
            let mut st = shared.state();
            let owed = st
                .control
                .iter()
                .filter(|r| matches!(r, Request::Pong { .. }))
                .count();
            if owed < MAX_QUEUED_PONGS {
                st.control.push(Request::Pong { nonce });
                drop(st);
                shared.control.notify_one();
            } else {
                bump(&shared.stats.pongs_dropped);
            }
        }
        Reply::Welcome { .. } => {
            return Err(Error::Protocol("a second welcome from the broker".into()))
        }
    }
    Ok(())
}

/// Hands an answer to whoever waits for `req`; nobody may (it timed out).
fn complete(shared: &Shared, req: u64, reply: ReplyResult) {
    let waiter = shared.state().pending.remove(&req);
    match waiter {
        Some(p) => {
            let _ = p.tx.send(reply);
        }
        None => tracing::debug!(req, "answer for a request nobody waits for"),
    }
}

/// Writes commands in batches until the handles are gone (`Ok`), the client
/// closes (`Ok`), or the socket fails (`Err`).
async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut cmds: mpsc::Receiver<Command>,
    shared: &Shared,
) -> Result<(), Error> {
    let mut out = BytesMut::with_capacity(WRITE_BATCH);
    let mut closing: Option<oneshot::Sender<()>> = None;
    let mut open = true;
    while open && closing.is_none() {
        tokio::select! {
            biased;
            () = shared.control.notified() => {}
            cmd = cmds.recv() => match cmd {
                Some(cmd) => encode(cmd, &mut out, shared, &mut closing),
                None => open = false,
            },
        }
        // Take everything else already queued, up to one batch.
        while out.len() < WRITE_BATCH && closing.is_none() {
            match cmds.try_recv() {
                Ok(cmd) => encode(cmd, &mut out, shared, &mut closing),
                Err(_) => break,
            }
        }
        let control = std::mem::take(&mut shared.state().control);
        for req in control {
            req.encode(&mut out);
        }
        if !out.is_empty() {
            wr.write_all(&out).await.map_err(|e| Error::io(&e))?;
            // TLS holds records until flushed; on plain TCP this returns at once.
            wr.flush().await.map_err(|e| Error::io(&e))?;
            bump(&shared.stats.writes);
            out.clear();
        }
    }
    let _ = wr.shutdown().await;
    if let Some(done) = closing {
        let _ = done.send(());
    }
    Ok(())
}

fn encode(
    cmd: Command,
    out: &mut BytesMut,
    shared: &Shared,
    closing: &mut Option<oneshot::Sender<()>>,
) {
    match cmd {
        Command::Request(req) => req.encode(out),
        Command::Publish {
            confirm,
            topic,
            payload,
        } => {
            bump(&shared.stats.published);
            let st = shared.state();
            let req = Request::Publish {
                confirm,
                topic,
                context: st.context.clone(),
                payload,
            };
            drop(st);
            req.encode(out);
        }
        Command::Close(done) => *closing = Some(done),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn the_byte_budget_blocks_until_room_is_released() {
        let b = Arc::new(Budget::new(100));
        assert_eq!(b.charge(500), 100, "a large event takes the whole budget");
        assert!(b.try_take(60));
        assert!(!b.try_take(60), "over the budget");
        // A failed take must not leave a wake-up behind (the waiter would spin).
        let waiter = {
            let b = Arc::clone(&b);
            tokio::spawn(async move { b.take(60).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "took bytes that are not there");
        b.release(60);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the release did not wake the waiter")
            .unwrap();
        assert!(!b.try_take(41));
        assert!(b.try_take(40));
    }
}
