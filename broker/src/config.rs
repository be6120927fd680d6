//! The broker's configuration: flags, `ORDO_*` environment variables and a
//! TOML file, merged with the precedence flag > env > file > default and
//! validated into one [`Config`].
//!
//! Every name of DESIGN.md's command-line contract is here with its default;
//! the TOML file uses the flag names as keys (`node-id = 3`) and may declare
//! topics (`[[topics]] name = "orders" ordering = "causal" safe = false`).

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use ordo_wire::key::ClusterKey;
use ordo_wire::{KeyError, NodeId, Ordering};
use serde::Deserialize;

use crate::topics::validate_topic;

/// The default multicast group of the command-line contract.
pub const DEFAULT_GROUP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(239, 255, 77, 1), 7400);
/// The default client listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7411";
/// The default metrics address.
pub const DEFAULT_METRICS: &str = "127.0.0.1:9411";

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// Command-line flags. Every field is optional here so the merge can tell
/// "given" from "defaulted"; defaults live in [`Config::resolve`] and are
/// shown in `--help`.
#[derive(Debug, Default, Clone, Parser)]
#[command(
    name = "ordo-broker",
    version,
    about = "Ordo broker: pub/sub over reliable IP multicast",
    long_about = "Ordo broker: pub/sub over reliable IP multicast.\n\n\
        Every flag can also be set as ORDO_<FLAG> in the environment (e.g. ORDO_NODE_ID) \
        and as a key in the --config TOML file (e.g. node-id = 3). Precedence: flag > env > file > default."
)]
pub struct Args {
    /// TOML configuration file; see the module documentation.
    #[arg(
        long,
        env = "ORDO_CONFIG",
        value_name = "FILE",
        help = "TOML configuration file (keys are the flag names; may declare [[topics]])"
    )]
    pub config: Option<PathBuf>,
    /// This broker's node id, unique in the cluster (nonzero) [default: random, logged].
    #[arg(long, env = "ORDO_NODE_ID", value_name = "ID")]
    pub node_id: Option<u32>,
    /// Cluster name; brokers of other clusters are ignored [default: ordo].
    #[arg(long, env = "ORDO_CLUSTER", value_name = "NAME")]
    pub cluster: Option<String>,
    /// Multicast group and port the brokers talk on [default: 239.255.77.1:7400].
    #[arg(long, env = "ORDO_GROUP", value_name = "ADDR:PORT")]
    pub group: Option<String>,
    /// Interface address to join the group on and send from [default: 127.0.0.1].
    #[arg(long, env = "ORDO_IFACE", value_name = "ADDR")]
    pub iface: Option<String>,
    /// Multicast TTL; 0 keeps datagrams on this host [default: 0].
    #[arg(long, env = "ORDO_TTL")]
    pub ttl: Option<u32>,
    /// Address clients connect to [default: 127.0.0.1:7411].
    #[arg(long, env = "ORDO_LISTEN", value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// Address of the /metrics and /healthz endpoint [default: 127.0.0.1:9411].
    #[arg(long, env = "ORDO_METRICS", value_name = "ADDR:PORT")]
    pub metrics: Option<String>,
    /// Cluster key file: one secret (at least 16 bytes) per line; the first
    /// signs inter-broker frames, every one verifies (rotation). Brokers drop
    /// frames no key verifies [default: none, frames unauthenticated].
    #[arg(long, env = "ORDO_CLUSTER_KEY_FILE", value_name = "FILE")]
    pub cluster_key_file: Option<PathBuf>,
    /// Largest payload a client may publish, e.g. 1048576 or 1MiB [default: 1MiB].
    #[arg(long, env = "ORDO_MAX_PAYLOAD", value_name = "BYTES")]
    pub max_payload: Option<ByteSize>,
    /// Largest client frame in either direction [default: 8MiB].
    #[arg(long, env = "ORDO_MAX_FRAME", value_name = "BYTES")]
    pub max_frame: Option<ByteSize>,
    /// Most client connections served at once [default: 10000].
    #[arg(long, env = "ORDO_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Most subscriptions per client connection [default: 10000].
    #[arg(long, env = "ORDO_MAX_SUBSCRIPTIONS", value_name = "N")]
    pub max_subscriptions: Option<usize>,
    /// Most topics this broker creates (declared or first used); beyond it a new topic is refused with `limit` [default: 100000].
    #[arg(long, env = "ORDO_MAX_TOPICS", value_name = "N")]
    pub max_topics: Option<usize>,
    /// Bound on bytes queued for one client; a client above it is disconnected as a slow consumer [default: 64MiB].
    #[arg(long, env = "ORDO_CLIENT_QUEUE_BYTES", value_name = "BYTES")]
    pub client_queue_bytes: Option<ByteSize>,
    /// Bound on frames queued for one client (slow-consumer policy as for bytes) [default: 65536].
    #[arg(long, env = "ORDO_CLIENT_QUEUE_FRAMES", value_name = "N")]
    pub client_queue_frames: Option<usize>,
    /// Ordering of a topic used before it is declared [default: fifo].
    #[arg(long, env = "ORDO_DEFAULT_ORDERING", value_name = "ORDERING")]
    pub default_ordering: Option<String>,
    /// Token clients must present in their handshake (prefer ORDO_AUTH_TOKEN: flags show in `ps`).
    #[arg(
        long,
        env = "ORDO_AUTH_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub auth_token: Option<String>,
    /// PEM certificate chain for the client listener; with --tls-key, clients must use TLS (1.2 or 1.3).
    #[arg(long, env = "ORDO_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "ORDO_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s): require client certificates signed by them (mutual TLS; needs --tls-cert).
    #[arg(long, env = "ORDO_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// Bound on the multicast retransmit buffer [default: 64MiB].
    #[arg(long, env = "ORDO_RETRANSMIT_BUFFER_BYTES", value_name = "BYTES")]
    pub retransmit_buffer_bytes: Option<ByteSize>,
    /// Largest datagram sent to the group, headers included [default: the
    /// --iface interface's MTU less 28 bytes of IP/UDP headers, at most 65000:
    /// 1472 on Ethernet, 65000 on loopback; 1472 when the MTU cannot be read].
    #[arg(long, env = "ORDO_MAX_DATAGRAM", value_name = "BYTES")]
    pub max_datagram: Option<ByteSize>,
    /// Requested SO_RCVBUF of the group socket [default: 4MiB].
    #[arg(long, env = "ORDO_RECV_BUFFER", value_name = "BYTES")]
    pub recv_buffer: Option<ByteSize>,
    /// Requested SO_SNDBUF of the group socket [default: 4MiB].
    #[arg(long, env = "ORDO_SEND_BUFFER", value_name = "BYTES")]
    pub send_buffer: Option<ByteSize>,
    /// How long a graceful shutdown may take before connections are dropped, in seconds [default: 5].
    #[arg(long, env = "ORDO_SHUTDOWN_TIMEOUT", value_name = "SECS")]
    pub shutdown_timeout: Option<u64>,
    /// How long a new client may take to send its Hello, and the longest a client may pause in the
    /// middle of a frame, before it is dropped, in seconds [default: 10].
    #[arg(long, env = "ORDO_HANDSHAKE_TIMEOUT", value_name = "SECS")]
    pub handshake_timeout: Option<u64>,
    /// Testing only: drop this percentage of received group datagrams before
    /// the engine sees them, to exercise NAK repair without root [default: 0].
    #[arg(long, env = "ORDO_INJECT_LOSS_PERCENT", value_name = "PERCENT")]
    pub inject_loss_percent: Option<u8>,
    /// Interval between heartbeats to the group, in milliseconds; the
    /// failure detector learns from their arrival times [default: 100].
    #[arg(long, env = "ORDO_HEARTBEAT_INTERVAL", value_name = "MS")]
    pub heartbeat_interval: Option<u64>,
    /// Longest a sending broker goes, in milliseconds, without asking the
    /// others for a prompt acknowledgement when no confirmation, `safe` or
    /// total-order message waits for one; 0 asks at the end of every burst
    /// (one acknowledgement datagram per broker per millisecond at steady
    /// low rates) [default: 10].
    #[arg(long, env = "ORDO_ACK_INTERVAL", value_name = "MS")]
    pub ack_interval: Option<u64>,
    /// Failure detector threshold (phi accrual): a broker is suspected once
    /// phi exceeds it. Lower detects crashes sooner but suspects live
    /// brokers on a jittery network (they are excluded and rejoin) [default: 8].
    #[arg(long, env = "ORDO_PHI_THRESHOLD", value_name = "PHI")]
    pub phi_threshold: Option<f64>,
    /// Silence tolerated on top of the usual heartbeat interval before
    /// suspicion grows, in milliseconds. With the defaults a crashed broker
    /// is suspected about 1.6 s after its last frame [default: 1000].
    #[arg(long, env = "ORDO_ACCEPTABLE_HEARTBEAT_PAUSE", value_name = "MS")]
    pub acceptable_heartbeat_pause: Option<u64>,
    /// Join rounds (each waits one --acceptable-heartbeat-pause for the
    /// coordinator it asks) left unanswered before a (re)joining broker
    /// forms a view of its own, which merges with the group once they hear
    /// each other; 0 never gives up [default: 5].
    #[arg(long, env = "ORDO_MAX_JOIN_ATTEMPTS", value_name = "N")]
    pub max_join_attempts: Option<u32>,
    /// How many brokers the cluster has. Total-order topics then need a
    /// majority of them before the first primary view, so a broker restarted
    /// while cut off from its group does not order total topics alone;
    /// 0 means unknown: the first view a group forms is primary [default: 0].
    #[arg(long, env = "ORDO_CLUSTER_SIZE", value_name = "N")]
    pub cluster_size: Option<usize>,
}

/// The TOML file: the same keys as the flags, plus topic declarations.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    pub node_id: Option<u32>,
    pub cluster: Option<String>,
    pub group: Option<String>,
    pub iface: Option<String>,
    pub ttl: Option<u32>,
    pub listen: Option<String>,
    pub metrics: Option<String>,
    pub cluster_key_file: Option<PathBuf>,
    pub max_payload: Option<ByteSize>,
    pub max_frame: Option<ByteSize>,
    pub max_connections: Option<usize>,
    pub max_subscriptions: Option<usize>,
    pub max_topics: Option<usize>,
    pub client_queue_bytes: Option<ByteSize>,
    pub client_queue_frames: Option<usize>,
    pub default_ordering: Option<String>,
    pub auth_token: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_client_ca: Option<PathBuf>,
    pub retransmit_buffer_bytes: Option<ByteSize>,
    pub max_datagram: Option<ByteSize>,
    pub recv_buffer: Option<ByteSize>,
    pub send_buffer: Option<ByteSize>,
    pub shutdown_timeout: Option<u64>,
    pub handshake_timeout: Option<u64>,
    pub inject_loss_percent: Option<u8>,
    pub heartbeat_interval: Option<u64>,
    pub ack_interval: Option<u64>,
    pub phi_threshold: Option<f64>,
    pub acceptable_heartbeat_pause: Option<u64>,
    pub max_join_attempts: Option<u32>,
    pub cluster_size: Option<usize>,
    #[serde(default)]
    pub topics: Vec<FileTopic>,
}

/// A `[[topics]]` entry of the TOML file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTopic {
    pub name: String,
    /// fifo | causal | total-isis | total-seq; the default ordering when absent.
    pub ordering: Option<String>,
    #[serde(default)]
    pub safe: bool,
}

/// A topic declared in the configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDecl {
    pub name: String,
    pub ordering: Ordering,
    pub safe: bool,
}

/// The validated configuration the broker runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_id: NodeId,
    /// True when no node id was configured and one was drawn at random.
    pub node_id_random: bool,
    pub cluster: String,
    pub group: SocketAddrV4,
    pub iface: Ipv4Addr,
    pub ttl: u32,
    pub listen: SocketAddr,
    pub metrics: SocketAddr,
    /// The cluster key read from `--cluster-key-file`, if one was given.
    pub cluster_key: Option<ClusterKey>,
    pub max_payload: u32,
    pub max_frame: u32,
    pub max_connections: usize,
    pub max_subscriptions: usize,
    /// Most topics created here.
    pub max_topics: usize,
    pub client_queue_bytes: usize,
    pub client_queue_frames: usize,
    pub default_ordering: Ordering,
    pub auth_token: Option<String>,
    /// The client listener's TLS files; `None`: plain TCP.
    pub tls: Option<crate::server::tls::TlsFiles>,
    pub retransmit_buffer_bytes: usize,
    pub max_datagram: usize,
    /// Where `max_datagram` came from ("configured", or the MTU it follows), for the log.
    pub max_datagram_source: String,
    pub recv_buffer: usize,
    pub send_buffer: usize,
    pub shutdown_timeout: Duration,
    pub handshake_timeout: Duration,
    /// Percentage of received group datagrams dropped on purpose (testing).
    pub inject_loss_percent: u8,
    /// Heartbeat interval of the group (failure detector input).
    pub heartbeat_interval: Duration,
    /// Longest wait for a prompt acknowledgement nobody waits on.
    pub ack_interval: Duration,
    /// Failure detector threshold.
    pub phi_threshold: f64,
    /// Silence tolerated before suspicion grows.
    pub acceptable_heartbeat_pause: Duration,
    /// Unanswered join rounds before founding a view (0: never).
    pub max_join_attempts: u32,
    /// Brokers in the cluster (0: unknown).
    pub cluster_size: usize,
    pub topics: Vec<TopicDecl>,
}

/// Why the configuration cannot be used; each message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML or holds unknown keys.
    #[error("configuration file {path} is invalid: {message}")]
    ParseFile { path: PathBuf, message: String },
    /// A setting has a value the broker cannot use.
    #[error("invalid {key} {value:?}: {hint}")]
    Invalid {
        key: &'static str,
        value: String,
        hint: String,
    },
    /// The cluster key file could not be read.
    #[error("cannot read the cluster key file {path}: {source} (check --cluster-key-file)")]
    ReadKey {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The cluster key file holds no usable key.
    #[error("cluster key file {path} is refused: {source}")]
    Key { path: PathBuf, source: KeyError },
    /// A security feature was requested that does not exist yet.
    #[error("{flag} was given, but cluster authentication is not implemented yet; refusing to run without the protection you asked for (remove {flag} to run unauthenticated on a trusted network)")]
    Refused { flag: &'static str },
    /// Two `[[topics]]` entries disagree.
    #[error("configuration file declares topic {name:?} twice with different settings: {first} and {second}")]
    TopicConflict {
        name: String,
        first: String,
        second: String,
    },
}

fn invalid(key: &'static str, value: impl fmt::Display, hint: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.to_string(),
        hint: hint.into(),
    }
}

impl FileConfig {
    /// Reads and parses a TOML configuration file.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        FileConfig::parse(&text).map_err(|message| ConfigError::ParseFile {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses TOML text; the error is the parser's message (with line and key).
    pub fn parse(text: &str) -> Result<FileConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
    }
}

impl Config {
    /// Parses the process's flags and environment, loads the file they name,
    /// and validates the result.
    pub fn from_env_and_args() -> Result<Config, ConfigError> {
        let args = Args::parse();
        let file = match &args.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        Config::resolve(args, file)
    }

    /// Merges flags (clap has already applied env over them) over the file
    /// over the defaults, and validates every value.
    pub fn resolve(args: Args, file: FileConfig) -> Result<Config, ConfigError> {
        let cluster_key = match args.cluster_key_file.or(file.cluster_key_file) {
            Some(path) => Some(load_cluster_key(&path)?),
            None => None,
        };

        let (node_id, node_id_random) = match args.node_id.or(file.node_id) {
            Some(0) => {
                return Err(invalid(
                    "--node-id",
                    0,
                    "node ids start at 1; pick a number unique in the cluster",
                ))
            }
            Some(id) => (NodeId(id), false),
            None => (NodeId(rand::random::<u32>().max(1)), true),
        };

        let cluster = args
            .cluster
            .or(file.cluster)
            .unwrap_or_else(|| "ordo".to_string());
        if cluster.is_empty()
            || cluster.len() > 64
            || !cluster
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(invalid(
                "--cluster",
                &cluster,
                "use 1 to 64 ASCII letters, digits, '-', '_' or '.'",
            ));
        }

        let group = match args.group.or(file.group) {
            Some(s) => parse_group(&s)?,
            None => DEFAULT_GROUP,
        };
        let iface_text = args.iface.or(file.iface);
        let iface = match iface_text {
            Some(s) => s.parse::<Ipv4Addr>().map_err(|_| {
                invalid(
                    "--iface",
                    &s,
                    "give the IPv4 address of the interface to use, e.g. 127.0.0.1",
                )
            })?,
            None => Ipv4Addr::LOCALHOST,
        };
        let ttl = args.ttl.or(file.ttl).unwrap_or(0);
        if ttl > 255 {
            return Err(invalid(
                "--ttl",
                ttl,
                "a multicast TTL is 0..=255 (0 keeps datagrams on this host)",
            ));
        }
        let listen = parse_addr(
            "--listen",
            args.listen.or(file.listen).as_deref(),
            DEFAULT_LISTEN,
        )?;
        let metrics = parse_addr(
            "--metrics",
            args.metrics.or(file.metrics).as_deref(),
            DEFAULT_METRICS,
        )?;

        let max_payload = args
            .max_payload
            .or(file.max_payload)
            .unwrap_or(ByteSize(MIB));
        let max_frame = args
            .max_frame
            .or(file.max_frame)
            .unwrap_or(ByteSize(8 * MIB));
        let max_frame_u32 = u32::try_from(max_frame.0)
            .ok()
            .filter(|&f| f >= 64)
            .ok_or_else(|| invalid("--max-frame", max_frame, "use 64 bytes to 4GiB-1"))?;
        let max_payload_u32 = u32::try_from(max_payload.0)
            .ok()
            .filter(|&p| p >= 1)
            .ok_or_else(|| invalid("--max-payload", max_payload, "use 1 byte to 4GiB-1"))?;
        // A publish frame carries the topic and context besides the payload.
        if u64::from(max_payload_u32) + 1024 > u64::from(max_frame_u32) {
            return Err(invalid(
                "--max-payload",
                max_payload,
                format!("it must be at least 1KiB below --max-frame ({max_frame}); raise --max-frame or lower --max-payload"),
            ));
        }

        let max_connections = positive(
            "--max-connections",
            args.max_connections.or(file.max_connections),
            10_000,
        )?;
        let max_subscriptions = positive(
            "--max-subscriptions",
            args.max_subscriptions.or(file.max_subscriptions),
            10_000,
        )?;
        let max_topics = positive("--max-topics", args.max_topics.or(file.max_topics), 100_000)?;
        let client_queue_bytes = args
            .client_queue_bytes
            .or(file.client_queue_bytes)
            .unwrap_or(ByteSize(64 * MIB));
        if client_queue_bytes.0 < 1024 {
            return Err(invalid(
                "--client-queue-bytes",
                client_queue_bytes,
                "use at least 1KiB",
            ));
        }
        let client_queue_frames = positive(
            "--client-queue-frames",
            args.client_queue_frames.or(file.client_queue_frames),
            65_536,
        )?;

        let default_ordering = match args.default_ordering.or(file.default_ordering) {
            Some(s) => parse_ordering("--default-ordering", &s)?,
            None => Ordering::Fifo,
        };

        let auth_token = args.auth_token.or(file.auth_token);
        if auth_token.as_deref() == Some("") {
            return Err(invalid(
                "--auth-token",
                "",
                "an empty token protects nothing; give a long random string or leave it unset",
            ));
        }
        let tls = resolve_tls(
            args.tls_cert.or(file.tls_cert),
            args.tls_key.or(file.tls_key),
            args.tls_client_ca.or(file.tls_client_ca),
        )?;

        let retransmit_buffer_bytes = args
            .retransmit_buffer_bytes
            .or(file.retransmit_buffer_bytes)
            .unwrap_or(ByteSize(64 * MIB));
        if retransmit_buffer_bytes.0 < 64 * KIB {
            return Err(invalid(
                "--retransmit-buffer-bytes",
                retransmit_buffer_bytes,
                "use at least 64KiB",
            ));
        }
        // Unset: as large as the interface carries without IP fragmentation
        // (a fragment lost loses the whole datagram; reassembly costs CPU).
        let (max_datagram, max_datagram_source) = match args.max_datagram.or(file.max_datagram) {
            Some(v) => (v, "configured".to_string()),
            None => match crate::shell::transport::interface_mtu(iface, *group.ip()) {
                Ok((name, mtu)) => (
                    ByteSize(crate::shell::transport::datagram_for_mtu(mtu) as u64),
                    format!("MTU {mtu} of {name}"),
                ),
                Err(e) => {
                    let mtu = crate::shell::transport::FALLBACK_MTU;
                    (
                        ByteSize(crate::shell::transport::datagram_for_mtu(mtu) as u64),
                        format!("MTU of {iface} unknown ({e}): assumed {mtu}"),
                    )
                }
            },
        };
        if !(512..=65_507).contains(&max_datagram.0) {
            return Err(invalid(
                "--max-datagram",
                max_datagram,
                "a UDP datagram is 512 to 65507 bytes here; 1472 fits an Ethernet MTU",
            ));
        }
        let recv_buffer = args
            .recv_buffer
            .or(file.recv_buffer)
            .unwrap_or(ByteSize(4 * MIB));
        let send_buffer = args
            .send_buffer
            .or(file.send_buffer)
            .unwrap_or(ByteSize(4 * MIB));
        let shutdown_timeout = args.shutdown_timeout.or(file.shutdown_timeout).unwrap_or(5);
        let heartbeat_interval = args
            .heartbeat_interval
            .or(file.heartbeat_interval)
            .unwrap_or(100);
        if !(1..=60_000).contains(&heartbeat_interval) {
            return Err(invalid(
                "--heartbeat-interval",
                heartbeat_interval,
                "give milliseconds between 1 and 60000",
            ));
        }
        let ack_interval = args.ack_interval.or(file.ack_interval).unwrap_or(10);
        if ack_interval > 1_000 {
            return Err(invalid(
                "--ack-interval",
                ack_interval,
                "give milliseconds between 0 and 1000",
            ));
        }
        let phi_threshold = args.phi_threshold.or(file.phi_threshold).unwrap_or(8.0);
        if !phi_threshold.is_finite() || phi_threshold <= 0.0 {
            return Err(invalid(
                "--phi-threshold",
                phi_threshold,
                "give a positive number (8 is a good start; 1 to 16 is usual)",
            ));
        }
        let acceptable_heartbeat_pause = args
            .acceptable_heartbeat_pause
            .or(file.acceptable_heartbeat_pause)
            .unwrap_or(1000);
        if acceptable_heartbeat_pause > 3_600_000 {
            return Err(invalid(
                "--acceptable-heartbeat-pause",
                acceptable_heartbeat_pause,
                "give milliseconds, at most an hour",
            ));
        }
        let handshake_timeout = positive(
            "--handshake-timeout",
            args.handshake_timeout
                .or(file.handshake_timeout)
                .map(|s| usize::try_from(s).unwrap_or(usize::MAX)),
            10,
        )?;

        let inject_loss_percent = args
            .inject_loss_percent
            .or(file.inject_loss_percent)
            .unwrap_or(0);
        if inject_loss_percent > 100 {
            return Err(invalid(
                "--inject-loss-percent",
                inject_loss_percent,
                "a percentage is at most 100",
            ));
        }

        let mut topics: Vec<TopicDecl> = Vec::with_capacity(file.topics.len());
        for t in file.topics {
            validate_topic(&t.name).map_err(|e| invalid("topic name", &t.name, e.to_string()))?;
            let ordering = match t.ordering {
                Some(s) => parse_ordering("topic ordering", &s)?,
                None => default_ordering,
            };
            let decl = TopicDecl {
                name: t.name,
                ordering,
                safe: t.safe,
            };
            match topics.iter().find(|d| d.name == decl.name) {
                Some(prev) if *prev != decl => {
                    return Err(ConfigError::TopicConflict {
                        name: decl.name.clone(),
                        first: describe(prev),
                        second: describe(&decl),
                    })
                }
                Some(_) => {}
                None => topics.push(decl),
            }
        }

        Ok(Config {
            node_id,
            node_id_random,
            cluster,
            group,
            iface,
            ttl,
            listen,
            metrics,
            cluster_key,
            max_payload: max_payload_u32,
            max_frame: max_frame_u32,
            max_connections,
            max_subscriptions,
            max_topics,
            client_queue_bytes: usize::try_from(client_queue_bytes.0).unwrap_or(usize::MAX),
            client_queue_frames,
            default_ordering,
            auth_token,
            tls,
            retransmit_buffer_bytes: usize::try_from(retransmit_buffer_bytes.0)
                .unwrap_or(usize::MAX),
            max_datagram: usize::try_from(max_datagram.0).unwrap_or(usize::MAX),
            max_datagram_source,
            recv_buffer: usize::try_from(recv_buffer.0).unwrap_or(usize::MAX),
            send_buffer: usize::try_from(send_buffer.0).unwrap_or(usize::MAX),
            shutdown_timeout: Duration::from_secs(shutdown_timeout),
            handshake_timeout: Duration::from_secs(handshake_timeout as u64),
            inject_loss_percent,
            heartbeat_interval: Duration::from_millis(heartbeat_interval),
            ack_interval: Duration::from_millis(ack_interval),
            phi_threshold,
            acceptable_heartbeat_pause: Duration::from_millis(acceptable_heartbeat_pause),
            max_join_attempts: args
                .max_join_attempts
                .or(file.max_join_attempts)
                .unwrap_or(crate::engine::DEFAULT_MAX_JOIN_ATTEMPTS),
            cluster_size: args.cluster_size.or(file.cluster_size).unwrap_or(0),
            topics,
        })
    }
}

/// TLS needs both the certificate and its key; a client CA needs both too.
/// (The files are read and checked when the listener starts.)
fn resolve_tls(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
) -> Result<Option<crate::server::tls::TlsFiles>, ConfigError> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(crate::server::tls::TlsFiles {
            cert,
            key,
            client_ca,
        })),
        (Some(cert), None) => Err(invalid(
            "--tls-cert",
            cert.display(),
            "TLS needs the certificate's private key too: give --tls-key (ORDO_TLS_KEY, tls-key)",
        )),
        (None, Some(key)) => Err(invalid(
            "--tls-key",
            key.display(),
            "TLS needs the certificate too: give --tls-cert (ORDO_TLS_CERT, tls-cert)",
        )),
        (None, None) => match client_ca {
            Some(ca) => Err(invalid(
                "--tls-client-ca",
                ca.display(),
                "client certificates are checked only on a TLS listener: give --tls-cert and --tls-key too",
            )),
            None => Ok(None),
        },
    }
}

/// Reads and parses a cluster key file (see [`ClusterKey::parse`]), warning
/// when its mode lets the group or others read it. Never logs key material.
pub fn load_cluster_key(path: &Path) -> Result<ClusterKey, ConfigError> {
    let bytes = std::fs::read(path).map_err(|source| ConfigError::ReadKey {
        path: path.to_owned(),
        source,
    })?;
    let key = ClusterKey::parse(&bytes).map_err(|source| ConfigError::Key {
        path: path.to_owned(),
        source,
    })?;
    if let Some(mode) = readable_by_others(path) {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{mode:o}"),
            "the cluster key file is readable by its group or others; restrict it (chmod 600)"
        );
    }
    Ok(key)
}

/// The file's permission bits when they let the group or others read it.
fn readable_by_others(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o044 != 0).then_some(mode)
}

fn describe(d: &TopicDecl) -> String {
    if d.safe {
        format!("{} --safe", d.ordering)
    } else {
        d.ordering.to_string()
    }
}

fn positive(key: &'static str, v: Option<usize>, default: usize) -> Result<usize, ConfigError> {
    match v {
        Some(0) => Err(invalid(key, 0, "use at least 1")),
        Some(n) => Ok(n),
        None => Ok(default),
    }
}

fn parse_ordering(key: &'static str, s: &str) -> Result<Ordering, ConfigError> {
    s.parse::<Ordering>()
        .map_err(|_| invalid(key, s, "use fifo, causal, total-isis or total-seq"))
}

fn parse_group(s: &str) -> Result<SocketAddrV4, ConfigError> {
    let addr = s.parse::<SocketAddrV4>().map_err(|_| {
        invalid(
            "--group",
            s,
            "give an IPv4 multicast address and port, e.g. 239.255.77.1:7400",
        )
    })?;
    if !addr.ip().is_multicast() {
        return Err(invalid(
            "--group",
            s,
            "the address must be multicast (224.0.0.0/4); 239.255.0.0/16 is the site-local range",
        ));
    }
    if addr.port() == 0 {
        return Err(invalid(
            "--group",
            s,
            "every broker must agree on the port, so it cannot be 0",
        ));
    }
    Ok(addr)
}

fn parse_addr(
    key: &'static str,
    given: Option<&str>,
    default: &str,
) -> Result<SocketAddr, ConfigError> {
    let s = given.unwrap_or(default);
    s.parse::<SocketAddr>()
        .map_err(|_| invalid(key, s, "give an IP address and port, e.g. 127.0.0.1:7411"))
}

/// A byte count given as a plain number or with a binary suffix
/// (`64KiB`, `1MiB`, `2GiB`; `K`, `M`, `G` mean the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

/// A string that is not a byte count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a byte count: give a number with an optional KiB, MiB or GiB suffix, e.g. 1048576 or 1MiB")]
pub struct ParseByteSizeError(String);

impl FromStr for ByteSize {
    type Err = ParseByteSizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, suffix) = t.split_at(split);
        let n: u64 = digits
            .parse()
            .map_err(|_| ParseByteSizeError(s.to_string()))?;
        let mult = match suffix.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" | "kb" => KIB,
            "m" | "mib" | "mb" => MIB,
            "g" | "gib" | "gb" => GIB,
            _ => return Err(ParseByteSizeError(s.to_string())),
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| ParseByteSizeError(s.to_string()))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n >= GIB && (n / GIB) * GIB == n {
            write!(f, "{}GiB", n / GIB)
        } else if n >= MIB && (n / MIB) * MIB == n {
            write!(f, "{}MiB", n / MIB)
        } else if n >= KIB && (n / KIB) * KIB == n {
            write!(f, "{}KiB", n / KIB)
        } else {
            write!(f, "{n}")
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Args {
        let mut argv = vec!["ordo-broker"];
        argv.extend_from_slice(list);
        Args::try_parse_from(argv).unwrap()
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = Config::resolve(Args::default(), FileConfig::default()).unwrap();
        assert!(c.node_id_random);
        assert_ne!(c.node_id, NodeId(0));
        assert_eq!(c.cluster, "ordo");
        assert_eq!(c.group, DEFAULT_GROUP);
        assert_eq!(c.iface, Ipv4Addr::LOCALHOST);
        assert_eq!(c.ttl, 0);
        assert_eq!(c.listen, "127.0.0.1:7411".parse().unwrap());
        assert_eq!(c.metrics, "127.0.0.1:9411".parse().unwrap());
        assert_eq!(c.max_payload, 1024 * 1024);
        assert_eq!(c.max_frame, 8 * 1024 * 1024);
        assert_eq!(c.default_ordering, Ordering::Fifo);
        assert_eq!(c.client_queue_bytes, 64 * 1024 * 1024);
        assert!(c.auth_token.is_none());
        assert_eq!(c.max_join_attempts, 5);
        let c = Config::resolve(args(&["--max-join-attempts", "0"]), FileConfig::default());
        assert_eq!(c.unwrap().max_join_attempts, 0, "0: never give up");
    }

    #[test]
    fn ack_interval_defaults_to_10_ms_file_and_flag_set_it_and_it_is_bounded() {
        let c = Config::resolve(args(&[]), FileConfig::default()).unwrap();
        assert_eq!(c.ack_interval, Duration::from_millis(10));
        let file = FileConfig::parse("ack-interval = 3").unwrap();
        let c = Config::resolve(args(&[]), file.clone()).unwrap();
        assert_eq!(c.ack_interval, Duration::from_millis(3));
        let c = Config::resolve(args(&["--ack-interval", "0"]), file).unwrap();
        assert_eq!(
            c.ack_interval,
            Duration::ZERO,
            "0 asks at every burst's end"
        );
        let e = Config::resolve(args(&["--ack-interval", "5000"]), FileConfig::default());
        assert!(e.unwrap_err().to_string().contains("--ack-interval"));
    }

    #[test]
    fn datagram_size_defaults_to_the_interface_mtu() {
        let c = Config::resolve(args(&[]), FileConfig::default()).unwrap();
        let (_, mtu) = crate::shell::transport::interface_mtu(c.iface, *c.group.ip()).unwrap();
        assert_eq!(
            c.max_datagram,
            crate::shell::transport::datagram_for_mtu(mtu),
            "{}",
            c.max_datagram_source
        );
        assert!(
            c.max_datagram_source.starts_with("MTU "),
            "{}",
            c.max_datagram_source
        );
        let c = Config::resolve(args(&["--max-datagram", "1400"]), FileConfig::default()).unwrap();
        assert_eq!(c.max_datagram, 1400, "an explicit size wins");
        assert_eq!(c.max_datagram_source, "configured");
    }

    #[test]
    fn flag_beats_file_beats_default() {
        let file = FileConfig::parse(
            r#"
            node-id = 7
            cluster = "from-file"
            ttl = 3
            max-payload = "2MiB"
            [[topics]]
            name = "orders"
            ordering = "causal"
            "#,
        )
        .unwrap();
        let c = Config::resolve(args(&["--node-id", "9"]), file).unwrap();
        assert_eq!(c.node_id, NodeId(9), "flag wins over file");
        assert!(!c.node_id_random);
        assert_eq!(c.cluster, "from-file", "file wins over default");
        assert_eq!(c.ttl, 3);
        assert_eq!(c.max_payload, 2 * 1024 * 1024);
        assert_eq!(c.iface, Ipv4Addr::LOCALHOST, "default when nobody sets it");
        assert_eq!(
            c.topics,
            vec![TopicDecl {
                name: "orders".into(),
                ordering: Ordering::Causal,
                safe: false
            }]
        );
    }

    #[test]
    fn env_sits_between_flag_and_file() {
        // clap reads ORDO_* itself; a unique variable keeps parallel tests apart.
        std::env::set_var("ORDO_MAX_SUBSCRIPTIONS", "77");
        let from_env = args(&[]);
        let from_flag = args(&["--max-subscriptions", "5"]);
        std::env::remove_var("ORDO_MAX_SUBSCRIPTIONS");
        let file = FileConfig::parse("max-subscriptions = 3").unwrap();
        let c = Config::resolve(from_env, file.clone()).unwrap();
        assert_eq!(c.max_subscriptions, 77, "env wins over file");
        let c = Config::resolve(from_flag, file).unwrap();
        assert_eq!(c.max_subscriptions, 5, "flag wins over env");
    }

    #[test]
    fn max_topics_comes_from_flag_env_or_file() {
        let c = Config::resolve(args(&[]), FileConfig::default()).unwrap();
        assert_eq!(c.max_topics, 100_000);
        std::env::set_var("ORDO_MAX_TOPICS", "40");
        let from_env = args(&[]);
        std::env::remove_var("ORDO_MAX_TOPICS");
        let file = FileConfig::parse("max-topics = 7").unwrap();
        assert_eq!(
            Config::resolve(args(&[]), file.clone()).unwrap().max_topics,
            7
        );
        assert_eq!(
            Config::resolve(from_env, file.clone()).unwrap().max_topics,
            40
        );
        let c = Config::resolve(args(&["--max-topics", "9"]), file).unwrap();
        assert_eq!(c.max_topics, 9);
        assert!(Config::resolve(args(&["--max-topics", "0"]), FileConfig::default()).is_err());
    }

    #[test]
    fn bad_values_name_what_to_fix() {
        let cases: &[(&[&str], &str)] = &[
            (&["--ttl", "256"], "0..=255"),
            (&["--group", "10.0.0.1:7400"], "multicast"),
            (&["--group", "nonsense"], "e.g. 239.255.77.1:7400"),
            (&["--listen", "localhost"], "IP address and port"),
            (&["--iface", "eth0"], "IPv4 address"),
            (&["--default-ordering", "random"], "total-isis"),
            (&["--node-id", "0"], "start at 1"),
            (&["--max-payload", "9MiB"], "--max-frame"),
            (&["--cluster", "a b"], "ASCII letters"),
            (&["--max-connections", "0"], "at least 1"),
        ];
        for (flags, hint) in cases {
            let err = Config::resolve(args(flags), FileConfig::default())
                .expect_err(&format!("{flags:?} must be refused"))
                .to_string();
            assert!(err.contains(hint), "{flags:?}: {err:?} lacks {hint:?}");
        }
    }

    #[test]
    fn cluster_key_comes_from_flag_or_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let one = dir.path().join("one");
        let two = dir.path().join("two");
        std::fs::write(&one, "# ordo\n0123456789abcdef-one\n").unwrap();
        std::fs::write(&two, "0123456789abcdef-two\n0123456789abcdef-one\n").unwrap();
        for p in [&one, &two] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
            assert_eq!(readable_by_others(p), None);
        }
        let flag = one.to_str().unwrap();
        let file =
            FileConfig::parse(&format!("cluster-key-file = {:?}", two.to_str().unwrap())).unwrap();
        let c = Config::resolve(args(&["--cluster-key-file", flag]), file.clone()).unwrap();
        assert_eq!(
            c.cluster_key.as_ref().map(ClusterKey::len),
            Some(1),
            "flag wins"
        );
        let c = Config::resolve(Args::default(), file).unwrap();
        assert_eq!(c.cluster_key.as_ref().map(ClusterKey::len), Some(2));
        assert!(Config::resolve(Args::default(), FileConfig::default())
            .unwrap()
            .cluster_key
            .is_none());
        std::fs::set_permissions(&one, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(readable_by_others(&one), Some(0o640));
    }

    #[test]
    fn bad_cluster_key_files_say_what_to_fix() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "# comment\ntoo-short\n").unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n# nothing\n").unwrap();
        let missing = dir.path().join("missing");
        for (path, hint) in [
            (
                &short,
                "line 2 is 9 bytes; each key must be at least 16 bytes",
            ),
            (&empty, "holds no key"),
            (&missing, "cannot read the cluster key file"),
        ] {
            let err = Config::resolve(
                args(&["--cluster-key-file", path.to_str().unwrap()]),
                FileConfig::default(),
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains(hint), "{err:?} lacks {hint:?}");
            assert!(!err.contains("too-short"), "key material in {err:?}");
        }
    }

    #[test]
    fn file_rejects_unknown_keys_and_conflicting_topics() {
        let err = FileConfig::parse("nodeid = 3").unwrap_err();
        assert!(err.contains("nodeid"), "{err}");
        let file = FileConfig::parse(
            r#"
            [[topics]]
            name = "a"
            ordering = "fifo"
            [[topics]]
            name = "a"
            ordering = "total-seq"
            safe = true
            "#,
        )
        .unwrap();
        let err = Config::resolve(Args::default(), file)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("fifo") && err.contains("total-seq --safe"),
            "{err}"
        );
        let file = FileConfig::parse("[[topics]]\nname = \"a.*\"").unwrap();
        assert!(Config::resolve(Args::default(), file).is_err());
    }

    #[test]
    fn byte_sizes_parse_with_suffixes() {
        assert_eq!("1048576".parse::<ByteSize>().unwrap(), ByteSize(MIB));
        assert_eq!("64KiB".parse::<ByteSize>().unwrap(), ByteSize(64 * KIB));
        assert_eq!("2M".parse::<ByteSize>().unwrap(), ByteSize(2 * MIB));
        assert!("1.5MiB".parse::<ByteSize>().is_err());
        assert!("".parse::<ByteSize>().is_err());
        assert!("99999999999999999999G".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize(8 * MIB).to_string(), "8MiB");
    }

    #[test]
    fn tls_needs_both_cert_and_key_from_flags_or_file() {
        let c = Config::resolve(
            args(&["--tls-cert", "c.pem", "--tls-key", "k.pem"]),
            FileConfig::default(),
        )
        .unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.cert, PathBuf::from("c.pem"));
        assert_eq!(tls.key, PathBuf::from("k.pem"));
        assert!(tls.client_ca.is_none());
        let file = FileConfig::parse(
            "tls-cert = \"f.pem\"\ntls-key = \"g.pem\"\ntls-client-ca = \"ca.pem\"\n",
        )
        .unwrap();
        let c = Config::resolve(args(&["--tls-cert", "c.pem"]), file).unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.cert, PathBuf::from("c.pem"), "the flag beats the file");
        assert_eq!(tls.key, PathBuf::from("g.pem"));
        assert_eq!(tls.client_ca, Some(PathBuf::from("ca.pem")));
        assert!(Config::resolve(args(&[]), FileConfig::default())
            .unwrap()
            .tls
            .is_none());

        let cases: &[(&[&str], &str)] = &[
            (&["--tls-cert", "c.pem"], "give --tls-key"),
            (&["--tls-key", "k.pem"], "give --tls-cert"),
            (
                &["--tls-client-ca", "ca.pem"],
                "give --tls-cert and --tls-key",
            ),
        ];
        for (flags, hint) in cases {
            let err = Config::resolve(args(flags), FileConfig::default())
                .expect_err(&format!("{flags:?} must be refused"))
                .to_string();
            assert!(err.contains(hint), "{flags:?}: {err}");
        }
    }
}
