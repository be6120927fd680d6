//! The Prometheus metric catalog of one broker.
//!
//! Naming follows Prometheus practice: everything is `ordo_`-prefixed, in
//! base units (bytes, seconds), counters end in `_total`, and every label has
//! a small fixed set of values (`ordering`: the four layers; `reason`: a
//! `&'static str` chosen in code). Topic names, client ids and node ids are
//! never labels, so the series count is bounded whatever clients do.
//!
//! Engine counters arrive as cumulative [`Stats`] snapshots;
//! [`Metrics::observe_engine`] turns them into counter increments, so it can
//! be called as often as the driver likes. The shell-side methods
//! (`client_connected`, `observe_delivery`, ...) are called where the event
//! happens.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ordo_wire::{Ordering, ViewId};
use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::engine::Stats;

/// The content type of [`Metrics::render`]'s output (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// Every `ordering` label value, pre-created so each series exists from the start.
const ORDERINGS: [Ordering; 4] = [
    Ordering::Fifo,
    Ordering::Causal,
    Ordering::TotalIsis,
    Ordering::TotalSeq,
];

/// Delivery-latency buckets in seconds: 100 µs (loopback) to 10 s (repair
/// under heavy loss or a view change).
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Reads one cumulative field out of an engine snapshot.
type StatField = fn(&Stats) -> u64;

/// Counters whose value comes from the engine's cumulative [`Stats`]
/// (name, help). All are exported from the start (at zero until they move).
const ENGINE_CATALOG: &[(&str, &str)] = &[
    ("ordo_datagrams_sent_total", "Datagrams multicast to the group (retransmissions included)."),
    ("ordo_datagrams_received_total", "Datagrams received from the group, before validation."),
    ("ordo_bytes_sent_total", "Bytes of datagrams multicast to the group."),
    ("ordo_bytes_received_total", "Bytes of datagrams received from the group."),
    ("ordo_duplicate_messages_total", "Messages received that this broker already had."),
    ("ordo_naks_sent_total", "NAK frames (repair requests) this broker sent."),
    ("ordo_naks_received_total", "NAK frames received from other members."),
    ("ordo_naks_suppressed_total", "NAKs not sent because another member already asked for the same range."),
    ("ordo_naks_rate_limited_total", "NAKs delayed by the NAK rate cap."),
    ("ordo_retransmissions_sent_total", "Messages retransmitted in answer to NAKs (as origin or as another holder)."),
    ("ordo_retransmissions_suppressed_total", "Retransmissions cancelled because another holder repaired first."),
    ("ordo_gaps_detected_total", "Missing sequence numbers detected (from data frames or heartbeat digests)."),
    ("ordo_gaps_repaired_total", "Missing sequence numbers later received."),
    ("ordo_unrecoverable_messages_total", "Messages no member could retransmit any more (each forces a rejoin)."),
    ("ordo_rejoins_total", "Rejoins as a new incarnation after an unrecoverable loss."),
    ("ordo_flow_control_stalls_total", "Publishes refused for now because the send window or retransmit buffer was full (or a view change was in progress)."),
    ("ordo_view_changes_total", "Membership views installed."),
    ("ordo_fragmented_messages_total", "Messages split into fragments on send."),
    ("ordo_fragments_sent_total", "Fragments sent for fragmented messages."),
    ("ordo_heartbeats_sent_total", "Heartbeat (digest) frames sent."),
    ("ordo_oversized_messages_dropped_total", "Fragmented messages from other brokers dropped: larger than the maximum message size, or beyond the reassembly bound."),
    ("ordo_causal_forced_total", "Causal messages delivered at a view change with a context no member could meet."),
    ("ordo_causal_discarded_total", "Departed brokers' causal messages discarded at a view change: they depend on a message no surviving broker holds."),
    ("ordo_ordering_control_sent_total", "Ordering control messages (ISIS proposals/finals, sequencer orders) sent, each a batch."),
    ("ordo_ordering_control_unknown_total", "Ordering control entries naming a message this broker does not hold (ignored)."),
    ("ordo_suspicions_total", "Members this broker's failure detector suspected."),
    ("ordo_view_changes_join_total", "Views installed because a broker joined or rejoined."),
    ("ordo_view_changes_leave_total", "Views installed because a broker left gracefully."),
    ("ordo_view_changes_crash_total", "Views installed because a broker crashed or was cut off (suspected)."),
    ("ordo_view_changes_merge_total", "Views installed that merged brokers cut off by a partition back in."),
    ("ordo_publishes_no_quorum_total", "Total-order publishes and declarations refused because the view is not primary (no quorum)."),
    ("ordo_publishes_unconfirmed_total", "Confirm-requested publishes and declarations answered with an error: this broker's stream ended (excluded from the view, refused, shut down) before the group vouched for them."),
    ("ordo_duplicate_node_refusals_total", "Brokers refused because they claimed the node id of a live member."),
    ("ordo_exclusions_total", "Times this broker found itself excluded from the view (suspected, or losing a merge) and rejoined."),
    ("ordo_suspicions_disputed_total", "Suspicion reports about a member this broker (the coordinator) still heard, held until confirmed: the reporter may be the broker that cannot hear."),
    ("ordo_proposals_disputed_total", "View proposals taking over from members this broker still heard, held until repeated for a whole --acceptable-heartbeat-pause."),
    ("ordo_join_rounds_unanswered_total", "Join rounds that ended without admission (the coordinator asked is avoided for a while)."),
    ("ordo_join_fallbacks_total", "Times no coordinator admitted this broker for --max-join-attempts rounds and it formed a view of its own, to merge once the views hear each other."),
];

/// Which `Stats` field feeds which counter: (metric, `reason` label for
/// `ordo_datagrams_dropped_total` else "", field). One line per field.
/// `Stats::published`/`delivered`/`messages_*` are not here: the
/// per-ordering message counters come from the shell (see `observe_publish`).
const ENGINE_COUNTERS: &[(&str, &str, StatField)] = &[
    ("ordo_datagrams_sent_total", "", |s| s.datagrams_sent),
    ("ordo_datagrams_received_total", "", |s| {
        s.datagrams_received
    }),
    ("ordo_bytes_sent_total", "", |s| s.bytes_sent),
    ("ordo_bytes_received_total", "", |s| s.bytes_received),
    ("ordo_datagrams_dropped_total", "checksum", |s| {
        s.dropped_checksum
    }),
    ("ordo_datagrams_dropped_total", "unauthenticated", |s| {
        s.dropped_unauthenticated
    }),
    ("ordo_datagrams_dropped_total", "bad_mac", |s| {
        s.dropped_bad_mac
    }),
    ("ordo_datagrams_dropped_total", "foreign_cluster", |s| {
        s.dropped_foreign_cluster
    }),
    ("ordo_datagrams_dropped_total", "bad_version", |s| {
        s.dropped_bad_version
    }),
    ("ordo_datagrams_dropped_total", "malformed", |s| {
        s.dropped_malformed
    }),
    ("ordo_datagrams_dropped_total", "unknown_kind", |s| {
        s.dropped_unknown_kind
    }),
    ("ordo_datagrams_dropped_total", "stale_incarnation", |s| {
        s.dropped_stale_incarnation
    }),
    ("ordo_datagrams_dropped_total", "not_member", |s| {
        s.dropped_not_member
    }),
    ("ordo_datagrams_dropped_total", "wrong_view", |s| {
        s.dropped_wrong_view
    }),
    ("ordo_datagrams_dropped_total", "buffer_full", |s| {
        s.dropped_buffer_full
    }),
    ("ordo_duplicate_messages_total", "", |s| s.duplicates),
    ("ordo_naks_sent_total", "", |s| s.naks_sent),
    ("ordo_naks_received_total", "", |s| s.naks_received),
    ("ordo_naks_suppressed_total", "", |s| s.naks_suppressed),
    ("ordo_naks_rate_limited_total", "", |s| s.naks_rate_limited),
    ("ordo_retransmissions_sent_total", "", |s| {
        s.retransmissions_sent
    }),
    ("ordo_retransmissions_suppressed_total", "", |s| {
        s.retransmissions_suppressed
    }),
    ("ordo_gaps_detected_total", "", |s| s.gaps_detected),
    ("ordo_gaps_repaired_total", "", |s| s.gaps_repaired),
    ("ordo_unrecoverable_messages_total", "", |s| s.unrecoverable),
    ("ordo_rejoins_total", "", |s| s.rejoins),
    ("ordo_flow_control_stalls_total", "", |s| {
        s.flow_control_stalls
    }),
    ("ordo_view_changes_total", "", |s| s.view_changes),
    ("ordo_fragmented_messages_total", "", |s| {
        s.fragmented_messages
    }),
    ("ordo_fragments_sent_total", "", |s| s.fragments),
    ("ordo_heartbeats_sent_total", "", |s| s.heartbeats_sent),
    ("ordo_causal_forced_total", "", |s| s.causal_forced),
    ("ordo_causal_discarded_total", "", |s| s.causal_discarded),
    ("ordo_oversized_messages_dropped_total", "", |s| {
        s.dropped_oversized
    }),
    ("ordo_ordering_control_sent_total", "", |s| {
        s.control_messages_sent
    }),
    ("ordo_ordering_control_unknown_total", "", |s| {
        s.control_unknown
    }),
    ("ordo_datagrams_dropped_total", "bad_control", |s| {
        s.control_malformed
    }),
    ("ordo_suspicions_total", "", |s| s.suspicions),
    ("ordo_view_changes_join_total", "", |s| s.view_changes_join),
    ("ordo_view_changes_leave_total", "", |s| {
        s.view_changes_leave
    }),
    ("ordo_view_changes_crash_total", "", |s| {
        s.view_changes_crash
    }),
    ("ordo_view_changes_merge_total", "", |s| {
        s.view_changes_merge
    }),
    ("ordo_publishes_no_quorum_total", "", |s| {
        s.publishes_no_quorum
    }),
    ("ordo_publishes_unconfirmed_total", "", |s| {
        s.publishes_unconfirmed
    }),
    ("ordo_duplicate_node_refusals_total", "", |s| {
        s.duplicate_node_refusals
    }),
    ("ordo_exclusions_total", "", |s| s.exclusions),
    ("ordo_suspicions_disputed_total", "", |s| {
        s.suspicions_disputed
    }),
    ("ordo_proposals_disputed_total", "", |s| {
        s.proposals_disputed
    }),
    ("ordo_join_rounds_unanswered_total", "", |s| {
        s.join_rounds_unanswered
    }),
    ("ordo_join_fallbacks_total", "", |s| s.join_fallbacks),
];

/// Gauges copied from each snapshot: (name, help, field).
const ENGINE_GAUGES: &[(&str, &str, StatField)] = &[
    (
        "ordo_retransmit_buffer_bytes",
        "Bytes held in the retransmit buffer (own and others' messages).",
        |s| s.retransmit_buffer_bytes,
    ),
    (
        "ordo_retransmit_buffer_limit_bytes",
        "Configured bound of the retransmit buffer in bytes.",
        |s| s.retransmit_buffer_limit,
    ),
    (
        "ordo_unstable_own_bytes",
        "Bytes of this broker's own messages not yet stable (flow-controlled).",
        |s| s.unstable_own_bytes,
    ),
    (
        "ordo_out_of_order_messages",
        "Received messages waiting for an earlier one.",
        |s| s.out_of_order_messages,
    ),
    (
        "ordo_reassembly_bytes",
        "Bytes of fragments waiting for the rest of their message.",
        |s| s.reassembly_bytes,
    ),
    (
        "ordo_reassembly_limit_bytes",
        "Bound on bytes of partial fragmented messages (messages beyond it are dropped).",
        |s| s.reassembly_limit,
    ),
    (
        "ordo_causal_holdback_messages",
        "Causal messages held back until their context is delivered.",
        |s| s.causal_holdback_messages,
    ),
    (
        "ordo_causal_holdback_bytes",
        "Payload bytes of causal messages held back.",
        |s| s.causal_holdback_bytes,
    ),
    (
        "ordo_total_pending_messages",
        "Total-order messages waiting for their place (final priority or sequencer order).",
        |s| s.total_pending_messages,
    ),
    (
        "ordo_ordering_limit_messages",
        "Bound on causal hold-back and on pending total-order messages (publishes wait beyond it).",
        |s| s.ordering_limit,
    ),
    (
        "ordo_view_primary",
        "1 while the installed view is primary (holds a quorum; total-order topics work), else 0.",
        |s| s.primary,
    ),
];

/// Durations the engine keeps in milliseconds, exported in seconds: (name, help, field).
const ENGINE_DURATIONS: &[(&str, &str, StatField)] = &[
    (
        "ordo_last_failure_detection_seconds",
        "Time from the last frame of the last member suspected here to its suspicion (failure-detection time).",
        |s| s.last_failure_detection_ms,
    ),
    (
        "ordo_last_view_change_seconds",
        "Time the last view change took here, from proposal or suspicion to install.",
        |s| s.last_view_change_ms,
    ),
];

/// Labels of `ordo_protocol_errors_total`: every way a client can break
/// the protocol, created at zero so the first occurrence shows as a rate.
pub const PROTOCOL_ERROR_REASONS: [&str; 10] = [
    "handshake_timeout",
    "stalled_frame",
    "truncated_frame",
    "frame_too_large",
    "undecodable_frame",
    "not_hello",
    "repeated_hello",
    "payload_too_large",
    "version",
    "not_authorized",
];

/// Reasons the shell (not the engine) drops a group datagram.
pub const SHELL_DROP_REASONS: [&str; 2] = ["truncated", "injected"];

/// The metric children of one ordering layer.
#[derive(Debug)]
struct PerOrdering {
    published: IntCounter,
    delivered: IntCounter,
    latency: Histogram,
}

/// Every metric the broker exports, registered in its own registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,

    datagrams_dropped: IntCounterVec,
    view_id: IntGauge,
    view_members: IntGauge,

    /// Per-ordering children of the publish, delivery and latency families,
    /// indexed by `Ordering::code()`.
    by_ordering: [PerOrdering; 4],

    client_connections: IntGauge,
    subscriptions: IntGauge,
    slow_consumer_disconnects: IntCounter,
    topics_refused: IntCounter,
    protocol_errors: IntCounterVec,

    /// Engine counters fed from [`Stats`], resolved from [`ENGINE_COUNTERS`].
    engine_counters: Vec<(StatField, IntCounter)>,
    /// Engine gauges, from [`ENGINE_GAUGES`].
    engine_gauges: Vec<(StatField, IntGauge)>,
    /// Engine durations, from [`ENGINE_DURATIONS`].
    engine_durations: Vec<(StatField, Gauge)>,
    /// The previous snapshot, so each call adds only what is new.
    last: Mutex<Stats>,
}

impl Metrics {
    /// Creates and registers the catalog.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let r = &registry;

        // The counters fed by the engine's cumulative Stats, by name.
        let mut engine = BTreeMap::new();
        for &(name, help) in ENGINE_CATALOG {
            engine.insert(name, counter(r, name, help));
        }
        let datagrams_dropped = counter_vec(
            r,
            "ordo_datagrams_dropped_total",
            "Received datagrams dropped without being acted on, by reason.",
            "reason",
        );
        // Every reason the engine counts (and so every series) exists from the start.
        for &(name, reason, _) in ENGINE_COUNTERS {
            if name == "ordo_datagrams_dropped_total" {
                datagrams_dropped.with_label_values(&[reason]);
            }
        }
        let engine_gauges = ENGINE_GAUGES
            .iter()
            .map(|&(name, help, field)| (field, gauge(r, name, help)))
            .collect();

        let engine_durations = ENGINE_DURATIONS
            .iter()
            .map(|&(name, help, field)| {
                let g = match Gauge::new(name, help).and_then(|g| register(r, g)) {
                    Ok(g) => g,
                    Err(e) => unreachable_metric(&e),
                };
                (field, g)
            })
            .collect();

        let view_id = gauge(
            r,
            "ordo_view_id",
            "Id of the installed membership view (0 before the first).",
        );
        let view_members = gauge(r, "ordo_view_members", "Members of the installed view.");

        let published = counter_vec(
            r,
            "ordo_messages_published_total",
            "Messages accepted from local publishers, by ordering layer.",
            "ordering",
        );
        let delivered = counter_vec(
            r,
            "ordo_messages_delivered_total",
            "Messages delivered by the engine to this broker's subscribers, by ordering layer.",
            "ordering",
        );
        let delivery_latency = HistogramVec::new(
            HistogramOpts::new(
                "ordo_delivery_latency_seconds",
                "Time from publish at the origin broker to delivery here, by ordering layer.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["ordering"],
        )
        .and_then(|h| register(r, h));
        let delivery_latency = match delivery_latency {
            Ok(h) => h,
            // Only reachable through a bug in the fixed options above.
            Err(e) => unreachable_metric(&e),
        };
        // Children resolved once: the per-message paths below then cost an
        // atomic add, not a hash lookup under a lock (issue 7's profile).
        let by_ordering = ORDERINGS.map(|o| PerOrdering {
            published: published.with_label_values(&[o.as_str()]),
            delivered: delivered.with_label_values(&[o.as_str()]),
            latency: delivery_latency.with_label_values(&[o.as_str()]),
        });

        let client_connections = gauge(r, "ordo_client_connections", "Open client connections.");
        let subscriptions = gauge(r, "ordo_subscriptions", "Active client subscriptions.");
        let slow_consumer_disconnects = counter(
            r,
            "ordo_slow_consumer_disconnects_total",
            "Clients disconnected because their queue hit its bound.",
        );
        let topics_refused = counter(
            r,
            "ordo_topics_refused_total",
            "New topics refused because this broker holds --max-topics topics.",
        );
        let protocol_errors = counter_vec(
            r,
            "ordo_protocol_errors_total",
            "Client protocol errors, by reason.",
            "reason",
        );
        // Every series exists from the start at zero, so Prometheus sees the
        // first error as an increase rather than a series appearing at 1.
        for reason in PROTOCOL_ERROR_REASONS {
            protocol_errors.with_label_values(&[reason]);
        }
        for reason in SHELL_DROP_REASONS {
            datagrams_dropped.with_label_values(&[reason]);
        }

        let build_info = IntGaugeVec::new(
            Opts::new(
                "ordo_build_info",
                "Always 1; the label names the broker version.",
            ),
            &["version"],
        )
        .and_then(|g| register(r, g));
        match build_info {
            Ok(g) => g.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1),
            Err(e) => unreachable_metric(&e),
        }

        // Standard process_* metrics (CPU, memory, fds, start time).
        #[cfg(target_os = "linux")]
        if let Err(e) = registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        )) {
            tracing::warn!("process metrics unavailable: {e}");
        }

        let engine_counters = ENGINE_COUNTERS
            .iter()
            .map(|&(name, reason, field)| {
                let counter = if name == "ordo_datagrams_dropped_total" {
                    datagrams_dropped.with_label_values(&[reason])
                } else {
                    match engine.get(name) {
                        Some(c) => c.clone(),
                        None => unreachable_metric(&prometheus::Error::Msg(format!(
                            "ENGINE_COUNTERS names {name}, which ENGINE_CATALOG lacks"
                        ))),
                    }
                };
                (field, counter)
            })
            .collect();

        Metrics {
            registry,
            datagrams_dropped,
            view_id,
            view_members,
            by_ordering,
            client_connections,
            subscriptions,
            slow_consumer_disconnects,
            topics_refused,
            protocol_errors,
            engine_counters,
            engine_gauges,
            engine_durations,
            last: Mutex::new(Stats::default()),
        }
    }

    /// Brings engine-derived metrics up to date with a stats snapshot.
    ///
    /// Counters advance by the difference to the previous snapshot. A field
    /// that went *down* means the engine was replaced (a rejoin as a new
    /// incarnation starts from zero), so its whole value counts as new.
    ///
    /// `Stats::published`/`delivered` (and `messages_*`) are not read here:
    /// the per-ordering counters come from [`Metrics::observe_publish`] and
    /// [`Metrics::observe_delivery`], which see each message's layer.
    pub fn observe_engine(&self, stats: &Stats) {
        // A poisoned lock only means another thread panicked mid-update; the
        // snapshot is still a valid (if slightly old) baseline.
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        for (field, counter) in &self.engine_counters {
            let (now, before) = (field(stats), field(&last));
            counter.inc_by(if now >= before { now - before } else { now });
        }
        for (field, gauge) in &self.engine_gauges {
            gauge.set(clamp_i64(field(stats)));
        }
        for (field, gauge) in &self.engine_durations {
            gauge.set(field(stats) as f64 / 1000.0);
        }
        *last = stats.clone();
    }

    /// Records the installed view (call on every `Event::ViewInstalled`;
    /// the count of view changes comes from `Stats::view_changes`).
    pub fn set_view(&self, view_id: ViewId, members: usize) {
        self.view_id.set(clamp_i64(view_id.0));
        self.view_members
            .set(i64::try_from(members).unwrap_or(i64::MAX));
    }

    /// Counts a message accepted from a local publisher.
    pub fn observe_publish(&self, ordering: Ordering) {
        self.ordering(ordering).published.inc();
    }

    /// Counts a message the engine delivered here and records how long it
    /// took since it was published at its origin.
    pub fn observe_delivery(&self, ordering: Ordering, latency: Duration) {
        let m = self.ordering(ordering);
        m.delivered.inc();
        m.latency.observe(latency.as_secs_f64());
    }

    /// Counts a datagram the shell itself dropped before the engine saw it;
    /// `reason` is one of [`SHELL_DROP_REASONS`].
    pub fn datagram_dropped(&self, reason: &'static str) {
        debug_assert!(
            SHELL_DROP_REASONS.contains(&reason),
            "unlisted drop reason {reason}"
        );
        self.datagrams_dropped.with_label_values(&[reason]).inc();
    }

    /// A client connection opened.
    pub fn client_connected(&self) {
        self.client_connections.inc();
    }

    /// A client connection closed (for any reason).
    pub fn client_disconnected(&self) {
        self.client_connections.dec();
    }

    /// A subscription was confirmed.
    pub fn subscription_added(&self) {
        self.subscriptions.inc();
    }

    /// A subscription ended (unsubscribe or its connection closed).
    pub fn subscription_removed(&self) {
        self.subscriptions.dec();
    }

    /// A client was disconnected because its queue hit its bound.
    pub fn slow_consumer(&self) {
        self.slow_consumer_disconnects.inc();
    }

    /// A new topic was refused: the registry is full.
    pub fn topic_refused(&self) {
        self.topics_refused.inc();
    }

    /// A client sent something the protocol does not allow; `reason` is one
    /// of [`PROTOCOL_ERROR_REASONS`].
    pub fn protocol_error(&self, reason: &'static str) {
        debug_assert!(
            PROTOCOL_ERROR_REASONS.contains(&reason),
            "unlisted protocol error reason {reason}"
        );
        self.protocol_errors.with_label_values(&[reason]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out) {
            // The encoder only fails on invalid metric families, which the
            // fixed catalog above cannot produce; log rather than panic.
            tracing::error!("encoding metrics failed: {e}");
        }
        out
    }

    /// The registry, for callers that add their own collectors.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    fn ordering(&self, ordering: Ordering) -> &PerOrdering {
        // ORDERINGS is Ordering::ALL, so a code always indexes its own entry.
        &self.by_ordering[usize::from(ordering.code()) % self.by_ordering.len()]
    }
}

/// Delivery counts and latencies gathered by the driver without atomics
/// (prometheus' local metrics) and merged into the shared ones by
/// [`DeliveryRecorder::flush`], once per driver pass instead of per message.
#[derive(Debug)]
pub struct DeliveryRecorder {
    by_ordering: [(
        prometheus::local::LocalIntCounter,
        prometheus::local::LocalHistogram,
    ); 4],
}

impl DeliveryRecorder {
    /// As [`Metrics::observe_delivery`], visible after the next [`flush`](Self::flush).
    pub fn observe(&mut self, ordering: Ordering, latency: Duration) {
        let i = usize::from(ordering.code()) % self.by_ordering.len();
        let (delivered, hist) = &self.by_ordering[i];
        delivered.inc();
        hist.observe(latency.as_secs_f64());
    }

    /// Adds what was observed since the last flush to the shared metrics.
    pub fn flush(&mut self) {
        for (delivered, hist) in &self.by_ordering {
            delivered.flush();
            hist.flush();
        }
    }
}

impl Metrics {
    /// A recorder of deliveries for one thread (the driver's).
    pub fn delivery_recorder(&self) -> DeliveryRecorder {
        DeliveryRecorder {
            by_ordering: std::array::from_fn(|i| {
                (
                    self.by_ordering[i].delivered.local(),
                    self.by_ordering[i].latency.local(),
                )
            }),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// The time from `published_at_us` (µs since the Unix epoch at the origin)
/// to now. Clock skew between hosts can put the publish in the future; that
/// reads as zero rather than a negative latency.
pub fn latency_since(published_at_us: u64) -> Duration {
    let now_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    Duration::from_micros(now_us.saturating_sub(published_at_us))
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn register<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    collector: C,
) -> prometheus::Result<C> {
    registry.register(Box::new(collector.clone()))?;
    Ok(collector)
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    match IntCounter::new(name, help).and_then(|c| register(registry, c)) {
        Ok(c) => c,
        Err(e) => unreachable_metric(&e),
    }
}

fn counter_vec(registry: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    match IntCounterVec::new(Opts::new(name, help), &[label]).and_then(|c| register(registry, c)) {
        Ok(c) => c,
        Err(e) => unreachable_metric(&e),
    }
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    match IntGauge::new(name, help).and_then(|g| register(registry, g)) {
        Ok(g) => g,
        Err(e) => unreachable_metric(&e),
    }
}

/// Creating or registering a metric fails only for an invalid name or a
/// duplicate in a fresh registry: a programming error in this file, caught
/// by the unit tests, never by input.
#[cold]
fn unreachable_metric(e: &prometheus::Error) -> ! {
    panic!("invalid metric catalog: {e}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// The value of the sample named exactly `series` (name plus labels as
    /// rendered, e.g. `ordo_messages_published_total{ordering="fifo"}`).
    fn sample(text: &str, series: &str) -> f64 {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                (name == series).then(|| value.parse::<f64>().unwrap())
            })
            .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
    }

    #[test]
    fn engine_snapshots_become_increments() {
        let m = Metrics::new();
        let mut s = Stats {
            datagrams_sent: 10,
            datagrams_received: 7,
            naks_sent: 2,
            dropped_checksum: 5,
            dropped_unauthenticated: 3,
            dropped_bad_mac: 4,
            view_changes: 1,
            retransmit_buffer_bytes: 4096,
            retransmit_buffer_limit: 1 << 20,
            ..Stats::default()
        };
        m.observe_engine(&s);
        // The same snapshot again adds nothing: calling often is safe.
        m.observe_engine(&s);
        let text = m.render();
        assert_eq!(sample(&text, "ordo_datagrams_sent_total"), 10.0);
        assert_eq!(sample(&text, "ordo_datagrams_received_total"), 7.0);
        assert_eq!(sample(&text, "ordo_naks_sent_total"), 2.0);
        assert_eq!(
            sample(&text, r#"ordo_datagrams_dropped_total{reason="checksum"}"#),
            5.0
        );
        assert_eq!(
            sample(&text, r#"ordo_datagrams_dropped_total{reason="malformed"}"#),
            0.0
        );
        assert_eq!(
            sample(
                &text,
                r#"ordo_datagrams_dropped_total{reason="unauthenticated"}"#
            ),
            3.0
        );
        assert_eq!(
            sample(&text, r#"ordo_datagrams_dropped_total{reason="bad_mac"}"#),
            4.0
        );
        assert_eq!(sample(&text, "ordo_view_changes_total"), 1.0);
        assert_eq!(sample(&text, "ordo_retransmit_buffer_bytes"), 4096.0);
        assert_eq!(
            sample(&text, "ordo_retransmit_buffer_limit_bytes"),
            1048576.0
        );

        s.datagrams_sent = 25;
        s.retransmit_buffer_bytes = 0;
        m.observe_engine(&s);
        let text = m.render();
        assert_eq!(sample(&text, "ordo_datagrams_sent_total"), 25.0);
        assert_eq!(sample(&text, "ordo_retransmit_buffer_bytes"), 0.0);

        // A fresh engine (new incarnation) restarts at zero: its counts add on.
        s.datagrams_sent = 3;
        m.observe_engine(&s);
        assert_eq!(sample(&m.render(), "ordo_datagrams_sent_total"), 28.0);
    }

    #[test]
    fn every_engine_counter_is_in_the_catalog() {
        let catalog: HashSet<&str> = ENGINE_CATALOG.iter().map(|(n, _)| *n).collect();
        for (name, reason, _) in ENGINE_COUNTERS {
            if *name == "ordo_datagrams_dropped_total" {
                assert!(!reason.is_empty(), "a drop counter needs its reason");
            } else {
                assert!(catalog.contains(name), "{name} missing from ENGINE_CATALOG");
                assert!(reason.is_empty());
            }
        }
        // Every Stats field is wired (the Debug output names them all): a
        // field the engine adds later fails here until it gets its line.
        let debug = format!("{:?}", Stats::default());
        let fields = debug.matches(": ").count();
        let shell_side = [
            "published",
            "delivered",
            "messages_published",
            "messages_delivered",
        ];
        for f in shell_side {
            assert!(debug.contains(&format!(" {f}: ")), "Stats lost {f}");
        }
        assert_eq!(
            fields,
            ENGINE_COUNTERS.len() + ENGINE_GAUGES.len() + ENGINE_DURATIONS.len() + shell_side.len(),
            "a Stats field is not wired into ENGINE_COUNTERS/ENGINE_GAUGES: {debug}"
        );

        // Every catalog counter is exported (at zero) before anything happens.
        let text = Metrics::new().render();
        for (name, _) in ENGINE_CATALOG {
            assert_eq!(sample(&text, name), 0.0);
        }
    }

    #[test]
    fn server_side_paths_move_their_metrics() {
        let m = Metrics::new();
        m.client_connected();
        m.client_connected();
        m.client_disconnected();
        m.subscription_added();
        m.subscription_added();
        m.subscription_added();
        m.subscription_removed();
        m.slow_consumer();
        m.protocol_error("undecodable_frame");
        m.protocol_error("undecodable_frame");
        m.datagram_dropped("truncated");
        m.observe_publish(Ordering::Causal);
        m.observe_delivery(Ordering::TotalSeq, Duration::from_millis(3));
        m.observe_delivery(Ordering::TotalSeq, Duration::from_secs(20));
        m.set_view(ViewId(4), 3);

        let t = m.render();
        assert_eq!(sample(&t, "ordo_client_connections"), 1.0);
        assert_eq!(sample(&t, "ordo_subscriptions"), 2.0);
        assert_eq!(sample(&t, "ordo_slow_consumer_disconnects_total"), 1.0);
        assert_eq!(
            sample(
                &t,
                r#"ordo_protocol_errors_total{reason="undecodable_frame"}"#
            ),
            2.0
        );
        assert_eq!(
            sample(&t, r#"ordo_datagrams_dropped_total{reason="truncated"}"#),
            1.0
        );
        assert_eq!(
            sample(&t, r#"ordo_datagrams_dropped_total{reason="checksum"}"#),
            0.0
        );
        assert_eq!(
            sample(&t, r#"ordo_messages_published_total{ordering="causal"}"#),
            1.0
        );
        assert_eq!(
            sample(&t, r#"ordo_messages_published_total{ordering="fifo"}"#),
            0.0
        );
        assert_eq!(
            sample(&t, r#"ordo_messages_delivered_total{ordering="total-seq"}"#),
            2.0
        );
        assert_eq!(
            sample(
                &t,
                r#"ordo_delivery_latency_seconds_count{ordering="total-seq"}"#
            ),
            2.0
        );
        // 3 ms lands in the 5 ms bucket; 20 s only in +Inf.
        assert_eq!(
            sample(
                &t,
                r#"ordo_delivery_latency_seconds_bucket{ordering="total-seq",le="0.0025"}"#
            ),
            0.0
        );
        assert_eq!(
            sample(
                &t,
                r#"ordo_delivery_latency_seconds_bucket{ordering="total-seq",le="0.005"}"#
            ),
            1.0
        );
        assert_eq!(
            sample(
                &t,
                r#"ordo_delivery_latency_seconds_bucket{ordering="total-seq",le="10"}"#
            ),
            1.0
        );
        assert_eq!(
            sample(
                &t,
                r#"ordo_delivery_latency_seconds_bucket{ordering="total-seq",le="+Inf"}"#
            ),
            2.0
        );
        assert_eq!(sample(&t, "ordo_view_id"), 4.0);
        assert_eq!(sample(&t, "ordo_view_members"), 3.0);
        assert_eq!(
            sample(
                &t,
                &format!(
                    "ordo_build_info{{version=\"{}\"}}",
                    env!("CARGO_PKG_VERSION")
                )
            ),
            1.0
        );
    }

    #[test]
    fn two_brokers_in_one_process_keep_separate_registries() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.slow_consumer();
        assert_eq!(
            sample(&a.render(), "ordo_slow_consumer_disconnects_total"),
            1.0
        );
        assert_eq!(
            sample(&b.render(), "ordo_slow_consumer_disconnects_total"),
            0.0
        );
    }

    #[test]
    fn delivery_recorder_shows_after_flush() {
        let m = Metrics::new();
        let mut r = m.delivery_recorder();
        r.observe(Ordering::TotalSeq, Duration::from_millis(3));
        r.observe(Ordering::TotalSeq, Duration::from_millis(3));
        let before = m.render();
        assert_eq!(
            sample(
                &before,
                r#"ordo_delivery_latency_seconds_count{ordering="total-seq"}"#
            ),
            0.0
        );
        r.flush();
        let t = m.render();
        assert_eq!(
            sample(
                &t,
                r#"ordo_delivery_latency_seconds_count{ordering="total-seq"}"#
            ),
            2.0
        );
        assert_eq!(
            sample(
                &t,
                r#"ordo_delivery_latency_seconds_bucket{ordering="total-seq",le="0.0025"}"#
            ),
            0.0
        );
        assert_eq!(
            sample(
                &t,
                r#"ordo_delivery_latency_seconds_bucket{ordering="total-seq",le="0.005"}"#
            ),
            2.0
        );
    }

    #[test]
    fn orderings_are_in_wire_code_order() {
        for (i, o) in ORDERINGS.iter().enumerate() {
            assert_eq!(usize::from(o.code()), i, "{o}");
        }
        let m = Metrics::new();
        m.observe_publish(Ordering::TotalSeq);
        let t = m.render();
        assert_eq!(
            sample(&t, r#"ordo_messages_published_total{ordering="total-seq"}"#),
            1.0
        );
        assert_eq!(
            sample(&t, r#"ordo_messages_published_total{ordering="fifo"}"#),
            0.0
        );
    }

    #[test]
    fn latency_since_is_never_negative() {
        assert_eq!(latency_since(u64::MAX), Duration::ZERO);
        let now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64;
        let l = latency_since(now_us - 2_000_000);
        assert!(
            l >= Duration::from_secs(2) && l < Duration::from_secs(60),
            "{l:?}"
        );
    }

    /// Checks the exposition line by line against the text format 0.0.4:
    /// HELP/TYPE comments, sample syntax, every sample under a declared
    /// family, counters named `_total`, our metrics `ordo_`-prefixed.
    #[test]
    fn render_is_valid_text_format() {
        let m = Metrics::new();
        m.observe_delivery(Ordering::Fifo, Duration::from_micros(150));
        m.protocol_error("frame_too_large");
        let text = m.render();
        assert!(text.ends_with('\n'));

        let valid_name = |n: &str| {
            !n.is_empty()
                && !n.starts_with(|c: char| c.is_ascii_digit())
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        };
        let mut types: Vec<(String, String)> = Vec::new();
        let mut samples = 0;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap();
                assert!(valid_name(name), "{line}");
                assert!(!help.is_empty(), "{line}");
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(valid_name(name), "{line}");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "{line}"
                );
                assert!(
                    !types.iter().any(|(n, _)| n == name),
                    "duplicate family {name}"
                );
                if kind == "counter" {
                    assert!(name.ends_with("_total"), "counter without _total: {name}");
                }
                if !name.starts_with("process_") {
                    assert!(name.starts_with("ordo_"), "unprefixed metric {name}");
                }
                types.push((name.to_string(), kind.to_string()));
            } else {
                assert!(!line.starts_with('#'), "unknown comment {line}");
                let (series, value) = line.rsplit_once(' ').unwrap();
                assert!(
                    value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
                    "{line}"
                );
                let name = match series.split_once('{') {
                    Some((name, labels)) => {
                        let labels = labels.strip_suffix('}').expect(line);
                        for pair in labels.split(',') {
                            let (k, v) = pair.split_once('=').expect(line);
                            assert!(valid_name(k), "{line}");
                            assert!(
                                v.len() >= 2 && v.starts_with('"') && v.ends_with('"'),
                                "{line}"
                            );
                        }
                        name
                    }
                    None => series,
                };
                // The sample belongs to the family declared last (histograms
                // add _bucket/_sum/_count).
                let (family, kind) = types.last().expect("sample before any TYPE");
                let ok = name == family
                    || (kind == "histogram"
                        && [
                            format!("{family}_bucket"),
                            format!("{family}_sum"),
                            format!("{family}_count"),
                        ]
                        .iter()
                        .any(|n| n == name));
                assert!(ok, "sample {name} outside its family {family}");
                samples += 1;
            }
        }
        assert!(samples > 50, "suspiciously few samples: {samples}");
        #[cfg(target_os = "linux")]
        assert!(types
            .iter()
            .any(|(n, _)| n == "process_resident_memory_bytes"));
    }

    /// The reference checker, when installed (`apt-get install prometheus`).
    #[test]
    fn promtool_accepts_the_exposition() {
        use std::io::Write;
        use std::process::{Command, Stdio};

        let promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let Some(promtool) = promtool else {
            eprintln!(
                "SKIPPED promtool_accepts_the_exposition: promtool not installed \
                 (apt-get install -y prometheus provides /usr/bin/promtool)"
            );
            return;
        };
        let m = Metrics::new();
        m.observe_delivery(Ordering::Causal, Duration::from_millis(1));
        m.protocol_error("undecodable_frame");
        let mut child = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(m.render().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
