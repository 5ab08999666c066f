//! The audio format at the far edge of a bridge: what the agent (or any other
//! peer the call is bridged to) takes and sends. A media type, not a vendor's:
//! the names each vendor gives these formats live with that vendor's module.

/// Linear PCM at a rate, or G.711 μ-law at 8 kHz.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioFormat {
    /// Signed 16-bit little-endian mono PCM at this rate.
    Pcm(u32),
    /// G.711 μ-law, 8 kHz.
    Ulaw8000,
}

impl AudioFormat {
    pub fn rate(self) -> u32 {
        match self {
            AudioFormat::Pcm(r) => r,
            AudioFormat::Ulaw8000 => 8000,
        }
    }
}
