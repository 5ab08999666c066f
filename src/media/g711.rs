//! G.711 μ-law and A-law, table driven.
//!
//! The tables are computed at compile time from the classic Sun/CCITT `g711.c`
//! algorithm (the one CPython's `audioop` implements), so encoding a 20 ms frame is
//! 160 table lookups and the tables are checked against the vectors in
//! `docs/test-vectors.md`. μ-law encoding works on the 14-bit value (`sample >> 2`)
//! exactly as `audioop` does; that is why `-1` encodes to `0x7E`, not `0x7F`.

const ULAW_BIAS: i32 = 0x84 >> 2;
const ULAW_CLIP: i32 = 8159;
const ULAW_SEG_END: [i32; 8] = [0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF];
const ALAW_SEG_END: [i32; 8] = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF];

const fn segment(value: i32, ends: &[i32; 8]) -> usize {
    let mut i = 0;
    while i < 8 {
        if value <= ends[i] {
            return i;
        }
        i += 1;
    }
    8
}

/// μ-law encoding of a 14-bit sample (`pcm16 >> 2`), as in `g711.c`.
const fn ulaw_from_14bit(sample14: i32) -> u8 {
    let (mut pcm, mask) = if sample14 < 0 { (-sample14, 0x7F) } else { (sample14, 0xFF) };
    if pcm > ULAW_CLIP {
        pcm = ULAW_CLIP;
    }
    pcm += ULAW_BIAS;
    let seg = segment(pcm, &ULAW_SEG_END);
    if seg >= 8 {
        (0x7F ^ mask) as u8
    } else {
        let uval = ((seg as i32) << 4) | ((pcm >> (seg + 1)) & 0xF);
        (uval ^ mask) as u8
    }
}

const fn ulaw_decode(code: u8) -> i16 {
    let u = !code as i32;
    let mut t = ((u & 0x0F) << 3) + 0x84;
    t <<= (u & 0x70) >> 4;
    if u & 0x80 != 0 { (0x84 - t) as i16 } else { (t - 0x84) as i16 }
}

/// A-law encoding of a 13-bit sample (`pcm16 >> 3`), as in `g711.c`.
const fn alaw_from_13bit(sample13: i32) -> u8 {
    let (pcm, mask) = if sample13 >= 0 { (sample13, 0xD5) } else { (-sample13 - 1, 0x55) };
    let seg = segment(pcm, &ALAW_SEG_END);
    if seg >= 8 {
        (0x7F ^ mask) as u8
    } else {
        let mut aval = (seg as i32) << 4;
        if seg < 2 {
            aval |= (pcm >> 1) & 0x0F;
        } else {
            aval |= (pcm >> seg) & 0x0F;
        }
        (aval ^ mask) as u8
    }
}

const fn alaw_decode(code: u8) -> i16 {
    let a = (code ^ 0x55) as i32;
    let mut t = (a & 0x0F) << 4;
    let seg = (a & 0x70) >> 4;
    match seg {
        0 => t += 8,
        1 => t += 0x108,
        _ => {
            t += 0x108;
            t <<= seg - 1;
        }
    }
    if a & 0x80 != 0 { t as i16 } else { -t as i16 }
}

const fn build_ulaw_encode() -> [u8; 16384] {
    let mut table = [0u8; 16384];
    let mut i = 0;
    while i < 16384 {
        table[i] = ulaw_from_14bit(i as i32 - 8192);
        i += 1;
    }
    table
}

const fn build_alaw_encode() -> [u8; 8192] {
    let mut table = [0u8; 8192];
    let mut i = 0;
    while i < 8192 {
        table[i] = alaw_from_13bit(i as i32 - 4096);
        i += 1;
    }
    table
}

const fn build_decode(alaw: bool) -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = if alaw { alaw_decode(i as u8) } else { ulaw_decode(i as u8) };
        i += 1;
    }
    table
}

static ULAW_ENCODE: [u8; 16384] = build_ulaw_encode();
static ALAW_ENCODE: [u8; 8192] = build_alaw_encode();
static ULAW_DECODE: [i16; 256] = build_decode(false);
static ALAW_DECODE: [i16; 256] = build_decode(true);

/// One PCM16 sample to μ-law.
#[inline]
pub fn ulaw_encode(sample: i16) -> u8 {
    ULAW_ENCODE[((sample as i32 >> 2) + 8192) as usize]
}

/// One μ-law code to PCM16.
#[inline]
pub fn ulaw_to_linear(code: u8) -> i16 {
    ULAW_DECODE[code as usize]
}

/// One PCM16 sample to A-law.
#[inline]
pub fn alaw_encode(sample: i16) -> u8 {
    ALAW_ENCODE[((sample as i32 >> 3) + 4096) as usize]
}

/// One A-law code to PCM16.
#[inline]
pub fn alaw_to_linear(code: u8) -> i16 {
    ALAW_DECODE[code as usize]
}

/// The two G.711 laws; the static payload type is the one RFC 3551 assigns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum G711 {
    Alaw,
    Ulaw,
}

impl G711 {
    /// Encodes `pcm` into `out` (same length); writes `min(len)` codes.
    pub fn encode(self, pcm: &[i16], out: &mut [u8]) {
        match self {
            G711::Ulaw => pcm.iter().zip(out.iter_mut()).for_each(|(s, o)| *o = ulaw_encode(*s)),
            G711::Alaw => pcm.iter().zip(out.iter_mut()).for_each(|(s, o)| *o = alaw_encode(*s)),
        }
    }

    /// Decodes `codes` into `out`; writes `min(len)` samples.
    pub fn decode(self, codes: &[u8], out: &mut [i16]) {
        match self {
            G711::Ulaw => codes.iter().zip(out.iter_mut()).for_each(|(c, o)| *o = ulaw_to_linear(*c)),
            G711::Alaw => codes.iter().zip(out.iter_mut()).for_each(|(c, o)| *o = alaw_to_linear(*c)),
        }
    }

    /// The code for digital silence (what a zero sample encodes to).
    pub fn silence(self) -> u8 {
        match self {
            G711::Ulaw => 0xFF,
            G711::Alaw => 0xD5,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encode vectors from `docs/test-vectors.md` (CPython `audioop`).
    #[test]
    fn ulaw_encode_vectors() {
        let vectors: &[(i16, u8)] = &[
            (0, 0xFF),
            (1, 0xFF),
            (-1, 0x7E),
            (2, 0xFF),
            (8, 0xFE),
            (100, 0xF2),
            (-100, 0x72),
            (32124, 0x80),
            (-32768, 0x00),
            (1000, 0xCE),
            (-1000, 0x4E),
            (4000, 0xAF),
            (8031, 0xA0),
            (8159, 0x9F),
            (-8159, 0x1F),
            (16000, 0x90),
            (32767, 0x80),
        ];
        for &(pcm, code) in vectors {
            assert_eq!(ulaw_encode(pcm), code, "pcm {pcm}");
        }
    }

    /// The full 256-entry decode table from `docs/test-vectors.md`.
    #[test]
    fn ulaw_decode_table() {
        const TABLE: &str = include_str!("../../tests/data/ulaw_decode_table.txt");
        let mut rows = 0;
        for line in TABLE.lines().filter(|l| !l.trim().is_empty()) {
            let (head, values) = line.split_once(':').expect("row header");
            let base = u8::from_str_radix(head.trim().trim_start_matches("0x"), 16).expect("hex row");
            let values: Vec<i16> = values.split_whitespace().map(|v| v.parse().expect("i16")).collect();
            assert_eq!(values.len(), 16, "row {head}");
            for (i, v) in values.iter().enumerate() {
                assert_eq!(ulaw_to_linear(base + i as u8), *v, "code {:#04x}", base + i as u8);
            }
            rows += 1;
        }
        assert_eq!(rows, 16);
    }

    /// The Media Streams vector: a 1 kHz sine at amplitude 8000.
    #[test]
    fn ulaw_sine_vector() {
        let pcm = [0, 5657, 8000, 5657, 0, -5657, -8000, -5657];
        let mut out = [0u8; 8];
        G711::Ulaw.encode(&pcm, &mut out);
        assert_eq!(out, [0xff, 0xa9, 0xa0, 0xa9, 0xff, 0x29, 0x20, 0x29]);
    }

    #[test]
    fn alaw_known_codes_and_round_trip() {
        assert_eq!(alaw_encode(0), 0xD5);
        assert_eq!(alaw_encode(-1), 0x55);
        assert_eq!(alaw_to_linear(0xD5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_encode(32767), 0xAA);
        assert_eq!(alaw_encode(-32768), 0x2A);
        assert_eq!(alaw_to_linear(0xAA), 32256);
        // Decoding then re-encoding every code is the identity (each code is its own
        // quantisation level's representative).
        for code in 0..=255u8 {
            assert_eq!(alaw_encode(alaw_to_linear(code)), code, "code {code:#04x}");
        }
    }

    #[test]
    fn ulaw_round_trip_every_code() {
        for code in 0..=255u8 {
            let back = ulaw_encode(ulaw_to_linear(code));
            // 0x7F and 0xFF are both zero; everything else is its own representative.
            if code == 0x7F {
                assert_eq!(back, 0xFF);
            } else {
                assert_eq!(back, code, "code {code:#04x}");
            }
        }
    }

    #[test]
    fn quantisation_error_is_bounded() {
        for s in (i16::MIN..=i16::MAX).step_by(7) {
            let u = ulaw_to_linear(ulaw_encode(s)) as i32;
            let a = alaw_to_linear(alaw_encode(s)) as i32;
            let s = s as i32;
            // Both laws keep the error within half a quantisation step (about 1/32 of the
            // magnitude plus the first segment's step), except where they clip.
            let bound = if s.abs() > 31_000 { 800 } else { s.abs() / 16 + 16 };
            assert!((u - s).abs() <= bound, "ulaw {s} -> {u}");
            assert!((a - s).abs() <= bound, "alaw {s} -> {a}");
        }
    }
}
