//! The TwiML documents precall answers with, escaped as the Twilio SDK does.

/// XML-escapes text and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

const HEAD: &str = r#"<?xml version="1.0" encoding="UTF-8"?>"#;

/// The greeting (played or spoken), then back to the status callback.
pub fn greeting(play_url: Option<&str>, say: Option<&str>, redirect: &str) -> String {
    let first = match (say, play_url) {
        (Some(text), _) => format!("<Say>{}</Say>", escape(text)),
        (None, Some(url)) => format!("<Play>{}</Play>", escape(url)),
        (None, None) => String::new(),
    };
    format!(
        r#"{HEAD}<Response>{first}<Redirect method="POST">{}</Redirect></Response>"#,
        escape(redirect)
    )
}

/// The voice is not ready yet: wait a second (or play hold audio) and ask again.
pub fn hold(play_url: Option<&str>, redirect: &str) -> String {
    let wait = match play_url {
        Some(url) => format!("<Play>{}</Play>", escape(url)),
        None => r#"<Pause length="1" />"#.to_owned(),
    };
    format!(
        r#"{HEAD}<Response>{wait}<Redirect method="POST">{}</Redirect></Response>"#,
        escape(redirect)
    )
}

/// Bridge the call: a bidirectional stream carrying the call id (Twilio drops
/// query strings, so it travels as a `<Parameter>`), then hang up when it ends.
pub fn connect(stream_url: &str, call_id: &str) -> String {
    format!(
        r#"{HEAD}<Response><Connect><Stream url="{}"><Parameter name="call_id" value="{}" /></Stream></Connect><Hangup /></Response>"#,
        escape(stream_url),
        escape(call_id)
    )
}

pub fn hangup(say: Option<&str>) -> String {
    let say = say.map(|s| format!("<Say>{}</Say>", escape(s))).unwrap_or_default();
    format!("{HEAD}<Response>{say}<Hangup /></Response>")
}

pub fn empty() -> String {
    format!("{HEAD}<Response />")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_sdk_output() {
        // test-vectors.md, "Bridge with custom parameter and explicit hangup".
        assert_eq!(
            connect("wss://voice.example.com/twilio/media", "abc123"),
            r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="wss://voice.example.com/twilio/media"><Parameter name="call_id" value="abc123" /></Stream></Connect><Hangup /></Response>"#
        );
        assert_eq!(
            hangup(Some("Goodbye & thanks <3")),
            r#"<?xml version="1.0" encoding="UTF-8"?><Response><Say>Goodbye &amp; thanks &lt;3</Say><Hangup /></Response>"#
        );
        assert!(
            hold(None, "https://x/webhooks/status-callback")
                .contains(r#"<Pause length="1" /><Redirect method="POST">https://x/webhooks/status-callback</Redirect>"#)
        );
    }
}
