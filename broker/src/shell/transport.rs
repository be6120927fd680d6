//! The multicast transport: one UDP socket joined to the group (socket2 for
//! the options tokio does not expose), driven by tokio.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};

use bytes::Bytes;

/// How to open the group socket.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Multicast group and port, e.g. 239.255.77.1:7400.
    pub group: SocketAddrV4,
    /// Interface address to join on and send from (127.0.0.1 by default).
    pub iface: Ipv4Addr,
    /// Multicast TTL (0 keeps datagrams on the host).
    pub ttl: u32,
    /// Requested SO_RCVBUF; a warning is logged when the kernel clamps it.
    pub recv_buffer: usize,
    /// Requested SO_SNDBUF; a warning is logged when the kernel clamps it.
    pub send_buffer: usize,
}

/// The group socket.
#[derive(Debug)]
pub struct Transport {
    socket: tokio::net::UdpSocket,
    group: SocketAddrV4,
}

impl Transport {
    /// Opens the socket and joins the group. Must be called inside a tokio runtime.
    pub fn open(config: &TransportConfig) -> io::Result<Transport> {
        let _ = config;
        Err(io::Error::other("multicast transport not built yet"))
    }

    /// Receives one datagram into `buf`, returning its length.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let (n, _from) = self.socket.recv_from(buf).await?;
        Ok(n)
    }

    /// Multicasts one datagram to the group.
    pub async fn send(&self, datagram: &Bytes) -> io::Result<()> {
        self.socket.send_to(datagram, self.group).await.map(|_| ())
    }
}
