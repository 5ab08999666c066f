//! RTP fixed header (RFC 3550 §5.1): building into a caller-owned buffer and parsing
//! without copying. Hand-written because the whole job is 12 bytes plus the optional
//! CSRC list, extension and padding; the `rtp` crate would pull in `webrtc-util`.

/// The largest datagram read from an RTP socket: a 20 ms frame of any codec
/// precall speaks, with SRTP's tag, fits many times over; anything longer is
/// truncated and fails to parse or authenticate.
pub const MAX_DATAGRAM: usize = 2048;

use thiserror::Error;

/// The fixed header length.
pub const HEADER_LEN: usize = 12;

/// Why a datagram is not an RTP packet we can use. Counted, never fatal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RtpError {
    #[error("datagram shorter than the RTP header ({0} bytes)")]
    TooShort(usize),
    #[error("RTP version {0}, expected 2")]
    Version(u8),
    #[error("CSRC list or header extension runs past the datagram")]
    Truncated,
    #[error("padding length {0} is larger than the payload")]
    Padding(u8),
    #[error("payload type {0} is RTCP (RFC 5761 demultiplexing)")]
    Rtcp(u8),
}

/// The header fields precall writes and reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
}

impl RtpHeader {
    /// Writes the 12-byte header (no CSRC, no extension) into `buf[..12]`.
    ///
    /// Returns `None` if `buf` is shorter than the header.
    #[inline]
    pub fn write(&self, buf: &mut [u8]) -> Option<usize> {
        let head = buf.get_mut(..HEADER_LEN)?;
        head[0] = 0x80;
        head[1] = (u8::from(self.marker) << 7) | (self.payload_type & 0x7F);
        head[2..4].copy_from_slice(&self.sequence.to_be_bytes());
        head[4..8].copy_from_slice(&self.timestamp.to_be_bytes());
        head[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        Some(HEADER_LEN)
    }
}

/// A parsed packet borrowing its payload from the receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    pub header: RtpHeader,
    pub payload: &'a [u8],
}

impl<'a> RtpPacket<'a> {
    /// Parses one datagram. Skips CSRCs and the header extension, strips padding.
    pub fn parse(data: &'a [u8]) -> Result<Self, RtpError> {
        if data.len() < HEADER_LEN {
            return Err(RtpError::TooShort(data.len()));
        }
        let version = data[0] >> 6;
        if version != 2 {
            return Err(RtpError::Version(version));
        }
        let payload_type = data[1] & 0x7F;
        // RTCP packet types 200..=204 land on 72..=76 once the marker bit is masked off.
        if (72..=76).contains(&payload_type) {
            return Err(RtpError::Rtcp(data[1]));
        }
        let padding = data[0] & 0x20 != 0;
        let extension = data[0] & 0x10 != 0;
        let csrc_count = usize::from(data[0] & 0x0F);
        let mut offset = HEADER_LEN + 4 * csrc_count;
        if extension {
            let ext = data.get(offset..offset + 4).ok_or(RtpError::Truncated)?;
            let words = usize::from(u16::from_be_bytes([ext[2], ext[3]]));
            offset += 4 + 4 * words;
        }
        if offset > data.len() {
            return Err(RtpError::Truncated);
        }
        let mut end = data.len();
        if padding {
            let pad = data[end - 1];
            if pad == 0 || usize::from(pad) > end - offset {
                return Err(RtpError::Padding(pad));
            }
            end -= usize::from(pad);
        }
        Ok(RtpPacket {
            header: RtpHeader {
                marker: data[1] & 0x80 != 0,
                payload_type,
                sequence: u16::from_be_bytes([data[2], data[3]]),
                timestamp: u32::from_be_bytes([data[4], data[5], data[6], data[7]]),
                ssrc: u32::from_be_bytes([data[8], data[9], data[10], data[11]]),
            },
            payload: &data[offset..end],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_rfc3550_layout() {
        let h = RtpHeader {
            marker: true,
            payload_type: 8,
            sequence: 0x1234,
            timestamp: 0xDEADBEEF,
            ssrc: 0x01020304,
        };
        let mut buf = [0u8; 12];
        assert_eq!(h.write(&mut buf), Some(12));
        assert_eq!(buf, [0x80, 0x88, 0x12, 0x34, 0xDE, 0xAD, 0xBE, 0xEF, 1, 2, 3, 4]);
        assert_eq!(h.write(&mut [0u8; 11]), None);
    }

    #[test]
    fn round_trip() {
        let h = RtpHeader {
            marker: false,
            payload_type: 0,
            sequence: 65535,
            timestamp: 160,
            ssrc: 42,
        };
        let mut buf = [0u8; 12 + 160];
        h.write(&mut buf).unwrap();
        buf[12..].fill(0xFF);
        let p = RtpPacket::parse(&buf).unwrap();
        assert_eq!(p.header, h);
        assert_eq!(p.payload.len(), 160);
    }

    #[test]
    fn skips_csrc_extension_and_padding() {
        // V=2, P=1, X=1, CC=1; PT 0; one CSRC; extension with 1 word; 3 payload bytes; 2 padding.
        let mut pkt = vec![0xB1, 0x00, 0, 1, 0, 0, 0, 160, 0, 0, 0, 9];
        pkt.extend_from_slice(&[0, 0, 0, 7]); // CSRC
        pkt.extend_from_slice(&[0xBE, 0xDE, 0, 1, 1, 2, 3, 4]); // extension
        pkt.extend_from_slice(&[0xAA, 0xBB, 0xCC]);
        pkt.extend_from_slice(&[0, 2]);
        let p = RtpPacket::parse(&pkt).unwrap();
        assert_eq!(p.payload, &[0xAA, 0xBB, 0xCC]);
        assert_eq!(p.header.ssrc, 9);
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(RtpPacket::parse(&[0x80; 5]), Err(RtpError::TooShort(5)));
        assert_eq!(RtpPacket::parse(&[0x40; 12]), Err(RtpError::Version(1)));
        let mut csrc = [0u8; 12];
        csrc[0] = 0x8F;
        assert_eq!(RtpPacket::parse(&csrc), Err(RtpError::Truncated));
        let mut pad = [0u8; 13];
        pad[0] = 0xA0;
        pad[12] = 9;
        assert_eq!(RtpPacket::parse(&pad), Err(RtpError::Padding(9)));
        let mut rtcp = [0u8; 12];
        rtcp[0] = 0x80;
        rtcp[1] = 200;
        assert_eq!(RtpPacket::parse(&rtcp), Err(RtpError::Rtcp(200)));
    }

    #[test]
    fn never_panics_on_any_short_input() {
        let mut buf = [0u8; 40];
        for seed in 0u32..20_000 {
            let mut x = seed.wrapping_mul(2_654_435_761);
            let len = (x % 41) as usize;
            for b in buf.iter_mut() {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *b = x as u8;
            }
            let _ = RtpPacket::parse(&buf[..len]);
        }
    }
}
