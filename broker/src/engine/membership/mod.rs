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
//! **Failures.** A member is gone when the failure detector (`detector`,
//! phi accrual) suspects it, when a member reports a suspicion to the
//! coordinator (a `Suspect` frame: suspicion is one-sided, so a member the
//! others hear but one cannot is excluded too), or when a newer incarnation
//! of its node speaks while it stays silent (a restart). A report of a
//! member the coordinator itself heard within half an
//! `acceptable_heartbeat_pause` is *disputed*: the reporter may be the one
//! that cannot hear (a broker that hears nobody suspects everyone, one by
//! one as its timers fire, and acting on each report removed live members
//! until the coordinator was left alone, sim seed 32). It is acted on once
//! reporters outweighing the rest of the view agree, or once it stood a
//! whole pause; a deaf reporter goes on alone before that and is removed.
//! Likewise a proposal that takes over from members ranked before its
//! proposer whom we still hear (or from us) is flushed for only once it
//! was repeated for a whole pause: a deaf broker suspects those before it
//! first and proposes, then installs itself alone, and everyone who had
//! flushed for it would take that as their exclusion (sim seed 51).
//!
//! The coordinator is the first member not gone in its own eyes; it
//! proposes the view without the gone members. Each survivor then stops
//! sending, freezes its delivery of every departing origin at what it
//! holds contiguously and reports that (`FlushAck::held`); the cut of a
//! departed origin is the most any survivor reported, so it covers
//! everything any survivor delivered. The survivors repair each other up
//! to the cut (any holder repairs), and only once every survivor's digest
//! shows it holds the cut does the coordinator install; each survivor
//! delivers the departed streams exactly up to the cut and discards the
//! rest. So each departed message reaches every survivor or none.
//!
//! **Vouching: what a confirmation rests on.** The invariant: *a message
//! is confirmed, and an ordering decision applied, only if it is at or
//! below the cut of every view change that the member vouching for it
//! survives.* A member vouches (in its digests) for an origin's stream up
//! to what it holds, except that once it flushes the origin out it vouches
//! only up to its report, frozen at the first (`reliability::stability`
//! says how the digest carries it). Reports only grow before the freeze, the
//! cut is at least every survivor's report, and confirmations (another
//! member vouches; every member for `safe`) and quorum-held decisions count
//! only what members vouch for; so whatever a survivor vouched for is
//! delivered by every survivor. Without the freeze, a broker stalled past
//! failure detection resumed and published while the others flushed it out;
//! they held its new messages beyond their reports, confirmed them to it,
//! and the cut discarded them (sim seed 1753). The stalled broker is not
//! stopped from publishing: it cannot know in time that it is suspected
//! (the proposal may be lost or late), and what it publishes then is simply
//! never confirmed; it rejoins as a new incarnation when the install that
//! leaves it out arrives.
//!
//! A proposer dying mid-change is itself suspected and the next live
//! member proposes again (members accept a proposer whose predecessors the
//! proposal leaves out); a member dying mid-flush gets the proposal
//! repeated without it. A member that installed a view re-sends the install
//! to a member still speaking in the view before it, so an install that
//! reached only some members still reaches all, and a member that finds
//! itself left out of a newer view (falsely suspected, or cut off) stops
//! delivering and rejoins as a new incarnation, receiving the group's state
//! before it delivers anything; repeated exclusions back off its joins.
//!
//! **Quorum.** A view is *primary* if it holds a strict majority of the
//! members of the last primary view, or exactly half including that view's
//! first (lowest-ranked) member; the first view of a group is primary
//! (with `cluster_size` known, a majority of it), but not for a broker
//! that knows no primary view yet heard a group with a history.
//! Quorum is judged by the coordinator against the last primary view
//! *installed* (a change in flight at the split counts for nothing), and
//! carried in the install. Members are counted by incarnation, so a
//! restarted broker does not restore a lost majority: safety first (a
//! group that lost a majority keeps total topics unavailable until the
//! members of its last primary view are back in one view with it).
//!
//! A member counts for the last primary view only if it still knows every
//! ordering decision (ISIS final, sequencer order) it held there, since a
//! quorum-held decision may have been delivered by someone and the next
//! primary view must contain a holder of it:
//! - a member of our view that was a member of that view (same
//!   incarnation) counts only if the coordinator is one too and kept all
//!   it held: still in that view (a primary successor resolves everything
//!   held), or it delivered all it held when it moved to a non-primary
//!   view (that move discards what lies beyond the agreed frontier). Such
//!   members moved through the same installs as the coordinator, so they
//!   hold and discarded the same;
//! - a new incarnation that merged back naming that view as its last
//!   primary one (`Join::last_primary`) counts for its old self only if
//!   the coordinator's side knows at least what the old self *held*
//!   (`Join::primary_held`, `Join::primary_final`): the sequencer orders
//!   it held (a prefix of one sequence, compared by count) and the highest
//!   ISIS place (final priority, origin, seq) it delivered or held a final
//!   for, against the place of the last ISIS message the coordinator
//!   delivered (ISIS places every message a member did not deliver above
//!   its last delivered one, so this covers every final the old self held);
//!   the side knows what it delivered there, plus, still in that view, the
//!   orders it holds;
//! - a restarted process (state lost) names no last primary view and never
//!   counts for its old self.
//!
//! The price is availability: once every holder of a possibly delivered
//! decision is gone, total topics stay unavailable (sim seed 447 formed a
//! primary view without any holder of an order one member had delivered).
//! Total-order topics deliver and accept publishes only in a primary view.
//!
//! **Quorum-held delivery.** An ordering decision (an ISIS final, a
//! sequencer order: control messages in their sender's stream) is applied,
//! by its sender as by everyone, only once a quorum of the current view
//! holds that part of the sender's stream, under the same rule as above
//! (strict majority, or half with the first member; learned from the
//! digests). Every possible next primary view then contains a holder, its
//! flush cut includes the decision, and it continues after it: a minority
//! never delivers an order the majority will contradict.
//!
//! **Agreed frontier.** When a member flushes it stops delivering total
//! order and reports how many ISIS and sequenced messages it delivered in
//! the old view (`FlushAck::delivered`); the install carries the most any
//! survivor delivered (`Install::delivered`). Every member then applies all
//! the old view's control it holds (the flush made them hold the same).
//! Into a primary successor it resolves everything pending (below); into a
//! non-primary one it delivers exactly the frontier (ISIS finals in final
//! order, sequenced messages in order: the sequence the furthest member
//! delivered, whose finals, orders and data the flush gave everyone) and
//! discards the rest. So members moving together deliver the same old-view
//! messages, and nothing the primary side could order otherwise.
//!
//! **Merge.** A member that hears a heartbeat of another view of its
//! cluster compares: a non-primary view loses to a primary one, then the
//! view with fewer members loses, then the one whose coordinator has the
//! higher node id. Each member of the losing view rejoins the winner as a
//! new incarnation (state transfer, discontinuity event), so nothing one
//! side delivered during the split is delivered on the other.
//!
//! **Joining fallback.** A joiner asks one coordinator at a time, each
//! for an `acceptable_heartbeat_pause` (a round). A round without
//! admission shuns that coordinator for `max_join_attempts` rounds (it may
//! not hear us: we neither ask it nor merge into its view meanwhile), and
//! after `max_join_attempts` (5) unanswered rounds the joiner founds a view
//! of its own (as a new incarnation, so a join a slow coordinator queued
//! admits nobody who speaks), as a broker that finds nobody at startup does (JGroups GMS
//! does the same after `max_join_attempts`); the merge above unites the
//! views once they hear each other. Joiners stuck together found one at a
//! time: one that hears a lower-ranked joiner waits (at most as many
//! rounds again) and joins the view that one founds. The founded view is
//! primary only by the quorum rule above: a new incarnation never counts
//! for its old self, and a broker that knows no primary view but heard a
//! group with a history (`heard_group`) is no first view, so a broker the
//! coordinator cannot hear never orders total topics beside the group.
//!
//! **View identity.** A view is named by its number and its tag (a hash
//! of its members, `ordo_wire::group::view_tag`), both in every frame's
//! header. Two views of one number installed apart (a stalled coordinator
//! completing its change while the others installed theirs without it) are
//! told apart: frames of the other are not taken for ours (data, digests,
//! NAKs and stability are dropped), an install of our number with other
//! members is not acknowledged as a retry, and a heartbeat of the other
//! view is handled as a view mismatch, so the sides merge as above. A
//! member of ours that speaks in another view of our number installed it
//! apart from us and answers none of our flush, so it is gone for our view
//! even mid-flush (its frames keep the failure detector quiet: a joiner
//! two coordinators admitted at once wedged a dissolve, sim seed 14993).
//!
//! **Duplicate node ids.** A live member that hears a newer incarnation of
//! its own node id refuses the newcomer with a `Refuse` frame; the refused
//! engine leaves and reports it (`Engine::refused`). A member that keeps
//! hearing an old incarnation after a newer one spoke only waits (the old
//! is dead once silent): what it hears may be replays of a crashed
//! broker's frames, which must not keep its restart out for good.

mod detector;
mod discovery;
mod view_change;

pub(crate) use detector::{Detector, DetectorConfig};

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use std::time::Duration;

use ordo_wire::group::{
    Body, Flags, FlushAck, Install, Priority, Propose, Refuse, Suspect, TotalCounts,
};
use ordo_wire::{NodeId, Origin, Seq, ViewId};

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
    /// Origins some proposal of this flush left out: their delivery is
    /// frozen at what we report (see [`Engine::flush_ack`]).
    departing: BTreeSet<Origin>,
    /// Who proposed this flush's view (us, when we coordinate it): only
    /// their install of it can end our view. Another member's install of
    /// that number is a view it formed on its own (one that hears nobody
    /// suspects us all), see `on_install`.
    proposers: BTreeSet<Origin>,
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
    /// Per departing origin, the most any flushed member holds of it.
    held: BTreeMap<Origin, Seq>,
    /// The most total-order deliveries any flushed member made in the old
    /// view: the agreed frontier the install carries.
    delivered: TotalCounts,
    install: Option<Install>,
    /// Ends our view for a merge our view lost: we install ourselves alone,
    /// then rejoin this winner's coordinator (the others rejoin it too).
    dissolve: Option<Origin>,
    /// When the install went out (acknowledgements are awaited for a while).
    installed_at: Option<Instant>,
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
    /// Members that left our view: a joiner that still names one of them
    /// as the coordinator to ask is asking our group.
    departed: BTreeSet<Origin>,
    /// The parts of a multi-frame install received so far (one install at
    /// a time: a newer one replaces it).
    install_parts: Option<InstallParts>,
    /// The members of the last primary view (quorum is judged against it)
    /// and its id.
    last_primary: Vec<Origin>,
    last_primary_id: ViewId,
    /// The last primary view each joiner named in its join, and what it
    /// held of that view's order.
    join_primary: BTreeMap<Origin, (ViewId, Reach)>,
    /// What our previous incarnation held of total order in its last
    /// primary view (reported in our joins).
    rejoin_counts: Reach,
    /// The last install applied, re-sent to members still in the view before it.
    last_install: Option<Install>,
    /// When we last re-sent it (at most once per `view_retry`).
    helped_at: Option<Instant>,
    /// Since when members of our view speak in a newer view we did not get.
    newer_view_since: Option<Instant>,
    /// When the running view change began here (for its duration).
    change_began: Option<Instant>,
    /// Newer incarnations of members' nodes: when each was first heard. The
    /// old incarnation is dead if silent since; if it keeps speaking, two
    /// brokers share a node id and the newer one is refused.
    newer: BTreeMap<NodeId, (Origin, Instant)>,
    /// Brokers refused for a duplicate node id (their frames are ignored).
    refused: BTreeSet<Origin>,
    /// When we last sent a refusal (at most once per heartbeat interval).
    refuse_sent: Option<Instant>,
    /// Set when this engine was refused: the reason, for the driver.
    pub(crate) refused_reason: Option<String>,
    /// Join attempts wait until this instant (backoff after exclusions).
    join_not_before: Option<Instant>,
    /// Current backoff between exclusions, and when the last one happened.
    rejoin_backoff: Duration,
    last_exclusion: Option<Instant>,
    /// The coordinator of another view that wins a merge against ours,
    /// and since when we know it.
    merge_target: Option<(Origin, Instant)>,
    /// When the failure tick last ran (a long gap means we were paused).
    last_tick: Option<Instant>,
    /// Join requests sent to the current target without admission.
    join_attempts: u32,
    /// Join rounds (a target's whole patience) that ended without
    /// admission since we last were in a view (see `Joining`'s fallback).
    join_rounds: u32,
    /// Coordinators that let a whole join round of ours go unanswered
    /// (they may not hear us), and until when we do not ask them or merge
    /// into their view again. Bounded like `departed`.
    shunned: BTreeMap<Origin, Instant>,
    /// Node ids of members that departed by failure (a later join of one
    /// of them is a merge or a restart: a discontinuity here too).
    failed_nodes: BTreeSet<NodeId>,
    /// Reported suspicions of members we still hear (see
    /// [`Engine::on_suspect`]): per suspect, since when and by whom. At
    /// most one entry per member of the view; cleared with each install.
    disputes: BTreeMap<Origin, (Instant, BTreeSet<Origin>)>,
    /// When we last heard a join from a lower-ranked node while joining.
    lower_joiner_at: Option<Instant>,
    /// Proposers taking over from members we still hear (see
    /// `Engine::proposal_disputed`), and since when they propose. At most
    /// one entry per member of the view; cleared with each install.
    proposal_disputes: BTreeMap<Origin, Instant>,
    /// We heard a view of our cluster with a history (primary, of several
    /// members, or past its first number): knowing no primary view, we do
    /// not count as the first view of a group (see `Membership::quorum`).
    /// Two brokers' first views alone do not set it, so brokers that
    /// started apart still unite into a primary view.
    heard_group: bool,
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

    /// The view's coordinator: its first member not known to be dead or suspected.
    pub(crate) fn coordinator(&self, view: &View) -> Option<Origin> {
        view.members
            .iter()
            .find(|m| !self.dead.contains(m))
            .copied()
    }

    /// Notes a frame's sender. A newer incarnation of a member's node is
    /// remembered (see [`Engine::failure_tick`]: the member is dead if it
    /// stays silent); returns true if the sender is a superseded or refused
    /// incarnation (its frames are ignored).
    pub(crate) fn note_sender(&mut self, view: &View, sender: Origin, now: Instant) -> bool {
        if self.refused.contains(&sender) {
            return true;
        }
        let mut stale = false;
        for m in &view.members {
            if m.node == sender.node && m.incarnation != sender.incarnation {
                if m.incarnation < sender.incarnation {
                    if !self.dead.contains(m) {
                        self.newer.entry(m.node).or_insert((sender, now));
                    }
                } else {
                    stale = true;
                }
            }
        }
        stale
    }

    /// Whether `members` (a view another member installed or proposes)
    /// outweighs the rest of `view`: a strict majority of it, or exactly
    /// half with its first member. A smaller group that leaves us out is
    /// the one leaving (a stalled or cut-off broker), not us being excluded.
    fn outweighs(view: &View, members: &[Origin]) -> bool {
        Self::weighs(&view.members, members)
    }

    /// Whether `part` holds a strict majority of `whole`, or exactly half
    /// with its first member.
    fn weighs(whole: &[Origin], part: &[Origin]) -> bool {
        let held = whole.iter().filter(|m| part.contains(m)).count();
        2 * held > whole.len()
            || (2 * held == whole.len() && whole.first().is_some_and(|f| part.contains(f)))
    }

    /// Whether a view of `members` is primary, judged against the last
    /// primary view (the rule and why: the `//!` above). A member of that
    /// view counts if it is in `members` and `vouch` (we are of that view
    /// and kept every decision of it we held, see `Engine::vouches`), or if
    /// a new incarnation of its node joined naming that same view as its
    /// last primary one and held no more of its order than `mine`, what our
    /// side is sure to deliver of it (seq orders by count, ISIS by place).
    fn quorum(&self, members: &[Origin], cluster_size: usize, mine: Reach, vouch: bool) -> bool {
        let last = &self.last_primary;
        if last.is_empty() {
            // No primary view known yet: with the cluster's size configured,
            // a majority of it (so a broker restarted while cut off from its
            // group forms no second primary); unknown, the first view is.
            // Not after hearing another view of the cluster: its group has
            // a history we do not know (restarted brokers that founded a
            // view beside it restarted gseq at 1 in the simulator), and we
            // get it by merging into that group.
            return !self.heard_group && (cluster_size == 0 || 2 * members.len() > cluster_size);
        }
        let present = |l: &Origin| {
            (vouch && members.contains(l))
                || members.iter().any(|m| {
                    m.node == l.node
                        && self.last_primary_id.0 > 0
                        && self.join_primary.get(m).is_some_and(|(v, n)| {
                            *v == self.last_primary_id && n.0.seq <= mine.0.seq && n.1 <= mine.1
                        })
                })
        };
        let held = last.iter().filter(|l| present(l)).count();
        2 * held > last.len() || (2 * held == last.len() && present(&last[0]))
    }
}

/// How far into a primary view's agreed order a member's decisions reach:
/// counts (the sequencer's orders held, a prefix of its one sequence) and
/// the highest ISIS place (final priority, origin, seq) delivered or held
/// with a final. Reported by a rejoiner for its old self (what it *held*)
/// and compared against what the coordinator's side is sure to deliver.
pub(crate) type Reach = (TotalCounts, (Priority, Origin, Seq));

impl Engine {
    /// Whether the members of our view that were members of the last
    /// primary view count for it (see `Membership::quorum`): we are one of
    /// them (the others moved through the same installs with us, so they
    /// hold what we hold) and we kept every decision of it we held.
    fn vouches(&self) -> bool {
        self.membership.last_primary.contains(&self.me) && self.delivery.primary_intact()
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
            Phase::Joining { target } => {
                if self.membership.join_not_before.is_none_or(|t| now >= t) {
                    self.membership.join_attempts += 1;
                    if self.membership.join_attempts > self.join_patience() {
                        // A whole round unanswered: the target left its
                        // view or cannot hear us (or we heard nobody).
                        self.join_round_unanswered(target, now);
                    } else {
                        self.send_join(target);
                    }
                }
            }
            Phase::Member | Phase::Left => {
                if self.membership.leaving && self.membership.change.is_none() && self.in_view {
                    self.send(Flags::default(), Body::Leave);
                }
                if let Some(c) = &self.membership.change {
                    let body = match &c.install {
                        None => Some(Body::Propose(Propose {
                            view: c.view,
                            members: c.members.clone(),
                            dissolve: c.dissolve.is_some(),
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
                if self.membership.flush.is_some() {
                    // Keep the coordinator's view of our flush fresh.
                    if let Some(ack) = self.flush_ack() {
                        self.send(Flags::default(), Body::FlushAck(ack));
                    }
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

impl Engine {
    /// Join requests (one per `view_retry`) a target gets before the round
    /// counts as unanswered: an `acceptable_heartbeat_pause`'s worth.
    fn join_patience(&self) -> u32 {
        let n = self.config.acceptable_heartbeat_pause.as_millis()
            / self.config.view_retry.as_millis().max(1);
        u32::try_from(n).unwrap_or(u32::MAX).max(4)
    }

    /// A join round ended without admission. The target is shunned for as
    /// long as we gave it (it may not hear us: asking it again, or merging
    /// into its view, would only repeat this), and we ask whichever
    /// coordinator we hear next. After `max_join_attempts` rounds we found
    /// a view of our own, as a broker that finds nobody at startup does;
    /// the merge unites it with the others once they hear each other.
    fn join_round_unanswered(&mut self, target: Option<Origin>, now: Instant) {
        self.stats.join_rounds_unanswered += 1;
        let m = &mut self.membership;
        m.join_attempts = 0;
        m.join_rounds = m.join_rounds.saturating_add(1);
        if let Some(t) = target {
            if m.shunned.len() >= MAX_DEPARTED {
                m.shunned.clear();
            }
            let rounds = self.config.max_join_attempts.max(1);
            m.shunned
                .insert(t, now + self.config.acceptable_heartbeat_pause * rounds);
            tracing::warn!(coordinator = %t, "no admission from the coordinator asked for a whole join round (it may not hear this broker); asking another");
        }
        let limit = self.config.max_join_attempts;
        // Joiners stuck together found one at a time: the first ranked
        // founds, the others join its view (founding all at once, their
        // views met in a storm of merges, sim seed 121 of the rejoiners
        // scenario). Deferring is bounded, should that joiner never found.
        let pause = self.config.acceptable_heartbeat_pause;
        let deferred = m
            .lower_joiner_at
            .is_some_and(|t| now.saturating_duration_since(t) < pause)
            && m.join_rounds < limit.saturating_mul(2);
        if limit > 0 && m.join_rounds >= limit && !deferred {
            // Primary only with a quorum of the last primary view we know
            // (a new incarnation does not count for its old self), never
            // by the first-view rule: we heard a group (`heard_group`).
            tracing::warn!(
                rounds = m.join_rounds,
                "no coordinator admitted this broker; forming a view of its own until the views merge"
            );
            // As a new incarnation: a coordinator that was only slow may
            // still admit us on a join it queued, with the stream position
            // that join named; our founded view's messages would then be
            // missing from it (sim_bugs seed 5: 62 unrecoverable). The
            // incarnation it admits never speaks and is removed.
            self.stats.join_fallbacks += 1;
            self.next_incarnation();
            self.form_singleton(now);
            return;
        }
        self.membership.phase = Phase::Joining { target: None };
        self.send_join(None);
    }

    /// Whether `coordinator` let a join round of ours go unanswered lately.
    pub(crate) fn shunned(&self, coordinator: Origin, now: Instant) -> bool {
        self.membership
            .shunned
            .get(&coordinator)
            .is_some_and(|until| now < *until)
    }

    /// Our answer to a proposal: our last sequence number and what we hold
    /// of every other origin. Delivery of each departing origin is frozen
    /// at what we report, so the cut (the most any survivor reports) is at
    /// or above everything any survivor delivered.
    pub(crate) fn flush_ack(&mut self) -> Option<FlushAck> {
        let f = self.membership.flush.as_ref()?;
        let (view, last_seq) = (f.view, f.last_seq);
        let departing: Vec<Origin> = f.departing.iter().copied().collect();
        for d in departing {
            if self.rel.cap(d).is_none() {
                let held = self.rel.contiguous_of(d).unwrap_or_default();
                self.rel.set_cap(d, held);
            }
        }
        let held = self
            .rel
            .origins()
            .into_iter()
            .filter(|o| *o != self.me)
            .map(|o| {
                let c = self.rel.contiguous_of(o).unwrap_or_default();
                (o, self.rel.cap(o).unwrap_or(c))
            })
            .collect();
        let proposers = self
            .membership
            .flush
            .as_ref()
            .map(|f| f.proposers.iter().copied().collect())
            .unwrap_or_default();
        Some(FlushAck {
            view,
            last_seq,
            held,
            delivered: self.delivery.freeze_total(),
            proposers,
        })
    }

    /// Periodic failure handling (with each heartbeat): suspicion, reports
    /// to the coordinator, restarts and duplicate node ids, and noticing
    /// that the group moved on without us.
    pub(crate) fn failure_tick(&mut self, now: Instant) {
        // Ticks come every heartbeat interval: a much longer gap means this
        // broker itself was paused (stalled process, suspended host), and
        // the silence it saw is its own; judge the others afresh.
        let paused = self.membership.last_tick.is_some_and(|t| {
            now.saturating_duration_since(t) > self.config.acceptable_heartbeat_pause / 2
        });
        self.membership.last_tick = Some(now);
        if paused {
            tracing::warn!(
                "this broker was paused; not suspecting anyone for the silence it caused"
            );
            self.detector.restart(now);
            // A newer incarnation noted before the pause gets a fresh
            // grace too: the restart counts the old one as heard now, which
            // is no proof that it still speaks (a false duplicate refusal).
            for (_, first) in self.membership.newer.values_mut() {
                *first = now;
            }
            return;
        }
        if !self.in_view || self.membership.has_left() {
            return;
        }
        let mut suspected = Vec::new();
        for m in &self.view.members {
            if *m != self.me && !self.membership.dead.contains(m) && self.detector.suspects(*m, now)
            {
                suspected.push(*m);
            }
        }
        for m in &suspected {
            self.membership.dead.insert(*m);
            self.stats.suspicions += 1;
            let silent = self
                .detector
                .last_heard(*m)
                .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
            self.stats.last_failure_detection_ms = silent.as_millis() as u64;
            self.membership.change_began.get_or_insert(now);
            tracing::warn!(member = %m, silent_ms = silent.as_millis() as u64, phi = self.detector.phi(*m, now), "member suspected of failure");
        }
        // Newer incarnations: the old one is dead once silent for a
        // heartbeat interval after the newer spoke. While it still speaks,
        // the newer waits (it is not admitted). Only the old one itself
        // refuses the newer (`on_newer_self`, it hears the same group): a
        // frame of the old one we hear may be a replay of a crashed broker's
        // recorded traffic, and refusing on it would keep the restarted
        // broker out for good (the simulator's adversary found this).
        let grace = self.config.heartbeat_interval;
        let newer: Vec<(NodeId, Origin, Instant)> = self
            .membership
            .newer
            .iter()
            .map(|(n, (o, t))| (*n, *o, *t))
            .collect();
        for (node, new, first) in newer {
            let old = self.view.members.iter().find(|m| m.node == node).copied();
            let Some(old) = old.filter(|o| o.incarnation < new.incarnation) else {
                // The newer one is the member now (or the node left).
                self.membership.newer.remove(&node);
                continue;
            };
            // Dead once silent for two heartbeat intervals, counted from
            // when the newer spoke at the earliest. (Rolling the start
            // forward to each frame heard was marginal: with heartbeats
            // exactly one interval apart and no other traffic, a live old
            // incarnation looked silent once its frames came no more
            // often than that.)
            let silent_since = self
                .detector
                .last_heard(old)
                .map_or(first, |t| t.max(first));
            if now >= silent_since + grace * 2 {
                self.membership.newer.remove(&node);
                if self.membership.dead.insert(old) {
                    tracing::info!(old = %old, new = %new, "member restarted; its old incarnation is dead");
                    suspected.push(old);
                }
            }
        }
        // Tell the coordinator whom we suspect (it may hear them; we do not).
        let gone: Vec<Origin> = self
            .view
            .members
            .iter()
            .filter(|m| self.membership.dead.contains(m))
            .copied()
            .collect();
        if !gone.is_empty() && self.membership.coordinator(&self.view) != Some(self.me) {
            self.send(
                Flags::default(),
                Body::Suspect(Suspect {
                    view: self.view.id,
                    members: gone,
                }),
            );
        }
        // Members of our view speak in a newer view and no install reached
        // us for a while: we were left out.
        if let Some(since) = self.membership.newer_view_since {
            if now.saturating_duration_since(since) > self.config.acceptable_heartbeat_pause {
                self.excluded(
                    now,
                    "the group installed a newer view without this broker".into(),
                );
                return;
            }
        }
        if !suspected.is_empty() {
            self.maybe_start_change(now);
            self.coordinator_progress(now);
        }
    }

    /// A member reports suspects: the coordinator acts on them. When they
    /// include the coordinator itself, the first member after the suspects
    /// takes over (it may hear the coordinator; the reporter does not).
    ///
    /// A suspect we heard from recently is alive for us: the report says
    /// only that the reporter cannot hear it, and the reporter may be the
    /// one at fault (a broker that hears nobody suspects everyone, one by
    /// one as its timers fire). Such a disputed report is acted on only once
    /// reporters outweighing the rest of the view agree (the suspect is the
    /// one most cannot hear), or once it stood for a whole
    /// `acceptable_heartbeat_pause` (a link only the reporter lacks: one of
    /// the two must go). Meanwhile a deaf reporter goes on alone and is
    /// removed, and its reports with it (sim seed 32: acting on each report
    /// at once removed three live members, then the coordinator was left
    /// alone, non-primary, and its install made the three rejoin).
    pub(crate) fn on_suspect(&mut self, sender: Origin, s: Suspect, now: Instant) {
        if !self.in_view
            || s.view != self.view.id
            || !self.view.members.contains(&sender)
            || s.members.contains(&sender)
            || self.membership.dead.contains(&sender)
        {
            return;
        }
        let first = self
            .view
            .members
            .iter()
            .find(|m| !self.membership.dead.contains(m) && !s.members.contains(m))
            .copied();
        if first != Some(self.me) {
            return;
        }
        let mut any = false;
        for m in s.members {
            if m == self.me || !self.view.members.contains(&m) || self.membership.dead.contains(&m)
            {
                continue;
            }
            if self.disputed(sender, m, now) {
                continue;
            }
            self.membership.dead.insert(m);
            self.membership.disputes.remove(&m);
            tracing::warn!(member = %m, by = %sender, "member reported suspected");
            self.membership.change_began.get_or_insert(now);
            any = true;
        }
        if any {
            self.maybe_start_change(now);
            self.coordinator_progress(now);
        }
    }

    /// Whether `reporter`'s suspicion of `suspect` is still disputed (see
    /// [`Engine::on_suspect`]): we heard the suspect within half an
    /// `acceptable_heartbeat_pause`, the reporters so far do not outweigh
    /// the rest of the view, and the first report is younger than a whole
    /// pause.
    fn disputed(&mut self, reporter: Origin, suspect: Origin, now: Instant) -> bool {
        let pause = self.config.acceptable_heartbeat_pause;
        let alive = self
            .detector
            .last_heard(suspect)
            .is_some_and(|t| now.saturating_duration_since(t) < pause / 2);
        if !alive {
            // Silent for us too by now: nothing left to dispute.
            self.membership.disputes.remove(&suspect);
            return false;
        }
        let m = &mut self.membership;
        let (since, reporters) = m
            .disputes
            .entry(suspect)
            .or_insert_with(|| (now, BTreeSet::new()));
        // A reporter removed since (it went on alone) no longer counts.
        reporters.retain(|r| !m.dead.contains(r));
        if reporters.is_empty() {
            *since = now;
            self.stats.suspicions_disputed += 1;
            tracing::info!(member = %suspect, by = %reporter, "a member reports a suspicion of a member we still hear; waiting for it to be confirmed");
        }
        reporters.insert(reporter);
        // Reporters that outweigh the rest of the view (the suspect left
        // out) say it is the suspect most cannot hear.
        let reporters: Vec<Origin> = reporters.iter().copied().collect();
        let others: Vec<Origin> = self
            .view
            .members
            .iter()
            .filter(|m| **m != suspect)
            .copied()
            .collect();
        now.saturating_duration_since(*since) < pause && !Membership::weighs(&others, &reporters)
    }

    /// Refuses `new`, which claims the node id of the live `holder`.
    pub(crate) fn refuse(&mut self, new: Origin, holder: Origin, now: Instant) {
        if new.node != holder.node || new.incarnation <= holder.incarnation {
            return;
        }
        if self.membership.refused.insert(new) {
            self.stats.duplicate_node_refusals += 1;
            tracing::error!(
                refused = %new, %holder,
                "a second live broker claims node id {}; refusing it (give every broker its own --node-id)",
                new.node
            );
        }
        self.membership.joins.remove(&new);
        let due = self
            .membership
            .refuse_sent
            .is_none_or(|t| now >= t + self.config.heartbeat_interval);
        if due {
            self.membership.refuse_sent = Some(now);
            self.send(
                Flags::default(),
                Body::Refuse(Refuse {
                    refused: new,
                    holder,
                }),
            );
        }
    }

    /// A frame from a newer incarnation of our own node id: if we are a
    /// live member, it is a second broker configured with our id.
    pub(crate) fn on_newer_self(&mut self, newer: Origin, now: Instant) {
        if self.in_view && !self.membership.has_left() {
            self.refuse(newer, self.me, now);
        }
    }

    /// A refusal: if it names us, we are the duplicate and stop.
    pub(crate) fn on_refuse(&mut self, r: Refuse) {
        if r.refused.node != r.holder.node || r.refused.incarnation <= r.holder.incarnation {
            // Only a newer incarnation can be refused in favour of a live older one.
            return;
        }
        if r.refused != self.me {
            self.membership.refused.insert(r.refused);
            self.membership.joins.remove(&r.refused);
            return;
        }
        if self.membership.refused_reason.is_some() {
            return;
        }
        let reason = format!(
            "node id {} is already used by the live broker {} in this cluster; give every broker its own --node-id",
            self.me.node, r.holder
        );
        tracing::error!(holder = %r.holder, "{reason}");
        self.resolve_confirms(None, &format!("this broker stopped: {reason}"));
        self.membership.refused_reason = Some(reason);
        self.membership.phase = Phase::Left;
        self.membership.flush = None;
        self.membership.change = None;
        self.in_view = false;
        self.timers.clear(Timer::Membership);
    }

    /// We learned we are not in the group's view any more: stop delivering
    /// and rejoin as a new incarnation, backing off if it keeps happening.
    pub(crate) fn excluded(&mut self, now: Instant, reason: String) {
        tracing::warn!(view = %self.view.id, "{reason}; rejoining as a new incarnation");
        self.stats.exclusions += 1;
        let m = &mut self.membership;
        let recent = m
            .last_exclusion
            .is_some_and(|t| now.saturating_duration_since(t) < self.config.max_rejoin_backoff * 3);
        m.rejoin_backoff = if recent {
            (m.rejoin_backoff * 2)
                .max(self.config.view_retry * 10)
                .min(self.config.max_rejoin_backoff)
        } else {
            Duration::ZERO
        };
        m.last_exclusion = Some(now);
        m.join_not_before = Some(now + m.rejoin_backoff);
        let wait = m.rejoin_backoff;
        match m.merge_target {
            // Our view ended to merge into another: join its coordinator.
            Some((winner, _)) => self.rejoin_to(now, reason, Some(winner)),
            None => self.rejoin(now, reason),
        }
        if !wait.is_zero() {
            self.timers.set(Timer::Membership, now + wait);
        }
    }

    /// A frame stamped with another view than ours from `sender`: help a
    /// member still in the view before ours to the install it missed, and
    /// notice when our own view's members moved on without us.
    pub(crate) fn on_view_mismatch(
        &mut self,
        sender: Origin,
        view: ViewId,
        digest: Option<&ordo_wire::group::Digest>,
        now: Instant,
    ) {
        if !self.in_view || view.0 == 0 {
            return;
        }
        if view < self.view.id {
            let known =
                self.view.members.contains(&sender) || self.membership.departed.contains(&sender);
            let due = self
                .membership
                .helped_at
                .is_none_or(|t| now >= t + self.config.view_retry);
            if known && due && self.membership.flush.is_none() {
                if let Some(i) = self.membership.last_install.clone() {
                    self.membership.helped_at = Some(now);
                    self.send_install(i);
                }
            }
        } else if self.view.members.contains(&sender)
            && (self.membership.flush.is_none() || view == self.view.id)
        {
            // A member of ours speaks in a newer view, or in another view
            // of our number (installed apart from ours, so even during our
            // flush it answers none of it: a joiner two coordinators
            // admitted at once, sim seed 14993, whose frames keep the
            // failure detector quiet): its digest names that view's members.
            let Some(d) = digest else { return };
            let theirs: Vec<Origin> = d.entries.iter().map(|e| e.origin).collect();
            if theirs.contains(&self.me) || Membership::outweighs(&self.view, &theirs) {
                // We missed its install, or were left out by most of the
                // view: its install comes again when we speak, else we rejoin.
                self.membership.newer_view_since.get_or_insert(now);
            } else {
                self.went_apart(&theirs, now);
            }
        }
    }

    /// Members of our view installed a view of their own without us and
    /// without most of us (a stalled or cut-off minority): they left.
    pub(crate) fn went_apart(&mut self, theirs: &[Origin], now: Instant) {
        let mut any = false;
        for m in theirs {
            if self.view.members.contains(m) && *m != self.me && self.membership.dead.insert(*m) {
                tracing::warn!(member = %m, "member went on in a view of its own; removing it");
                self.membership.change_began.get_or_insert(now);
                any = true;
            }
        }
        if any {
            self.maybe_start_change(now);
            self.coordinator_progress(now);
        }
    }
}

impl Engine {
    /// What this engine is doing in the group, with why it is out of a view
    /// when that is known (rejoining: what ended its place; left: a
    /// refusal), for `/healthz` and `ordo cluster`. [`Engine::view`] stays
    /// the last view installed here: this engine is a member of it only
    /// while the state `is_member()` (member or flushing).
    pub fn membership_state(&self) -> (ordo_wire::client::MembershipState, Option<&str>) {
        use ordo_wire::client::MembershipState as S;
        let m = &self.membership;
        match m.phase {
            Phase::Discovering { .. } => (S::Discovering, None),
            // A join after losing continuity (exclusion, merge) reports
            // that loss with its install.
            Phase::Joining { .. } => match &m.discontinuity {
                Some((_, why)) => (S::Rejoining, Some(why.as_str())),
                None => (S::Joining, None),
            },
            // A coordinator whose own leave is installed waits for the
            // acknowledgements out of the view.
            Phase::Member if m.leaving || !self.in_view => (S::Leaving, None),
            Phase::Member if m.flush.is_some() => (S::Flushing, None),
            Phase::Member => (S::Member, None),
            Phase::Left => (S::Left, m.refused_reason.as_deref()),
        }
    }
}
