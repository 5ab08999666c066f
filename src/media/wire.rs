//! The codec on the wire, at the RTP edge of a call. G.711 passes through
//! untouched; Opus (with the `opus` feature) is transcoded to and from the
//! call's internal 8 kHz μ-law, so nothing behind the edge knows about it.

/// Largest outbound payload the edge produces.
pub const MAX_PAYLOAD: usize = 320;

pub struct WireCodec {
    #[cfg(feature = "opus")]
    opus: Option<super::opus::OpusEdge>,
    scratch: [u8; MAX_PAYLOAD],
}

impl std::fmt::Debug for WireCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WireCodec")
    }
}

impl WireCodec {
    /// The edge for a call; `opus` when the SDP chose Opus.
    pub fn new(opus: bool) -> Result<Self, String> {
        #[cfg(feature = "opus")]
        {
            let opus = if opus {
                Some(super::opus::OpusEdge::new().map_err(|e| e.to_string())?)
            } else {
                None
            };
            Ok(WireCodec {
                opus,
                scratch: [0; MAX_PAYLOAD],
            })
        }
        #[cfg(not(feature = "opus"))]
        {
            if opus {
                return Err("precall was built without the opus feature".into());
            }
            Ok(WireCodec { scratch: [0; MAX_PAYLOAD] })
        }
    }

    /// RTP clock rate of the wire codec.
    pub fn clock_rate(&self) -> u32 {
        #[cfg(feature = "opus")]
        if self.opus.is_some() {
            return 48000;
        }
        8000
    }

    /// The payload to send for one internal 20 ms frame.
    #[inline]
    pub fn outbound<'a>(&'a mut self, frame: &'a [u8]) -> &'a [u8] {
        #[cfg(feature = "opus")]
        if let Some(opus) = self.opus.as_mut() {
            let n = opus.encode(frame, &mut self.scratch);
            return &self.scratch[..n];
        }
        let _ = &mut self.scratch;
        frame
    }

    /// An arriving payload in the internal law: `None` means use it as it is
    /// (G.711); `Some` points at the transcoded frame in `out`.
    #[inline]
    pub fn inbound<'a>(&mut self, payload: &[u8], out: &'a mut Vec<u8>) -> Option<&'a [u8]> {
        #[cfg(feature = "opus")]
        if let Some(opus) = self.opus.as_mut() {
            out.clear();
            opus.decode(payload, out);
            return Some(out.as_slice());
        }
        let _ = (payload, out);
        None
    }
}
