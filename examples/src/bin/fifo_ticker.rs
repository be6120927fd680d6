//! FIFO ticker: one publisher sends numbered ticks, one subscriber checks
//! they arrive complete and in publish order (the `fifo` guarantee).
//!
//! Run a broker, then the ticker:
//!
//! ```text
//! cargo run -p ordo-broker                          # terminal 1
//! cargo run -p ordo-examples --bin fifo_ticker      # terminal 2
//! ```
//!
//! It uses two connections so the ticks really travel through the broker.
//! Optional: the number of ticks as the first argument (default 1000), and
//! `ORDO_SERVER` for a broker elsewhere than 127.0.0.1:7411.

use anyhow::{bail, Context};
use futures_util::StreamExt;
use ordo_client::{Client, ClientOptions, Event, Ordering};

const TOPIC: &str = "ticker.fifo";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let server = std::env::var("ORDO_SERVER").unwrap_or_else(|_| "127.0.0.1:7411".into());
    let ticks: u64 = match std::env::args().nth(1) {
        Some(arg) => arg.parse().context("the tick count must be a number")?,
        None => 1000,
    };

    // The subscriber first: only ticks published after the broker confirmed
    // the subscription are promised to it.
    let subscriber = Client::connect(&server, ClientOptions::default()).await?;
    subscriber.declare(TOPIC, Ordering::Fifo, false).await?;
    let mut ticks_in = subscriber.subscribe(TOPIC).await?;

    // The checker reads while the publisher writes, so neither waits on the other.
    let checker = tokio::spawn(async move {
        // Each tick must be the one after the last: nothing lost, nothing reordered.
        for expected in 1..=ticks {
            let message = match ticks_in.next().await {
                Some(Ok(Event::Message(m))) => m,
                Some(Ok(Event::Discontinuity(d))) => bail!("discontinuity: {}", d.reason),
                Some(Err(e)) => return Err(e.into()),
                None => bail!("the subscription ended after {} ticks", expected - 1),
            };
            let text = String::from_utf8_lossy(&message.payload);
            if text != format!("tick {expected}") {
                bail!("expected tick {expected}, got {text:?}");
            }
        }
        Ok(())
    });

    // The publisher sends tick 1..=N and waits until the broker has them all.
    let publisher = Client::connect(&server, ClientOptions::default()).await?;
    for n in 1..=ticks {
        publisher.publish(TOPIC, format!("tick {n}")).await?;
    }
    publisher.flush().await?;
    println!("published {ticks} ticks on {TOPIC}");

    checker.await??;
    println!("received all {ticks} ticks in order");
    publisher.close().await?;
    subscriber.close().await?;
    Ok(())
}
