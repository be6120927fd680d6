//! `ordo-broker`: the daemon. Reads its configuration, opens the client
//! listener and the multicast transport, runs the engine driver, the client
//! server and the operator endpoint, and shuts down gracefully on
//! SIGTERM/SIGINT.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use ordo_broker::config::Config;
use ordo_broker::engine::{Engine, EngineConfig};
use ordo_broker::http::{self, Health};
use ordo_broker::metrics::Metrics;
use ordo_broker::server::{self, ServerConfig, ServerCtx};
use ordo_broker::shell::driver::{Driver, DriverConfig};
use ordo_broker::shell::transport::{Transport, TransportConfig};
use ordo_wire::client::Limits;
use ordo_wire::Incarnation;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// mimalloc rather than glibc's malloc: cheaper per allocation (an
/// `Arc<Delivered>` per message, delivery batches; docs/PERFORMANCE.md,
/// session 4).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for a configuration the broker cannot run with.
const EXIT_CONFIG: u8 = 2;
/// Exit code for a failure while starting or running.
const EXIT_RUNTIME: u8 = 1;
/// Commands the driver may hold queued across all clients.
const COMMAND_QUEUE: usize = 4096;
/// Publish bytes the driver may hold queued across all clients; beyond it
/// publishers wait (TCP backpressure).
const COMMAND_QUEUE_BYTES: usize = 64 * 1024 * 1024;

fn main() -> ExitCode {
    init_tracing();
    let config = match Config::from_env_and_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ordo-broker: error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // Unreadable or invalid TLS files are a configuration error too.
    let tls = match config
        .tls
        .as_ref()
        .map(server::tls::server_config)
        .transpose()
    {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("ordo-broker: error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ordo-broker: error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    match runtime.block_on(run(config, tls)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ordo-broker: error: {e:#}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// Logs to stderr, filtered by RUST_LOG (default `info`).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only on a terminal, so logs redirected to files stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

async fn run(
    config: Config,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
) -> anyhow::Result<()> {
    // A restart must be a new sender: the start time in µs grows across restarts.
    let incarnation = Incarnation(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1),
    );
    if config.node_id_random {
        tracing::warn!(node_id = %config.node_id, "no --node-id given; using a random one (set it for stable identities)");
    }

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen for clients on {} (is another broker running there? choose another --listen)",
                config.listen
            )
        })?;
    let listen_addr = listener
        .local_addr()
        .context("reading the listen address")?;

    let metrics = Arc::new(Metrics::new());
    let transport = Transport::open(&TransportConfig {
        group: config.group,
        iface: config.iface,
        ttl: config.ttl,
        recv_buffer: config.recv_buffer,
        send_buffer: config.send_buffer,
    })
    .with_context(|| {
        format!(
            "cannot open the multicast group {} on interface {} (check --group and --iface)",
            config.group, config.iface
        )
    })?
    .with_injected_loss(config.inject_loss_percent, rand::random(), metrics.clone());
    if config.inject_loss_percent > 0 {
        tracing::warn!(
            percent = config.inject_loss_percent,
            "--inject-loss-percent: dropping received group datagrams on purpose (testing only)"
        );
    }

    let mut engine_config = EngineConfig::new(config.node_id, incarnation, config.cluster.clone());
    engine_config.seed = rand::random();
    engine_config.max_datagram = config.max_datagram;
    tracing::info!(
        max_datagram = config.max_datagram,
        source = %config.max_datagram_source,
        "group datagram size"
    );
    engine_config.retransmit_buffer_bytes = config.retransmit_buffer_bytes;
    engine_config.max_message = config.max_payload as usize;
    engine_config.heartbeat_interval = config.heartbeat_interval;
    engine_config.ack_interval = config.ack_interval;
    engine_config.phi_threshold = config.phi_threshold;
    engine_config.acceptable_heartbeat_pause = config.acceptable_heartbeat_pause;
    engine_config.cluster_size = config.cluster_size;
    engine_config.max_join_attempts = config.max_join_attempts;
    match &config.cluster_key {
        // Key ids are one-way hashes: they let operators compare brokers' keys.
        Some(key) => tracing::info!(
            keys = key.len(),
            ids = ?key.ids(),
            "cluster key: frames are signed with the first key and accepted under any"
        ),
        None => tracing::info!("no cluster key: inter-broker frames are not authenticated"),
    }
    engine_config.cluster_key = config.cluster_key.clone();
    let engine = Engine::new(engine_config, std::time::Instant::now());

    let (health_tx, health_rx) = watch::channel(Health::of(&engine));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let (driver, handle) = Driver::new(
        DriverConfig {
            default_ordering: config.default_ordering,
            max_subscriptions: config.max_subscriptions,
            max_topics: config.max_topics,
            max_frame: config.max_frame as usize,
            topics: config.topics.clone(),
            command_queue: COMMAND_QUEUE,
            command_queue_bytes: COMMAND_QUEUE_BYTES,
            max_datagram: config.max_datagram,
        },
        engine,
        transport,
        Arc::clone(&metrics),
        health_tx,
    )
    .context("applying the configured topics")?;

    let mut http_shutdown = shutdown_rx.clone();
    let mut http_task = tokio::spawn(http::serve(
        config.metrics,
        Arc::clone(&metrics),
        health_rx,
        async move {
            let _ = http_shutdown.wait_for(|s| *s).await;
        },
    ));
    let driver_task = tokio::spawn(driver.run(shutdown_rx.clone()));
    let ctx = Arc::new(ServerCtx::new(
        ServerConfig {
            node: config.node_id,
            incarnation,
            limits: Limits {
                max_frame: config.max_frame,
                max_payload: config.max_payload,
            },
            max_connections: config.max_connections,
            client_queue_bytes: config.client_queue_bytes,
            client_queue_frames: config.client_queue_frames,
            auth_token: config.auth_token.clone(),
            handshake_timeout: config.handshake_timeout,
            tls,
            final_flush_timeout: Duration::from_secs(10),
        },
        handle,
        Arc::clone(&metrics),
    ));
    let server_task = tokio::spawn(server::run(listener, ctx, shutdown_rx.clone()));

    tracing::info!(
        node_id = %config.node_id,
        %incarnation,
        cluster = %config.cluster,
        listen = %listen_addr,
        metrics = %config.metrics,
        group = %config.group,
        iface = %config.iface,
        ttl = config.ttl,
        auth = config.auth_token.is_some(),
        tls = config.tls.is_some(),
        mtls = config.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
        topics = config.topics.len(),
        "ordo-broker ready"
    );

    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let http_failed = tokio::select! {
        _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); None }
        _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); None }
        r = &mut http_task => Some(r),
    };
    let _ = shutdown_tx.send(true);
    let drained = tokio::time::timeout(config.shutdown_timeout, async {
        let _ = server_task.await;
        let _ = driver_task.await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(timeout = ?config.shutdown_timeout, "shutdown timed out; closing the remaining connections");
    }
    match http_failed {
        Some(Ok(Ok(()))) => anyhow::bail!("the metrics endpoint stopped unexpectedly"),
        Some(Ok(Err(e))) => Err(e).with_context(|| {
            format!(
                "metrics endpoint on {} failed (choose another --metrics)",
                config.metrics
            )
        }),
        Some(Err(e)) => Err(e).context("metrics endpoint task failed"),
        None => {
            let _ = tokio::time::timeout(Duration::from_secs(1), http_task).await;
            tracing::info!("ordo-broker stopped");
            Ok(())
        }
    }
}
