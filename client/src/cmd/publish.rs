//! `ordo pub`: publish MESSAGE N times, or one message per stdin line as it arrives.

use std::io::{BufRead, Read};

use anyhow::Context;
use clap::Args;
use futures_util::FutureExt;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;

use super::{Connection, OrderedPublisher};

/// Stdin lines read ahead of the publisher.
const STDIN_QUEUE: usize = 64;

/// `ordo pub` arguments.
#[derive(Debug, Args)]
pub struct PubArgs {
    /// The topic to publish on.
    topic: String,
    /// The message; n in curly braces is replaced by 1..N. Without it, each stdin line is one message.
    message: Option<String>,
    /// With MESSAGE: how many to send (default 1). Without: stop after N lines.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Wait until the broker confirms every message is safe.
    #[arg(long)]
    confirm: bool,
}

/// `ordo pub` stopped by SIGINT or SIGTERM; what it had read was flushed
/// first (unless a second signal came). Exit code 130 / 143, as a shell's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Interrupted {
    pub(crate) signal: &'static str,
    pub(crate) code: u8,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "interrupted by {}", self.signal)
    }
}

impl std::error::Error for Interrupted {}

/// SIGINT (Ctrl-C) and SIGTERM, caught once a connection is up (before,
/// they end the process as usual).
struct Signals {
    int: Signal,
    term: Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    /// The next signal (cancel-safe).
    async fn recv(&mut self) -> Interrupted {
        tokio::select! {
            Some(()) = self.int.recv() => Interrupted { signal: "SIGINT", code: 130 },
            Some(()) = self.term.recv() => Interrupted { signal: "SIGTERM", code: 143 },
            else => std::future::pending().await,
        }
    }
}

/// Publishes, and returns once everything was handed over (and confirmed).
/// On SIGINT/SIGTERM it stops reading, flushes what was already read
/// (a second signal stops waiting) and fails with [`Interrupted`].
pub async fn run(conn: &Connection, args: PubArgs) -> anyhow::Result<()> {
    let client = conn.connect().await?;
    let mut signals = Signals::new().context("cannot catch SIGINT/SIGTERM")?;
    let mut publisher = OrderedPublisher::new(client, args.topic.clone(), args.confirm);
    let stopped = match feed(&mut publisher, &args, &mut signals).await {
        Ok(stopped) => stopped,
        Err(e) => {
            // What was handed over before the failure (a refused stdin line,
            // say) still goes out: a bad line must not silently take the valid
            // lines before it with it. Best effort; the error is what we report.
            let _ = publisher.client.flush().await;
            return Err(e);
        }
    };
    let topic = args.topic;
    let how = if args.confirm { "confirmed" } else { "sent" };
    tokio::select! {
        res = publisher.finish() => res?,
        again = signals.recv() => {
            let sent = publisher.sent;
            super::note(format_args!(
                "{again} while flushing: {sent} message(s) to {topic} handed over, not all acknowledged"
            ));
            return Err(again.into());
        }
    }
    publisher.client.close().await?;
    let sent = publisher.sent;
    super::note(format_args!("{how} {sent} message(s) to {topic}"));
    match stopped {
        Some(sig) => Err(sig.into()),
        None => Ok(()),
    }
}

/// Publishes MESSAGE --count times, or each stdin line; stops early (with
/// the signal) on SIGINT/SIGTERM.
async fn feed(
    publisher: &mut OrderedPublisher,
    args: &PubArgs,
    signals: &mut Signals,
) -> anyhow::Result<Option<Interrupted>> {
    match &args.message {
        Some(template) => {
            let count = args.count.unwrap_or(1);
            let templated = template.contains("{n}");
            for n in 1..=count {
                if let Some(sig) = signals.recv().now_or_never() {
                    return Ok(Some(sig));
                }
                let payload = if templated {
                    template.replace("{n}", &n.to_string())
                } else {
                    template.clone()
                };
                publisher.send(payload.into_bytes()).await?;
            }
        }
        None => {
            let max = publisher.client.server_info().limits.max_payload;
            let mut lines = stdin_lines(u64::from(max));
            loop {
                if args.count.is_some_and(|c| publisher.sent >= c) {
                    break;
                }
                // Observe confirmations while waiting for input, so a refusal
                // surfaces at once rather than at end of input.
                let line = if !publisher.awaiting_confirmation() {
                    tokio::select! {
                        line = lines.recv() => line,
                        sig = signals.recv() => return drain(publisher, args, &mut lines, sig).await,
                    }
                } else {
                    tokio::select! {
                        line = lines.recv() => line,
                        res = publisher.confirmed() => {
                            res?;
                            continue;
                        }
                        sig = signals.recv() => return drain(publisher, args, &mut lines, sig).await,
                    }
                };
                match line {
                    Some(Ok(line)) => publisher.send(line).await?,
                    Some(Err(e)) => return Err(e).context("cannot read standard input"),
                    None => break,
                }
            }
        }
    }
    Ok(None)
}

/// After a signal: publishes the lines already taken from stdin (queued by
/// the reader thread), so input the pipe gave up is not lost, then stops.
async fn drain(
    publisher: &mut OrderedPublisher,
    args: &PubArgs,
    lines: &mut mpsc::Receiver<std::io::Result<Vec<u8>>>,
    sig: Interrupted,
) -> anyhow::Result<Option<Interrupted>> {
    while let Ok(Ok(line)) = lines.try_recv() {
        if args.count.is_some_and(|c| publisher.sent >= c) {
            break;
        }
        publisher.send(line).await?;
    }
    Ok(Some(sig))
}

/// Reads stdin on a thread, one line at a time as it arrives (without the
/// line ending), into a small bounded queue. A last line without a newline
/// counts; an empty input yields nothing. A line longer than `max` bytes is
/// passed on cut at `max + 1` bytes (so publishing it fails with the payload
/// limit) and ends the input: memory stays bounded whatever stdin holds.
fn stdin_lines(max: u64) -> mpsc::Receiver<std::io::Result<Vec<u8>>> {
    let (tx, rx) = mpsc::channel(STDIN_QUEUE);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut input = stdin.lock();
        loop {
            let mut line = Vec::new();
            match (&mut input).take(max + 2).read_until(b'\n', &mut line) {
                Ok(0) => return,
                Ok(_)
                    if line.len() as u64 > max + 1
                        || (line.len() as u64 > max && line.last() != Some(&b'\n')) =>
                {
                    line.truncate(max as usize + 1);
                    let _ = tx.blocking_send(Ok(line));
                    return;
                }
                Ok(_) => {
                    if line.last() == Some(&b'\n') {
                        line.pop();
                        if line.last() == Some(&b'\r') {
                            line.pop();
                        }
                    }
                    if tx.blocking_send(Ok(line)).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    rx
}
