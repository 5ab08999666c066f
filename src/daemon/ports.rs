//! The RTP port pool: even ports from `rtp.port_min`–`rtp.port_max`.

use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket};

use rand::Rng;

/// Even RTP ports from the configured range, handed out round-robin so a port is
/// not reused the moment a call ends (late packets from the old call).
pub(super) struct PortPool {
    range: (u16, u16),
    next: u16,
    ip: IpAddr,
}

impl PortPool {
    pub(super) fn new(range: (u16, u16), ip: IpAddr) -> Self {
        let start = range.0 + 2 * rand::rng().random_range(0..=(range.1 - range.0) / 2);
        PortPool { range, next: start, ip }
    }

    pub(super) fn allocate(&mut self) -> Option<StdUdpSocket> {
        let count = (self.range.1 - self.range.0) / 2 + 1;
        for _ in 0..count {
            let port = self.next;
            self.next = if port + 2 > self.range.1 { self.range.0 } else { port + 2 };
            if let Ok(sock) = StdUdpSocket::bind(SocketAddr::new(self.ip, port))
                && sock.set_nonblocking(true).is_ok()
            {
                return Some(sock);
            }
        }
        None
    }
}
