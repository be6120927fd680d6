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

mod discovery;
mod view_change;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use ordo_wire::group::{Body, Flags, FlushAck, Install, Propose};
use ordo_wire::{Origin, Seq, ViewId};

use super::timer::Timer;
use super::{Engine, View};

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
    /// Members that left our view: a joiner that still names one of them
    /// as the coordinator to ask is asking our group.
    departed: BTreeSet<Origin>,
    /// The parts of a multi-frame install received so far (one install at
    /// a time: a newer one replaces it).
    install_parts: Option<InstallParts>,
}

/// A multi-frame install being collected (see [`Install::into_parts`]).
#[derive(Debug)]
struct InstallParts {
    sender: Origin,
    first: Install,
    parts: BTreeMap<u32, Vec<ordo_wire::group::TopicState>>,
    bytes: usize,
}

/// Bound on the bytes of install parts held (a forged `parts` count must
/// not make us hold an unbounded amount).
const MAX_INSTALL_BYTES: usize = 64 * 1024 * 1024;

/// Most departed members remembered.
const MAX_DEPARTED: usize = 1024;

/// How many discovery periods an engine waits for an outranking peer to form a view.
const MAX_DISCOVERY_EXTENSIONS: u32 = 3;

impl Membership {
    pub(crate) fn has_left(&self) -> bool {
        self.phase == Phase::Left
    }

    /// Remembers the members of `old` missing from `new`.
    fn note_departed(&mut self, old: &[Origin], new: &[Origin]) {
        if self.departed.len() >= MAX_DEPARTED {
            self.departed.clear();
        }
        self.departed
            .extend(old.iter().filter(|o| !new.contains(o)).copied());
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
                        None => Some(Body::Propose(Propose {
                            view: c.view,
                            members: c.members.clone(),
                        })),
                        Some(i) => {
                            let i = i.clone();
                            self.send_install(i);
                            None
                        }
                    };
                    if let Some(body) = body {
                        self.send(Flags::default(), body);
                    }
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
        // Re-arm only while something waits for an answer.
        let m = &self.membership;
        let waiting = match m.phase {
            Phase::Discovering { .. } | Phase::Joining { .. } => true,
            Phase::Member | Phase::Left => m.leaving || m.change.is_some() || m.flush.is_some(),
        };
        if waiting && !(m.has_left() && m.change.is_none()) {
            self.timers.set(Timer::Membership, retry);
        }
    }
}
