//! The client server: a tokio TCP accept loop with a connection limit, one
//! task per connection (see [`connection`]), optionally TLS (see [`tls`]),
//! and graceful shutdown by broadcast plus completion, as in mini-redis.

pub mod connection;
pub mod outbox;
pub mod tls;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use ordo_wire::client::{ErrorCode, Limits, Reply};
use ordo_wire::{Incarnation, NodeId};
use prometheus::IntCounter;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_rustls::rustls;

use crate::metrics::Metrics;
use crate::shell::driver::DriverHandle;

/// What every connection needs to know.
#[derive(Debug)]
pub struct ServerConfig {
    pub node: NodeId,
    pub incarnation: Incarnation,
    pub limits: Limits,
    pub max_connections: usize,
    pub client_queue_bytes: usize,
    pub client_queue_frames: usize,
    /// The token clients must present, if any.
    pub auth_token: Option<String>,
    /// How long a client may take to send its Hello (its TLS handshake included).
    pub handshake_timeout: Duration,
    /// When set, the listener speaks only TLS with this configuration.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// How long the writer keeps trying to hand a slow consumer (or a
    /// client at shutdown) its final error before closing anyway.
    pub final_flush_timeout: Duration,
}

/// State shared by the accept loop and every connection.
#[derive(Debug)]
pub struct ServerCtx {
    pub config: ServerConfig,
    pub driver: DriverHandle,
    pub metrics: Arc<Metrics>,
    /// Connections refused at `--max-connections`.
    refused: Option<IntCounter>,
    /// TLS handshakes that failed or timed out.
    tls_failures: Option<IntCounter>,
    next_conn: AtomicU64,
    open: AtomicUsize,
}

impl ServerCtx {
    /// Shared context; connection ids start at 1. Registers the server's
    /// own counters beside the catalog in `metrics`.
    pub fn new(config: ServerConfig, driver: DriverHandle, metrics: Arc<Metrics>) -> Self {
        let refused = counter(
            &metrics,
            "ordo_client_connections_refused_total",
            "Client connections refused at --max-connections.",
        );
        let tls_failures = counter(
            &metrics,
            "ordo_tls_handshake_failures_total",
            "TLS handshakes with clients that failed or timed out (--handshake-timeout).",
        );
        ServerCtx {
            config,
            driver,
            metrics,
            refused,
            tls_failures,
            next_conn: AtomicU64::new(1),
            open: AtomicUsize::new(0),
        }
    }
}

/// A counter of the server's own, registered beside the catalog in `metrics`.
fn counter(metrics: &Metrics, name: &str, help: &str) -> Option<IntCounter> {
    // The name is a valid constant, so creation cannot fail; a failed
    // registration (a duplicate) is logged and the count stays internal.
    let c = IntCounter::new(name, help).ok()?;
    if let Err(e) = metrics.registry().register(Box::new(c.clone())) {
        tracing::error!("cannot register {name}: {e}");
    }
    Some(c)
}

/// Accepts clients until `shutdown` turns true, then waits for every
/// connection task to finish (the caller bounds that with a timeout).
pub async fn run(listener: TcpListener, ctx: Arc<ServerCtx>, mut shutdown: watch::Receiver<bool>) {
    // Each connection task holds a clone; recv() returns None once all ended.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    loop {
        let accepted = tokio::select! {
            _ = crate::server::stopped(&mut shutdown) => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed; retrying in 100 ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if ctx.open.load(AtomicOrdering::Relaxed) >= ctx.config.max_connections {
            if let Some(c) = &ctx.refused {
                c.inc();
            }
            tracing::warn!(%peer, max = ctx.config.max_connections, "connection refused: at --max-connections");
            tokio::spawn(refuse(
                stream,
                ctx.config.max_connections,
                ctx.config.tls.clone(),
            ));
            continue;
        }
        if let Err(e) = configure(&stream) {
            tracing::debug!(%peer, error = %e, "setting socket options failed");
        }
        let conn = ctx.next_conn.fetch_add(1, AtomicOrdering::Relaxed);
        ctx.open.fetch_add(1, AtomicOrdering::Relaxed);
        ctx.metrics.client_connected();
        let ctx2 = Arc::clone(&ctx);
        let shutdown2 = shutdown.clone();
        let done = done_tx.clone();
        // The TLS handshake and the Hello share one deadline.
        let deadline = Instant::now() + ctx.config.handshake_timeout;
        tokio::spawn(async move {
            match &ctx2.config.tls {
                None => connection::serve(stream, peer, conn, &ctx2, shutdown2, deadline).await,
                Some(tls) => {
                    // A handshake in progress must not hold up a shutdown.
                    let mut stop = shutdown2.clone();
                    let stream = tokio::select! {
                        _ = crate::server::stopped(&mut stop) => None,
                        s = tls_handshake(stream, peer, tls, &ctx2, deadline) => s,
                    };
                    if let Some(stream) = stream {
                        connection::serve_tls(stream, peer, conn, &ctx2, shutdown2, deadline).await;
                    }
                }
            }
            ctx2.open.fetch_sub(1, AtomicOrdering::Relaxed);
            ctx2.metrics.client_disconnected();
            drop(done);
        });
    }
    tracing::info!("stopped accepting clients");
    drop(listener);
    drop(done_tx);
    let _ = done_rx.recv().await;
}

/// The server side of a TLS handshake, bounded by `deadline`; a failure is
/// counted and logged at debug (a port scanner or a plaintext client is not
/// the operator's problem), and the connection closed.
async fn tls_handshake(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    config: &Arc<rustls::ServerConfig>,
    ctx: &ServerCtx,
    deadline: Instant,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(config));
    let failure = match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => return Some(stream),
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!(
            "no TLS handshake within {:?} (--handshake-timeout)",
            ctx.config.handshake_timeout
        ),
    };
    if let Some(c) = &ctx.tls_failures {
        c.inc();
    }
    tracing::debug!(%peer, error = %failure, "TLS handshake failed");
    None
}

/// Idle time before the first keepalive probe, the gap between probes, and
/// how many go unanswered before the kernel drops the connection.
const KEEPALIVE: (Duration, Duration, u32) = (Duration::from_secs(60), Duration::from_secs(10), 3);

/// Socket options of an accepted client: no Nagle delay (the writer batches
/// itself), and TCP keepalive, because a client whose host vanished without
/// closing (power loss, a pulled cable) would otherwise hold its connection
/// slot for ever on an idle connection (nothing is ever written to it).
fn configure(stream: &TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let (time, interval, retries) = KEEPALIVE;
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(time)
        .with_interval(interval)
        .with_retries(retries);
    socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive)
}

/// Resolves once the shutdown flag turns true (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // The guard wait_for returns is not Send; drop it here, inside.
    let _ = shutdown.wait_for(|s| *s).await.is_ok();
}

/// How long telling a client over the connection limit why may take.
const REFUSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Tells a client over the connection limit why, then closes; over TLS
/// after a handshake (bounded too), as plaintext would not be understood.
async fn refuse(stream: TcpStream, max: usize, tls: Option<Arc<rustls::ServerConfig>>) {
    match tls {
        None => refuse_on(stream, max).await,
        Some(config) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            if let Ok(Ok(stream)) =
                tokio::time::timeout(REFUSE_TIMEOUT, acceptor.accept(stream)).await
            {
                refuse_on(stream, max).await;
            }
        }
    }
}

async fn refuse_on<S: tokio::io::AsyncWrite + Unpin>(mut stream: S, max: usize) {
    let mut buf = BytesMut::new();
    Reply::Error {
        req: 0,
        code: ErrorCode::Limit,
        message: format!(
            "the broker is at its connection limit ({max}, --max-connections); retry later or connect to another broker"
        ),
    }
    .encode(&mut buf);
    let _ = tokio::time::timeout(REFUSE_TIMEOUT, stream.write_all(&buf)).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_get_keepalive() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        configure(&stream).unwrap();
        let sock = socket2::SockRef::from(&stream);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), KEEPALIVE.0);
        assert_eq!(sock.tcp_keepalive_interval().unwrap(), KEEPALIVE.1);
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), KEEPALIVE.2);
        assert!(stream.nodelay().unwrap());
    }
}
