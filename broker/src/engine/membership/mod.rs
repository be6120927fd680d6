//! Agreed views: discovery, joins, graceful leaves, flush and install.
//!
//! Views are numbered and every member installs them in the same sequence.
//! The coordinator (the first member not known to be dead) proposes the
//! next view; every member of the current view stops sending and answers
//! with its last sequence number (the flush); once every member's digest
//! shows every old-view message, the coordinator installs the new view with
//! that cut as its starting digest. So all members deliver the same old-view
//! messages, and a joiner starts after the cut and never delivers old ones.
//!
//! A member is known dead only when a newer incarnation of its node speaks
//! (a restart, or a rejoin after an unrecoverable loss): that is a fact, not
//! a suspicion. Crashes: see issue 5 — a silent member stays in the view
//! (its buffers wait for it, bounded by flow control); suspicion, partitions
//! and merges of non-trivial views are that issue's.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use ordo_wire::group::{Body, Flags, FlushAck, Install, Join, Propose};
use ordo_wire::{Incarnation, Origin, Seq, ViewId};

use super::reliability::Reliability;
use super::timer::Timer;
use super::{Engine, Event, View};

/// Where this engine is in its life in the group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Phase {
    /// Listening for an existing group until the deadline.
    Discovering { until: Instant, extended: u32 },
    /// Asking a coordinator for admission.
    Joining { target: Option<Origin> },
    /// In a view.
    Member,
    /// Left the group (or never joined one and was told to leave).
    #[default]
    Left,
}

/// A proposal this member acknowledged: it sends nothing new until the install.
#[derive(Debug, Clone)]
struct Flush {
    view: ViewId,
    last_seq: Seq,
}

/// A view change the coordinator runs.
#[derive(Debug, Clone)]
struct Change {
    view: ViewId,
    members: Vec<Origin>,
    /// Old members that must flush (all but the known dead).
    old: Vec<Origin>,
    /// Known-dead members of the old view, left out.
    dead: Vec<Origin>,
    joins: BTreeMap<Origin, Seq>,
    acks: BTreeMap<Origin, Seq>,
    install: Option<Install>,
    installed: BTreeSet<Origin>,
}

/// Membership state.
#[derive(Debug, Default)]
pub(crate) struct Membership {
    phase: Phase,
    flush: Option<Flush>,
    change: Option<Change>,
    joins: BTreeMap<Origin, Seq>,
    leaves: BTreeSet<Origin>,
    /// Members whose node has spoken with a newer incarnation.
    dead: BTreeSet<Origin>,
    /// Engines discovering at the same time that outrank us.
    outranked_by: BTreeSet<Origin>,
    leaving: bool,
    /// The view we lost continuity in (rejoin), reported with the next install.
    discontinuity: Option<(ViewId, String)>,
    merge_logged: bool,
}

/// How many discovery periods an engine waits for an outranking peer to form a view.
const MAX_DISCOVERY_EXTENSIONS: u32 = 3;

impl Membership {
    pub(crate) fn has_left(&self) -> bool {
        self.phase == Phase::Left
    }

    /// Whether a proposal stopped our sending.
    pub(crate) fn flushing(&self) -> bool {
        self.flush.is_some()
    }

    pub(crate) fn leaving(&self) -> bool {
        self.leaving
    }

    /// The view's coordinator: its first member not known to be dead.
    pub(crate) fn coordinator(&self, view: &View) -> Option<Origin> {
        view.members
            .iter()
            .find(|m| !self.dead.contains(m))
            .copied()
    }

    /// Notes a frame's sender. A newer incarnation of a member's node means
    /// that member is dead; returns true if the sender itself is such a
    /// superseded incarnation (its frames are stale).
    pub(crate) fn note_sender(&mut self, view: &View, sender: Origin) -> bool {
        let mut stale = false;
        for m in &view.members {
            if m.node == sender.node && m.incarnation != sender.incarnation {
                if m.incarnation < sender.incarnation {
                    if self.dead.insert(*m) {
                        tracing::info!(old = %m, new = %sender, "member restarted; its old incarnation is dead");
                    }
                } else {
                    stale = true;
                }
            }
        }
        stale
    }
}

impl Engine {
    /// Begins life: discover, or form a view at once.
    pub(super) fn start(&mut self, now: Instant) {
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

    fn form_singleton(&mut self, now: Instant) {
        let digest = BTreeMap::from([(self.me, self.rel.last_seq())]);
        let view = ViewId(self.view.id.0 + 1);
        self.install_view(view, vec![self.me], &digest, now);
    }

    fn send_join(&mut self, target: Option<Origin>) {
        let last_seq = self.rel.last_seq();
        self.send(Flags::default(), Body::Join(Join { target, last_seq }));
    }

    /// Membership retries and deadlines.
    pub(super) fn membership_tick(&mut self, now: Instant) {
        let retry = now + self.config.view_retry;
        match self.membership.phase.clone() {
            Phase::Discovering { until, extended } => {
                if now < until {
                    self.send_join(None);
                } else if !self.membership.outranked_by.is_empty()
                    && extended < MAX_DISCOVERY_EXTENSIONS
                {
                    // A lower-ranked engine is starting too: let it form the view.
                    self.membership.phase = Phase::Discovering {
                        until: now + self.config.discovery_timeout,
                        extended: extended + 1,
                    };
                    self.send_join(None);
                } else {
                    self.form_singleton(now);
                }
            }
            Phase::Joining { target } => self.send_join(target),
            Phase::Member | Phase::Left => {
                if self.membership.leaving && self.membership.change.is_none() && self.in_view {
                    self.send(Flags::default(), Body::Leave);
                }
                if let Some(c) = &self.membership.change {
                    let body = match &c.install {
                        None => Body::Propose(Propose {
                            view: c.view,
                            members: c.members.clone(),
                        }),
                        Some(i) => Body::Install(i.clone()),
                    };
                    self.send(Flags::default(), body);
                }
                if let Some(f) = &self.membership.flush {
                    // Keep the coordinator's view of our flush fresh.
                    let ack = FlushAck {
                        view: f.view,
                        last_seq: f.last_seq,
                    };
                    self.send(Flags::default(), Body::FlushAck(ack));
                }
            }
        }
        if !self.membership.has_left() {
            self.timers.set(Timer::Membership, retry);
        }
    }

    /// A heartbeat from outside our view: an existing group to join, or
    /// (for a lone coordinator) one to be absorbed into.
    pub(super) fn on_foreign_view(
        &mut self,
        sender: Origin,
        view: ViewId,
        coordinator: Origin,
        now: Instant,
    ) {
        if view.0 == 0 {
            return;
        }
        let _ = sender;
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

    pub(super) fn on_join(&mut self, sender: Origin, join: Join, now: Instant) {
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
            || !self.view.members.contains(&target)
            || self.view.members.contains(&sender)
        {
            return;
        }
        self.membership.joins.insert(sender, join.last_seq);
        self.maybe_start_change(now);
    }

    pub(super) fn on_leave(&mut self, sender: Origin, now: Instant) {
        if self.in_view
            && self.view.members.contains(&sender)
            && self.membership.coordinator(&self.view) == Some(self.me)
        {
            self.membership.leaves.insert(sender);
            self.maybe_start_change(now);
        }
    }

    /// Starts a view change if one is wanted and none is running.
    fn maybe_start_change(&mut self, now: Instant) {
        if !self.in_view
            || self.membership.change.is_some()
            || self.membership.coordinator(&self.view) != Some(self.me)
        {
            return;
        }
        let m = &mut self.membership;
        m.joins.retain(|j, _| !self.view.members.contains(j));
        for j in m.joins.keys() {
            for old in &self.view.members {
                if old.node == j.node && old.incarnation < j.incarnation {
                    m.dead.insert(*old);
                }
            }
        }
        let dead: Vec<Origin> = self
            .view
            .members
            .iter()
            .filter(|o| m.dead.contains(o))
            .copied()
            .collect();
        let leaving: Vec<Origin> = self
            .view
            .members
            .iter()
            .filter(|o| m.leaves.contains(o))
            .copied()
            .collect();
        if m.joins.is_empty() && dead.is_empty() && leaving.is_empty() {
            return;
        }
        let joins = std::mem::take(&mut m.joins);
        let mut members: Vec<Origin> = self
            .view
            .members
            .iter()
            .filter(|o| !dead.contains(o) && !leaving.contains(o))
            .copied()
            .collect();
        members.extend(joins.keys().copied());
        let old: Vec<Origin> = self
            .view
            .members
            .iter()
            .filter(|o| !dead.contains(o))
            .copied()
            .collect();
        let view = ViewId(self.view.id.0 + 1);
        tracing::info!(%view, ?members, "proposing a view");
        let mut acks = BTreeMap::new();
        let last_seq = self.rel.last_seq();
        acks.insert(self.me, last_seq);
        self.membership.flush = Some(Flush { view, last_seq });
        self.membership.change = Some(Change {
            view,
            members: members.clone(),
            old,
            dead,
            joins,
            acks,
            install: None,
            installed: BTreeSet::new(),
        });
        self.send(Flags::default(), Body::Propose(Propose { view, members }));
        self.timers
            .set(Timer::Membership, now + self.config.view_retry);
        self.coordinator_progress(now);
    }

    pub(super) fn on_propose(&mut self, sender: Origin, p: Propose, now: Instant) {
        if !self.in_view || p.view != ViewId(self.view.id.0 + 1) {
            return;
        }
        // Only the first live member may propose: everyone ranked before the
        // proposer must be absent from the proposal (they are dead or leaving).
        let Some(pos) = self.view.members.iter().position(|m| *m == sender) else {
            return;
        };
        if self.view.members[..pos]
            .iter()
            .any(|m| p.members.contains(m))
        {
            return;
        }
        let last_seq = self.rel.last_seq();
        let flush = self.membership.flush.get_or_insert(Flush {
            view: p.view,
            last_seq,
        });
        let ack = FlushAck {
            view: flush.view,
            last_seq: flush.last_seq,
        };
        self.send(Flags::default(), Body::FlushAck(ack));
        // Make our digest current at the coordinator.
        self.schedule_ack(now);
    }

    pub(super) fn on_flush_ack(&mut self, sender: Origin, f: FlushAck, now: Instant) {
        if let Some(c) = &mut self.membership.change {
            if c.view == f.view && c.old.contains(&sender) {
                c.acks.insert(sender, f.last_seq);
            }
        }
        self.coordinator_progress(now);
    }

    /// Coordinator: install once the flush is complete; finish once every
    /// new member acknowledged the install.
    pub(super) fn coordinator_progress(&mut self, now: Instant) {
        let Some(c) = &self.membership.change else {
            return;
        };
        if let Some(install) = &c.install {
            // New members and leavers alike must have it: a leaver that
            // missed it would never learn that its leave completed.
            let done = c
                .members
                .iter()
                .chain(&c.old)
                .all(|m| *m == self.me || c.installed.contains(m));
            if done {
                let left_ourselves = !install.members.contains(&self.me);
                self.membership.change = None;
                if left_ourselves {
                    self.membership.phase = Phase::Left;
                    self.timers.clear(Timer::Membership);
                } else {
                    self.maybe_start_change(now);
                }
            }
            return;
        }
        // A member that died during the change: propose again without it.
        if c.members.iter().any(|m| self.membership.dead.contains(m))
            || c.old.iter().any(|m| self.membership.dead.contains(m))
        {
            let joins = c.joins.clone();
            self.membership.change = None;
            self.membership.flush = None;
            self.membership.joins.extend(joins);
            self.maybe_start_change(now);
            return;
        }
        if !c.old.iter().all(|m| c.acks.contains_key(m)) {
            return;
        }
        // The cut: each old member's last message; a dead member's stream
        // ends at the longest prefix any survivor has.
        let mut cut: BTreeMap<Origin, Seq> = c.acks.clone();
        for d in &c.dead {
            let best = c
                .old
                .iter()
                .filter_map(|m| self.rel.peer_has(*m, *d))
                .max()
                .unwrap_or_default();
            cut.insert(*d, best);
        }
        let complete = c.old.iter().all(|m| {
            cut.iter()
                .all(|(o, s)| self.rel.peer_has(*m, *o).is_some_and(|h| h >= *s))
        });
        if !complete {
            return;
        }
        let mut digest: Vec<(Origin, Seq)> = c
            .members
            .iter()
            .filter_map(|m| cut.get(m).map(|s| (*m, *s)))
            .collect();
        digest.extend(c.joins.iter().map(|(j, s)| (*j, *s)));
        let install = Install {
            view: c.view,
            members: c.members.clone(),
            digest,
        };
        if let Some(c) = &mut self.membership.change {
            c.install = Some(install.clone());
        }
        self.send(Flags::default(), Body::Install(install.clone()));
        self.apply_install(install, now);
        self.coordinator_progress(now);
    }

    pub(super) fn on_install(&mut self, sender: Origin, i: Install, now: Instant) {
        let for_us = i.members.contains(&self.me);
        let joining = matches!(
            self.membership.phase,
            Phase::Joining { .. } | Phase::Discovering { .. }
        );
        if self.in_view && i.view == self.view.id {
            // A retry: our acknowledgement was lost.
            self.send(Flags::default(), Body::InstallAck(i.view));
            return;
        }
        let next = self.in_view
            && i.view == ViewId(self.view.id.0 + 1)
            && self.view.members.contains(&sender)
            && self
                .membership
                .flush
                .as_ref()
                .is_some_and(|f| f.view == i.view);
        if next || (joining && for_us) {
            self.send(Flags::default(), Body::InstallAck(i.view));
            self.apply_install(i, now);
        } else if !self.in_view && !for_us && self.membership.leaving {
            self.send(Flags::default(), Body::InstallAck(i.view));
        }
    }

    pub(super) fn on_install_ack(&mut self, sender: Origin, view: ViewId, now: Instant) {
        if let Some(c) = &mut self.membership.change {
            if c.view == view {
                c.installed.insert(sender);
            }
        }
        self.coordinator_progress(now);
    }

    /// Installs a view (or, if it leaves us out, completes our leave).
    fn apply_install(&mut self, i: Install, now: Instant) {
        if !i.members.contains(&self.me) {
            self.in_view = false;
            self.membership.flush = None;
            self.view.id = i.view;
            if self.membership.change.is_none() {
                self.membership.phase = Phase::Left;
                self.timers.clear(Timer::Membership);
            }
            tracing::info!(view = %i.view, "left the group");
            return;
        }
        let digest: BTreeMap<Origin, Seq> = i.digest.iter().copied().collect();
        self.install_view(i.view, i.members, &digest, now);
    }

    fn install_view(
        &mut self,
        id: ViewId,
        members: Vec<Origin>,
        digest: &BTreeMap<Origin, Seq>,
        now: Instant,
    ) {
        for gone in self.rel.install(&members, digest) {
            self.delivery.forget(gone);
        }
        let coordinator = members.first().copied().unwrap_or(self.me);
        self.view = View {
            id,
            coordinator: coordinator.node,
            // The total-seq sequencer is elected by a later issue; the coordinator stands in.
            sequencer: Some(coordinator.node),
            members,
        };
        self.in_view = true;
        self.membership.phase = Phase::Member;
        self.membership.flush = None;
        self.membership.outranked_by.clear();
        let members = &self.view.members;
        self.membership.dead.retain(|d| members.contains(d));
        self.membership.leaves.retain(|l| members.contains(l));
        self.stats.view_changes += 1;
        tracing::info!(view = %id, members = ?self.view.members, "view installed");
        self.events
            .push_back(Event::ViewInstalled(self.view.clone()));
        if let Some((from, reason)) = self.membership.discontinuity.take() {
            self.events.push_back(Event::Discontinuity {
                from,
                to: id,
                reason,
            });
        }
        self.send_heartbeat(now);
        self.timers
            .set(Timer::Membership, now + self.config.view_retry);
        if self.membership.leaving {
            self.start_leave(now);
        }
    }

    /// Begins a graceful leave.
    pub(super) fn start_leave(&mut self, now: Instant) {
        match self.membership.phase {
            Phase::Left => return,
            Phase::Discovering { .. } | Phase::Joining { .. } => {
                self.membership.phase = Phase::Left;
                self.timers.clear(Timer::Membership);
                return;
            }
            Phase::Member => {}
        }
        if !self.in_view {
            return;
        }
        if self.view.members == [self.me] {
            self.in_view = false;
            self.membership.phase = Phase::Left;
            self.timers.clear(Timer::Membership);
            return;
        }
        self.membership.leaving = true;
        if self.membership.coordinator(&self.view) == Some(self.me) {
            self.membership.leaves.insert(self.me);
            self.maybe_start_change(now);
        } else {
            self.send(Flags::default(), Body::Leave);
            self.timers
                .set(Timer::Membership, now + self.config.view_retry);
        }
    }

    /// After an unrecoverable loss: forget everything and join again as a
    /// new incarnation, so the group's streams restart cleanly for us.
    pub(super) fn rejoin(&mut self, now: Instant, reason: String) {
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
        let members = self.view.members.clone();
        for m in members {
            self.delivery.forget(m);
        }
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
