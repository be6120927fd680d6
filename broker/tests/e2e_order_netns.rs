//! The ordering end-to-end workload (see `e2e_order_check`) under real
//! network faults: three `ordo-broker` processes, each in its own network
//! namespace on a bridge, with nftables dropping 10% of the multicast
//! datagrams arriving in every namespace. Every guarantee of every ordering
//! must hold, and the loss must have been real. Skips loudly without
//! root/iproute2/nftables.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod e2e_order_check;
mod netns;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use netns::Netns;

const BROKERS: usize = 3;

fn unique_group() -> SocketAddrV4 {
    let pid = std::process::id();
    SocketAddrV4::new(
        Ipv4Addr::new(239, 253, (pid % 251) as u8, (pid / 251 % 251) as u8),
        7400,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ordering_holds_under_10_percent_loss() {
    let Some(net) = Netns::create("e2e_order_netns", BROKERS) else {
        return;
    };
    let group = unique_group();
    let cluster = format!("order-netns-{}", std::process::id());
    // Declared after `net`, so dropped (killed) before the namespaces go.
    let brokers = net.start_brokers(&cluster, group);
    e2e_order_check::wait_members(&brokers, BROKERS);
    net.set_loss_all(group, 10);
    // Padded payloads span many datagrams, so the loss hits data and control.
    tokio::time::timeout(
        Duration::from_secs(180),
        e2e_order_check::run_and_check(&brokers, 300),
    )
    .await
    .expect("the workload did not finish in 180 s under 10% loss");
    let dropped: Vec<u64> = (0..BROKERS).map(|i| net.dropped(i)).collect();
    eprintln!("nftables dropped {dropped:?} datagrams per namespace");
    for (i, d) in dropped.iter().enumerate() {
        assert!(*d > 0, "nftables dropped nothing in namespace {i}");
    }
    net.set_loss_all(group, 0);
}
