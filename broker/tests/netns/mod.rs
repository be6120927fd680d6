//! Network-namespace harness for real-network tests: a private Linux bridge,
//! N namespaces wired to it by veth pairs, multicast routed onto the veth,
//! and nftables rules that drop a chosen share of incoming group datagrams
//! ([`Netns::set_loss`]) or every datagram from chosen peers (partitions,
//! symmetric or one-way: [`Netns::partition`], [`Netns::deafen`]).
//!
//! Names carry this process's pid and a per-process counter (`ordo-ns-<pid>-<k>-<i>`,
//! bridge `ob<pid>x<k>`, veths `ov…`/`op…`), so parallel tests and parallel
//! test binaries never collide, and leftovers of a crashed run are recognised
//! by their prefix and dead pid and removed by [`cleanup_leftovers`] (run
//! automatically before each setup). Everything this harness creates is
//! removed on `Drop`, panics included.
//!
//! Traffic never leaves the machine: the only addresses used are the
//! namespaces' own (10.77.<k>.1..) and the bridge's (10.77.<k>.254), which
//! lets the test process itself (in the root namespace) reach the brokers'
//! client and metrics ports. `<k>` is picked among /24s no interface of the
//! root namespace uses yet.
//!
//! Without root, `ip` or `nft`, [`Netns::create`] prints a line starting
//! `SKIPPED` and returns `None`; set `ORDO_NETNS_REQUIRED=1` (CI) to make that
//! a failure instead.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Prefix of every namespace this harness creates.
const NS_PREFIX: &str = "ordo-ns-";
/// Prefix of every bridge (interface names are limited to 15 bytes).
const BR_PREFIX: &str = "ob";
/// The nftables table holding the loss rules inside each namespace.
const NFT_TABLE: &str = "ordo_loss";
/// The nftables table holding the partition rules inside each namespace
/// (separate from the loss rules, so each can change without the other).
const NFT_PARTITION: &str = "ordo_partition";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// One namespace on the bridge.
#[derive(Debug)]
pub struct Node {
    /// The namespace's name (for `ip netns exec`).
    pub ns: String,
    /// The address of its veth, the one to use as `--iface`.
    pub addr: Ipv4Addr,
    /// Its veth's name inside the namespace.
    pub dev: String,
}

/// A bridge with N namespaces; removed with everything in it on drop.
#[derive(Debug)]
pub struct Netns {
    bridge: Option<String>,
    /// The bridge's address in the root namespace (the test process's side).
    bridge_addr: Ipv4Addr,
    nodes: Vec<Node>,
    /// Processes started inside the namespaces, killed (by pid) on drop.
    children: Vec<Child>,
}

impl Netns {
    /// Creates a bridge and `n` (1..=200) namespaces on it, or returns `None`
    /// after printing why when the host cannot run namespace tests.
    pub fn create(test: &str, n: usize) -> Option<Netns> {
        assert!((1..=200).contains(&n));
        if let Some(why) = unavailable() {
            let required = std::env::var("ORDO_NETNS_REQUIRED").is_ok_and(|v| v == "1");
            assert!(!required, "{test}: ORDO_NETNS_REQUIRED=1 but {why}");
            // Straight to the process's stderr: the test harness captures
            // eprintln! of passing tests, and a skip must be seen.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: {why} (namespace tests need root, iproute2 and nftables)"
            );
            return None;
        }
        cleanup_leftovers();

        let pid = std::process::id();
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut net = Netns {
            bridge: None,
            bridge_addr: Ipv4Addr::UNSPECIFIED,
            nodes: Vec::new(),
            children: Vec::new(),
        };
        // Any failure below panics; Drop removes whatever was created so far.
        let bridge = format!("{BR_PREFIX}{pid}x{k}");
        ip(&[
            "link",
            "add",
            "name",
            &bridge,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        net.bridge = Some(bridge.clone());
        let subnet = free_subnet(pid, k);
        let bridge_addr = Ipv4Addr::new(10, 77, subnet, 254);
        ip(&["addr", "add", &format!("{bridge_addr}/24"), "dev", &bridge]);
        ip(&["link", "set", &bridge, "up"]);
        net.bridge_addr = bridge_addr;

        for i in 0..n {
            let ns = format!("{NS_PREFIX}{pid}-{k}-{i}");
            let host = format!("ov{pid}x{k}n{i}");
            let peer = format!("op{pid}x{k}n{i}");
            assert!(host.len() <= 15, "interface name {host} too long");
            ip(&["netns", "add", &ns]);
            let addr = Ipv4Addr::new(10, 77, subnet, (i + 1) as u8);
            net.nodes.push(Node {
                ns: ns.clone(),
                addr,
                dev: peer.clone(),
            });
            ip(&["link", "add", &host, "type", "veth", "peer", "name", &peer]);
            ip(&["link", "set", &peer, "netns", &ns]);
            ip(&["link", "set", &host, "master", &bridge]);
            ip(&["link", "set", &host, "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                &peer,
            ]);
            ip(&["-n", &ns, "link", "set", &peer, "up"]);
            // Multicast leaves through the veth (there is no default route).
            ip(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", &peer]);
        }
        Some(net)
    }

    /// The namespaces, in creation order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The bridge's interface name.
    pub fn bridge(&self) -> &str {
        self.bridge.as_deref().unwrap_or("")
    }

    /// The root namespace's address on the bridge.
    pub fn bridge_addr(&self) -> Ipv4Addr {
        self.bridge_addr
    }

    /// Node `i`'s address (its `--iface`).
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        self.nodes[i].addr
    }

    /// A command that runs `program` inside node `i`'s namespace.
    pub fn command(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.nodes[i].ns]).arg(program);
        cmd
    }

    /// Runs a command in node `i`'s namespace to completion.
    pub fn run(&self, i: usize, program: &str, args: &[&str]) -> Output {
        self.command(i, program).args(args).output().unwrap()
    }

    /// Starts `cmd` (from [`Netns::command`]); it is killed when the harness
    /// drops. `ip netns exec` execs the program, so the pid is the program's.
    pub fn spawn(&mut self, mut cmd: Command) -> &mut Child {
        let child = cmd.spawn().unwrap();
        self.children.push(child);
        self.children.last_mut().unwrap()
    }

    /// Drops `percent`% (chosen at random per datagram) of the UDP datagrams
    /// to `group` arriving in node `i`'s namespace; 0 removes the rule,
    /// 100 cuts the node off the group. Replaces any earlier rule.
    pub fn set_loss(&self, i: usize, group: SocketAddrV4, percent: u8) {
        assert!(percent <= 100);
        let ns = &self.nodes[i].ns;
        let rule = if percent == 0 {
            String::new()
        } else {
            format!(
                "ip daddr {} udp dport {} numgen random mod 100 < {percent} counter drop",
                group.ip(),
                group.port()
            )
        };
        // Recreate the table so the rule (and its counter) is the only one.
        let script = format!(
            "table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n\
             table inet {NFT_TABLE} {{\n  chain input {{\n    \
             type filter hook input priority filter; policy accept;\n    {rule}\n  }}\n}}\n"
        );
        run_stdin("ip", &["netns", "exec", ns, "nft", "-f", "-"], &script);
    }

    /// [`Netns::set_loss`] on every node.
    pub fn set_loss_all(&self, group: SocketAddrV4, percent: u8) {
        for i in 0..self.nodes.len() {
            self.set_loss(i, group, percent);
        }
    }

    /// Makes node `i` deaf to every UDP datagram (multicast or not) sent by
    /// the nodes in `from`; TCP, and so the test's clients and `/healthz`
    /// probes, still get through. An empty `from` removes the rule.
    /// Replaces any earlier partition rule of node `i`.
    pub fn deafen(&self, i: usize, from: &[usize]) {
        let ns = &self.nodes[i].ns;
        let rule = if from.is_empty() {
            String::new()
        } else {
            let addrs: Vec<String> = from
                .iter()
                .map(|&j| self.nodes[j].addr.to_string())
                .collect();
            format!(
                "ip saddr {{ {} }} meta l4proto udp counter drop",
                addrs.join(", ")
            )
        };
        let script = format!(
            "table inet {NFT_PARTITION}\ndelete table inet {NFT_PARTITION}\n\
             table inet {NFT_PARTITION} {{\n  chain input {{\n    \
             type filter hook input priority filter; policy accept;\n    {rule}\n  }}\n}}\n"
        );
        run_stdin("ip", &["netns", "exec", ns, "nft", "-f", "-"], &script);
    }

    /// Splits the nodes into `sides` that hear nobody outside their own side
    /// (every node should be on exactly one side). Replaces earlier
    /// partition rules; [`Netns::heal`] removes them. The namespaces are set
    /// at once (one `nft` per namespace, in parallel): one after the other,
    /// on a loaded machine, the last could be cut a second after the first,
    /// and a partition meant to be shorter than failure detection was not.
    pub fn partition(&self, sides: &[&[usize]]) {
        let mut deaf_to: Vec<(usize, Vec<usize>)> = Vec::new();
        for side in sides {
            let others: Vec<usize> = (0..self.nodes.len())
                .filter(|j| !side.contains(j))
                .collect();
            deaf_to.extend(side.iter().map(|&i| (i, others.clone())));
        }
        std::thread::scope(|s| {
            for (i, from) in &deaf_to {
                s.spawn(move || self.deafen(*i, from));
            }
        });
    }

    /// [`Netns::partition`] that ends on its own: each node drops the other
    /// sides' datagrams for exactly `hold` from the moment its own rule is
    /// set (the addresses sit in an nftables set whose elements time out),
    /// however slow the `nft` commands are. A partition meant to be shorter
    /// than failure detection stays so on a loaded machine, where setting
    /// five namespaces took up to a second and healing them as long again.
    /// The rules stay (inert, with their counters) until [`Netns::heal`].
    pub fn partition_for(&self, sides: &[&[usize]], hold: Duration) {
        let ms = hold.as_millis().max(1);
        let mut scripts: Vec<(usize, String)> = Vec::new();
        for side in sides {
            let others: Vec<String> = (0..self.nodes.len())
                .filter(|j| !side.contains(j))
                .map(|j| format!("{} timeout {ms}ms", self.nodes[j].addr))
                .collect();
            let script = format!(
                "table inet {NFT_PARTITION}\ndelete table inet {NFT_PARTITION}\n\
                 table inet {NFT_PARTITION} {{\n  \
                 set cut {{ type ipv4_addr; flags timeout; elements = {{ {} }} }}\n  \
                 chain input {{\n    \
                 type filter hook input priority filter; policy accept;\n    \
                 ip saddr @cut meta l4proto udp counter drop\n  }}\n}}\n",
                others.join(", ")
            );
            scripts.extend(side.iter().map(|&i| (i, script.clone())));
        }
        std::thread::scope(|s| {
            for (i, script) in &scripts {
                let ns = self.nodes[*i].ns.as_str();
                s.spawn(move || run_stdin("ip", &["netns", "exec", ns, "nft", "-f", "-"], script));
            }
        });
    }

    /// Removes every partition rule (loss rules stay), in every namespace at
    /// once (see [`Netns::partition`]).
    pub fn heal(&self) {
        std::thread::scope(|s| {
            for i in 0..self.nodes.len() {
                s.spawn(move || self.deafen(i, &[]));
            }
        });
    }

    /// [`Netns::heal`], returning how many datagrams the partition rules
    /// dropped (each namespace's counters are read just before its rule
    /// goes, so the count does not lengthen the partition).
    pub fn heal_counted(&self) -> u64 {
        std::thread::scope(|s| {
            let counts: Vec<_> = (0..self.nodes.len())
                .map(|i| {
                    s.spawn(move || {
                        let n = self.partition_dropped(i);
                        self.deafen(i, &[]);
                        n
                    })
                })
                .collect();
            counts.into_iter().map(|h| h.join().unwrap()).sum()
        })
    }

    /// Datagrams the partition rule dropped in node `i` since it was set.
    pub fn partition_dropped(&self, i: usize) -> u64 {
        self.counted(i, NFT_PARTITION)
    }

    /// Datagrams the loss rule dropped in node `i` since it was set.
    pub fn dropped(&self, i: usize) -> u64 {
        self.counted(i, NFT_TABLE)
    }

    /// The sum of the counters of nftables `table` in node `i`.
    fn counted(&self, i: usize, table: &str) -> u64 {
        let out = checked(Command::new("ip").args([
            "netns",
            "exec",
            &self.nodes[i].ns,
            "nft",
            "list",
            "table",
            "inet",
            table,
        ]));
        let text = String::from_utf8_lossy(&out.stdout);
        text.split("counter packets ")
            .skip(1)
            .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes first: a namespace with live processes outlives `ip netns del`.
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Deleting a namespace deletes its veth end, and with it the host end.
        for node in &self.nodes {
            let _ = quiet(&["netns", "del", &node.ns]);
        }
        if let Some(bridge) = &self.bridge {
            let _ = quiet(&["link", "del", bridge]);
        }
    }
}

/// Removes namespaces and bridges this harness left behind in runs whose
/// process is gone (a crash or SIGKILL skips `Drop`).
pub fn cleanup_leftovers() {
    let alive = |pid: &str| std::path::Path::new(&format!("/proc/{pid}")).exists();
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(name) = line.split_whitespace().next() else {
                continue;
            };
            let Some(rest) = name.strip_prefix(NS_PREFIX) else {
                continue;
            };
            let pid = rest.split('-').next().unwrap_or("");
            if !pid.is_empty() && pid.chars().all(|c| c.is_ascii_digit()) && !alive(pid) {
                let _ = quiet(&["netns", "del", name]);
            }
        }
    }
    if let Ok(out) = Command::new("ip")
        .args(["-o", "link", "show", "type", "bridge"])
        .output()
    {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // "12: ob1234x0: <...>"
            let Some(name) = line.split(": ").nth(1) else {
                continue;
            };
            let name = name.split('@').next().unwrap_or(name);
            let Some(rest) = name.strip_prefix(BR_PREFIX) else {
                continue;
            };
            let Some((pid, k)) = rest.split_once('x') else {
                continue;
            };
            let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
            if digits(pid) && digits(k) && !alive(pid) {
                let _ = quiet(&["link", "del", name]);
            }
        }
    }
}

/// A third octet for 10.77.<k>.0/24 that no root-namespace address uses,
/// starting from one derived from pid and counter so parallel runs spread out.
fn free_subnet(pid: u32, k: u32) -> u8 {
    let out = checked(Command::new("ip").args(["-4", "-o", "addr", "show"]));
    let used = String::from_utf8_lossy(&out.stdout).into_owned();
    let start = pid.wrapping_mul(31).wrapping_add(k.wrapping_mul(7)) % 250;
    (0..250)
        .map(|i| ((start + i) % 250) as u8)
        .find(|c| !used.contains(&format!(" 10.77.{c}.")))
        .expect("all 250 test subnets 10.77.x.0/24 are in use; run scripts/netns-cleanup.sh")
}

/// Why namespace tests cannot run here, if they cannot.
fn unavailable() -> Option<String> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        });
    if uid.as_deref() != Some("0") {
        return Some("not running as root".into());
    }
    for (tool, arg) in [("ip", "-V"), ("nft", "--version")] {
        let ok = Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Some(format!(
                "`{tool}` is not installed (apt-get install -y iproute2 nftables)"
            ));
        }
    }
    None
}

fn ip(args: &[&str]) {
    checked(Command::new("ip").args(args));
}

fn quiet(args: &[&str]) -> std::io::Result<std::process::ExitStatus> {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
}

fn checked(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn run_stdin(program: &str, args: &[&str], input: &str) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?} failed on:\n{input}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    /// Starts one `ordo-broker` in each namespace (node ids 1..=n) on
    /// `group`, joined on the namespace's own address with TTL 1, clients on
    /// `<addr>:7411` and metrics on `<addr>:9411`. Keep the result declared
    /// after the `Netns`, so the brokers are killed before the namespaces go.
    pub fn start_brokers(
        &self,
        cluster: &str,
        group: SocketAddrV4,
    ) -> Vec<ordo_broker::testkit::BrokerProcess> {
        self.start_brokers_with(cluster, group, &[])
    }

    /// [`Netns::start_brokers`] with `extra` arguments for every broker.
    pub fn start_brokers_with(
        &self,
        cluster: &str,
        group: SocketAddrV4,
        extra: &[&str],
    ) -> Vec<ordo_broker::testkit::BrokerProcess> {
        (0..self.nodes().len())
            .map(|i| self.start_broker(i, cluster, group, extra))
            .collect()
    }

    /// Starts the broker of node `i` (node id `i + 1`) as
    /// [`Netns::start_brokers`] does, e.g. again after it was killed: the
    /// same node id, addresses and arguments, a new incarnation. Waits until
    /// it serves clients and `/healthz` answers 200.
    pub fn start_broker(
        &self,
        i: usize,
        cluster: &str,
        group: SocketAddrV4,
        extra: &[&str],
    ) -> ordo_broker::testkit::BrokerProcess {
        let bin = env!("CARGO_BIN_EXE_ordo-broker");
        let addr = self.addr(i);
        ordo_broker::testkit::BrokerProcess::builder()
            .binary("ip")
            .args(["netns", "exec", self.nodes()[i].ns.as_str(), bin])
            .args([
                "--node-id".to_string(),
                (i + 1).to_string(),
                "--cluster".into(),
                cluster.to_string(),
                "--group".into(),
                group.to_string(),
                "--iface".into(),
                addr.to_string(),
                "--ttl".into(),
                "1".into(),
                "--listen".into(),
                format!("{addr}:7411"),
                "--metrics".into(),
                format!("{addr}:9411"),
            ])
            .args(extra.iter().copied())
            .start()
    }
}
