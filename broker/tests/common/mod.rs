//! Shared helpers for the end-to-end tests: start a broker from this
//! crate's binary, and a small async client built directly on the wire
//! protocol (so tests can also misbehave on purpose).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ordo_broker::testkit::{BrokerBuilder, BrokerProcess};
use ordo_wire::client::{Delivery, ErrorCode, Limits, Reply, Request, PROTOCOL_VERSION};
use ordo_wire::{CausalContext, NodeId, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// A builder preset with this crate's broker binary.
pub fn broker() -> BrokerBuilder {
    BrokerProcess::builder().binary(env!("CARGO_BIN_EXE_ordo-broker"))
}

/// Starts a broker with extra arguments.
pub fn start(args: &[&str]) -> BrokerProcess {
    broker().args(args.iter().copied()).start()
}

/// A raw client: frames in, frames out; replies that arrive while waiting
/// for something else are kept in order.
pub struct Client {
    pub stream: TcpStream,
    buf: BytesMut,
    stash: VecDeque<Reply>,
    next_req: u64,
    pub client_id: u64,
    pub node: NodeId,
    pub limits: Limits,
}

impl Client {
    /// Connects and completes the handshake.
    pub async fn connect(addr: SocketAddr) -> Client {
        Client::connect_with_token(addr, None)
            .await
            .unwrap_or_else(|e| panic!("handshake refused: {e:?}"))
    }

    /// Connects with a token; Err carries the broker's error reply.
    pub async fn connect_with_token(
        addr: SocketAddr,
        token: Option<&str>,
    ) -> Result<Client, Reply> {
        let mut c = Client::raw(addr).await;
        c.send(&Request::Hello {
            version: PROTOCOL_VERSION,
            token: token.map(String::from),
            name: "e2e".into(),
        })
        .await;
        match c.recv().await.expect("broker closed during handshake") {
            Reply::Welcome {
                node,
                client_id,
                limits,
                ..
            } => {
                c.node = node;
                c.client_id = client_id;
                c.limits = limits;
                Ok(c)
            }
            other => Err(other),
        }
    }

    /// A TCP connection without handshake.
    pub async fn raw(addr: SocketAddr) -> Client {
        Client::from_stream(TcpStream::connect(addr).await.unwrap())
    }

    /// Wraps a connected stream (no handshake yet).
    pub fn from_stream(stream: TcpStream) -> Client {
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: BytesMut::with_capacity(64 * 1024),
            stash: VecDeque::new(),
            next_req: 1,
            client_id: 0,
            node: NodeId(0),
            limits: Limits::default(),
        }
    }

    pub async fn send(&mut self, req: &Request) {
        let mut out = BytesMut::new();
        req.encode(&mut out);
        self.stream.write_all(&out).await.unwrap();
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next frame (stashed first), or None at end of stream / reset.
    pub async fn recv(&mut self) -> Option<Reply> {
        if let Some(r) = self.stash.pop_front() {
            return Some(r);
        }
        tokio::time::timeout(WAIT, self.read_frame())
            .await
            .expect("timed out waiting for a frame from the broker")
    }

    async fn read_frame(&mut self) -> Option<Reply> {
        loop {
            if let Some(r) =
                Reply::decode(&mut self.buf, 64 << 20).expect("broker sent a bad frame")
            {
                return Some(r);
            }
            self.buf.reserve(64 * 1024);
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Sends a request carrying `req` and waits for its Ok or Error,
    /// stashing anything else that arrives first.
    pub async fn request(&mut self, make: impl FnOnce(u64) -> Request) -> Reply {
        let req = self.next_req;
        self.next_req += 1;
        self.send(&make(req)).await;
        let mut skipped = VecDeque::new();
        let answer = loop {
            let r = match self.stash.pop_front() {
                Some(r) => r,
                None => tokio::time::timeout(WAIT, self.read_frame())
                    .await
                    .expect("timed out waiting for an answer")
                    .expect("broker closed the connection before answering"),
            };
            match &r {
                Reply::Ok { req: q }
                | Reply::Error { req: q, .. }
                | Reply::Topics { req: q, .. }
                | Reply::Cluster { req: q, .. }
                    if *q == req =>
                {
                    break r
                }
                _ => skipped.push_back(r),
            }
        };
        skipped.extend(self.stash.drain(..));
        self.stash = skipped;
        answer
    }

    pub async fn declare(&mut self, topic: &str, ordering: Ordering, safe: bool) -> Reply {
        let topic = topic.to_string();
        self.request(|req| Request::Declare {
            req,
            topic,
            ordering,
            safe,
        })
        .await
    }

    /// Subscribes and asserts the broker confirmed it.
    pub async fn subscribe(&mut self, sid: u64, pattern: &str) {
        let pattern = pattern.to_string();
        let r = self
            .request(|req| Request::Subscribe {
                req,
                sid,
                pattern: pattern.clone(),
            })
            .await;
        assert!(matches!(r, Reply::Ok { .. }), "subscribe {pattern}: {r:?}");
    }

    /// Publishes without confirmation.
    pub async fn publish(&mut self, topic: &str, payload: impl Into<Bytes>) {
        self.send(&Request::Publish {
            confirm: None,
            topic: topic.into(),
            context: CausalContext::new(),
            payload: payload.into(),
        })
        .await;
    }

    /// Publishes with confirmation and returns the answer.
    pub async fn publish_confirmed(&mut self, topic: &str, payload: impl Into<Bytes>) -> Reply {
        let topic = topic.to_string();
        let payload = payload.into();
        self.request(|req| Request::Publish {
            confirm: Some(req),
            topic,
            context: CausalContext::new(),
            payload,
        })
        .await
    }

    /// The next message; panics on anything else.
    pub async fn message(&mut self) -> Delivery {
        match self.recv().await {
            Some(Reply::Message(d)) => *d,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Reads until end of stream; returns every frame seen.
    pub async fn drain_to_eof(&mut self) -> Vec<Reply> {
        let mut v = Vec::new();
        while let Some(r) = self.recv().await {
            v.push(r);
        }
        v
    }
}

/// Asserts `r` is an error with `code` whose message contains every `needle`.
pub fn assert_error(r: &Reply, code: ErrorCode, needles: &[&str]) {
    match r {
        Reply::Error {
            code: c, message, ..
        } => {
            assert_eq!(*c, code, "{message}");
            for n in needles {
                assert!(message.contains(n), "{message:?} lacks {n:?}");
            }
        }
        other => panic!("expected {code:?} error, got {other:?}"),
    }
}

/// The value of one series in the broker's `/metrics` (e.g.
/// `ordo_protocol_errors_total{reason="not_hello"}`), 0 when absent.
pub fn metric(b: &BrokerProcess, series: &str) -> f64 {
    let (code, body) = b.http_get("/metrics").expect("GET /metrics");
    assert_eq!(code, 200, "{body}");
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}
