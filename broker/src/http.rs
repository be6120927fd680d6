//! The operator endpoint on `--metrics`: `GET /metrics` and `GET /healthz`.
//!
//! `/metrics` is the Prometheus text exposition of the broker's registry;
//! `/healthz` answers 200 with `{"node_id","view_id","members","coordinator",
//! "sequencer","primary"}` once the broker is in a view and 503 with
//! `{"node_id","status":"not ready","reason"}` otherwise (DESIGN.md,
//! *healthz*). `sequencer` is `null` in a view without one; `primary` says
//! whether the view is primary (it holds a quorum of the last primary view),
//! i.e. whether total-order topics work here (README, *Failures*). Anything
//! else is 404; other methods 405.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use ordo_wire::{NodeId, ViewId};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::{Metrics, CONTENT_TYPE};

/// What `/healthz` reports; the driver publishes it on every view change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Not in a view yet (or left it); the reason is shown with 503.
    NotReady { node_id: NodeId, reason: String },
    /// In a view: 200 with these fields.
    InView {
        node_id: NodeId,
        view_id: ViewId,
        members: Vec<NodeId>,
        /// The member that runs view changes (the first in join order).
        coordinator: NodeId,
        /// The total-seq sequencer of the view, if it has one.
        sequencer: Option<NodeId>,
        /// Whether total-order topics deliver here (a quorum view).
        primary: bool,
    },
}

/// Serves the endpoint until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: watch::Receiver<Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen for metrics on {addr}: {e} (choose another --metrics address)"),
        )
    })?;
    serve_on(listener, metrics, health, shutdown).await
}

/// Serves the endpoint on an already bound listener until `shutdown`
/// resolves, then finishes the requests in flight. Binding first lets a
/// caller learn the port (`127.0.0.1:0`) before serving.
pub async fn serve_on(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: watch::Receiver<Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving /metrics and /healthz");
    }
    axum::serve(listener, router(metrics, health))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The routes, separate from the listener so they can be served anywhere.
pub fn router(metrics: Arc<Metrics>, health: watch::Receiver<Health>) -> Router {
    Router::new()
        .route("/metrics", get(get_metrics))
        .route("/healthz", get(get_healthz))
        .with_state(AppState { metrics, health })
}

#[derive(Debug, Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: watch::Receiver<Health>,
}

async fn get_metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        state.metrics.render(),
    )
        .into_response()
}

async fn get_healthz(State(state): State<AppState>) -> Response {
    // Clone out of the watch so the lock is not held while responding.
    let health = state.health.borrow().clone();
    match health {
        Health::InView {
            node_id,
            view_id,
            members,
            coordinator,
            sequencer,
            primary,
        } => (
            StatusCode::OK,
            Json(serde_json::json!({
                "node_id": node_id.0,
                "view_id": view_id.0,
                "members": members.iter().map(|m| m.0).collect::<Vec<_>>(),
                "coordinator": coordinator.0,
                "sequencer": sequencer.map(|s| s.0),
                "primary": primary,
            })),
        )
            .into_response(),
        Health::NotReady { node_id, reason } => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({
                "node_id": node_id.0,
                "status": "not ready",
                "reason": reason,
            })),
        )
            .into_response(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::oneshot;

    /// One HTTP/1.1 request over a fresh connection: (status, headers, body).
    async fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
            .await
            .expect("response timed out")
            .unwrap();
        let raw = String::from_utf8(raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, head.to_ascii_lowercase(), body.to_string())
    }

    struct Server {
        addr: SocketAddr,
        metrics: Arc<Metrics>,
        health: watch::Sender<Health>,
        stop: oneshot::Sender<()>,
        task: tokio::task::JoinHandle<std::io::Result<()>>,
    }

    async fn start(initial: Health) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new());
        let (health, rx) = watch::channel(initial);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_on(listener, metrics.clone(), rx, async move {
            let _ = stopped.await;
        }));
        Server {
            addr,
            metrics,
            health,
            stop,
            task,
        }
    }

    #[tokio::test]
    async fn healthz_follows_the_view() {
        let s = start(Health::NotReady {
            node_id: NodeId(7),
            reason: "joining the group".into(),
        })
        .await;

        let (status, head, body) = request(s.addr, "GET", "/healthz").await;
        assert_eq!(status, 503);
        assert!(head.contains("content-type: application/json"), "{head}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"node_id": 7, "status": "not ready", "reason": "joining the group"})
        );

        s.health
            .send(Health::InView {
                node_id: NodeId(7),
                view_id: ViewId(3),
                members: vec![NodeId(1), NodeId(7), NodeId(9)],
                coordinator: NodeId(1),
                sequencer: Some(NodeId(1)),
                primary: true,
            })
            .unwrap();
        let (status, _, body) = request(s.addr, "GET", "/healthz").await;
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "node_id": 7, "view_id": 3, "members": [1, 7, 9],
                "coordinator": 1, "sequencer": 1, "primary": true
            })
        );

        // A minority view after a partition: still 200 (the broker serves
        // fifo and causal topics), but not primary, and no sequencer.
        s.health
            .send(Health::InView {
                node_id: NodeId(7),
                view_id: ViewId(4),
                members: vec![NodeId(7), NodeId(9)],
                coordinator: NodeId(7),
                sequencer: None,
                primary: false,
            })
            .unwrap();
        let (status, _, body) = request(s.addr, "GET", "/healthz").await;
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "node_id": 7, "view_id": 4, "members": [7, 9],
                "coordinator": 7, "sequencer": null, "primary": false
            })
        );

        s.stop.send(()).unwrap();
        s.task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn metrics_are_served_as_prometheus_text() {
        let s = start(Health::NotReady {
            node_id: NodeId(1),
            reason: "starting".into(),
        })
        .await;
        s.metrics.slow_consumer();
        let (status, head, body) = request(s.addr, "GET", "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            head.contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        assert!(
            body.lines()
                .any(|l| l == "ordo_slow_consumer_disconnects_total 1"),
            "{body}"
        );

        assert_eq!(request(s.addr, "GET", "/nope").await.0, 404);
        assert_eq!(request(s.addr, "POST", "/metrics").await.0, 405);

        s.stop.send(()).unwrap();
        s.task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn shutdown_stops_serving() {
        let s = start(Health::NotReady {
            node_id: NodeId(1),
            reason: "starting".into(),
        })
        .await;
        // An idle open connection must not hold shutdown up.
        let _idle = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        assert_eq!(request(s.addr, "GET", "/healthz").await.0, 503);
        s.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), s.task)
            .await
            .expect("graceful shutdown hung")
            .unwrap()
            .unwrap();
        assert!(tokio::net::TcpStream::connect(s.addr).await.is_err());
    }

    #[tokio::test]
    async fn serve_reports_a_taken_address() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let (_tx, rx) = watch::channel(Health::NotReady {
            node_id: NodeId(1),
            reason: "starting".into(),
        });
        let err = serve(addr, Arc::new(Metrics::new()), rx, async {})
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("cannot listen for metrics"),
            "{err}"
        );
    }
}
