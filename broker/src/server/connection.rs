//! One client connection: a reader that decodes requests from a `BytesMut`
//! and hands them to the driver, and a writer that drains the connection's
//! [`Outbox`] in batches (one `write` for everything queued).
//!
//! A connection that breaks the protocol gets one `Error` frame naming what
//! was wrong, then a clean close; nothing it sends can affect another client.
//!
//! The reader and writer are generic over the stream: plain TCP (whose
//! socket the driver may also write to directly, see outbox.rs) or TLS
//! (see tls.rs; queued writes only). Each is compiled for its own stream, so
//! plain TCP pays nothing for TLS being possible.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use ordo_wire::client::{
    delivery_len, frame_len, ErrorCode, FrameBuf, Reply, Request, LEN_PREFIX, PROTOCOL_VERSION,
};
use ordo_wire::WireError;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;

use super::outbox::{outbox, write_now, Out, Outbox, OutboxReceiver, PushError};
use super::tls::TlsWriter;
use super::ServerCtx;
use crate::shell::driver::{Command, PublishItem};
use crate::topics::TopicSpec;

/// Bytes the reader asks the socket for at a time.
const READ_CHUNK: usize = 64 * 1024;
/// Most publishes handed to the driver in one command.
const PUBLISH_BATCH: usize = 256;
/// Items the writer takes off the queue per wake-up.
const WRITE_BATCH: usize = 512;
/// The writer stops adding frames to one write beyond this many bytes
/// (what it holds encoded, outside the queue's bound, stays near this).
const WRITE_BATCH_BYTES: usize = 1024 * 1024;
/// The writer's buffer to start with (it grows to about one batch if needed).
const WRITE_BUFFER_BYTES: usize = 256 * 1024;
/// After a fatal error, how long incoming bytes are drained (so closing does
/// not reset the connection and destroy the error frame in flight).
const LINGER: Duration = Duration::from_millis(500);

/// Where the writer writes: the socket of a plain or of a TLS connection.
pub(crate) trait ClientWrite: Send {
    /// Writes all of `out`, waiting for the socket as needed. Cancel-safe:
    /// what was not written stays in `out`.
    fn write_all(&mut self, out: &mut FrameBuf)
        -> impl Future<Output = std::io::Result<()>> + Send;
    /// Ends our direction of the stream (the peer reads end-of-stream).
    fn close(&mut self) -> impl Future<Output = ()> + Send;
}

/// A plain TCP connection's write half, shared with the driver's direct writes.
struct PlainWriter(Arc<OwnedWriteHalf>);

impl ClientWrite for PlainWriter {
    fn write_all(
        &mut self,
        out: &mut FrameBuf,
    ) -> impl Future<Output = std::io::Result<()>> + Send {
        write_all(&self.0, out)
    }

    async fn close(&mut self) {
        close_write(&self.0);
    }
}

impl ClientWrite for TlsWriter {
    fn write_all(
        &mut self,
        out: &mut FrameBuf,
    ) -> impl Future<Output = std::io::Result<()>> + Send {
        TlsWriter::write_all(self, out)
    }

    fn close(&mut self) -> impl Future<Output = ()> + Send {
        TlsWriter::close(self)
    }
}

/// Serves one accepted plain TCP client until it leaves, breaks the
/// protocol, is dropped as a slow consumer, or the broker shuts down. It
/// must say Hello before `deadline`.
pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    conn: u64,
    ctx: &ServerCtx,
    shutdown: watch::Receiver<bool>,
    deadline: Instant,
) {
    let (rd, wr) = stream.into_split();
    // Shared with the driver's direct writes (see outbox.rs).
    let wr = Arc::new(wr);
    let conn_io = ConnIo {
        peer,
        conn,
        deadline,
    };
    serve_split(
        rd,
        PlainWriter(Arc::clone(&wr)),
        Some(wr),
        conn_io,
        ctx,
        shutdown,
    )
    .await;
}

/// Serves one client whose TLS handshake is done, as [`serve`] does, but
/// without direct writes: they would bypass the TLS layer.
pub(crate) async fn serve_tls(
    stream: TlsStream<TcpStream>,
    peer: SocketAddr,
    conn: u64,
    ctx: &ServerCtx,
    shutdown: watch::Receiver<bool>,
    deadline: Instant,
) {
    let (rd, wr) = tokio::io::split(stream);
    let conn_io = ConnIo {
        peer,
        conn,
        deadline,
    };
    serve_split(rd, TlsWriter(wr), None, conn_io, ctx, shutdown).await;
}

/// Who the connection is and when its Hello is due.
struct ConnIo {
    peer: SocketAddr,
    conn: u64,
    deadline: Instant,
}

/// The reader and the writer of one connection; `direct`, when given, is
/// the socket the driver may write to while the writer is idle.
async fn serve_split<R, W>(
    mut rd: R,
    mut wr: W,
    direct: Option<Arc<OwnedWriteHalf>>,
    conn_io: ConnIo,
    ctx: &ServerCtx,
    shutdown: watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin + Send,
    W: ClientWrite,
{
    let ConnIo {
        peer,
        conn,
        deadline,
    } = conn_io;
    let (tx, mut rx) = outbox(
        ctx.config.client_queue_frames,
        ctx.config.client_queue_bytes,
    );
    if let Some(direct) = direct {
        rx.attach(direct);
    }
    let closer = tx.close_handle();
    let reader = Reader {
        ctx,
        conn,
        peer,
        outbox: tx,
        greeted: false,
        publishes: Vec::new(),
        handshake_deadline: deadline,
    };
    let fatal = {
        let read = reader.run(&mut rd, shutdown.clone());
        let write = write_loop(&mut wr, &mut rx, ctx, shutdown);
        tokio::pin!(read, write);
        tokio::select! {
            fatal = &mut read => {
                closer.mark_closed();
                ctx.driver.gone(conn);
                // Let the writer flush; it ends once the driver drops its
                // sender or after the error frame (Out::Close).
                let _ = tokio::time::timeout(ctx.config.final_flush_timeout, &mut write).await;
                fatal
            }
            _ = &mut write => {
                closer.mark_closed();
                ctx.driver.gone(conn);
                false
            }
        }
    };
    if fatal {
        linger(&mut rd).await;
    }
    tracing::debug!(conn, %peer, "connection closed");
}

/// Reads and discards until the peer closes (or [`LINGER`] passes).
async fn linger<R: AsyncRead + Unpin>(rd: &mut R) {
    let mut scratch = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n) = rd.read(&mut scratch).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

struct Reader<'a> {
    ctx: &'a ServerCtx,
    conn: u64,
    peer: SocketAddr,
    outbox: Outbox,
    greeted: bool,
    /// Publishes decoded from the current read, handed to the driver
    /// together before the next read or the next request of another kind.
    publishes: Vec<PublishItem>,
    /// When Hello is due (a TLS handshake counts against the same timeout).
    handshake_deadline: Instant,
}

/// Whether the reader goes on after a request.
enum Flow {
    Continue,
    /// Stop reading; `true` when the close is for a protocol error.
    Stop(bool),
}

impl Reader<'_> {
    /// Reads until the client leaves or must be dropped; returns true when
    /// it ended on a fatal error (the error frame is queued).
    async fn run<R: AsyncRead + Unpin>(
        mut self,
        rd: &mut R,
        mut shutdown: watch::Receiver<bool>,
    ) -> bool {
        let max_frame = self.ctx.config.limits.max_frame as usize;
        let handshake_deadline = self.handshake_deadline;
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        loop {
            // Handle every complete frame already buffered. The length
            // prefix is checked first so an announced frame is refused
            // before buffering, and memory grows only with bytes that
            // actually arrived (decode would reserve the whole announced
            // frame at once, letting a client pin max_frame for free).
            let missing = loop {
                match frame_len(&buf, max_frame) {
                    Err(e) => return self.bad_frame(e),
                    Ok(None) => break LEN_PREFIX - buf.len(),
                    Ok(Some(n)) if buf.len() < LEN_PREFIX + n => break LEN_PREFIX + n - buf.len(),
                    Ok(Some(_)) => {}
                }
                match Request::decode(&mut buf, max_frame) {
                    Ok(Some(req)) => match self.handle(req).await {
                        Flow::Continue => {}
                        Flow::Stop(fatal) => return fatal,
                    },
                    Ok(None) => break READ_CHUNK,
                    Err(e) => {
                        // What came before the bad frame still counts.
                        let _ = self.flush_publishes().await;
                        return self.bad_frame(e);
                    }
                }
            };
            if let Flow::Stop(fatal) = self.flush_publishes().await {
                return fatal;
            }
            // Room for what the current frame still needs, within one chunk,
            // and never so little that a busy stream is read in dribbles.
            let want = missing.clamp(4096, READ_CHUNK);
            if buf.capacity() - buf.len() < want {
                buf.reserve(want);
            }
            let mid_frame = self.greeted && !buf.is_empty();
            let read = tokio::select! {
                biased;
                _ = crate::server::stopped(&mut shutdown) => return false,
                // Memory per connection grows only with bytes that arrived,
                // but a client that sends most of a large frame and then
                // stalls would pin it forever: a frame in progress must keep
                // moving (no silence longer than the handshake timeout).
                _ = tokio::time::sleep(self.ctx.config.handshake_timeout), if mid_frame => {
                    self.ctx.metrics.protocol_error("stalled_frame");
                    tracing::info!(conn = self.conn, peer = %self.peer, pending = buf.len(),
                        "client stalled in the middle of a frame");
                    return self.fatal(
                        ErrorCode::Protocol,
                        format!(
                            "no bytes for {} s in the middle of a frame ({} bytes of it received); \
                             a client must send each frame without pausing",
                            self.ctx.config.handshake_timeout.as_secs(),
                            buf.len()
                        ),
                    );
                }
                _ = tokio::time::sleep_until(handshake_deadline), if !self.greeted => {
                    self.ctx.metrics.protocol_error("handshake_timeout");
                    return self.fatal(
                        ErrorCode::Protocol,
                        format!(
                            "no Hello within {} s of connecting; a client must open with Hello",
                            self.ctx.config.handshake_timeout.as_secs()
                        ),
                    );
                }
                r = rd.read_buf(&mut buf) => r,
            };
            match read {
                Ok(0) if buf.is_empty() => return false,
                Ok(0) => {
                    self.ctx.metrics.protocol_error("truncated_frame");
                    tracing::info!(conn = self.conn, peer = %self.peer, pending = buf.len(),
                        "client closed in the middle of a frame");
                    // The client may still read (half-close), so say why.
                    return self.fatal(
                        ErrorCode::Protocol,
                        format!(
                            "connection closed in the middle of a frame ({} bytes of an incomplete frame); send whole frames",
                            buf.len()
                        ),
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(conn = self.conn, error = %e, "read failed");
                    return false;
                }
            }
        }
    }

    /// Answers an undecodable frame and stops.
    fn bad_frame(&self, e: WireError) -> bool {
        let metrics = &self.ctx.metrics;
        let (code, message) = match &e {
            WireError::FrameTooLarge { len, max } => {
                metrics.protocol_error("frame_too_large");
                (
                    ErrorCode::FrameTooLarge,
                    format!(
                        "frame of {len} bytes exceeds this broker's limit of {max} bytes (announced in Welcome); \
                         send smaller frames or raise --max-frame on the broker"
                    ),
                )
            }
            other => {
                metrics.protocol_error("undecodable_frame");
                (
                    ErrorCode::Protocol,
                    format!(
                        "undecodable frame ({other}); the stream cannot be trusted any more, so the connection is closed. \
                         Is this an Ordo client speaking protocol version {PROTOCOL_VERSION}?"
                    ),
                )
            }
        };
        tracing::info!(conn = self.conn, peer = %self.peer, error = %e, "dropping client after a bad frame");
        self.fatal(code, message)
    }

    /// Queues a connection-level error and a close; returns `true` (fatal).
    fn fatal(&self, code: ErrorCode, message: String) -> bool {
        let err = Out::Reply(Reply::Error {
            req: 0,
            code,
            message,
        });
        if self.outbox.push(err).is_err() || self.outbox.push(Out::Close).is_err() {
            // The queue is full or gone: nothing more can be said, just close.
            self.outbox.kill();
        }
        true
    }

    /// A request-level error; the connection stays open.
    fn refuse(&self, req: u64, code: ErrorCode, message: String) -> Flow {
        self.answer(Reply::Error { req, code, message })
    }

    /// Queues an answer the reader gives itself (an error, a pong).
    fn answer(&self, reply: Reply) -> Flow {
        match self.outbox.push(Out::Reply(reply)) {
            Ok(()) => Flow::Continue,
            Err(PushError::Full) => {
                // Our own answers overflowing the queue is slow consumption too.
                self.ctx.metrics.slow_consumer();
                self.outbox.kill();
                Flow::Stop(false)
            }
            Err(PushError::Closed) => Flow::Stop(false),
        }
    }

    /// Hands the publishes collected so far to the driver.
    async fn flush_publishes(&mut self) -> Flow {
        if self.publishes.is_empty() {
            return Flow::Continue;
        }
        match self
            .ctx
            .driver
            .send_publishes(self.conn, &mut self.publishes)
            .await
        {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Stop(false),
        }
    }

    async fn send_to_driver(&mut self, cmd: Command) -> Flow {
        // Publishes collected before this request go first, in order.
        if let Flow::Stop(fatal) = self.flush_publishes().await {
            return Flow::Stop(fatal);
        }
        // Blocks while the driver's queue is full: the engine's flow control
        // reaches this client as TCP backpressure.
        match self.ctx.driver.send(cmd).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Stop(false),
        }
    }

    async fn handle(&mut self, req: Request) -> Flow {
        let conn = self.conn;
        if !self.greeted {
            return match req {
                Request::Hello {
                    version,
                    token,
                    name,
                } => self.hello(version, token, name).await,
                other => {
                    self.ctx.metrics.protocol_error("not_hello");
                    Flow::Stop(self.fatal(
                        ErrorCode::Protocol,
                        format!("the first frame must be Hello, got {}", kind(&other)),
                    ))
                }
            };
        }
        match req {
            Request::Hello { .. } => {
                self.ctx.metrics.protocol_error("repeated_hello");
                Flow::Stop(self.fatal(
                    ErrorCode::Protocol,
                    "Hello was already sent on this connection; send it once".into(),
                ))
            }
            Request::Publish {
                confirm,
                topic,
                context,
                payload,
            } => {
                let max = self.ctx.config.limits.max_payload as usize;
                if payload.len() > max {
                    self.ctx.metrics.protocol_error("payload_too_large");
                    // Answers keep the order of the requests before it.
                    if let Flow::Stop(fatal) = self.flush_publishes().await {
                        return Flow::Stop(fatal);
                    }
                    return self.refuse(
                        confirm.unwrap_or(0),
                        ErrorCode::PayloadTooLarge,
                        format!(
                            "payload of {} bytes on topic {topic:?} exceeds this broker's limit of {max} bytes \
                             (announced in Welcome); split the message or raise --max-payload on the broker",
                            payload.len()
                        ),
                    );
                }
                // The delivery carries more than the publish (metadata, and
                // on causal topics one more causal entry): a publish that
                // fits max_frame but whose delivery would not is refused
                // here, or every subscriber would drop the oversized frame.
                let max_frame = self.ctx.config.limits.max_frame as usize;
                let delivery = delivery_len(topic.len(), context.len() + 1, payload.len());
                if delivery > max_frame {
                    self.ctx.metrics.protocol_error("payload_too_large");
                    // Answers keep the order of the requests before it.
                    if let Flow::Stop(fatal) = self.flush_publishes().await {
                        return Flow::Stop(fatal);
                    }
                    return self.refuse(
                        confirm.unwrap_or(0),
                        ErrorCode::PayloadTooLarge,
                        format!(
                            "the delivery of this message on topic {topic:?} ({} payload bytes, {} causal context entries) \
                             would be a {delivery}-byte frame, above this broker's --max-frame of {max_frame} bytes; \
                             send a smaller payload or a shorter causal context",
                            payload.len(),
                            context.len()
                        ),
                    );
                }
                self.publishes.push(PublishItem {
                    confirm,
                    topic,
                    context,
                    payload,
                });
                if self.publishes.len() >= PUBLISH_BATCH {
                    return self.flush_publishes().await;
                }
                Flow::Continue
            }
            Request::Declare {
                req,
                topic,
                ordering,
                safe,
            } => {
                self.send_to_driver(Command::Declare {
                    conn,
                    req,
                    topic,
                    spec: TopicSpec { ordering, safe },
                })
                .await
            }
            Request::Subscribe { req, sid, pattern } => {
                self.send_to_driver(Command::Subscribe {
                    conn,
                    req,
                    sid,
                    pattern,
                })
                .await
            }
            Request::Unsubscribe { req, sid } => {
                self.send_to_driver(Command::Unsubscribe { conn, req, sid })
                    .await
            }
            Request::ListTopics { req } => {
                self.send_to_driver(Command::ListTopics { conn, req }).await
            }
            Request::Cluster { req } => self.send_to_driver(Command::Cluster { conn, req }).await,
            Request::Ping { nonce } => match self.flush_publishes().await {
                Flow::Continue => self.answer(Reply::Pong { nonce }),
                stop => stop,
            },
            Request::Pong { .. } => Flow::Continue,
        }
    }

    async fn hello(&mut self, version: u16, token: Option<String>, name: String) -> Flow {
        let ctx = self.ctx;
        if version != PROTOCOL_VERSION {
            ctx.metrics.protocol_error("version");
            return Flow::Stop(self.fatal(
                ErrorCode::Protocol,
                format!(
                    "client speaks protocol version {version}, this broker speaks {PROTOCOL_VERSION}; \
                     use a client and broker of matching versions"
                ),
            ));
        }
        if let Some(expected) = &ctx.config.auth_token {
            let problem = match &token {
                None => Some("this broker requires a token; pass --token or set ORDO_TOKEN"),
                Some(t) if !constant_time_eq(t.as_bytes(), expected.as_bytes()) => {
                    Some("the token is not valid for this broker; check --token / ORDO_TOKEN")
                }
                Some(_) => None,
            };
            if let Some(problem) = problem {
                ctx.metrics.protocol_error("not_authorized");
                tracing::warn!(conn = self.conn, peer = %self.peer, "handshake refused: bad or missing token");
                return Flow::Stop(self.fatal(ErrorCode::NotAuthorized, problem.into()));
            }
        }
        self.greeted = true;
        tracing::debug!(conn = self.conn, peer = %self.peer, client = %name, "client connected");
        let welcome = Reply::Welcome {
            version: PROTOCOL_VERSION,
            node: ctx.config.node,
            incarnation: ctx.config.incarnation,
            client_id: self.conn,
            limits: ctx.config.limits,
        };
        if self.outbox.push(Out::Reply(welcome)).is_err() {
            return Flow::Stop(false);
        }
        self.send_to_driver(Command::Register {
            conn: self.conn,
            outbox: self.outbox.clone(),
        })
        .await
    }
}

/// The request's name for error messages.
fn kind(req: &Request) -> &'static str {
    match req {
        Request::Hello { .. } => "Hello",
        Request::Declare { .. } => "Declare",
        Request::Subscribe { .. } => "Subscribe",
        Request::Unsubscribe { .. } => "Unsubscribe",
        Request::Publish { .. } => "Publish",
        Request::ListTopics { .. } => "ListTopics",
        Request::Cluster { .. } => "Cluster",
        Request::Ping { .. } => "Ping",
        Request::Pong { .. } => "Pong",
    }
}

/// Compares secrets in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Drains the outbox into the socket, batching every queued frame into one
/// write, until the queue closes, a `Close` item is reached, the outbox is
/// killed (slow consumer) or the socket fails.
async fn write_loop<W: ClientWrite>(
    wr: &mut W,
    rx: &mut OutboxReceiver,
    ctx: &ServerCtx,
    shutdown: watch::Receiver<bool>,
) {
    // Frames to write; large payloads stay in their datagrams (one writev).
    let mut out = FrameBuf::with_capacity(WRITE_BUFFER_BYTES);
    // Items taken off the queue and not encoded yet (the tail of a batch
    // that filled one write): they are still charged to the queue, so what
    // the writer holds counts against the client's bound.
    let mut batch: Vec<Out> = Vec::with_capacity(WRITE_BATCH);
    let kill = rx.kill_watch();
    loop {
        if batch.is_empty() {
            // Nothing taken, nothing unwritten: the driver may write directly.
            rx.set_idle();
            let n = tokio::select! {
                biased;
                _ = kill.killed() => return slow_consumer(wr, rx, out, ctx).await,
                // A direct write left a tail (taken by `set_busy` below).
                _ = kill.direct_woken() => None,
                n = rx.recv_many(&mut batch, WRITE_BATCH) => Some(n),
            };
            // From here until idle again, only this task writes.
            rx.set_busy(&mut out);
            if n == Some(0) {
                // Every sender is gone: the client left, or the broker is stopping.
                if *shutdown.borrow() {
                    Reply::Error {
                        req: 0,
                        code: ErrorCode::ShuttingDown,
                        message: "the broker is shutting down; reconnect to another broker".into(),
                    }
                    .encode(out.copied());
                }
                let _ = wr.write_all(&mut out).await;
                wr.close().await;
                return;
            }
        } else if kill.is_killed() {
            return slow_consumer(wr, rx, out, ctx).await;
        }
        let mut close = false;
        let mut released = 0;
        let mut frames = 0;
        'fill: loop {
            // Encode only up to one write's worth: the rest stays queued
            // (and charged) instead of piling up encoded, uncharged, in `out`.
            let mut used = 0;
            for item in &batch {
                used += 1;
                released += item.charge();
                frames += item.frames();
                if !item.encode(&mut out) {
                    close = true;
                    break;
                }
                if out.len() >= WRITE_BATCH_BYTES {
                    break;
                }
            }
            batch.drain(..used);
            if close {
                batch.clear();
                break 'fill;
            }
            if out.len() >= WRITE_BATCH_BYTES {
                break;
            }
            // Take whatever else is already queued, without waiting.
            while batch.len() < WRITE_BATCH {
                match rx.try_recv() {
                    Some(item) => batch.push(item),
                    None => break,
                }
            }
            if batch.is_empty() {
                break;
            }
        }
        // One atomic update per batch, not per frame.
        rx.release(released, frames);
        tokio::select! {
            biased;
            _ = kill.killed() => return slow_consumer(wr, rx, out, ctx).await,
            r = wr.write_all(&mut out) => if r.is_err() {
                return;
            },
        }
        if close {
            wr.close().await;
            return;
        }
        if out.capacity() > 4 * WRITE_BATCH_BYTES {
            // One huge message must not pin its buffer for the connection's life.
            out = FrameBuf::with_capacity(WRITE_BUFFER_BYTES);
        }
    }
}

/// Writes all of `out`, waiting for the socket as needed. Cancel-safe: what
/// was not written stays in `out`.
async fn write_all(wr: &OwnedWriteHalf, out: &mut FrameBuf) -> std::io::Result<()> {
    loop {
        write_now(wr, out)?;
        if out.is_empty() {
            return Ok(());
        }
        wr.writable().await?;
    }
}

/// Ends our direction of the stream (the peer reads end-of-stream).
fn close_write(wr: &OwnedWriteHalf) {
    let _ = socket2::SockRef::from(wr.as_ref()).shutdown(std::net::Shutdown::Write);
}

/// The driver gave up on this client: drop what is queued, finish the frame
/// in flight, say why, and close.
async fn slow_consumer<W: ClientWrite>(
    wr: &mut W,
    rx: &OutboxReceiver,
    mut out: FrameBuf,
    ctx: &ServerCtx,
) {
    // Waits for a direct write in progress; its unwritten tail comes first.
    rx.set_busy(&mut out);
    // `out` holds the unwritten tail of whole frames, so appending keeps the
    // stream well-formed.
    Reply::Error {
        req: 0,
        code: ErrorCode::SlowConsumer,
        message: format!(
            "disconnected as a slow consumer: more than {} bytes or {} frames were queued for this connection \
             (--client-queue-bytes / --client-queue-frames); read faster, subscribe to less, or raise the limits",
            ctx.config.client_queue_bytes, ctx.config.client_queue_frames
        ),
    }
    .encode(out.copied());
    let _ = tokio::time::timeout(ctx.config.final_flush_timeout, wr.write_all(&mut out)).await;
    wr.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(constant_time_eq(b"", b""));
    }
}
