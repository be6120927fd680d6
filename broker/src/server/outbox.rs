//! The bounded outbound queue of one client connection.
//!
//! The driver (deliveries, answers) and the connection's reader (welcome,
//! pong, errors) push into it; the connection's writer drains it in
//! batches. It is bounded twice, in frames and in bytes; a push that would
//! exceed either fails, and the driver then disconnects the client as a
//! slow consumer (the NATS policy) instead of growing without bound or
//! slowing every other subscriber down.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Arc;

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

    /// A handle to wait for the kill while this receiver is borrowed.
    pub fn kill_watch(&self) -> KillWatch {
        KillWatch(Arc::clone(&self.shared))
    }
}

/// Waits for [`Outbox::kill`]; see [`OutboxReceiver::kill_watch`].
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
}
