//! What every run must satisfy, checked from the records the harness keeps:
//! what each engine delivered, in which view, and what every engine
//! published in which view.
//!
//! The checks are stated per view, so they hold under crashes, false
//! suspicions, partitions and merges as well as on a quiet network:
//!
//! - **Sending view**: a message is delivered only in the view it was sent
//!   in (so nothing published on one side of a split is delivered on the
//!   other, and a joiner never delivers an older view's messages).
//! - **Virtual synchrony / agreement on failure**: two engines that both
//!   went from view V to the same next view W (or both ended the run in V)
//!   delivered the same set of messages in V; a crashed or excluded
//!   member's messages reach all of them or none.
//! - **No loss among survivors**: a message whose publisher went on from V
//!   together with an engine (same next view, or the end of the run, or a
//!   graceful leave) was delivered by that engine; so was a confirmed
//!   message of a publisher that crashed alone.
//! - **One answer per publish**: every publish of an engine that did not
//!   crash is confirmed or failed (`Event::PublishFailed`) by the end of
//!   the run, never both, never twice.
//! - **No duplicates, FIFO**: each engine's deliveries of a publisher
//!   strictly increase.
//! - **Causal**: against the happened-before relation the harness computed.
//! - **Total**: one `gseq` per message and one message per `gseq` of a
//!   topic everywhere; each engine's `gseq`s grow by exactly one, except
//!   across a discontinuity where they still grow; total topics deliver
//!   only in primary views.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use ordo_wire::{Origin, ViewId};

/// A view, named by its number and coordinator: two groups formed apart may
/// both number their first view 1.
pub type ViewKey = (ViewId, Origin);

/// A message: (publisher, index in its stream).
pub type Msg = (u64, u32);

/// One publish accepted by an engine.
#[derive(Debug, Clone)]
pub struct Published {
    pub publisher: u64,
    pub index: u32,
    pub life: usize,
    pub view: ViewKey,
    /// The engine confirmed it (another member holds it).
    pub confirmed: bool,
    /// The engine answered it with an error (`Event::PublishFailed`): its
    /// stream ended before the group vouched for it.
    pub failed: bool,
    /// On a total-order topic.
    pub total: bool,
}

/// One delivery of a total topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TotalDelivery {
    pub msg: Msg,
    pub gseq: Option<u64>,
    /// Discontinuities the engine had reported before this delivery.
    pub epoch: u64,
    /// Whether the engine's view was primary (a majority view).
    pub primary: bool,
    /// The view it was delivered in.
    pub view: Option<ViewKey>,
}

/// One engine's life (a node in one incarnation, or several incarnations
/// of one engine that rejoined after an exclusion) as the harness saw it.
#[derive(Debug, Clone, Default)]
pub struct Life {
    pub slot: usize,
    /// The engine's current origin (it changes when the engine rejoins).
    pub origin: Origin,
    pub views: BTreeSet<ViewKey>,
    /// Views in install order.
    pub view_seq: Vec<ViewKey>,
    /// Members of each view installed.
    pub members: BTreeMap<ViewKey, Vec<Origin>>,
    /// Whether each view installed was primary.
    pub primary: BTreeMap<ViewKey, bool>,
    /// The engine's origin in each view installed (a rejoin changes it).
    pub origin_in: BTreeMap<ViewKey, Origin>,
    /// What was delivered while each view was the current one.
    pub delivered_in: BTreeMap<ViewKey, BTreeSet<Msg>>,
    /// Per publisher, indexes in delivery order.
    pub deliveries: BTreeMap<u64, Vec<u32>>,
    pub crashed: bool,
    /// At the end of the run the engine was rejoining as a newer
    /// incarnation than the one in its last view (that one ended there).
    pub rejoining: bool,
    /// Left the group gracefully.
    pub left: bool,
    pub discontinuities: u64,
    /// Per total topic, deliveries in order.
    pub total: BTreeMap<String, Vec<TotalDelivery>>,
    /// Causal messages (publisher, index) in delivery order.
    pub causal: Vec<Msg>,
    /// What happened before everything this life delivered so far:
    /// per publisher, how many of its first messages (a prefix).
    pub clock: BTreeMap<u64, u32>,
}

impl Life {
    /// The view installed last, if any.
    pub fn current(&self) -> Option<ViewKey> {
        self.view_seq.last().copied()
    }

    /// Records a delivery of `m` in the current view.
    pub fn delivered(&mut self, m: Msg) {
        self.deliveries.entry(m.0).or_default().push(m.1);
        if let Some(v) = self.current() {
            self.delivered_in.entry(v).or_default().insert(m);
        }
    }
}

/// Where a life went from a view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Next {
    /// It installed this view next.
    View(ViewKey),
    /// The run ended with this view current (the engine still running).
    End,
    /// It crashed in the view, or was excluded from it and rejoined as a
    /// new incarnation: either way its incarnation of the view ended there.
    Crashed,
}

/// Where `life` went from view `v` (which it installed). A graceful leaver
/// goes where the others went without it: it flushed with them.
fn next_of(lives: &[Life], i: usize, v: &ViewKey) -> Next {
    let life = &lives[i];
    let pos = life.view_seq.iter().position(|x| x == v);
    if let Some(w) = pos.and_then(|p| life.view_seq.get(p + 1)) {
        if life.origin_in.get(w) != life.origin_in.get(v) {
            return Next::Crashed;
        }
        return Next::View(*w);
    }
    if life.crashed || life.rejoining {
        return Next::Crashed;
    }
    if life.left {
        for (j, other) in lives.iter().enumerate() {
            if j == i || other.left || other.crashed {
                continue;
            }
            let Some(p) = other.view_seq.iter().position(|x| x == v) else {
                continue;
            };
            if let Some(w) = other.view_seq.get(p + 1) {
                let without = other
                    .members
                    .get(w)
                    .is_some_and(|m| !m.contains(&life.origin));
                if without {
                    return Next::View(*w);
                }
            }
        }
    }
    Next::End
}

/// Whether `i`, in view `v`, must deliver what publisher life `p` sent in
/// `v`: they went on from `v` together.
fn together(lives: &[Life], i: usize, p: usize, v: &ViewKey) -> bool {
    let np = next_of(lives, p, v);
    np != Next::Crashed && np == next_of(lives, i, v)
}

/// Whether the view life `i` went to from `v` (or `v`, if the run ended
/// in it) is primary.
fn primary_after(lives: &[Life], i: usize, v: &ViewKey) -> bool {
    let life = &lives[i];
    let next = match next_of(lives, i, v) {
        Next::View(w) => w,
        Next::End | Next::Crashed => *v,
    };
    life.primary.get(&next).copied().unwrap_or(true)
}

/// Whether lives `a` and `b` went on from view `v` together (to the same
/// next view, or both to the end of the run, neither crashing in `v`).
pub fn went_on_together(lives: &[Life], a: usize, b: usize, v: &ViewKey) -> bool {
    a < lives.len() && b < lives.len() && together(lives, a, b, v)
}

/// Every delivery and publish check: sending view, virtual synchrony, no
/// loss among survivors, no duplicates, FIFO. One line per violation.
pub fn deliveries(lives: &[Life], published: &[Published]) -> Vec<String> {
    let mut out = sending_view(lives, published);
    out.extend(virtual_synchrony(lives));
    out.extend(order_and_loss(lives, published));
    out
}

/// Whether any required delivery is still missing (the run is not done).
pub fn outstanding(lives: &[Life], published: &[Published]) -> bool {
    published.iter().any(|p| {
        lives.iter().enumerate().any(|(i, l)| {
            !l.crashed
                && l.views.contains(&p.view)
                && required(lives, i, p)
                && !l
                    .delivered_in
                    .get(&p.view)
                    .is_some_and(|s| s.contains(&(p.publisher, p.index)))
        })
    })
}

/// Every publish (each asks for a confirmation) of an engine that did not
/// crash got an answer by the end of the run: confirmed, or failed because
/// its stream ended. (Two answers are flagged as they happen.)
pub fn answers(lives: &[Life], published: &[Published]) -> Vec<String> {
    published
        .iter()
        .filter(|p| !p.confirmed && !p.failed)
        .filter(|p| lives.get(p.life).is_some_and(|l| !l.crashed))
        .map(|p| {
            format!(
                "UNANSWERED: publish {}/{} (life {}, view {:?}) was neither confirmed nor failed by the end of the run",
                p.publisher, p.index, p.life, p.view
            )
        })
        .collect()
}

/// Whether life `i` (which installed `p.view`) must deliver `p`.
fn required(lives: &[Life], i: usize, p: &Published) -> bool {
    // A total message still unordered when its view splits is delivered
    // only by the side that goes on in a primary view (the other could not
    // agree on its place with the majority).
    if p.total && !primary_after(lives, i, &p.view) {
        return false;
    }
    if together(lives, i, p.life, &p.view) {
        return true;
    }
    // A confirmed message of a publisher that crashed (or was excluded)
    // alone in its view survives: another member held it, and every other
    // member went on together.
    if !p.confirmed || next_of(lives, p.life, &p.view) != Next::Crashed {
        return false;
    }
    let others: BTreeSet<Next> = lives
        .iter()
        .enumerate()
        .filter(|(j, l)| *j != p.life && l.views.contains(&p.view))
        .map(|(j, _)| next_of(lives, j, &p.view))
        .collect();
    i != p.life && others.len() == 1 && !others.contains(&Next::Crashed)
}

/// Each message is delivered only in the view it was sent in.
fn sending_view(lives: &[Life], published: &[Published]) -> Vec<String> {
    let sent: BTreeMap<Msg, ViewKey> = published
        .iter()
        .map(|p| ((p.publisher, p.index), p.view))
        .collect();
    let mut out = Vec::new();
    for (i, life) in lives.iter().enumerate() {
        'views: for (v, msgs) in &life.delivered_in {
            for m in msgs {
                let Some(s) = sent.get(m) else {
                    out.push(format!(
                        "UNEXPECTED: life {i} ({}) delivered {m:?}, which no engine accepted",
                        life.origin
                    ));
                    break 'views;
                };
                if s == v {
                    continue;
                }
                let what = if life.views.contains(s) {
                    "VIEW: delivered in another view than it was sent in"
                } else {
                    "SPLIT: delivered outside the views it was sent in (the other side of a split, or an old view at a joiner)"
                };
                out.push(format!(
                    "{what}: life {i} ({} on slot {}) delivered {m:?} in view {} of {} but it was sent in view {} of {}",
                    life.origin, life.slot, v.0, v.1, s.0, s.1
                ));
                break 'views;
            }
        }
    }
    out
}

/// Two lives that went from V to the same next view (or both ended in V)
/// delivered the same set of messages in V.
fn virtual_synchrony(lives: &[Life]) -> Vec<String> {
    let mut out = Vec::new();
    // Per (view, where they went), the first life seen and its set.
    let mut first: BTreeMap<(ViewKey, Next), usize> = BTreeMap::new();
    let empty = BTreeSet::new();
    for (i, life) in lives.iter().enumerate() {
        for v in &life.view_seq {
            let next = next_of(lives, i, v);
            if next == Next::Crashed {
                continue;
            }
            let Some(&j) = first.get(&(*v, next)) else {
                first.insert((*v, next), i);
                continue;
            };
            let a = lives[j].delivered_in.get(v).unwrap_or(&empty);
            let b = life.delivered_in.get(v).unwrap_or(&empty);
            if a != b {
                let only_a: Vec<&Msg> = a.difference(b).take(6).collect();
                let only_b: Vec<&Msg> = b.difference(a).take(6).collect();
                out.push(format!(
                    "VIRTUAL SYNCHRONY: lives {j} ({}) and {i} ({}) both went from view {} of {} to {next:?} but delivered different sets in it: only {j}: {only_a:?}, only {i}: {only_b:?}",
                    lives[j].origin, life.origin, v.0, v.1
                ));
            }
        }
    }
    out
}

/// Per life and publisher: strictly increasing (no duplicate, FIFO) and
/// every required message present (no loss).
fn order_and_loss(lives: &[Life], published: &[Published]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, life) in lives.iter().enumerate() {
        for (publisher, got) in &life.deliveries {
            let mut seen = BTreeSet::new();
            if let Some(d) = got.iter().find(|x| !seen.insert(**x)) {
                out.push(format!(
                    "life {i} ({} on slot {}): publisher {publisher}: DUPLICATE of index {d}: got {}",
                    life.origin,
                    life.slot,
                    summarize(got)
                ));
            } else if got.windows(2).any(|w| w[1] < w[0]) {
                out.push(format!(
                    "life {i} ({} on slot {}): publisher {publisher}: FIFO VIOLATION: got {}",
                    life.origin,
                    life.slot,
                    summarize(got)
                ));
            }
        }
        // Within a view, what a life delivered of a publisher is a prefix
        // of what the publisher sent in it (a crashed or excluded member's
        // messages are cut after a prefix, never with a hole).
        for (v, msgs) in &life.delivered_in {
            let mut by_pub: BTreeMap<u64, BTreeSet<u32>> = BTreeMap::new();
            for (p, i) in msgs {
                by_pub.entry(*p).or_default().insert(*i);
            }
            for (publisher, got) in by_pub {
                let Some(&last) = got.last() else { continue };
                let hole = published
                    .iter()
                    .filter(|p| p.publisher == publisher && p.view == *v && p.index < last)
                    .map(|p| p.index)
                    .find(|i| !got.contains(i));
                if let Some(h) = hole {
                    out.push(format!(
                        "FIFO GAP: life {i} ({} on slot {}) delivered publisher {publisher}'s index {last} in view {} of {} but not index {h} sent before it in that view",
                        life.origin, life.slot, v.0, v.1
                    ));
                }
            }
        }
        if life.crashed {
            continue;
        }
        let mut missing: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
        for p in published {
            if !life.views.contains(&p.view) || !required(lives, i, p) {
                continue;
            }
            let has = life
                .delivered_in
                .get(&p.view)
                .is_some_and(|s| s.contains(&(p.publisher, p.index)));
            if !has {
                missing.entry(p.publisher).or_default().push(p.index);
            }
        }
        for (publisher, m) in missing {
            let got = life
                .deliveries
                .get(&publisher)
                .map_or(&[][..], Vec::as_slice);
            out.push(format!(
                "life {i} ({} on slot {}): publisher {publisher}: LOSS of {} message(s): missing {}, got {}",
                life.origin,
                life.slot,
                m.len(),
                summarize(&m),
                summarize(got)
            ));
        }
    }
    out
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
pub fn causal(lives: &[Life], past: &BTreeMap<Msg, Past>) -> Vec<String> {
    let mut out = Vec::new();
    for (i, life) in lives.iter().enumerate() {
        let pos: BTreeMap<Msg, usize> = life
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
/// every surviving life that delivered it and each `gseq` names one message
/// among them; each life's `gseq`s of a topic grow by exactly one (across a
/// discontinuity they still grow); total topics deliver only in primary
/// views. Agreement binds every engine that did not crash (one cut off,
/// falsely suspected or on the minority side of a split is alive, and its
/// subscribers saw what it delivered): what a member delivered in the view
/// it crashed in is checked for its own order only, and its disagreements
/// with the survivors are counted (the second value), not failed.
pub fn total(lives: &[Life]) -> (Vec<String>, u64) {
    let mut out = Vec::new();
    let mut seen: BTreeMap<(&str, Msg), (u64, usize)> = BTreeMap::new();
    let mut at: BTreeMap<(&str, u64), (Msg, usize)> = BTreeMap::new();
    let mut departed: Vec<(usize, &str, Msg, u64)> = Vec::new();
    for (i, life) in lives.iter().enumerate() {
        // Only a real crash ends a life without the survivors' agreement:
        // a member cut off or falsely suspected is alive, and its
        // subscribers saw what it delivered.
        let ended: BTreeSet<ViewKey> = life
            .current()
            .filter(|_| life.crashed)
            .into_iter()
            .collect();
        for (topic, seq) in &life.total {
            let mut prev: Option<(u64, u64)> = None;
            for d in seq {
                let m = d.msg;
                let Some(g) = d.gseq else {
                    out.push(format!(
                        "TOTAL: life {i} delivered {topic} message {m:?} without a gseq"
                    ));
                    break;
                };
                if !d.primary {
                    out.push(format!(
                        "PRIMARY: life {i} ({}) delivered {topic} message {m:?} (gseq {g}) in a view that is not primary",
                        life.origin
                    ));
                    break;
                }
                if let Some((pg, epoch)) = prev {
                    let ok = if epoch == d.epoch {
                        g == pg + 1
                    } else {
                        g > pg
                    };
                    if !ok {
                        out.push(format!(
                            "TOTAL ORDER: life {i} ({}) on {topic}: gseq {g} after {pg} ({m:?}){}",
                            life.origin,
                            if epoch == d.epoch {
                                ""
                            } else {
                                " across a discontinuity"
                            }
                        ));
                        break;
                    }
                }
                prev = Some((g, d.epoch));
                if d.view.is_some_and(|v| ended.contains(&v)) {
                    departed.push((i, topic.as_str(), m, g));
                    continue;
                }
                match seen.get(&(topic.as_str(), m)) {
                    Some((og, j)) if *og != g => {
                        out.push(format!(
                            "TOTAL ORDER: {topic} message {m:?} has gseq {g} on life {i} but {og} on life {j}"
                        ));
                        break;
                    }
                    Some(_) => {}
                    None => {
                        seen.insert((topic.as_str(), m), (g, i));
                    }
                }
                match at.get(&(topic.as_str(), g)) {
                    Some((om, j)) if *om != m => {
                        out.push(format!(
                            "TOTAL ORDER: {topic} gseq {g} is {m:?} on life {i} but {om:?} on life {j}"
                        ));
                        break;
                    }
                    Some(_) => {}
                    None => {
                        at.insert((topic.as_str(), g), (m, i));
                    }
                }
            }
        }
    }
    let diverged = departed
        .iter()
        .filter(|(_, topic, m, g)| {
            seen.get(&(*topic, *m)).is_some_and(|(og, _)| og != g)
                || at.get(&(*topic, *g)).is_some_and(|(om, _)| om != m)
        })
        .count() as u64;
    (out, diverged)
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
    let mut s = String::new();
    match first_bad {
        None => {
            let _ = write!(s, "[{}..={}] ({} msgs)", v[0], v[v.len() - 1], v.len());
        }
        Some(i) => {
            let _ = write!(
                s,
                "{} msgs, first irregularity at position {i}: ...{:?}...",
                v.len(),
                &v[i.saturating_sub(3)..(i + 3).min(v.len())]
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use ordo_wire::{Incarnation, NodeId};

    fn origin(n: u32) -> Origin {
        Origin {
            node: NodeId(n),
            incarnation: Incarnation(1),
        }
    }

    fn key(v: u64) -> ViewKey {
        (ViewId(v), origin(1))
    }

    /// A life on node `n` that installed `views` and delivered publisher 1's
    /// `del` in the first of them.
    fn life(n: u32, views: &[u64], del: &[u32]) -> Life {
        let mut l = Life {
            origin: origin(n),
            ..Life::default()
        };
        for v in views {
            l.views.insert(key(*v));
            l.view_seq.push(key(*v));
            l.members.insert(key(*v), vec![origin(1), origin(2)]);
            l.origin_in.insert(key(*v), origin(n));
        }
        for i in del {
            l.deliveries.entry(1).or_default().push(*i);
            l.delivered_in
                .entry(key(views[0]))
                .or_default()
                .insert((1, *i));
        }
        l
    }

    fn pubs(n: u32, view: u64) -> Vec<Published> {
        (0..n)
            .map(|index| Published {
                publisher: 1,
                index,
                life: 0,
                view: key(view),
                confirmed: false,
                failed: false,
                total: false,
            })
            .collect()
    }

    #[test]
    fn a_publish_of_a_live_engine_left_unanswered_is_flagged() {
        let mut p = pubs(3, 1);
        p[0].confirmed = true;
        p[1].failed = true;
        let mut lives = vec![life(1, &[1], &[])];
        let v = answers(&lives, &p);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].starts_with("UNANSWERED: publish 1/2"), "{v:?}");
        // A crashed engine's clients lost their connection instead.
        lives[0].crashed = true;
        assert!(answers(&lives, &p).is_empty());
    }

    #[test]
    fn each_violation_is_named() {
        let p = pubs(4, 1);
        let ok = life(1, &[1], &[0, 1, 2, 3]);
        assert!(deliveries(&[ok.clone(), life(2, &[1], &[0, 1, 2, 3])], &p).is_empty());
        let lossy = deliveries(&[ok.clone(), life(2, &[1], &[0, 1, 3])], &p);
        assert!(lossy.iter().any(|v| v.contains("LOSS")), "{lossy:?}");
        let dup = deliveries(&[ok.clone(), life(2, &[1], &[0, 1, 1, 2, 3])], &p);
        assert!(dup.iter().any(|v| v.contains("DUPLICATE")), "{dup:?}");
        let fifo = deliveries(&[ok.clone(), life(2, &[1], &[0, 2, 1, 3])], &p);
        assert!(fifo.iter().any(|v| v.contains("FIFO")), "{fifo:?}");
        // A joiner of view 2 must not deliver view-1 messages.
        let joiner = deliveries(&[ok, life(2, &[2], &[0])], &p);
        assert!(joiner.iter().any(|v| v.contains("SPLIT")), "{joiner:?}");
    }

    #[test]
    fn a_crashed_publishers_messages_reach_all_survivors_or_none() {
        let p = pubs(4, 1);
        let mut dead = life(1, &[1], &[0, 1, 2, 3]);
        dead.crashed = true;
        // Both survivors go on to view 2 with the same prefix: fine.
        let a = life(2, &[1, 2], &[0, 1]);
        let b = life(3, &[1, 2], &[0, 1]);
        let lives = [dead.clone(), a.clone(), b];
        assert!(deliveries(&lives, &p).is_empty());
        // One survivor delivered a message the other did not.
        let c = life(3, &[1, 2], &[0, 1, 2]);
        let v = deliveries(&[dead.clone(), a.clone(), c], &p);
        assert!(v.iter().any(|v| v.contains("VIRTUAL SYNCHRONY")), "{v:?}");
        // A confirmed message of a publisher that crashed alone is required.
        let mut confirmed = p.clone();
        confirmed[3].confirmed = true;
        let d = life(3, &[1, 2], &[0, 1]);
        let v = deliveries(&[dead, a, d], &confirmed);
        assert!(v.iter().any(|v| v.contains("LOSS")), "{v:?}");
    }

    #[test]
    fn gseqs_name_one_message_and_grow_by_one() {
        let d = |m: u32, g: u64, epoch: u64| TotalDelivery {
            msg: (1, m),
            gseq: Some(g),
            epoch,
            primary: true,
            view: None,
        };
        let mk = |ds: Vec<TotalDelivery>| Life {
            total: BTreeMap::from([("t".to_string(), ds)]),
            ..Life::default()
        };
        assert!(total(&[mk(vec![d(0, 1, 0), d(1, 2, 0)])]).0.is_empty());
        assert!(!total(&[mk(vec![d(0, 1, 0), d(1, 3, 0)])]).0.is_empty());
        // Across a discontinuity the gseq may jump, not go back.
        assert!(total(&[mk(vec![d(0, 1, 0), d(1, 5, 1)])]).0.is_empty());
        assert!(!total(&[mk(vec![d(0, 5, 0), d(1, 2, 1)])]).0.is_empty());
        // One gseq, two messages on two lives.
        let v = total(&[mk(vec![d(0, 1, 0)]), mk(vec![d(1, 1, 0)])]).0;
        assert!(v.iter().any(|v| v.contains("gseq 1 is")), "{v:?}");
        let mut np = d(0, 1, 0);
        np.primary = false;
        assert!(total(&[mk(vec![np])]).0[0].contains("PRIMARY"));
    }
}
