//! Agreed view changes: the coordinator proposes, every old member flushes
//! (stops sending and reports its last sequence number), the coordinator
//! waits until every old member holds every old-view message, then installs
//! the new view with that cut as its starting digest; graceful leaves are
//! view changes too.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use ordo_wire::group::{Body, Flags, FlushAck, Install, Propose};
use ordo_wire::{Origin, Seq, ViewId};

use super::{Change, Flush, Membership, Phase};
use crate::engine::timer::Timer;
use crate::engine::{Engine, Event, Release, View};

impl Engine {
    /// Starts a view change if one is wanted and none is running.
    pub(crate) fn maybe_start_change(&mut self, now: Instant) {
        if !self.in_view
            || self.membership.change.is_some()
            || self.membership.coordinator(&self.view) != Some(self.me)
        {
            return;
        }
        let m = &mut self.membership;
        m.joins.retain(|j, _| !self.view.members.contains(j));
        // A newer incarnation waits until its old one is known dead (it
        // fell silent) or refused (it still speaks: a duplicate node id),
        // and then until a view without the old one is installed: the
        // crash view settles the old stream among the survivors alone.
        let live_nodes: Vec<_> = self.view.members.iter().map(|o| o.node).collect();
        let waiting: BTreeMap<Origin, Seq> = m
            .joins
            .iter()
            .filter(|(j, _)| live_nodes.contains(&j.node))
            .map(|(j, s)| (*j, *s))
            .collect();
        m.joins.retain(|j, _| !waiting.contains_key(j));
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
            m.joins.extend(waiting);
            return;
        }
        let joins = std::mem::replace(&mut m.joins, waiting);
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
        let Some(view) = self.view.id.checked_next() else {
            tracing::error!(view = %self.view.id, "view ids exhausted");
            return;
        };
        tracing::info!(%view, ?members, "proposing a view");
        self.membership.change_began.get_or_insert(now);
        let mut acks = BTreeMap::new();
        let last_seq = self.rel.last_seq();
        acks.insert(self.me, last_seq);
        let flush = self.membership.flush.get_or_insert(Flush {
            view,
            last_seq,
            departing: BTreeSet::new(),
            proposers: BTreeSet::new(),
        });
        flush.view = view;
        flush.proposers.insert(self.me);
        flush
            .departing
            .extend(self.view.members.iter().filter(|o| !members.contains(o)));
        let (held, delivered) = self
            .flush_ack()
            .map(|a| (a.held.into_iter().collect(), a.delivered))
            .unwrap_or_default();
        self.membership.change = Some(Change {
            view,
            members: members.clone(),
            old,
            dead,
            joins,
            acks,
            held,
            delivered,
            install: None,
            dissolve: None,
            installed_at: None,
            installed: BTreeSet::new(),
        });
        self.send(
            Flags::default(),
            Body::Propose(Propose {
                view,
                members,
                dissolve: false,
            }),
        );
        self.timers
            .set(Timer::Membership, now + self.config.view_retry);
        self.coordinator_progress(now);
    }

    /// Ends our view because it lost a merge to the view `winner`
    /// coordinates: a flush of every member, then a view of us alone; the
    /// others find themselves left out and rejoin, and so do we.
    pub(crate) fn start_dissolve(&mut self, winner: Origin, now: Instant) {
        if !self.in_view
            || self.membership.change.is_some()
            || self.membership.coordinator(&self.view) != Some(self.me)
        {
            return;
        }
        let Some(view) = self.view.id.checked_next() else {
            return;
        };
        tracing::warn!(%view, %winner, "our view loses a merge: ending it with a flush before rejoining the winner");
        self.membership.change_began.get_or_insert(now);
        let old: Vec<Origin> = self
            .view
            .members
            .iter()
            .filter(|o| !self.membership.dead.contains(o))
            .copied()
            .collect();
        let dead: Vec<Origin> = self
            .view
            .members
            .iter()
            .filter(|o| self.membership.dead.contains(o))
            .copied()
            .collect();
        let members = vec![self.me];
        let last_seq = self.rel.last_seq();
        let flush = self.membership.flush.get_or_insert(Flush {
            view,
            last_seq,
            departing: BTreeSet::new(),
            proposers: BTreeSet::new(),
        });
        flush.view = view;
        flush.proposers.insert(self.me);
        flush
            .departing
            .extend(self.view.members.iter().filter(|o| **o != self.me));
        let (held, delivered) = self
            .flush_ack()
            .map(|a| (a.held.into_iter().collect(), a.delivered))
            .unwrap_or_default();
        self.membership.change = Some(Change {
            view,
            members: members.clone(),
            old,
            dead,
            joins: BTreeMap::new(),
            acks: BTreeMap::from([(self.me, last_seq)]),
            held,
            delivered,
            install: None,
            dissolve: Some(winner),
            installed_at: None,
            installed: BTreeSet::new(),
        });
        self.send(
            Flags::default(),
            Body::Propose(Propose {
                view,
                members,
                dissolve: true,
            }),
        );
        self.timers
            .set(Timer::Membership, now + self.config.view_retry);
        self.coordinator_progress(now);
    }

    pub(crate) fn on_propose(&mut self, sender: Origin, p: Propose, now: Instant) {
        if !self.in_view || Some(p.view) != self.view.id.checked_next() {
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
        if pos > 0 && self.proposal_disputed(sender, pos, now) {
            return;
        }
        // Left out too (suspected, or our view dissolves into another in a
        // merge): we flush all the same; the install tells us the rest. But
        // a proposal by a few that leaves most of us out is theirs to leave.
        if !p.members.contains(&self.me)
            && !p.dissolve
            && !self.membership.leaving
            && !Membership::outweighs(&self.view, &p.members)
        {
            return;
        }
        let last_seq = self.rel.last_seq();
        self.membership.change_began.get_or_insert(now);
        let flush = self.membership.flush.get_or_insert(Flush {
            view: p.view,
            last_seq,
            departing: BTreeSet::new(),
            proposers: BTreeSet::new(),
        });
        flush.proposers.insert(sender);
        flush
            .departing
            .extend(self.view.members.iter().filter(|o| !p.members.contains(o)));
        if let Some(ack) = self.flush_ack() {
            self.send(Flags::default(), Body::FlushAck(ack));
        }
        // Make our digest current at the coordinator; repeat the ack until the install.
        self.schedule_ack(now);
        self.timers
            .set_earliest(Timer::Membership, now + self.config.view_retry);
    }

    /// Whether a proposal by `proposer`, ranked `pos` in our view, waits:
    /// it takes over from members ranked before it that we still hear (or
    /// from us). As with a disputed suspicion (`Engine::on_suspect`), the
    /// proposer may be the one that cannot hear: a broker that hears nobody
    /// suspects the members before it first, proposes, and once it suspects
    /// the rest installs itself alone, which would exclude everyone who
    /// flushed for it (sim seed 51 of the deaf-broker scenario). We flush
    /// for it only once it kept proposing for a whole
    /// `acceptable_heartbeat_pause`; a deaf proposer went alone before.
    fn proposal_disputed(&mut self, proposer: Origin, pos: usize, now: Instant) -> bool {
        let flushing_for_it = self
            .membership
            .flush
            .as_ref()
            .is_some_and(|f| f.proposers.contains(&proposer));
        if flushing_for_it {
            return false;
        }
        let pause = self.config.acceptable_heartbeat_pause;
        let alive = self.view.members[..pos].iter().any(|m| {
            *m == self.me
                || self
                    .detector
                    .last_heard(*m)
                    .is_some_and(|t| now.saturating_duration_since(t) < pause / 2)
        });
        if !alive {
            return false;
        }
        let since = *self
            .membership
            .proposal_disputes
            .entry(proposer)
            .or_insert_with(|| {
                self.stats.proposals_disputed += 1;
                tracing::info!(%proposer, "a proposal takes over from members we still hear; waiting for it to be confirmed");
                now
            });
        now.saturating_duration_since(since) < pause
    }

    pub(crate) fn on_flush_ack(&mut self, sender: Origin, f: FlushAck, now: Instant) {
        if let Some(c) = &mut self.membership.change {
            // Only an answer to our proposal: another member may propose
            // the same view number at once (one that cannot hear a member
            // we hear, taking over), and members answer each proposal they
            // flush for, not ours.
            if c.view == f.view && c.old.contains(&sender) && f.proposers.contains(&self.me) {
                // The highest: an older ack of this view (a delayed copy, a
                // replay) must not lower the cut of the sender's stream.
                let last = c.acks.entry(sender).or_default();
                *last = (*last).max(f.last_seq);
                for (o, s) in f.held {
                    let e = c.held.entry(o).or_default();
                    *e = (*e).max(s);
                }
                c.delivered = c.delivered.max(f.delivered);
            }
        }
        self.coordinator_progress(now);
    }

    /// Coordinator: install once the flush is complete; finish once every
    /// new member acknowledged the install.
    pub(crate) fn coordinator_progress(&mut self, now: Instant) {
        let Some(c) = &self.membership.change else {
            return;
        };
        if let Some(install) = &c.install {
            // New members and leavers alike must have it: a leaver that
            // missed it would never learn that its leave completed.
            // Not forever: a member that crashed right after the install
            // would block every later change. One that only missed it is
            // sent it again when it speaks in the old view (`on_view_mismatch`).
            let waited = c
                .installed_at
                .is_some_and(|t| now >= t + self.config.acceptable_heartbeat_pause);
            let done = waited
                || c.members.iter().chain(&c.old).all(|m| {
                    *m == self.me || c.installed.contains(m) || self.membership.dead.contains(m)
                });
            if done {
                let left_ourselves = !install.members.contains(&self.me);
                let dissolve = c.dissolve;
                self.membership.change = None;
                if left_ourselves {
                    self.membership.phase = Phase::Left;
                    self.timers.clear(Timer::Membership);
                } else if let Some(winner) = dissolve {
                    self.merge_into(winner, now);
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
        // ends at the longest prefix any survivor reported holding (each
        // froze its delivery there, so nobody delivered beyond it).
        let mut cut: BTreeMap<Origin, Seq> = c.acks.clone();
        for d in &c.dead {
            cut.insert(*d, c.held.get(d).copied().unwrap_or_default());
        }
        let skip = self.config.bugs().skip_failure_flush && !c.dead.is_empty();
        let complete = c.old.iter().all(|m| {
            cut.iter()
                .all(|(o, s)| self.rel.peer_has(*m, *o).is_some_and(|h| h >= *s))
        });
        if !complete && !skip {
            return;
        }
        // The cut of every old stream (leavers' and the dead's too, so their
        // waiting safe messages are delivered), then where joiners start.
        let mut digest: Vec<(Origin, Seq)> = cut.into_iter().collect();
        digest.extend(c.joins.iter().map(|(j, s)| (*j, *s)));
        let members = c.members.clone();
        let view = c.view;
        let mine = self.delivery.primary_known();
        let vouch = self.vouches();
        let primary = self
            .membership
            .quorum(&members, self.config.cluster_size, mine, vouch);
        // Joiners that lived in this cluster in their process before and
        // departed from us by failure: a healed partition (or a falsely
        // suspected broker), whose publishes while apart we never got.
        let merge = c.joins.keys().any(|j| {
            self.membership
                .join_primary
                .get(j)
                .is_some_and(|p| p.0 .0 > 0)
                && self.membership.failed_nodes.contains(&j.node)
        });
        // Settle the old view here first, so the state a joiner receives
        // (topics, gseq) is the state after every old-view message.
        let map: BTreeMap<Origin, Seq> = digest.iter().copied().collect();
        let delivered = self
            .membership
            .change
            .as_ref()
            .map(|c| c.delivered)
            .unwrap_or_default();
        self.frontier = delivered;
        self.settle_view(&members, &map, primary);
        let install = Install {
            view,
            part: 0,
            parts: 1,
            primary,
            merge,
            members,
            digest,
            delivered,
            state: self.delivery.state(),
        };
        if let Some(c) = &mut self.membership.change {
            c.install = Some(install.clone());
            c.installed_at = Some(now);
        }
        self.send_install(install.clone());
        self.apply_install(install, now);
        self.coordinator_progress(now);
    }

    /// Multicasts an install, split into frames that fit a datagram.
    pub(crate) fn send_install(&mut self, install: Install) {
        for part in install.into_parts(self.config.max_datagram) {
            self.send(Flags::default(), Body::Install(part));
        }
    }

    /// One frame of an install: a whole one is handled at once, parts are
    /// collected until every one arrived.
    pub(crate) fn on_install_part(&mut self, sender: Origin, i: Install, now: Instant) {
        if i.parts <= 1 || (self.in_view && i.view <= self.view.id) {
            // Whole, or a retry of an installed view (only acknowledged).
            self.on_install(sender, i, now);
            return;
        }
        // Each part counts at least a fixed cost, so a forged `parts` count
        // with empty parts is bounded too.
        let len: usize = 64 + i.state.iter().map(|t| t.name.len() + 12).sum::<usize>();
        let fresh = self.membership.install_parts.as_ref().is_none_or(|p| {
            p.sender != sender
                || p.first.view != i.view
                || p.first.parts != i.parts
                || p.first.members != i.members
                || p.first.digest != i.digest
        });
        if fresh {
            self.membership.install_parts = Some(super::InstallParts {
                sender,
                first: Install {
                    state: Vec::new(),
                    ..i.clone()
                },
                parts: BTreeMap::new(),
                bytes: 0,
            });
        }
        let Some(p) = self.membership.install_parts.as_mut() else {
            return;
        };
        if p.parts.contains_key(&i.part) {
            return;
        }
        if p.bytes + len > super::MAX_INSTALL_BYTES {
            self.stats.dropped_buffer_full += 1;
            self.membership.install_parts = None;
            return;
        }
        p.bytes += len;
        p.parts.insert(i.part, i.state);
        if p.parts.len() < p.first.parts as usize {
            return;
        }
        let Some(p) = self.membership.install_parts.take() else {
            return;
        };
        let whole = Install {
            part: 0,
            parts: 1,
            state: p.parts.into_values().flatten().collect(),
            ..p.first
        };
        self.on_install(sender, whole, now);
    }

    pub(crate) fn on_install(&mut self, sender: Origin, i: Install, now: Instant) {
        let for_us = i.members.contains(&self.me);
        let joining = matches!(
            self.membership.phase,
            Phase::Joining { .. } | Phase::Discovering { .. }
        );
        if self.in_view && i.view == self.view.id && i.members != self.view.members {
            // Another view of our number, installed apart from ours (a
            // stalled coordinator's): not ours to acknowledge; the views
            // tell each other apart by their tags and merge.
            self.stats.dropped_wrong_view += 1;
            return;
        }
        if self.in_view && i.view <= self.view.id {
            // A retry: our acknowledgement was lost (maybe views ago, while
            // a leaving coordinator still waits for it).
            self.send(Flags::default(), Body::InstallAck(i.view));
            return;
        }
        let next = self.in_view
            && Some(i.view) == self.view.id.checked_next()
            && self.view.members.contains(&sender)
            && self
                .membership
                .flush
                .as_ref()
                .is_some_and(|f| f.view == i.view);
        // The next view as one who proposed it installs it. A member that
        // never proposed it installing that number without us went on in a
        // view of its own (one that hears nobody suspects us all at once,
        // after its earlier suspicion started our change): that is no
        // exclusion of ours, or every member of the change would rejoin.
        let proposed = next
            && self
                .membership
                .flush
                .as_ref()
                .is_some_and(|f| f.proposers.contains(&sender));
        if (next && (for_us || self.membership.leaving)) || (joining && for_us) {
            self.send(Flags::default(), Body::InstallAck(i.view));
            self.apply_install(i, now);
        } else if !self.in_view && !for_us && self.membership.leaving {
            self.send(Flags::default(), Body::InstallAck(i.view));
        } else if self.in_view
            && !self.membership.leaving
            && self.view.members.contains(&sender)
            && i.members.contains(&sender)
            && !for_us
            && !proposed
            && !Membership::outweighs(&self.view, &i.members)
        {
            // A few of us went on alone (stalled, cut off): they left.
            self.went_apart(&i.members, now);
        } else if self.in_view
            && !self.membership.leaving
            && self.view.members.contains(&sender)
            && i.members.contains(&sender)
        {
            // A newer view from a member of ours that we cannot apply: it
            // leaves us out (we were suspected), or we missed a view.
            let reason = if for_us {
                format!("missed view {} of the group", i.view)
            } else if self.membership.merge_target.is_some() {
                format!(
                    "view {} ended to merge into another view after a partition",
                    self.view.id
                )
            } else {
                format!("left out of view {} (suspected of failure)", i.view)
            };
            let digest: BTreeMap<Origin, Seq> = i.digest.iter().copied().collect();
            if next && self.agreed_cut(&digest) {
                // Our view ended with a flush we were part of (a merge
                // dissolving it): the old view ends here as everywhere.
                self.frontier = i.delivered;
                self.settle_view(&i.members, &digest, i.primary);
            }
            if let Some(&cut) = digest.get(&self.me) {
                // The install carries the cut of our stream: every member
                // of it delivers our messages up to the cut, none beyond.
                self.resolve_confirms(
                    Some((i.view, cut)),
                    &format!("this broker was excluded from the group's view ({reason})"),
                );
            }
            self.excluded(now, reason);
        }
    }

    /// Whether the cut `digest` covers exactly what our layers hold: all
    /// our stream and no more of any other than the cut. Only then may a
    /// member the view leaves out resolve what it holds like the others; a
    /// suspected member whose flush was not counted holds more (its own
    /// later messages, others' beyond the cut) and would order them apart.
    fn agreed_cut(&self, digest: &BTreeMap<Origin, Seq>) -> bool {
        if digest.get(&self.me) != Some(&self.rel.last_seq()) {
            return false;
        }
        // We hold all of every stream up to its cut, and handed nothing
        // beyond it to the ordering layers (our delivery froze at or below it).
        digest.iter().all(|(o, cut)| {
            *o == self.me || {
                let held = self.rel.contiguous_of(*o).unwrap_or_default();
                held >= *cut && self.rel.cap(*o).unwrap_or(held) <= *cut
            }
        }) && self.rel.origins().iter().all(|o| digest.contains_key(o))
    }

    pub(crate) fn on_install_ack(&mut self, sender: Origin, view: ViewId, now: Instant) {
        if let Some(c) = &mut self.membership.change {
            if c.view == view {
                c.installed.insert(sender);
            }
        }
        self.coordinator_progress(now);
    }

    /// Installs a view (or, if it leaves us out, completes our leave).
    pub(crate) fn apply_install(&mut self, i: Install, now: Instant) {
        let digest: BTreeMap<Origin, Seq> = i.digest.iter().copied().collect();
        let joining = !self.in_view;
        if joining {
            self.delivery
                .load_state(&i.state, &mut self.topics, &mut self.events);
        } else {
            self.frontier = i.delivered;
            self.settle_view(&i.members, &digest, i.primary);
        }
        if !i.members.contains(&self.me) {
            // We left: the view's cut of our stream (all of it, after a
            // graceful leave's flush) is delivered by every member.
            let cut = digest.get(&self.me).map(|c| (i.view, *c));
            self.resolve_confirms(cut, "this broker left the group");
            self.in_view = false;
            self.membership.flush = None;
            if self.membership.change.is_none() {
                self.membership.phase = Phase::Left;
                self.timers.clear(Timer::Membership);
            }
            tracing::info!(view = %i.view, "left the group");
            return;
        }
        let members = i.members.clone();
        let (view, primary, merge) = (i.view, i.primary, i.merge);
        self.membership.last_install = Some(i);
        self.install_view(view, members, &digest, primary, merge, now);
    }

    /// Ends the old view: the flush proved every member holds everything
    /// up to the cut, so deliver what waited for that (safe messages) and
    /// departed members' streams exactly up to their cut, then let the
    /// ordering layers resolve what they hold, the same way on every
    /// member, so nothing pending crosses into the new view.
    pub(crate) fn settle_view(
        &mut self,
        members: &[Origin],
        digest: &BTreeMap<Origin, Seq>,
        primary: bool,
    ) {
        let bug = self.config.bugs().departed_on_one_survivor && members.get(1) == Some(&self.me);
        if !primary {
            // Into a non-primary view exactly the agreed frontier of the
            // old view's total order is delivered (see `delivery::total`).
            self.delivery.set_frontier(self.frontier);
        }
        for (&origin, &cut) in digest {
            if origin != self.me {
                // The agreed cut ends every old stream, a surviving one's
                // too: it replaces a cap our flush for another proposal of
                // this view number set lower (one that listed this origin
                // as departing), which would hold messages below the cut
                // into the new view (sim seed 58768: a broker that could
                // not hear the coordinator proposed a view without it, then
                // installed the coordinator's; adversary seed 2083: a
                // partition healed while two coordinators proposed).
                self.rel.set_cap(origin, cut);
            }
            self.deliver_waiting(origin, cut);
            if bug && !members.contains(&origin) {
                // Planted bug: this survivor delivers what it holds beyond the cut.
                let (delivery, topics, events, stats) = (
                    &mut self.delivery,
                    &mut self.topics,
                    &mut self.events,
                    &mut self.stats,
                );
                self.rel.deliver_everything_held(origin, |m| {
                    crate::engine::deliver_remote(delivery, topics, events, stats, origin, m);
                });
            }
        }
        self.deliver_local(true);
        self.release_control(Release::All);
        // What is not applied now never is (the next view starts afresh).
        self.own_control.clear();
        let sequencer = members.first().map(|m| m.node);
        let n = self.delivery.install(
            self.me,
            members,
            sequencer,
            primary,
            digest,
            &mut self.topics,
            &mut self.events,
        );
        self.stats.delivered += n as u64;
        self.stats.messages_delivered += n as u64;
    }

    pub(crate) fn install_view(
        &mut self,
        id: ViewId,
        members: Vec<Origin>,
        digest: &BTreeMap<Origin, Seq>,
        primary: bool,
        merge: bool,
        now: Instant,
    ) {
        // Idempotent after `settle_view`; here for the first view of a
        // singleton or a joiner, which had nothing to settle.
        self.settle_view(&members, digest, primary);
        if !primary {
            // Our declarations still unordered were discarded with the
            // rest of the old view's total order beyond the frontier.
            self.fail_declarations(&format!(
                "view {id} of the group has no quorum of the last primary view (a partition?)"
            ));
        }
        for gone in self.rel.install(&members, digest) {
            self.delivery.forget(gone);
            if self.departed_cuts.len() >= super::MAX_DEPARTED {
                self.departed_cuts.clear();
            }
            if let Some(cut) = digest.get(&gone) {
                self.departed_cuts.insert(gone, *cut);
            }
        }
        self.rel.clear_caps();
        self.rel.clear_held_beyond();
        let old = std::mem::take(&mut self.view.members);
        let m = &mut self.membership;
        // Why the view changed, for the metrics.
        let departed: Vec<Origin> = old
            .iter()
            .filter(|o| !members.contains(o))
            .copied()
            .collect();
        let failed: Vec<Origin> = departed
            .iter()
            .filter(|o| m.dead.contains(o))
            .copied()
            .collect();
        let joined: Vec<Origin> = if old.is_empty() {
            Vec::new()
        } else {
            members
                .iter()
                .filter(|o| !old.contains(o))
                .copied()
                .collect()
        };
        if !failed.is_empty() {
            self.stats.view_changes_crash += 1;
        } else if !departed.is_empty() {
            self.stats.view_changes_leave += 1;
        } else if merge {
            self.stats.view_changes_merge += 1;
        } else {
            self.stats.view_changes_join += 1;
        }
        if m.failed_nodes.len() >= super::MAX_DEPARTED {
            m.failed_nodes.clear();
        }
        m.failed_nodes.extend(failed.iter().map(|o| o.node));
        for j in &joined {
            m.failed_nodes.remove(&j.node);
        }
        if merge && !old.is_empty() && m.discontinuity.is_none() {
            // Brokers cut off from us come back: what they published while
            // apart was not delivered here (and the reverse).
            m.discontinuity = Some((
                self.view.id,
                format!(
                    "merged with {} broker(s) that were cut off from this view by a partition",
                    joined.len()
                ),
            ));
        }
        m.note_departed(&old, &members);
        if primary {
            m.last_primary = members.clone();
            m.last_primary_id = id;
        }
        m.join_primary.retain(|j, _| !members.contains(j));
        if let Some(t) = m.change_began.take() {
            self.stats.last_view_change_ms = now.saturating_duration_since(t).as_millis() as u64;
        }
        m.newer_view_since = None;
        m.merge_target = None;
        m.join_attempts = 0;
        m.join_rounds = 0;
        m.lower_joiner_at = None;
        m.disputes.clear();
        m.proposal_disputes.clear();
        m.newer.retain(|node, (new, _)| {
            members
                .iter()
                .any(|x| x.node == *node && x.incarnation < new.incarnation)
        });
        if let Some(c) = &m.change {
            if c.view <= id && c.install.is_none() {
                // Another member's install overtook the change we ran.
                let joins = c.joins.clone();
                m.change = None;
                m.joins.extend(joins);
            }
        }
        let coordinator = members.first().copied().unwrap_or(self.me);
        self.detector.watch(&members, now);
        self.view = View {
            id,
            coordinator: coordinator.node,
            // The total-seq sequencer: the coordinator (first member) of the
            // installed view, so it moves only with a view change, whose
            // flush hands its order over with no gap and no duplicate.
            sequencer: Some(coordinator.node),
            primary,
            members,
        };
        self.stats.primary = u64::from(primary);
        self.in_view = true;
        self.membership.phase = Phase::Member;
        self.membership.flush = None;
        self.membership.join_not_before = None;
        self.membership.outranked_by.clear();
        let members = &self.view.members;
        self.membership.dead.retain(|d| members.contains(d));
        self.membership.leaves.retain(|l| members.contains(l));
        self.stats.view_changes += 1;
        if primary {
            tracing::info!(view = %id, members = ?self.view.members, "view installed");
        } else {
            tracing::warn!(view = %id, members = ?self.view.members, "view installed without a quorum of the last primary view: total-order topics are unavailable here until the partition heals");
        }
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

    pub(crate) fn on_leave(&mut self, sender: Origin, now: Instant) {
        if self.in_view
            && self.view.members.contains(&sender)
            && self.membership.coordinator(&self.view) == Some(self.me)
        {
            self.membership.leaves.insert(sender);
            self.maybe_start_change(now);
        }
    }

    /// Begins a graceful leave.
    pub(crate) fn start_leave(&mut self, now: Instant) {
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
}
