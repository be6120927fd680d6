//! `ordo sub`: print messages on a pattern as they arrive, one per line.

use std::cell::Cell;
use std::io::{self, Write};
use std::time::Duration;

use anyhow::Context;
use base64::Engine as _;
use clap::Args;
use futures_util::{FutureExt, StreamExt};
use ordo_client::{Error, Event, Message};
use serde::Serialize;

use super::Connection;

/// `ordo sub` arguments.
#[derive(Debug, Args)]
pub struct SubArgs {
    /// `.`-separated tokens; `*` matches one token, `>` the rest (`orders.>`).
    pattern: String,
    /// Exit 0 after N messages.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Give up after SECS seconds (exit 6) unless --count messages arrived first.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    timeout: Option<Duration>,
    /// One JSON object per line: topic, payload (or payload_b64), publisher,
    /// origin, incarnation, seq, and gseq on total topics.
    #[arg(long)]
    json: bool,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v < 1e9 => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!("expected a positive number of seconds, got {s:?}")),
    }
}

/// A message as `--json` prints it; the keys are part of the CLI contract.
#[derive(Debug, Serialize)]
struct JsonMessage<'a> {
    topic: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_b64: Option<String>,
    publisher: u64,
    origin: u32,
    incarnation: u64,
    seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    gseq: Option<u64>,
}

impl<'a> JsonMessage<'a> {
    fn new(m: &'a Message) -> Self {
        let (payload, payload_b64) = match std::str::from_utf8(&m.payload) {
            Ok(text) => (Some(text), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(&m.payload)),
            ),
        };
        JsonMessage {
            topic: &m.topic,
            payload,
            payload_b64,
            publisher: m.publisher,
            origin: m.origin.node.0,
            incarnation: m.origin.incarnation.0,
            seq: m.seq.0,
            gseq: m.gseq.map(|g| g.0),
        }
    }
}

/// Writes one message as one line (the caller flushes).
fn print(out: &mut impl Write, m: &Message, json: bool) -> io::Result<()> {
    if json {
        serde_json::to_writer(&mut *out, &JsonMessage::new(m))?;
    } else {
        out.write_all(&m.payload)?;
    }
    out.write_all(b"\n")
}

/// Subscribes and prints until --count, --timeout, a closed pipe or a failure.
pub async fn run(conn: &Connection, args: SubArgs) -> anyhow::Result<()> {
    let received = Cell::new(0u64);
    let work = receive(conn, &args, &received);
    match args.timeout {
        None => work.await,
        Some(limit) => match tokio::time::timeout(limit, work).await {
            Ok(res) => res,
            Err(_) => {
                let wanted = match args.count {
                    Some(c) => format!(" of {c}"),
                    None => String::new(),
                };
                Err(Error::Timeout {
                    what: format!(
                        "after {limit:?} waiting for messages on {} ({}{wanted} received)",
                        args.pattern,
                        received.get()
                    ),
                }
                .into())
            }
        },
    }
}

/// A closed pipe (`ordo sub x | head -1`) means the reader is done: success.
fn stdout_failed(e: io::Error) -> anyhow::Result<()> {
    if e.kind() == io::ErrorKind::BrokenPipe {
        return Ok(());
    }
    Err(e).context("cannot write to standard output")
}

async fn receive(conn: &Connection, args: &SubArgs, received: &Cell<u64>) -> anyhow::Result<()> {
    let client = conn.connect().await?;
    let mut sub = client
        .subscribe(&args.pattern)
        .await
        .with_context(|| format!("cannot subscribe to {}", args.pattern))?;
    super::note(format_args!("subscribed {}", args.pattern));
    // Messages are flushed before every wait for the next one, so each is
    // out as soon as it arrived, and a burst costs one write, not one per line.
    let mut out = io::BufWriter::with_capacity(64 * 1024, io::stdout().lock());
    let mut next = sub.next().await;
    loop {
        match next {
            Some(Ok(Event::Message(m))) => {
                if let Err(e) = print(&mut out, &m, args.json) {
                    return stdout_failed(e);
                }
                received.set(received.get() + 1);
            }
            Some(Ok(Event::Discontinuity(d))) => super::note(format_args!(
                "discontinuity on {}: view {} -> {}: {}",
                args.pattern, d.from_view, d.to_view, d.reason
            )),
            Some(Err(e)) => {
                let _ = out.flush();
                return Err(e).context(format!("subscription {} ended", args.pattern));
            }
            None => {
                let _ = out.flush();
                return Err(Error::Disconnected {
                    code: None,
                    reason: "the subscription ended".into(),
                }
                .into());
            }
        }
        if matches!(args.count, Some(c) if received.get() >= c) {
            break;
        }
        next = match sub.next().now_or_never() {
            Some(ready) => ready,
            None => {
                if let Err(e) = out.flush() {
                    return stdout_failed(e);
                }
                sub.next().await
            }
        };
    }
    if let Err(e) = out.flush() {
        return stdout_failed(e);
    }
    drop(sub);
    client.close().await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ordo_client::{CausalContext, GlobalSeq, Incarnation, NodeId, Ordering, Origin, Seq};

    fn message(payload: &'static [u8], gseq: Option<u64>) -> Message {
        Message {
            topic: "t.a".into(),
            ordering: Ordering::Fifo,
            payload: Bytes::from_static(payload),
            publisher: 7,
            origin: Origin {
                node: NodeId(2),
                incarnation: Incarnation(9),
            },
            seq: Seq(5),
            context: CausalContext::new(),
            gseq: gseq.map(GlobalSeq),
        }
    }

    #[test]
    fn json_has_exactly_the_contract_keys() {
        let mut out = Vec::new();
        print(&mut out, &message(b"hi", None), true).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"topic\":\"t.a\",\"payload\":\"hi\",\"publisher\":7,\"origin\":2,\"incarnation\":9,\"seq\":5}\n"
        );
        let mut out = Vec::new();
        print(&mut out, &message(b"\xff\x00", Some(3)), true).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"topic\":\"t.a\",\"payload_b64\":\"/wA=\",\"publisher\":7,\"origin\":2,\"incarnation\":9,\"seq\":5,\"gseq\":3}\n"
        );
    }

    #[test]
    fn timeout_must_be_positive() {
        assert_eq!(parse_secs("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_secs("0").is_err());
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("soon").is_err());
    }
}
