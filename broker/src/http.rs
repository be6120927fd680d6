//! The operator endpoint on `--metrics`: `GET /metrics` and `GET /healthz`.
//!
//! `/metrics` is the Prometheus text exposition of the broker's registry.
//! `/healthz` is a readiness check (DESIGN.md, *healthz*; README,
//! *Watching it*): it says what the broker is doing in the group, and
//! answers 200 only while it is a member of its installed view:
//! - `state` `member` or `flushing`: 200 with `{"node_id","incarnation",
//!   "state","ready":true,"view_id","members","coordinator","sequencer",
//!   "primary"}`: the view it is a member of. A flush (a view change
//!   completing: publishes wait, nothing is refused) lasts milliseconds, so
//!   it counts as ready; a readiness probe that flapped on every view change
//!   would take healthy brokers out of rotation for nothing.
//! - `discovering`, `joining`, `rejoining`, `leaving`, `left`: 503 with
//!   `{"node_id","incarnation","state","ready":false,"status":"not ready",
//!   "reason","last_view"}`; `last_view` is the last view this broker was a
//!   member of (`null` before its first), shown so an operator sees where it
//!   came from, never as its current view: a rejoining broker is out of it.
//!
//! `sequencer` is `null` in a view without one; `primary` says whether the
//! view is primary (it holds a quorum of the last primary view), i.e.
//! whether total-order topics work here (README, *Failures*): a non-primary
//! member is still ready (fifo and causal topics work). Anything else is
//! 404; other methods 405.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use ordo_wire::client::MembershipState;
use ordo_wire::{Incarnation, NodeId, ViewId};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::engine::{Engine, View};
use crate::metrics::{Metrics, CONTENT_TYPE};

/// What `/healthz` reports; the driver keeps it current with
/// [`publish_health`] after every pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub node_id: NodeId,
    /// The engine's incarnation (it grows with every rejoin).
    pub incarnation: Incarnation,
    pub state: MembershipState,
    /// Why the broker is not ready, when it is not and the reason is known.
    pub reason: Option<String>,
    /// The last view installed here (`None` before the first). The broker
    /// is a member of it only while `state.is_member()`.
    pub view: Option<HealthView>,
}

/// A view as `/healthz` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthView {
    pub view_id: ViewId,
    pub members: Vec<NodeId>,
    /// The member that runs view changes (the first in join order).
    pub coordinator: NodeId,
    /// The total-seq sequencer of the view, if it has one.
    pub sequencer: Option<NodeId>,
    /// Whether total-order topics deliver there (a quorum view).
    pub primary: bool,
}

impl HealthView {
    fn of(view: &View) -> HealthView {
        HealthView {
            view_id: view.id,
            members: view.members.iter().map(|m| m.node).collect(),
            coordinator: view.coordinator,
            sequencer: view.sequencer,
            primary: view.primary,
        }
    }

    /// Whether this shows `view` (compared without allocating).
    fn shows(&self, view: &View) -> bool {
        self.view_id == view.id
            && self.coordinator == view.coordinator
            && self.sequencer == view.sequencer
            && self.primary == view.primary
            && self.members.len() == view.members.len()
            && self
                .members
                .iter()
                .zip(&view.members)
                .all(|(a, b)| *a == b.node)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "view_id": self.view_id.0,
            "members": self.members.iter().map(|m| m.0).collect::<Vec<_>>(),
            "coordinator": self.coordinator.0,
            "sequencer": self.sequencer.map(|s| s.0),
            "primary": self.primary,
        })
    }
}

impl Health {
    /// Before the driver runs: discovering, no view yet.
    pub fn starting(node_id: NodeId, incarnation: Incarnation) -> Health {
        Health {
            node_id,
            incarnation,
            state: MembershipState::Discovering,
            reason: None,
            view: None,
        }
    }

    /// The engine's current state.
    pub fn of(engine: &Engine) -> Health {
        let (state, why) = engine.membership_state();
        let origin = engine.origin();
        Health {
            node_id: origin.node,
            incarnation: origin.incarnation,
            state,
            reason: why.map(str::to_string),
            view: (engine.view().id.0 != 0).then(|| HealthView::of(engine.view())),
        }
    }

    /// Whether this is `engine`'s current state (compared without allocating).
    fn is_current(&self, engine: &Engine) -> bool {
        let (state, why) = engine.membership_state();
        let origin = engine.origin();
        let view = engine.view();
        self.node_id == origin.node
            && self.incarnation == origin.incarnation
            && self.state == state
            && self.reason.as_deref() == why
            && match &self.view {
                Some(v) => v.shows(view),
                None => view.id.0 == 0,
            }
    }

    /// Whether a load balancer should send clients here: the broker is a
    /// member of its installed view.
    pub fn ready(&self) -> bool {
        self.state.is_member()
    }

    /// Why it is not ready, for the 503 body.
    fn not_ready_reason(&self) -> String {
        let why = self.reason.as_deref();
        match self.state {
            MembershipState::Discovering => {
                "discovering: listening for an existing group of this cluster before joining or forming a view".into()
            }
            MembershipState::Joining => {
                "joining: asking the group's coordinator for admission".into()
            }
            MembershipState::Rejoining => format!(
                "rejoining as a new incarnation: {}",
                why.unwrap_or("this broker lost its place in the group's view")
            ),
            MembershipState::Leaving => "leaving the group: shutting down".into(),
            MembershipState::Left => match why {
                Some(why) => format!("out of the group: {why}"),
                None => "left the group: shutting down".into(),
            },
            MembershipState::Member | MembershipState::Flushing | MembershipState::Other(_) => {
                format!("state {}", self.state)
            }
        }
    }

    /// The `/healthz` answer: status code and JSON body.
    fn response(&self) -> (StatusCode, serde_json::Value) {
        let mut body = serde_json::json!({
            "node_id": self.node_id.0,
            "incarnation": self.incarnation.0,
            "state": self.state.as_str(),
            "ready": self.ready(),
        });
        let (code, extra) = match (&self.view, self.ready()) {
            (Some(v), true) => (StatusCode::OK, v.json()),
            (view, _) => (
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({
                    "status": "not ready",
                    "reason": self.not_ready_reason(),
                    "last_view": view.as_ref().map(HealthView::json),
                }),
            ),
        };
        if let (Some(body), serde_json::Value::Object(extra)) = (body.as_object_mut(), extra) {
            body.extend(extra);
        }
        (code, body)
    }
}

/// Replaces `health`'s value with the engine's state if it changed: cheap
/// when it did not (no allocation), so the driver calls it every pass.
pub fn publish_health(health: &watch::Sender<Health>, engine: &Engine) {
    health.send_if_modified(|h| {
        if h.is_current(engine) {
            return false;
        }
        *h = Health::of(engine);
        true
    });
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
    // Answer from a snapshot so the lock is not held while responding.
    let (code, body) = state.health.borrow().response();
    (code, Json(body)).into_response()
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

    fn health(state: MembershipState, view: Option<(u64, &[u32], bool)>) -> Health {
        Health {
            node_id: NodeId(7),
            incarnation: Incarnation(2),
            state,
            reason: None,
            view: view.map(|(id, members, primary)| HealthView {
                view_id: ViewId(id),
                members: members.iter().map(|m| NodeId(*m)).collect(),
                coordinator: NodeId(members[0]),
                sequencer: primary.then_some(NodeId(members[0])),
                primary,
            }),
        }
    }

    #[tokio::test]
    async fn healthz_follows_the_membership_state() {
        let s = start(Health::starting(NodeId(7), Incarnation(1))).await;

        let (status, head, body) = request(s.addr, "GET", "/healthz").await;
        assert_eq!(status, 503);
        assert!(head.contains("content-type: application/json"), "{head}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["state"], "discovering", "{v}");
        assert_eq!(v["ready"], false, "{v}");
        assert_eq!(v["status"], "not ready", "{v}");
        assert_eq!(v["last_view"], serde_json::Value::Null, "{v}");
        assert!(
            v["reason"].as_str().unwrap().contains("existing group"),
            "{v}"
        );
        assert!(v.get("view_id").is_none(), "no view before the first: {v}");

        s.health
            .send(health(MembershipState::Member, Some((3, &[1, 7, 9], true))))
            .unwrap();
        let (status, _, body) = request(s.addr, "GET", "/healthz").await;
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "node_id": 7, "incarnation": 2, "state": "member", "ready": true,
                "view_id": 3, "members": [1, 7, 9],
                "coordinator": 1, "sequencer": 1, "primary": true
            })
        );

        // A view change in progress: still ready, same view.
        s.health
            .send(health(
                MembershipState::Flushing,
                Some((3, &[1, 7, 9], true)),
            ))
            .unwrap();
        let (status, _, body) = request(s.addr, "GET", "/healthz").await;
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (&v["state"], &v["view_id"]),
            (&"flushing".into(), &3.into())
        );

        // A minority view after a partition: still 200 (the broker serves
        // fifo and causal topics), but not primary, and no sequencer.
        s.health
            .send(health(MembershipState::Member, Some((4, &[7, 9], false))))
            .unwrap();
        let (status, _, body) = request(s.addr, "GET", "/healthz").await;
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "node_id": 7, "incarnation": 2, "state": "member", "ready": true,
                "view_id": 4, "members": [7, 9],
                "coordinator": 7, "sequencer": null, "primary": false
            })
        );

        // Excluded and rejoining: 503, and the old view only as `last_view`.
        let mut h = health(MembershipState::Rejoining, Some((4, &[7, 9], false)));
        h.reason = Some("left out of view 5".into());
        s.health.send(h).unwrap();
        let (status, _, body) = request(s.addr, "GET", "/healthz").await;
        assert_eq!(status, 503);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "node_id": 7, "incarnation": 2, "state": "rejoining", "ready": false,
                "status": "not ready",
                "reason": "rejoining as a new incarnation: left out of view 5",
                "last_view": {
                    "view_id": 4, "members": [7, 9],
                    "coordinator": 7, "sequencer": null, "primary": false
                }
            })
        );

        for (state, code, reason) in [
            (MembershipState::Joining, 503, "joining"),
            (MembershipState::Leaving, 503, "shutting down"),
            (MembershipState::Left, 503, "left the group"),
        ] {
            s.health
                .send(health(state, Some((4, &[7, 9], false))))
                .unwrap();
            let (status, _, body) = request(s.addr, "GET", "/healthz").await;
            assert_eq!(status, code, "{state}: {body}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["state"], state.as_str(), "{body}");
            assert!(v["reason"].as_str().unwrap().contains(reason), "{body}");
            assert_eq!(v["last_view"]["view_id"], 4, "{body}");
        }

        s.stop.send(()).unwrap();
        s.task.await.unwrap().unwrap();
    }

    /// Three engines on a lossless in-memory network, stepped 1 ms at a
    /// time; `mute(i)` drops whatever engine `i` sends.
    struct Net {
        engines: Vec<crate::engine::Engine>,
        now: std::time::Instant,
    }

    impl Net {
        fn new(n: u32) -> Net {
            use crate::engine::{Engine, EngineConfig};
            let now = std::time::Instant::now();
            let engines = (1..=n)
                .map(|i| {
                    let mut c = EngineConfig::new(NodeId(i), Incarnation(1), "health");
                    // The first forms the group at once; the others find it.
                    if i == 1 {
                        c.discovery_timeout = Duration::ZERO;
                    }
                    Engine::new(c, now)
                })
                .collect();
            Net { engines, now }
        }

        fn step(&mut self, muted: Option<usize>) {
            self.now += Duration::from_millis(1);
            let now = self.now;
            for e in &mut self.engines {
                if e.poll_timeout().is_some_and(|t| t <= now) {
                    e.handle_timeout(now);
                }
            }
            // Deliver until nobody has anything left to send.
            for _ in 0..100 {
                let mut any = false;
                for i in 0..self.engines.len() {
                    while let Some(d) = self.engines[i].poll_transmit() {
                        any = true;
                        if muted == Some(i) {
                            continue;
                        }
                        for (j, e) in self.engines.iter_mut().enumerate() {
                            if j != i {
                                e.handle_datagram_bytes(d.clone(), now);
                            }
                        }
                    }
                    while self.engines[i].poll_event().is_some() {}
                }
                if !any {
                    break;
                }
            }
        }
    }

    /// The state `/healthz` shows follows the engine: discovering, member,
    /// excluded while the others cannot hear it (rejoining: 503 with the
    /// old view only as `last_view`), member again once they can.
    #[test]
    fn health_follows_an_engine_through_exclusion_and_rejoin() {
        let mut net = Net::new(3);
        let mut seen = vec![Health::of(&net.engines[2]).state];
        // Steps up to `ms` ms (while `muted` cannot be heard), recording
        // node 3's states, until `until` holds of its health.
        let mut run =
            |net: &mut Net, ms: u64, muted: Option<usize>, until: &dyn Fn(&Health) -> bool| {
                for _ in 0..ms {
                    net.step(muted);
                    let h = Health::of(&net.engines[2]);
                    if seen.last() != Some(&h.state) {
                        seen.push(h.state);
                    }
                    if until(&h) {
                        return Some(h);
                    }
                }
                None
            };
        run(&mut net, 3_000, None, &|_| false);
        let h = Health::of(&net.engines[2]);
        assert_eq!(h.state, MembershipState::Member);
        let first = h.view.clone().unwrap();
        assert_eq!(first.members, [NodeId(1), NodeId(2), NodeId(3)]);
        assert_eq!(h.response().0, StatusCode::OK);

        // Node 3 goes mute: the others exclude it and it hears their view.
        let h = run(&mut net, 4_000, Some(2), &|h| {
            h.state == MembershipState::Rejoining
        })
        .expect("a muted member never found itself excluded");
        let (code, body) = h.response();
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.get("view_id").is_none(), "{body}");
        assert_eq!(body["last_view"]["view_id"], first.view_id.0, "{body}");
        assert!(
            body["reason"]
                .as_str()
                .unwrap()
                .starts_with("rejoining as a new incarnation: "),
            "{body}"
        );
        assert_eq!(
            body["incarnation"], 2,
            "a rejoin is a new incarnation: {body}"
        );
        run(&mut net, 500, Some(2), &|_| false);

        // Heard again: a member of a view of all three, as a new incarnation.
        let h = run(&mut net, 10_000, None, &|h| {
            h.state == MembershipState::Member
                && h.view.as_ref().is_some_and(|v| v.members.len() == 3)
        })
        .unwrap_or_else(|| panic!("not back in a view of all three: {seen:?}"));
        assert!(h.view.as_ref().unwrap().view_id > first.view_id);
        assert!(h.incarnation > Incarnation(1));
        assert_eq!(h.response().0, StatusCode::OK);

        // The order it went through (flushes in between are fine).
        let path: Vec<_> = seen
            .iter()
            .copied()
            .filter(|s| *s != MembershipState::Flushing)
            .collect();
        // (Joining lasts less than a step on this network.)
        let want = [
            MembershipState::Discovering,
            MembershipState::Member,
            MembershipState::Rejoining,
            MembershipState::Member,
        ];
        let mut it = path.iter();
        assert!(
            want.iter().all(|w| it.any(|s| s == w)),
            "states {seen:?} lack the path {want:?}"
        );
    }

    #[tokio::test]
    async fn metrics_are_served_as_prometheus_text() {
        let s = start(Health::starting(NodeId(1), Incarnation(1))).await;
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
        let s = start(Health::starting(NodeId(1), Incarnation(1))).await;
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
        let (_tx, rx) = watch::channel(Health::starting(NodeId(1), Incarnation(1)));
        let err = serve(addr, Arc::new(Metrics::new()), rx, async {})
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("cannot listen for metrics"),
            "{err}"
        );
    }
}
