//! Node identity under failure, on loopback multicast (no root needed; the
//! network faults are in `netns_failures.rs`): a second live broker claiming
//! a node id already in the view is refused on both sides, and the id stays
//! usable by a broker that left gracefully or was SIGKILLed and restarts
//! (a new incarnation).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ordo_broker::testkit::{free_tcp_addr, BrokerProcess, ClusterSpec};

/// Bound on anything that must happen on a loaded machine (a hang detector,
/// not a timing assertion).
const PATIENCE: Duration = Duration::from_secs(60);

fn member(cluster: &ClusterSpec, id: u32) -> BrokerProcess {
    common::broker()
        .cluster(cluster)
        .args(["--node-id".to_string(), id.to_string()])
        .start()
}

/// Whether `text` names node id `id` the way a log or error would.
fn names_id(text: &str, id: u32) -> bool {
    let t = text.to_lowercase();
    [
        format!("node id {id}"),
        format!("node_id={id}"),
        format!("node {id}"),
        format!("nodeid({id})"),
        format!("id {id}"),
    ]
    .iter()
    .any(|n| t.contains(n.as_str()))
}

#[test]
fn a_second_live_broker_with_a_taken_node_id_is_refused_on_both_sides() {
    let cluster = ClusterSpec::new();
    let b1 = member(&cluster, 1);
    let b2 = member(&cluster, 2);
    let before = b1.wait_for_members(2, PATIENCE).unwrap();

    // The impostor: same cluster, node id 2, its own client ports.
    let mut impostor = Command::new(env!("CARGO_BIN_EXE_ordo-broker"))
        .args([
            "--node-id",
            "2",
            "--cluster",
            &cluster.name,
            "--group",
            &cluster.group.to_string(),
            "--listen",
            &free_tcp_addr().to_string(),
            "--metrics",
            &free_tcp_addr().to_string(),
        ])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = impostor.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > PATIENCE {
            let _ = impostor.kill();
            let _ = impostor.wait();
            let mut err = String::new();
            let _ = impostor.stderr.take().unwrap().read_to_string(&mut err);
            panic!("a second broker with node id 2 was not refused in {PATIENCE:?}:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    impostor
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    eprintln!(
        "impostor refused after {:?} ({status}):\n{err}",
        t0.elapsed()
    );
    assert!(!status.success(), "the impostor exited successfully: {err}");
    let last = err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    assert!(
        names_id(&err, 2),
        "the impostor's error does not name node id 2: {last}"
    );

    // The broker whose id was claimed says so in its log, as an error.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let log = b2.stderr();
        if log.lines().any(|l| l.contains("ERROR") && names_id(l, 2)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 2 logged no error naming its id being claimed:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The group is untouched: the same two members, same incarnations.
    let after = b1.wait_for_members(2, PATIENCE).unwrap();
    assert_eq!(
        after.members, before.members,
        "the impostor changed the view"
    );
    let v2 = b2.cluster_view().unwrap();
    assert_eq!(v2.members, before.members);
}

#[test]
fn a_broker_that_left_gracefully_comes_back_with_its_node_id() {
    let cluster = ClusterSpec::new();
    let b1 = member(&cluster, 1);
    let mut b2 = member(&cluster, 2);
    b1.wait_for_members(2, PATIENCE).unwrap();
    let old = b2.cluster_view().unwrap().this;

    b2.terminate();
    let status = b2.wait_exit(PATIENCE).expect("no exit after SIGTERM");
    assert!(status.success(), "{status}");
    b1.wait_for_members(1, PATIENCE).unwrap();

    let b2 = member(&cluster, 2);
    let v = b1.wait_for_members(2, PATIENCE).unwrap();
    let new = b2.cluster_view().unwrap().this;
    assert_eq!(new.node, old.node);
    assert_ne!(new.incarnation, old.incarnation);
    assert!(v.members.contains(&new), "{v:?}");
    assert!(!v.members.contains(&old), "{v:?}");
}

/// A supervisor restarts a crashed broker at once, before the others
/// noticed the crash: the old incarnation is gone (no heartbeats), so the
/// new one must be let in, not refused as a duplicate.
#[test]
fn a_broker_killed_and_restarted_at_once_rejoins_as_a_new_incarnation() {
    let cluster = ClusterSpec::new();
    let b1 = member(&cluster, 1);
    let mut b2 = member(&cluster, 2);
    let b3 = member(&cluster, 3);
    b1.wait_for_members(3, PATIENCE).unwrap();
    let old = b2.cluster_view().unwrap().this;

    b2.kill();
    let t0 = Instant::now();
    let b2 = member(&cluster, 2);
    let new = b2.cluster_view().unwrap().this;
    assert_ne!(new.incarnation, old.incarnation);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let views = [
            b1.cluster_view().unwrap(),
            b2.cluster_view().unwrap(),
            b3.cluster_view().unwrap(),
        ];
        if views
            .iter()
            .all(|v| v.members.len() == 3 && v.members.contains(&new) && !v.members.contains(&old))
            && views.windows(2).all(|w| w[0].view_id == w[1].view_id)
        {
            eprintln!(
                "restarted node 2 in one view with the others after {:?}",
                t0.elapsed()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted broker did not replace its old incarnation: {views:#?}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}
