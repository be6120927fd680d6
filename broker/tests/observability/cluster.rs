//! A local cluster of real `ordo-broker` processes on loopback multicast,
//! and a small blocking client speaking the wire protocol to drive traffic.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ordo_wire::client::{Reply, Request, DEFAULT_MAX_FRAME, PROTOCOL_VERSION};
use ordo_wire::{CausalContext, Ordering};

use super::http;
use super::prometheus::free_port;

/// One broker process; killed by PID when dropped.
#[derive(Debug)]
pub struct Broker {
    pub node: u32,
    pub client_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    child: Child,
    log: PathBuf,
}

impl Broker {
    /// Its stderr so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `n` brokers of one cluster with a name and group port of their own, so
/// concurrent tests on the same host never hear each other.
#[derive(Debug)]
pub struct Cluster {
    pub brokers: Vec<Broker>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` brokers dropping `loss_percent`% of received datagrams and
    /// waits until each one's `/healthz` shows a view of all `n`.
    pub fn start(n: u32, loss_percent: u32, patience: Duration) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("ordo-obs-cluster")
            .tempdir()
            .expect("temp dir for broker logs");
        let group_port = UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .map(|a| a.port())
            .expect("a free UDP port for the group");
        let group = format!("239.255.77.1:{group_port}");
        let cluster = format!("obs-{}-{group_port}", std::process::id());
        let brokers = (1..=n)
            .map(|node| {
                let client_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
                let metrics_addr: SocketAddr =
                    format!("127.0.0.1:{}", free_port()).parse().unwrap();
                let log = dir.path().join(format!("broker-{node}.log"));
                let child = Command::new(env!("CARGO_BIN_EXE_ordo-broker"))
                    .args(["--node-id", &node.to_string()])
                    .args(["--cluster", &cluster])
                    .args(["--group", &group])
                    .args(["--iface", "127.0.0.1"])
                    .args(["--listen", &client_addr.to_string()])
                    .args(["--metrics", &metrics_addr.to_string()])
                    .args(["--inject-loss-percent", &loss_percent.to_string()])
                    .env("RUST_LOG", "info")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(&log).expect("broker log file"))
                    .spawn()
                    .expect("spawn ordo-broker");
                Broker {
                    node,
                    client_addr,
                    metrics_addr,
                    child,
                    log,
                }
            })
            .collect();
        let mut cluster = Cluster { brokers, _dir: dir };
        cluster.wait_for_view(n as usize, patience);
        cluster
    }

    fn wait_for_view(&mut self, members: usize, patience: Duration) {
        let deadline = Instant::now() + patience;
        for i in 0..self.brokers.len() {
            loop {
                // A broker that exited will never answer: say so at once.
                if let Ok(Some(status)) = self.brokers[i].child.try_wait() {
                    panic!(
                        "broker {} exited ({status}) before joining; logs:\n{}",
                        self.brokers[i].node,
                        self.logs()
                    );
                }
                let b = &self.brokers[i];
                let health = http::get(b.metrics_addr, "/healthz");
                if let Ok((200, body)) = &health {
                    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| {
                        panic!("/healthz of broker {} not JSON ({e}): {body}", b.node)
                    });
                    if v["members"].as_array().map(Vec::len) == Some(members) {
                        break;
                    }
                }
                assert!(
                    Instant::now() < deadline,
                    "broker {} never reached a view of {members} (last /healthz: {health:?}); logs:\n{}",
                    b.node,
                    self.logs()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }

    /// Every broker's log, for failure messages.
    pub fn logs(&self) -> String {
        self.brokers
            .iter()
            .map(|b| format!("--- broker {} ---\n{}", b.node, b.log()))
            .collect()
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
