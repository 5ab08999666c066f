//! An INVITE whose body is multipart/mixed with any boundary and parts: the
//! SDP offer is found, or a clear rejection comes back.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use precall::sip::message::{self, Request};

#[derive(Arbitrary, Debug)]
struct Input {
    content_type: String,
    body: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let ct: String = input.content_type.chars().filter(|c| *c != '\r' && *c != '\n').take(200).collect();
    let mut msg = format!(
        "INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bK-1\r\nMax-Forwards: 70\r\n\
         From: <sip:alice@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\n\
         Contact: <sip:alice@192.0.2.7>\r\nContent-Type: multipart/mixed;{ct}\r\nContent-Length: {}\r\n\r\n",
        input.body.len()
    )
    .into_bytes();
    msg.extend_from_slice(&input.body);
    let Ok(raw) = message::parse(&msg) else { return };
    let Ok(req) = Request::validate(raw) else { return };
    match precall::sip::sdp::offer_in(&req) {
        Ok(Some(sdp)) => assert!(sdp.len() <= input.body.len()),
        Ok(None) => {}
        Err(r) => assert!((400..500).contains(&r.status), "a client error, not {}", r.status),
    }
});
