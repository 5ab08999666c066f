//! The SIP parser on any bytes: a datagram as UDP delivers it, and the same
//! bytes framed as a TCP stream arriving in two pieces.
#![no_main]

use libfuzzer_sys::fuzz_target;
use precall::sip::message::{self, Framer, Request, Response};

fuzz_target!(|data: &[u8]| {
    if let Ok(raw) = message::parse(data) {
        if data.starts_with(b"SIP/2.0") {
            let _ = Response::validate(raw);
        } else if let Ok(req) = Request::validate(raw) {
            let _ = precall::sip::sdp::offer_in(&req);
        }
    }
    // Stream framing: the same answer however the bytes are split.
    let whole = Framer::default().next(data).ok().flatten();
    let split = data.len() / 2;
    let mut framer = Framer::default();
    let first = framer.next(&data[..split]).ok().flatten();
    let second = framer.next(data).ok().flatten();
    if let Some(len) = whole {
        assert!(len <= data.len());
        assert_eq!(first.or(second), Some(len), "framing depends on how the bytes arrived");
    }
});
