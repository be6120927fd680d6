//! Digests and stability: what each member has, what every member has
//! (and so may be freed), when our messages are confirmed, and when a
//! message we need is gone for good.

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
                    let claim = e.contiguous.min(cap);
                    if claim > *have {
                        *have = claim;
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
                mine
            } else {
                self.peers
                    .get(m)
                    .and_then(|p| p.get(&origin))
                    .copied()
                    .unwrap_or_default()
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
    /// nobody asks for messages already on their way.
    pub(crate) fn digest(&self) -> Vec<DigestEntry> {
        self.logs
            .iter()
            .map(|(o, l)| {
                let (contiguous, highest) = if *o == self.me {
                    (self.sent, self.sent)
                } else {
                    (l.contiguous, l.highest.max(l.contiguous))
                };
                DigestEntry {
                    origin: *o,
                    contiguous,
                    highest,
                }
            })
            .collect()
    }

    /// What `member` last said it has of `origin`.
    pub(crate) fn peer_has(&self, member: Origin, origin: Origin) -> Option<Seq> {
        if member == self.me {
            return self.logs.get(&origin).map(|l| l.contiguous);
        }
        self.peers
            .get(&member)
            .and_then(|p| p.get(&origin))
            .copied()
    }
}
