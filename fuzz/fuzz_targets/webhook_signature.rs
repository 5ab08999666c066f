//! Signature headers of both webhooks: ElevenLabs' `ElevenLabs-Signature` and
//! Twilio's `X-Twilio-Signature`, with any header, body and clock.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use precall::elevenlabs::webhook::{self, Verifier};

#[derive(Arbitrary, Debug)]
struct Input {
    header: String,
    body: Vec<u8>,
    now: i64,
    tolerance: i64,
    url: String,
    params: Vec<(String, String)>,
}

fuzz_target!(|input: Input| {
    if let Ok(mut v) = Verifier::new("wsec_fuzz", &input.header, input.now, input.tolerance) {
        v.update(&input.body);
        let _ = v.finish();
    }
    // A correct signature always verifies, and one changed byte never does.
    let t = input.now.rem_euclid(1 << 33);
    let signed = webhook::sign("wsec_fuzz", t, &input.body);
    assert_eq!(webhook::verify("wsec_fuzz", &signed, &input.body, t), Ok(()));
    let mut tampered = input.body.clone();
    tampered.push(0);
    assert!(webhook::verify("wsec_fuzz", &signed, &tampered, t).is_err());
    let _ = precall::twilio::signature::compute("token", precall::twilio::signature::Algorithm::Sha1, &input.url, &input.params);
});
