//! Test support: start real `ordo-broker` processes on unique ports and a
//! unique multicast group, wait until they serve, and stop them.
//!
//! Used by this crate's end-to-end tests, the client crate's CLI tests and
//! multi-broker tests. Blocking std code only, so it works from plain and
//! `#[tokio::test]` tests alike.
//!
//! ```no_run
//! use ordo_broker::testkit::{BrokerProcess, ClusterSpec};
//! // One broker in its own cluster:
//! let b = BrokerProcess::start(&["--max-payload", "64KiB"]);
//! println!("clients connect to {}", b.addr());
//! // Three brokers that hear each other (and nobody else):
//! let cluster = ClusterSpec::new();
//! let brokers: Vec<_> = (1..=3)
//!     .map(|i| BrokerProcess::builder().cluster(&cluster).arg("--node-id").arg(i.to_string()).start())
//!     .collect();
//! ```
//!
//! The binary is found through `ORDO_BROKER_BIN` or `CARGO_BIN_EXE_ordo-broker`
//! at run time, else next to the test executable (`target/<profile>/`); a test
//! of this crate can pass `env!("CARGO_BIN_EXE_ordo-broker")` to
//! [`BrokerBuilder::binary`]. Tests of other crates must build it first
//! (`cargo build -p ordo-broker`). [`ordo_cli_binary`] finds the `ordo` CLI
//! the same way, and [`healthz`] reads a broker's `/healthz` as the contract
//! defines it.
//!
//! A broker started with `--tls-cert` needs [`BrokerBuilder::tls`]: the
//! probes (readiness, [`BrokerProcess::cluster_view`]) then speak TLS with
//! the CA (and client certificate) given there.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ordo_wire::client::{
    ClusterView, ErrorCode, MembershipState, Reply, Request, LEN_PREFIX, PROTOCOL_VERSION,
};

/// How long [`BrokerBuilder::start`] waits for the broker to serve.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A cluster identity no concurrent test shares: its own cluster name and
/// multicast group address and port.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// `--cluster` value.
    pub name: String,
    /// `--group` value (239.255.x.y:port).
    pub group: SocketAddrV4,
}

impl ClusterSpec {
    /// A fresh cluster: the name and group derive from this process id and a
    /// counter, and the port is one the kernel reports free right now.
    pub fn new() -> ClusterSpec {
        let n = NEXT.fetch_add(1, AtomicOrdering::Relaxed);
        let pid = std::process::id();
        // Spread (pid, n) over 239.255.1.0 – 239.255.254.255, avoiding the
        // contract's default 239.255.77.1.
        let h = pid
            .wrapping_mul(2_654_435_761)
            .wrapping_add(n.wrapping_mul(40_503));
        let mut a = (1 + (h >> 8) % 254) as u8;
        let b = (h & 0xff) as u8;
        if a == 77 {
            a = 78;
        }
        let port = free_udp_port();
        ClusterSpec {
            name: format!("test-{pid}-{n}"),
            group: SocketAddrV4::new(Ipv4Addr::new(239, 255, a, b), port),
        }
    }
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec::new()
    }
}

/// Configures a broker process before starting it.
#[derive(Debug, Default)]
pub struct BrokerBuilder {
    binary: Option<PathBuf>,
    cluster: Option<ClusterSpec>,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    rust_log: Option<String>,
    skip_health: bool,
    tls: Option<TestTls>,
}

/// How the testkit's probes reach a TLS broker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestTls {
    /// PEM CA certificate that signed the broker's certificate.
    pub ca: PathBuf,
    /// PEM certificate and key to present (a broker with `--tls-client-ca`).
    pub client: Option<(PathBuf, PathBuf)>,
    /// The name the broker's certificate carries (default `localhost`).
    pub server_name: Option<String>,
}

impl BrokerBuilder {
    /// Uses this `ordo-broker` binary.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// Joins this cluster (default: a fresh [`ClusterSpec`] of its own).
    pub fn cluster(mut self, cluster: &ClusterSpec) -> Self {
        self.cluster = Some(cluster.clone());
        self
    }

    /// Adds a command-line argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Adds command-line arguments.
    pub fn args<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable for the broker (e.g. `ORDO_NODE_ID`).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// RUST_LOG for the broker (default: the test's RUST_LOG, else `info`).
    pub fn rust_log(mut self, filter: impl Into<String>) -> Self {
        self.rust_log = Some(filter.into());
        self
    }

    /// Whether start-up also waits until `GET /healthz` answers 200 (the
    /// broker is in a view). On by default; turn it off to observe a broker
    /// that is not (yet) in a view.
    pub fn wait_healthy(mut self, yes: bool) -> Self {
        self.skip_health = !yes;
        self
    }

    /// Probes the broker over TLS (give the broker `--tls-cert`/`--tls-key`
    /// yourself; this only tells the testkit how to connect).
    pub fn tls(mut self, tls: TestTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Starts the broker and waits until it accepts a handshake and its
    /// `/healthz` answers 200; panics with the broker's stderr if it does not
    /// within [`START_TIMEOUT`].
    pub fn start(self) -> BrokerProcess {
        match self.try_start() {
            Ok(b) => b,
            Err(e) => panic!("{e}"),
        }
    }

    /// Like [`BrokerBuilder::start`], returning the failure (with the
    /// broker's stderr) instead of panicking.
    pub fn try_start(self) -> Result<BrokerProcess, String> {
        // A port found free can be taken by someone else before the broker
        // binds it; such a start is retried with fresh ports.
        let chosen_by_caller = ["--listen", "--metrics"]
            .iter()
            .any(|f| flag_value(&self.args, f).is_some())
            || ["ORDO_LISTEN", "ORDO_METRICS"]
                .iter()
                .any(|k| env_value(&self.envs, k).is_some());
        let mut attempt = 0;
        loop {
            match self.try_start_once() {
                Err(e)
                    if !chosen_by_caller && e.contains("Address already in use") && attempt < 3 =>
                {
                    attempt += 1
                }
                other => return other,
            }
        }
    }

    fn try_start_once(&self) -> Result<BrokerProcess, String> {
        let binary = match &self.binary {
            Some(b) => b.clone(),
            None => find_binary()?,
        };
        let cluster = self.cluster.clone().unwrap_or_default();
        let has = |flag: &str| {
            self.args
                .iter()
                .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
        };
        let has_env = |key: &str| self.envs.iter().any(|(k, _)| k == key);
        let mut args: Vec<String> = Vec::new();
        let addr = if has("--listen") || has_env("ORDO_LISTEN") {
            None
        } else {
            let a = free_tcp_addr();
            args.extend(["--listen".into(), a.to_string()]);
            Some(a)
        };
        let metrics = if has("--metrics") || has_env("ORDO_METRICS") {
            None
        } else {
            let a = free_tcp_addr();
            args.extend(["--metrics".into(), a.to_string()]);
            Some(a)
        };
        if !has("--cluster") && !has_env("ORDO_CLUSTER") {
            args.extend(["--cluster".into(), cluster.name.clone()]);
        }
        if !has("--group") && !has_env("ORDO_GROUP") {
            args.extend(["--group".into(), cluster.group.to_string()]);
        }
        args.extend(self.args.iter().cloned());
        // The address the test connects to: ours, or the one the caller set.
        let addr = addr
            .or_else(|| flag_value(&self.args, "--listen").and_then(|s| s.parse().ok()))
            .or_else(|| env_value(&self.envs, "ORDO_LISTEN").and_then(|s| s.parse().ok()))
            .ok_or("set --listen to a literal address when overriding it")?;
        let metrics = metrics
            .or_else(|| flag_value(&self.args, "--metrics").and_then(|s| s.parse().ok()))
            .or_else(|| env_value(&self.envs, "ORDO_METRICS").and_then(|s| s.parse().ok()))
            .ok_or("set --metrics to a literal address when overriding it")?;

        let n = NEXT.fetch_add(1, AtomicOrdering::Relaxed);
        let stderr_path =
            std::env::temp_dir().join(format!("ordo-broker-{}-{n}.stderr", std::process::id()));
        let stderr = std::fs::File::create(&stderr_path)
            .map_err(|e| format!("cannot create {}: {e}", stderr_path.display()))?;
        let rust_log = self
            .rust_log
            .clone()
            .or_else(|| std::env::var("RUST_LOG").ok())
            .unwrap_or_else(|| "info".into());
        let mut cmd = Command::new(&binary);
        cmd.args(&args)
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        // Only what the test asks for: a developer's ORDO_* must not leak in.
        for (k, _) in std::env::vars() {
            if k.starts_with("ORDO_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let token = flag_value(&args, "--auth-token")
            .or_else(|| env_value(&self.envs, "ORDO_AUTH_TOKEN"))
            .map(String::from);
        let mut broker = BrokerProcess {
            child,
            addr,
            metrics,
            cluster,
            stderr_path,
            args,
            token,
            tls: self.tls.clone(),
        };
        broker.wait_ready(!self.skip_health)?;
        Ok(broker)
    }
}

/// A running `ordo-broker` process; killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct BrokerProcess {
    child: Child,
    addr: SocketAddr,
    metrics: SocketAddr,
    cluster: ClusterSpec,
    stderr_path: PathBuf,
    args: Vec<String>,
    /// The client token the broker requires, if it was configured by flag or env.
    token: Option<String>,
    /// How probes speak TLS to it, if it listens with TLS.
    tls: Option<TestTls>,
}

impl BrokerProcess {
    /// A builder for a broker with more settings than [`BrokerProcess::start`].
    pub fn builder() -> BrokerBuilder {
        BrokerBuilder::default()
    }

    /// Starts a broker in a cluster of its own with extra arguments; see
    /// [`BrokerBuilder::start`].
    pub fn start(extra_args: &[&str]) -> BrokerProcess {
        BrokerBuilder::default()
            .args(extra_args.iter().copied())
            .start()
    }

    /// The client address (`--listen`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The operator endpoint address (`--metrics`).
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics
    }

    /// The cluster the broker runs in.
    pub fn cluster(&self) -> &ClusterSpec {
        &self.cluster
    }

    /// The arguments it was started with.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the broker with SIGKILL (a crash) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM (graceful shutdown); see [`BrokerProcess::wait_exit`].
    pub fn terminate(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.child.id().to_string())
                .status();
        }
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => return None,
            }
        }
    }

    /// Everything the broker logged so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Where the broker's stderr is written.
    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// The broker's current view, asked over a short client session.
    pub fn cluster_view(&self) -> Result<ClusterView, String> {
        cluster_view_with(self.addr, self.token.as_deref(), self.tls.as_ref())
    }

    /// Waits until the broker is in a view of exactly `members` members
    /// (e.g. all brokers of a cluster found each other); returns that view.
    pub fn wait_for_members(
        &self,
        members: usize,
        timeout: Duration,
    ) -> Result<ClusterView, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = self.cluster_view();
            if let Ok(v) = &last {
                if v.members.len() == members {
                    return Ok(v.clone());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "broker {} not in a {members}-member view after {timeout:?}; last answer {last:?}",
                    self.addr
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// `GET path` on the metrics address: (status code, body).
    pub fn http_get(&self, path: &str) -> std::io::Result<(u16, String)> {
        http_get(self.metrics, path)
    }

    /// The broker's `/healthz`, parsed.
    pub fn healthz(&self) -> Result<Healthz, String> {
        healthz(self.metrics)
    }

    fn wait_ready(&mut self, health: bool) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "ordo-broker exited during start-up ({status}); stderr:\n{}",
                    self.stderr()
                ));
            }
            let ready = match handshake(self.addr, self.tls.as_ref()) {
                Ok(()) if health => match self.http_get("/healthz") {
                    Ok((200, _)) => Ok(()),
                    Ok((code, body)) => Err(format!("/healthz answered {code}: {body}")),
                    Err(e) => Err(format!("/healthz: {e}")),
                },
                other => other,
            };
            let last_err = match ready {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                return Err(format!(
                    "ordo-broker on {} not ready after {START_TIMEOUT:?} ({last_err}); stderr:\n{}",
                    self.addr,
                    self.stderr()
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            // The test failed: show what the broker said.
            eprintln!(
                "--- ordo-broker {} stderr ({}) ---\n{}",
                self.addr,
                self.stderr_path.display(),
                tail(&self.stderr(), 64 * 1024)
            );
        } else {
            let _ = std::fs::remove_file(&self.stderr_path);
        }
    }
}

fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == flag {
            return it.next().map(String::as_str);
        }
        if let Some(v) = a.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
            return Some(v);
        }
    }
    None
}

fn env_value<'a>(envs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    envs.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The `ordo-broker` binary for tests.
fn find_binary() -> Result<PathBuf, String> {
    find_sibling(
        "ordo-broker",
        &["ORDO_BROKER_BIN", "CARGO_BIN_EXE_ordo-broker"],
        "cargo build -p ordo-broker",
    )
}

/// The `ordo` command-line tool, for tests that check what its users see
/// (`ordo sub --json`, `ordo pub` exit codes): `ORDO_CLI_BIN`, else the
/// binary next to the test executable (`target/<profile>/ordo`, which
/// `cargo test --workspace` builds; `cargo build -p ordo-client` otherwise).
pub fn ordo_cli_binary() -> Result<PathBuf, String> {
    find_sibling(
        "ordo",
        &["ORDO_CLI_BIN", "CARGO_BIN_EXE_ordo"],
        "cargo build -p ordo-client",
    )
}

/// A workspace binary: from the first set variable of `vars`, else from
/// the target directory holding the running test executable.
fn find_sibling(name: &str, vars: &[&str], build: &str) -> Result<PathBuf, String> {
    for var in vars {
        if let Some(p) = std::env::var_os(var) {
            return Ok(PathBuf::from(p));
        }
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    // Test executables live in target/<profile>/deps/.
    let mut candidates = Vec::new();
    if let Some(deps) = exe.parent() {
        candidates.push(deps.join(name));
        if let Some(profile) = deps.parent() {
            candidates.push(profile.join(name));
        }
    }
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        format!(
            "{name} binary not found next to {}; run `{build}` or set {}",
            exe.display(),
            vars[0]
        )
    })
}

/// A loopback address with a port that is free right now.
pub fn free_tcp_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("cannot find a free TCP port: {e}"))
}

/// A UDP port that is free on loopback right now.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot find a free UDP port: {e}"))
}

/// A probe's stream: plain TCP or TLS over it.
trait Io: Read + Write {}
impl<T: Read + Write> Io for T {}

/// A blocking client session for probes: connect (with TLS when `tls` is
/// given) and say Hello.
fn session(
    addr: SocketAddr,
    token: Option<&str>,
    tls: Option<&TestTls>,
) -> Result<(Box<dyn Io>, Reply), String> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_millis(500))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let mut s: Box<dyn Io> = match tls {
        None => Box::new(tcp),
        Some(tls) => Box::new(tls_stream(tcp, tls)?),
    };
    send(
        &mut *s,
        &Request::Hello {
            version: PROTOCOL_VERSION,
            token: token.map(String::from),
            name: "testkit-probe".into(),
        },
    )?;
    let answer = read_reply(&mut *s)?;
    Ok((s, answer))
}

/// A blocking TLS client stream over `tcp` (the handshake happens on first use).
fn tls_stream(
    tcp: TcpStream,
    tls: &TestTls,
) -> Result<
    tokio_rustls::rustls::StreamOwned<tokio_rustls::rustls::ClientConnection, TcpStream>,
    String,
> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio_rustls::rustls;
    let certs = |path: &Path| {
        CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("{}: {e}", path.display()))
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(&tls.ca)? {
        roots.add(c).map_err(|e| e.to_string())?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match &tls.client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| e.to_string())?;
            builder
                .with_client_auth_cert(certs(cert)?, key)
                .map_err(|e| e.to_string())?
        }
    };
    let name = ServerName::try_from(tls.server_name.clone().unwrap_or("localhost".into()))
        .map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    Ok(rustls::StreamOwned::new(conn, tcp))
}

fn send(s: &mut dyn Io, req: &Request) -> Result<(), String> {
    let mut buf = BytesMut::new();
    req.encode(&mut buf);
    s.write_all(&buf).map_err(|e| format!("write: {e}"))?;
    s.flush().map_err(|e| format!("write: {e}"))
}

fn read_reply(s: &mut dyn Io) -> Result<Reply, String> {
    let mut prefix = [0u8; LEN_PREFIX];
    s.read_exact(&mut prefix)
        .map_err(|e| format!("read: {e}"))?;
    let len = u32::from_be_bytes(prefix) as usize;
    if len > 1 << 20 {
        return Err(format!("absurd reply length {len}"));
    }
    let mut frame = BytesMut::from(&prefix[..]);
    frame.resize(LEN_PREFIX + len, 0);
    s.read_exact(&mut frame[LEN_PREFIX..])
        .map_err(|e| format!("read: {e}"))?;
    match Reply::decode(&mut frame, 1 << 20) {
        Ok(Some(r)) => Ok(r),
        other => Err(format!("undecodable reply {other:?}")),
    }
}

/// Opens a client session: Ok for a Welcome (or a token refusal, which
/// also proves the broker serves).
fn handshake(addr: SocketAddr, tls: Option<&TestTls>) -> Result<(), String> {
    match session(addr, None, tls)?.1 {
        Reply::Welcome { .. }
        | Reply::Error {
            code: ErrorCode::NotAuthorized,
            ..
        } => Ok(()),
        other => Err(format!("unexpected handshake answer {other:?}")),
    }
}

/// Asks the broker at `addr` for its current view.
pub fn cluster_view(addr: SocketAddr, token: Option<&str>) -> Result<ClusterView, String> {
    cluster_view_with(addr, token, None)
}

/// Asks the broker at `addr` for its current view, over TLS if `tls` is given.
pub fn cluster_view_with(
    addr: SocketAddr,
    token: Option<&str>,
    tls: Option<&TestTls>,
) -> Result<ClusterView, String> {
    let (mut s, welcome) = session(addr, token, tls)?;
    if !matches!(welcome, Reply::Welcome { .. }) {
        return Err(format!("handshake refused: {welcome:?}"));
    }
    send(&mut *s, &Request::Cluster { req: 1 })?;
    loop {
        match read_reply(&mut *s)? {
            Reply::Cluster { req: 1, view } => return Ok(view),
            Reply::Error { message, .. } => return Err(message),
            _ => {}
        }
    }
}

/// A minimal HTTP/1.1 GET: (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// What `GET /healthz` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Healthz {
    /// 200: the broker is a member of this view (state member or flushing).
    InView(HealthView),
    /// 503: the broker is not a member of a view.
    NotReady {
        /// What it is doing (discovering, joining, rejoining, leaving, left).
        state: MembershipState,
        /// The broker's reason.
        reason: String,
        /// The last view it was a member of, if any: not its view now.
        last_view: Option<HealthView>,
    },
}

/// A view `/healthz` shows: the broker's view (200) or its last one (503).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthView {
    /// The answering broker's node id.
    pub node_id: u32,
    /// The answering broker's incarnation.
    pub incarnation: u64,
    /// The answering broker's membership state.
    pub state: MembershipState,
    /// The view's id.
    pub view_id: u64,
    /// Its members' node ids.
    pub members: Vec<u32>,
    /// The member running view changes.
    pub coordinator: u32,
    /// The total-seq sequencer, if the view has one.
    pub sequencer: Option<u32>,
    /// Whether total-order topics deliver in this view.
    pub primary: bool,
}

impl Healthz {
    /// The view the broker is a member of, if it is one (never a stale one).
    pub fn view(&self) -> Option<&HealthView> {
        match self {
            Healthz::InView(v) => Some(v),
            Healthz::NotReady { .. } => None,
        }
    }

    /// The broker's membership state.
    pub fn state(&self) -> MembershipState {
        match self {
            Healthz::InView(v) => v.state,
            Healthz::NotReady { state, .. } => *state,
        }
    }
}

/// `GET /healthz` on a metrics address, parsed; Err for no answer or an
/// answer that breaks the contract (README, *Watching it*).
pub fn healthz(metrics: SocketAddr) -> Result<Healthz, String> {
    let (status, body) = http_get(metrics, "/healthz").map_err(|e| format!("/healthz: {e}"))?;
    let v: serde_json::Value = serde_json::from_str(&body)
        .map_err(|e| format!("/healthz body is not JSON ({e}): {body}"))?;
    let bad = |field: &str| format!("/healthz lacks a valid {field:?}: {body}");
    let state = v["state"]
        .as_str()
        .and_then(MembershipState::from_name)
        .ok_or_else(|| bad("state"))?;
    let node_id = v["node_id"]
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| bad("node_id"))?;
    let incarnation = v["incarnation"]
        .as_u64()
        .ok_or_else(|| bad("incarnation"))?;
    // The view fields of `view` (the top level, or `last_view`).
    let parse_view = |view: &serde_json::Value| -> Result<HealthView, String> {
        let id = |field: &str| -> Result<u32, String> {
            view[field]
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| bad(field))
        };
        let members = view["members"]
            .as_array()
            .ok_or_else(|| bad("members"))?
            .iter()
            .map(|m| m.as_u64().and_then(|n| u32::try_from(n).ok()))
            .collect::<Option<Vec<u32>>>()
            .ok_or_else(|| bad("members"))?;
        let sequencer = match &view["sequencer"] {
            serde_json::Value::Null => None,
            _ => Some(id("sequencer")?),
        };
        Ok(HealthView {
            node_id,
            incarnation,
            state,
            view_id: view["view_id"].as_u64().ok_or_else(|| bad("view_id"))?,
            members,
            coordinator: id("coordinator")?,
            sequencer,
            primary: view["primary"].as_bool().ok_or_else(|| bad("primary"))?,
        })
    };
    let ready = v["ready"].as_bool().ok_or_else(|| bad("ready"))?;
    match status {
        200 if ready && state.is_member() => Ok(Healthz::InView(parse_view(&v)?)),
        503 if !ready && !state.is_member() => Ok(Healthz::NotReady {
            state,
            reason: v["reason"]
                .as_str()
                .ok_or_else(|| bad("reason"))?
                .to_string(),
            last_view: match &v["last_view"] {
                serde_json::Value::Null => None,
                last => Some(parse_view(last)?),
            },
        }),
        other => Err(format!(
            "/healthz answered {other} with state {state} and ready {ready}: {body}"
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// Serves one canned HTTP answer on a loopback port; returns the port.
    fn serve_once(status: &'static str, body: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            // Read the whole request head before answering: closing with
            // unread bytes makes the kernel reset the connection, and the
            // client would see the reset instead of our reply.
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
        });
        addr
    }

    #[test]
    fn healthz_parses_a_view() {
        let addr = serve_once(
            "200 OK",
            r#"{"node_id":2,"incarnation":5,"state":"flushing","ready":true,"view_id":7,"members":[1,2,3],"coordinator":1,"sequencer":null,"primary":false}"#,
        );
        assert_eq!(
            healthz(addr).unwrap(),
            Healthz::InView(HealthView {
                node_id: 2,
                incarnation: 5,
                state: MembershipState::Flushing,
                view_id: 7,
                members: vec![1, 2, 3],
                coordinator: 1,
                sequencer: None,
                primary: false,
            })
        );
    }

    #[test]
    fn healthz_parses_not_ready_and_refuses_a_broken_contract() {
        let addr = serve_once(
            "503 Service Unavailable",
            r#"{"node_id":2,"incarnation":6,"state":"rejoining","ready":false,"status":"not ready","reason":"rejoining: x","last_view":{"view_id":7,"members":[1,2],"coordinator":1,"sequencer":1,"primary":true}}"#,
        );
        let h = healthz(addr).unwrap();
        assert_eq!(h.view(), None, "a last view is not the broker's view");
        assert_eq!(
            h,
            Healthz::NotReady {
                state: MembershipState::Rejoining,
                reason: "rejoining: x".into(),
                last_view: Some(HealthView {
                    node_id: 2,
                    incarnation: 6,
                    state: MembershipState::Rejoining,
                    view_id: 7,
                    members: vec![1, 2],
                    coordinator: 1,
                    sequencer: Some(1),
                    primary: true,
                }),
            }
        );
        // A 200 without the fields the contract names is an error, not a view.
        let addr = serve_once(
            "200 OK",
            r#"{"node_id":2,"incarnation":1,"state":"member","ready":true,"view_id":7,"members":[1]}"#,
        );
        let e = healthz(addr).unwrap_err();
        assert!(e.contains("coordinator"), "{e}");
        // So is a 200 for a broker that says it is not a member.
        let addr = serve_once(
            "200 OK",
            r#"{"node_id":2,"incarnation":1,"state":"rejoining","ready":true,"view_id":7,"members":[1],"coordinator":1,"sequencer":null,"primary":true}"#,
        );
        let e = healthz(addr).unwrap_err();
        assert!(e.contains("rejoining"), "{e}");
    }
}
