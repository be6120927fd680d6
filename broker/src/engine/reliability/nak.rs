//! NAKs: when to ask for a gap (random first delay, exponential backoff,
//! suppression by another member's NAK for the same), the rate cap, and
//! what a holder does with a NAK it receives.

use std::time::{Duration, Instant};

use ordo_wire::group::Nak;
use ordo_wire::{Origin, Seq};
use rand::rngs::SmallRng;

use super::{random_upto, Reliability};
use crate::engine::Stats;

/// Most ranges one NAK names.
const MAX_NAK_RANGES: usize = 32;
/// Most sequence numbers acted on per NAK received.
const MAX_REPAIR_PER_NAK: u64 = 1024;

impl Reliability {
    pub(super) fn schedule_nak(&mut self, origin: Origin, now: Instant, rng: &mut SmallRng) {
        let max = self.cfg.nak_delay_max;
        if let Some(log) = self.logs.get_mut(&origin) {
            if log.nak.due.is_none() && log.has_gap() {
                let delay = random_upto(rng, max);
                log.nak.due = Some(now + delay);
            }
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
        let max_backoff = self.cfg.nak_backoff_max;
        let forget = self.cfg.bugs.forget_nak;
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
            if ranges.is_empty() {
                log.nak.due = None;
                continue;
            }
            if let Err(at) = self.pacer.take(now) {
                stats.naks_rate_limited += 1;
                log.nak.due = Some(at);
                continue;
            }
            let backoff = log.nak.backoff;
            log.nak.due = Some(now + backoff + random_upto(rng, backoff / 2));
            log.nak.backoff = (backoff * 2).min(max_backoff);
            log.nak.head = if forget { log.highest } else { log.contiguous };
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
        let repair_delay = self.cfg.repair_delay;
        let holdoff = self.cfg.nak_backoff_initial / 2;
        let log = self.logs.get_mut(&nak.origin)?;
        // Suppression: someone asked for everything we miss.
        if nak.origin != self.me && log.nak.due.is_some() {
            let mine = log.missing(MAX_NAK_RANGES);
            let covered = mine
                .iter()
                .all(|(a, b)| nak.ranges.iter().any(|(x, y)| x <= a && b <= y));
            if covered && !mine.is_empty() {
                stats.naks_suppressed += 1;
                let later = now + log.nak.backoff;
                if log.nak.due.is_some_and(|d| d < later) {
                    log.nak.due = Some(later);
                }
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
                    if h.last_repair
                        .is_none_or(|t| now.saturating_duration_since(t) >= holdoff)
                    {
                        wanted.push((s, h.last_repair.is_some()));
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
