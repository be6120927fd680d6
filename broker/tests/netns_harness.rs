//! Proves the namespace harness: raw UDP multicast (through the broker's own
//! `Transport`) between two namespaces on a bridge, first without loss, then
//! with nftables dropping 30% — the loss must be real and of the right size;
//! a timed partition ends on its own.
//! Also checks that the harness removes everything, leftovers of dead runs
//! included. Skips loudly without root/iproute2/nftables.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod netns;

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use netns::Netns;
use ordo_broker::shell::transport::{Transport, TransportConfig, MAX_DATAGRAM};

/// Datagrams per run: enough that 30% ± 8% is more than 7 standard deviations.
const COUNT: u64 = 2000;
const HELPER: &str = "netns_helper";
const MARK: &str = "ORDO-HELPER";

/// Runs inside a namespace when re-executed by the tests below (as
/// `<this test binary> --exact netns_helper --ignored`), as sender or receiver.
#[test]
#[ignore = "helper the namespace tests run inside their namespaces"]
fn netns_helper() {
    let Ok(role) = std::env::var("ORDO_NETNS_ROLE") else {
        return;
    };
    let group: SocketAddrV4 = std::env::var("ORDO_NETNS_GROUP").unwrap().parse().unwrap();
    let iface: Ipv4Addr = std::env::var("ORDO_NETNS_IFACE").unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let t = Transport::open(&TransportConfig {
            group,
            iface,
            ttl: 1,
            recv_buffer: 4 << 20,
            send_buffer: 1 << 20,
        })
        .unwrap();
        match role.as_str() {
            "recv" => {
                println!("{MARK} ready");
                let mut seen = std::collections::BTreeSet::new();
                let mut buf = vec![0u8; MAX_DATAGRAM];
                let deadline = Instant::now() + Duration::from_secs(30);
                // Stop once the sender has been quiet for a while.
                while Instant::now() < deadline {
                    match tokio::time::timeout(Duration::from_millis(1500), t.recv(&mut buf)).await
                    {
                        Ok(Ok(8)) => {
                            seen.insert(u64::from_be_bytes(buf[..8].try_into().unwrap()));
                        }
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => panic!("recv: {e}"),
                        Err(_) if !seen.is_empty() => break,
                        Err(_) => {}
                    }
                }
                println!("{MARK} received {}", seen.len());
            }
            "send" => {
                for seq in 0..COUNT {
                    t.send(&Bytes::copy_from_slice(&seq.to_be_bytes()))
                        .await
                        .unwrap();
                    // Pace so no socket buffer overflows: only nftables may drop.
                    if seq % 20 == 19 {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
                println!("{MARK} sent {COUNT}");
            }
            other => panic!("unknown role {other}"),
        }
    });
}

/// A helper process in node `i`.
fn helper(net: &Netns, i: usize, role: &str, group: SocketAddrV4) -> Command {
    let mut cmd = net.command(i, std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        HELPER,
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("ORDO_NETNS_ROLE", role)
    .env("ORDO_NETNS_GROUP", group.to_string())
    .env("ORDO_NETNS_IFACE", net.addr(i).to_string())
    .stdout(Stdio::piped());
    cmd
}

/// Sends COUNT datagrams from node 0 to node 1; returns how many arrived.
fn exchange(net: &mut Netns, group: SocketAddrV4) -> u64 {
    let recv = net.spawn(helper(net, 1, "recv", group));
    let mut lines = BufReader::new(recv.stdout.take().unwrap()).lines();
    // Wait until the receiver has joined the group.
    loop {
        let line = lines
            .next()
            .expect("receiver exited before joining")
            .unwrap();
        // The test harness may print its own text before ours on a line.
        if line.contains(&format!("{MARK} ready")) {
            break;
        }
    }
    let sent = helper(net, 0, "send", group).output().unwrap();
    assert!(sent.status.success(), "sender failed: {sent:?}");
    assert!(String::from_utf8_lossy(&sent.stdout).contains(&format!("{MARK} sent {COUNT}")));
    // Read to the end so the helper's closing output never hits a closed pipe.
    let mut received = None;
    for line in lines {
        let line = line.unwrap();
        if let Some((_, n)) = line.split_once(&format!("{MARK} received ")) {
            received = Some(n.split_whitespace().next().unwrap().parse().unwrap());
        }
    }
    received.expect("receiver ended without reporting")
}

fn unique_group() -> SocketAddrV4 {
    let pid = std::process::id();
    SocketAddrV4::new(
        Ipv4Addr::new(239, 253, (pid % 251) as u8, (pid / 251 % 251) as u8),
        17_000 + (pid % 20_000) as u16,
    )
}

#[test]
fn multicast_crosses_the_bridge_and_nftables_drops_the_chosen_share() {
    let Some(mut net) = Netns::create("netns_harness", 2) else {
        return;
    };
    let group = unique_group();

    // No rule: everything arrives, so later loss can only be the rule's.
    let got = exchange(&mut net, group);
    assert_eq!(got, COUNT, "datagrams lost without any loss rule");

    net.set_loss(1, group, 30);
    let got = exchange(&mut net, group);
    let dropped = net.dropped(1);
    let lost = COUNT - got;
    let fraction = lost as f64 / COUNT as f64;
    eprintln!("30% rule: received {got}/{COUNT}, nftables dropped {dropped}");
    assert!(
        (0.22..=0.38).contains(&fraction),
        "lost {fraction:.3} of datagrams under a 30% rule"
    );
    // Every missing datagram was dropped by the rule, and nothing else was.
    assert_eq!(dropped, lost, "loss not explained by the nftables rule");

    // Removing the rule restores delivery.
    net.set_loss(1, group, 0);
    assert_eq!(exchange(&mut net, group), COUNT);
}

/// A timed partition (`Netns::partition_for`) ends in the kernel on its
/// own: once its time is up nothing is dropped, with the rule still there.
/// (That it drops while it holds, the short-partition test of
/// `netns_failures` shows with the rule's counters.)
#[test]
fn a_timed_partition_ends_by_itself() {
    let Some(mut net) = Netns::create("netns_timed_cut", 2) else {
        return;
    };
    let group = unique_group();
    net.partition_for(&[&[0], &[1]], Duration::from_millis(50));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        exchange(&mut net, group),
        COUNT,
        "the expired cut still drops"
    );
    assert_eq!(net.partition_dropped(1), 0);
    net.heal();
}

#[test]
fn everything_is_removed_on_drop_and_leftovers_of_dead_runs_are_swept() {
    let Some(net) = Netns::create("netns_cleanup", 2) else {
        return;
    };
    let names: Vec<String> = net.nodes().iter().map(|n| n.ns.clone()).collect();
    let bridge = net.bridge().to_string();
    let list = || {
        String::from_utf8(
            Command::new("ip")
                .args(["netns", "list"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
    };
    assert!(names.iter().all(|n| list().contains(n.as_str())));
    drop(net);
    let after = list();
    for n in &names {
        assert!(!after.contains(n.as_str()), "{n} survived drop");
    }
    let links = String::from_utf8(
        Command::new("ip")
            .args(["-o", "link"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        !links.contains(&format!("{bridge}:")) && !links.contains(&format!("master {bridge} ")),
        "links survived drop:\n{links}"
    );

    // A namespace and bridge named for a process that no longer exists.
    let mut dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    let stale_ns = format!("ordo-ns-{dead_pid}-0-0");
    let stale_br = format!("ob{dead_pid}x0");
    assert!(Command::new("ip")
        .args(["netns", "add", &stale_ns])
        .status()
        .unwrap()
        .success());
    assert!(Command::new("ip")
        .args(["link", "add", "name", &stale_br, "type", "bridge"])
        .status()
        .unwrap()
        .success());
    netns::cleanup_leftovers();
    assert!(
        !list().contains(stale_ns.as_str()),
        "stale namespace not swept"
    );
    let links = String::from_utf8(
        Command::new("ip")
            .args(["-o", "link"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(!links.contains(&stale_br), "stale bridge not swept");
}
