//! `ordo cluster`: the view the connected broker is in.

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
        println!("{v}");
    } else {
        let members: Vec<String> = view
            .members
            .iter()
            .map(|m| format!("{} (incarnation {})", m.node, m.incarnation))
            .collect();
        println!("view         {}", view.view_id);
        println!(
            "this broker  {} (incarnation {})",
            view.this.node, view.this.incarnation
        );
        println!("members      {}", members.join(", "));
        println!("coordinator  {}", view.coordinator);
        match view.sequencer {
            Some(s) => println!("sequencer    {s}"),
            None => println!("sequencer    none"),
        }
    }
    Ok(())
}
