//! A local cluster of real `ordo-broker` processes on loopback multicast,
//! and a small blocking client speaking the wire protocol to drive traffic.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ordo_broker::testkit::{free_tcp_addr, BrokerProcess, ClusterSpec};
use ordo_wire::client::{Reply, Request, DEFAULT_MAX_FRAME, PROTOCOL_VERSION};
use ordo_wire::{CausalContext, Ordering};

/// Up to `n` brokers of one fresh cluster (its own name and multicast
/// group, so concurrent tests never hear each other), node ids 1..=n,
/// started one by one so a test can watch members join. Their metrics
/// addresses are chosen up front, so Prometheus can be told all of them
/// before the last broker exists. Each [`BrokerProcess`] is killed by PID
/// when dropped.
#[derive(Debug)]
pub struct Cluster {
    pub brokers: Vec<BrokerProcess>,
    spec: ClusterSpec,
    metrics: Vec<SocketAddr>,
    loss_percent: u32,
}

impl Cluster {
    /// Plans `n` brokers, each dropping `loss_percent`% of the datagrams it
    /// receives; none is started yet.
    pub fn plan(n: u32, loss_percent: u32) -> Cluster {
        Cluster {
            brokers: Vec::new(),
            spec: ClusterSpec::new(),
            metrics: (0..n).map(|_| free_tcp_addr()).collect(),
            loss_percent,
        }
    }

    /// Starts the next planned broker and waits until it serves clients.
    pub fn start_next(&mut self) {
        let i = self.brokers.len();
        let mut b = BrokerProcess::builder()
            .binary(env!("CARGO_BIN_EXE_ordo-broker"))
            .cluster(&self.spec)
            .args([
                "--node-id".to_string(),
                (i + 1).to_string(),
                "--metrics".to_string(),
                self.metrics[i].to_string(),
            ]);
        if self.loss_percent > 0 {
            b = b.args([
                "--inject-loss-percent".to_string(),
                self.loss_percent.to_string(),
            ]);
        }
        self.brokers.push(b.start());
    }

    /// Waits until every started broker's `/healthz` shows a view of all of them.
    pub fn wait_for_view(&self, patience: Duration) {
        let members = self.brokers.len();
        let deadline = Instant::now() + patience;
        for (i, b) in self.brokers.iter().enumerate() {
            loop {
                let health = b.http_get("/healthz");
                if let Ok((200, body)) = &health {
                    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| {
                        panic!("/healthz of broker {} not JSON ({e}): {body}", i + 1)
                    });
                    if v["members"].as_array().map(Vec::len) == Some(members) {
                        break;
                    }
                }
                assert!(
                    Instant::now() < deadline,
                    "broker {} never reached a view of {members} (last /healthz: {health:?})",
                    i + 1
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }

    /// Every planned broker's `/metrics` address, started or not.
    pub fn metrics_addrs(&self) -> &[SocketAddr] {
        &self.metrics
    }
}

/// A blocking client connection speaking the wire protocol.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    next_req: u64,
}

impl Conn {
    /// Connects and completes the Hello/Welcome handshake.
    pub fn open(addr: SocketAddr, name: &str) -> Conn {
        let stream = TcpStream::connect(addr).expect("connect to the broker");
        stream.set_nodelay(true).unwrap();
        let mut conn = Conn {
            stream,
            buf: BytesMut::new(),
            next_req: 1,
        };
        conn.send(&Request::Hello {
            version: PROTOCOL_VERSION,
            token: None,
            name: name.to_string(),
        });
        match conn.recv(Duration::from_secs(10)) {
            Some(Reply::Welcome { .. }) => conn,
            other => panic!("expected Welcome from {addr}, got {other:?}"),
        }
    }

    /// Sends raw bytes (to provoke a protocol error).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to the broker");
    }

    pub fn send(&mut self, req: &Request) {
        let mut out = BytesMut::new();
        req.encode(&mut out);
        self.send_raw(&out);
    }

    /// A fresh request id.
    pub fn req(&mut self) -> u64 {
        self.next_req += 1;
        self.next_req
    }

    /// The next reply, or None on timeout or a closed connection.
    pub fn recv(&mut self, timeout: Duration) -> Option<Reply> {
        let deadline = Instant::now() + timeout;
        loop {
            match Reply::decode(&mut self.buf, DEFAULT_MAX_FRAME as usize) {
                Ok(Some(reply)) => return Some(reply),
                Ok(None) => {}
                Err(e) => panic!("undecodable reply: {e}"),
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return None
                }
                Err(_) => return None,
            }
        }
    }

    /// Sends a request carrying `req` and waits for its Ok (panics on Error).
    pub fn call(&mut self, req: u64, request: &Request) {
        self.send(request);
        loop {
            match self.recv(Duration::from_secs(30)) {
                Some(Reply::Ok { req: r }) if r == req => return,
                Some(Reply::Error {
                    req: r,
                    code,
                    message,
                }) if r == req || r == 0 => {
                    panic!("{request:?} refused: {code:?} {message}")
                }
                Some(_) => {}
                None => panic!("no answer to {request:?}"),
            }
        }
    }

    pub fn declare(&mut self, topic: &str, ordering: Ordering) {
        let req = self.req();
        self.call(
            req,
            &Request::Declare {
                req,
                topic: topic.to_string(),
                ordering,
                safe: false,
            },
        );
    }

    pub fn subscribe(&mut self, sid: u64, pattern: &str) {
        let req = self.req();
        self.call(
            req,
            &Request::Subscribe {
                req,
                sid,
                pattern: pattern.to_string(),
            },
        );
    }

    /// Publishes with a confirmation request; returns the confirmation id.
    pub fn publish(&mut self, topic: &str, payload: &str) -> u64 {
        let req = self.req();
        self.send(&Request::Publish {
            confirm: Some(req),
            topic: topic.to_string(),
            context: CausalContext::default(),
            payload: bytes::Bytes::copy_from_slice(payload.as_bytes()),
        });
        req
    }
}
