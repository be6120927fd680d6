//! The engine's fixed timers: a small table whose minimum is the next deadline.
//!
//! Per-stream deadlines (NAKs, repairs) live with their streams; the engine
//! folds their minimum into [`Engine::poll_timeout`](super::Engine::poll_timeout).

use std::time::Instant;

/// A fixed timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timer {
    /// The periodic digest.
    Heartbeat = 0,
    /// A prompt, coalesced digest answering data that asked for one.
    Ack = 1,
    /// Membership work: discovery deadline, join/leave/propose/install retries.
    Membership = 2,
    /// The failure detector's periodic look (every heartbeat interval, on
    /// its own: prompt digests re-arm the heartbeat under load).
    Detector = 3,
    /// Our last burst ended without asking for prompt digests: a heartbeat
    /// then tells its end (see `Reliability::fill`).
    Tail = 4,
}

const COUNT: usize = 5;

/// Deadlines indexed by [`Timer`].
#[derive(Debug, Clone, Default)]
pub(crate) struct TimerTable {
    at: [Option<Instant>; COUNT],
}

impl TimerTable {
    pub(crate) fn set(&mut self, timer: Timer, at: Instant) {
        self.at[timer as usize] = Some(at);
    }

    /// Sets the timer unless it is already due earlier (coalescing).
    pub(crate) fn set_earliest(&mut self, timer: Timer, at: Instant) {
        let slot = &mut self.at[timer as usize];
        if slot.is_none_or(|t| at < t) {
            *slot = Some(at);
        }
    }

    pub(crate) fn clear(&mut self, timer: Timer) {
        self.at[timer as usize] = None;
    }

    pub(crate) fn get(&self, timer: Timer) -> Option<Instant> {
        self.at[timer as usize]
    }

    /// Whether the timer is set and due at `now`.
    pub(crate) fn is_due(&self, timer: Timer, now: Instant) -> bool {
        self.get(timer).is_some_and(|t| t <= now)
    }

    /// The earliest deadline.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.at.iter().flatten().min().copied()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn earliest_wins_and_clear_removes() {
        let t0 = Instant::now();
        let mut t = TimerTable::default();
        assert_eq!(t.next(), None);
        t.set(Timer::Heartbeat, t0 + Duration::from_millis(100));
        t.set_earliest(Timer::Ack, t0 + Duration::from_millis(5));
        t.set_earliest(Timer::Ack, t0 + Duration::from_millis(9));
        assert_eq!(t.next(), Some(t0 + Duration::from_millis(5)));
        assert!(t.is_due(Timer::Ack, t0 + Duration::from_millis(5)));
        t.clear(Timer::Ack);
        assert_eq!(t.next(), Some(t0 + Duration::from_millis(100)));
    }
}
