//! Golden scenario tests for the ordering layers, data-driven in the style
//! of raft-rs: each file in `tests/testdata/order/` is a script of commands,
//! each followed by `----` and the output it must produce. The harness runs
//! engines on a virtual clock over a network it controls datagram by
//! datagram (hold, drop, release per link and per kind of content), so a
//! tricky interleaving is written down once and replayed exactly.
//!
//! `ORDO_GOLDEN_REWRITE=1 cargo test -p ordo-broker --test golden_order`
//! rewrites the expected outputs (review the diff before committing it).
//!
//! Commands:
//! - `cluster nodes=N`: starts N engines and runs until they share a view.
//! - `declare node=I topic=T ordering=O [safe]`
//! - `publish node=I topic=T payload=P [context=J]`: with `context=J`, the
//!   causal context node J's last delivery on T carried (a client that read
//!   it at J and publishes at I).
//! - `hold|drop from=I to=J what=data|proposal|final|order|any [count=N]`:
//!   the next N (default all) matching datagrams on that link are held or dropped.
//! - `release from=I to=J`: held datagrams go out now, in order; the rule ends.
//! - `run ms=N`: time passes; datagrams arrive, timers fire.
//! - `trace on|off`: print the ordering control messages as they are sent.
//! - `deliveries`: what each node delivered since the last `deliveries`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ordo_broker::engine::{ConfirmToken, Delivered, Engine, EngineConfig, Event, Publish};
use ordo_wire::group::{Body, Control, Flags, Frame};
use ordo_wire::{CausalContext, Incarnation, NodeId, Ordering};

const LATENCY: Duration = Duration::from_micros(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Hold,
    Drop,
}

#[derive(Debug)]
struct Rule {
    from: usize,
    to: usize,
    what: String,
    action: Action,
    left: Option<usize>,
}

struct Harness {
    nodes: Vec<Engine>,
    now: Instant,
    /// (arrival, sequence for ties, to, datagram)
    flight: Vec<(Instant, u64, usize, Bytes)>,
    next_id: u64,
    rules: Vec<Rule>,
    held: Vec<(usize, usize, Bytes)>,
    delivered: Vec<Vec<Arc<Delivered>>>,
    printed: Vec<usize>,
    trace: bool,
    log: String,
}

/// What a datagram carries, for the hold/drop filters and the trace.
fn classify(d: &Bytes) -> (String, Vec<String>) {
    let Ok(f) = Frame::decode(d) else {
        return ("other".into(), vec![]);
    };
    let Body::Data(df) = f.body else {
        return ("other".into(), vec![]);
    };
    let mut kind = "data".to_string();
    let mut lines = Vec::new();
    let retransmit = f.header.flags.contains(Flags::RETRANSMIT);
    let mut any_data = false;
    for m in &df.msgs {
        if !m.topic.is_empty() || m.ordering == Ordering::TotalSeq {
            any_data = true;
            continue;
        }
        let Ok(c) = Control::decode(&m.payload) else {
            continue;
        };
        let who = format!("n{}", df.origin.node);
        match &c {
            Control::IsisProposal(v) => {
                kind = "proposal".into();
                for (o, s, p) in v {
                    lines.push(format!(
                        "{who} proposes {}:{} = {}.{}",
                        o.node, s, p.counter, p.node
                    ));
                }
            }
            Control::IsisFinal(v) => {
                kind = "final".into();
                for (s, p) in v {
                    lines.push(format!(
                        "{who} finals {}:{} = {}.{}",
                        df.origin.node, s, p.counter, p.node
                    ));
                }
            }
            Control::SequencerOrder(v) => {
                kind = "order".into();
                let list: Vec<String> = v.iter().map(|(o, s)| format!("{}:{s}", o.node)).collect();
                lines.push(format!("{who} orders {}", list.join(" ")));
            }
            Control::Declare { .. } => {}
        }
    }
    if any_data {
        kind = "data".into();
    }
    if retransmit {
        lines.clear();
    }
    (kind, lines)
}

impl Harness {
    fn new() -> Self {
        Harness {
            nodes: Vec::new(),
            now: Instant::now(),
            flight: Vec::new(),
            next_id: 0,
            rules: Vec::new(),
            held: Vec::new(),
            delivered: Vec::new(),
            printed: Vec::new(),
            trace: false,
            log: String::new(),
        }
    }

    fn pump(&mut self, i: usize) {
        while let Some(d) = self.nodes[i].poll_transmit() {
            let (kind, lines) = classify(&d);
            if self.trace {
                for l in lines {
                    let _ = writeln!(self.log, "{l}");
                }
            }
            for to in 0..self.nodes.len() {
                if to == i {
                    continue;
                }
                let rule = self.rules.iter_mut().find(|r| {
                    r.from == i
                        && r.to == to
                        && (r.what == "any" || r.what == kind)
                        && r.left != Some(0)
                });
                if let Some(r) = rule {
                    if let Some(n) = &mut r.left {
                        *n -= 1;
                    }
                    if r.action == Action::Hold {
                        self.held.push((i, to, d.clone()));
                    }
                    continue;
                }
                self.next_id += 1;
                self.flight
                    .push((self.now + LATENCY, self.next_id, to, d.clone()));
            }
        }
        while let Some(ev) = self.nodes[i].poll_event() {
            if let Event::Deliver(d) = ev {
                self.delivered[i].push(d);
            }
        }
    }

    fn run(&mut self, d: Duration) {
        let until = self.now + d;
        loop {
            let next_flight = self.flight.iter().map(|f| (f.0, f.1)).min();
            let next_timer = self.nodes.iter().filter_map(Engine::poll_timeout).min();
            let t = match (next_flight.map(|f| f.0), next_timer) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(t) => t,
                    None => break,
                },
            };
            if t > until {
                break;
            }
            self.now = self.now.max(t);
            // Arrivals in send order, then timers.
            self.flight.sort_by_key(|f| (f.0, f.1));
            while self.flight.first().is_some_and(|f| f.0 <= self.now) {
                let (_, _, to, d) = self.flight.remove(0);
                self.nodes[to].handle_datagram_bytes(d, self.now);
                self.pump(to);
            }
            for i in 0..self.nodes.len() {
                if self.nodes[i].poll_timeout().is_some_and(|t| t <= self.now) {
                    self.nodes[i].handle_timeout(self.now);
                    self.pump(i);
                }
            }
        }
        self.now = until;
    }

    fn exec(&mut self, line: &str) -> String {
        self.log.clear();
        let mut words = line.split_whitespace();
        let cmd = words.next().unwrap_or("");
        let args: BTreeMap<&str, &str> = words
            .map(|w| w.split_once('=').unwrap_or((w, "")))
            .collect();
        let num = |k: &str| -> usize { args.get(k).and_then(|v| v.parse().ok()).unwrap_or(0) };
        match cmd {
            "cluster" => {
                let n = num("nodes");
                for i in 0..n {
                    let mut c = EngineConfig::new(NodeId(i as u32 + 1), Incarnation(1), "golden");
                    c.seed = 7 + i as u64;
                    // The first forms the group at once; the others find it.
                    c.discovery_timeout = if i == 0 {
                        Duration::ZERO
                    } else {
                        Duration::from_millis(300)
                    };
                    self.nodes.push(Engine::new(c, self.now));
                    self.delivered.push(Vec::new());
                    self.printed.push(0);
                    self.pump(i);
                }
                self.run(Duration::from_secs(3));
                for (i, e) in self.nodes.iter().enumerate() {
                    let members: Vec<String> = e
                        .view()
                        .members
                        .iter()
                        .map(|m| m.node.to_string())
                        .collect();
                    let _ = writeln!(
                        self.log,
                        "n{}: view {} members [{}] sequencer {}",
                        i + 1,
                        e.view().id,
                        members.join(" "),
                        e.view().sequencer.map_or("-".into(), |s| s.to_string())
                    );
                }
            }
            "declare" => {
                let i = num("node") - 1;
                let ordering: Ordering = args["ordering"].parse().unwrap();
                let token = ConfirmToken { conn: 0, req: 0 };
                self.nodes[i]
                    .declare(args["topic"], ordering, args.contains_key("safe"), token)
                    .unwrap();
                self.pump(i);
                self.run(Duration::from_millis(50));
                let topics: Vec<String> = self.nodes[i]
                    .agreed_topics()
                    .iter()
                    .map(|(n, o, s)| format!("{n} {o}{}", if *s { " safe" } else { "" }))
                    .collect();
                let _ = writeln!(self.log, "agreed: {}", topics.join(", "));
            }
            "publish" => {
                let i = num("node") - 1;
                let topic = args["topic"];
                let agreed = self.nodes[i].agreed_topics();
                let (_, ordering, safe) = agreed
                    .iter()
                    .find(|(n, _, _)| n == topic)
                    .cloned()
                    .expect("declare the topic first");
                let context = match args.get("context") {
                    Some(j) => {
                        let j: usize = j.parse::<usize>().unwrap() - 1;
                        self.delivered[j]
                            .iter()
                            .rev()
                            .find(|d| &*d.topic == topic)
                            .map(|d| d.context.clone())
                            .unwrap_or_default()
                    }
                    None => CausalContext::new(),
                };
                let msg = Publish {
                    topic: topic.into(),
                    ordering,
                    safe,
                    publisher: 1,
                    context,
                    payload: Bytes::copy_from_slice(args["payload"].as_bytes()),
                    confirm: None,
                    published_at_us: 0,
                };
                self.nodes[i].publish(msg, self.now).unwrap();
                self.pump(i);
            }
            "hold" | "drop" => {
                self.rules.push(Rule {
                    from: num("from") - 1,
                    to: num("to") - 1,
                    what: args.get("what").unwrap_or(&"any").to_string(),
                    action: if cmd == "hold" {
                        Action::Hold
                    } else {
                        Action::Drop
                    },
                    left: args.get("count").and_then(|c| c.parse().ok()),
                });
            }
            "release" => {
                let (from, to) = (num("from") - 1, num("to") - 1);
                self.rules.retain(|r| !(r.from == from && r.to == to));
                let mut keep = Vec::new();
                for (f, t, d) in std::mem::take(&mut self.held) {
                    if f == from && t == to {
                        self.next_id += 1;
                        self.flight.push((self.now + LATENCY, self.next_id, t, d));
                    } else {
                        keep.push((f, t, d));
                    }
                }
                self.held = keep;
            }
            "run" => self.run(Duration::from_millis(num("ms") as u64)),
            "trace" => self.trace = args.contains_key("on"),
            "deliveries" => {
                for i in 0..self.nodes.len() {
                    let new = &self.delivered[i][self.printed[i]..];
                    let items: Vec<String> = new.iter().map(|d| render(d)).collect();
                    let _ = writeln!(
                        self.log,
                        "n{}: {}",
                        i + 1,
                        if items.is_empty() {
                            "-".to_string()
                        } else {
                            items.join(" | ")
                        }
                    );
                    self.printed[i] = self.delivered[i].len();
                }
            }
            other => panic!("unknown command {other:?}"),
        }
        std::mem::take(&mut self.log)
    }
}

fn render(d: &Delivered) -> String {
    let mut s = format!(
        "{} {} from {}:{}",
        d.topic,
        String::from_utf8_lossy(&d.payload),
        d.origin.node,
        d.seq
    );
    if let Some(g) = d.gseq {
        let _ = write!(s, " gseq={}", g.0);
    }
    if !d.context.is_empty() {
        let ctx: Vec<String> = d
            .context
            .entries()
            .iter()
            .map(|(o, q)| format!("{}:{q}", o.node))
            .collect();
        let _ = write!(s, " ctx=[{}]", ctx.join(" "));
    }
    s
}

/// Runs one file; returns the text it should contain.
fn run_file(text: &str) -> String {
    let mut h = Harness::new();
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim().is_empty() || line.starts_with('#') {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        out.push_str(line);
        out.push('\n');
        // Skip the old expected block.
        if lines.peek() == Some(&"----") {
            lines.next();
            while lines.peek().is_some_and(|l| !l.trim().is_empty()) {
                lines.next();
            }
        }
        let got = h.exec(line);
        out.push_str("----\n");
        out.push_str(&got);
    }
    out
}

#[test]
fn golden_ordering_scenarios() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata/order");
    let rewrite = std::env::var("ORDO_GOLDEN_REWRITE").is_ok();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no golden files in {}", dir.display());
    let mut failed = VecDeque::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let got = run_file(&text);
        if got != text {
            if rewrite {
                std::fs::write(&f, &got).unwrap();
            } else {
                eprintln!("--- {} expected\n{text}\n--- got\n{got}", f.display());
                failed.push_back(f.display().to_string());
            }
        }
    }
    assert!(
        failed.is_empty(),
        "golden files differ: {failed:?} (ORDO_GOLDEN_REWRITE=1 rewrites them; review the diff)"
    );
}
