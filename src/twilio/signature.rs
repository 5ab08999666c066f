//! `X-Twilio-Signature` validation, exactly as the official SDK's
//! `RequestValidator` computes it (`docs/protocols.md` §6.3; every vector in
//! `test-vectors.md` is a test below).
//!
//! The signed string is the public URL Twilio requested (userinfo dropped),
//! followed, for a form POST, by each decoded parameter's name and value in
//! name order (repeated names: each distinct value, sorted). Both port forms
//! are accepted (none, or the scheme's default). A JSON body is covered by the
//! `bodySHA256` query parameter instead. The comparison is constant-time.

use hmac::{Hmac, Mac};
use sha2::Digest;
use subtle::ConstantTimeEq;

/// Which MAC the request was signed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// The account's Auth Token, HMAC-SHA1 (the default).
    Sha1,
    /// A webhook shared key, HMAC-SHA256 (`X-Twilio-Webhooks-Signature-Settings`).
    Sha256,
}

impl Algorithm {
    /// From the `X-Twilio-Webhooks-Signature-Settings` header, when present.
    pub fn from_settings(header: Option<&str>) -> Self {
        let sha256 = header.is_some_and(|h| {
            h.split(',')
                .filter_map(|p| p.trim().split_once('='))
                .any(|(k, v)| k.trim() == "algorithm" && v.trim().eq_ignore_ascii_case("HMAC_SHA256"))
        });
        if sha256 { Algorithm::Sha256 } else { Algorithm::Sha1 }
    }
}

/// `base64(HMAC(secret, url + sorted params))`.
pub fn compute(secret: &str, algorithm: Algorithm, url: &str, params: &[(String, String)]) -> String {
    use base64::Engine as _;
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    sorted.dedup();
    let mut data = String::from(url);
    for (k, v) in sorted {
        data.push_str(k);
        data.push_str(v);
    }
    let mac = match algorithm {
        Algorithm::Sha1 => {
            let mut m = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
            m.update(data.as_bytes());
            m.finalize().into_bytes().to_vec()
        }
        Algorithm::Sha256 => {
            let mut m = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
            m.update(data.as_bytes());
            m.finalize().into_bytes().to_vec()
        }
    };
    base64::engine::general_purpose::STANDARD.encode(mac)
}

/// `https://user:pass@host/x` → `https://host/x`.
fn strip_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{scheme}://{host}{tail}")
}

/// The URL with its port removed, and with its port (the scheme's default
/// when it has none), as the SDK's `remove_port` / `add_port`.
fn port_variants(url: &str) -> [String; 2] {
    let Some((scheme, rest)) = url.split_once("://") else {
        return [url.to_owned(), url.to_owned()];
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) => (h, Some(p)),
        _ => (authority, None),
    };
    let default = match scheme {
        "https" | "wss" => "443",
        _ => "80",
    };
    [
        format!("{scheme}://{host}{tail}"),
        format!("{scheme}://{host}:{}{tail}", port.unwrap_or(default)),
    ]
}

/// Whether `signature` is valid for a request to `url` with form `params`
/// (empty for GET, JSON and WebSocket requests). For a JSON body pass it as
/// `json_body`: its SHA-256 must match the URL's `bodySHA256`.
pub fn validate(
    secret: &str,
    algorithm: Algorithm,
    url: &str,
    params: &[(String, String)],
    json_body: Option<&[u8]>,
    signature: &str,
) -> bool {
    if secret.is_empty() || signature.is_empty() {
        return false;
    }
    let url = strip_userinfo(url);
    if let Some(body) = json_body {
        let want = url
            .split_once('?')
            .and_then(|(_, q)| q.split('&').find_map(|p| p.strip_prefix("bodySHA256=")));
        let got = hex::encode(sha2::Sha256::digest(body));
        if want.is_none_or(|w| !bool::from(w.as_bytes().ct_eq(got.as_bytes()))) {
            return false;
        }
    }
    let params: &[(String, String)] = if json_body.is_some() { &[] } else { params };
    let mut ok = false;
    for candidate in port_variants(&url) {
        let expected = compute(secret, algorithm, &candidate, params);
        ok |= bool::from(expected.as_bytes().ct_eq(signature.as_bytes()));
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    const T2_TOKEN: &str = "0123456789abcdef0123456789abcdef";
    const T2_URL: &str = "https://voice.example.com/twilio/voice";
    const T2_BODY: &str = "AccountSid=AC00000000000000000000000000000001&ApiVersion=2010-04-01&CallSid=CA00000000000000000000000000000002&CallStatus=ringing&Called=%2B15005550006&Caller=%2B14155551234&Direction=inbound&From=%2B14155551234&FromCity=SAN+FRANCISCO&FromCountry=US&FromState=CA&FromZip=94105&To=%2B15005550006&ToCountry=US";

    fn t2_params() -> Vec<(String, String)> {
        serde_urlencoded::from_str(T2_BODY).unwrap()
    }

    #[test]
    fn t1_classic_vector() {
        let params = p(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]);
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        assert_eq!(compute("12345", Algorithm::Sha1, url, &params), "0/KCTR6DLpKmkAf8muzZqo1nDgQ=");
        assert!(validate(
            "12345",
            Algorithm::Sha1,
            url,
            &params,
            None,
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        ));
        assert!(!validate(
            "12345",
            Algorithm::Sha1,
            url,
            &params,
            None,
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ"
        ));
        assert!(!validate(
            "54321",
            Algorithm::Sha1,
            url,
            &params,
            None,
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        ));
    }

    #[test]
    fn t2_realistic_webhook_and_both_port_forms() {
        let params = t2_params();
        assert_eq!(compute(T2_TOKEN, Algorithm::Sha1, T2_URL, &params), "jclRVFh/31KIIjCPqjFS78t8Mc0=");
        let with_port = "https://voice.example.com:443/twilio/voice";
        assert_eq!(
            compute(T2_TOKEN, Algorithm::Sha1, with_port, &params),
            "OCVKkrx8IZU3lxUX3MpMKxVAxk0="
        );
        assert!(sha1_valid(with_port, &params, "jclRVFh/31KIIjCPqjFS78t8Mc0="));
        assert!(sha1_valid(T2_URL, &params, "OCVKkrx8IZU3lxUX3MpMKxVAxk0="));
        let mut tampered = params.clone();
        tampered[0].1.push('9');
        assert!(!sha1_valid(T2_URL, &tampered, "jclRVFh/31KIIjCPqjFS78t8Mc0="));
    }

    #[test]
    fn a_non_default_port_is_signed_as_is() {
        let url = "http://127.0.0.1:3006/webhooks/inbound";
        let params = p(&[("CallSid", "CA1")]);
        let sig = compute(T2_TOKEN, Algorithm::Sha1, url, &params);
        assert!(validate(T2_TOKEN, Algorithm::Sha1, url, &params, None, &sig));
    }

    #[test]
    fn t3_values_are_decoded_before_signing() {
        let wire = "SpeechResult=Hello%2C+world%21+50%25+off+%26+more&Digits=&Caller=%2B14155551234&Name=Zo%C3%AB";
        let params: Vec<(String, String)> = serde_urlencoded::from_str(wire).unwrap();
        assert_eq!(compute(T2_TOKEN, Algorithm::Sha1, T2_URL, &params), "LTy0H9KNd1TG5TVTvqJ8XbqSYUI=");
    }

    #[test]
    fn t4_repeated_names_sign_each_distinct_value_sorted() {
        let params = p(&[("A", "2"), ("A", "1"), ("A", "1"), ("B", "x")]);
        assert_eq!(compute(T2_TOKEN, Algorithm::Sha1, T2_URL, &params), "RX+XJS+JylIipPAndGDau/Q4d7g=");
    }

    #[test]
    fn t5_json_body_is_covered_by_body_sha256() {
        let body = br#"{"CallSid":"CA1234567890ABCDE","Caller":"+12349013030"}"#;
        let url = "https://example.com/myapp?bodySHA256=5ccde7145dfb8f56479710896586cb9d5911809d83afbe34627818790db0aec9";
        assert!(validate(
            "12345",
            Algorithm::Sha1,
            url,
            &[],
            Some(body),
            "hPXmLwIy3Fgqv1i9KPmH/HhQ6zo="
        ));
        assert!(!validate(
            "12345",
            Algorithm::Sha1,
            url,
            &[],
            Some(b"{}"),
            "hPXmLwIy3Fgqv1i9KPmH/HhQ6zo="
        ));
    }

    #[test]
    fn t6_websocket_handshake() {
        assert_eq!(
            compute(T2_TOKEN, Algorithm::Sha1, "wss://voice.example.com/twilio/media", &[]),
            "3Wv0T80qzAY3OCARW9y1gnUJZtE="
        );
        assert_eq!(
            compute(T2_TOKEN, Algorithm::Sha1, "wss://voice.example.com/twilio/media/", &[]),
            "emydRDSHhLvuug6wCkjTHD/G0T0="
        );
    }

    #[test]
    fn t7_shared_key_sha256() {
        let alg = Algorithm::from_settings(Some("key=webhooks_sharedkey_123,algorithm=HMAC_SHA256"));
        assert_eq!(alg, Algorithm::Sha256);
        assert_eq!(Algorithm::from_settings(None), Algorithm::Sha1);
        assert_eq!(Algorithm::from_settings(Some("key=x")), Algorithm::Sha1);
        assert_eq!(
            compute(T2_TOKEN, alg, T2_URL, &t2_params()),
            "qAeD+3V8birJ0oxkkXijpj798cBLpMVPN1QfT3h92KQ="
        );
    }

    #[test]
    fn t8_userinfo_is_dropped() {
        let params = p(&[("CallSid", "CA1")]);
        assert_eq!(compute(T2_TOKEN, Algorithm::Sha1, T2_URL, &params), "6CPAn4ndE421qwkiptsAMXa2rYE=");
        let with_user = "https://user:pass@voice.example.com/twilio/voice";
        assert_eq!(
            compute(T2_TOKEN, Algorithm::Sha1, with_user, &params),
            "i9NsFEHNqG7WcM06urQhOXZ4ams="
        );
        assert!(sha1_valid(with_user, &params, "6CPAn4ndE421qwkiptsAMXa2rYE="));
    }

    /// A form-encoded request signed with SHA-1 under the T2 token.
    fn sha1_valid(url: &str, params: &[(String, String)], signature: &str) -> bool {
        validate(T2_TOKEN, Algorithm::Sha1, url, params, None, signature)
    }
}
