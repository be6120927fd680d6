//! Unit tests of the engine as a whole: a few engines wired by hand on a
//! virtual clock, each test dropping or altering exactly the datagrams it
//! is about.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use ordo_wire::group::{Body, ClusterId, Flags, Frame, Header};
use ordo_wire::{Incarnation, NodeId, Ordering, Origin, Seq, ViewId};

use super::*;

/// Engines joined in one view, a clock, and a hand-driven network.
struct Group {
    engines: Vec<Engine>,
    now: Instant,
    events: Vec<Vec<Event>>,
}

fn config(node: u32) -> EngineConfig {
    let mut c = EngineConfig::new(NodeId(node), Incarnation(1), "unit");
    c.discovery_timeout = Duration::from_millis(30);
    c.max_datagram = 1400;
    c
}

impl Group {
    /// `n` engines formed into one view over a perfect network.
    fn new(n: u32) -> Group {
        Self::with(n, config)
    }

    fn with(n: u32, cfg: impl Fn(u32) -> EngineConfig) -> Group {
        let now = Instant::now();
        let engines = (1..=n).map(|i| Engine::new(cfg(i), now)).collect();
        let mut g = Group {
            engines,
            now,
            events: vec![Vec::new(); n as usize],
        };
        g.run(Duration::from_millis(500), |_, _, _| true);
        let first = g.engines[0].view().clone();
        assert_eq!(first.members.len(), n as usize, "{first:?}");
        for e in &g.engines {
            assert_eq!(e.view(), &first);
        }
        g
    }

    /// Runs for `d`, delivering every datagram (1 ms latency) for which
    /// `pass(from, to, datagram)` is true.
    fn run(&mut self, d: Duration, mut pass: impl FnMut(usize, usize, &Bytes) -> bool) {
        let until = self.now + d;
        let mut in_flight: Vec<(Instant, usize, Bytes)> = Vec::new();
        loop {
            for i in 0..self.engines.len() {
                while let Some(dg) = self.engines[i].poll_transmit() {
                    for j in 0..self.engines.len() {
                        if j != i && pass(i, j, &dg) {
                            in_flight.push((self.now + Duration::from_millis(1), j, dg.clone()));
                        }
                    }
                }
                while let Some(ev) = self.engines[i].poll_event() {
                    self.events[i].push(ev);
                }
            }
            let next_net = in_flight.iter().map(|(t, _, _)| *t).min();
            let next_timer = self.engines.iter().filter_map(Engine::poll_timeout).min();
            let next = [next_net, next_timer].into_iter().flatten().min();
            let Some(t) = next.filter(|t| *t <= until) else {
                self.now = until;
                return;
            };
            self.now = self.now.max(t);
            let now = self.now;
            let (due, rest): (Vec<_>, Vec<_>) =
                in_flight.into_iter().partition(|(t, _, _)| *t <= now);
            in_flight = rest;
            for (_, j, dg) in due {
                self.engines[j].handle_datagram(&dg, now);
            }
            for e in &mut self.engines {
                if e.poll_timeout().is_some_and(|t| t <= now) {
                    e.handle_timeout(now);
                }
            }
        }
    }

    fn publish(&mut self, i: usize, payload: &[u8]) -> Result<(), PublishError> {
        let now = self.now;
        self.engines[i].publish(msg(payload, None), now)
    }

    fn delivered(&self, i: usize) -> Vec<Bytes> {
        self.events[i]
            .iter()
            .filter_map(|e| match e {
                Event::Deliver(d) => Some(d.payload.clone()),
                _ => None,
            })
            .collect()
    }
}

fn msg(payload: &[u8], confirm: Option<ConfirmToken>) -> Publish {
    Publish {
        topic: "t".into(),
        ordering: Ordering::Fifo,
        safe: false,
        publisher: 1,
        context: CausalContext::new(),
        payload: Bytes::copy_from_slice(payload),
        confirm,
        published_at_us: 0,
    }
}

fn is_data(dg: &Bytes) -> bool {
    matches!(Frame::decode(dg).map(|f| f.body), Ok(Body::Data(_)))
}

fn is_repair(dg: &Bytes) -> bool {
    Frame::decode(dg).is_ok_and(|f| {
        matches!(f.body, Body::Data(_)) && f.header.flags.contains(Flags::RETRANSMIT)
    })
}

#[test]
fn a_lone_engine_forms_its_view_and_delivers_and_confirms_at_once() {
    let now = Instant::now();
    let mut c = config(1);
    c.discovery_timeout = Duration::ZERO;
    let mut e = Engine::new(c, now);
    assert!(e.in_view());
    let token = ConfirmToken { conn: 1, req: 2 };
    e.publish(msg(b"hi", Some(token)), now).unwrap();
    let events: Vec<Event> = std::iter::from_fn(|| e.poll_event()).collect();
    assert!(matches!(events[0], Event::ViewInstalled(ref v) if v.members == [e.origin()]));
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::Deliver(d) if &d.payload[..] == b"hi")));
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::Confirmed(t) if *t == token)));
}

#[test]
fn a_burst_of_publishes_becomes_few_datagrams() {
    let mut g = Group::new(2);
    let before = g.engines[0].stats().datagrams_sent;
    for i in 0..100u32 {
        g.publish(0, &i.to_be_bytes()).unwrap();
    }
    let mut data = 0;
    while let Some(dg) = g.engines[0].poll_transmit() {
        data += usize::from(is_data(&dg));
    }
    // 100 messages of ~40 bytes each fit in a handful of 1400-byte datagrams.
    assert!(data <= 5, "{data} datagrams");
    assert!(g.engines[0].stats().datagrams_sent - before >= data as u64);
}

#[test]
fn a_lost_datagram_raises_naks_and_retransmissions_and_is_repaired() {
    let mut g = Group::new(2);
    for i in 0..5u32 {
        g.publish(0, &i.to_be_bytes()).unwrap();
        let mut dropped = false;
        // Lose the first data datagram of the second publish only.
        g.run(Duration::from_millis(5), |from, _, dg| {
            let drop = i == 1 && from == 0 && !dropped && is_data(dg);
            dropped |= drop;
            !drop
        });
    }
    g.run(Duration::from_millis(300), |_, _, _| true);
    let got = g.delivered(1);
    assert_eq!(got.len(), 5);
    for (i, p) in got.iter().enumerate() {
        assert_eq!(&p[..], &(i as u32).to_be_bytes());
    }
    let (a, b) = (g.engines[0].stats(), g.engines[1].stats());
    assert!(b.gaps_detected >= 1 && b.gaps_repaired == b.gaps_detected);
    assert!(b.naks_sent >= 1);
    assert!(a.naks_received >= 1);
    assert!(a.retransmissions_sent >= 1);
}

#[test]
fn a_lost_tail_is_repaired_from_digests_without_more_traffic() {
    let mut g = Group::new(3);
    g.publish(0, b"last").unwrap();
    // The only data datagram reaches engine 1 but not engine 2.
    g.run(Duration::from_millis(300), |from, to, dg| {
        !(from == 0 && to == 2 && is_data(dg) && !is_repair(dg))
    });
    assert_eq!(g.delivered(2), vec![Bytes::from_static(b"last")]);
    assert!(g.engines[2].stats().naks_sent >= 1);
    // Stability freed everything once all had it.
    for e in &g.engines {
        assert_eq!(e.stats().retransmit_buffer_bytes, 0);
    }
}

#[test]
fn another_holder_repairs_when_the_origin_cannot_be_heard() {
    let mut g = Group::new(3);
    g.publish(0, b"m").unwrap();
    // Engine 2 never hears engine 0 at all: only engine 1 can repair.
    g.run(Duration::from_millis(500), |from, to, _| {
        !(from == 0 && to == 2)
    });
    assert_eq!(g.delivered(2), vec![Bytes::from_static(b"m")]);
    assert!(g.engines[1].stats().retransmissions_sent >= 1);
}

#[test]
fn a_nak_already_sent_by_another_member_is_suppressed() {
    // Slow first NAKs and a fast network so the first NAK reaches the
    // other receiver before its own timer fires.
    let mut g = Group::with(4, |i| {
        let mut c = config(i);
        c.nak_delay_max = Duration::from_millis(20);
        c
    });
    for round in 0..10u32 {
        g.publish(0, &round.to_be_bytes()).unwrap();
        // Engines 1, 2 and 3 all lose the original.
        g.run(Duration::from_millis(100), |from, _, dg| {
            !(from == 0 && is_data(dg) && !is_repair(dg))
        });
    }
    for i in 1..4 {
        assert_eq!(g.delivered(i).len(), 10);
    }
    let suppressed: u64 = g.engines.iter().map(|e| e.stats().naks_suppressed).sum();
    let sent: u64 = g.engines.iter().map(|e| e.stats().naks_sent).sum();
    assert!(suppressed > 0, "no suppression ({sent} NAKs sent)");
    assert!(sent < 30, "{sent} NAKs for 10 losses at 3 receivers");
}

#[test]
fn confirmations_wait_for_another_member_and_come_within_milliseconds() {
    let mut g = Group::new(2);
    let token = ConfirmToken { conn: 7, req: 1 };
    let now = g.now;
    g.engines[0].publish(msg(b"c", Some(token)), now).unwrap();
    assert!(!g.events[0].iter().any(|e| matches!(e, Event::Confirmed(_))));
    g.run(Duration::from_millis(10), |_, _, _| true);
    assert!(g.events[0]
        .iter()
        .any(|e| matches!(e, Event::Confirmed(t) if *t == token)));
}

#[test]
fn flow_control_blocks_publishing_until_stability_frees_the_window() {
    let mut g = Group::with(2, |i| {
        let mut c = config(i);
        c.retransmit_buffer_bytes = 4096;
        c
    });
    let mut accepted = 0;
    while g.publish(0, &[0u8; 200]).is_ok() {
        accepted += 1;
    }
    assert!(accepted > 0 && accepted < 20, "{accepted}");
    assert!(!g.engines[0].can_publish());
    assert_eq!(g.publish(0, &[0u8; 200]), Err(PublishError::WouldBlock));
    assert!(g.engines[0].stats().flow_control_stalls >= 1);
    g.run(Duration::from_millis(50), |_, _, _| true);
    assert!(g.engines[0].can_publish());
    assert_eq!(g.delivered(1).len(), accepted);
}

#[test]
fn a_message_larger_than_a_datagram_is_fragmented_and_joined() {
    let mut g = Group::new(2);
    let big: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
    g.publish(0, &big).unwrap();
    g.run(Duration::from_millis(20), |_, _, _| true);
    assert!(g.engines[0].stats().fragments >= 4);
    assert_eq!(g.delivered(1), vec![Bytes::from(big)]);
}

#[test]
fn bad_datagrams_are_counted_and_dropped() {
    let mut g = Group::new(2);
    let now = g.now;
    let e = &mut g.engines[1];
    let other = Origin {
        node: NodeId(1),
        incarnation: Incarnation(1),
    };
    let frame = |cluster: &str, sender: Origin| Frame {
        header: Header {
            flags: Flags::default(),
            cluster: ClusterId::from_name(cluster),
            sender,
            view: ViewId(9),
        },
        body: Body::Leave,
    };
    let mut corrupt = frame("unit", other).encode().to_vec();
    corrupt[10] ^= 4;
    e.handle_datagram(&corrupt, now);
    e.handle_datagram(&frame("other", other).encode(), now);
    e.handle_datagram(b"short", now);
    let stale = Origin {
        node: NodeId(1),
        incarnation: Incarnation(0),
    };
    e.handle_datagram(&frame("unit", stale).encode(), now);
    let header = Header {
        flags: Flags::default(),
        cluster: ClusterId::from_name("unit"),
        sender: other,
        view: ViewId(9),
    };
    let reserved = ordo_wire::group::kind::ISIS_PROPOSAL;
    e.handle_datagram(&ordo_wire::group::encode_raw(reserved, &header, &[]), now);
    let mut old_version = frame("unit", other).encode().to_vec();
    old_version[2] = 0;
    // Recompute nothing: a changed version byte must still fail as a checksum error.
    e.handle_datagram(&old_version, now);
    let s = e.stats();
    assert_eq!(s.dropped_unknown_kind, 1);
    assert_eq!(s.dropped_checksum, 2);
    assert_eq!(s.dropped_foreign_cluster, 1);
    assert_eq!(s.dropped_malformed, 1);
    assert_eq!(s.dropped_stale_incarnation, 1);
    assert!(e.in_view());
}

#[test]
fn a_graceful_leave_installs_a_view_without_the_leaver() {
    let mut g = Group::new(3);
    let leaver = g.engines[1].origin();
    let now = g.now;
    g.engines[1].leave(now);
    assert!(!g.engines[1].can_publish());
    g.run(Duration::from_millis(300), |_, _, _| true);
    assert!(g.engines[1].has_left());
    assert!(!g.engines[1].in_view());
    for i in [0, 2] {
        let v = g.engines[i].view();
        assert_eq!(v.members.len(), 2);
        assert!(!v.members.contains(&leaver));
    }
}

#[test]
fn a_forged_install_with_a_huge_view_id_is_dropped_not_installed() {
    let now = Instant::now();
    let mut e = Engine::new(config(2), now);
    let me = e.origin();
    let forger = Origin {
        node: NodeId(7),
        incarnation: Incarnation(1),
    };
    let install = |view: u64| Frame {
        header: Header {
            flags: Flags::default(),
            cluster: ClusterId::from_name("unit"),
            sender: forger,
            view: ViewId(1),
        },
        body: Body::Install(ordo_wire::group::Install {
            view: ViewId(view),
            part: 0,
            parts: 1,
            primary: true,
            members: vec![forger, me],
            digest: vec![],
            state: vec![],
        }),
    };
    // While joining, an install listing us would be taken as is.
    e.handle_datagram(&install(u64::MAX).encode(), now);
    e.handle_datagram(&install(1 << 63).encode(), now);
    assert_eq!(e.stats().dropped_malformed, 2);
    // The engine goes on to form its own view with small ids, and lives.
    let mut t = now;
    for _ in 0..200 {
        t += Duration::from_millis(5);
        e.handle_timeout(t);
        while e.poll_transmit().is_some() {}
        while e.poll_event().is_some() {}
    }
    assert!(e.in_view());
    assert!(e.view().id.0 < 10, "{:?}", e.view());
}

#[test]
fn a_bogus_digest_neither_confirms_nor_frees_what_nobody_holds() {
    let mut g = Group::new(2);
    let a = g.engines[0].origin();
    let b = g.engines[1].origin();
    // B "claims" to hold 1000 of A's messages, though A sent none.
    let forged = Frame {
        header: Header {
            flags: Flags::default(),
            cluster: ClusterId::from_name("unit"),
            sender: b,
            view: g.engines[0].view().id,
        },
        body: Body::Heartbeat(ordo_wire::group::Digest {
            coordinator: g.engines[0].view().members[0],
            view_size: 2,
            primary: true,
            entries: vec![ordo_wire::group::DigestEntry {
                origin: a,
                contiguous: Seq(1000),
                highest: Seq(1000),
            }],
        }),
    };
    let now = g.now;
    g.engines[0].handle_datagram(&forged.encode(), now);
    let token = ConfirmToken { conn: 1, req: 1 };
    g.engines[0].publish(msg(b"m", Some(token)), now).unwrap();
    g.engines[0].handle_timeout(now);
    // B never receives A's data, so it really holds nothing.
    g.run(Duration::from_millis(300), |from, _, dg| {
        !(from == 0 && is_data(dg))
    });
    let confirmed = g.events[0]
        .iter()
        .any(|e| matches!(e, Event::Confirmed(t) if *t == token));
    assert!(!confirmed, "confirmed a message nobody else holds");
    assert!(g.engines[0].stats().retransmit_buffer_bytes > 0);
    // Once B really has it, it is confirmed.
    g.run(Duration::from_millis(500), |_, _, _| true);
    assert!(g.events[0]
        .iter()
        .any(|e| matches!(e, Event::Confirmed(t) if *t == token)));
}

#[test]
fn a_message_beyond_the_local_maximum_is_dropped_and_counted() {
    let mut g = Group::with(2, |i| {
        let mut c = config(i);
        if i == 2 {
            c.max_message = 3000;
        }
        c
    });
    assert_eq!(g.engines[1].stats().reassembly_limit, 64 * 1024 * 1024);
    let big = vec![5u8; 5000];
    g.publish(0, &big).unwrap();
    g.publish(0, b"small").unwrap();
    g.run(Duration::from_millis(50), |_, _, _| true);
    assert_eq!(g.delivered(1), vec![Bytes::from_static(b"small")]);
    assert_eq!(g.engines[1].stats().dropped_oversized, 1);
    assert_eq!(g.engines[1].stats().reassembly_bytes, 0);
    // Refused when published at a broker with that maximum.
    assert!(matches!(
        g.publish(1, &big),
        Err(PublishError::Unavailable(_))
    ));
}

#[test]
fn a_client_context_is_cut_to_members_and_to_what_the_wire_carries() {
    let mut g = Group::new(2);
    let b = g.engines[1].origin();
    let mut m = msg(b"c", None);
    m.ordering = Ordering::Causal;
    // Many entries naming no member, and an impossible one for B.
    m.context = CausalContext::from_entries((0..10_000u32).map(|i| {
        (
            Origin {
                node: NodeId(1000 + i),
                incarnation: Incarnation(1),
            },
            Seq(5),
        )
    }));
    m.context.observe(b, Seq(u64::MAX));
    let now = g.now;
    g.engines[0].publish(m, now).unwrap();
    let mut sent = Vec::new();
    g.run(Duration::from_millis(20), |from, _, dg| {
        if from == 0 && is_data(dg) {
            sent.push(dg.clone());
        }
        true
    });
    assert_eq!(g.engines[1].stats().dropped_malformed, 0);
    let Body::Data(d) = Frame::decode(&sent[0]).unwrap().body else {
        unreachable!()
    };
    let ctx = &d.msgs[0].context;
    assert!(ctx.len() <= 2, "{ctx:?}");
    assert_eq!(ctx.get(b), Seq(ordo_wire::group::COUNTER_LIMIT - 1));
}

#[test]
fn a_joiner_receives_a_topic_table_larger_than_a_datagram_in_parts() {
    let mut g = Group::new(2);
    for i in 0..300 {
        let name = format!("orders.region.{i:04}");
        let token = ConfirmToken { conn: 0, req: i };
        g.engines[0]
            .declare(&name, Ordering::TotalSeq, false, token)
            .unwrap();
        g.run(Duration::from_millis(2), |_, _, _| true);
    }
    g.run(Duration::from_millis(200), |_, _, _| true);
    assert_eq!(g.engines[1].agreed_topics().len(), 300);
    let now = g.now;
    g.engines.push(Engine::new(config(3), now));
    g.events.push(Vec::new());
    let mut too_big = 0;
    let mut lost_one = false;
    g.run(Duration::from_millis(1000), |_, to, dg| {
        if dg.len() > 1400 {
            too_big += 1;
        }
        // Lose one part on the way to the joiner: the retry fills it in.
        let part = matches!(
            Frame::decode(dg).map(|f| f.body),
            Ok(Body::Install(i)) if i.part == 1
        );
        if part && to == 2 && !lost_one {
            lost_one = true;
            return false;
        }
        true
    });
    assert!(lost_one);
    assert_eq!(too_big, 0, "datagrams beyond max_datagram were sent");
    assert_eq!(g.engines[2].view().members.len(), 3);
    assert_eq!(g.engines[2].agreed_topics(), g.engines[0].agreed_topics());
}
