//! `ordo cluster`: the view the connected broker is in.

use std::fmt::Write as _;
use std::io::Write as _;

use anyhow::Context;
use clap::Args;
use ordo_client::Origin;

use super::Connection;

/// `ordo cluster` flags.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// One JSON object: view_id, this, members, coordinator, sequencer.
    #[arg(long)]
    json: bool,
}

fn origin_json(o: Origin) -> serde_json::Value {
    serde_json::json!({ "node": o.node.0, "incarnation": o.incarnation.0 })
}

/// Prints the view of the broker `conn` names.
pub async fn run(conn: &Connection, args: ClusterArgs) -> anyhow::Result<()> {
    let client = conn.connect().await?;
    let view = client.cluster().await?;
    client.close().await?;
    if args.json {
        let v = serde_json::json!({
            "view_id": view.view_id.0,
            "this": origin_json(view.this),
            "members": view.members.iter().map(|m| origin_json(*m)).collect::<Vec<_>>(),
            "coordinator": view.coordinator.0,
            "sequencer": view.sequencer.map(|s| s.0),
        });
        emit(&format!("{v}\n"))?;
    } else {
        let members: Vec<String> = view
            .members
            .iter()
            .map(|m| format!("{} (incarnation {})", m.node, m.incarnation))
            .collect();
        // Writing to a String cannot fail.
        let mut text = String::new();
        let _ = writeln!(text, "view         {}", view.view_id);
        let _ = writeln!(
            text,
            "this broker  {} (incarnation {})",
            view.this.node, view.this.incarnation
        );
        let _ = writeln!(text, "members      {}", members.join(", "));
        let _ = writeln!(text, "coordinator  {}", view.coordinator);
        match view.sequencer {
            Some(s) => {
                let _ = writeln!(text, "sequencer    {s}");
            }
            None => text.push_str("sequencer    none\n"),
        }
        emit(&text)?;
    }
    Ok(())
}

/// Writes `text` to stdout. A closed pipe (`| head -1`) means the reader is
/// done, which is success, as for `ordo sub`; `println!` would panic.
fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write to standard output")
        }
        _ => Ok(()),
    }
}
