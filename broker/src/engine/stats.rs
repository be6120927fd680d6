//! Counters and gauges the engine keeps for the metrics endpoint.

/// Counters the metrics endpoint exports; all monotonically increasing
/// unless named as a gauge.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Messages accepted from local clients (same as `messages_published`;
    /// kept under its first name for API stability).
    pub published: u64,
    /// Messages handed to subscribers (same as `messages_delivered`).
    pub delivered: u64,
    /// Messages accepted from local clients.
    pub messages_published: u64,
    /// Messages delivered (local and remote), after reassembly.
    pub messages_delivered: u64,
    /// Datagrams handed to the driver for sending.
    pub datagrams_sent: u64,
    /// Datagrams handed to the engine by the driver (our own looped-back ones included).
    pub datagrams_received: u64,
    /// Bytes of the datagrams sent.
    pub bytes_sent: u64,
    /// Bytes of the datagrams received.
    pub bytes_received: u64,
    /// Dropped: the checksum did not match (corruption).
    pub dropped_checksum: u64,
    /// Dropped: the frame is not authenticated as this broker requires: no
    /// MAC while we have a cluster key, or a MAC while we have none (a
    /// broker configured with a key beside one without).
    pub dropped_unauthenticated: u64,
    /// Dropped: the frame's MAC matches none of our cluster keys (forged,
    /// signed with another cluster's key, or damaged in transit).
    pub dropped_bad_mac: u64,
    /// Dropped: the frame belongs to another cluster.
    pub dropped_foreign_cluster: u64,
    /// Dropped: another protocol version.
    pub dropped_bad_version: u64,
    /// Dropped: the frame did not parse (truncated, bad field, bad magic).
    pub dropped_malformed: u64,
    /// Dropped: an unknown (or reserved, not yet spoken) frame kind.
    pub dropped_unknown_kind: u64,
    /// Dropped: sent by an older incarnation of a node that restarted.
    pub dropped_stale_incarnation: u64,
    /// Dropped: data or repair traffic from a sender or origin outside our view.
    pub dropped_not_member: u64,
    /// Dropped: data stamped with another view than ours (before or after a view change).
    pub dropped_wrong_view: u64,
    /// Messages received that we already had.
    pub duplicates: u64,
    /// Out-of-order messages not kept because the buffer was full (asked for again later).
    pub dropped_buffer_full: u64,
    /// NAK frames sent.
    pub naks_sent: u64,
    /// NAK frames received from other members.
    pub naks_received: u64,
    /// NAKs we did not send because another member's NAK already asked for the same.
    pub naks_suppressed: u64,
    /// NAKs delayed by the NAK rate cap.
    pub naks_rate_limited: u64,
    /// Messages retransmitted (by us, as origin or as another holder).
    pub retransmissions_sent: u64,
    /// Retransmissions we cancelled because another holder repaired first.
    pub retransmissions_suppressed: u64,
    /// Sequence numbers found missing (from data or from digests).
    pub gaps_detected: u64,
    /// Missing sequence numbers later received.
    pub gaps_repaired: u64,
    /// Messages needed that no member holds any more (each leads to a rejoin).
    pub unrecoverable: u64,
    /// Publishes refused with `WouldBlock` (flow control or a view change in progress).
    pub flow_control_stalls: u64,
    /// Views installed.
    pub view_changes: u64,
    /// Rejoins as a new incarnation after an unrecoverable loss.
    pub rejoins: u64,
    /// Messages we split into fragments.
    pub fragmented_messages: u64,
    /// Fragments sent for those messages.
    pub fragments: u64,
    /// Heartbeat (digest) frames sent, periodic and prompt.
    pub heartbeats_sent: u64,
    /// Gauge: bytes held in the retransmit buffer (own and others' messages).
    pub retransmit_buffer_bytes: u64,
    /// Gauge: the bound on `retransmit_buffer_bytes`.
    pub retransmit_buffer_limit: u64,
    /// Gauge: bytes of our own messages not yet stable (flow-controlled).
    pub unstable_own_bytes: u64,
    /// Gauge: received messages waiting for an earlier one (out of order);
    /// refreshed with each heartbeat.
    pub out_of_order_messages: u64,
    /// Gauge: bytes of fragments waiting for the rest of their message.
    pub reassembly_bytes: u64,
    /// Gauge: the bound on `reassembly_bytes` (`EngineConfig::reassembly_limit`).
    pub reassembly_limit: u64,
    /// Fragmented messages dropped: larger than `EngineConfig::max_message`,
    /// or beyond the reassembly bound.
    pub dropped_oversized: u64,
    /// Gauge: causal messages held back until their context is delivered.
    pub causal_holdback_messages: u64,
    /// Gauge: payload bytes of those messages.
    pub causal_holdback_bytes: u64,
    /// Gauge: total-order messages waiting for their place (final priority or order).
    pub total_pending_messages: u64,
    /// Gauge: the admission bound on each of the two counts above (local
    /// publishes wait while it is reached; see `EngineConfig::ordering_limit`).
    pub ordering_limit: u64,
    /// Causal messages delivered at a view change with a context no member could meet.
    pub causal_forced: u64,
    /// Departed brokers' causal messages discarded at a view change: they
    /// depend on a message no survivor holds.
    pub causal_discarded: u64,
    /// Ordering control messages (proposal, final, order batches) sent.
    pub control_messages_sent: u64,
    /// Control entries naming a message we do not hold (ignored).
    pub control_unknown: u64,
    /// Control messages that did not decode (dropped).
    pub control_malformed: u64,
    /// Members this engine's failure detector suspected.
    pub suspicions: u64,
    /// Views installed because a member joined (or rejoined).
    pub view_changes_join: u64,
    /// Views installed because a member left gracefully.
    pub view_changes_leave: u64,
    /// Views installed because a member crashed or was cut off (suspected).
    pub view_changes_crash: u64,
    /// Views installed that merged members cut off by a partition back in.
    pub view_changes_merge: u64,
    /// Gauge: milliseconds from the last frame of the last member suspected
    /// here to the suspicion (the failure-detection time).
    pub last_failure_detection_ms: u64,
    /// Gauge: milliseconds the last view change took, from the proposal
    /// (or suspicion) to the install here.
    pub last_view_change_ms: u64,
    /// Gauge: 1 while the installed view is primary (total topics work), else 0.
    pub primary: u64,
    /// Publishes and declarations of total-order topics refused because the
    /// view is not primary (no quorum).
    pub publishes_no_quorum: u64,
    /// Confirm-requested publishes and declarations answered with an error
    /// because our stream ended before the group vouched for them.
    pub publishes_unconfirmed: u64,
    /// Brokers refused because they claimed the node id of a live member.
    pub duplicate_node_refusals: u64,
    /// Times this engine learned it was excluded from the view (falsely
    /// suspected, or on the losing side of a merge) and rejoined.
    pub exclusions: u64,
    /// Suspicion reports about a member we still heard, held until
    /// confirmed (the reporter may be the one that cannot hear).
    pub suspicions_disputed: u64,
    /// View proposals that took over from members we still heard, held
    /// until the proposer repeated them for a whole heartbeat pause.
    pub proposals_disputed: u64,
    /// Join rounds that ended without admission.
    pub join_rounds_unanswered: u64,
    /// Times no coordinator admitted us for `max_join_attempts` rounds and
    /// we formed a view of our own (to merge once the views hear each other).
    pub join_fallbacks: u64,
}
