//! The NAK rate cap: a token bucket, so a burst of losses cannot turn a
//! member into a NAK storm.

use std::time::{Duration, Instant};

/// Tokens refill at `rate` per second up to `burst`.
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
