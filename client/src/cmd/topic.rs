//! `ordo topic create|list`.

use std::fmt::Write as _;

use anyhow::Context;
use clap::Subcommand;
use ordo_client::Ordering;

use super::Connection;

/// `ordo topic` subcommands.
#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Declare a topic with its ordering; declaring it again the same way succeeds.
    Create {
        /// The topic name (`.`-separated tokens).
        name: String,
        /// fifo, causal, total-isis or total-seq.
        #[arg(long)]
        ordering: Ordering,
        /// Deliver nowhere until every broker holds the message.
        #[arg(long)]
        safe: bool,
    },
    /// List the topics the broker knows.
    List {
        /// One JSON array of {name, ordering, safe}.
        #[arg(long)]
        json: bool,
    },
}

/// Runs one `ordo topic` subcommand.
pub async fn run(conn: &Connection, cmd: TopicCommand) -> anyhow::Result<()> {
    let client = conn.connect().await?;
    match cmd {
        TopicCommand::Create {
            name,
            ordering,
            safe,
        } => {
            client
                .declare(&name, ordering, safe)
                .await
                .with_context(|| format!("cannot declare topic {name} as {ordering}"))?;
            let safe = if safe { ", safe" } else { "" };
            super::emit(&format!("topic {name} declared ({ordering}{safe})\n"))?;
        }
        TopicCommand::List { json } => {
            let mut topics = client.list_topics().await?;
            topics.sort_by(|a, b| a.name.cmp(&b.name));
            if json {
                let rows: Vec<_> = topics
                    .iter()
                    .map(|t| {
                        serde_json::json!({
                            "name": t.name,
                            "ordering": t.ordering.as_str(),
                            "safe": t.safe,
                        })
                    })
                    .collect();
                super::emit(&format!("{}\n", serde_json::Value::Array(rows)))?;
            } else {
                let width = topics.iter().map(|t| t.name.len()).max().unwrap_or(0);
                // Writing to a String cannot fail.
                let mut text = String::new();
                for t in &topics {
                    let safe = if t.safe { "  safe" } else { "" };
                    let _ = writeln!(text, "{:width$}  {}{safe}", t.name, t.ordering);
                }
                super::emit(&text)?;
            }
        }
    }
    client.close().await?;
    Ok(())
}
