//! The media plane: G.711, RTP packets, the paced sender, the receiver's
//! statistics and the prompt player. Nothing here allocates or locks per packet.

pub mod bridge;
pub mod dtls;
pub mod dtmf;
pub mod format;
pub mod forward;
pub mod g711;
#[cfg(feature = "opus")]
pub mod opus;
pub mod prompt;
pub mod quality;
pub mod receiver;
pub mod resample;
pub mod rtp;
pub mod session;
pub mod srtp;
pub mod wire;
