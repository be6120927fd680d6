//! Repairs a member owes: messages it holds that another member asked for,
//! each due at once (we are the origin) or after a random delay (another
//! holder, in case the origin answers first).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use ordo_wire::group::DataMsg;
use ordo_wire::{Origin, Seq};

use super::Reliability;
use crate::engine::Stats;

/// Most repairs waiting at once; NAKs beyond it are ignored (they are asked again).
const MAX_PENDING: usize = 16 * 1024;

/// Pending repairs in due order.
#[derive(Debug, Default)]
pub(crate) struct RepairQueue {
    /// When each is due, and whether it is forced: a repair was already
    /// seen and the NAK persists, so seeing another repair does not cancel
    /// it (the asker may hear us but not the origin).
    pending: BTreeMap<(Origin, Seq), (Instant, bool)>,
    by_due: BTreeSet<(Instant, Origin, Seq)>,
}

impl RepairQueue {
    /// Schedules a repair unless one is pending or the queue is full.
    pub(crate) fn schedule(&mut self, origin: Origin, seq: Seq, due: Instant, force: bool) {
        if self.pending.contains_key(&(origin, seq)) || self.pending.len() >= MAX_PENDING {
            return;
        }
        self.pending.insert((origin, seq), (due, force));
        self.by_due.insert((due, origin, seq));
    }

    /// Someone else repaired it: cancels ours unless forced. Returns whether it cancelled.
    pub(crate) fn cancel(&mut self, origin: Origin, seq: Seq) -> bool {
        match self.pending.get(&(origin, seq)) {
            Some(&(due, false)) => {
                self.pending.remove(&(origin, seq));
                self.by_due.remove(&(due, origin, seq));
                true
            }
            _ => false,
        }
    }

    /// The next repair due at `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(Origin, Seq)> {
        let &(due, origin, seq) = self.by_due.first()?;
        if due > now {
            return None;
        }
        self.by_due.pop_first();
        self.pending.remove(&(origin, seq));
        Some((origin, seq))
    }

    /// Forgets repairs of origins no longer in the view.
    pub(crate) fn retain_origins(&mut self, members: &[Origin]) {
        self.pending.retain(|(o, _), _| members.contains(o));
        self.by_due.retain(|(_, o, _)| members.contains(o));
    }

    /// When the next repair is due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.by_due.first().map(|(t, _, _)| *t)
    }
}

impl Reliability {
    /// Someone sent `origin`'s message `seq`: ours to repair need not go out.
    pub(crate) fn on_seen(&mut self, origin: Origin, seq: Seq, now: Instant, stats: &mut Stats) {
        if self.repairs.cancel(origin, seq) {
            stats.retransmissions_suppressed += 1;
        }
        if let Some(h) = self
            .logs
            .get_mut(&origin)
            .and_then(|l| l.msgs.get_mut(&seq))
        {
            h.last_repair = Some(now);
        }
    }

    /// Repairs due at `now`, grouped by origin.
    pub(crate) fn due_repairs(&mut self, now: Instant) -> BTreeMap<Origin, Vec<DataMsg>> {
        let mut out: BTreeMap<Origin, Vec<DataMsg>> = BTreeMap::new();
        while let Some((origin, seq)) = self.repairs.pop_due(now) {
            if let Some(h) = self
                .logs
                .get_mut(&origin)
                .and_then(|l| l.msgs.get_mut(&seq))
            {
                h.last_repair = Some(now);
                out.entry(origin).or_default().push(h.msg.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn cancel_spares_forced_repairs_and_pop_follows_due_order() {
        let t0 = Instant::now();
        let o = Origin::default();
        let mut q = RepairQueue::default();
        q.schedule(o, Seq(2), t0 + Duration::from_millis(5), false);
        q.schedule(o, Seq(1), t0 + Duration::from_millis(9), true);
        q.schedule(o, Seq(2), t0, false);
        assert_eq!(q.next_due(), Some(t0 + Duration::from_millis(5)));
        assert!(!q.cancel(o, Seq(1)));
        assert!(q.cancel(o, Seq(2)));
        assert_eq!(q.pop_due(t0 + Duration::from_millis(8)), None);
        assert_eq!(q.pop_due(t0 + Duration::from_millis(9)), Some((o, Seq(1))));
        assert_eq!(q.next_due(), None);
    }
}
