use super::*;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn defaults() {
    let s = Settings::load_from(None, &env(&[])).unwrap();
    assert_eq!(s.sip_listen, "0.0.0.0:5060".parse().unwrap());
    assert_eq!(s.rtp_ports, (10000, 20000));
    assert_eq!(s.raw.limits.max_calls, 1000);
    assert_eq!(s.raw.limits.max_call_seconds, 3600);
    assert_eq!(s.raw.rtp.timeout_seconds, 60);
    assert_eq!(s.raw.rtp.hold_timeout_seconds, 300);
    assert!(s.greeting_file.is_none());
    assert_eq!(s.log_format, LogFormat::Text);
}

#[test]
fn file_then_environment_then_aliases() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("precall.toml");
    std::fs::write(
        &path,
        "[sip]\nlisten = \"127.0.0.1:5070\"\n[limits]\nmax_calls = 5\n[rtp]\nport_min = 30001\nport_max = 30099\n",
    )
    .unwrap();
    let s = Settings::load_from(Some(&path), &env(&[])).unwrap();
    assert_eq!(s.sip_listen.port(), 5070);
    assert_eq!(s.raw.limits.max_calls, 5);
    assert_eq!(s.rtp_ports, (30002, 30098), "rounded inwards to even ports");
    let s = Settings::load_from(
        Some(&path),
        &env(&[("PRECALL_SIP__LISTEN", "127.0.0.1:15060"), ("PRECALL_LIMITS__MAX_CALLS", "7")]),
    )
    .unwrap();
    assert_eq!(s.sip_listen.port(), 15060);
    assert_eq!(s.raw.limits.max_calls, 7);
    let s = Settings::load_from(
        None,
        &env(&[("SIP_HOST", "127.0.0.1"), ("SIP_PORT", "5099"), ("LOG_LEVEL", "DEBUG")]),
    )
    .unwrap();
    assert_eq!(s.sip_listen, "127.0.0.1:5099".parse().unwrap());
    assert_eq!(s.raw.log.level, "debug");
    let s = Settings::load_from(
        None,
        &env(&[
            ("ELEVENLABS_API_KEY", "sk-live"),
            ("CLONE_MAX_WAIT_SECONDS", "12"),
            ("GREETING_MESSAGE", "Hi"),
            ("GREETING_MUSIC_ENABLED", "true"),
        ]),
    )
    .unwrap();
    assert_eq!((s.raw.elevenlabs.api_key.as_str(), s.raw.clone.max_wait_seconds), ("sk-live", 12));
    assert_eq!((s.raw.greeting.message.as_str(), s.raw.greeting.music_enabled), ("Hi", true));
    assert!(!s.to_masked_toml().contains("sk-live"), "the API key is masked");
    let s = Settings::load_from(None, &env(&[("SIP_HOST", "127.0.0.1"), ("PRECALL_SIP__LISTEN", "127.0.0.1:5100")])).unwrap();
    assert_eq!(s.sip_listen.port(), 5100, "PRECALL_ names win over the seed's aliases");
    let s = Settings::load_from(None, &env(&[("PRECALL_CONFIG", path.to_str().unwrap())])).unwrap();
    assert_eq!(s.sip_listen.port(), 5070);
}

#[test]
fn invalid_values_name_the_key() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("PRECALL_SIP__LISTEN", "nowhere")], "sip.listen"),
        (&[("PRECALL_SIP__PUBLIC_ADDR", "not-an-ip")], "sip.public_addr"),
        (
            &[("PRECALL_RTP__PORT_MIN", "20000"), ("PRECALL_RTP__PORT_MAX", "10000")],
            "rtp.port_min",
        ),
        (&[("PRECALL_LIMITS__MAX_CALLS", "0")], "limits.max_calls"),
        (&[("PRECALL_LOG__FORMAT", "xml")], "log.format"),
        (&[("PRECALL_GREETING__FILE", "/nonexistent.wav")], "greeting.file"),
        (&[("PRECALL_GREETING__MUSIC_FILE", "/nonexistent.wav")], "greeting.music_file"),
        (&[("PRECALL_GREETING__APOLOGY_FILE", "/nonexistent.wav")], "greeting.apology_file"),
        (&[("CLONE_MAX_WAIT_SECONDS", "0")], "clone.max_wait_seconds"),
        (&[("PRECALL_ELEVENLABS__BASE_URL", "ftp://x")], "elevenlabs.base_url"),
        (&[("PRECALL_SIP_LISTEN", "127.0.0.1:1")], "double underscore"),
        (&[("PRECALL_RTP__PORT_MIN", "abc")], "port_min"),
    ];
    for (vars, needle) in cases {
        let err = Settings::load_from(None, &env(vars)).unwrap_err().to_string();
        assert!(err.contains(needle), "{vars:?}: {err}");
    }
}

#[test]
fn database_url_forms() {
    let s = Settings::load_from(None, &env(&[])).unwrap();
    assert_eq!(s.database_url, "sqlite://data/precall.db?mode=rwc");
    let s = Settings::load_from(None, &env(&[("PRECALL_DATA__DIR", "/var/lib/precall/")])).unwrap();
    assert_eq!(s.database_url, "sqlite:///var/lib/precall/precall.db?mode=rwc");
    let s = Settings::load_from(None, &env(&[("DATABASE_URL", "postgres://precall:pw@db/precall")])).unwrap();
    assert_eq!(s.database_url, "postgres://precall:pw@db/precall");
    let text = s.to_masked_toml();
    assert!(
        text.contains("postgres://precall:********@db/precall") && !text.contains(":pw@"),
        "{text}"
    );
    let s = Settings::load_from(
        None,
        &env(&[("DATABASE_URL", "postgres://a@b/c"), ("PRECALL_DATABASE__URL", "sqlite::memory:")]),
    )
    .unwrap();
    assert_eq!(s.database_url, "sqlite::memory:");
    let e = Settings::load_from(None, &env(&[("DATABASE_URL", "mysql://x/y")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("database.url"), "{e}");
    assert!(!s.node_id.is_empty());
}

#[test]
fn public_addr_forms_and_masking() {
    let s = Settings::load_from(None, &env(&[("PRECALL_SIP__PUBLIC_ADDR", "203.0.113.5")])).unwrap();
    assert_eq!(s.public_addr, Some("203.0.113.5:5060".parse().unwrap()));
    let s = Settings::load_from(None, &env(&[("PRECALL_SIP__PUBLIC_ADDR", "203.0.113.5:5080")])).unwrap();
    assert_eq!(s.public_addr.unwrap().port(), 5080);
    let text = s.to_masked_toml();
    assert!(text.contains("public_addr = \"203.0.113.5:5080\""), "{text}");
    let mut v: toml::Value = toml::from_str("[elevenlabs]\napi_key = \"sk-123\"\nother = \"y\"\n").unwrap();
    mask(&mut v, "");
    let out = toml::to_string(&v).unwrap();
    assert!(
        out.contains("********") && !out.contains("sk-123") && out.contains("\"y\""),
        "{out}"
    );
}

#[test]
fn password_env_is_resolved_from_the_injected_environment() {
    let mut raw = RawSettings::default();
    raw.sip.auth_realm = "precall".into();
    raw.sip.auth_users = vec![AuthUserSection {
        username: "pbx".into(),
        password_env: "PRECALL_TEST_PBX_PASSWORD_NOT_IN_THE_PROCESS".into(),
        ..AuthUserSection::default()
    }];
    let s = Settings::compile_with_env(raw.clone(), &env(&[("PRECALL_TEST_PBX_PASSWORD_NOT_IN_THE_PROCESS", "s3cret")])).unwrap();
    assert_eq!(s.sip_auth.unwrap().users, vec![("pbx".to_owned(), "s3cret".to_owned())]);
    let err = Settings::compile_with_env(raw, &env(&[])).unwrap_err().to_string();
    assert!(err.contains("PRECALL_TEST_PBX_PASSWORD_NOT_IN_THE_PROCESS is not set"), "{err}");
}

/// Issue 17 #3: every secret in [`SECRETS`] is set to a value of its own, and
/// none of them shows in `check-config`'s output (nor in the masked TOML's
/// structure: the keys are still there, masked).
#[test]
fn check_config_shows_no_secret() {
    let toml = r#"
        [elevenlabs]
        api_key = "SECRET-elevenlabs-api-key"
        webhook_secret = "SECRET-webhook-secret"
        [twilio]
        auth_token = "SECRET-twilio-token"
        webhook_signing_key = "SECRET-signing-key"
        [api]
        key = "SECRET-admin-api-key"
        [sip]
        auth_realm = "precall.test"
        [[sip.auth_users]]
        username = "pbx"
        password = "SECRET-auth-user-password"
        [[sip.registrations]]
        registrar = "sip:registrar.example"
        aor = "sip:100@registrar.example"
        username = "100"
        password = "SECRET-registration-password"
    "#;
    let raw: RawSettings = toml::from_str(toml).expect("test config parses");
    let settings = Settings::compile_with_env(raw, &HashMap::new()).expect("valid");
    let shown = settings.to_masked_toml();
    assert!(!shown.contains("SECRET-"), "a secret is shown:\n{shown}");
    let masked = shown.matches("\"********\"").count();
    assert_eq!(masked, SECRETS.len(), "each listed secret is present and masked:\n{shown}");
}
