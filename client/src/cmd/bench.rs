//! `ordo bench`: a load generator modelled on `nats bench`. Publishers and
//! subscribers spread round-robin over `--servers`; every subscriber checks
//! it got every message of every publisher exactly once and in
//! per-publisher order; latency comes from send times stamped in payloads.
//!
//! Every client runs on its own OS thread with its own tokio runtime (as the
//! peer harness, `peers/broker-bench`, does for NATS), all in this process,
//! so publishers can see the subscribers' progress for the flow-control
//! window and so one clock serves both ends: send and receive times are
//! `SystemTime` in µs, read on the same host by the same process.
//!
//! Rates are defined as in broker-bench: publish rate = measured messages
//! over the publishers' span (start to last publish acknowledged by a
//! flush); per-subscriber delivered rate = measured messages received over
//! the span from the publishers' start to that subscriber's last measured
//! arrival.

mod check;
mod payload;
mod stats;

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering as Mem};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use clap::Args;
use futures_util::stream::StreamExt;
use hdrhistogram::Histogram;
use ordo_client::{Client, ClientOptions, Error, Event, Ordering, TlsOptions};

use self::check::{Arrival, Counts, OrderCheck};
use self::payload::{Parsed, Stamp, FLAG_PROBE, FLAG_WARMUP, HEADER_LEN};
use self::stats::Percentiles;
use super::{Connection, OrderedPublisher};

/// Messages published back to back between flow-control checks (as broker-bench's `--batch`).
const BATCH: u64 = 64;
/// How long connecting, subscribing and the readiness probes may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Interval between readiness probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(20);
/// After the publishers finished, a subscriber that got nothing new for this
/// long stops waiting: what it lacks is lost.
const IDLE_AFTER_DONE: Duration = Duration::from_secs(3);
/// Messages when neither `--msgs` nor `--duration` is given (as nats bench).
const DEFAULT_MSGS: u64 = 100_000;

/// `ordo bench` arguments.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Brokers (host:port, comma-separated); publishers and subscribers are
    /// each assigned round-robin starting at the first [default: --server].
    #[arg(long, value_delimiter = ',')]
    servers: Vec<String>,
    /// Number of publishers.
    #[arg(long = "pub", default_value_t = 1)]
    pubs: u32,
    /// Number of subscribers.
    #[arg(long = "sub", default_value_t = 0)]
    subs: u32,
    /// Payload size in bytes (at least 32: the bench header).
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Messages to publish in total, split over the publishers [default: 100000 without --duration].
    #[arg(long, conflicts_with = "duration", value_parser = clap::value_parser!(u64).range(1..))]
    msgs: Option<u64>,
    /// Publish for this long (after the warm-up) instead of a message count (e.g. 10s, 500ms, 2m).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Total publish rate in msg/s over all publishers, for latency; 0 = as fast as flow control allows.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Ordering the topic is declared with.
    #[arg(long, default_value = "fifo")]
    ordering: Ordering,
    /// The topic to publish on and subscribe to.
    #[arg(long, default_value = "ordo.bench")]
    topic: String,
    /// Publish with confirmation (at most 1024 unconfirmed per publisher).
    #[arg(long)]
    confirm: bool,
    /// Unthrottled runs: most messages a publisher keeps ahead of its slowest
    /// subscriber (the peer harness's tput window); 0 = only the broker's flow control.
    #[arg(long, default_value_t = 10_000)]
    window: u64,
    /// Start-up period whose messages are checked but not measured (e.g. 1s).
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    warmup: Duration,
    /// Print one JSON object instead of the human report.
    #[arg(long)]
    json: bool,
    /// Also write every measured delivery to this file, one `subscriber
    /// send_us latency_us` line each (send time in µs since the Unix epoch),
    /// to see when the tail happens; at most 10 million per subscriber.
    #[arg(long, value_name = "FILE")]
    latency_log: Option<std::path::PathBuf>,
}

/// Parses `10s`, `500ms`, `2m`, `1.5` (seconds).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (try 10s, 500ms, 2m)"))?;
    if !v.is_finite() || v < 0.0 || v * scale > 86_400.0 {
        return Err(format!("`{s}` is not a duration between 0 and 24 h"));
    }
    Ok(Duration::from_secs_f64(v * scale))
}

/// The shared clock: µs since the Unix epoch. Every thread of this process
/// reads the same system clock, so send and receive times compare directly.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// What a run is asked to do, resolved from the flags.
#[derive(Debug, Clone)]
struct Plan {
    servers: Vec<String>,
    token: Option<String>,
    /// TLS settings of every connection (the global `--tls-*` flags).
    tls: Option<TlsOptions>,
    pubs: usize,
    subs: usize,
    size: usize,
    /// Per publisher: messages to send (None with a duration).
    counts: Option<Vec<u64>>,
    duration: Option<Duration>,
    /// Per-publisher pacing interval in µs (rate mode).
    interval_us: Option<f64>,
    window: u64,
    warmup_us: u64,
    topic: String,
    confirm: bool,
    run: u32,
    /// With `--latency-log`: samples each subscriber makes room for up front.
    latency_log: Option<usize>,
}

impl Plan {
    fn server_of_pub(&self, p: usize) -> &str {
        &self.servers[p % self.servers.len()]
    }
    fn server_of_sub(&self, s: usize) -> &str {
        &self.servers[s % self.servers.len()]
    }
}

/// State the threads of one run share.
#[derive(Debug)]
struct Shared {
    pubs: usize,
    /// `[sub * pubs + pub]`: the subscriber saw a probe of the publisher.
    ready: Vec<AtomicBool>,
    /// `[sub * pubs + pub]`: one past the highest sequence number seen.
    high: Vec<AtomicU64>,
    /// Per subscriber: distinct messages received (probes excluded).
    distinct: Vec<AtomicU64>,
    /// Per publisher: messages handed to the client so far.
    sent: Vec<AtomicU64>,
    subscribed: AtomicUsize,
    pubs_ready: AtomicUsize,
    pubs_done: AtomicUsize,
    /// Set with the start time once every publisher is ready.
    go: AtomicBool,
    go_us: AtomicU64,
    /// Set once every publisher finished: then `expected` is final.
    finished: AtomicBool,
    expected: AtomicU64,
    /// Something failed: everybody stops.
    abort: AtomicBool,
}

impl Shared {
    fn new(pubs: usize, subs: usize) -> Shared {
        let n = pubs * subs;
        Shared {
            pubs,
            ready: (0..n).map(|_| AtomicBool::new(false)).collect(),
            high: (0..n).map(|_| AtomicU64::new(0)).collect(),
            distinct: (0..subs).map(|_| AtomicU64::new(0)).collect(),
            sent: (0..pubs).map(|_| AtomicU64::new(0)).collect(),
            subscribed: AtomicUsize::new(0),
            pubs_ready: AtomicUsize::new(0),
            pubs_done: AtomicUsize::new(0),
            go: AtomicBool::new(false),
            go_us: AtomicU64::new(0),
            finished: AtomicBool::new(false),
            expected: AtomicU64::new(0),
            abort: AtomicBool::new(false),
        }
    }

    /// The slowest subscriber's progress on publisher `p` (`u64::MAX` without subscribers).
    fn slowest(&self, p: usize) -> u64 {
        self.high
            .iter()
            .skip(p)
            .step_by(self.pubs.max(1))
            .map(|h| h.load(Mem::Relaxed))
            .min()
            .unwrap_or(u64::MAX)
    }

    fn all_ready_for(&self, p: usize) -> bool {
        self.ready
            .iter()
            .skip(p)
            .step_by(self.pubs.max(1))
            .all(|r| r.load(Mem::Acquire))
    }
}

/// What a publisher thread reports.
#[derive(Debug, Default)]
struct PubOut {
    sent: u64,
    warmup: u64,
    end_us: u64,
    error: Option<String>,
}

/// What a subscriber thread reports.
#[derive(Debug)]
struct SubOut {
    checks: Vec<OrderCheck>,
    measured: u64,
    last_us: u64,
    hist: Histogram<u64>,
    discontinuities: u64,
    foreign: u64,
    error: Option<String>,
    /// `(send_us, latency_us)` per measured delivery, with `--latency-log`.
    samples: Vec<(u64, u64)>,
}

/// Most samples a subscriber keeps for `--latency-log` (160 MB).
const MAX_LOGGED_SAMPLES: usize = 10_000_000;

/// Per-subscriber part of the report.
#[derive(Debug, serde::Serialize)]
struct SubReport {
    server: String,
    received: u64,
    rate: f64,
    lost: u64,
    reordered: u64,
    duplicates: u64,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
}

/// Per-publisher part of the report.
#[derive(Debug, serde::Serialize)]
struct PubReport {
    server: String,
    sent: u64,
    rate: f64,
}

/// The whole result, printed as JSON with `--json`.
#[derive(Debug, serde::Serialize)]
struct Report {
    servers: Vec<String>,
    topic: String,
    ordering: String,
    pubs: usize,
    subs: usize,
    size: usize,
    /// Messages published in total, warm-up included.
    msgs: u64,
    /// Messages published after the warm-up.
    measured_msgs: u64,
    rate_target: u64,
    window: u64,
    warmup_s: f64,
    confirm: bool,
    /// Seconds from the publishers' (post-warm-up) start to the last publish flushed.
    pub_secs: f64,
    pub_rate: f64,
    sub_rate_mean: f64,
    sub_rate_min: f64,
    sub_rate_max: f64,
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
    latency_samples: u64,
    lost: u64,
    reordered: u64,
    duplicates: u64,
    invalid: u64,
    foreign: u64,
    discontinuities: u64,
    ok: bool,
    errors: Vec<String>,
    /// This bench process's CPU time (user + system, µs) over the whole run.
    bench_cpu_us: u64,
    /// This bench process's context switches over the whole run.
    bench_ctx_switches: u64,
    rate_definition: &'static str,
    clock: &'static str,
    per_sub: Vec<SubReport>,
    per_pub: Vec<PubReport>,
}

/// Runs the benchmark and prints the report; fails (exit 1) when a
/// subscriber lost, reordered or duplicated a message, or a client failed.
pub async fn run(conn: &Connection, args: BenchArgs) -> anyhow::Result<()> {
    let plan = plan(conn, &args)?;
    // Declare first, so the topic has its ordering before anyone subscribes.
    let client = connect(&plan.servers[0], &plan, "declare").await?;
    client
        .declare(&plan.topic, args.ordering, false)
        .await
        .with_context(|| format!("cannot declare topic {} as {}", plan.topic, args.ordering))?;
    client.close().await?;

    if !args.json {
        super::emit(&format!(
            "Starting Ordo bench [topic={}, ordering={}, msgs={}, size={}, pubs={}, subs={}, rate={}, servers={}]\n",
            plan.topic,
            args.ordering,
            match (&plan.counts, plan.duration) {
                (Some(c), _) => c.iter().sum::<u64>().to_string(),
                (None, Some(d)) => format!("{d:?}"),
                (None, None) => "?".into(),
            },
            plan.size,
            plan.pubs,
            plan.subs,
            if args.rate == 0 { "max".to_string() } else { args.rate.to_string() },
            plan.servers.join(",")
        ))?;
    }
    // The clients get runtimes of their own on their own threads; this
    // (current-thread) runtime only waits for the outcome.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let plan2 = plan.clone();
    thread::Builder::new()
        .name("bench".into())
        .spawn(move || {
            let _ = tx.send(execute(&plan2));
        })
        .context("cannot start the bench thread")?;
    let (pub_outs, sub_outs, go_us) = rx.await.context("the bench thread died")??;
    let report = report(&plan, &args, &pub_outs, &sub_outs, go_us);
    if let Some(path) = &args.latency_log {
        write_latency_log(path, &sub_outs)
            .with_context(|| format!("cannot write the latency log {}", path.display()))?;
    }
    // A closed stdout (`| head`) is the reader's choice; the exit status
    // still says whether every message arrived.
    if args.json {
        super::emit(&format!("{}\n", serde_json::to_string(&report)?))?;
    } else {
        super::emit(&human(&report))?;
    }
    if !report.errors.is_empty() {
        bail!("bench failed: {}", report.errors.join("; "));
    }
    if !report.ok {
        bail!(
            "correctness check failed: lost {}, reordered {}, duplicates {}, invalid {}",
            report.lost,
            report.reordered,
            report.duplicates,
            report.invalid
        );
    }
    Ok(())
}

fn plan(conn: &Connection, args: &BenchArgs) -> anyhow::Result<Plan> {
    let servers: Vec<String> = if args.servers.is_empty() {
        vec![conn.server.clone()]
    } else {
        args.servers
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    };
    if servers.is_empty() {
        bail!("--servers names no broker");
    }
    if args.pubs == 0 {
        bail!("--pub must be at least 1");
    }
    if args.size < HEADER_LEN {
        bail!("--size must be at least {HEADER_LEN} bytes (the bench header)");
    }
    let pubs = args.pubs as usize;
    let counts = match (args.msgs, args.duration) {
        (_, Some(_)) => None,
        (m, None) => {
            let total = m.unwrap_or(DEFAULT_MSGS);
            if total < pubs as u64 {
                bail!("--msgs {total} is fewer than --pub {pubs}");
            }
            let each = total / pubs as u64;
            let extra = total % pubs as u64;
            Some(
                (0..pubs as u64)
                    .map(|p| each + u64::from(p < extra))
                    .collect(),
            )
        }
    };
    let interval_us = (args.rate > 0).then(|| pubs as f64 * 1e6 / args.rate as f64);
    // Distinguishes this run's messages from anybody else's on the topic.
    let run = (now_us() as u32) ^ std::process::id().rotate_left(16);
    Ok(Plan {
        servers,
        token: conn.token.clone(),
        tls: conn.tls.clone(),
        pubs,
        subs: args.subs as usize,
        size: args.size,
        counts,
        duration: args.duration,
        interval_us,
        window: args.window,
        warmup_us: args.warmup.as_micros() as u64,
        topic: args.topic.clone(),
        confirm: args.confirm,
        run,
        latency_log: args.latency_log.as_ref().map(|_| {
            // Room for the whole run up front: growing the buffer mid-run
            // copies it and faults fresh pages in, a stall of several ms
            // (on this VM) that lands in the very tail being measured.
            let expected = match (args.msgs, args.duration) {
                (Some(n), _) => n,
                (None, Some(d)) if args.rate > 0 => {
                    ((d + args.warmup).as_secs_f64() * args.rate as f64 * 1.05) as u64
                }
                _ => MAX_LOGGED_SAMPLES as u64 / 10,
            };
            expected.min(MAX_LOGGED_SAMPLES as u64) as usize
        }),
    })
}

async fn connect(server: &str, plan: &Plan, role: &str) -> Result<Client, Error> {
    let options = ClientOptions {
        token: plan.token.clone(),
        tls: plan.tls.clone(),
        name: format!("ordo-bench-{}-{role}", std::process::id()),
        ..ClientOptions::default()
    };
    Client::connect(server, options).await
}

type Outcome = (Vec<PubOut>, Vec<SubOut>, u64);

/// Waits until `count` reaches `n`; on abort or after [`SETUP_TIMEOUT`],
/// sets the abort flag so every thread gives up.
fn wait_ready(shared: &Shared, count: &AtomicUsize, n: usize, poll: Duration) {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    while count.load(Mem::Acquire) < n {
        if shared.abort.load(Mem::Acquire) || Instant::now() > deadline {
            shared.abort.store(true, Mem::Release);
            return;
        }
        thread::sleep(poll);
    }
}

/// Runs subscribers, then publishers, each on its own thread; waits for all.
fn execute(plan: &Plan) -> anyhow::Result<Outcome> {
    let shared = Arc::new(Shared::new(plan.pubs, plan.subs));
    let mut sub_threads = Vec::with_capacity(plan.subs);
    for s in 0..plan.subs {
        let (plan, shared) = (plan.clone(), shared.clone());
        sub_threads.push(
            thread::Builder::new()
                .name(format!("sub{s}"))
                .spawn(move || subscriber(&plan, &shared, s))
                .context("cannot start a subscriber thread")?,
        );
    }
    wait_ready(
        &shared,
        &shared.subscribed,
        plan.subs,
        Duration::from_millis(5),
    );
    let mut pub_threads = Vec::with_capacity(plan.pubs);
    if !shared.abort.load(Mem::Acquire) {
        for p in 0..plan.pubs {
            let (plan, shared) = (plan.clone(), shared.clone());
            pub_threads.push(
                thread::Builder::new()
                    .name(format!("pub{p}"))
                    .spawn(move || publisher(&plan, &shared, p))
                    .context("cannot start a publisher thread")?,
            );
        }
        wait_ready(
            &shared,
            &shared.pubs_ready,
            plan.pubs,
            Duration::from_millis(1),
        );
    }
    shared.go_us.store(now_us(), Mem::Release);
    shared.go.store(true, Mem::Release);
    progress(plan, &shared);

    let mut pub_outs = Vec::with_capacity(plan.pubs);
    for (p, t) in pub_threads.into_iter().enumerate() {
        pub_outs.push(t.join().unwrap_or_else(|_| PubOut {
            error: Some(format!("publisher {p} panicked")),
            ..PubOut::default()
        }));
    }
    let expected = pub_outs.iter().map(|o| o.sent).sum();
    shared.expected.store(expected, Mem::Release);
    shared.finished.store(true, Mem::Release);
    let mut sub_outs = Vec::with_capacity(plan.subs);
    for (s, t) in sub_threads.into_iter().enumerate() {
        sub_outs.push(t.join().unwrap_or_else(|_| SubOut {
            checks: Vec::new(),
            measured: 0,
            last_us: 0,
            hist: stats::new_histogram(),
            discontinuities: 0,
            foreign: 0,
            error: Some(format!("subscriber {s} panicked")),
            samples: Vec::new(),
        }));
    }
    Ok((pub_outs, sub_outs, shared.go_us.load(Mem::Acquire)))
}

/// Shows a progress bar on a terminal until the publishers are done.
fn progress(plan: &Plan, shared: &Shared) {
    let tty = std::io::stderr().is_terminal();
    let bar = match (tty, &plan.counts, plan.duration) {
        (true, Some(c), _) => Some(indicatif::ProgressBar::new(c.iter().sum())),
        (true, None, Some(d)) => Some(indicatif::ProgressBar::new(d.as_millis() as u64)),
        _ => None,
    };
    if let Some(b) = &bar {
        let template = if plan.counts.is_some() {
            "{bar:40} {pos}/{len} msgs {per_sec} {elapsed}"
        } else {
            "{bar:40} {elapsed}/{duration} {msg}"
        };
        if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
            b.set_style(style);
        }
    }
    let start = Instant::now();
    while shared.pubs_done.load(Mem::Acquire) < plan.pubs && !shared.abort.load(Mem::Acquire) {
        thread::sleep(Duration::from_millis(100));
        if let Some(b) = &bar {
            let sent: u64 = shared.sent.iter().map(|s| s.load(Mem::Relaxed)).sum();
            if plan.counts.is_some() {
                b.set_position(sent);
            } else {
                b.set_position(start.elapsed().as_millis() as u64);
                b.set_message(format!("{sent} msgs"));
            }
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
}

/// A current-thread runtime for one client.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

// ---------------------------------------------------------------- subscriber

fn subscriber(plan: &Plan, shared: &Shared, s: usize) -> SubOut {
    let mut out = SubOut {
        checks: (0..plan.pubs).map(|_| OrderCheck::new()).collect(),
        measured: 0,
        last_us: 0,
        hist: stats::new_histogram(),
        discontinuities: 0,
        foreign: 0,
        error: None,
        samples: Vec::new(),
    };
    if let Some(n) = plan.latency_log {
        // Touched now, at setup, so no page is first faulted in mid-run.
        out.samples.resize(n, (0, 0));
        out.samples.clear();
    }
    let res = match runtime() {
        Ok(rt) => rt.block_on(subscribe_loop(plan, shared, s, &mut out)),
        Err(e) => Err(anyhow!("cannot start a runtime: {e}")),
    };
    if let Err(e) = res {
        shared.abort.store(true, Mem::Release);
        out.error = Some(format!("subscriber {s} ({}): {e:#}", plan.server_of_sub(s)));
    }
    out
}

async fn subscribe_loop(
    plan: &Plan,
    shared: &Shared,
    s: usize,
    out: &mut SubOut,
) -> anyhow::Result<()> {
    let server = plan.server_of_sub(s);
    let client = connect(server, plan, &format!("sub{s}")).await?;
    let mut sub = client.subscribe(&plan.topic).await?;
    shared.subscribed.fetch_add(1, Mem::AcqRel);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut distinct = 0u64;
    let mut last_change = Instant::now();
    let mut last_seen = 0u64;
    let hard_deadline = Instant::now()
        + SETUP_TIMEOUT * 2
        + plan.duration.unwrap_or(Duration::ZERO) * 2
        + Duration::from_secs(300);
    loop {
        tokio::select! {
            biased;
            _ = tick.tick() => {
                if shared.abort.load(Mem::Acquire) {
                    break;
                }
                if distinct != last_seen {
                    last_seen = distinct;
                    last_change = Instant::now();
                }
                if shared.finished.load(Mem::Acquire) {
                    if distinct >= shared.expected.load(Mem::Acquire) {
                        break;
                    }
                    if last_change.elapsed() > IDLE_AFTER_DONE {
                        break;
                    }
                }
                if Instant::now() > hard_deadline {
                    bail!("still receiving at the hard deadline");
                }
            }
            ev = sub.next() => {
                let mut ev = match ev {
                    Some(Ok(ev)) => ev,
                    Some(Err(e)) => return Err(e.into()),
                    None => bail!("the subscription ended"),
                };
                // Everything already queued in one go: a select (and a
                // wake-up) per message would cost more than the message.
                let before = distinct;
                for _ in 0..DRAIN_BATCH {
                    match ev {
                        Event::Message(m) => {
                            if on_payload(plan, shared, s, out, &m.payload) {
                                distinct += 1;
                            }
                        }
                        Event::Discontinuity(_) => out.discontinuities += 1,
                    }
                    match sub.try_next() {
                        Some(next) => ev = next,
                        None => break,
                    }
                }
                if distinct != before {
                    shared.distinct[s].store(distinct, Mem::Relaxed);
                }
            }
        }
    }
    drop(sub);
    let _ = client.close().await;
    Ok(())
}

/// Most events a subscriber handles per wake-up before it looks at its timer.
const DRAIN_BATCH: usize = 1024;

/// Handles one payload; true when it was a new (not duplicate) message.
fn on_payload(plan: &Plan, shared: &Shared, s: usize, out: &mut SubOut, payload: &Bytes) -> bool {
    let stamp = match payload::parse(payload, plan.run) {
        Parsed::Ours(st) => st,
        Parsed::Foreign => {
            out.foreign += 1;
            return false;
        }
    };
    let p = stamp.publisher as usize;
    let Some(check) = out.checks.get_mut(p) else {
        out.foreign += 1;
        return false;
    };
    let idx = s * plan.pubs + p;
    if stamp.flags & FLAG_PROBE != 0 {
        if let Some(r) = shared.ready.get(idx) {
            r.store(true, Mem::Release);
        }
        return false;
    }
    let arrival = check.observe(stamp.seq);
    if let Some(h) = shared.high.get(idx) {
        h.store(check.high(), Mem::Relaxed);
    }
    if matches!(arrival, Arrival::Duplicate | Arrival::Invalid) {
        return false;
    }
    if stamp.flags & FLAG_WARMUP == 0 {
        let now = now_us();
        out.measured += 1;
        out.last_us = now;
        let latency = now.saturating_sub(stamp.sent_us);
        stats::record(&mut out.hist, latency);
        if plan.latency_log.is_some() && out.samples.len() < MAX_LOGGED_SAMPLES {
            out.samples.push((stamp.sent_us, latency));
        }
    }
    true
}

// ---------------------------------------------------------------- publisher

fn publisher(plan: &Plan, shared: &Shared, p: usize) -> PubOut {
    let mut out = PubOut::default();
    // Rate mode too runs the connection on this thread (as broker-bench's
    // publisher): each message is written to the socket before the thread
    // sleeps (see `paced`), so no hand-off to another thread sits between
    // the send stamp and the socket.
    let res = match runtime() {
        Ok(rt) => publish_all(&rt, plan, shared, p, &mut out),
        Err(e) => Err(anyhow!("cannot start a runtime: {e}")),
    };
    if let Err(e) = res {
        shared.abort.store(true, Mem::Release);
        out.error = Some(format!("publisher {p} ({}): {e:#}", plan.server_of_pub(p)));
    }
    shared.pubs_done.fetch_add(1, Mem::AcqRel);
    out
}

fn publish_all(
    rt: &tokio::runtime::Runtime,
    plan: &Plan,
    shared: &Shared,
    p: usize,
    out: &mut PubOut,
) -> anyhow::Result<()> {
    let client = rt.block_on(connect(plan.server_of_pub(p), plan, &format!("pub{p}")))?;
    let mut sender = OrderedPublisher::new(client.clone(), plan.topic.clone(), plan.confirm);
    // Probe until every subscriber has seen one of ours: from then on each
    // of our messages reaches each of them (per-publisher FIFO).
    let deadline = Instant::now() + SETUP_TIMEOUT;
    let mut probes = 0;
    while !shared.all_ready_for(p) {
        if shared.abort.load(Mem::Acquire) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("subscribers did not see this publisher's probes within {SETUP_TIMEOUT:?}");
        }
        let probe = Stamp {
            publisher: p as u32,
            flags: FLAG_PROBE,
            seq: probes,
            sent_us: now_us(),
        };
        rt.block_on(async {
            client
                .publish(&plan.topic, payload::make(plan.size, plan.run, &probe))
                .await?;
            tokio::time::sleep(PROBE_INTERVAL).await;
            Ok::<_, Error>(())
        })?;
        probes += 1;
    }
    shared.pubs_ready.fetch_add(1, Mem::AcqRel);
    while !shared.go.load(Mem::Acquire) {
        thread::sleep(Duration::from_micros(200));
    }
    if shared.abort.load(Mem::Acquire) {
        return Ok(());
    }
    let t0 = shared.go_us.load(Mem::Acquire);
    let limit = Limit {
        count: plan.counts.as_ref().and_then(|c| c.get(p).copied()),
        end_us: plan
            .duration
            .map(|d| t0 + plan.warmup_us + d.as_micros() as u64),
        warm_end_us: t0 + plan.warmup_us,
    };
    match plan.interval_us {
        None => rt.block_on(flat_out(plan, shared, p, &mut sender, &limit, out))?,
        Some(interval) => paced(rt, plan, shared, p, &mut sender, &limit, interval, out)?,
    }
    rt.block_on(sender.finish())?;
    out.end_us = now_us();
    rt.block_on(async {
        let _ = client.close().await;
    });
    Ok(())
}

/// When a publisher stops, and when its warm-up ends.
#[derive(Debug)]
struct Limit {
    count: Option<u64>,
    end_us: Option<u64>,
    warm_end_us: u64,
}

impl Limit {
    fn done(&self, sent: u64, now: u64) -> bool {
        self.count.is_some_and(|c| sent >= c) || self.end_us.is_some_and(|e| now >= e)
    }
    fn remaining(&self, sent: u64) -> u64 {
        self.count.map_or(u64::MAX, |c| c.saturating_sub(sent))
    }
}

/// Stamps and sends message `seq`.
async fn send_one(
    plan: &Plan,
    sender: &mut OrderedPublisher,
    p: usize,
    seq: u64,
    now: u64,
    limit: &Limit,
    out: &mut PubOut,
) -> anyhow::Result<()> {
    let warm = now < limit.warm_end_us;
    let stamp = Stamp {
        publisher: p as u32,
        flags: if warm { FLAG_WARMUP } else { 0 },
        seq,
        sent_us: now,
    };
    sender
        .send(payload::make(plan.size, plan.run, &stamp))
        .await?;
    out.warmup += u64::from(warm);
    Ok(())
}

/// As fast as the window (and the broker's flow control) allows, in batches
/// stamped with one clock reading, as broker-bench's tput mode.
async fn flat_out(
    plan: &Plan,
    shared: &Shared,
    p: usize,
    sender: &mut OrderedPublisher,
    limit: &Limit,
    out: &mut PubOut,
) -> anyhow::Result<()> {
    let mut seq = 0u64;
    loop {
        let now = now_us();
        if limit.done(seq, now) || shared.abort.load(Mem::Acquire) {
            break;
        }
        let mut k = BATCH.min(limit.remaining(seq));
        if plan.window > 0 && plan.subs > 0 {
            let inflight = seq - shared.slowest(p).min(seq);
            if inflight + 1 > plan.window {
                // Tokio's timer rounds this up to about 1 ms: a small slice
                // of the window at the rates seen here.
                tokio::time::sleep(Duration::from_micros(100)).await;
                continue;
            }
            k = k.min(plan.window - inflight);
        }
        for _ in 0..k {
            send_one(plan, sender, p, seq, now, limit, out).await?;
            seq += 1;
        }
        out.sent = seq;
        shared.sent[p].store(seq, Mem::Relaxed);
    }
    out.sent = seq;
    Ok(())
}

/// One message every `interval` µs, each stamped just before it is handed
/// to the client; late ones go back to back to catch up (as broker-bench).
#[allow(clippy::too_many_arguments)]
fn paced(
    rt: &tokio::runtime::Runtime,
    plan: &Plan,
    shared: &Shared,
    p: usize,
    sender: &mut OrderedPublisher,
    limit: &Limit,
    interval: f64,
    out: &mut PubOut,
) -> anyhow::Result<()> {
    let t0 = shared.go_us.load(Mem::Acquire);
    let mut seq = 0u64;
    loop {
        let now = now_us();
        if limit.done(seq, now) || shared.abort.load(Mem::Acquire) {
            break;
        }
        let due = t0 + (seq as f64 * interval) as u64;
        if now < due {
            thread::sleep(Duration::from_micros(due - now));
            continue;
        }
        let now = now_us();
        let writes = sender.client.stats().writes;
        rt.block_on(async {
            send_one(plan, sender, p, seq, now, limit, out).await?;
            written(&sender.client, writes).await
        })?;
        seq += 1;
        out.sent = seq;
        shared.sent[p].store(seq, Mem::Relaxed);
    }
    out.sent = seq;
    Ok(())
}

/// Returns once the connection wrote to the socket after `writes` writes
/// (as broker-bench's `push`): on the current-thread runtime the connection
/// task runs while this yields, and the message is on its way before the
/// publisher thread sleeps.
async fn written(client: &Client, writes: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    while client.stats().writes == writes {
        if Instant::now() > deadline {
            bail!("a publish was not written to the socket within {SETUP_TIMEOUT:?}");
        }
        tokio::task::yield_now().await;
    }
    Ok(())
}

// ---------------------------------------------------------------- report

/// Writes `--latency-log`: one `subscriber send_us latency_us` line per sample.
fn write_latency_log(path: &std::path::Path, subs: &[SubOut]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(f, "# subscriber send_us latency_us")?;
    for (s, o) in subs.iter().enumerate() {
        if o.samples.len() >= MAX_LOGGED_SAMPLES {
            writeln!(
                f,
                "# subscriber {s}: only its first {MAX_LOGGED_SAMPLES} samples"
            )?;
        }
        for (sent, latency) in &o.samples {
            writeln!(f, "{s} {sent} {latency}")?;
        }
    }
    f.flush()
}

/// CPU time (user + system, µs) and context switches (voluntary +
/// involuntary) of this whole process so far, exited threads included, so a
/// benchmark script need not sample the process while it runs (sampling
/// costs the machine a few processes' start-up every time, which shows in
/// the latency tail).
fn own_usage() -> (u64, u64) {
    use nix::sys::resource::{getrusage, UsageWho};
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let us = |t: nix::sys::time::TimeVal| {
                (t.tv_sec().max(0) as u64) * 1_000_000 + t.tv_usec().max(0) as u64
            };
            let switches = u.voluntary_context_switches() + u.involuntary_context_switches();
            (
                us(u.user_time()) + us(u.system_time()),
                switches.max(0) as u64,
            )
        }
        Err(_) => (0, 0),
    }
}

fn report(plan: &Plan, args: &BenchArgs, pubs: &[PubOut], subs: &[SubOut], go_us: u64) -> Report {
    let start = go_us + plan.warmup_us;
    let total: u64 = pubs.iter().map(|o| o.sent).sum();
    let measured: u64 = pubs.iter().map(|o| o.sent - o.warmup.min(o.sent)).sum();
    let end = pubs.iter().map(|o| o.end_us).max().unwrap_or(start);
    let pub_rate = stats::rate(measured, start, end);
    let (bench_cpu_us, bench_ctx_switches) = own_usage();
    let mut errors: Vec<String> = pubs.iter().filter_map(|o| o.error.clone()).collect();
    errors.extend(subs.iter().filter_map(|o| o.error.clone()));

    let mut merged = stats::new_histogram();
    let mut totals = Counts::default();
    let (mut foreign, mut discontinuities) = (0, 0);
    let mut per_sub = Vec::with_capacity(subs.len());
    for (s, o) in subs.iter().enumerate() {
        let mut c = Counts::default();
        for (p, check) in o.checks.iter().enumerate() {
            c.add(&check.finish(pubs.get(p).map_or(0, |x| x.sent)));
        }
        totals.add(&c);
        foreign += o.foreign;
        discontinuities += o.discontinuities;
        // Histograms share bounds, so adding cannot fail; if it did, the
        // merged percentiles would miss samples, not be wrong.
        let _ = merged.add(&o.hist);
        let pct = Percentiles::of(&o.hist);
        per_sub.push(SubReport {
            server: plan.server_of_sub(s).to_string(),
            received: o.measured,
            rate: stats::rate(o.measured, start, o.last_us),
            lost: c.lost,
            reordered: c.reordered,
            duplicates: c.duplicates,
            p50_us: pct.p50_us,
            p99_us: pct.p99_us,
            max_us: pct.max_us,
        });
    }
    let rates: Vec<f64> = per_sub.iter().map(|s| s.rate).collect();
    let (mean, min) = stats::mean_min(&rates);
    let max = rates.iter().copied().fold(0.0, f64::max);
    let pct = Percentiles::of(&merged);
    let per_pub = pubs
        .iter()
        .enumerate()
        .map(|(p, o)| PubReport {
            server: plan.server_of_pub(p).to_string(),
            sent: o.sent,
            rate: stats::rate(o.sent - o.warmup.min(o.sent), start, o.end_us),
        })
        .collect();
    Report {
        servers: plan.servers.clone(),
        topic: plan.topic.clone(),
        ordering: args.ordering.to_string(),
        pubs: plan.pubs,
        subs: plan.subs,
        size: plan.size,
        msgs: total,
        measured_msgs: measured,
        rate_target: args.rate,
        window: plan.window,
        warmup_s: args.warmup.as_secs_f64(),
        confirm: plan.confirm,
        pub_secs: end.saturating_sub(start) as f64 / 1e6,
        pub_rate,
        sub_rate_mean: mean,
        sub_rate_min: min,
        sub_rate_max: max,
        p50_us: pct.p50_us,
        p90_us: pct.p90_us,
        p99_us: pct.p99_us,
        p999_us: pct.p999_us,
        max_us: pct.max_us,
        latency_samples: pct.samples,
        lost: totals.lost,
        reordered: totals.reordered,
        duplicates: totals.duplicates,
        invalid: totals.invalid,
        foreign,
        discontinuities,
        ok: totals.clean() && errors.is_empty(),
        errors,
        bench_cpu_us,
        bench_ctx_switches,
        rate_definition: "pub_rate: measured msgs / (publishers' start after warm-up .. last publish flushed); \
             sub rates: measured msgs received / (publishers' start after warm-up .. that subscriber's last arrival), as peers/broker-bench",
        clock: "send and receive times: SystemTime in µs, one process on one host",
        per_sub,
        per_pub,
    }
}

/// The human report (`nats bench`-like), as text for [`super::emit`].
/// `writeln!` into a `String`, which cannot fail.
macro_rules! w {
    ($o:expr, $($arg:tt)*) => {{
        let _ = writeln!($o, $($arg)*);
    }};
}

fn human(r: &Report) -> String {
    let mut o = String::new();
    let mb = |rate: f64| stats::mib_per_sec(rate, r.size);
    o.push('\n');
    w!(
        o,
        "Pub stats: {} msgs/sec ~ {:.2} MB/sec ({} msgs in {:.2} s)",
        stats::thousands(r.pub_rate),
        mb(r.pub_rate),
        r.measured_msgs,
        r.pub_secs
    );
    for (i, p) in r.per_pub.iter().enumerate() {
        if r.per_pub.len() > 1 {
            w!(
                o,
                " [{}] {} msgs/sec ~ {:.2} MB/sec ({} msgs) via {}",
                i + 1,
                stats::thousands(p.rate),
                mb(p.rate),
                p.sent,
                p.server
            );
        }
    }
    if r.subs > 0 {
        let agg: f64 = r.per_sub.iter().map(|s| s.rate).sum();
        w!(
            o,
            "Sub stats: {} msgs/sec ~ {:.2} MB/sec (aggregate)",
            stats::thousands(agg),
            mb(agg)
        );
        for (i, s) in r.per_sub.iter().enumerate() {
            w!(
                o,
                " [{}] {} msgs/sec ~ {:.2} MB/sec ({} msgs) via {}",
                i + 1,
                stats::thousands(s.rate),
                mb(s.rate),
                s.received,
                s.server
            );
        }
        w!(
            o,
            " min {} | avg {} | max {} msgs/sec per subscriber",
            stats::thousands(r.sub_rate_min),
            stats::thousands(r.sub_rate_mean),
            stats::thousands(r.sub_rate_max)
        );
        w!(o,
            "Latency (µs, publish to delivery, {} samples): p50 {} | p90 {} | p99 {} | p99.9 {} | max {}",
            r.latency_samples, r.p50_us, r.p90_us, r.p99_us, r.p999_us, r.max_us
        );
        w!(o,
            "Check: lost {} | reordered {} | duplicates {} | invalid {} | foreign {} | discontinuities {} -> {}",
            r.lost,
            r.reordered,
            r.duplicates,
            r.invalid,
            r.foreign,
            r.discontinuities,
            if r.ok {
                "every subscriber got every message once, in per-publisher order"
            } else {
                "FAILED"
            }
        );
    }
    for e in &r.errors {
        w!(o, "Error: {e}");
    }
    o
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1e9s").is_err());
    }

    #[test]
    fn round_robin_assignment_starts_at_the_first_server() {
        let conn = Connection {
            server: "x:1".into(),
            token: None,
            tls: None,
        };
        let args = BenchArgs {
            servers: vec!["a:1".into(), "b:2".into(), "c:3".into()],
            pubs: 1,
            subs: 3,
            size: 128,
            msgs: Some(10),
            duration: None,
            rate: 0,
            ordering: Ordering::Fifo,
            topic: "t".into(),
            confirm: false,
            window: 10,
            warmup: Duration::ZERO,
            json: true,
            latency_log: None,
        };
        let plan = plan(&conn, &args).unwrap();
        assert_eq!(plan.server_of_pub(0), "a:1");
        let subs: Vec<&str> = (0..3).map(|s| plan.server_of_sub(s)).collect();
        assert_eq!(subs, ["a:1", "b:2", "c:3"]);
        assert_eq!(plan.counts, Some(vec![10]));
    }

    #[test]
    fn messages_split_over_publishers_and_default_server() {
        let conn = Connection {
            server: "x:1".into(),
            token: None,
            tls: None,
        };
        let args = BenchArgs {
            servers: vec![],
            pubs: 3,
            subs: 0,
            size: 32,
            msgs: Some(10),
            duration: None,
            rate: 3000,
            ordering: Ordering::Fifo,
            topic: "t".into(),
            confirm: false,
            window: 0,
            warmup: Duration::ZERO,
            json: true,
            latency_log: None,
        };
        let plan = plan(&conn, &args).unwrap();
        assert_eq!(plan.servers, ["x:1"]);
        assert_eq!(plan.counts, Some(vec![4, 3, 3]));
        // 3000 msg/s over 3 publishers: each one every 1000 µs.
        assert_eq!(plan.interval_us, Some(1000.0));
        let small = BenchArgs { size: 31, ..args };
        assert!(super::plan(&conn, &small).is_err());
    }

    #[test]
    fn window_tracks_the_slowest_subscriber_of_each_publisher() {
        let sh = Shared::new(2, 3);
        // [sub * pubs + pub]
        for (i, v) in [10u64, 20, 5, 30, 7, 1].iter().enumerate() {
            sh.high[i].store(*v, Mem::Relaxed);
        }
        assert_eq!(sh.slowest(0), 5);
        assert_eq!(sh.slowest(1), 1);
        assert_eq!(Shared::new(1, 0).slowest(0), u64::MAX);
        assert!(!sh.all_ready_for(0));
        for s in 0..3 {
            sh.ready[s * 2].store(true, Mem::Relaxed);
        }
        assert!(sh.all_ready_for(0));
        assert!(!sh.all_ready_for(1));
    }

    /// One publisher, one subscriber, nothing received yet.
    fn one_subscriber(latency_log: Option<std::path::PathBuf>) -> (Plan, Shared, SubOut) {
        let conn = Connection {
            server: "x:1".into(),
            token: None,
            tls: None,
        };
        let args = BenchArgs {
            servers: vec![],
            pubs: 1,
            subs: 1,
            size: 64,
            msgs: Some(3),
            duration: None,
            rate: 0,
            ordering: Ordering::Fifo,
            topic: "t".into(),
            confirm: false,
            window: 0,
            warmup: Duration::ZERO,
            json: true,
            latency_log,
        };
        let out = SubOut {
            checks: vec![OrderCheck::new()],
            measured: 0,
            last_us: 0,
            hist: stats::new_histogram(),
            discontinuities: 0,
            foreign: 0,
            error: None,
            samples: Vec::new(),
        };
        (plan(&conn, &args).unwrap(), Shared::new(1, 1), out)
    }

    #[test]
    fn subscriber_counts_measured_messages_and_skips_probes_and_warmup() {
        let (plan, sh, mut out) = one_subscriber(None);
        let msg = |flags, seq| {
            Bytes::from(payload::make(
                64,
                plan.run,
                &Stamp {
                    publisher: 0,
                    flags,
                    seq,
                    sent_us: now_us(),
                },
            ))
        };
        assert!(!on_payload(&plan, &sh, 0, &mut out, &msg(FLAG_PROBE, 0)));
        assert!(sh.ready[0].load(Mem::Relaxed));
        assert!(on_payload(&plan, &sh, 0, &mut out, &msg(FLAG_WARMUP, 0)));
        assert!(on_payload(&plan, &sh, 0, &mut out, &msg(0, 1)));
        assert!(!on_payload(&plan, &sh, 0, &mut out, &msg(0, 1)));
        assert!(!on_payload(
            &plan,
            &sh,
            0,
            &mut out,
            &Bytes::from_static(b"x")
        ));
        let other_pub = Bytes::from(payload::make(
            64,
            plan.run,
            &Stamp {
                publisher: 5,
                flags: 0,
                seq: 0,
                sent_us: 0,
            },
        ));
        assert!(!on_payload(&plan, &sh, 0, &mut out, &other_pub));
        assert_eq!(out.measured, 1);
        assert_eq!(out.foreign, 2);
        assert_eq!(sh.high[0].load(Mem::Relaxed), 2);
        let c = out.checks[0].finish(2);
        assert_eq!((c.duplicates, c.lost, c.received), (1, 0, 2));
        assert_eq!(out.hist.len(), 1);
        assert!(out.samples.is_empty(), "samples kept without --latency-log");
    }

    #[test]
    fn latency_log_has_one_line_per_measured_delivery() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lat.txt");
        let (plan, sh, mut out) = one_subscriber(Some(path.clone()));
        let sent = now_us() - 250;
        for (flags, seq) in [(FLAG_WARMUP, 0), (0, 1), (0, 2)] {
            let m = payload::make(
                64,
                plan.run,
                &Stamp {
                    publisher: 0,
                    flags,
                    seq,
                    sent_us: sent,
                },
            );
            assert!(on_payload(&plan, &sh, 0, &mut out, &Bytes::from(m)));
        }
        write_latency_log(&path, &[out]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Vec<u64>> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(' ').map(|x| x.parse().unwrap()).collect())
            .collect();
        assert_eq!(lines.len(), 2, "warm-up is not measured: {text}");
        for l in &lines {
            assert_eq!((l[0], l[1]), (0, sent));
            assert!(
                l[2] >= 250,
                "latency {} below the 250 µs it was sent ago",
                l[2]
            );
        }
    }

    #[test]
    fn own_usage_counts_this_process() {
        // Burn a little CPU so the figure cannot be zero on any clock.
        let mut x = 0u64;
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let (cpu_us, _) = own_usage();
        assert!(cpu_us >= 10_000, "cpu {cpu_us} µs after a 30 ms busy loop");
    }
}
