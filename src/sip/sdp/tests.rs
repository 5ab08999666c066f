//! Offer/answer against the offers real phones, trunks and WebRTC gateways send.

use super::*;

fn local() -> LocalMedia {
    LocalMedia {
        addr: "192.0.2.10".parse().unwrap(),
        port: 10000,
        session_id: 7,
        version: 1,
        security: MediaSecurity::default(),
    }
}

fn offer_with(media: &str) -> SessionDescription {
    let text = format!("v=0\r\no=- 1 1 IN IP4 198.51.100.1\r\ns=-\r\nc=IN IP4 198.51.100.1\r\nt=0 0\r\n{media}");
    SessionDescription::parse(text.as_bytes()).unwrap()
}

#[test]
fn prefers_callers_order_and_keeps_telephone_event_pt() {
    let o =
        offer_with("m=audio 4000 RTP/AVP 8 0 96\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:96 telephone-event/8000\r\n");
    let (n, body) = answer(&o, &local()).unwrap();
    assert_eq!(n.codec, G711::Alaw);
    assert_eq!(n.payload_type, 8);
    assert_eq!(n.telephone_event, Some(96));
    assert_eq!(n.remote, "198.51.100.1:4000".parse().unwrap());
    assert!(body.contains("m=audio 10000 RTP/AVP 8 96\r\n"), "{body}");
    assert!(body.contains("a=rtpmap:96 telephone-event/8000\r\n"));
    assert!(body.contains("a=sendrecv"));
    let o = offer_with("m=audio 4000 RTP/AVP 0 8\r\n");
    assert_eq!(answer(&o, &local()).unwrap().0.codec, G711::Ulaw);
}

#[test]
fn skips_unsupported_codecs_and_dynamic_g711() {
    let o = offer_with("m=audio 4000 RTP/AVP 9 111 97\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:97 PCMU/8000\r\n");
    let (n, _) = answer(&o, &local()).unwrap();
    assert_eq!((n.codec, n.payload_type, n.telephone_event), (G711::Ulaw, 97, None));
}

#[test]
fn no_common_codec_is_488() {
    let o = offer_with("m=audio 4000 RTP/AVP 9 18\r\na=rtpmap:18 G729/8000\r\n");
    let e = answer(&o, &local()).unwrap_err();
    assert_eq!(e.status(), 488);
    assert!(e.to_string().contains("G729/8000"), "{e}");
}

#[test]
fn no_acceptable_stream_is_488_with_a_warning_and_other_streams_are_refused() {
    let o = offer_with("m=video 5000 RTP/AVP 31\r\n");
    let e = answer(&o, &local()).unwrap_err();
    assert_eq!(e, SdpError::NoAudio);
    let r = e.rejection();
    assert_eq!(r.status, 488);
    assert!(
        r.headers.iter().any(|(n, v)| *n == "Warning" && v.starts_with("304 precall \"")),
        "{r:?}"
    );
    for proto in ["RTP/SAVP", "UDP/TLS/RTP/SAVP", "RTP/SAVPF"] {
        let o = offer_with(&format!("m=audio 4000 {proto} 0\r\n"));
        let e = answer(&o, &local()).unwrap_err();
        assert_eq!(e, SdpError::NoPlainRtp(proto.into()));
        let r = e.rejection();
        assert_eq!(r.status, 488, "{proto}");
        let warning = &r.headers.iter().find(|(n, _)| *n == "Warning").unwrap().1;
        assert!(
            warning.starts_with("302 precall \"") && warning.contains(", 304 precall \""),
            "{warning}"
        );
    }
    let e = answer(&offer_with("m=audio 4000 RTP/AVP 18\r\n"), &local()).unwrap_err();
    assert!(e.rejection().headers.iter().any(|(_, v)| v.starts_with("305 ")));
    // SDP that does not parse stays a 400, without a Warning.
    let e = SessionDescription::parse(b"v=0\r\nm=audio port RTP/AVP 0\r\n").unwrap_err();
    assert_eq!((e.rejection().status, e.rejection().headers.len()), (400, 0));
    let o = offer_with("m=audio 4000 RTP/AVP 0\r\nm=video 5000 RTP/AVP 31\r\n");
    let (_, body) = answer(&o, &local()).unwrap();
    assert!(body.contains("m=video 0 RTP/AVP 31\r\n"), "{body}");
    assert!(SessionDescription::parse(b"o=- 1 1 IN IP4 1.2.3.4\r\n").is_err());
    assert!(SessionDescription::parse(b"v=0\r\nm=audio port RTP/AVP 0\r\n").is_err());
}

#[test]
fn hold_directions() {
    let o = offer_with("m=audio 4000 RTP/AVP 0\r\na=sendonly\r\n");
    let (n, body) = answer(&o, &local()).unwrap();
    assert_eq!(n.direction, Direction::RecvOnly);
    assert!(!n.direction.sends());
    assert!(body.contains("a=recvonly"));
    let o = offer_with("m=audio 4000 RTP/AVP 0\r\na=inactive\r\n");
    assert_eq!(answer(&o, &local()).unwrap().0.direction, Direction::Inactive);
    let text = "v=0\r\nc=IN IP4 0.0.0.0\r\nm=audio 4000 RTP/AVP 0\r\n";
    let o = SessionDescription::parse(text.as_bytes()).unwrap();
    assert_eq!(answer(&o, &local()).unwrap().0.direction, Direction::RecvOnly);
}

#[test]
fn a_reoffer_offers_the_session_as_it_stands() {
    let o = offer_with("m=audio 4000 RTP/AVP 8 0 96\r\na=rtpmap:96 telephone-event/8000\r\na=sendonly\r\n");
    let (n, _) = answer(&o, &local()).unwrap();
    let body = reoffer(&local(), &n);
    assert!(body.contains("m=audio 10000 RTP/AVP 8 96\r\n"), "{body}");
    assert!(body.contains("a=sendrecv"), "{body}");
    let echoed = accept_answer(
        &offer_with("m=audio 6000 RTP/AVP 8 96\r\na=rtpmap:96 telephone-event/8000\r\n"),
        &local(),
        None,
    )
    .unwrap();
    assert_eq!((echoed.codec, echoed.payload_type), (n.codec, n.payload_type));
}

#[test]
fn delayed_offer_round_trip() {
    let ours = offer(&local());
    assert!(ours.contains("m=audio 10000 RTP/AVP 0 8 101"));
    let their_answer = offer_with("m=audio 6000 RTP/AVP 8 101\r\na=rtpmap:101 telephone-event/8000\r\n");
    let n = accept_answer(&their_answer, &local(), None).unwrap();
    assert_eq!((n.codec, n.telephone_event, n.remote.port()), (G711::Alaw, Some(101), 6000));
}

// ---- SRTP (SDES) under each policy -----------------------------------------

const CRYPTO_80: &str = "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:d0RmdmcmVCspeEc3QGZiNWpVLFJhQX1cfHAwJSoj\r\n";
const CRYPTO_GCM: &str = "a=crypto:2 AEAD_AES_128_GCM inline:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGw==\r\n";

fn secure_local(policy: Policy, insecure: Option<&'static str>) -> LocalMedia {
    LocalMedia {
        security: MediaSecurity {
            policy,
            insecure_signalling: insecure,
            key: [9; MAX_KEY],
            dtls_fingerprint: Some([0xAB; 32]),
        },
        ..local()
    }
}

#[test]
fn optional_answers_savp_with_srtp_and_avp_with_rtp() {
    let l = secure_local(Policy::Optional, None);
    let (n, body) = answer(&offer_with(&format!("m=audio 6000 RTP/SAVP 0\r\n{CRYPTO_80}")), &l).unwrap();
    let p = n.srtp.expect("SRTP negotiated");
    assert_eq!((p.tag, p.suite), (1, Suite::AesCm128HmacSha1_80));
    assert_ne!(p.local, p.remote, "our key is our own");
    assert!(body.contains("m=audio 10000 RTP/SAVP 0\r\n"), "{body}");
    let ours = Crypto {
        tag: 1,
        suite: Suite::AesCm128HmacSha1_80,
        key: p.local,
    };
    let mut line = String::new();
    ours.write(&mut line);
    assert!(body.contains(&line), "{body}");
    // The answer parses back to the same keys.
    let back = SessionDescription::parse(body.as_bytes()).unwrap();
    assert_eq!(back.media[0].usable_crypto(), Some(ours));

    let (n, body) = answer(&offer_with("m=audio 6000 RTP/AVP 0\r\n"), &l).unwrap();
    assert!(n.srtp.is_none());
    assert!(!body.contains("crypto"), "{body}");
}

#[test]
fn srtp_suites_and_profiles_are_understood() {
    let l = secure_local(Policy::Optional, None);
    // The first usable line in the offer's order: an unknown suite is skipped.
    let offer = format!(
        "m=audio 6000 RTP/SAVPF 8\r\na=rtcp-mux\r\na=crypto:7 F8_128_HMAC_SHA1_80 inline:MTIzNDU2Nzg5QUJDREUwMTIzNDU2Nzg5QUJjZGVm\r\n{CRYPTO_GCM}{CRYPTO_80}"
    );
    let (n, body) = answer(&offer_with(&offer), &l).unwrap();
    let p = n.srtp.unwrap();
    assert_eq!((p.tag, p.suite), (2, Suite::AeadAes128Gcm));
    assert_eq!(p.local.as_bytes().len(), 28);
    assert!(body.contains("m=audio 10000 RTP/SAVPF 8\r\n"), "{body}");
    assert!(body.contains("a=crypto:2 AEAD_AES_128_GCM inline:"), "{body}");
    // Best-effort SRTP: a secure and a plain stream; optional takes the secure one.
    let both = format!("m=audio 6000 RTP/SAVP 0\r\n{CRYPTO_80}m=audio 6002 RTP/AVP 0\r\n");
    let (n, body) = answer(&offer_with(&both), &l).unwrap();
    assert_eq!(n.remote.port(), 6000);
    assert!(n.srtp.is_some());
    assert!(body.contains("m=audio 0 RTP/AVP 0\r\n"), "the plain alternative is refused: {body}");
    // Over plain UDP the same offer falls back to the plain stream.
    let (n, _) = answer(&offer_with(&both), &secure_local(Policy::Optional, Some("UDP"))).unwrap();
    assert_eq!(n.remote.port(), 6002);
    assert!(n.srtp.is_none());
}

#[test]
fn required_refuses_plain_rtp_and_keys_in_clear() {
    let required = secure_local(Policy::Required, None);
    let e = answer(&offer_with("m=audio 6000 RTP/AVP 0\r\n"), &required).unwrap_err();
    assert_eq!(e, SdpError::SrtpRequired("RTP/AVP".into()));
    let r = e.rejection();
    assert_eq!(r.status, 488);
    assert!(r.reason.contains("SRTP is required"), "{}", r.reason);
    assert!(
        r.headers.iter().any(|(n, v)| *n == "Warning" && v.starts_with("302 precall")),
        "{:?}",
        r.headers
    );

    let over_udp = secure_local(Policy::Required, Some("UDP"));
    let e = answer(&offer_with(&format!("m=audio 6000 RTP/SAVP 0\r\n{CRYPTO_80}")), &over_udp).unwrap_err();
    assert_eq!(e, SdpError::InsecureSdes("UDP"));
    assert!(
        e.rejection().reason.contains("must be sent over SIP over TLS"),
        "{}",
        e.rejection().reason
    );
    // Optional refuses keys in clear the same way when there is no plain stream.
    let e = answer(
        &offer_with(&format!("m=audio 6000 RTP/SAVP 0\r\n{CRYPTO_80}")),
        &secure_local(Policy::Optional, Some("TCP")),
    )
    .unwrap_err();
    assert_eq!(e, SdpError::InsecureSdes("TCP"));

    let e = answer(
        &offer_with("m=audio 6000 RTP/SAVP 0\r\na=crypto:1 AES_256_CM_HMAC_SHA1_80 inline:x\r\n"),
        &required,
    )
    .unwrap_err();
    assert_eq!(e, SdpError::NoCommonCrypto);
    // DTLS-SRTP is not SDES: refused as a transport mismatch.
    let e = answer(
        &offer_with("m=audio 6000 UDP/TLS/RTP/SAVP 0\r\na=fingerprint:sha-256 AB\r\n"),
        &required,
    )
    .unwrap_err();
    assert_eq!(e.status(), 488);
    // Off keeps the old answer: SAVP only is a transport mismatch.
    let e = answer(
        &offer_with(&format!("m=audio 6000 RTP/SAVP 0\r\n{CRYPTO_80}")),
        &secure_local(Policy::Off, None),
    )
    .unwrap_err();
    assert_eq!(e, SdpError::NoPlainRtp("RTP/SAVP".into()));
}

#[test]
fn delayed_offer_under_required_offers_every_suite_and_reads_the_choice() {
    let l = secure_local(Policy::Required, None);
    let ours = offer(&l);
    assert!(ours.contains("m=audio 10000 RTP/SAVP 0 8 101\r\n"), "{ours}");
    let offered = SessionDescription::parse(ours.as_bytes()).unwrap();
    assert_eq!(offered.media[0].crypto.len(), 3);
    // The caller answers with suite 2 (tag 2) and its own key.
    let their_key = "a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:d0RmdmcmVCspeEc3QGZiNWpVLFJhQX1cfHAwJSoj\r\n";
    let n = accept_answer(&offer_with(&format!("m=audio 6000 RTP/SAVP 0\r\n{their_key}")), &l, None).unwrap();
    let p = n.srtp.unwrap();
    assert_eq!((p.tag, p.suite), (2, Suite::AesCm128HmacSha1_32));
    // An answer that drops SRTP, or changes a tag's suite, is refused.
    assert!(accept_answer(&offer_with("m=audio 6000 RTP/AVP 0\r\n"), &l, None).is_err());
    let wrong = "a=crypto:1 AES_CM_128_HMAC_SHA1_32 inline:d0RmdmcmVCspeEc3QGZiNWpVLFJhQX1cfHAwJSoj\r\n";
    assert!(accept_answer(&offer_with(&format!("m=audio 6000 RTP/SAVP 0\r\n{wrong}")), &l, None).is_err());
    // Optional makes a plain offer (no capability negotiation).
    assert!(offer(&secure_local(Policy::Optional, None)).contains("RTP/AVP"));
}

#[test]
fn a_reoffer_repeats_the_srtp_session() {
    let l = secure_local(Policy::Optional, None);
    let (n, _) = answer(&offer_with(&format!("m=audio 6000 RTP/SAVP 0\r\n{CRYPTO_80}")), &l).unwrap();
    let again = reoffer(&l, &n);
    assert!(again.contains("RTP/SAVP"), "{again}");
    let sd = SessionDescription::parse(again.as_bytes()).unwrap();
    assert_eq!(sd.media[0].usable_crypto().map(|c| c.key), n.srtp.map(|p| p.local));
    // The caller's ACK echoes its own key under the same tag.
    let echoed = accept_answer(&offer_with(&format!("m=audio 6000 RTP/SAVP 0\r\n{CRYPTO_80}")), &l, Some(&n)).unwrap();
    assert_eq!(echoed.srtp, n.srtp);
}

#[test]
fn dtls_srtp_is_answered_passive_with_our_fingerprint() {
    let fp = "a=fingerprint:sha-256 5A:5A:5A:5A:5A:5A:5A:5A:5A:5A:5A:5A:5A:5A:5A:5A:5A:5A:5A:5A:5A:5A:5A:5A:5A:5A:5A:5A:5A:5A:5A:5A\r\n";
    // Over plain UDP too: no key crosses the signalling, only the fingerprint.
    let l = secure_local(Policy::Required, Some("UDP"));
    let (n, body) = answer(
        &offer_with(&format!(
            "m=audio 6000 UDP/TLS/RTP/SAVPF 0\r\n{fp}a=setup:actpass\r\na=rtcp-mux\r\n"
        )),
        &l,
    )
    .unwrap();
    let d = n.dtls.expect("DTLS negotiated");
    assert!(!d.client, "actpass: we are the passive (server) side");
    assert_eq!(d.remote_fingerprint, [0x5A; 32]);
    assert!(n.srtp.is_none(), "keys come from the handshake");
    assert!(body.contains("m=audio 10000 UDP/TLS/RTP/SAVPF 0\r\n"), "{body}");
    assert!(
        body.contains(&format!(
            "a=fingerprint:sha-256 {}\r\n",
            crate::media::dtls::format_fingerprint(&[0xAB; 32])
        )),
        "{body}"
    );
    assert!(body.contains("a=setup:passive\r\n"), "{body}");
    // Their passive makes us active; a session-level fingerprint counts.
    let session_level = format!(
        "v=0\r\no=- 1 1 IN IP4 198.51.100.1\r\ns=-\r\nc=IN IP4 198.51.100.1\r\nt=0 0\r\n{fp}m=audio 6000 UDP/TLS/RTP/SAVP 0\r\na=setup:passive\r\n"
    );
    let (n, body) = answer(&SessionDescription::parse(session_level.as_bytes()).unwrap(), &l).unwrap();
    assert!(n.dtls.unwrap().client);
    assert!(body.contains("a=setup:active\r\n"), "{body}");
    // SHA-1 only: refused, saying what is missing.
    let e = answer(&offer_with("m=audio 6000 UDP/TLS/RTP/SAVP 0\r\na=fingerprint:sha-1 AB:CD\r\n"), &l).unwrap_err();
    assert_eq!(e, SdpError::NoFingerprint);
    assert_eq!(e.status(), 488);
    // SDES over TLS is preferred to DTLS when both are offered.
    let both = format!("m=audio 6000 RTP/SAVP 0\r\n{CRYPTO_80}m=audio 6002 UDP/TLS/RTP/SAVP 0\r\n{fp}");
    let (n, _) = answer(&offer_with(&both), &secure_local(Policy::Optional, None)).unwrap();
    assert!(n.srtp.is_some() && n.dtls.is_none());
    // ...and DTLS taken when the SDES keys came in clear.
    let (n, _) = answer(&offer_with(&both), &secure_local(Policy::Optional, Some("UDP"))).unwrap();
    assert!(n.dtls.is_some() && n.remote.port() == 6002);
}
