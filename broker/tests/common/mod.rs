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

/// One line `ordo sub --json` printed, with when the test read it.
#[derive(Debug, Clone)]
pub struct SubLine {
    /// When the line reached the test (arrival time, for delivery pauses).
    pub at: std::time::Instant,
    pub topic: String,
    pub payload: String,
    pub publisher: u64,
    pub origin: u32,
    pub incarnation: u64,
    pub seq: u64,
    pub gseq: Option<u64>,
}

impl SubLine {
    /// The message's identity: origin broker, its incarnation, its sequence.
    pub fn key(&self) -> (u32, u64, u64) {
        (self.origin, self.incarnation, self.seq)
    }
}

/// A running `ordo sub PATTERN --json` process: the CLI users run, so the
/// failure tests check the guarantees on what a subscriber really printed.
/// Its stdout and stderr are read by threads as they arrive; the process is
/// killed (by pid) on drop.
pub struct CliSub {
    child: std::process::Child,
    /// Where the subscriber was connected (for messages).
    pub server: SocketAddr,
    lines: std::sync::Arc<std::sync::Mutex<Vec<SubLine>>>,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<(std::time::Instant, String)>>>,
    bad: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl CliSub {
    /// Starts `ordo --server <server> sub <pattern> --json` and waits until
    /// it printed `subscribed` (panics with what it printed otherwise).
    pub fn start(server: SocketAddr, pattern: &str) -> CliSub {
        use std::io::BufRead;
        use std::sync::{Arc, Mutex};
        let cli = ordo_broker::testkit::ordo_cli_binary().unwrap_or_else(|e| panic!("{e}"));
        let mut cmd = std::process::Command::new(cli);
        for (k, _) in std::env::vars() {
            if k.starts_with("ORDO_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .args(["--server", &server.to_string(), "sub", pattern, "--json"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("cannot start ordo sub");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let bad = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let (l, b) = (lines.clone(), bad.clone());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let at = std::time::Instant::now();
                match parse_sub_line(&line, at) {
                    Some(m) => l.lock().unwrap().push(m),
                    None => b.lock().unwrap().push(line),
                }
            }
        });
        let err = child.stderr.take().unwrap();
        let e = stderr.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                e.lock().unwrap().push((std::time::Instant::now(), line));
            }
        });
        let mut sub = CliSub {
            child,
            server,
            lines,
            stderr,
            bad,
        };
        let deadline = std::time::Instant::now() + WAIT;
        while !sub
            .stderr_lines()
            .iter()
            .any(|l| l.starts_with("subscribed "))
        {
            if let Ok(Some(status)) = sub.child.try_wait() {
                panic!(
                    "ordo sub {pattern} at {server} exited ({status}) before subscribing: {:?}",
                    sub.stderr_lines()
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "ordo sub {pattern} at {server} did not print `subscribed` in {WAIT:?}: {:?}",
                sub.stderr_lines()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        sub
    }

    /// Every message printed so far, in print order.
    pub fn lines(&self) -> Vec<SubLine> {
        let bad = self.bad.lock().unwrap();
        assert!(
            bad.is_empty(),
            "ordo sub at {} printed lines that are not contract JSON: {bad:?}",
            self.server
        );
        self.lines.lock().unwrap().clone()
    }

    /// How many messages were printed so far.
    pub fn count(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// Every stderr line so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr
            .lock()
            .unwrap()
            .iter()
            .map(|(_, l)| l.clone())
            .collect()
    }

    /// The `discontinuity` lines on stderr so far.
    pub fn discontinuities(&self) -> Vec<String> {
        self.stderr_lines()
            .into_iter()
            .filter(|l| l.starts_with("discontinuity"))
            .collect()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until `done` holds for the printed messages; panics after
    /// `timeout` naming `what` and what was printed.
    pub fn wait_until(&self, what: &str, timeout: Duration, done: impl Fn(&[SubLine]) -> bool) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if done(&self.lines()) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "subscriber at {}: {what} did not happen in {timeout:?} ({} messages printed; stderr {:?})",
                self.server,
                self.count(),
                self.stderr_lines()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for CliSub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `ordo sub --json` line, or None if it breaks the contract.
fn parse_sub_line(line: &str, at: std::time::Instant) -> Option<SubLine> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    Some(SubLine {
        at,
        topic: v["topic"].as_str()?.to_string(),
        payload: v["payload"].as_str()?.to_string(),
        publisher: v["publisher"].as_u64()?,
        origin: u32::try_from(v["origin"].as_u64()?).ok()?,
        incarnation: v["incarnation"].as_u64()?,
        seq: v["seq"].as_u64()?,
        gseq: match &v["gseq"] {
            serde_json::Value::Null => None,
            g => Some(g.as_u64()?),
        },
    })
}

/// Checks what one subscriber printed on `topic`: no message twice (by
/// origin, incarnation and seq, and by payload), each publisher's messages
/// in publish order (payloads `<tag>:<n>` with growing n, and growing seq
/// per origin incarnation and publisher), and on total topics a gseq that
/// grows by exactly one per message. Returns the topic's messages.
pub fn check_stream(who: &str, lines: &[SubLine], topic: &str) -> Vec<SubLine> {
    use std::collections::{HashMap, HashSet};
    let msgs: Vec<SubLine> = lines.iter().filter(|m| m.topic == topic).cloned().collect();
    let mut keys = HashSet::new();
    let mut payloads = HashSet::new();
    let mut last_n: HashMap<String, u64> = HashMap::new();
    let mut last_seq: HashMap<(u32, u64, u64), u64> = HashMap::new();
    let mut last_gseq: Option<u64> = None;
    for m in &msgs {
        assert!(
            keys.insert(m.key()),
            "{who} on {topic}: message {:?} delivered twice",
            m.key()
        );
        assert!(
            payloads.insert(m.payload.clone()),
            "{who} on {topic}: payload {:?} delivered twice",
            m.payload
        );
        // Payloads `<tag>:<n>` (optionally `:<padding>`); others are not
        // numbered and only checked by seq.
        let numbered = m.payload.split_once(':').and_then(|(tag, rest)| {
            let n = rest.split(':').next()?.parse::<u64>().ok()?;
            Some((tag, n))
        });
        if let Some((tag, n)) = numbered {
            if let Some(prev) = last_n.insert(tag.to_string(), n) {
                assert!(
                    n > prev,
                    "{who} on {topic}: publisher {tag} out of order: {n} after {prev}"
                );
            }
        }
        let p = (m.origin, m.incarnation, m.publisher);
        if let Some(prev) = last_seq.insert(p, m.seq) {
            assert!(
                m.seq > prev,
                "{who} on {topic}: publisher {p:?} out of order: seq {} after {prev}",
                m.seq
            );
        }
        if let Some(g) = m.gseq {
            if let Some(prev) = last_gseq {
                assert_eq!(
                    g,
                    prev + 1,
                    "{who} on {topic}: gseq {g} follows {prev} (must grow by one)"
                );
            }
            last_gseq = Some(g);
        }
    }
    msgs
}
