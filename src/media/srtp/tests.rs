//! Known-answer tests at the master-key level, as an SDES peer sees them.
//!
//! The AES-CM vectors use RFC 3711 appendix B.3's master key and salt; the
//! packets are libsrtp's reference packets (`srtp_driver.c`, `srtp_validate`),
//! which libsrtp checks against RFC 3711's keystream (B.2) and key derivation
//! (B.3). RFC 7714's own packet vector (§16.1) is given at the *session*-key
//! level, below what an SDES key can reach; the GCM vector here is libsrtp's
//! `srtp_validate_gcm` reference packet, at the master-key level.

use super::*;

fn hex(s: &str) -> Vec<u8> {
    hex::decode(s.replace([' ', '\n'], "")).expect("hex")
}

/// RFC 3711 B.3: master key E1F97A0D3E018BE0D64FA32C06DE4139, salt 0EC675AD498AFEEBB6960B3AABE6.
fn rfc3711_key() -> KeyMaterial {
    KeyMaterial::from_slice(&hex("e1f97a0d3e018be0d64fa32c06de4139 0ec675ad498afeebb6960b3aabe6")).expect("30 bytes")
}

fn session(suite: Suite, key: KeyMaterial) -> SrtpSession {
    SrtpSession::new(SrtpParams {
        tag: 1,
        suite,
        local: key,
        remote: key,
    })
    .expect("valid key")
}

const RTP_PLAIN: &str = "800f1234decafbadcafebabe abababababababababababababababab";

fn protect(s: &mut SrtpSession, plain: &[u8]) -> Vec<u8> {
    let mut buf = [0u8; 256];
    buf[..plain.len()].copy_from_slice(plain);
    let n = s.protect_rtp(&mut buf, plain.len()).expect("protect");
    buf[..n].to_vec()
}

#[test]
fn aes_cm_128_hmac_sha1_80_matches_the_reference_packet() {
    let expected = hex("800f1234decafbadcafebabe 4e55dc4ce79978d88ca4d215949d2402 b78d6acc99ea179b8dbb");
    let mut tx = session(Suite::AesCm128HmacSha1_80, rfc3711_key());
    assert_eq!(protect(&mut tx, &hex(RTP_PLAIN)), expected);
    let mut rx = session(Suite::AesCm128HmacSha1_80, rfc3711_key());
    let mut out = [0u8; 256];
    let n = rx.unprotect_rtp(&expected, &mut out).expect("authentic");
    assert_eq!(&out[..n], hex(RTP_PLAIN).as_slice());
}

#[test]
fn aes_cm_128_hmac_sha1_32_matches_the_reference_packet() {
    let expected = hex("800f1234decafbadcafebabe 4e55dc4ce79978d88ca4d215949d2402 b78d6acc");
    let mut tx = session(Suite::AesCm128HmacSha1_32, rfc3711_key());
    assert_eq!(protect(&mut tx, &hex(RTP_PLAIN)), expected);
    let mut rx = session(Suite::AesCm128HmacSha1_32, rfc3711_key());
    let mut out = [0u8; 256];
    let n = rx.unprotect_rtp(&expected, &mut out).expect("authentic");
    assert_eq!(&out[..n], hex(RTP_PLAIN).as_slice());
}

#[test]
fn srtcp_reference_packet_decrypts() {
    // libsrtp's reference SRTCP packet: index 1 with the E bit, then the tag.
    let plain = hex("80c80006cafebabe abababababababababababababababababababab");
    let srtcp = hex("80c80006cafebabe 7128035be487b9bdbef89041f977a5a8 d5efb881 80000001 905c6f4d7932c1caa182");
    let mut rx = session(Suite::AesCm128HmacSha1_80, rfc3711_key());
    let mut out = [0u8; 256];
    let n = rx.unprotect_rtcp(&srtcp, &mut out).expect("authentic");
    assert_eq!(&out[..n], plain.as_slice());
    // And what we protect, the reference decrypts (whatever index we start at).
    let mut tx = session(Suite::AesCm128HmacSha1_80, rfc3711_key());
    let mut buf = [0u8; 256];
    buf[..plain.len()].copy_from_slice(&plain);
    let len = tx.protect_rtcp(&mut buf, plain.len()).expect("protect");
    let mut rx2 = session(Suite::AesCm128HmacSha1_80, rfc3711_key());
    let n = rx2.unprotect_rtcp(&buf[..len], &mut out).expect("round trip");
    assert_eq!(&out[..n], plain.as_slice());
}

#[test]
fn aead_aes_128_gcm_matches_the_reference_packet() {
    let key = KeyMaterial::from_slice(&hex("000102030405060708090a0b0c0d0e0f a0a1a2a3a4a5a6a7a8a9aaab")).expect("28 bytes");
    let expected = hex("800f1234decafbadcafebabe c5002ede04cfdd2eb91159e0880aa06ed2976826f796b201df3131a127e8a392");
    let mut tx = session(Suite::AeadAes128Gcm, key);
    assert_eq!(protect(&mut tx, &hex(RTP_PLAIN)), expected);
    let mut rx = session(Suite::AeadAes128Gcm, key);
    let mut out = [0u8; 256];
    let n = rx.unprotect_rtp(&expected, &mut out).expect("authentic");
    assert_eq!(&out[..n], hex(RTP_PLAIN).as_slice());
}

fn rtp(seq: u16, ts: u32, payload: u8) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    p.extend(std::iter::repeat_n(payload, 160));
    p
}

#[test]
fn tampered_and_replayed_packets_are_dropped_and_counted() {
    for suite in Suite::ALL {
        let key = KeyMaterial::from_random(suite, &[7; MAX_KEY]);
        let mut tx = session(suite, key);
        let mut rx = session(suite, key);
        let mut out = [0u8; 512];
        let good = protect(&mut tx, &rtp(100, 0, 0x55));
        let mut bad = protect(&mut tx, &rtp(101, 160, 0x55));
        bad[20] ^= 0x01;
        let tampered = rx.unprotect_rtp(&bad, &mut out);
        assert!(matches!(tampered, Err(SrtpError::Auth)), "{suite:?}: {tampered:?}");
        assert_eq!(rx.auth_failures, 1);
        rx.unprotect_rtp(&good, &mut out).expect("authentic");
        let again = rx.unprotect_rtp(&good, &mut out);
        assert!(matches!(again, Err(SrtpError::Replay)), "{suite:?}: {again:?}");
        assert_eq!(rx.replays, 1);
        // A tampered packet does not poison what follows.
        let next = protect(&mut tx, &rtp(102, 320, 0x55));
        rx.unprotect_rtp(&next, &mut out).expect("the stream continues");
    }
}

/// A call longer than 65,536 packets (22 minutes at 50 packets/s): the
/// rollover counter must advance on both sides, and a replay of a packet from
/// before the wrap must still be refused.
#[test]
fn rollover_counter_survives_sequence_wrap() {
    for suite in Suite::ALL {
        let key = KeyMaterial::from_random(suite, &[3; MAX_KEY]);
        let mut tx = session(suite, key);
        let mut rx = session(suite, key);
        let mut out = [0u8; 512];
        let start: u16 = 65_000;
        let mut kept = None;
        for i in 0..70_000u32 {
            let seq = start.wrapping_add(i as u16);
            let plain = rtp(seq, i * 160, (i % 251) as u8);
            let packet = protect(&mut tx, &plain);
            // Drop one packet in 50 (loss must not confuse the ROC estimate).
            if i % 50 == 49 {
                continue;
            }
            let n = rx
                .unprotect_rtp(&packet, &mut out)
                .unwrap_or_else(|e| panic!("{suite:?} packet {i} (seq {seq}): {e}"));
            assert_eq!(&out[..n], plain.as_slice());
            if i == 100 {
                kept = Some(packet);
            }
        }
        assert_eq!(rx.auth_failures, 0);
        // Packet 100 (ROC 1, long ago) replayed after the wrap: refused.
        let old = kept.expect("kept");
        assert!(
            rx.unprotect_rtp(&old, &mut out).is_err(),
            "{suite:?}: an old packet replayed must not pass"
        );
    }
}

#[test]
fn crypto_attribute_parses_and_prints() {
    let c = Crypto::parse("1 AES_CM_128_HMAC_SHA1_80 inline:d0RmdmcmVCspeEc3QGZiNWpVLFJhQX1cfHAwJSoj|2^20|1:32").unwrap_err();
    assert_eq!(c, CryptoError::Unsupported, "an MKI is refused");
    let c = Crypto::parse("1 AES_CM_128_HMAC_SHA1_80 inline:d0RmdmcmVCspeEc3QGZiNWpVLFJhQX1cfHAwJSoj|2^20").expect("lifetime ok");
    assert_eq!(c.tag, 1);
    assert_eq!(c.suite, Suite::AesCm128HmacSha1_80);
    assert_eq!(c.key.as_bytes().len(), 30);
    let mut s = String::new();
    c.write(&mut s);
    assert_eq!(
        s,
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:d0RmdmcmVCspeEc3QGZiNWpVLFJhQX1cfHAwJSoj\r\n"
    );
    assert_eq!(
        Crypto::parse("2 F8_128_HMAC_SHA1_80 inline:MTIzNDU2Nzg5QUJDREUwMTIzNDU2Nzg5QUJjZGVm").unwrap_err(),
        CryptoError::UnknownSuite
    );
    assert_eq!(Crypto::parse("1 AEAD_AES_128_GCM inline:AAAA").unwrap_err(), CryptoError::KeyLength);
    assert_eq!(
        Crypto::parse("1 AES_CM_128_HMAC_SHA1_80 inline:d0RmdmcmVCspeEc3QGZiNWpVLFJhQX1cfHAwJSoj UNENCRYPTED_SRTP").unwrap_err(),
        CryptoError::Unsupported
    );
    for junk in [
        "",
        "x",
        "1",
        "1 AES_CM_128_HMAC_SHA1_80",
        "1 AES_CM_128_HMAC_SHA1_80 key:abc",
        "99999999999 AES_CM_128_HMAC_SHA1_80 inline:x",
    ] {
        assert!(Crypto::parse(junk).is_err(), "{junk:?}");
    }
    assert_eq!(format!("{:?}", c.key), "KeyMaterial(30 bytes)", "keys never reach a log");
}
