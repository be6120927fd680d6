//! Finding a group: listening at start, forming a view when alone, asking
//! a coordinator for admission (and, left unanswered, shunning it and in
//! the end founding a view of our own: the joining fallback in
//! `membership`), a lone coordinator joining a lower-ranked one
//! (simultaneous starts converge to one view), and rejoining as a new
//! incarnation after an unrecoverable loss.

use std::collections::BTreeMap;
use std::time::Instant;

use ordo_wire::group::{Body, Digest, Flags, Join};
use ordo_wire::{Incarnation, Origin, Seq, ViewId};

use super::Phase;
use crate::engine::reliability::Reliability;
use crate::engine::timer::Timer;
use crate::engine::Engine;

impl Engine {
    /// Begins life: discover, or form a view at once.
    pub(crate) fn start(&mut self, now: Instant) {
        self.timers
            .set(Timer::Detector, now + self.config.heartbeat_interval);
        if self.config.discovery_timeout.is_zero() {
            self.form_singleton(now);
            return;
        }
        self.membership.phase = Phase::Discovering {
            until: now + self.config.discovery_timeout,
            extended: 0,
        };
        self.send_join(None);
        self.timers
            .set(Timer::Membership, now + self.config.view_retry);
    }

    pub(crate) fn form_singleton(&mut self, now: Instant) {
        let digest = BTreeMap::from([(self.me, self.rel.last_seq())]);
        let Some(view) = self.view.id.checked_next() else {
            tracing::error!(view = %self.view.id, "view ids exhausted");
            return;
        };
        let mine = self.delivery.primary_known();
        let vouch = self.vouches();
        let primary = self
            .membership
            .quorum(&[self.me], self.config.cluster_size, mine, vouch);
        self.install_view(view, vec![self.me], &digest, primary, false, now);
    }

    pub(crate) fn send_join(&mut self, target: Option<Origin>) {
        let last_seq = self.rel.last_seq();
        let last_primary = self.membership.last_primary_id;
        let held = if self.delivery.installed() {
            self.delivery.primary_held()
        } else {
            self.membership.rejoin_counts
        };
        self.send(
            Flags::default(),
            Body::Join(Join {
                target,
                last_seq,
                last_primary,
                primary_held: held.0,
                primary_final: held.1,
            }),
        );
    }

    /// A heartbeat from outside our view: an existing group to join, or
    /// (for a lone coordinator) one to be absorbed into.
    pub(crate) fn on_foreign_view(
        &mut self,
        sender: Origin,
        view: ViewId,
        d: &Digest,
        now: Instant,
    ) {
        let coordinator = d.coordinator;
        if view.0 > 1 || d.primary || d.view_size > 1 {
            // A group with a history (more than a broker's first view
            // alone): see `Membership::heard_group`.
            self.membership.heard_group = true;
        }
        if view.0 == 0 || self.shunned(coordinator, now) {
            // A coordinator that left a whole join round of ours
            // unanswered may not hear us: we neither ask it again nor
            // merge into its view for a while (see `join_round_unanswered`).
            return;
        }
        match self.membership.phase.clone() {
            Phase::Discovering { .. } => {
                self.membership.phase = Phase::Joining {
                    target: Some(coordinator),
                };
                self.send_join(Some(coordinator));
            }
            Phase::Joining { target } => {
                if target.is_none_or(|t| coordinator < t) {
                    self.membership.phase = Phase::Joining {
                        target: Some(coordinator),
                    };
                    // A new target gets a whole round of patience.
                    self.membership.join_attempts = 0;
                    self.send_join(Some(coordinator));
                }
            }
            Phase::Member => {
                let alone = self.view.members == [self.me];
                let idle = self.membership.change.is_none()
                    && self.membership.flush.is_none()
                    && !self.membership.leaving;
                // Only a broker that was never in a larger view: one cut off
                // from its group has delivered on its own and must rejoin
                // as a new incarnation (the merge below).
                let fresh = self.membership.departed.is_empty();
                if alone && idle && fresh && coordinator < self.me {
                    // Two groups formed at once: the lower-ranked coordinator
                    // absorbs us. Alone, everything we sent is stable.
                    tracing::info!(%coordinator, "joining a lower-ranked coordinator's view");
                    self.rel.free_all_own();
                    self.in_view = false;
                    self.membership.phase = Phase::Joining {
                        target: Some(coordinator),
                    };
                    self.send_join(Some(coordinator));
                    self.timers
                        .set(Timer::Membership, now + self.config.view_retry);
                } else if self.merge_loser(sender, coordinator, d) {
                    // Two views of one cluster (a healed partition): ours
                    // loses. Our coordinator ends our view for everyone with
                    // a flush (so all of us delivered the same in it), then
                    // each member rejoins the winner as a new incarnation.
                    let since = match self.membership.merge_target {
                        Some((t, since)) if t == coordinator => since,
                        _ => now,
                    };
                    self.membership.merge_target = Some((coordinator, since));
                    let ours = self.membership.coordinator(&self.view) == Some(self.me);
                    let waited = now.saturating_duration_since(since)
                        > self.config.acceptable_heartbeat_pause;
                    if !idle {
                    } else if alone || (!ours && waited) {
                        // Alone, or our coordinator does not act (it may not
                        // hear the winner): rejoin on our own.
                        self.merge_into(coordinator, now);
                    } else if ours {
                        self.start_dissolve(coordinator, now);
                    }
                }
            }
            Phase::Left => {}
        }
    }

    /// Rejoins the view of `winner` (a merge our view lost).
    pub(crate) fn merge_into(&mut self, winner: Origin, now: Instant) {
        tracing::warn!(%winner, "another view of this cluster exists and wins the merge; rejoining it");
        self.stats.exclusions += 1;
        self.membership.discontinuity = None;
        let reason = format!(
            "merging into the view of {winner} after a partition; messages published on the other side while apart are not delivered here"
        );
        self.rejoin_to(now, reason, Some(winner));
    }

    pub(crate) fn on_join(&mut self, sender: Origin, join: Join, now: Instant) {
        if matches!(self.membership.phase, Phase::Joining { .. }) && sender.node < self.me.node {
            // Another joiner, ranked before us: if neither of us gets in,
            // it founds a view first and we join it (see
            // `join_round_unanswered`), rather than all founding at once.
            self.membership.lower_joiner_at = Some(now);
        }
        let Some(target) = join.target else {
            if let Phase::Discovering { .. } = self.membership.phase {
                if sender < self.me {
                    self.membership.outranked_by.insert(sender);
                }
            } else if self.in_view && self.membership.coordinator(&self.view) == Some(self.me) {
                // A discovering engine: let it hear us now rather than at the next heartbeat.
                self.schedule_ack(now);
            }
            return;
        };
        if !self.in_view
            || self.membership.coordinator(&self.view) != Some(self.me)
            || !(self.view.members.contains(&target) || self.membership.departed.contains(&target))
            || self.view.members.contains(&sender)
        {
            return;
        }
        self.membership.joins.insert(sender, join.last_seq);
        if self.membership.join_primary.len() >= super::MAX_DEPARTED {
            self.membership.join_primary.clear();
        }
        self.membership.join_primary.insert(
            sender,
            (join.last_primary, (join.primary_held, join.primary_final)),
        );
        self.maybe_start_change(now);
    }

    /// Whether our view loses a merge against the view `d` describes (see
    /// the rule in `membership`). A view whose digest names us is no other
    /// view: a member we excluded still speaking in the view it was
    /// excluded from (it learns from our install, see `on_view_mismatch`).
    fn merge_loser(&self, sender: Origin, coordinator: Origin, d: &Digest) -> bool {
        if self.view.members.contains(&sender)
            || self.view.members.contains(&coordinator)
            || d.entries.iter().any(|e| e.origin == self.me)
        {
            return false;
        }
        let ours = self.membership.coordinator(&self.view).unwrap_or(self.me);
        let (mine, theirs) = (
            (self.view.primary, self.view.members.len() as u64),
            (d.primary, u64::from(d.view_size)),
        );
        if mine.0 != theirs.0 {
            return !mine.0;
        }
        if mine.1 != theirs.1 {
            return mine.1 < theirs.1;
        }
        ours.node > coordinator.node
    }

    /// After an unrecoverable loss: forget everything and join again as a
    /// new incarnation, so the group's streams restart cleanly for us.
    pub(crate) fn rejoin(&mut self, now: Instant, reason: String) {
        let target = self
            .view
            .members
            .iter()
            .find(|m| **m != self.me && !self.membership.dead.contains(m))
            .copied();
        self.rejoin_to(now, reason, target);
    }

    /// Becomes the next incarnation of our node, with an empty stream and
    /// fresh ordering layers.
    pub(crate) fn next_incarnation(&mut self) {
        self.me = Origin {
            node: self.me.node,
            incarnation: Incarnation(self.me.incarnation.0 + 1),
        };
        self.rel = Reliability::new(self.me, Seq(0), self.config.reliability());
        self.local_pending.clear();
        self.own_control.clear();
        // A new incarnation starts with fresh layers; the group's agreed
        // state (topics, gseq) comes with the install that admits it.
        // What the old incarnation delivered in its last primary view, for
        // our joins (see `Membership::quorum`).
        // (A fresh layer that never installed a view knows nothing: keep.)
        if self.delivery.installed() {
            self.membership.rejoin_counts = self.delivery.primary_held();
        }
        self.delivery = crate::engine::fresh_delivery(&self.config, self.me);
    }

    /// [`Engine::rejoin`], asking `target` (a coordinator) for admission.
    pub(crate) fn rejoin_to(&mut self, now: Instant, reason: String, target: Option<Origin>) {
        self.stats.rejoins += 1;
        // Our stream ends here: what still awaits confirmation never gets
        // it (an install that carried our cut answered those it settled).
        self.resolve_confirms(
            None,
            &format!(
                "this broker lost its place in the group's view ({reason}) and rejoined as a new incarnation"
            ),
        );
        self.membership.discontinuity = Some((self.view.id, reason));
        self.next_incarnation();
        if let Some(s) = self.view.sequencer.filter(|s| *s == self.me.node) {
            // Only the planted bug listens: the sequencer we were keeps acting.
            self.delivery.remember_stale_sequencer(s);
        }
        self.in_view = false;
        self.membership.flush = None;
        self.membership.change = None;
        self.membership.joins.clear();
        self.membership.leaves.clear();
        self.membership.dead.clear();
        self.membership.disputes.clear();
        self.membership.proposal_disputes.clear();
        self.membership.newer.clear();
        self.membership.newer_view_since = None;
        self.membership.last_install = None;
        self.membership.join_attempts = 0;
        self.membership.join_rounds = 0;
        self.membership.change_began = Some(now);
        self.membership.phase = Phase::Joining { target };
        if self.membership.join_not_before.is_none_or(|t| now >= t) {
            self.send_join(target);
        }
        self.timers
            .set(Timer::Membership, now + self.config.view_retry);
    }
}
