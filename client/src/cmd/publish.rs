//! `ordo pub`: publish MESSAGE N times, or one message per stdin line as it arrives.

use std::io::{BufRead, Read};

use anyhow::Context;
use clap::Args;
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

/// Publishes, and returns once everything was handed over (and confirmed).
pub async fn run(conn: &Connection, args: PubArgs) -> anyhow::Result<()> {
    let client = conn.connect().await?;
    let mut publisher = OrderedPublisher::new(client, args.topic.clone(), args.confirm);
    if let Err(e) = feed(&mut publisher, &args).await {
        // What was handed over before the failure (a refused stdin line,
        // say) still goes out: a bad line must not silently take the valid
        // lines before it with it. Best effort; the error is what we report.
        let _ = publisher.client.flush().await;
        return Err(e);
    }
    let topic = args.topic;
    publisher.finish().await?;
    publisher.client.close().await?;
    let sent = publisher.sent;
    let how = if args.confirm { "confirmed" } else { "sent" };
    eprintln!("{how} {sent} message(s) to {topic}");
    Ok(())
}

/// Publishes MESSAGE --count times, or each stdin line.
async fn feed(publisher: &mut OrderedPublisher, args: &PubArgs) -> anyhow::Result<()> {
    match &args.message {
        Some(template) => {
            let count = args.count.unwrap_or(1);
            let templated = template.contains("{n}");
            for n in 1..=count {
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
                    lines.recv().await
                } else {
                    tokio::select! {
                        line = lines.recv() => line,
                        res = publisher.confirmed() => {
                            res?;
                            continue;
                        }
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
    Ok(())
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
