//! `ordo cluster`: the view the connected broker is in.

use std::fmt::Write as _;
use std::io::Write as _;

use anyhow::Context;
use clap::Args;
use ordo_client::{ClusterView, Origin};

use super::Connection;

/// `ordo cluster` flags.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// One JSON object: state, primary, this, and the view (view_id,
    /// members, coordinator, sequencer) at the top level while the broker is
    /// a member of it, else under last_view.
    #[arg(long)]
    json: bool,
}

fn origin_json(o: Origin) -> serde_json::Value {
    serde_json::json!({ "node": o.node.0, "incarnation": o.incarnation.0 })
}

/// Prints the view of the broker `conn` names, and what that broker is
/// doing in the group. Exits 0 whatever the state: the broker answered.
pub async fn run(conn: &Connection, args: ClusterArgs) -> anyhow::Result<()> {
    let client = conn.connect().await?;
    let view = client.cluster().await?;
    client.close().await?;
    emit(&render(&view, args.json))
}

/// The output for `view`. The view's fields appear as the broker's own only
/// while it is a member (or the broker predates the state: it then showed
/// its last view as before); otherwise they are labelled as its last view,
/// so a script waiting for "members" never takes a stale view for a live one.
fn render(view: &ClusterView, json: bool) -> String {
    let member = view.status.is_none_or(|s| s.state.is_member());
    if json {
        let fields = serde_json::json!({
            "view_id": view.view_id.0,
            "members": view.members.iter().map(|m| origin_json(*m)).collect::<Vec<_>>(),
            "coordinator": view.coordinator.0,
            "sequencer": view.sequencer.map(|s| s.0),
        });
        let mut v = serde_json::json!({ "this": origin_json(view.this) });
        if let Some(st) = view.status {
            v["state"] = st.state.as_str().into();
        }
        if member {
            if let (Some(v), serde_json::Value::Object(f)) = (v.as_object_mut(), fields) {
                v.extend(f);
            }
            if let Some(st) = view.status {
                v["primary"] = st.primary.into();
            }
        } else {
            let mut last = fields;
            if let Some(st) = view.status {
                last["primary"] = st.primary.into();
            }
            // View 0 is none: the broker never was in a view.
            v["last_view"] = if view.view_id.0 == 0 {
                serde_json::Value::Null
            } else {
                last
            };
        }
        return format!("{v}\n");
    }
    let members: Vec<String> = view
        .members
        .iter()
        .map(|m| format!("{} (incarnation {})", m.node, m.incarnation))
        .collect();
    let sequencer = view
        .sequencer
        .map_or_else(|| "none".to_string(), |s| s.to_string());
    // Writing to a String cannot fail.
    let mut text = String::new();
    if let Some(st) = view.status {
        let note = match st.state {
            s if s.is_member() => "",
            _ => " (not a member of any view: not serving; see /healthz for why)",
        };
        let _ = writeln!(text, "state        {}{note}", st.state);
    }
    if member {
        let _ = writeln!(text, "view         {}", view.view_id);
        let _ = writeln!(
            text,
            "this broker  {} (incarnation {})",
            view.this.node, view.this.incarnation
        );
        let _ = writeln!(text, "members      {}", members.join(", "));
        let _ = writeln!(text, "coordinator  {}", view.coordinator);
        let _ = writeln!(text, "sequencer    {sequencer}");
        if let Some(st) = view.status {
            let _ = writeln!(text, "primary      {}", yes_no(st.primary));
        }
    } else {
        let _ = writeln!(
            text,
            "this broker  {} (incarnation {})",
            view.this.node, view.this.incarnation
        );
        if view.view_id.0 == 0 {
            text.push_str("last view    none\n");
        } else {
            let _ = writeln!(
                text,
                "last view    {} (this broker is no longer a member)",
                view.view_id
            );
            let _ = writeln!(text, "  members      {}", members.join(", "));
            let _ = writeln!(text, "  coordinator  {}", view.coordinator);
            let _ = writeln!(text, "  sequencer    {sequencer}");
            if let Some(st) = view.status {
                let _ = writeln!(text, "  primary      {}", yes_no(st.primary));
            }
        }
    }
    text
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no (total-order topics are unavailable in this view)"
    }
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use ordo_client::{Incarnation, MembershipState, NodeId, ViewId, ViewStatus};

    fn origin(node: u32, inc: u64) -> Origin {
        Origin {
            node: NodeId(node),
            incarnation: Incarnation(inc),
        }
    }

    fn view(state: Option<MembershipState>) -> ClusterView {
        ClusterView {
            view_id: ViewId(5),
            this: origin(3, 2),
            members: vec![origin(1, 1), origin(3, 1)],
            coordinator: NodeId(1),
            sequencer: Some(NodeId(1)),
            status: state.map(|state| ViewStatus {
                state,
                primary: true,
            }),
        }
    }

    #[test]
    fn a_member_shows_its_view() {
        let text = render(&view(Some(MembershipState::Member)), false);
        assert_eq!(
            text,
            "state        member\n\
             view         5\n\
             this broker  3 (incarnation 2)\n\
             members      1 (incarnation 1), 3 (incarnation 1)\n\
             coordinator  1\n\
             sequencer    1\n\
             primary      yes\n"
        );
        let v: serde_json::Value =
            serde_json::from_str(&render(&view(Some(MembershipState::Flushing)), true)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "state": "flushing", "view_id": 5, "primary": true,
                "this": {"node": 3, "incarnation": 2},
                "members": [{"node": 1, "incarnation": 1}, {"node": 3, "incarnation": 1}],
                "coordinator": 1, "sequencer": 1,
            })
        );
    }

    #[test]
    fn a_rejoining_broker_shows_its_last_view_as_such() {
        let text = render(&view(Some(MembershipState::Rejoining)), false);
        assert!(
            text.starts_with("state        rejoining (not a member"),
            "{text}"
        );
        assert!(
            text.contains("last view    5 (this broker is no longer a member)"),
            "{text}"
        );
        // Scripts wait for a line starting with "members": not a stale one.
        assert!(
            !text
                .lines()
                .any(|l| l.starts_with("members") || l.starts_with("view")),
            "{text}"
        );
        let v: serde_json::Value =
            serde_json::from_str(&render(&view(Some(MembershipState::Rejoining)), true)).unwrap();
        assert_eq!(v["state"], "rejoining");
        assert!(
            v.get("view_id").is_none() && v.get("members").is_none(),
            "{v}"
        );
        assert_eq!(v["last_view"]["view_id"], 5, "{v}");
        assert_eq!(v["last_view"]["primary"], true, "{v}");

        let mut never = view(Some(MembershipState::Discovering));
        never.view_id = ViewId(0);
        never.members.clear();
        let text = render(&never, false);
        assert!(text.contains("last view    none"), "{text}");
        let v: serde_json::Value = serde_json::from_str(&render(&never, true)).unwrap();
        assert_eq!(v["last_view"], serde_json::Value::Null, "{v}");
    }

    #[test]
    fn a_broker_without_the_state_shows_the_view_as_before() {
        let text = render(&view(None), false);
        assert!(text.starts_with("view         5\n"), "{text}");
        assert!(
            !text.contains("state") && !text.contains("primary"),
            "{text}"
        );
        let v: serde_json::Value = serde_json::from_str(&render(&view(None), true)).unwrap();
        assert!(v.get("state").is_none() && v["view_id"] == 5, "{v}");
    }
}
