//! The multicast transport: one UDP socket joined to the group (socket2 for
//! the options tokio does not expose), driven by tokio.
//!
//! The socket is bound to the *group address* (not 0.0.0.0): on Linux that
//! makes the kernel deliver only datagrams addressed to our group, so two
//! clusters sharing a port on one host never see each other's traffic.
//! `SO_REUSEADDR` + `SO_REUSEPORT` let several brokers on one host bind the
//! same group and port; multicast loop is on so they hear each other.
//! `IP_MULTICAST_ALL` is off so memberships joined by other sockets of the
//! process never leak into ours.
//!
//! Batching: `send_batch`/`recv_batch` move many datagrams per wake-up of the
//! task (one readiness wait, then non-blocking calls until the socket is
//! drained or the batch is full). Received datagrams land back to back in a
//! shared arena and leave as `Bytes` slices of it (no copy, no allocation
//! per datagram). They still make one syscall per datagram;
//! `sendmmsg`/`recvmmsg` (or GSO/GRO) need raw libc calls that socket2 0.6
//! does not wrap and `unsafe` is denied workspace-wide.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use socket2::{Domain, Protocol, Socket, Type};

use crate::metrics::Metrics;

/// The largest UDP payload over IPv4 (65535 - 20 IP - 8 UDP); a receive slot
/// of this size can never truncate a datagram.
pub const MAX_DATAGRAM: usize = 65_507;

/// How to open the group socket.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Multicast group and port, e.g. 239.255.77.1:7400. Port 0 lets the
    /// kernel pick a free port (tests); [`Transport::group`] reports it.
    pub group: SocketAddrV4,
    /// Interface address to join on and send from (127.0.0.1 by default).
    pub iface: Ipv4Addr,
    /// Multicast TTL (0 keeps datagrams on the host).
    pub ttl: u32,
    /// Requested SO_RCVBUF in bytes (0 keeps the kernel default); a warning
    /// is logged when the kernel clamps it.
    pub recv_buffer: usize,
    /// Requested SO_SNDBUF in bytes (0 keeps the kernel default); a warning
    /// is logged when the kernel clamps it.
    pub send_buffer: usize,
}

/// The group socket.
#[derive(Debug)]
pub struct Transport {
    socket: tokio::net::UdpSocket,
    group: SocketAddrV4,
    loss: Option<InjectedLoss>,
}

/// Deliberate receive loss for tests (`--inject-loss-percent`), in the
/// spirit of JGroups' DISCARD: lets NAK repair be exercised on loopback
/// without root. Every drop is counted as reason `injected`.
#[derive(Debug)]
struct InjectedLoss {
    percent: u64,
    /// xorshift64 state; a datagram's fate needs no better randomness.
    state: AtomicU64,
    metrics: Arc<Metrics>,
}

impl InjectedLoss {
    fn drop_next(&self) -> bool {
        let mut x = self.state.load(AtomicOrdering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state.store(x, AtomicOrdering::Relaxed);
        let dropped = x % 100 < self.percent;
        if dropped {
            self.metrics.datagram_dropped("injected");
        }
        dropped
    }
}

impl Transport {
    /// Opens the socket and joins the group. Must be called inside a tokio runtime.
    ///
    /// Fails with `InvalidInput` when the group address is not an IPv4
    /// multicast address, and with the OS error (annotated with the option
    /// that failed) for anything the kernel refuses.
    pub fn open(config: &TransportConfig) -> io::Result<Transport> {
        let group_ip = *config.group.ip();
        if !group_ip.is_multicast() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "group address {} is not an IPv4 multicast address \
                     (use 224.0.0.0/4, e.g. 239.255.77.1:7400)",
                    config.group
                ),
            ));
        }
        if config.ttl > 255 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("multicast TTL {} is out of range 0..=255", config.ttl),
            ));
        }

        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
            .map_err(|e| context(e, "creating the UDP socket"))?;
        socket
            .set_reuse_address(true)
            .map_err(|e| context(e, "setting SO_REUSEADDR"))?;
        socket
            .set_reuse_port(true)
            .map_err(|e| context(e, "setting SO_REUSEPORT"))?;
        if config.recv_buffer > 0 {
            socket
                .set_recv_buffer_size(config.recv_buffer)
                .map_err(|e| context(e, "setting SO_RCVBUF"))?;
            let got = socket
                .recv_buffer_size()
                .map_err(|e| context(e, "reading SO_RCVBUF"))?;
            warn_if_clamped("SO_RCVBUF", "net.core.rmem_max", config.recv_buffer, got);
        }
        if config.send_buffer > 0 {
            socket
                .set_send_buffer_size(config.send_buffer)
                .map_err(|e| context(e, "setting SO_SNDBUF"))?;
            let got = socket
                .send_buffer_size()
                .map_err(|e| context(e, "reading SO_SNDBUF"))?;
            warn_if_clamped("SO_SNDBUF", "net.core.wmem_max", config.send_buffer, got);
        }

        // Binding the group address (not INADDR_ANY) is the Linux way to
        // receive only this group's datagrams on a shared port.
        let bind = SocketAddrV4::new(group_ip, config.group.port());
        socket
            .bind(&SocketAddr::V4(bind).into())
            .map_err(|e| context(e, &format!("binding {bind}")))?;
        socket
            .join_multicast_v4(&group_ip, &config.iface)
            .map_err(|e| context(e, &format!("joining {group_ip} on {}", config.iface)))?;
        socket
            .set_multicast_if_v4(&config.iface)
            .map_err(|e| context(e, &format!("setting IP_MULTICAST_IF {}", config.iface)))?;
        socket
            .set_multicast_ttl_v4(config.ttl)
            .map_err(|e| context(e, "setting IP_MULTICAST_TTL"))?;
        // Brokers sharing a host hear each other (and a broker hears itself;
        // the engine drops its own frames by origin).
        socket
            .set_multicast_loop_v4(true)
            .map_err(|e| context(e, "setting IP_MULTICAST_LOOP"))?;
        socket
            .set_multicast_all_v4(false)
            .map_err(|e| context(e, "clearing IP_MULTICAST_ALL"))?;
        socket
            .set_nonblocking(true)
            .map_err(|e| context(e, "setting O_NONBLOCK"))?;

        // With port 0 the kernel chose one: send to that.
        let port = match socket.local_addr()?.as_socket() {
            Some(SocketAddr::V4(local)) => local.port(),
            _ => config.group.port(),
        };
        let group = SocketAddrV4::new(group_ip, port);
        let socket = tokio::net::UdpSocket::from_std(socket.into())
            .map_err(|e| context(e, "registering the socket with tokio"))?;
        tracing::debug!(%group, iface = %config.iface, ttl = config.ttl, "multicast transport open");
        Ok(Transport {
            socket,
            group,
            loss: None,
        })
    }

    /// Testing only: drops `percent`% of received datagrams before they are
    /// returned, counting each in `metrics` as reason `injected`.
    pub fn with_injected_loss(mut self, percent: u8, seed: u64, metrics: Arc<Metrics>) -> Self {
        self.loss = (percent > 0).then(|| InjectedLoss {
            percent: u64::from(percent.min(100)),
            // xorshift must not start at zero.
            state: AtomicU64::new(seed | 1),
            metrics,
        });
        self
    }

    fn injected_drop(&self) -> bool {
        self.loss.as_ref().is_some_and(InjectedLoss::drop_next)
    }

    /// The group address and port datagrams are sent to (with the port the
    /// kernel picked when the configuration said 0).
    pub fn group(&self) -> SocketAddrV4 {
        self.group
    }

    /// Receives one datagram into `buf`, returning its length. A datagram
    /// longer than `buf` is truncated (use [`MAX_DATAGRAM`] to rule that out).
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let (n, _from) = self.recv_from(buf).await?;
        Ok(n)
    }

    /// Receives one datagram into `buf`, returning its length and sender.
    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        loop {
            let got = self.socket.recv_from(buf).await?;
            if !self.injected_drop() {
                return Ok(got);
            }
        }
    }

    /// Multicasts one datagram to the group.
    pub async fn send(&self, datagram: &Bytes) -> io::Result<()> {
        self.socket.send_to(datagram, self.group).await.map(|_| ())
    }

    /// Multicasts every datagram, in order, waiting for socket space as
    /// needed. Returns how many were sent; on an error the ones before it
    /// were sent and the rest were not. Not cancel-safe: dropping the
    /// future midway leaves an unknown prefix sent.
    pub async fn send_batch(&self, datagrams: &[Bytes]) -> io::Result<usize> {
        let mut sent = 0;
        while sent < datagrams.len() {
            self.socket.writable().await?;
            // Send until the kernel buffer is full, then wait again.
            while let Some(datagram) = datagrams.get(sent) {
                match self
                    .socket
                    .try_send_to(datagram, SocketAddr::V4(self.group))
                {
                    Ok(_) => sent += 1,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(sent)
    }

    /// Waits for at least one datagram, then takes every datagram already
    /// queued, up to the batch's capacity. Returns the number received;
    /// read them with [`RecvBatch::iter`].
    ///
    /// Cancel-safe (usable in `tokio::select!`): the only await is the
    /// readiness wait, before anything is taken from the socket; a cancelled
    /// call loses no datagram but clears the batch.
    pub async fn recv_batch(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        batch.datagrams.clear();
        loop {
            self.socket.readable().await?;
            while batch.datagrams.len() < batch.slots {
                batch.make_room();
                let mut slot = (&mut batch.arena).limit(batch.slot_size);
                match self.socket.try_recv_buf_from(&mut slot) {
                    Ok(_) if self.injected_drop() => batch.arena.clear(),
                    Ok(_) => batch.datagrams.push(batch.arena.split().freeze()),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        // Keep what was already received; the error shows next call.
                        if batch.datagrams.is_empty() {
                            return Err(e);
                        }
                        break;
                    }
                }
            }
            // Readiness can be spurious; wait again if nothing came.
            if !batch.datagrams.is_empty() {
                return Ok(batch.datagrams.len());
            }
        }
    }
}

/// Bytes of one receive arena: datagrams are received back to back into
/// it and handed out as shared slices, so receiving copies nothing after
/// the kernel and allocates once per arena, not once per datagram.
const ARENA_BYTES: usize = 256 * 1024;

/// Reusable receive state for [`Transport::recv_batch`]: up to `slots`
/// datagrams of up to `slot_size` bytes per call.
///
/// Datagrams are received into an arena ([`ARENA_BYTES`], or one slot if
/// larger) and returned as [`Bytes`] slices of it: whoever keeps a
/// datagram (or a payload sliced from it) keeps its arena alive; a new
/// arena is allocated when the current one has no room for a whole slot.
#[derive(Debug)]
pub struct RecvBatch {
    arena: BytesMut,
    datagrams: Vec<Bytes>,
    slots: usize,
    slot_size: usize,
}

impl RecvBatch {
    /// Room for `slots` datagrams (at least 1) of up to `slot_size` bytes
    /// (at least 1; a longer datagram is truncated, so pass [`MAX_DATAGRAM`]
    /// unless frames are known to be smaller).
    pub fn new(slots: usize, slot_size: usize) -> RecvBatch {
        let slots = slots.max(1);
        let slot_size = slot_size.max(1);
        RecvBatch {
            arena: BytesMut::with_capacity(ARENA_BYTES.max(slot_size)),
            datagrams: Vec::with_capacity(slots),
            slots,
            slot_size,
        }
    }

    /// Makes sure the arena can take a whole slot.
    fn make_room(&mut self) {
        if self.arena.capacity() - self.arena.len() < self.slot_size {
            self.arena = BytesMut::with_capacity(ARENA_BYTES.max(self.slot_size));
        }
    }

    /// The datagrams of the last `recv_batch`, in arrival order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.datagrams.iter().map(|d| &d[..])
    }

    /// Takes the datagrams of the last `recv_batch`, in arrival order,
    /// without copying them.
    pub fn drain(&mut self) -> std::vec::Drain<'_, Bytes> {
        self.datagrams.drain(..)
    }

    /// How many datagrams the last `recv_batch` returned (and are not drained yet).
    pub fn len(&self) -> usize {
        self.datagrams.len()
    }

    /// True when the last `recv_batch` returned nothing (or none ran yet).
    pub fn is_empty(&self) -> bool {
        self.datagrams.is_empty()
    }
}

/// Largest group datagram chosen from an interface's MTU: loopback's 64 KiB
/// MTU gives this (a round figure under the 65,507-byte UDP maximum, the
/// size `bench/goals.sh big` was measured with).
pub const AUTO_DATAGRAM_CAP: usize = 65_000;

/// MTU assumed when the interface's cannot be read (Ethernet).
pub const FALLBACK_MTU: u32 = 1500;

/// IPv4 header (no options) plus UDP header: what an MTU holds besides the
/// datagram.
const IP_UDP_HEADERS: usize = 28;

/// The largest group datagram that leaves `iface` unfragmented: its MTU less
/// the IPv4 and UDP headers, within 512..=[`AUTO_DATAGRAM_CAP`].
pub fn datagram_for_mtu(mtu: u32) -> usize {
    usize::try_from(mtu)
        .unwrap_or(usize::MAX)
        .saturating_sub(IP_UDP_HEADERS)
        .clamp(512, AUTO_DATAGRAM_CAP)
}

/// The name and MTU of the interface that carries `iface` (the address given
/// by `--iface`). For 0.0.0.0 the kernel's route to `group` decides which
/// interface sends, so that route's source address is looked up instead.
/// Errors say why the MTU could not be read; callers fall back to
/// [`FALLBACK_MTU`].
pub fn interface_mtu(iface: Ipv4Addr, group: Ipv4Addr) -> io::Result<(String, u32)> {
    let addr = if iface.is_unspecified() {
        // A connected UDP socket sends nothing; it only asks the route.
        let probe = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        probe.connect((group, 9))?;
        match probe.local_addr()?.ip() {
            std::net::IpAddr::V4(a) if !a.is_unspecified() => a,
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("the route to {group} has no IPv4 source address ({other})"),
                ))
            }
        }
    } else {
        iface
    };
    let name = nix::ifaddrs::getifaddrs()
        .map_err(io::Error::from)?
        .find(|a| {
            a.address
                .as_ref()
                .and_then(|s| s.as_sockaddr_in())
                .is_some_and(|sin| sin.ip() == addr)
        })
        .map(|a| a.interface_name)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no interface has the address {addr}"),
            )
        })?;
    let path = format!("/sys/class/net/{name}/mtu");
    let text =
        std::fs::read_to_string(&path).map_err(|e| context(e, &format!("reading {path}")))?;
    let mtu = text.trim().parse::<u32>().map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{path} holds {:?}, not a number: {e}", text.trim()),
        )
    })?;
    Ok((name, mtu))
}

/// Adds what we were doing to an OS error, keeping its kind.
fn context(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("multicast transport: {what}: {e}"))
}

/// Linux doubles the requested size for bookkeeping and caps the request at
/// the sysctl maximum, so a read-back below the request means it was clamped.
fn warn_if_clamped(option: &str, sysctl: &str, requested: usize, got: usize) {
    if got < requested {
        tracing::warn!(
            option,
            requested,
            granted = got,
            "the kernel clamped {option} to {got} bytes (requested {requested}); \
             raise the sysctl {sysctl} (e.g. `sysctl -w {sysctl}={}`) to get the full size",
            requested.saturating_mul(2)
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU8, Ordering};
    use std::time::Duration;

    /// A group address no other test (or test process) uses at the same
    /// time: 239.255.<pid>.<counter>; the port is left to the kernel.
    fn unique_group() -> SocketAddrV4 {
        static NEXT: AtomicU8 = AtomicU8::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        SocketAddrV4::new(Ipv4Addr::new(239, 254, (pid % 251) as u8, n), 0)
    }

    fn config(group: SocketAddrV4) -> TransportConfig {
        TransportConfig {
            group,
            iface: Ipv4Addr::LOCALHOST,
            ttl: 0,
            recv_buffer: 0,
            send_buffer: 0,
        }
    }

    #[test]
    fn datagram_size_follows_the_mtu() {
        assert_eq!(
            datagram_for_mtu(1500),
            1472,
            "Ethernet: no IP fragmentation"
        );
        assert_eq!(datagram_for_mtu(9000), 8972, "jumbo frames");
        assert_eq!(datagram_for_mtu(65_536), AUTO_DATAGRAM_CAP, "loopback");
        assert_eq!(datagram_for_mtu(68), 512, "never below the minimum");
    }

    #[test]
    fn loopback_mtu_is_read() {
        let (name, mtu) = interface_mtu(Ipv4Addr::LOCALHOST, Ipv4Addr::new(239, 255, 0, 1))
            .expect("the loopback interface has an MTU");
        assert!(!name.is_empty());
        assert!(mtu >= 1280, "loopback MTU {mtu}");
        let err = interface_mtu(Ipv4Addr::new(192, 0, 2, 77), Ipv4Addr::new(239, 255, 0, 1))
            .expect_err("a TEST-NET address belongs to no interface here");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    async fn recv_within(t: &Transport, ms: u64) -> Option<Vec<u8>> {
        let mut buf = vec![0; MAX_DATAGRAM];
        match tokio::time::timeout(Duration::from_millis(ms), t.recv(&mut buf)).await {
            Ok(Ok(n)) => Some(buf[..n].to_vec()),
            Ok(Err(e)) => panic!("recv failed: {e}"),
            Err(_) => None,
        }
    }

    #[tokio::test]
    async fn two_brokers_on_one_group_hear_each_other_and_another_group_does_not() {
        let a = Transport::open(&config(unique_group())).unwrap();
        let group = a.group();
        assert_ne!(group.port(), 0, "the kernel-chosen port is reported");
        let b = Transport::open(&config(group)).unwrap();
        // Same port, another group: binding the group address filters it out.
        let other_group = unique_group();
        let c =
            Transport::open(&config(SocketAddrV4::new(*other_group.ip(), group.port()))).unwrap();

        a.send(&Bytes::from_static(b"from a")).await.unwrap();
        assert_eq!(recv_within(&b, 2000).await.as_deref(), Some(&b"from a"[..]));
        // Loop is on: the sender hears itself too.
        assert_eq!(recv_within(&a, 2000).await.as_deref(), Some(&b"from a"[..]));

        b.send(&Bytes::from_static(b"from b")).await.unwrap();
        assert_eq!(recv_within(&a, 2000).await.as_deref(), Some(&b"from b"[..]));
        assert_eq!(recv_within(&b, 2000).await.as_deref(), Some(&b"from b"[..]));

        assert_eq!(
            recv_within(&c, 300).await,
            None,
            "another group heard our traffic"
        );

        // And c's own traffic reaches c but not a.
        c.send(&Bytes::from_static(b"from c")).await.unwrap();
        assert_eq!(recv_within(&c, 2000).await.as_deref(), Some(&b"from c"[..]));
        assert_eq!(recv_within(&a, 300).await, None, "group a heard group c");
    }

    #[tokio::test]
    async fn batches_arrive_whole_and_in_order() {
        let a = Transport::open(&config(unique_group())).unwrap();
        let b = Transport::open(&config(a.group())).unwrap();
        let datagrams: Vec<Bytes> = (0..50u32)
            .map(|i| Bytes::from(i.to_be_bytes().to_vec()))
            .collect();
        assert_eq!(a.send_batch(&datagrams).await.unwrap(), 50);

        let mut batch = RecvBatch::new(16, 64);
        let mut got = Vec::new();
        while got.len() < 50 {
            let n = tokio::time::timeout(Duration::from_secs(2), b.recv_batch(&mut batch))
                .await
                .expect("datagrams lost on loopback")
                .unwrap();
            assert!((1..=16).contains(&n));
            assert_eq!(n, batch.len());
            got.extend(
                batch
                    .iter()
                    .map(|d| u32::from_be_bytes(d.try_into().unwrap())),
            );
        }
        assert_eq!(got, (0..50).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_unicast_group_is_refused_clearly() {
        let mut cfg = config(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 7400));
        let err = Transport::open(&cfg).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(
            err.to_string().contains("not an IPv4 multicast address"),
            "{err}"
        );
        cfg.group = SocketAddrV4::new(Ipv4Addr::new(239, 1, 2, 3), 7400);
        cfg.ttl = 256;
        assert_eq!(
            Transport::open(&cfg).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }

    /// Captures what `tracing` logs while `f` runs.
    fn logs_of(f: impl FnOnce()) -> String {
        use std::sync::{Arc, Mutex};
        #[derive(Clone)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink(Arc::new(Mutex::new(Vec::new())));
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = sink.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[tokio::test]
    async fn a_clamped_buffer_is_reported_with_its_sysctl() {
        // 1 GiB is above any stock net.core.rmem_max/wmem_max; SO_RCVBUF
        // (unlike SO_RCVBUFFORCE) is capped even for root.
        let mut cfg = config(unique_group());
        cfg.recv_buffer = 1 << 30;
        cfg.send_buffer = 1 << 30;
        let mut opened = None;
        let logs = logs_of(|| opened = Some(Transport::open(&cfg).unwrap()));
        let t = opened.unwrap();
        let granted = socket2::SockRef::from(&t.socket)
            .recv_buffer_size()
            .unwrap();
        if granted >= cfg.recv_buffer {
            eprintln!("SKIPPED clamp check: this kernel granted a 1 GiB SO_RCVBUF");
            return;
        }
        assert!(logs.contains("WARN"), "{logs}");
        assert!(logs.contains("net.core.rmem_max"), "{logs}");
        assert!(logs.contains("net.core.wmem_max"), "{logs}");

        // A size the kernel grants logs nothing.
        let mut cfg = config(unique_group());
        cfg.recv_buffer = 64 * 1024;
        let logs = logs_of(|| drop(Transport::open(&cfg).unwrap()));
        assert!(!logs.contains("clamped"), "{logs}");
    }

    #[tokio::test]
    async fn buffer_sizes_are_applied_or_reported() {
        let mut cfg = config(unique_group());
        cfg.recv_buffer = 256 * 1024;
        cfg.send_buffer = 256 * 1024;
        // The sizes here are at most rmem_max on stock kernels; either way open succeeds
        // (a clamp only warns).
        let t = Transport::open(&cfg).unwrap();
        let sock = socket2::SockRef::from(&t.socket);
        assert!(sock.recv_buffer_size().unwrap() > 0);
        assert!(
            !sock.multicast_all_v4().unwrap(),
            "IP_MULTICAST_ALL must be off"
        );
        assert!(sock.multicast_loop_v4().unwrap());
        assert_eq!(sock.multicast_ttl_v4().unwrap(), 0);
    }
}
