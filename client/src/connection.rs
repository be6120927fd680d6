//! The connection task: one reader and one writer over the broker's socket,
//! multiplexing requests by `req` id and subscriptions by `sid`.
//!
//! The writer drains every queued command into one buffer before it writes,
//! so a burst of publishes costs one syscall, not one per message. The reader
//! decodes every whole frame a read brought in. A subscription's channel is
//! bounded: when the application stops reading, the reader waits for room and
//! so stops reading the socket, and the broker's slow-consumer policy decides
//! what happens next (rather than this process buffering without bound).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::{Bytes, BytesMut};
use ordo_wire::client::{ErrorCode, Reply, Request};
use ordo_wire::CausalContext;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
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

/// The connection's end of one subscription: a channel bounded in events
/// and a budget bounding the payload bytes waiting in it.
#[derive(Debug, Clone)]
pub(crate) struct SubSender {
    pub(crate) tx: mpsc::Sender<Queued>,
    pub(crate) bytes: Arc<ByteBudget>,
}

/// An event in a subscription's channel with the bytes it holds of the
/// budget; the subscription gives them back when it takes the event out.
#[derive(Debug)]
pub(crate) struct Queued {
    pub(crate) event: Event,
    pub(crate) bytes: usize,
}

/// Payload bytes waiting in one subscription's channel, bounded: one atomic
/// add per event on each side (a semaphore permit per event cost a lock on
/// release), and a wake-up only when the connection reader waits for room.
#[derive(Debug)]
pub(crate) struct ByteBudget {
    used: AtomicUsize,
    max: usize,
    /// Set by a reader about to wait; the next release wakes it.
    waiting: AtomicBool,
    room: Notify,
}

impl ByteBudget {
    pub(crate) fn new(max: usize) -> Self {
        ByteBudget {
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
/// handle is gone. `buf` holds bytes read past the handshake.
pub(crate) async fn run(
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    buf: BytesMut,
    max_frame: usize,
    cmds: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
) {
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
async fn read_loop(
    mut rd: OwnedReadHalf,
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
    loop {
        // Every whole frame already buffered first: one read often brings many.
        loop {
            let reply = match Reply::decode(&mut buf, max_frame) {
                Ok(Some(reply)) => reply,
                Ok(None) => break,
                Err(e) => return Error::Protocol(format!("bad frame from the broker: {e}")),
            };
            match reply {
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
                Reply::Cluster { req, .. } if unreported.is_some() && shared.is_barrier(req) => {
                    if let Some((code, message)) = unreported.take() {
                        complete(
                            shared,
                            req,
                            Err(Error::from_connection_error(code, message)),
                        );
                    }
                }
                reply => {
                    if let Err(e) = dispatch(reply, shared).await {
                        return e;
                    }
                }
            }
            last_word = None;
        }
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

/// Routes one frame from the broker. Waits only when a subscription's
/// channel is full, which is the back-pressure this reader exerts.
async fn dispatch(reply: Reply, shared: &Shared) -> Result<(), Error> {
    let (sid, event) = match reply {
        Reply::Message(d) => {
            bump(&shared.stats.delivered);
            let d = *d;
            let sid = d.sid;
            (sid, Event::Message(Message::from_delivery(d)))
        }
        Reply::Discontinuity {
            sid,
            from_view,
            to_view,
            reason,
        } => (
            sid,
            Event::Discontinuity(Discontinuity {
                from_view,
                to_view,
                reason,
            }),
        ),
        Reply::Ok { req } => {
            complete(shared, req, Ok(Reply::Ok { req }));
            return Ok(());
        }
        r @ Reply::Error { req, .. } => {
            complete(shared, req, Ok(r));
            return Ok(());
        }
        r @ Reply::Topics { req, .. } => {
            complete(shared, req, Ok(r));
            return Ok(());
        }
        r @ Reply::Cluster { req, .. } => {
            complete(shared, req, Ok(r));
            return Ok(());
        }
        r @ Reply::Pong { nonce } => {
            complete(shared, nonce, Ok(r));
            return Ok(());
        }
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
            return Ok(());
        }
        Reply::Welcome { .. } => {
            return Err(Error::Protocol("a second welcome from the broker".into()))
        }
    };

    let size = match &event {
        Event::Message(m) => m.payload.len(),
        Event::Discontinuity(_) => 0,
    };
    // Fast path under the lock; clone the sender only when we must wait.
    let blocked = {
        let mut st = shared.state();
        if let Event::Message(m) = &event {
            if !m.context.is_empty() {
                st.context.merge(&m.context);
            }
        }
        match st.subs.get(&sid) {
            None => {
                bump(&shared.stats.dropped_unsubscribed);
                return Ok(());
            }
            Some(sub) => {
                let need = sub.bytes.charge(size);
                if sub.bytes.try_take(need) {
                    let queued = Queued { event, bytes: need };
                    match sub.tx.try_send(queued) {
                        Ok(()) => None,
                        Err(mpsc::error::TrySendError::Full(q)) => {
                            Some((sub.clone(), q.event, need, true))
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            sub.bytes.release(need);
                            bump(&shared.stats.dropped_unsubscribed);
                            None
                        }
                    }
                } else {
                    Some((sub.clone(), event, need, false))
                }
            }
        }
    };
    // Slow path: wait for room, which stops this reader and so the socket.
    if let Some((sub, event, need, taken)) = blocked {
        bump(&shared.stats.backpressure_waits);
        if !taken {
            sub.bytes.take(need).await;
        }
        let queued = Queued { event, bytes: need };
        if sub.tx.send(queued).await.is_err() {
            sub.bytes.release(need);
            bump(&shared.stats.dropped_unsubscribed);
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
async fn write_loop(
    mut wr: OwnedWriteHalf,
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
        let b = Arc::new(ByteBudget::new(100));
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
