//! RFC 4475 SIP torture tests: all 49 messages, byte-exact (checksums verified),
//! fed to the endpoint as UDP datagrams. Each must leave it running and get the
//! answer the RFC asks of a UAS (or none, for responses nobody asked for).

use std::collections::HashMap;
use std::time::Instant;

use precall::sip::endpoint::{Endpoint, EndpointConfig, Output, SipEvent};
use precall::sip::message::Rejection;
use precall::sip::sdp::{self, LocalMedia, SessionDescription};
use precall::sip::{Flow, Transport};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/rfc4475");

/// Expected status for a UAS, with the RFC 4475 section. `None`: a response, dropped.
const EXPECTED: &[(&str, Option<u16>, &str)] = &[
    // 3.1.1 valid messages
    ("wsinv", Some(481), "3.1.1.1 valid, but its To tag names a dialog we do not have"),
    ("intmeth", Some(501), "3.1.1.2 valid, unknown method"),
    ("esc01", Some(200), "3.1.1.3 valid INVITE with escapes"),
    ("escnull", Some(405), "3.1.1.4 valid REGISTER with %00; we are no registrar"),
    ("esc02", Some(501), "3.1.1.5 valid, escaped method name is an unknown method"),
    ("lwsdisp", Some(200), "3.1.1.6 valid OPTIONS"),
    ("longreq", Some(200), "3.1.1.7 valid INVITE with long values"),
    ("dblreq", Some(405), "3.1.1.8 valid REGISTER, extra bytes ignored"),
    ("semiuri", Some(200), "3.1.1.9 valid OPTIONS"),
    ("transports", Some(200), "3.1.1.10 valid OPTIONS"),
    ("mpart01", Some(405), "3.1.1.11 valid MESSAGE; we do not take MESSAGE"),
    ("unreason", None, "3.1.1.12 response"),
    ("noreason", None, "3.1.1.13 response"),
    // 3.1.2 invalid messages
    ("badinv01", Some(400), "3.1.2.1 extraneous header separators"),
    ("clerr", Some(400), "3.1.2.2 Content-Length larger than message"),
    ("ncl", Some(400), "3.1.2.3 negative Content-Length"),
    ("scalar02", Some(400), "3.1.2.4 overlarge scalar fields"),
    ("scalarlg", None, "3.1.2.5 response"),
    ("quotbal", Some(400), "3.1.2.6 unterminated quoted string"),
    ("ltgtruri", Some(400), "3.1.2.7 <> around Request-URI"),
    ("lwsruri", Some(400), "3.1.2.8 LWS in Request-URI"),
    ("lwsstart", Some(400), "3.1.2.9 multiple SP in request line"),
    ("trws", Some(400), "3.1.2.10 trailing SP in request line (rejecting is allowed)"),
    ("escruri", Some(400), "3.1.2.11 escaped headers in Request-URI"),
    ("baddate", Some(200), "3.1.2.12 invalid Date time zone: accept"),
    ("regbadct", Some(400), "3.1.2.13 name-addr URI not in <>"),
    ("badaspec", Some(400), "3.1.2.14 spaces in addr-spec"),
    ("baddn", Some(400), "3.1.2.15 non-token characters in display name"),
    ("badvers", Some(505), "3.1.2.16 unknown protocol version"),
    ("mismatch01", Some(400), "3.1.2.17 CSeq method mismatch"),
    ("mismatch02", Some(400), "3.1.2.18 unknown method + CSeq mismatch (400 acceptable)"),
    ("bigcode", None, "3.1.2.19 response"),
    // 3.2 transaction layer
    ("badbranch", Some(200), "3.2.1 branch is only the magic cookie: process"),
    // 3.3 application layer
    ("insuf", Some(400), "3.3.1 missing required headers"),
    ("unkscm", Some(416), "3.3.2 unknown Request-URI scheme"),
    ("novelsc", Some(416), "3.3.3 atypical Request-URI scheme"),
    ("unksm2", Some(405), "3.3.4 unknown scheme in To is fine; REGISTER is not ours"),
    ("bext01", Some(420), "3.3.5 Require with unknown options"),
    ("invut", Some(415), "3.3.6 unknown Content-Type"),
    ("regaut01", Some(405), "3.3.7 REGISTER with unknown auth scheme"),
    ("multi01", Some(400), "3.3.8 multiple single-value headers"),
    ("mcl01", Some(400), "3.3.9 multiple Content-Length"),
    ("bcast", None, "3.3.10 response"),
    ("zeromf", Some(200), "3.3.11 Max-Forwards 0 at an endpoint: process"),
    ("cparam01", Some(405), "3.3.12 REGISTER"),
    ("cparam02", Some(405), "3.3.13 REGISTER"),
    ("regescrt", Some(405), "3.3.14 REGISTER"),
    ("sdp01", Some(406), "3.3.15 Accept excludes application/sdp"),
    ("inv2543", Some(200), "3.4.1 RFC 2543 INVITE"),
];

fn sha256_hex(data: &[u8]) -> String {
    // Tiny SHA-256 so the checksum check needs no extra dependency.
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be,
        0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa,
        0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85,
        0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3,
        0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f,
        0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    let bits = (data.len() as u64) * 8;
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bits.to_be_bytes());
    for chunk in msg.chunks(64) {
        let mut w = [0u32; 64];
        for i in 0..16 {
            w[i] = u32::from_be_bytes([chunk[4 * i], chunk[4 * i + 1], chunk[4 * i + 2], chunk[4 * i + 3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
        }
        let mut v = h;
        for i in 0..64 {
            let s1 = v[4].rotate_right(6) ^ v[4].rotate_right(11) ^ v[4].rotate_right(25);
            let ch = (v[4] & v[5]) ^ (!v[4] & v[6]);
            let t1 = v[7].wrapping_add(s1).wrapping_add(ch).wrapping_add(K[i]).wrapping_add(w[i]);
            let s0 = v[0].rotate_right(2) ^ v[0].rotate_right(13) ^ v[0].rotate_right(22);
            let maj = (v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]);
            let t2 = s0.wrapping_add(maj);
            v = [t1.wrapping_add(t2), v[0], v[1], v[2], v[3].wrapping_add(t1), v[4], v[5], v[6]];
        }
        for i in 0..8 {
            h[i] = h[i].wrapping_add(v[i]);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}

#[test]
fn corpus_is_byte_exact() {
    let sums = std::fs::read_to_string(format!("{DIR}/SHA256SUMS")).unwrap();
    let mut n = 0;
    for line in sums.lines().filter(|l| !l.trim().is_empty()) {
        let (sum, name) = line.split_once(char::is_whitespace).unwrap();
        let name = name.trim().trim_start_matches('*');
        let data = std::fs::read(format!("{DIR}/{name}")).unwrap();
        assert_eq!(sha256_hex(&data), sum, "{name}");
        n += 1;
    }
    assert_eq!(n, 49);
    assert_eq!(
        sha256_hex(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn every_torture_message_gets_the_rfc_answer() {
    let flow = Flow {
        transport: Transport::Udp,
        remote: "192.0.2.9:5060".parse().unwrap(),
        local: "192.0.2.1:5060".parse().unwrap(),
    };
    let mut results: HashMap<&str, Option<(u16, String)>> = HashMap::new();
    let mut ep = Endpoint::new(EndpointConfig {
        user_agent: "precall-test".into(),
        timers: Default::default(),
        public_addr: None,
        session: Default::default(),
        auth: None,
    });
    let now = Instant::now();
    for (name, _, _) in EXPECTED {
        let data = std::fs::read(format!("{DIR}/{name}.sip")).unwrap();
        ep.handle_datagram(now, flow, &data);
        let mut final_status = None;
        while let Some(out) = ep.poll_output() {
            match out {
                Output::Transmit(t) => {
                    let text = String::from_utf8_lossy(&t.data).into_owned();
                    let code: u16 = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
                    if code >= 200 {
                        final_status = Some((code, text.lines().next().unwrap_or("").to_owned()));
                    }
                }
                Output::Event(SipEvent::Invite { call, request, .. }) => {
                    // Act as the call layer: answer the SDP or refuse it.
                    let local = LocalMedia {
                        addr: "192.0.2.1".parse().unwrap(),
                        port: 10000,
                        session_id: 1,
                        version: 1,
                        security: Default::default(),
                    };
                    match SessionDescription::parse(&request.body).and_then(|sd| sdp::answer(&sd, &local)) {
                        Ok((_, body)) => ep.accept(now, call, body.as_bytes()),
                        Err(e) => ep.reject(now, call, Rejection::new(e.status(), e.to_string())),
                    }
                }
                Output::Event(_) | Output::Response(_) => {}
            }
        }
        results.insert(name, final_status);
    }
    let mut wrong = Vec::new();
    for (name, expected, why) in EXPECTED {
        let got = results[name].clone();
        if got.as_ref().map(|(c, _)| *c) != *expected {
            wrong.push(format!("{name}: expected {expected:?} ({why}), got {got:?}"));
        }
        if let (Some((code, line)), true) = (&got, expected.is_some_and(|c| c == 400)) {
            assert!(
                line.len() > "SIP/2.0 400 Bad Request".len(),
                "{name}: a 400 must say what was wrong: {line} ({code})"
            );
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(EXPECTED.len(), 49);
}
