//! What every run must satisfy, checked from the records the harness keeps.
//!
//! A message published in view V must be delivered, exactly once and in its
//! publisher's order, by every engine that installed V (virtual synchrony:
//! the flush makes leavers deliver it too, and joiners never see old-view
//! messages). Messages of a crashed engine are delivered by all survivors or
//! by none of them, as a common prefix.

use std::collections::{BTreeMap, BTreeSet};

use ordo_wire::{Origin, ViewId};

/// A view, named by its number and coordinator: two groups formed apart may
/// both number their first view 1.
pub type ViewKey = (ViewId, Origin);

/// One publish accepted by an engine.
#[derive(Debug, Clone)]
pub struct Published {
    pub publisher: u64,
    pub index: u32,
    pub life: usize,
    pub view: ViewKey,
}

/// One engine's life (a node in one incarnation) as the harness saw it.
#[derive(Debug, Clone, Default)]
pub struct Life {
    pub slot: usize,
    pub origin: Origin,
    pub views: BTreeSet<ViewKey>,
    /// Per publisher, indexes in delivery order.
    pub deliveries: BTreeMap<u64, Vec<u32>>,
    pub crashed: bool,
    pub discontinuities: u64,
    /// Per total topic, (publisher, index, gseq) in delivery order.
    pub total: BTreeMap<String, Vec<(u64, u32, Option<u64>)>>,
    /// Causal messages (publisher, index) in delivery order.
    pub causal: Vec<(u64, u32)>,
    /// What happened before everything this life delivered so far:
    /// per publisher, how many of its first messages (a prefix).
    pub clock: BTreeMap<u64, u32>,
}

/// A causal message's past: per publisher, how many of its first messages
/// happened before it (computed by the harness from the run's history).
pub type Past = BTreeMap<u64, u32>;

/// Merges `b` into `a` (entry-wise maximum).
pub fn merge(a: &mut Past, b: &Past) {
    for (p, n) in b {
        let e = a.entry(*p).or_default();
        *e = (*e).max(*n);
    }
}

/// Causal order: every life delivered each causal message after every
/// message that happened before it (if it delivered that one at all; a
/// missing one is the loss check's to report).
pub fn causal(lives: &[Life], past: &BTreeMap<(u64, u32), Past>) -> Vec<String> {
    let mut out = Vec::new();
    for (i, life) in lives.iter().enumerate() {
        let pos: BTreeMap<(u64, u32), usize> = life
            .causal
            .iter()
            .enumerate()
            .map(|(k, m)| (*m, k))
            .collect();
        'msgs: for (k, m) in life.causal.iter().enumerate() {
            let Some(hb) = past.get(m) else { continue };
            for (q, n) in hb {
                if *n == 0 {
                    continue;
                }
                let pred = (*q, n - 1);
                if let Some(&pp) = pos.get(&pred) {
                    if pp > k {
                        out.push(format!(
                            "CAUSAL VIOLATION: life {i} ({}) delivered {m:?} before {pred:?}, which happened before it",
                            life.origin
                        ));
                        break 'msgs;
                    }
                }
            }
        }
    }
    out
}

/// Total order: each message of a total topic carries the same `gseq` on
/// every life that delivered it, and each life's `gseq`s of a topic grow by
/// exactly one (so all lives deliver the topic in one order).
pub fn total(lives: &[Life]) -> Vec<String> {
    let mut out = Vec::new();
    let mut seen: BTreeMap<(&str, u64, u32), (u64, usize)> = BTreeMap::new();
    for (i, life) in lives.iter().enumerate() {
        for (topic, seq) in &life.total {
            let mut prev: Option<u64> = None;
            for &(p, idx, g) in seq {
                let Some(g) = g else {
                    out.push(format!(
                        "TOTAL: life {i} delivered {topic} message {p}/{idx} without a gseq"
                    ));
                    break;
                };
                if prev.is_some_and(|pg| g != pg + 1) {
                    out.push(format!(
                        "TOTAL ORDER: life {i} ({}) on {topic}: gseq {g} after {prev:?} ({p}/{idx})",
                        life.origin
                    ));
                    break;
                }
                prev = Some(g);
                match seen.get(&(topic.as_str(), p, idx)) {
                    Some((og, j)) if *og != g => {
                        out.push(format!(
                            "TOTAL ORDER: {topic} message {p}/{idx} has gseq {g} on life {i} but {og} on life {j}"
                        ));
                        break;
                    }
                    Some(_) => {}
                    None => {
                        seen.insert((topic.as_str(), p, idx), (g, i));
                    }
                }
            }
        }
    }
    out
}

/// Checks deliveries against publishes; returns one line per violation.
pub fn deliveries(lives: &[Life], published: &[Published]) -> Vec<String> {
    let mut out = Vec::new();
    let crashed: BTreeSet<usize> = lives
        .iter()
        .enumerate()
        .filter(|(_, l)| l.crashed)
        .map(|(i, _)| i)
        .collect();
    for (i, life) in lives.iter().enumerate() {
        if life.crashed {
            continue;
        }
        let mut expected: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
        let mut crashed_pubs = BTreeSet::new();
        for p in published {
            if crashed.contains(&p.life) {
                crashed_pubs.insert(p.publisher);
            } else if life.views.contains(&p.view) {
                expected.entry(p.publisher).or_default().push(p.index);
            }
        }
        let publishers: BTreeSet<u64> = expected
            .keys()
            .chain(life.deliveries.keys())
            .copied()
            .collect();
        for publisher in publishers {
            let got = life
                .deliveries
                .get(&publisher)
                .map_or(&[][..], Vec::as_slice);
            if crashed_pubs.contains(&publisher) {
                // Only order and uniqueness here; agreement is checked below.
                if got.windows(2).any(|w| w[1] != w[0] + 1) {
                    out.push(format!(
                        "life {i} ({}) delivered crashed publisher {publisher} out of order or with gaps: {}",
                        life.origin,
                        summarize(got)
                    ));
                }
                continue;
            }
            let want = expected.get(&publisher).map_or(&[][..], Vec::as_slice);
            if got == want {
                continue;
            }
            let mut seen = BTreeSet::new();
            let dup = got.iter().find(|x| !seen.insert(**x));
            let kind = if let Some(d) = dup {
                format!("DUPLICATE of index {d}")
            } else if got.windows(2).any(|w| w[1] < w[0]) {
                "FIFO VIOLATION".to_string()
            } else if got.len() < want.len() {
                format!("LOSS of {} message(s)", want.len() - got.len())
            } else {
                "UNEXPECTED deliveries".to_string()
            };
            out.push(format!(
                "life {i} ({} on slot {}): publisher {publisher}: {kind}: expected {} got {}",
                life.origin,
                life.slot,
                summarize(want),
                summarize(got)
            ));
        }
    }
    // Agreement on a crashed engine's messages among the survivors of the
    // views it published in (later joiners rightly deliver none of them).
    let mut crashed_views: BTreeMap<u64, BTreeSet<ViewKey>> = BTreeMap::new();
    for p in published.iter().filter(|p| crashed.contains(&p.life)) {
        crashed_views.entry(p.publisher).or_default().insert(p.view);
    }
    for (publisher, views) in crashed_views {
        let counts: BTreeSet<usize> = lives
            .iter()
            .filter(|l| !l.crashed && l.views.iter().any(|v| views.contains(v)))
            .map(|l| l.deliveries.get(&publisher).map_or(0, Vec::len))
            .collect();
        if counts.len() > 1 {
            out.push(format!(
                "survivors disagree on crashed publisher {publisher}: delivered counts {counts:?}"
            ));
        }
    }
    out
}

/// A short rendering of an index list for reports.
fn summarize(v: &[u32]) -> String {
    if v.len() <= 12 {
        return format!("{v:?}");
    }
    let mut first_bad = None;
    for (i, w) in v.windows(2).enumerate() {
        if w[1] != w[0] + 1 {
            first_bad = Some(i + 1);
            break;
        }
    }
    match first_bad {
        None => format!("[{}..={}] ({} msgs)", v[0], v[v.len() - 1], v.len()),
        Some(i) => format!(
            "{} msgs, first irregularity at position {i}: ...{:?}...",
            v.len(),
            &v[i.saturating_sub(3)..(i + 3).min(v.len())]
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ordo_wire::{Incarnation, NodeId};

    fn life(views: &[u64], del: &[u32]) -> Life {
        Life {
            views: views
                .iter()
                .map(|v| (ViewId(*v), Origin::default()))
                .collect(),
            deliveries: BTreeMap::from([(1, del.to_vec())]),
            origin: Origin {
                node: NodeId(1),
                incarnation: Incarnation(1),
            },
            ..Life::default()
        }
    }

    fn pubs(n: u32, view: u64) -> Vec<Published> {
        (0..n)
            .map(|index| Published {
                publisher: 1,
                index,
                life: 0,
                view: (ViewId(view), Origin::default()),
            })
            .collect()
    }

    #[test]
    fn each_violation_is_named() {
        let p = pubs(4, 1);
        assert!(deliveries(&[life(&[1], &[0, 1, 2, 3])], &p).is_empty());
        assert!(deliveries(&[life(&[1], &[0, 1, 3])], &p)[0].contains("LOSS"));
        assert!(deliveries(&[life(&[1], &[0, 1, 1, 2, 3])], &p)[0].contains("DUPLICATE"));
        assert!(deliveries(&[life(&[1], &[0, 2, 1, 3])], &p)[0].contains("FIFO"));
        // A joiner of view 2 must not deliver view-1 messages.
        assert!(deliveries(&[life(&[2], &[0])], &p)[0].contains("UNEXPECTED"));
    }
}
