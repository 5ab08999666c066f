//! SDP parsing and our answer to any offer (and any answer to our offer).
#![no_main]

use libfuzzer_sys::fuzz_target;
use precall::sip::sdp::{self, LocalMedia, SessionDescription};

fuzz_target!(|data: &[u8]| {
    let Ok(sd) = SessionDescription::parse(data) else { return };
    let local = LocalMedia {
        addr: "192.0.2.1".parse().expect("address"),
        port: 10_000,
        session_id: 1,
        version: 1,
        // SRTP optional over TLS: the a=crypto parsing and key handling run too.
        security: sdp::MediaSecurity {
            policy: precall::media::srtp::Policy::Optional,
            insecure_signalling: None,
            key: [7; precall::media::srtp::MAX_KEY],
            dtls_fingerprint: Some([0xAB; 32]),
        },
    };
    if let Ok((_, body)) = sdp::answer(&sd, &local) {
        // Our answer always parses back.
        SessionDescription::parse(body.as_bytes()).expect("our own SDP parses");
    }
    let _ = sdp::accept_answer(&sd, &local, None);
});
