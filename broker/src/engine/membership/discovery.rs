//! Finding a group: listening at start, forming a view when alone, asking
//! a coordinator for admission, a lone coordinator joining a lower-ranked
//! one (simultaneous starts converge to one view), and rejoining as a new
//! incarnation after an unrecoverable loss.

use std::collections::BTreeMap;
use std::time::Instant;

use ordo_wire::group::{Body, Flags, Join};
use ordo_wire::{Incarnation, Origin, Seq, ViewId};

use super::Phase;
use crate::engine::reliability::Reliability;
use crate::engine::timer::Timer;
use crate::engine::Engine;

impl Engine {
    /// Begins life: discover, or form a view at once.
    pub(crate) fn start(&mut self, now: Instant) {
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
        self.install_view(view, vec![self.me], &digest, now);
    }

    pub(crate) fn send_join(&mut self, target: Option<Origin>) {
        let last_seq = self.rel.last_seq();
        self.send(Flags::default(), Body::Join(Join { target, last_seq }));
    }

    /// A heartbeat from outside our view: an existing group to join, or
    /// (for a lone coordinator) one to be absorbed into.
    pub(crate) fn on_foreign_view(&mut self, view: ViewId, coordinator: Origin, now: Instant) {
        if view.0 == 0 {
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
                    self.send_join(Some(coordinator));
                }
            }
            Phase::Member => {
                let alone = self.view.members == [self.me];
                let idle = self.membership.change.is_none()
                    && self.membership.flush.is_none()
                    && !self.membership.leaving;
                if alone && idle && coordinator < self.me {
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
                } else if !self.membership.merge_logged
                    && self
                        .membership
                        .coordinator(&self.view)
                        .is_some_and(|ours| coordinator < ours)
                {
                    // Merges of two non-trivial views: see issue 5.
                    self.membership.merge_logged = true;
                    tracing::warn!(%coordinator, "another view of this cluster exists; merging views is not supported yet");
                }
            }
            Phase::Left => {}
        }
    }

    pub(crate) fn on_join(&mut self, sender: Origin, join: Join, now: Instant) {
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
        self.maybe_start_change(now);
    }

    /// After an unrecoverable loss: forget everything and join again as a
    /// new incarnation, so the group's streams restart cleanly for us.
    pub(crate) fn rejoin(&mut self, now: Instant, reason: String) {
        self.stats.rejoins += 1;
        let target = self
            .view
            .members
            .iter()
            .find(|m| **m != self.me && !self.membership.dead.contains(m))
            .copied();
        self.membership.discontinuity = Some((self.view.id, reason));
        self.me = Origin {
            node: self.me.node,
            incarnation: Incarnation(self.me.incarnation.0 + 1),
        };
        self.rel = Reliability::new(self.me, Seq(0), self.config.reliability());
        self.local_pending.clear();
        // A new incarnation starts with fresh layers; the group's agreed
        // state (topics, gseq) comes with the install that admits it.
        self.delivery = crate::engine::fresh_delivery(&self.config, self.me);
        self.in_view = false;
        self.membership.flush = None;
        self.membership.change = None;
        self.membership.joins.clear();
        self.membership.leaves.clear();
        self.membership.phase = Phase::Joining { target };
        self.send_join(target);
        self.timers
            .set(Timer::Membership, now + self.config.view_retry);
    }
}
