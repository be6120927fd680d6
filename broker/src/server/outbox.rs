//! The bounded outbound queue of one client connection.
//!
//! The driver (deliveries, answers) and the connection's reader (welcome,
//! pong, errors) push into it; the connection's writer drains it in
//! batches. It is bounded twice, in frames and in bytes; a push that would
//! exceed either fails, and the driver then disconnects the client as a
//! slow consumer (the NATS policy) instead of growing without bound or
//! slowing every other subscriber down.
//!
//! Direct writes: while the connection's writer is idle (nothing queued,
//! nothing of its own unwritten) the driver writes a frame straight to the
//! socket with a non-blocking write ([`Outbox::push_direct`]), which saves
//! the hand-off to the writer task on every delivery at low rates. What the
//! socket did not take is left for the writer (woken for it), which writes it
//! before anything queued after it: per-connection order is kept, and the
//! one unfinished frame is held outside the queue's bound just as the
//! writer's own encoded batch is.
//!
//! Only plain TCP connections attach their socket: a TLS connection's bytes
//! must pass its TLS session, so its outbox is never attached and every
//! item takes the queue (tls.rs).

use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Buf;
use tokio::net::tcp::OwnedWriteHalf;

use ordo_wire::client::{DeliveryRef, FrameBuf, Reply};
use tokio::sync::{mpsc, Notify};

use crate::engine::Delivered;

/// One item queued for a client.
#[derive(Debug)]
pub enum Out {
    /// A reply frame.
    Reply(Reply),
    /// A delivery for subscription `sid`; the message is shared by every
    /// subscriber and encoded by each connection's writer.
    Deliver { sid: u64, msg: Arc<Delivered> },
    /// Deliveries in order, queued at once: the driver hands a connection
    /// everything one pass produced for it in one push (one wake-up of the
    /// writer). Counts as one frame per delivery against the frame bound.
    Deliveries(Vec<(u64, Arc<Delivered>)>),
    /// Flush what was queued before, then close (after a fatal error reply).
    Close,
}

impl Out {
    /// Bytes this item is charged against the byte bound: close to its
    /// encoded size, without encoding it.
    pub fn charge(&self) -> usize {
        match self {
            Out::Deliver { msg, .. } => delivery_charge(msg),
            Out::Deliveries(items) => items.iter().map(|(_, m)| delivery_charge(m)).sum(),
            Out::Reply(Reply::Error { message, .. }) => 32 + message.len(),
            Out::Reply(Reply::Topics { topics, .. }) => {
                32 + topics.iter().map(|t| 8 + t.name.len()).sum::<usize>()
            }
            Out::Reply(Reply::Cluster { view, .. }) => 64 + view.members.len() * 12,
            Out::Reply(Reply::Discontinuity { reason, .. }) => 48 + reason.len(),
            Out::Reply(_) | Out::Close => 32,
        }
    }

    /// Frames this item counts against the frame bound.
    pub fn frames(&self) -> usize {
        match self {
            Out::Deliveries(items) => items.len(),
            _ => 1,
        }
    }

    /// Appends the frame(s) to `out`; returns false for [`Out::Close`].
    /// Large payloads are not copied: `out` writes them from the datagram.
    pub fn encode(&self, out: &mut FrameBuf) -> bool {
        match self {
            Out::Reply(r) => r.encode(out.copied()),
            Out::Deliver { sid, msg } => encode_delivery(*sid, msg, out),
            Out::Deliveries(items) => {
                for (sid, msg) in items {
                    encode_delivery(*sid, msg, out);
                }
            }
            Out::Close => return false,
        }
        true
    }
}

/// Bytes a delivery is charged: what a queued one holds in memory, not only
/// its encoded size. The shared `Arc<Delivered>` (with its reference counts
/// and allocator rounding) stays alive as long as this subscriber's copy is
/// queued, however fast the others are; the payload slice keeps its bytes of
/// the received datagram alive together with the message's header there
/// (~64 bytes and the topic again); and the queue slot of the `(sid, Arc)`.
fn delivery_charge(msg: &Delivered) -> usize {
    const HELD: usize = std::mem::size_of::<Delivered>() + 32 + 64 + 16;
    HELD + 2 * msg.topic.len() + msg.payload.len() + msg.context.len() * 24
}

fn encode_delivery(sid: u64, msg: &Delivered, out: &mut FrameBuf) {
    DeliveryRef {
        sid,
        topic: &msg.topic,
        ordering: msg.ordering,
        publisher: msg.publisher,
        origin: msg.origin,
        seq: msg.seq,
        context: &msg.context,
        gseq: msg.gseq,
        payload: &msg.payload,
    }
    .encode_vectored(&msg.payload, out);
}

/// Why a push did not queue the item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The queue is over its frame or byte bound: the client is a slow consumer.
    Full,
    /// The connection is closing or gone.
    Closed,
}

#[derive(Debug)]
struct Shared {
    queued_bytes: AtomicUsize,
    max_bytes: usize,
    /// Frames queued (a batch of deliveries counts each); bounded by `max_frames`.
    queued_frames: AtomicUsize,
    max_frames: usize,
    /// Set once: the driver gave up on this client (slow consumer).
    killed: AtomicBool,
    kill: Notify,
    /// Set by the connection when it ends, before it tells the driver.
    closed: AtomicBool,
    /// Who may write to the socket; see [`Direct`].
    direct: Mutex<Direct>,
    /// Wakes the writer for what a direct write left unwritten.
    direct_wake: Notify,
}

/// The socket as shared by the driver's direct writes and the writer.
#[derive(Debug, Default)]
struct Direct {
    /// The connection's socket; `None` until attached (and in unit tests).
    wr: Option<Arc<OwnedWriteHalf>>,
    /// The writer waits with nothing queued and nothing unwritten: a direct
    /// write may go to the socket. Only the writer sets it, under this lock;
    /// it clears it (under the lock) before it writes anything itself.
    idle: bool,
    /// The direct writer's encoding buffer; when not empty, the unwritten
    /// tail of a direct write, which the writer takes first (`idle` is then
    /// false, so at most one such tail exists).
    buf: FrameBuf,
}

/// The direct writer's buffer is dropped after a write beyond this capacity.
const DIRECT_BUF_KEEP: usize = 64 * 1024;
/// Most slices handed to one vectored write (as tokio's `write_buf`).
const MAX_IOV: usize = 64;

/// Writes what `buf` holds without waiting, until it is empty or the socket
/// would block; an error is the socket's failure.
pub fn write_now(wr: &OwnedWriteHalf, buf: &mut FrameBuf) -> std::io::Result<()> {
    while buf.has_remaining() {
        let mut slices = [IoSlice::new(&[]); MAX_IOV];
        let n = buf.chunks_vectored(&mut slices);
        match wr.try_write_vectored(&slices[..n]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(k) => buf.advance(k),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The sending side; cheap to clone.
#[derive(Debug, Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Out>,
    shared: Arc<Shared>,
}

/// Marks a connection as ended; see [`Outbox::close_handle`].
#[derive(Debug)]
pub struct CloseHandle(Arc<Shared>);

impl CloseHandle {
    /// Marks the connection as ended (the driver ignores a later registration).
    pub fn mark_closed(&self) {
        self.0.closed.store(true, AtomicOrdering::Release);
    }
}

/// The connection writer's side.
#[derive(Debug)]
pub struct OutboxReceiver {
    rx: mpsc::Receiver<Out>,
    shared: Arc<Shared>,
}

/// A queue bounded by `max_frames` items and `max_bytes` charged bytes.
pub fn outbox(max_frames: usize, max_bytes: usize) -> (Outbox, OutboxReceiver) {
    let (tx, rx) = mpsc::channel(max_frames.max(1));
    let shared = Arc::new(Shared {
        queued_bytes: AtomicUsize::new(0),
        max_bytes,
        queued_frames: AtomicUsize::new(0),
        max_frames: max_frames.max(1),
        killed: AtomicBool::new(false),
        kill: Notify::new(),
        closed: AtomicBool::new(false),
        direct: Mutex::new(Direct::default()),
        direct_wake: Notify::new(),
    });
    (
        Outbox {
            tx,
            shared: Arc::clone(&shared),
        },
        OutboxReceiver { rx, shared },
    )
}

impl Outbox {
    /// Queues an item without waiting.
    pub fn push(&self, item: Out) -> Result<(), PushError> {
        if self.shared.killed.load(AtomicOrdering::Relaxed) {
            return Err(PushError::Closed);
        }
        let charge = item.charge();
        let frames = item.frames();
        let shared = &self.shared;
        let before = shared
            .queued_bytes
            .fetch_add(charge, AtomicOrdering::Relaxed);
        let before_frames = shared
            .queued_frames
            .fetch_add(frames, AtomicOrdering::Relaxed);
        // One item may always be queued into an empty queue, so a single
        // large message (or one pass's batch) never counts as slow
        // consumption by itself.
        if (before > 0 && before + charge > shared.max_bytes)
            || (before_frames > 0 && before_frames + frames > shared.max_frames)
        {
            shared
                .queued_bytes
                .fetch_sub(charge, AtomicOrdering::Relaxed);
            shared
                .queued_frames
                .fetch_sub(frames, AtomicOrdering::Relaxed);
            return Err(PushError::Full);
        }
        self.tx.try_send(item).map_err(|e| {
            shared
                .queued_bytes
                .fetch_sub(charge, AtomicOrdering::Relaxed);
            shared
                .queued_frames
                .fetch_sub(frames, AtomicOrdering::Relaxed);
            match e {
                mpsc::error::TrySendError::Full(_) => PushError::Full,
                mpsc::error::TrySendError::Closed(_) => PushError::Closed,
            }
        })
    }

    /// Queues an item, or writes it straight to the socket when the writer
    /// is idle with nothing queued (see the module's docs). The driver's path:
    /// it saves a wake-up of the writer task per item.
    pub fn push_direct(&self, item: Out) -> Result<(), PushError> {
        let shared = &self.shared;
        if matches!(item, Out::Close) || shared.killed.load(AtomicOrdering::Relaxed) {
            return self.push(item);
        }
        // Never wait for the lock: the writer holds it only to change hands.
        let Ok(mut guard) = shared.direct.try_lock() else {
            return self.push(item);
        };
        let direct = &mut *guard;
        let wr = match &direct.wr {
            Some(wr)
                if direct.idle
                    && direct.buf.is_empty()
                    && shared.queued_frames.load(AtomicOrdering::Acquire) == 0 =>
            {
                wr
            }
            _ => {
                drop(guard);
                return self.push(item);
            }
        };
        item.encode(&mut direct.buf);
        // A failed write leaves the frame to the writer, which meets the
        // error again and ends the connection.
        let _ = write_now(wr, &mut direct.buf);
        if !direct.buf.is_empty() {
            // The writer finishes it, before anything queued after it.
            direct.idle = false;
            shared.direct_wake.notify_one();
        } else if direct.buf.capacity() > DIRECT_BUF_KEEP {
            // One large batch must not pin its buffer for the connection's life.
            direct.buf = FrameBuf::default();
        }
        Ok(())
    }

    /// Gives up on the client: the writer drops what is queued, sends a
    /// slow-consumer error as best it can, and closes.
    pub fn kill(&self) {
        if !self.shared.killed.swap(true, AtomicOrdering::Relaxed) {
            self.shared.kill.notify_one();
        }
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(AtomicOrdering::Acquire)
    }

    /// A handle that marks the connection closed without keeping the queue open.
    pub fn close_handle(&self) -> CloseHandle {
        CloseHandle(Arc::clone(&self.shared))
    }

    /// Bytes currently charged to the queue.
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued_bytes.load(AtomicOrdering::Relaxed)
    }
}

impl OutboxReceiver {
    /// Waits for items and moves up to `limit` into `batch`; 0 means every
    /// sender is gone.
    pub async fn recv_many(&mut self, batch: &mut Vec<Out>, limit: usize) -> usize {
        self.rx.recv_many(batch, limit).await
    }

    /// Takes one item if one is queued.
    pub fn try_recv(&mut self) -> Option<Out> {
        self.rx.try_recv().ok()
    }

    /// Releases the byte charge and frame count of items taken off the queue.
    pub fn release(&self, charge: usize, frames: usize) {
        self.shared
            .queued_bytes
            .fetch_sub(charge, AtomicOrdering::Relaxed);
        self.shared
            .queued_frames
            .fetch_sub(frames, AtomicOrdering::Relaxed);
    }

    /// Lets the driver write to `wr` directly while the writer is idle.
    pub fn attach(&self, wr: Arc<OwnedWriteHalf>) {
        self.direct().wr = Some(wr);
    }

    fn direct(&self) -> MutexGuard<'_, Direct> {
        // A panic while holding the lock leaves nothing half-done that
        // matters here (a flag and a buffer of whole frames' bytes).
        self.shared
            .direct
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The writer has written everything and waits: direct writes may go.
    /// Call only with nothing taken off the queue and nothing unwritten.
    pub fn set_idle(&self) {
        let mut d = self.direct();
        d.idle = d.wr.is_some();
    }

    /// The writer is about to write: stops direct writes (waiting for one
    /// in progress) and moves what a direct write left unwritten into `out`,
    /// which must be empty, so it goes first.
    pub fn set_busy(&self, out: &mut FrameBuf) {
        let mut d = self.direct();
        d.idle = false;
        if !d.buf.is_empty() && out.is_empty() {
            *out = std::mem::take(&mut d.buf);
        }
    }

    /// A handle to wait for the kill while this receiver is borrowed.
    pub fn kill_watch(&self) -> KillWatch {
        KillWatch(Arc::clone(&self.shared))
    }
}

/// Waits for [`Outbox::kill`] (and for a direct write's tail); see
/// [`OutboxReceiver::kill_watch`].
#[derive(Debug)]
pub struct KillWatch(Arc<Shared>);

impl KillWatch {
    /// Resolves once the outbox was killed (immediately if it already was).
    pub async fn killed(&self) {
        if self.0.killed.load(AtomicOrdering::Relaxed) {
            return;
        }
        self.0.kill.notified().await;
    }

    /// Whether the outbox was killed.
    pub fn is_killed(&self) -> bool {
        self.0.killed.load(AtomicOrdering::Relaxed)
    }

    /// Resolves when a direct write left bytes for the writer (or spuriously).
    pub async fn direct_woken(&self) {
        self.0.direct_wake.notified().await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn ok(req: u64) -> Out {
        Out::Reply(Reply::Ok { req })
    }

    #[test]
    fn bounded_by_frames_and_bytes() {
        let (tx, mut rx) = outbox(2, 1 << 20);
        tx.push(ok(1)).unwrap();
        tx.push(ok(2)).unwrap();
        assert_eq!(tx.push(ok(3)), Err(PushError::Full), "frame bound");
        let item = rx.try_recv().unwrap();
        rx.release(item.charge(), item.frames());
        tx.push(ok(3)).unwrap();

        let (tx, mut rx) = outbox(100, 100);
        tx.push(ok(1)).unwrap();
        tx.push(ok(2)).unwrap();
        tx.push(ok(3)).unwrap();
        assert_eq!(tx.push(ok(4)), Err(PushError::Full), "byte bound");
        while let Some(item) = rx.try_recv() {
            rx.release(item.charge(), item.frames());
        }
        assert_eq!(tx.queued_bytes(), 0);
        let big = Out::Reply(Reply::Error {
            req: 0,
            code: ordo_wire::client::ErrorCode::Internal,
            message: "x".repeat(500),
        });
        assert!(tx.push(big).is_ok(), "one item always fits an empty queue");
    }

    fn delivered() -> Arc<Delivered> {
        Arc::new(Delivered {
            topic: "t".into(),
            ordering: ordo_wire::Ordering::Fifo,
            publisher: 1,
            origin: ordo_wire::Origin::default(),
            seq: ordo_wire::Seq(1),
            context: ordo_wire::CausalContext::new(),
            gseq: None,
            payload: bytes::Bytes::from_static(b"payload"),
            published_at_us: 0,
        })
    }

    #[test]
    fn a_batch_counts_each_delivery_against_the_frame_bound() {
        let (tx, mut rx) = outbox(10, 1 << 20);
        let batch = |n: usize| Out::Deliveries((0..n).map(|i| (i as u64, delivered())).collect());
        // Alone in an empty queue a batch always fits, however long.
        tx.push(batch(25)).unwrap();
        assert_eq!(tx.push(ok(1)), Err(PushError::Full));
        let item = rx.try_recv().unwrap();
        assert_eq!(item.frames(), 25);
        assert_eq!(
            item.charge(),
            25 * Out::Deliver {
                sid: 0,
                msg: delivered()
            }
            .charge()
        );
        rx.release(item.charge(), item.frames());
        tx.push(batch(6)).unwrap();
        assert_eq!(tx.push(batch(5)), Err(PushError::Full), "6 + 5 frames > 10");
        tx.push(batch(4)).unwrap();
        // The frames come out in order, each a whole delivery frame.
        let mut frames = FrameBuf::default();
        let mut sids = Vec::new();
        while let Some(item) = rx.try_recv() {
            rx.release(item.charge(), item.frames());
            assert!(item.encode(&mut frames));
        }
        let n = frames.len();
        let mut out = bytes::BytesMut::from(&bytes::Buf::copy_to_bytes(&mut frames, n)[..]);
        while let Some(reply) = Reply::decode(&mut out, 1 << 20).unwrap() {
            match reply {
                Reply::Message(d) => sids.push(d.sid),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(sids, vec![0, 1, 2, 3, 4, 5, 0, 1, 2, 3]);
        assert_eq!(tx.queued_bytes(), 0);
    }

    #[tokio::test]
    async fn kill_is_seen_and_refuses_more() {
        let (tx, rx) = outbox(4, 1024);
        let watch = rx.kill_watch();
        tx.kill();
        watch.killed().await;
        assert!(watch.is_killed());
        assert_eq!(tx.push(ok(1)), Err(PushError::Closed));
    }

    /// A connected pair: the server side's write half, the client's stream.
    async fn socket_pair() -> (
        Arc<OwnedWriteHalf>,
        tokio::net::tcp::OwnedReadHalf,
        tokio::net::TcpStream,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (rd, wr) = server.into_split();
        (Arc::new(wr), rd, client)
    }

    /// Reads `n` replies from the client side.
    async fn read_replies(client: &mut tokio::net::TcpStream, n: usize) -> Vec<Reply> {
        use tokio::io::AsyncReadExt;
        let mut buf = bytes::BytesMut::new();
        let mut replies = Vec::new();
        while replies.len() < n {
            while let Some(r) = Reply::decode(&mut buf, 64 << 20).unwrap() {
                replies.push(r);
            }
            if replies.len() < n {
                let got = tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    client.read_buf(&mut buf),
                )
                .await
                .expect("no bytes from the broker side")
                .unwrap();
                assert!(got > 0, "closed early");
            }
        }
        replies
    }

    #[tokio::test]
    async fn direct_write_only_while_the_writer_is_idle() {
        let (wr, _rd, mut client) = socket_pair().await;
        let (tx, mut rx) = outbox(100, 1 << 20);
        // Not attached: queued.
        tx.push_direct(ok(1)).unwrap();
        assert_eq!(tx.queued_bytes(), ok(1).charge());
        let item = rx.try_recv().unwrap();
        rx.release(item.charge(), item.frames());
        rx.attach(Arc::clone(&wr));
        // Attached but the writer is not idle: queued.
        tx.push_direct(ok(2)).unwrap();
        assert!(rx.try_recv().is_some(), "queued while the writer is busy");
        rx.release(ok(2).charge(), 1);
        rx.set_idle();
        // Idle with an empty queue: straight to the socket, nothing queued.
        tx.push_direct(ok(3)).unwrap();
        assert!(rx.try_recv().is_none());
        assert_eq!(tx.queued_bytes(), 0);
        // Something queued: the next item goes behind it, not around it.
        tx.push(ok(4)).unwrap();
        tx.push_direct(ok(5)).unwrap();
        assert!(matches!(
            rx.try_recv(),
            Some(Out::Reply(Reply::Ok { req: 4 }))
        ));
        assert!(matches!(
            rx.try_recv(),
            Some(Out::Reply(Reply::Ok { req: 5 }))
        ));
        let got = read_replies(&mut client, 1).await;
        assert_eq!(got, vec![Reply::Ok { req: 3 }]);
    }

    #[tokio::test]
    async fn a_direct_write_the_socket_cannot_take_is_finished_first() {
        let (wr, _rd, mut client) = socket_pair().await;
        let (tx, mut rx) = outbox(100, 64 << 20);
        rx.attach(Arc::clone(&wr));
        rx.set_idle();
        let watch = rx.kill_watch();
        // Far more than the socket buffers hold while nobody reads.
        let mut msg = delivered();
        Arc::get_mut(&mut msg).unwrap().payload = bytes::Bytes::from(vec![7u8; 16 << 20]);
        tx.push_direct(Out::Deliver { sid: 1, msg }).unwrap();
        // The writer is woken for the tail, and what follows is queued.
        tokio::time::timeout(std::time::Duration::from_secs(5), watch.direct_woken())
            .await
            .expect("writer not woken for the tail");
        tx.push_direct(ok(2)).unwrap();
        assert_eq!(tx.queued_bytes(), ok(2).charge(), "queued behind the tail");
        // The writer's part: the tail first, then the queue.
        let mut out = FrameBuf::default();
        rx.set_busy(&mut out);
        assert!(!out.is_empty(), "the tail moved to the writer");
        let item = rx.try_recv().unwrap();
        rx.release(item.charge(), item.frames());
        assert!(item.encode(&mut out));
        let writer = tokio::spawn(async move {
            while !out.is_empty() {
                write_now(&wr, &mut out).unwrap();
                if !out.is_empty() {
                    wr.writable().await.unwrap();
                }
            }
        });
        let got = read_replies(&mut client, 2).await;
        writer.await.unwrap();
        assert!(matches!(&got[0], Reply::Message(d) if d.sid == 1 && d.payload.len() == 16 << 20));
        assert_eq!(got[1], Reply::Ok { req: 2 });
    }
}
