//! The client handle: connect and handshake, then requests, publishes and
//! subscriptions over one connection task.

use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ordo_wire::client::{
    ClusterView, ErrorCode, Limits, Reply, Request, TopicInfo, DEFAULT_MAX_FRAME, PROTOCOL_VERSION,
};
use ordo_wire::{CausalContext, Incarnation, NodeId, Ordering};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::connection::{self, Budget, Command, ReplyResult, Shared, SubSender};
use crate::error::Error;
use crate::subscription::Subscription;
use crate::tls::{self, TlsOptions};

/// How to connect and how much to buffer.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The token the broker may require.
    pub token: Option<String>,
    /// A name for this client in the broker's logs.
    pub name: String,
    /// How long opening the TCP connection may take.
    pub connect_timeout: Duration,
    /// How long the broker may take to answer a request (declare, subscribe,
    /// list, cluster, flush) or to confirm a publish.
    pub request_timeout: Duration,
    /// Events a subscription buffers before the connection stops reading.
    pub subscription_capacity: usize,
    /// Payload bytes a subscription buffers before the connection stops
    /// reading (one larger message still fits, alone).
    pub subscription_bytes: usize,
    /// Commands (publishes, requests) queued for the writer before
    /// `publish` waits.
    pub command_capacity: usize,
    /// Requests and confirmed publishes awaiting an answer at once; more wait.
    pub max_in_flight: usize,
    /// Largest frame accepted from the broker (at least the broker's own limit is used).
    pub max_frame: u32,
    /// Speak TLS to the broker (it must listen with `--tls-cert`); `None`: plain TCP.
    pub tls: Option<TlsOptions>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            token: None,
            name: format!("ordo-client-{}", std::process::id()),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            subscription_capacity: 1024,
            subscription_bytes: 16 * 1024 * 1024,
            command_capacity: 1024,
            max_in_flight: 16 * 1024,
            max_frame: DEFAULT_MAX_FRAME,
            tls: None,
        }
    }
}

/// What the broker said about itself in its welcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerInfo {
    /// The broker's node id.
    pub node: NodeId,
    /// The broker's current incarnation.
    pub incarnation: Incarnation,
    /// This connection's id at the broker: the `publisher` of its messages.
    pub client_id: u64,
    /// The broker's frame and payload limits.
    pub limits: Limits,
}

/// A snapshot of the connection's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientStats {
    /// Publish frames written.
    pub published: u64,
    /// Messages received for any subscription.
    pub delivered: u64,
    /// Events dropped because their subscription had already ended.
    pub dropped_unsubscribed: u64,
    /// Times the reader waited for a full subscription channel.
    pub backpressure_waits: u64,
    /// Pongs not sent because too many were already owed.
    pub pongs_dropped: u64,
    /// Socket writes (each carries a batch of frames).
    pub writes: u64,
    /// Socket reads (each may carry many frames).
    pub reads: u64,
}

/// A connection to one broker. Cloning is cheap and shares the connection;
/// it stays open while a clone or a [`Subscription`] lives, or until
/// [`Client::close`].
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cmds: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    next_id: AtomicU64,
    in_flight: Arc<Semaphore>,
    options: ClientOptions,
    server: ServerInfo,
}

/// A publish the broker has yet to confirm; [`Confirmation::wait`] for it.
#[derive(Debug)]
pub struct Confirmation {
    waiter: Waiter,
    topic: String,
}

impl Confirmation {
    /// Waits until the broker confirms the message is safe (DESIGN.md
    /// "Confirmed publishes"), refuses it, or the request timeout passes.
    pub async fn wait(self) -> Result<(), Error> {
        let what = format!(
            "waiting for the broker to confirm a publish on {}",
            self.topic
        );
        match self.waiter.wait(&what).await? {
            Reply::Ok { .. } => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}

/// A registered request: its answer, its in-flight permit, and cleanup if
/// the caller gives up.
#[derive(Debug)]
struct Waiter {
    /// Keeps the connection open until the answer came.
    _client: Client,
    req: u64,
    rx: Option<oneshot::Receiver<ReplyResult>>,
    shared: Arc<Shared>,
    timeout: Duration,
    _permit: OwnedSemaphorePermit,
}

impl Waiter {
    async fn wait(mut self, what: &str) -> Result<Reply, Error> {
        let Some(rx) = self.rx.take() else {
            return Err(self.shared.gone());
        };
        let reply = match tokio::time::timeout(self.timeout, rx).await {
            Err(_) => {
                return Err(Error::Timeout {
                    what: format!("after {:?} {what}", self.timeout),
                })
            }
            Ok(Err(_)) => return Err(self.shared.gone()),
            Ok(Ok(r)) => r?,
        };
        match reply {
            Reply::Error { code, message, .. } => Err(Error::Refused { code, message }),
            r => Ok(r),
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        // Abandoned (timed out or cancelled): stop holding a slot for it.
        if self.rx.is_some() {
            self.shared.forget(self.req);
        }
    }
}

fn unexpected(reply: Reply) -> Error {
    Error::Protocol(format!("unexpected answer from the broker: {reply:?}"))
}

impl Client {
    /// Connects to `addr` (`host:port`), with TLS when `options.tls` says so,
    /// says hello and waits for the welcome. The TLS handshake and the
    /// welcome together must come within `request_timeout`.
    pub async fn connect(addr: &str, options: ClientOptions) -> Result<Client, Error> {
        // Unusable TLS settings fail before anything is sent.
        let tls = match &options.tls {
            None => None,
            Some(t) => Some((
                tokio_rustls::TlsConnector::from(Arc::new(t.client_config()?)),
                t.server_name(addr)?,
            )),
        };
        let stream =
            match tokio::time::timeout(options.connect_timeout, TcpStream::connect(addr)).await {
                Err(_) => {
                    return Err(Error::Connect {
                        addr: addr.to_string(),
                        reason: format!("no answer within {:?}", options.connect_timeout),
                        cause: None,
                    })
                }
                Ok(Err(e)) => return Err(Error::connect(addr, e)),
                Ok(Ok(s)) => s,
            };
        // Latency matters more than packet count: the writer batches itself.
        let _ = stream.set_nodelay(true);
        let deadline = Instant::now() + options.request_timeout;
        match tls {
            None => {
                let (rd, wr) = stream.into_split();
                Client::start(addr, options, rd, wr, deadline).await
            }
            Some((connector, name)) => {
                let stream = tokio::time::timeout_at(deadline, connector.connect(name, stream))
                    .await
                    .map_err(|_| Error::Timeout {
                        what: format!(
                            "waiting for the TLS handshake with the broker at {addr} (does it listen with TLS?)"
                        ),
                    })?
                    .map_err(|e| tls::handshake_failed(addr, &e))?;
                let (rd, wr) = tokio::io::split(stream);
                Client::start(addr, options, rd, wr, deadline).await
            }
        }
    }

    /// Says hello over a connected stream (plain or TLS), waits for the
    /// welcome until `deadline`, and starts the connection task.
    async fn start<R, W>(
        addr: &str,
        options: ClientOptions,
        mut rd: R,
        mut wr: W,
        deadline: Instant,
    ) -> Result<Client, Error>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let tls = options.tls.is_some();
        // A failure the TLS layer reports is a failed handshake (TLS 1.3
        // refuses a client certificate only after the client finished).
        let io_error = |e: std::io::Error| {
            if tls::is_tls_error(&e) {
                tls::handshake_failed(addr, &e)
            } else {
                Error::io(&e)
            }
        };
        let mut out = BytesMut::new();
        Request::Hello {
            version: PROTOCOL_VERSION,
            token: options.token.clone(),
            name: options.name.clone(),
        }
        .encode(&mut out);
        let max_frame = options.max_frame as usize;
        let handshake = async {
            wr.write_all(&out).await.map_err(io_error)?;
            wr.flush().await.map_err(io_error)?;
            let mut buf = BytesMut::with_capacity(64 * 1024);
            loop {
                if !tls && tls::looks_like_tls(&buf) {
                    return Err(Error::Connect {
                        addr: addr.to_string(),
                        reason:
                            "the broker answered with TLS: it requires TLS; connect with --tls-ca \
                                 (ORDO_TLS_CA) naming the CA that signed its certificate"
                                .into(),
                        cause: None,
                    });
                }
                match Reply::decode(&mut buf, max_frame) {
                    Err(e) => return Err(Error::Protocol(format!("bad welcome: {e}"))),
                    Ok(Some(reply)) => return Ok((reply, buf)),
                    Ok(None) => {}
                }
                match rd.read_buf(&mut buf).await {
                    Ok(0) => {
                        return Err(Error::Disconnected {
                            code: None,
                            reason: if tls {
                                "the broker closed the connection during the handshake".into()
                            } else {
                                "the broker closed the connection during the handshake \
                                 (if it listens with TLS, connect with --tls-ca / ORDO_TLS_CA)"
                                    .into()
                            },
                        })
                    }
                    Ok(_) => {}
                    Err(e) => return Err(io_error(e)),
                }
            }
        };
        let (reply, buf) = tokio::time::timeout_at(deadline, handshake)
            .await
            .map_err(|_| Error::Timeout {
                what: format!("waiting for the welcome of the broker at {addr}"),
            })??;
        let server = match reply {
            Reply::Welcome {
                version,
                node,
                incarnation,
                client_id,
                limits,
            } => {
                if version != PROTOCOL_VERSION {
                    return Err(Error::Protocol(format!(
                        "the broker speaks protocol version {version}, this client {PROTOCOL_VERSION}"
                    )));
                }
                ServerInfo {
                    node,
                    incarnation,
                    client_id,
                    limits,
                }
            }
            Reply::Error { code, message, .. } => return Err(Error::Refused { code, message }),
            other => return Err(unexpected(other)),
        };

        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::channel(options.command_capacity.max(1));
        let max_frame = max_frame.max(server.limits.max_frame as usize);
        tokio::spawn(connection::run(rd, wr, buf, max_frame, rx, shared.clone()));
        Ok(Client {
            inner: Arc::new(Inner {
                cmds: tx,
                shared,
                next_id: AtomicU64::new(1),
                in_flight: Arc::new(Semaphore::new(options.max_in_flight.max(1))),
                options,
                server,
            }),
        })
    }

    /// What the broker said about itself when the connection opened.
    pub fn server_info(&self) -> ServerInfo {
        self.inner.server
    }

    /// The connection's counters.
    pub fn stats(&self) -> ClientStats {
        let c = &self.inner.shared.stats;
        let get = |a: &AtomicU64| a.load(AtomicOrdering::Relaxed);
        ClientStats {
            published: get(&c.published),
            delivered: get(&c.delivered),
            dropped_unsubscribed: get(&c.dropped_unsubscribed),
            backpressure_waits: get(&c.backpressure_waits),
            pongs_dropped: get(&c.pongs_dropped),
            writes: get(&c.writes),
            reads: get(&c.reads),
        }
    }

    /// The causal context the next publish will carry: the merge of every
    /// delivery this connection has received.
    pub fn causal_context(&self) -> CausalContext {
        self.inner.shared.context()
    }

    /// A fresh request id (never 0, which names the connection).
    pub(crate) fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, AtomicOrdering::Relaxed)
    }

    async fn send(&self, cmd: Command) -> Result<(), Error> {
        self.inner
            .cmds
            .send(cmd)
            .await
            .map_err(|_| self.inner.shared.gone())
    }

    /// Registers a waiter and sends the request `make(req)`.
    async fn request(&self, make: impl FnOnce(u64) -> Request) -> Result<Waiter, Error> {
        self.request_with(make, false).await
    }

    /// [`Client::request`], optionally as a flush barrier.
    async fn request_with(
        &self,
        make: impl FnOnce(u64) -> Request,
        barrier: bool,
    ) -> Result<Waiter, Error> {
        let waiter = self.waiter(barrier).await?;
        self.send(Command::Request(make(waiter.req))).await?;
        Ok(waiter)
    }

    /// Takes an in-flight slot and registers a waiter under a fresh request id.
    async fn waiter(&self, barrier: bool) -> Result<Waiter, Error> {
        let permit = self
            .inner
            .in_flight
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| self.inner.shared.gone())?;
        let req = self.next_id();
        let rx = self.inner.shared.register(req, barrier)?;
        Ok(Waiter {
            _client: self.clone(),
            req,
            rx: Some(rx),
            shared: self.inner.shared.clone(),
            timeout: self.inner.options.request_timeout,
            _permit: permit,
        })
    }

    /// Declares `topic` with its ordering (and `safe` delivery). Declaring it
    /// again the same way succeeds; differently, the broker refuses naming both.
    pub async fn declare(&self, topic: &str, ordering: Ordering, safe: bool) -> Result<(), Error> {
        let waiter = self
            .request(|req| Request::Declare {
                req,
                topic: topic.to_string(),
                ordering,
                safe,
            })
            .await?;
        match waiter
            .wait(&format!("waiting for the broker to declare {topic}"))
            .await?
        {
            Reply::Ok { .. } => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    fn check_payload(&self, payload: &Bytes) -> Result<(), Error> {
        let max = self.inner.server.limits.max_payload as usize;
        if payload.len() > max {
            return Err(Error::Refused {
                code: ErrorCode::PayloadTooLarge,
                message: format!(
                    "payload of {} bytes exceeds the broker's limit of {max} bytes",
                    payload.len()
                ),
            });
        }
        Ok(())
    }

    /// Queues a message for the broker and returns once the connection took
    /// it (waiting while the queue is full). It is written out with whatever
    /// else is queued; [`Client::flush`] waits until the broker has read it.
    pub async fn publish(&self, topic: &str, payload: impl Into<Bytes>) -> Result<(), Error> {
        let payload = payload.into();
        self.check_payload(&payload)?;
        self.send(Command::Publish {
            confirm: None,
            topic: topic.to_string(),
            payload,
        })
        .await
    }

    /// Queues a message asking for confirmation, and returns the
    /// [`Confirmation`] to wait on, so many can be in flight at once.
    pub async fn publish_with_confirmation(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
    ) -> Result<Confirmation, Error> {
        let payload = payload.into();
        self.check_payload(&payload)?;
        let waiter = self.waiter(false).await?;
        self.send(Command::Publish {
            confirm: Some(waiter.req),
            topic: topic.to_string(),
            payload,
        })
        .await?;
        Ok(Confirmation {
            waiter,
            topic: topic.to_string(),
        })
    }

    /// Publishes and waits until the broker confirms the message is safe.
    pub async fn publish_confirmed(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
    ) -> Result<(), Error> {
        self.publish_with_confirmation(topic, payload)
            .await?
            .wait()
            .await
    }

    /// Waits until the broker has taken everything sent before this call:
    /// a round trip behind it through the broker's engine (a cluster-view
    /// request, which the broker answers in order after this connection's
    /// earlier publishes; its ping is answered before those). Fails with the
    /// broker's words if it refused something that had no request id to
    /// answer (a publish without confirmation, say) since the previous flush.
    pub async fn flush(&self) -> Result<(), Error> {
        let waiter = self
            .request_with(|req| Request::Cluster { req }, true)
            .await?;
        match waiter
            .wait("waiting for the broker to take everything sent before")
            .await?
        {
            Reply::Cluster { .. } => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Subscribes to `pattern` (`.`-separated tokens, `*` one token, `>` the
    /// rest) and returns once the broker confirmed: every message published
    /// after that is delivered to the returned stream.
    pub async fn subscribe(&self, pattern: &str) -> Result<Subscription, Error> {
        let sid = self.next_id();
        let (tx, rx) = mpsc::channel(self.inner.options.subscription_capacity.max(1));
        let events = Arc::new(Budget::new(self.inner.options.subscription_capacity));
        let bytes = Arc::new(Budget::new(self.inner.options.subscription_bytes));
        let sender = SubSender {
            tx,
            events: Arc::clone(&events),
            bytes: Arc::clone(&bytes),
        };
        self.inner.shared.add_subscription(sid, sender)?;
        let mut sub = Subscription {
            sid,
            pattern: pattern.to_string(),
            rx,
            current: Vec::new().into_iter(),
            held: (0, 0),
            events,
            bytes,
            shared: self.inner.shared.clone(),
            client: self.clone(),
            unsubscribed: false,
            done: false,
        };
        let waiter = self
            .request(|req| Request::Subscribe {
                req,
                sid,
                pattern: pattern.to_string(),
            })
            .await;
        let answer = match waiter {
            Ok(w) => {
                w.wait(&format!(
                    "waiting for the broker to confirm subscription {pattern}"
                ))
                .await
            }
            Err(e) => Err(e),
        };
        match answer {
            Ok(Reply::Ok { .. }) => Ok(sub),
            Ok(other) => Err(unexpected(other)),
            Err(e) => {
                // Refused or lost: nothing to undo at the broker.
                sub.unsubscribed = true;
                self.inner.shared.remove_subscription(sid, None);
                Err(e)
            }
        }
    }

    /// Ends a subscription and waits for the broker to acknowledge it.
    pub async fn unsubscribe(&self, mut sub: Subscription) -> Result<(), Error> {
        sub.unsubscribed = true;
        self.inner.shared.remove_subscription(sub.sid, None);
        let sid = sub.sid;
        let waiter = self
            .request(|req| Request::Unsubscribe { req, sid })
            .await?;
        match waiter
            .wait(&format!(
                "waiting for the broker to end subscription {}",
                sub.pattern
            ))
            .await?
        {
            Reply::Ok { .. } => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// The broker's topic table.
    pub async fn list_topics(&self) -> Result<Vec<TopicInfo>, Error> {
        let waiter = self.request(|req| Request::ListTopics { req }).await?;
        match waiter.wait("waiting for the topic list").await? {
            Reply::Topics { topics, .. } => Ok(topics),
            other => Err(unexpected(other)),
        }
    }

    /// The current membership view as this broker sees it.
    pub async fn cluster(&self) -> Result<ClusterView, Error> {
        let waiter = self.request(|req| Request::Cluster { req }).await?;
        match waiter.wait("waiting for the cluster view").await? {
            Reply::Cluster { view, .. } => Ok(view),
            other => Err(unexpected(other)),
        }
    }

    /// Writes out everything queued, closes the connection, and waits until
    /// it is closed. Subscriptions end (their streams yield `None`); any
    /// request still waiting fails with [`Error::Closed`]. Call
    /// [`Client::flush`] first to know the broker read everything.
    pub async fn close(self) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        if self.inner.cmds.send(Command::Close(tx)).await.is_err() {
            return match self.inner.shared.closed() {
                None | Some(Error::Closed) => Ok(()),
                Some(e) => Err(e),
            };
        }
        let _ = rx.await;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    //! The client against a scripted peer speaking the wire protocol, so
    //! each behaviour is checked without a real broker.

    use super::*;
    use crate::subscription::Event;
    use futures_util::StreamExt;
    use ordo_wire::client::Delivery;
    use ordo_wire::{Origin, Seq};
    use tokio::net::TcpListener;

    /// The broker's end of one connection.
    struct Peer {
        stream: TcpStream,
        buf: BytesMut,
    }

    impl Peer {
        async fn recv(&mut self) -> Request {
            loop {
                if let Some(r) = Request::decode(&mut self.buf, 1 << 24).unwrap() {
                    return r;
                }
                let n = self.stream.read_buf(&mut self.buf).await.unwrap();
                assert!(n > 0, "client closed the connection");
            }
        }

        async fn send(&mut self, reply: Reply) {
            let mut out = BytesMut::new();
            reply.encode(&mut out);
            self.stream.write_all(&out).await.unwrap();
        }

        /// Reads the hello and welcomes the client.
        async fn welcome(&mut self) {
            assert!(matches!(self.recv().await, Request::Hello { .. }));
            self.send(Reply::Welcome {
                version: PROTOCOL_VERSION,
                node: NodeId(1),
                incarnation: Incarnation(5),
                client_id: 42,
                limits: Limits::default(),
            })
            .await;
        }
    }

    /// A client connected to a fresh peer that has welcomed it.
    async fn pair(options: ClientOptions) -> (Client, Peer) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accept = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut peer = Peer {
                stream,
                buf: BytesMut::new(),
            };
            peer.welcome().await;
            peer
        });
        let client = Client::connect(&addr, options).await.unwrap();
        (client, accept.await.unwrap())
    }

    fn origin(node: u32) -> Origin {
        Origin {
            node: NodeId(node),
            incarnation: Incarnation(1),
        }
    }

    fn delivery(sid: u64, seq: u64, context: CausalContext, payload: Vec<u8>) -> Reply {
        Reply::Message(Box::new(Delivery {
            sid,
            topic: "t".into(),
            ordering: Ordering::Causal,
            publisher: 3,
            origin: origin(2),
            seq: Seq(seq),
            context,
            gseq: None,
            payload: payload.into(),
        }))
    }

    /// Subscribes through the peer and returns the subscription and its sid.
    async fn subscribed(client: &Client, peer: &mut Peer, pattern: &str) -> (Subscription, u64) {
        let c = client.clone();
        let pattern = pattern.to_string();
        let sub = tokio::spawn(async move { c.subscribe(&pattern).await });
        let Request::Subscribe { req, sid, .. } = peer.recv().await else {
            panic!("expected a subscribe")
        };
        peer.send(Reply::Ok { req }).await;
        (sub.await.unwrap().unwrap(), sid)
    }

    #[tokio::test]
    async fn cannot_connect_is_exit_code_3() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let err = Client::connect(&addr, ClientOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Connect { .. }), "{err:?}");
        assert_eq!(err.exit_code(), 3);
        assert!(err.to_string().contains("connection refused"), "{err}");
    }

    #[tokio::test]
    async fn refused_hello_is_a_refusal() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut peer = Peer {
                stream,
                buf: BytesMut::new(),
            };
            let Request::Hello { token, .. } = peer.recv().await else {
                panic!("expected hello")
            };
            assert_eq!(token.as_deref(), Some("wrong"));
            peer.send(Reply::Error {
                req: 0,
                code: ErrorCode::NotAuthorized,
                message: "bad token".into(),
            })
            .await;
        });
        let options = ClientOptions {
            token: Some("wrong".into()),
            ..ClientOptions::default()
        };
        let err = Client::connect(&addr, options).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Refused {
                    code: ErrorCode::NotAuthorized,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn declare_conflict_carries_the_brokers_words() {
        let (client, mut peer) = pair(ClientOptions::default()).await;
        let c = client.clone();
        let call = tokio::spawn(async move { c.declare("t", Ordering::Causal, true).await });
        let Request::Declare {
            req,
            topic,
            ordering,
            safe,
        } = peer.recv().await
        else {
            panic!("expected a declare")
        };
        assert_eq!(
            (topic.as_str(), ordering, safe),
            ("t", Ordering::Causal, true)
        );
        peer.send(Reply::Error {
            req,
            code: ErrorCode::Conflict,
            message: "topic t is fifo, not causal".into(),
        })
        .await;
        let err = call.await.unwrap().unwrap_err();
        assert_eq!(err.exit_code(), 4);
        assert!(err.to_string().contains("fifo, not causal"), "{err}");
    }

    #[tokio::test]
    async fn many_publishes_share_few_writes_and_keep_their_order() {
        let (client, mut peer) = pair(ClientOptions::default()).await;
        let c = client.clone();
        let publisher = tokio::spawn(async move {
            for i in 0..2000u32 {
                c.publish("t", i.to_be_bytes().to_vec()).await.unwrap();
            }
            c.flush().await.unwrap();
        });
        for i in 0..2000u32 {
            let Request::Publish {
                confirm, payload, ..
            } = peer.recv().await
            else {
                panic!("expected a publish")
            };
            assert_eq!(confirm, None);
            assert_eq!(&payload[..], &i.to_be_bytes());
        }
        let Request::Cluster { req } = peer.recv().await else {
            panic!("flush should ask for the view")
        };
        peer.send(view_reply(req)).await;
        publisher.await.unwrap();
        let stats = client.stats();
        assert_eq!(stats.published, 2000);
        assert!(
            stats.writes < 200,
            "one write per batch, not per message: {stats:?}"
        );
    }

    #[tokio::test]
    async fn confirmations_resolve_by_id_and_refusals_map_to_refused() {
        let (client, mut peer) = pair(ClientOptions::default()).await;
        let first = client.publish_with_confirmation("t", "a").await.unwrap();
        let second = client.publish_with_confirmation("t", "b").await.unwrap();
        let mut ids = Vec::new();
        for _ in 0..2 {
            let Request::Publish { confirm, .. } = peer.recv().await else {
                panic!("expected a publish")
            };
            ids.push(confirm.unwrap());
        }
        // Answer out of order: each confirmation finds its own answer.
        peer.send(Reply::Error {
            req: ids[1],
            code: ErrorCode::Unavailable,
            message: "no quorum".into(),
        })
        .await;
        peer.send(Reply::Ok { req: ids[0] }).await;
        first.wait().await.unwrap();
        let err = second.wait().await.unwrap_err();
        assert!(matches!(
            err,
            Error::Refused {
                code: ErrorCode::Unavailable,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn unanswered_request_times_out() {
        let options = ClientOptions {
            request_timeout: Duration::from_millis(100),
            ..ClientOptions::default()
        };
        let (client, mut peer) = pair(options).await;
        let err = client.list_topics().await.unwrap_err();
        assert!(matches!(peer.recv().await, Request::ListTopics { .. }));
        assert_eq!(err.exit_code(), 6, "{err:?}");
    }

    #[tokio::test]
    async fn deliveries_reach_their_subscription_and_feed_the_causal_context() {
        let (client, mut peer) = pair(ClientOptions::default()).await;
        let (mut a, sid_a) = subscribed(&client, &mut peer, "t").await;
        let (mut b, sid_b) = subscribed(&client, &mut peer, "u.>").await;
        let ctx = CausalContext::from_entries([(origin(2), Seq(7)), (origin(4), Seq(1))]);
        peer.send(delivery(sid_b, 1, CausalContext::new(), b"for b".to_vec()))
            .await;
        peer.send(delivery(sid_a, 7, ctx.clone(), b"for a".to_vec()))
            .await;
        let Some(Ok(Event::Message(m))) = a.next().await else {
            panic!("a gets its message")
        };
        assert_eq!(&m.payload[..], b"for a");
        let Some(Ok(Event::Message(m))) = b.next().await else {
            panic!("b gets its message")
        };
        assert_eq!(&m.payload[..], b"for b");

        // The next publish carries what this client has received.
        client.publish("t", "reply").await.unwrap();
        let Request::Publish { context, .. } = peer.recv().await else {
            panic!("expected a publish")
        };
        assert_eq!(context, ctx);
        assert_eq!(client.causal_context(), ctx);
    }

    #[tokio::test]
    async fn dropping_a_subscription_unsubscribes() {
        let (client, mut peer) = pair(ClientOptions::default()).await;
        let (sub, sid) = subscribed(&client, &mut peer, "t").await;
        drop(sub);
        let Request::Unsubscribe { sid: gone, .. } = peer.recv().await else {
            panic!("expected an unsubscribe")
        };
        assert_eq!(gone, sid);
        // A message already on its way for it is dropped and counted.
        peer.send(delivery(sid, 1, CausalContext::new(), b"late".to_vec()))
            .await;
        client.flush_via(&mut peer).await;
        assert_eq!(client.stats().dropped_unsubscribed, 1);
    }

    #[tokio::test]
    async fn flush_reports_a_refused_unconfirmed_publish() {
        let (client, mut peer) = pair(ClientOptions::default()).await;
        let c = client.clone();
        let flush = tokio::spawn(async move {
            c.publish("a.*", "x").await.unwrap();
            c.flush().await
        });
        assert!(matches!(peer.recv().await, Request::Publish { .. }));
        peer.send(Reply::Error {
            req: 0,
            code: ErrorCode::InvalidName,
            message: "invalid topic name \"a.*\"".into(),
        })
        .await;
        let Request::Cluster { req } = peer.recv().await else {
            panic!("expected the flush's view request")
        };
        peer.send(view_reply(req)).await;
        let err = flush.await.unwrap().unwrap_err();
        assert!(matches!(
            err,
            Error::Refused {
                code: ErrorCode::InvalidName,
                ..
            }
        ));
        // Reported once; the connection carries on, and closing later is
        // not blamed on the old refusal.
        client.flush_via(&mut peer).await;
        drop(peer);
        let err = client.list_topics().await.unwrap_err();
        assert!(
            matches!(err, Error::Disconnected { code: None, .. }),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn broker_pings_are_answered() {
        let (_client, mut peer) = pair(ClientOptions::default()).await;
        peer.send(Reply::Ping { nonce: 99 }).await;
        assert_eq!(peer.recv().await, Request::Pong { nonce: 99 });
    }

    #[tokio::test]
    async fn broker_reason_reaches_the_subscription() {
        let (client, mut peer) = pair(ClientOptions::default()).await;
        let (mut sub, _) = subscribed(&client, &mut peer, "t").await;
        peer.send(Reply::Error {
            req: 0,
            code: ErrorCode::SlowConsumer,
            message: "outbound queue full (1024 messages)".into(),
        })
        .await;
        drop(peer);
        let err = sub.next().await.unwrap().unwrap_err();
        assert!(
            matches!(
                &err,
                Error::Disconnected {
                    code: Some(ErrorCode::SlowConsumer),
                    reason,
                } if reason.contains("queue full")
            ),
            "{err:?}"
        );
        assert_eq!(err.exit_code(), 5);
        assert!(sub.next().await.is_none());
        // Later calls report the same reason.
        assert_eq!(client.publish("t", "x").await.unwrap_err().exit_code(), 5);
    }

    /// Writes 64 KiB messages to `sid` until the socket stops taking them
    /// (true) or `limit` messages went through (false).
    async fn write_until_blocked(peer: &mut Peer, sid: u64, limit: u64) -> bool {
        for seq in 1..=limit {
            let frame = delivery(sid, seq, CausalContext::new(), vec![0u8; 64 * 1024]);
            if tokio::time::timeout(Duration::from_millis(300), peer.send(frame))
                .await
                .is_err()
            {
                return true;
            }
        }
        false
    }

    #[tokio::test]
    async fn a_subscriber_that_does_not_read_stops_the_socket() {
        let options = ClientOptions {
            subscription_capacity: 4,
            ..ClientOptions::default()
        };
        let (client, mut peer) = pair(options).await;
        let (mut sub, sid) = subscribed(&client, &mut peer, "t").await;
        // The client is not reading because the subscription's channel is full.
        assert!(write_until_blocked(&mut peer, sid, 2000).await);
        assert!(client.stats().backpressure_waits >= 1);
        // Reading again lets the connection move on.
        let Some(Ok(Event::Message(m))) = sub.next().await else {
            panic!("expected a message")
        };
        assert_eq!(m.seq, Seq(1));
    }

    #[tokio::test]
    async fn buffered_payload_bytes_are_bounded_too() {
        // Room for many events but few bytes: 2000 x 64 KiB would fit the
        // event bound, so only the byte budget can stop the socket.
        let options = ClientOptions {
            subscription_capacity: 100_000,
            subscription_bytes: 256 * 1024,
            ..ClientOptions::default()
        };
        let (client, mut peer) = pair(options).await;
        let (mut sub, sid) = subscribed(&client, &mut peer, "t").await;
        assert!(write_until_blocked(&mut peer, sid, 2000).await);
        assert!(client.stats().backpressure_waits >= 1);
        let Some(Ok(Event::Message(m))) = sub.next().await else {
            panic!("expected a message")
        };
        assert_eq!(m.seq, Seq(1));
    }

    fn view_reply(req: u64) -> Reply {
        Reply::Cluster {
            req,
            view: ClusterView::default(),
        }
    }

    impl Client {
        /// Flushes through `peer`, so everything sent before was read.
        async fn flush_via(&self, peer: &mut Peer) {
            let c = self.clone();
            let flush = tokio::spawn(async move { c.flush().await });
            let Request::Cluster { req } = peer.recv().await else {
                panic!("expected the flush's view request")
            };
            peer.send(view_reply(req)).await;
            flush.await.unwrap().unwrap();
        }
    }
}
