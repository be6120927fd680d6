//! End-to-end tests of the cluster key with real `ordo-broker` processes on
//! loopback multicast: brokers sharing a key (some mid-way through a key
//! rotation) form one view and deliver; a broker with another key, and one
//! with none, are never members of that view (as `ordo cluster` reports
//! it), and the keyed brokers count their frames as dropped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{broker, metric, Client};
use ordo_broker::testkit::{BrokerProcess, ClusterSpec};
use ordo_wire::Ordering;

const OLD: &str = "the-old-cluster-secret-0123456789";
const NEW: &str = "the-new-cluster-secret-0123456789";

fn key_file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

fn keyed(cluster: &ClusterSpec, node: u32, key: Option<&Path>) -> BrokerProcess {
    let mut b = broker()
        .cluster(cluster)
        .args(["--node-id".to_string(), node.to_string()]);
    if let Some(k) = key {
        b = b.env("ORDO_CLUSTER_KEY_FILE", k.to_str().unwrap());
    }
    b.start()
}

fn members(b: &BrokerProcess) -> Vec<u32> {
    b.cluster_view()
        .map(|v| v.members.iter().map(|m| m.node.0).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_cluster_works_and_keeps_other_keys_out() {
    let dir = tempfile::tempdir().unwrap();
    // Mid-rotation: brokers 1 and 3 added the new key second, broker 2
    // already moved it first. Broker 1's file is readable by others.
    let step1 = key_file(
        dir.path(),
        "step1",
        &format!("# rotation step 1\n{OLD}\n{NEW}\n"),
        0o644,
    );
    let step1_private = key_file(dir.path(), "step1p", &format!("{OLD}\n{NEW}\n"), 0o600);
    let step2 = key_file(dir.path(), "step2", &format!("{NEW}\n{OLD}\n"), 0o600);
    let wrong = key_file(
        dir.path(),
        "wrong",
        "somebody-else's-key-0123456789\n",
        0o600,
    );
    let cluster = ClusterSpec::new();
    let b1 = keyed(&cluster, 1, Some(&step1));
    let b2 = keyed(&cluster, 2, Some(&step2));
    let b3 = keyed(&cluster, 3, Some(&step1_private));
    b1.wait_for_members(3, common::WAIT).unwrap();
    let intruder = keyed(&cluster, 4, Some(&wrong));
    let unkeyed = keyed(&cluster, 5, None);

    // For a while (the outsiders discover, try to join, found views of
    // their own), the keyed view never holds them.
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        for b in [&b1, &b2, &b3] {
            let m = members(b);
            assert!(!m.contains(&4) && !m.contains(&5), "{m:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(members(&b3), vec![1, 2, 3]);
    assert_eq!(members(&intruder), vec![4], "the intruder is alone");
    assert_eq!(members(&unkeyed), vec![5], "the unkeyed broker is alone");

    // The keyed cluster delivers across brokers.
    let mut sub = Client::connect(b3.addr()).await;
    sub.subscribe(1, "keyed.>").await;
    let mut publ = Client::connect(b2.addr()).await;
    publ.declare("keyed.t", Ordering::Fifo, false).await;
    for i in 0..20 {
        publ.publish("keyed.t", format!("m{i}")).await;
    }
    for i in 0..20 {
        let d = sub.message().await;
        assert_eq!(&d.payload[..], format!("m{i}").as_bytes());
    }

    // Every keyed broker counted the outsiders' frames; the unkeyed one
    // counted the keyed brokers' frames.
    for b in [&b1, &b2, &b3] {
        assert!(
            metric(b, r#"ordo_datagrams_dropped_total{reason="bad_mac"}"#) > 0.0,
            "{}",
            b.stderr()
        );
        assert!(
            metric(
                b,
                r#"ordo_datagrams_dropped_total{reason="unauthenticated"}"#
            ) > 0.0
        );
    }
    assert!(
        metric(
            &unkeyed,
            r#"ordo_datagrams_dropped_total{reason="unauthenticated"}"#
        ) > 0.0
    );
    assert_eq!(
        metric(
            &unkeyed,
            r#"ordo_datagrams_dropped_total{reason="bad_mac"}"#
        ),
        0.0
    );

    // The loose file mode is warned about, once, without the key.
    let log = b1.stderr();
    assert!(log.contains("readable by its group or others"), "{log}");
    assert!(!b2.stderr().contains("readable by its group or others"));
    for b in [&b1, &b2, &b3, &intruder, &unkeyed] {
        let log = b.stderr();
        assert!(
            !log.contains(OLD) && !log.contains(NEW),
            "key material logged: {log}"
        );
    }
    assert!(b2.stderr().contains("cluster key"), "{}", b2.stderr());
}

#[test]
fn a_bad_cluster_key_file_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let short = key_file(dir.path(), "short", "# a comment\nshort-secret\n", 0o600);
    // (An unreadable file: e2e_single.rs.)
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ordo-broker"))
        .args(["--cluster-key-file", short.to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the key on line 2 is 12 bytes; each key must be at least 16 bytes"),
        "{stderr}"
    );
    assert!(!stderr.contains("short-secret"), "key material: {stderr}");
}
