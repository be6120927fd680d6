//! Digests and stability: what each member has, what every member has
//! (and so may be freed), when our messages are confirmed, and when a
//! message we need is gone for good.
//!
//! **Holding and vouching.** A member's digest entry for an origin says
//! what it holds (`contiguous`) and what it *vouches for*: normally the
//! same, but a member flushing a departing origin out of the view vouches
//! only up to what it reported in its flush (`FlushAck::held`, frozen at
//! its first report, see `membership`), and says so by sending that as
//! `highest`, below `contiguous` (an entry never has that shape
//! otherwise). The invariant:
//!
//! > A member never vouches for more of a stream than any flush report it
//! > may make of it, and the cut of a departed stream is at least every
//! > survivor's report. So whatever a member vouched for is at or below
//! > the cut of every view change that member survives.
//!
//! Every decision whose safety rests on another member keeping a message
//! uses what members vouch for (`peers`): confirming a publish (another
//! member vouches for it; every member for `safe`), stability and
//! freeing, and the quorum behind an ordering decision
//! ([`Reliability::held_by_quorum`]). A confirmed message is then at or
//! below the cut of every change its voucher survives: delivered to all
//! survivors unless every voucher fails too. (Sim seed 1753: a broker
//! stalled past failure detection resumed and published while the others
//! flushed it out; they received its messages beyond their reports, their
//! digests confirmed them, and the cut, fixed from the reports, discarded
//! them.) Only the flush's completeness check ([`Reliability::peer_has`]:
//! does every survivor hold the cut?) reads what members hold: a survivor
//! holding more than it reported must count as holding a cut another
//! survivor's report set higher, or the flush would wedge.
//!
//! Both are kept as the most any digest of the member said, so a late,
//! reordered digest from before the flush lowers neither.

use ordo_wire::group::DigestEntry;
use ordo_wire::{Origin, Seq};
use rand::rngs::SmallRng;
use std::time::Instant;

use super::Reliability;
use crate::engine::{ConfirmToken, Stats};

impl Reliability {
    /// Another member's digest: what it has, and what exists.
    pub(crate) fn on_digest(
        &mut self,
        from: Origin,
        entries: &[DigestEntry],
        now: Instant,
        rng: &mut SmallRng,
        stats: &mut Stats,
    ) {
        if !self.peers.contains_key(&from) {
            return;
        }
        let mut gaps = Vec::new();
        for e in entries {
            if e.origin == self.me {
                continue;
            }
            if let Some(log) = self.logs.get_mut(&e.origin) {
                let known = e.highest.max(e.contiguous);
                let cap = Seq(log.contiguous.0.saturating_add(self.cfg.max_ahead));
                let known = known.min(cap);
                if known > log.highest {
                    stats.gaps_detected += known.0 - log.highest.0;
                    log.highest = known;
                    gaps.push(e.origin);
                }
            }
        }
        // What the peer holds, capped by what each origin has sent as far
        // as we know (after the gap check above raised `highest`): for us,
        // our last sent seq. A bogus claim must neither free our repairs
        // early nor confirm publishes that nobody holds.
        let caps: Vec<(Origin, Seq)> = entries
            .iter()
            .map(|e| (e.origin, self.known_sent(e.origin)))
            .collect();
        if let Some(peer) = self.peers.get_mut(&from) {
            for (e, (_, cap)) in entries.iter().zip(caps) {
                if let Some(have) = peer.get_mut(&e.origin) {
                    let held = e.contiguous.min(cap);
                    // `highest` below `contiguous`: it vouches for less.
                    let vouched = held.min(e.highest);
                    if vouched > *have {
                        *have = vouched;
                    }
                    // Outside flushes the map is empty and nothing is
                    // held beyond: no lookup on the hot path.
                    if held > *have || !self.held_beyond.is_empty() {
                        let key = (from, e.origin);
                        let held = self.held_beyond.get(&key).map_or(held, |h| held.max(*h));
                        if held > *have {
                            self.held_beyond.insert(key, held);
                        } else {
                            self.held_beyond.remove(&key);
                        }
                    }
                }
            }
        }
        for o in gaps {
            self.schedule_nak(o, now, rng);
        }
    }

    /// The highest seq `origin` has sent as far as we know: for us, our
    /// last sent; for another member, the highest we have heard of.
    pub(crate) fn known_sent(&self, origin: Origin) -> Seq {
        if origin == self.me {
            return self.sent;
        }
        self.logs
            .get(&origin)
            .map(|l| l.highest.max(l.contiguous))
            .unwrap_or_default()
    }

    /// Frees what every member has; returns the confirmations now due.
    pub(crate) fn advance_stability(&mut self, stats: &mut Stats) -> Vec<ConfirmToken> {
        let origins: Vec<Origin> = self.logs.keys().copied().collect();
        for o in origins {
            let point = self.stable_point(o);
            let me = self.me;
            if let Some(log) = self.logs.get_mut(&o) {
                // Never free what is still to be delivered here.
                let point = if o == me {
                    point
                } else {
                    point.min(log.delivered)
                };
                log.free_upto(point);
            }
        }
        self.recount();
        // Confirm once any other member has it (all members for `safe`).
        let me = self.me;
        let any = self
            .peers
            .values()
            .filter_map(|p| p.get(&me).copied())
            .max()
            .unwrap_or_default();
        let all = self.stable_point(me);
        let mut done = Vec::new();
        let ready: Vec<Seq> = self
            .confirms
            .range(..=any)
            .filter(|(s, (_, safe))| !*safe || **s <= all)
            .map(|(s, _)| *s)
            .collect();
        for s in ready {
            if let Some((t, _)) = self.confirms.remove(&s) {
                done.push(t);
            }
        }
        stats.retransmit_buffer_bytes = self.held_bytes as u64;
        done
    }

    /// The most of `origin`'s stream that a quorum of `members` holds, by
    /// the rule that defines a primary view (a strict majority, or exactly
    /// half including the first member), we counting with what we hold
    /// contiguously and the others with their digests. An ordering decision
    /// in that prefix is held by a member of every possible next primary
    /// view, so that view's flush cut includes it.
    ///
    /// The origin itself holds (and vouches for) at least as much of its
    /// own stream as we hold of it: it sent that, keeps its own messages
    /// until they are stable, and never flushes itself out; if it survives
    /// a view change, the flush makes every survivor hold what it sent. So
    /// a decision of the origin's that we hold is held by the two of us
    /// without waiting for its digest: in a 3-broker view the sequencer's
    /// orders and ISIS finals are applied on arrival, not one digest round
    /// (an `ack_delay`) later.
    pub(crate) fn held_by_quorum(&self, origin: Origin, members: &[Origin]) -> Seq {
        let mine = if origin == self.me {
            self.sent
        } else {
            self.logs
                .get(&origin)
                .map(|l| l.contiguous)
                .unwrap_or_default()
        };
        let held = |m: &Origin| {
            if *m == self.me {
                return mine;
            }
            let vouched = self
                .peers
                .get(m)
                .and_then(|p| p.get(&origin))
                .copied()
                .unwrap_or_default();
            if *m == origin {
                vouched.max(mine)
            } else {
                vouched
            }
        };
        let values: Vec<Seq> = members.iter().map(held).collect();
        let mut best = Seq(0);
        for &t in &values {
            if t <= best {
                continue;
            }
            let n = values.iter().filter(|v| **v >= t).count();
            let first = values.first().is_some_and(|v| *v >= t);
            if 2 * n > values.len() || (2 * n == values.len() && first) {
                best = t;
            }
        }
        best
    }

    /// Confirms everything waiting (alone in the view).
    pub(crate) fn confirm_all(&mut self) -> Vec<ConfirmToken> {
        std::mem::take(&mut self.confirms)
            .into_values()
            .map(|(t, _)| t)
            .collect()
    }

    /// Takes every confirmation still waiting, with the sequence number
    /// each waits for: the caller answers them some other way (the stream
    /// they belong to ends, see `Engine::resolve_confirms`).
    pub(crate) fn take_confirms(&mut self) -> Vec<(Seq, ConfirmToken)> {
        std::mem::take(&mut self.confirms)
            .into_iter()
            .map(|(s, (t, _))| (s, t))
            .collect()
    }

    /// What every member has of `origin`.
    pub(crate) fn stable_point(&self, origin: Origin) -> Seq {
        let Some(log) = self.logs.get(&origin) else {
            return Seq(0);
        };
        if origin == self.me && self.cfg.bugs.premature_free {
            // Planted bug: trust that whatever was sent arrived.
            return self.sent;
        }
        self.peers
            .values()
            .map(|p| p.get(&origin).copied().unwrap_or_default())
            .fold(log.contiguous, Seq::min)
    }

    /// A member says `origin`'s messages up to `upto` are stable and freed.
    /// Returns how many of them we miss: no member holds them any more.
    pub(crate) fn on_stable(&self, origin: Origin, upto: Seq) -> u64 {
        if origin == self.me {
            return 0;
        }
        let Some(log) = self.logs.get(&origin) else {
            return 0;
        };
        if upto <= log.contiguous {
            return 0;
        }
        let held = log.msgs.range(log.contiguous.next()..=upto).count() as u64;
        (upto.0 - log.contiguous.0) - held
    }

    /// Our digest: per view member, contiguous and highest known.
    /// Our own entry names what we sent, not what is still queued, so
    /// nobody asks for messages already on their way. An origin we flush
    /// out of the view and hold beyond what we reported gets the report
    /// as `highest`: we vouch for no more (see the `//!` above).
    pub(crate) fn digest(&self) -> Vec<DigestEntry> {
        self.logs
            .iter()
            .map(|(o, l)| {
                let (contiguous, highest) = if *o == self.me {
                    (self.sent, self.sent)
                } else {
                    match self.caps.get(o) {
                        Some(cap) if *cap < l.contiguous => (l.contiguous, *cap),
                        _ => (l.contiguous, l.highest.max(l.contiguous)),
                    }
                };
                DigestEntry {
                    origin: *o,
                    contiguous,
                    highest,
                }
            })
            .collect()
    }

    /// What `member` said it holds of `origin` (even beyond what it
    /// vouches for: only for the flush's completeness check).
    pub(crate) fn peer_has(&self, member: Origin, origin: Origin) -> Option<Seq> {
        if member == self.me {
            return self.logs.get(&origin).map(|l| l.contiguous);
        }
        let vouched = self.peers.get(&member).and_then(|p| p.get(&origin))?;
        Some(
            self.held_beyond
                .get(&(member, origin))
                .map_or(*vouched, |h| (*vouched).max(*h)),
        )
    }

    /// Forgets what members held beyond what they vouched for (a view was
    /// installed: the flush is over and the digests restart from the cut).
    pub(crate) fn clear_held_beyond(&mut self) {
        self.held_beyond.clear();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::collections::BTreeMap;

    use ordo_wire::{Incarnation, NodeId};
    use rand::SeedableRng;

    use super::*;
    use crate::engine::EngineConfig;

    fn origin(n: u32) -> Origin {
        Origin {
            node: NodeId(n),
            incarnation: Incarnation(1),
        }
    }

    /// Node `me`'s reliability in a view of nodes 1, 2, 3, every stream at 0.
    fn rel(me: u32) -> Reliability {
        let cfg = EngineConfig::new(NodeId(me), Incarnation(1), "unit").reliability();
        let mut r = Reliability::new(origin(me), Seq(0), cfg);
        let members: Vec<Origin> = (1..=3).map(origin).collect();
        r.install(&members, &BTreeMap::new());
        r
    }

    fn entry(o: u32, contiguous: u64, highest: u64) -> DigestEntry {
        DigestEntry {
            origin: origin(o),
            contiguous: Seq(contiguous),
            highest: Seq(highest),
        }
    }

    fn digest_from(r: &mut Reliability, from: u32, entries: &[DigestEntry]) {
        let mut rng = SmallRng::seed_from_u64(1);
        r.on_digest(
            origin(from),
            entries,
            Instant::now(),
            &mut rng,
            &mut Stats::default(),
        );
    }

    /// Node 1 holds 10 of node 3's stream.
    fn holding_ten_of_3() -> Reliability {
        let mut r = rel(1);
        let log = r.logs.get_mut(&origin(3)).unwrap();
        log.contiguous = Seq(10);
        log.highest = Seq(10);
        r
    }

    #[test]
    fn a_member_flushing_an_origin_vouches_only_for_its_report() {
        let mut r = holding_ten_of_3();
        let of3 = |r: &Reliability| {
            let e = r.digest().into_iter().find(|e| e.origin == origin(3));
            e.map(|e| (e.contiguous, e.highest))
        };
        assert_eq!(of3(&r), Some((Seq(10), Seq(10))));
        // It reported 6 in its flush: it still says it holds 10.
        r.set_cap(origin(3), Seq(6));
        assert_eq!(of3(&r), Some((Seq(10), Seq(6))));
        // A cap at or above what it holds limits nothing.
        r.set_cap(origin(3), Seq(12));
        assert_eq!(of3(&r), Some((Seq(10), Seq(10))));
    }

    #[test]
    fn a_publisher_confirms_only_what_another_member_vouches_for() {
        let mut r = rel(3);
        r.sent = Seq(10);
        for req in 1..=10 {
            r.await_confirm(Seq(req), ConfirmToken { conn: 0, req }, false);
        }
        let confirmed = |r: &mut Reliability| {
            let mut v: Vec<u64> = r
                .advance_stability(&mut Stats::default())
                .into_iter()
                .map(|t| t.req)
                .collect();
            v.sort_unstable();
            v
        };
        // Node 1 holds all 10 but flushes us out, having reported 6.
        digest_from(&mut r, 1, &[entry(3, 10, 6)]);
        assert_eq!(confirmed(&mut r), (1..=6).collect::<Vec<_>>());
        // A late digest of node 1 from before its flush undoes nothing.
        digest_from(&mut r, 1, &[entry(3, 4, 4)]);
        assert_eq!(confirmed(&mut r), Vec::<u64>::new());
        // The flush's completeness check still sees what node 1 holds.
        assert_eq!(r.peer_has(origin(1), origin(3)), Some(Seq(10)));
        assert_eq!(r.stable_point(origin(3)), Seq(0));
        // Node 2, not flushing, vouches for what it holds.
        digest_from(&mut r, 2, &[entry(3, 8, 8)]);
        assert_eq!(confirmed(&mut r), vec![7, 8]);
        r.clear_held_beyond();
        assert_eq!(r.peer_has(origin(1), origin(3)), Some(Seq(6)));
    }

    #[test]
    fn the_quorum_behind_an_ordering_decision_counts_what_members_vouch_for() {
        let mut r = holding_ten_of_3();
        // Five members: we and the origin (node 3) are two, one short.
        let members: Vec<Origin> = (1..=5).map(origin).collect();
        assert_eq!(r.held_by_quorum(origin(3), &members), Seq(0));
        // Node 2 holds 10 of node 3's stream but reported (vouches for) 6.
        digest_from(&mut r, 2, &[entry(3, 10, 6)]);
        assert_eq!(r.held_by_quorum(origin(3), &members), Seq(6));
        digest_from(&mut r, 2, &[entry(3, 10, 10)]);
        assert_eq!(r.held_by_quorum(origin(3), &members), Seq(10));
    }

    #[test]
    fn the_origin_counts_as_holding_what_we_hold_of_its_stream() {
        // We (node 1) hold 10 of node 3's stream; nobody sent a digest yet.
        let mut r = holding_ten_of_3();
        let members: Vec<Origin> = (1..=3).map(origin).collect();
        // Node 3 sent those 10, so with us they are held by two of three.
        assert_eq!(r.held_by_quorum(origin(3), &members), Seq(10));
        // Node 2's stream: we hold none of it, and node 2's own word is
        // one of three, not a quorum.
        digest_from(&mut r, 2, &[entry(2, 4, 4)]);
        assert_eq!(r.held_by_quorum(origin(2), &members), Seq(0));
        // In a view of four, the origin and we are half: a quorum by the
        // tie rule only when the first member is one of us.
        let four: Vec<Origin> = (1..=4).map(origin).collect();
        assert_eq!(r.held_by_quorum(origin(3), &four), Seq(10));
        let four_other_first: Vec<Origin> = [2, 1, 3, 4].into_iter().map(origin).collect();
        assert_eq!(r.held_by_quorum(origin(3), &four_other_first), Seq(0));
        digest_from(&mut r, 2, &[entry(3, 7, 7)]);
        assert_eq!(r.held_by_quorum(origin(3), &four_other_first), Seq(7));
    }
}
