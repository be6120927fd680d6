//! NAKs: when to ask for a gap (a short random first delay, retries after
//! a few NAK-to-repair times with exponential backoff, suppression by
//! another member's NAK for the same), the rate cap, and what a holder does
//! with a NAK it receives.
//!
//! Timing adapts to how fast repairs come back. Each stream measures the
//! time from its NAK to the repair of the first gap it named (smoothed like
//! TCP's SRTT). The first NAK of a gap waits a random time up to that
//! estimate (capped by `nak_delay_max`): the delay exists so that one NAK
//! can stand for several members missing the same datagram, and waiting
//! longer than an answer takes buys nothing. An unanswered NAK is repeated
//! after [`RETRY_RTTS`] estimates (at least [`MIN_RETRY`], at most
//! `nak_backoff_initial`), doubling per retry up to `nak_backoff_max`. A gap
//! found while a retry of an already repaired gap is pending does not wait
//! for that retry. Before the first measurement the configured delays apply.
//! The token bucket bounds the NAK rate whatever the estimate says.

use std::time::{Duration, Instant};

use ordo_wire::group::Nak;
use ordo_wire::{Origin, Seq};
use rand::rngs::SmallRng;

use super::{random_upto, RelConfig, Reliability};
use crate::engine::Stats;

/// Most ranges one NAK names.
const MAX_NAK_RANGES: usize = 32;
/// Most sequence numbers acted on per NAK received.
const MAX_REPAIR_PER_NAK: u64 = 1024;
/// An unanswered NAK is repeated after this many NAK-to-repair times.
const RETRY_RTTS: u32 = 3;
/// Shortest wait before repeating a NAK, whatever the estimate (so a
/// repair in flight is not asked for again). Holders ignore a repeated
/// NAK for a message they repaired within half of it.
const MIN_RETRY: Duration = Duration::from_millis(2);

/// Upper bound of the random delay before a gap's first NAK.
fn first_delay(cfg: &RelConfig, srtt: Option<Duration>) -> Duration {
    srtt.map_or(cfg.nak_delay_max, |r| r.min(cfg.nak_delay_max))
}

/// Wait before repeating a NAK that got no answer (before any backoff).
fn retry_base(cfg: &RelConfig, srtt: Option<Duration>) -> Duration {
    let initial = cfg.nak_backoff_initial;
    srtt.map_or(initial, |r| {
        (r * RETRY_RTTS).clamp(MIN_RETRY.min(initial), initial)
    })
}

impl Reliability {
    /// A stream may have a new gap, or progressed: arms its NAK timer.
    pub(super) fn schedule_nak(&mut self, origin: Origin, now: Instant, rng: &mut SmallRng) {
        let cfg = &self.cfg;
        let Some(log) = self.logs.get_mut(&origin) else {
            return;
        };
        // The first gap our last NAK named is filled: that NAK was answered.
        let answered = log.contiguous > log.nak.asked;
        if answered {
            if let Some(sent) = log.nak.sent_at.take() {
                // With a timer still armed the gap never closed in between,
                // so the answer is what arrived just now: a clean sample.
                if log.nak.due.is_some() {
                    log.nak.sample(now.saturating_duration_since(sent));
                }
            }
        }
        if !log.has_gap() {
            return;
        }
        // A hole below a received message is a certain loss (one sender's
        // datagrams arrive in order); an unseen tail (known from a digest)
        // may still be on its way, so it is asked for later.
        let delay = if log.held_top() > log.contiguous {
            random_upto(rng, first_delay(cfg, log.nak.srtt))
        } else {
            let wait = retry_base(cfg, log.nak.srtt) / 2;
            wait + random_upto(rng, wait)
        };
        match log.nak.due {
            None => log.nak.due = Some(now + delay),
            // What is armed is a retry of a gap since repaired: the gaps
            // still open need not wait for it.
            Some(due) if answered && due > now + delay => log.nak.due = Some(now + delay),
            Some(_) => {}
        }
    }

    /// NAKs due at `now`, each with its origin.
    pub(crate) fn due_naks(
        &mut self,
        now: Instant,
        rng: &mut SmallRng,
        stats: &mut Stats,
    ) -> Vec<Nak> {
        let mut out = Vec::new();
        let cfg = &self.cfg;
        let forget = cfg.bugs.forget_nak;
        for (origin, log) in &mut self.logs {
            if log.nak.due.is_none_or(|d| d > now) {
                continue;
            }
            let mut ranges = log.missing(MAX_NAK_RANGES);
            if forget {
                // Planted bug: a gap asked for once is never asked for again.
                let f = log.nak.head;
                ranges.retain(|(_, b)| *b > f);
            }
            // A repeat of an unanswered NAK backs off; a NAK for a new gap
            // starts from the estimate.
            let repeat = log.nak.sent_at.is_some() && log.contiguous <= log.nak.asked;
            let top = log.held_top();
            if !repeat && top > log.contiguous {
                // First ask for the holes only: the tail beyond the highest
                // message received may be in flight, and asking for it
                // would repeat messages that were never lost.
                ranges.retain_mut(|(a, b)| {
                    *b = (*b).min(top);
                    *a <= top
                });
            }
            if ranges.is_empty() {
                log.nak.due = None;
                continue;
            }
            if let Err(at) = self.pacer.take(now) {
                stats.naks_rate_limited += 1;
                log.nak.due = Some(at);
                continue;
            }
            let base = retry_base(cfg, log.nak.srtt);
            let wait = if repeat {
                (log.nak.backoff * 2).min(cfg.nak_backoff_max).max(base)
            } else {
                base
            };
            log.nak.backoff = wait;
            log.nak.due = Some(now + wait + random_upto(rng, wait / 2));
            log.nak.head = if forget { log.highest } else { log.contiguous };
            log.nak.asked = log.contiguous;
            log.nak.sent_at = Some(now);
            tracing::trace!(%origin, ?ranges, "nak");
            out.push(Nak {
                origin: *origin,
                ranges,
            });
        }
        out
    }

    /// A NAK from another member. Schedules our repairs of what we hold,
    /// suppresses our own identical NAK, and returns our stable point if
    /// it asks for our own messages we already freed (they are gone).
    pub(crate) fn on_nak(
        &mut self,
        nak: &Nak,
        now: Instant,
        rng: &mut SmallRng,
        stats: &mut Stats,
    ) -> Option<Seq> {
        let mut gone = None;
        let cfg = &self.cfg;
        let repair_delay = cfg.repair_delay;
        let persist = cfg.nak_backoff_initial;
        // A NAK for a message repaired this recently crossed the repair
        // (or is another member's NAK for the same loss): the repair covers it.
        let holdoff = (MIN_RETRY / 2).min(cfg.nak_backoff_initial / 2);
        let log = self.logs.get_mut(&nak.origin)?;
        // Suppression: someone asked for everything we miss. Their answer
        // reaches us too; we ask ourselves if it does not come in time.
        if nak.origin != self.me && log.nak.due.is_some() {
            let mine = log.missing(MAX_NAK_RANGES);
            let covered = mine
                .iter()
                .all(|(a, b)| nak.ranges.iter().any(|(x, y)| x <= a && b <= y));
            if covered && !mine.is_empty() {
                stats.naks_suppressed += 1;
                let later = now + retry_base(cfg, log.nak.srtt);
                if log.nak.due.is_some_and(|d| d < later) {
                    log.nak.due = Some(later);
                }
                // Their NAK counts as ours: its answer is timed, and our
                // next NAK for the same gap is a repeat.
                log.nak.asked = log.contiguous;
                log.nak.sent_at = Some(now);
            }
        }
        let mut budget = MAX_REPAIR_PER_NAK;
        let mut wanted: Vec<(Seq, bool)> = Vec::new();
        for &(a, b) in &nak.ranges {
            if a <= log.stable && nak.origin == self.me {
                gone = Some(log.stable);
            }
            let from = a.max(log.stable.next());
            let to = b.min(log.contiguous.max(log.highest));
            let mut s = from;
            while s <= to && budget > 0 {
                budget -= 1;
                if let Some(h) = log.msgs.get(&s) {
                    let since = h.last_repair.map(|t| now.saturating_duration_since(t));
                    if since.is_none_or(|d| d >= holdoff) {
                        // Forced (not cancelled by seeing another repair)
                        // only when the asker kept asking for longer than a
                        // configured retry after a repair went out: then it
                        // may hear us but not whoever repaired. A NAK soon
                        // after a repair is a lost repair, which the origin
                        // answers again at once; a second copy from us
                        // would be a duplicate.
                        wanted.push((s, since.is_some_and(|d| d >= persist)));
                    }
                }
                s = s.next();
            }
        }
        let origin = nak.origin;
        tracing::trace!(%origin, ranges = ?nak.ranges, ?wanted, ?gone, "nak received");
        for (s, force) in wanted {
            // The origin answers at once; other holders wait, in case it does.
            let due = if origin == self.me {
                now
            } else {
                now + repair_delay + random_upto(rng, repair_delay)
            };
            self.repairs.schedule(origin, s, due, force);
        }
        gone
    }
}

/// The NAK rate cap: a token bucket, so a burst of losses cannot turn a
/// member into a NAK storm./// Tokens refill at `rate` per second up to `burst`.
#[derive(Debug, Clone)]
pub(crate) struct NakPacer {
    tokens: f64,
    burst: f64,
    rate: f64,
    at: Option<Instant>,
}

impl NakPacer {
    pub(crate) fn new(rate_per_sec: u32, burst: u32) -> Self {
        NakPacer {
            tokens: f64::from(burst.max(1)),
            burst: f64::from(burst.max(1)),
            rate: f64::from(rate_per_sec.max(1)),
            at: None,
        }
    }

    /// Takes a token if one is available; otherwise says when one will be.
    pub(crate) fn take(&mut self, now: Instant) -> Result<(), Instant> {
        if let Some(at) = self.at {
            let dt = now.saturating_duration_since(at).as_secs_f64();
            self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        }
        self.at = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - self.tokens) / self.rate;
            Err(now + Duration::from_secs_f64(wait))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut p = NakPacer::new(100, 2);
        assert!(p.take(t0).is_ok());
        assert!(p.take(t0).is_ok());
        let next = p.take(t0).unwrap_err();
        assert!(next > t0 && next <= t0 + Duration::from_millis(11));
        assert!(p.take(t0 + Duration::from_millis(10)).is_ok());
    }
}
