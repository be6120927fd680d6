//! The multicast transport: one UDP socket joined to the group for
//! receiving and one for sending (socket2 for the options tokio does not
//! expose), driven by tokio.
//!
//! The socket is bound to the *group address* (not 0.0.0.0): on Linux that
//! makes the kernel deliver only datagrams addressed to our group, so two
//! clusters sharing a port on one host never see each other's traffic.
//! `SO_REUSEADDR` + `SO_REUSEPORT` let several brokers on one host bind the
//! same group and port; multicast loop is on so they hear each other.
//! `IP_MULTICAST_ALL` is off so memberships joined by other sockets of the
//! process never leak into ours.
//!
//! Sending from a socket of its own (bound to the interface address and a
//! port of its own) lets the receiving socket drop our own looped-back
//! datagrams in the kernel: a classic BPF filter matches their source
//! address and port, so a broker does not copy, checksum and decode every
//! datagram it sends a second time (the engine would drop it by origin; at
//! 64 KB datagrams that was ~8% of the publishing broker's CPU). Without a
//! specific interface address (`--iface 0.0.0.0`) the source address is
//! the kernel's choice and no filter is set.
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

/// The group sockets.
#[derive(Debug)]
pub struct Transport {
    /// Joined to the group; receives.
    socket: tokio::net::UdpSocket,
    /// Sends to the group, from an address of its own.
    sender: tokio::net::UdpSocket,
    group: SocketAddrV4,
    /// Whether our own datagrams are dropped by a filter in the kernel.
    own_filtered: bool,
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
            .set_multicast_all_v4(false)
            .map_err(|e| context(e, "clearing IP_MULTICAST_ALL"))?;
        socket
            .set_nonblocking(true)
            .map_err(|e| context(e, "setting O_NONBLOCK"))?;
        let sender = open_sender(config)?;
        let own_filtered = match sender.local_addr()?.as_socket() {
            Some(SocketAddr::V4(from)) if !from.ip().is_unspecified() => {
                match socket.attach_filter(&own_datagram_filter(from)) {
                    Ok(()) => true,
                    Err(e) => {
                        // Not fatal: the engine drops our frames by origin.
                        tracing::warn!(error = %e, "cannot filter our own datagrams in the kernel; the engine drops them instead");
                        false
                    }
                }
            }
            _ => false,
        };

        // With port 0 the kernel chose one: send to that.
        let port = match socket.local_addr()?.as_socket() {
            Some(SocketAddr::V4(local)) => local.port(),
            _ => config.group.port(),
        };
        let group = SocketAddrV4::new(group_ip, port);
        let socket = tokio::net::UdpSocket::from_std(socket.into())
            .map_err(|e| context(e, "registering the socket with tokio"))?;
        let sender = tokio::net::UdpSocket::from_std(sender.into())
            .map_err(|e| context(e, "registering the sending socket with tokio"))?;
        tracing::debug!(%group, iface = %config.iface, ttl = config.ttl, own_filtered, "multicast transport open");
        Ok(Transport {
            socket,
            sender,
            group,
            own_filtered,
            loss: None,
        })
    }

    /// Whether our own looped-back datagrams are dropped in the kernel
    /// (else they arrive and the engine drops them by origin).
    pub fn own_filtered(&self) -> bool {
        self.own_filtered
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
        self.sender.send_to(datagram, self.group).await.map(|_| ())
    }

    /// Multicasts every datagram, in order, waiting for socket space as
    /// needed. Returns how many were sent; on an error the ones before it
    /// were sent and the rest were not. Not cancel-safe: dropping the
    /// future midway leaves an unknown prefix sent.
    pub async fn send_batch(&self, datagrams: &[Bytes]) -> io::Result<usize> {
        let mut sent = 0;
        while sent < datagrams.len() {
            self.sender.writable().await?;
            // Send until the kernel buffer is full, then wait again.
            while let Some(datagram) = datagrams.get(sent) {
                match self
                    .sender
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

/// Full arenas kept for reuse once every datagram sliced from them is
/// dropped: at most this many (8 MiB), so at most that much memory is kept
/// idle. Payloads stay alive until stable everywhere and delivered to every
/// subscriber, so with 64 KB datagrams ~30 arenas are in flight at a time;
/// an arena dropped from here while in use is freed by its last datagram,
/// which glibc returns to the kernel (and the next arena page-faults).
const SPARE_ARENAS: usize = 32;

/// Reusable receive state for [`Transport::recv_batch`]: up to `slots`
/// datagrams of up to `slot_size` bytes per call.
///
/// Datagrams are received into an arena ([`ARENA_BYTES`], or one slot if
/// larger) and returned as [`Bytes`] slices of it: whoever keeps a
/// datagram (or a payload sliced from it) keeps its arena alive. When the
/// current arena has no room for a whole slot, a spare one whose slices
/// were all dropped is reused (its pages are already mapped: a fresh
/// allocation of this size page-faults on every first touch), else a new
/// one is allocated.
#[derive(Debug)]
pub struct RecvBatch {
    arena: BytesMut,
    /// Full arenas, oldest first, perhaps still shared with live datagrams.
    spare: std::collections::VecDeque<BytesMut>,
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
            spare: std::collections::VecDeque::with_capacity(SPARE_ARENAS),
            datagrams: Vec::with_capacity(slots),
            slots,
            slot_size,
        }
    }

    /// Makes sure the arena can take a whole slot.
    fn make_room(&mut self) {
        if self.arena.capacity() - self.arena.len() >= self.slot_size {
            return;
        }
        let size = ARENA_BYTES.max(self.slot_size);
        // `try_reclaim` succeeds only for an arena no datagram shares any
        // more (it then starts over at the front, without allocating).
        let reusable = self.spare.iter_mut().position(|a| a.try_reclaim(size));
        let next = match reusable.and_then(|i| self.spare.remove(i)) {
            Some(a) => a,
            None => BytesMut::with_capacity(size),
        };
        let full = std::mem::replace(&mut self.arena, next);
        if self.spare.len() == SPARE_ARENAS {
            // Still shared: its datagrams keep it alive as long as they need it.
            self.spare.pop_front();
        }
        self.spare.push_back(full);
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

/// The sending socket: bound to the interface address (a port of its own),
/// sending through that interface with the configured TTL, loop on so
/// brokers sharing the host hear it.
fn open_sender(config: &TransportConfig) -> io::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| context(e, "creating the sending UDP socket"))?;
    if config.send_buffer > 0 {
        socket
            .set_send_buffer_size(config.send_buffer)
            .map_err(|e| context(e, "setting SO_SNDBUF"))?;
        let got = socket
            .send_buffer_size()
            .map_err(|e| context(e, "reading SO_SNDBUF"))?;
        warn_if_clamped("SO_SNDBUF", "net.core.wmem_max", config.send_buffer, got);
    }
    let bind = SocketAddrV4::new(config.iface, 0);
    socket
        .bind(&SocketAddr::V4(bind).into())
        .map_err(|e| context(e, &format!("binding the sending socket to {bind}")))?;
    socket
        .set_multicast_if_v4(&config.iface)
        .map_err(|e| context(e, &format!("setting IP_MULTICAST_IF {}", config.iface)))?;
    socket
        .set_multicast_ttl_v4(config.ttl)
        .map_err(|e| context(e, "setting IP_MULTICAST_TTL"))?;
    socket
        .set_multicast_loop_v4(true)
        .map_err(|e| context(e, "setting IP_MULTICAST_LOOP"))?;
    socket
        .set_nonblocking(true)
        .map_err(|e| context(e, "setting O_NONBLOCK on the sending socket"))?;
    Ok(socket)
}

/// A classic BPF program for the receiving socket that drops datagrams from
/// `from` (our sending socket) and keeps every other one whole. A UDP
/// socket's filter sees the packet from the UDP header on; the IPv4 header
/// is reached through the kernel's `SKF_NET_OFF` offset.
fn own_datagram_filter(from: SocketAddrV4) -> [socket2::SockFilter; 6] {
    use libc::{BPF_ABS, BPF_H, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W, SKF_NET_OFF};
    use socket2::SockFilter;
    // cBPF opcodes (linux/filter.h); every one fits the 16-bit code field.
    const LD_H_ABS: u16 = (BPF_LD | BPF_H | BPF_ABS) as u16;
    const LD_W_ABS: u16 = (BPF_LD | BPF_W | BPF_ABS) as u16;
    const JEQ_K: u16 = (BPF_JMP | BPF_JEQ | BPF_K) as u16;
    const RET_K: u16 = (BPF_RET | BPF_K) as u16;
    const IPV4_SRC: i32 = 12;
    [
        // UDP source port; if not ours, keep.
        SockFilter::new(LD_H_ABS, 0, 0, 0),
        SockFilter::new(JEQ_K, 0, 3, u32::from(from.port())),
        // IPv4 source address; if not ours, keep.
        SockFilter::new(LD_W_ABS, 0, 0, (SKF_NET_OFF + IPV4_SRC) as u32),
        SockFilter::new(JEQ_K, 0, 1, u32::from(*from.ip())),
        // Ours: drop.
        SockFilter::new(RET_K, 0, 0, 0),
        // Keep the whole datagram.
        SockFilter::new(RET_K, 0, 0, u32::MAX),
    ]
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

        assert!(a.own_filtered() && b.own_filtered());
        a.send(&Bytes::from_static(b"from a")).await.unwrap();
        assert_eq!(recv_within(&b, 2000).await.as_deref(), Some(&b"from a"[..]));
        b.send(&Bytes::from_static(b"from b")).await.unwrap();
        // Loop is on (a hears b), but the filter keeps a's own datagram out:
        // b's is the first thing a receives.
        assert_eq!(recv_within(&a, 2000).await.as_deref(), Some(&b"from b"[..]));
        assert_eq!(recv_within(&b, 300).await, None, "b heard itself");
        assert_eq!(recv_within(&a, 300).await, None, "a heard itself");

        assert_eq!(
            recv_within(&c, 300).await,
            None,
            "another group heard our traffic"
        );

        // And c's traffic reaches a broker of its group but not a.
        let d = Transport::open(&config(c.group())).unwrap();
        c.send(&Bytes::from_static(b"from c")).await.unwrap();
        assert_eq!(recv_within(&d, 2000).await.as_deref(), Some(&b"from c"[..]));
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
        let sender = socket2::SockRef::from(&t.sender);
        assert!(sender.multicast_loop_v4().unwrap());
        assert_eq!(sender.multicast_ttl_v4().unwrap(), 0);
        assert!(sender.send_buffer_size().unwrap() > 0);
    }

    #[test]
    fn an_arena_is_reused_once_its_datagrams_are_dropped() {
        // Slots of 200 kB: one datagram fills an arena.
        let mut batch = RecvBatch::new(4, 200_000);
        let receive = |batch: &mut RecvBatch, fill: u8| {
            batch.make_room();
            let at = batch.arena.as_ptr();
            batch.arena.resize(200_000, fill);
            (at, batch.arena.split().freeze())
        };
        let (first, kept) = receive(&mut batch, 7);
        let (second, other) = receive(&mut batch, 8);
        assert_ne!(second, first, "no room: another arena");
        // The first arena's datagram is still alive: a new arena again.
        let (third_at, third) = receive(&mut batch, 9);
        assert!(third_at != first && third_at != second);
        drop(kept);
        let (fourth, again) = receive(&mut batch, 10);
        assert_eq!(fourth, first, "its datagram dropped: reused");
        assert_eq!(
            (other[0], third[0], again[0]),
            (8, 9, 10),
            "live datagrams untouched"
        );
        for i in 0..2 * SPARE_ARENAS {
            receive(&mut batch, i as u8);
        }
        assert!(batch.spare.len() <= SPARE_ARENAS);
    }
}
