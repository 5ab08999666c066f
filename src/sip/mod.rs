//! SIP signalling for a user agent server: message parsing and printing, SDP
//! offer/answer, and the sans-IO [`endpoint::Endpoint`] that runs transactions
//! (RFC 3261 §17) and dialogs (§12) on injected time. The tokio edge that owns the
//! sockets is [`transport`].

pub mod auth;
pub mod endpoint;
pub mod guard;
pub mod header;
pub mod message;
pub mod register;
pub mod sdp;
pub mod syntax;
pub mod tokens;
pub mod transport;
pub mod uri;

use std::net::SocketAddr;

/// Which connection a message came in on, and so where its answers go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    /// A TCP connection, by the id the transport layer gave it.
    Tcp(u64),
}

impl Transport {
    pub fn is_reliable(self) -> bool {
        matches!(self, Transport::Tcp(_))
    }

    /// The token used in `Via` and `;transport=` parameters.
    pub fn via_token(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp(_) => "TCP",
        }
    }
}

/// The network path of one message: transport, the peer, and our local address
/// that the peer reached (what goes into `Via`, `Contact` and SDP unless
/// `sip.public_addr` overrides it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    pub transport: Transport,
    pub remote: SocketAddr,
    pub local: SocketAddr,
}

/// Bytes to send on a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub flow: Flow,
    pub data: Vec<u8>,
}
