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
pub mod tls;
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
    /// A TLS connection (RFC 3261 §26.2): ids share TCP's space.
    Tls(u64),
}

impl Transport {
    pub fn is_reliable(self) -> bool {
        self.connection().is_some()
    }

    /// Whether what crosses this transport is encrypted: the only transport a
    /// `sips:` request or an SDES key may arrive on.
    pub fn is_secure(self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// The connection id of a stream transport.
    pub fn connection(self) -> Option<u64> {
        match self {
            Transport::Udp => None,
            Transport::Tcp(id) | Transport::Tls(id) => Some(id),
        }
    }

    /// The token used in `Via` and `;transport=` parameters.
    pub fn via_token(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp(_) => "TCP",
            Transport::Tls(_) => "TLS",
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
