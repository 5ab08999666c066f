//! Offer/answer against the offers real phones, trunks and WebRTC gateways send.

use super::*;

fn local() -> LocalMedia {
    LocalMedia {
        addr: "192.0.2.10".parse().unwrap(),
        port: 10000,
        session_id: 7,
        version: 1,
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
    let echoed = accept_answer(&offer_with("m=audio 6000 RTP/AVP 8 96\r\na=rtpmap:96 telephone-event/8000\r\n")).unwrap();
    assert_eq!((echoed.codec, echoed.payload_type), (n.codec, n.payload_type));
}

#[test]
fn delayed_offer_round_trip() {
    let ours = offer(&local());
    assert!(ours.contains("m=audio 10000 RTP/AVP 0 8 101"));
    let their_answer = offer_with("m=audio 6000 RTP/AVP 8 101\r\na=rtpmap:101 telephone-event/8000\r\n");
    let n = accept_answer(&their_answer).unwrap();
    assert_eq!((n.codec, n.telephone_event, n.remote.port()), (G711::Alaw, Some(101), 6000));
}
