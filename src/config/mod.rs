//! Settings: built-in defaults < TOML file < environment.
//!
//! Every key is settable as `PRECALL_<SECTION>__<KEY>` (double underscore between
//! section and key, because keys themselves contain single underscores). The
//! seed service's names (`SIP_HOST` + `SIP_PORT`, `LOG_LEVEL`) are honoured as
//! aliases below the `PRECALL_` names. This is the only module that reads the
//! environment. Raw settings are deserialised first, then compiled into a
//! validated [`Settings`] the rest of the daemon trusts (siphon-ai's raw → compile).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

mod sections;
mod subsystems;

pub use sections::*;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot load configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid value for {key}: {why}")]
    Invalid { key: &'static str, why: String },
}

/// A comma-separated list of CIDRs (or plain addresses).
fn cidrs(key: &'static str, list: &str) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    list.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| {
            c.parse::<ipnet::IpNet>()
                .or_else(|_| c.parse::<IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| invalid(key, format!("{c:?} is not a CIDR or an IP address")))
        })
        .collect()
}

/// `sip.tls_listen` and its certificate files.
fn tls_listen(sip: &sections::SipSection) -> Result<Option<TlsListen>, ConfigError> {
    if sip.tls_listen.is_empty() {
        return Ok(None);
    }
    let listen: SocketAddr = sip
        .tls_listen
        .parse()
        .map_err(|_| invalid("sip.tls_listen", format!("{:?} is not IP:port", sip.tls_listen)))?;
    let file = |key: &'static str, path: &str, required: bool| -> Result<Option<PathBuf>, ConfigError> {
        if path.is_empty() {
            return if required {
                Err(invalid(key, "is required when sip.tls_listen is set"))
            } else {
                Ok(None)
            };
        }
        let p = PathBuf::from(path);
        if !p.is_file() {
            return Err(invalid(key, format!("file {path} does not exist")));
        }
        Ok(Some(p))
    };
    let cert = file("sip.tls_cert_file", &sip.tls_cert_file, true)?.unwrap_or_default();
    let key = file("sip.tls_key_file", &sip.tls_key_file, true)?.unwrap_or_default();
    let client_ca = file("sip.tls_client_ca_file", &sip.tls_client_ca_file, false)?;
    if !(1..=120).contains(&sip.tls_handshake_timeout_seconds) {
        return Err(invalid("sip.tls_handshake_timeout_seconds", "must be between 1 and 120"));
    }
    Ok(Some(TlsListen {
        listen,
        files: crate::sip::tls::ServerFiles { cert, key, client_ca },
        handshake_timeout: std::time::Duration::from_secs(sip.tls_handshake_timeout_seconds),
    }))
}

fn invalid(key: &'static str, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, why: why.into() }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub raw: RawSettings,
    pub sip_listen: SocketAddr,
    pub public_addr: Option<SocketAddr>,
    pub rtp_ports: (u16, u16),
    pub greeting_file: Option<PathBuf>,
    pub hold_file: Option<PathBuf>,
    pub apology_file: Option<PathBuf>,
    pub log_format: LogFormat,
    pub data_dir: PathBuf,
    pub database_url: String,
    pub node_id: String,
    pub http_listen: Option<SocketAddr>,
    pub http_allow: Vec<ipnet::IpNet>,
    pub sip_allow: Vec<ipnet::IpNet>,
    /// `sip.trusted_cidrs`, parsed.
    pub sip_trusted: Vec<ipnet::IpNet>,
    /// Registrations with their passwords resolved (from `password_env` when set).
    pub registrations: Vec<Registration>,
    /// Inbound digest authentication, when `sip.auth_realm` is set.
    pub sip_auth: Option<crate::sip::auth::AuthConfig>,
    /// The TLS listener, when `sip.tls_listen` is set.
    pub sip_tls: Option<TlsListen>,
    /// `rtp.srtp`.
    pub srtp: crate::media::srtp::Policy,
}

/// `sip.tls_*`, validated: the files exist when the settings load; their
/// contents are read by [`crate::sip::tls`] (at start and on SIGHUP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsListen {
    pub listen: SocketAddr,
    pub files: crate::sip::tls::ServerFiles,
    pub handshake_timeout: std::time::Duration,
}

/// A validated registration: the host to resolve and the credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub registrar: String,
    /// `host:port` REGISTERs go to (resolved when the daemon starts).
    pub target: String,
    pub aor: String,
    pub username: String,
    pub password: String,
    pub expires: u32,
    pub transport: crate::sip::register::RegTransport,
    /// The registrar's host name: the TLS server name (SNI, certificate check).
    pub host: String,
}

impl Settings {
    /// Loads from the process environment and an optional file (`--config`, or
    /// `PRECALL_CONFIG`).
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let env: HashMap<String, String> = std::env::vars().collect();
        Self::load_from(file, &env)
    }

    /// Loads with an explicit environment (tests, and `load` above).
    pub fn load_from(file: Option<&Path>, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder().add_source(config::Config::try_from(&RawSettings::default())?);
        let file = file
            .map(Path::to_path_buf)
            .or_else(|| env.get("PRECALL_CONFIG").filter(|v| !v.is_empty()).map(PathBuf::from));
        if let Some(file) = file {
            if !file.exists() {
                return Err(invalid("--config", format!("file {} does not exist", file.display())));
            }
            builder = builder.add_source(config::File::from(file).format(config::FileFormat::Toml));
        }
        let mut precall: HashMap<String, String> = env
            .iter()
            .filter(|(k, _)| k.starts_with("PRECALL_") && *k != "PRECALL_CONFIG")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // The seed's names, applied below the PRECALL_ ones.
        let listen_alias = match (env.get("SIP_HOST"), env.get("SIP_PORT")) {
            (Some(host), port) => Some(join_host_port(host, port.map_or("5060", String::as_str))),
            (None, Some(port)) => Some(format!("0.0.0.0:{port}")),
            (None, None) => None,
        };
        if let Some(listen) = listen_alias {
            precall.entry("PRECALL_SIP__LISTEN".into()).or_insert(listen);
        }
        for (seed, key) in [
            ("ELEVENLABS_API_KEY", "PRECALL_ELEVENLABS__API_KEY"),
            ("CLONE_MAX_WAIT_SECONDS", "PRECALL_CLONE__MAX_WAIT_SECONDS"),
            ("ELEVENLABS_AGENT_ID", "PRECALL_ELEVENLABS__AGENT_ID"),
            ("ELEVENLABS_WEBHOOK_SECRET", "PRECALL_ELEVENLABS__WEBHOOK_SECRET"),
            ("TWILIO_AUTH_TOKEN", "PRECALL_TWILIO__AUTH_TOKEN"),
            ("SKIP_WEBHOOK_SIGNATURE_VALIDATION", "PRECALL_TWILIO__SKIP_SIGNATURE_VALIDATION"),
            ("API_KEY", "PRECALL_API__KEY"),
            ("GREETING_MESSAGE", "PRECALL_GREETING__MESSAGE"),
            ("GREETING_VOICE_ID", "PRECALL_GREETING__VOICE_ID"),
            ("GREETING_MUSIC_ENABLED", "PRECALL_GREETING__MUSIC_ENABLED"),
        ] {
            if let Some(v) = env.get(seed) {
                precall.entry(key.into()).or_insert_with(|| v.clone());
            }
        }
        if let Some(port) = env.get("HTTP_PORT").filter(|p| !p.is_empty()) {
            precall
                .entry("PRECALL_HTTP__LISTEN".into())
                .or_insert_with(|| format!("0.0.0.0:{port}"));
        }
        if let Some(url) = env.get("DATABASE_URL").filter(|u| !u.is_empty()) {
            precall.entry("PRECALL_DATABASE__URL".into()).or_insert_with(|| url.clone());
        }
        if let Some(level) = env.get("LOG_LEVEL") {
            precall
                .entry("PRECALL_LOG__LEVEL".into())
                .or_insert_with(|| level.to_ascii_lowercase());
        }
        for key in precall.keys() {
            if !key.contains("__") {
                // config silently ignores these; say so instead.
                return Err(invalid(
                    "environment",
                    format!("{key} is not PRECALL_<SECTION>__<KEY> (use a double underscore)"),
                ));
            }
        }
        builder = builder.add_source(
            config::Environment::with_prefix("PRECALL")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(precall)),
        );
        let raw: RawSettings = builder.build()?.try_deserialize()?;
        Self::compile_with_env(raw, env)
    }

    /// Validates `raw`, resolving `password_env` names from the process environment.
    pub fn compile(raw: RawSettings) -> Result<Self, ConfigError> {
        let env: HashMap<String, String> = std::env::vars().collect();
        Self::compile_with_env(raw, &env)
    }

    /// Validates `raw`, resolving `password_env` names from `env` (injected:
    /// tests and `load_from` never read the process environment here).
    pub fn compile_with_env(raw: RawSettings, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let sip_listen: SocketAddr = raw
            .sip
            .listen
            .parse()
            .map_err(|_| invalid("sip.listen", format!("{:?} is not IP:port", raw.sip.listen)))?;
        let public_addr = if raw.sip.public_addr.is_empty() {
            None
        } else if let Ok(sa) = raw.sip.public_addr.parse::<SocketAddr>() {
            Some(sa)
        } else if let Ok(ip) = raw.sip.public_addr.parse::<IpAddr>() {
            Some(SocketAddr::new(ip, sip_listen.port()))
        } else {
            return Err(invalid(
                "sip.public_addr",
                format!("{:?} is not an IP address or IP:port", raw.sip.public_addr),
            ));
        };
        if public_addr.is_some_and(|a| a.ip().is_unspecified()) {
            return Err(invalid("sip.public_addr", "must be a routable address, not 0.0.0.0"));
        }
        let (lo, hi) = (raw.rtp.port_min, raw.rtp.port_max);
        // RTP uses even ports (RFC 3550 §11); round the range inwards.
        let lo_even = lo + lo % 2;
        let hi_even = hi - hi % 2;
        if lo == 0 || lo_even > hi_even || hi_even < lo_even + 2 {
            return Err(invalid(
                "rtp.port_min/rtp.port_max",
                format!("{lo}-{hi} must hold at least two even ports above 0"),
            ));
        }
        if (lo..=hi).contains(&sip_listen.port()) {
            return Err(invalid(
                "rtp.port_min/rtp.port_max",
                format!("range {lo}-{hi} includes the SIP port {}", sip_listen.port()),
            ));
        }
        if raw.rtp.timeout_seconds == 0 || raw.rtp.hold_timeout_seconds == 0 {
            return Err(invalid("rtp.timeout_seconds/hold_timeout_seconds", "must be at least 1"));
        }
        if raw.limits.max_calls == 0 {
            return Err(invalid("limits.max_calls", "must be at least 1"));
        }
        if raw.limits.max_call_seconds == 0 {
            return Err(invalid("limits.max_call_seconds", "must be at least 1"));
        }
        if raw.sip.max_tcp_connections == 0 {
            return Err(invalid("sip.max_tcp_connections", "must be at least 1"));
        }
        if !(1..=3600).contains(&raw.sip.tcp_message_timeout_seconds) || !(1..=86_400).contains(&raw.sip.tcp_idle_timeout_seconds) {
            return Err(invalid(
                "sip.tcp_message_timeout_seconds/tcp_idle_timeout_seconds",
                "must be 1-3600 and 1-86400 seconds",
            ));
        }
        let log_format = match raw.log.format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => return Err(invalid("log.format", format!("{other:?} is neither \"text\" nor \"json\""))),
        };
        if tracing_subscriber::EnvFilter::try_new(&raw.log.level).is_err() {
            return Err(invalid(
                "log.level",
                format!("{:?} is not a tracing filter (try info, debug, precall=debug)", raw.log.level),
            ));
        }
        let file = |key: &'static str, value: &str| -> Result<Option<PathBuf>, ConfigError> {
            if value.is_empty() {
                return Ok(None);
            }
            let path = PathBuf::from(value);
            if !path.is_file() {
                return Err(invalid(key, format!("{value} is not a readable file")));
            }
            Ok(Some(path))
        };
        let greeting_file = file("greeting.file", &raw.greeting.file)?;
        let music_file = file("greeting.music_file", &raw.greeting.music_file)?;
        let hold_file = music_file.filter(|_| raw.greeting.music_enabled);
        let apology_file = file("greeting.apology_file", &raw.greeting.apology_file)?;
        if raw.clone.max_wait_seconds == 0 || raw.clone.sweep_interval_seconds == 0 {
            return Err(invalid("clone.max_wait_seconds/clone.sweep_interval_seconds", "must be at least 1"));
        }
        if raw.elevenlabs.default_voice_id.is_empty() {
            return Err(invalid("elevenlabs.default_voice_id", "must name a voice"));
        }
        if !raw.elevenlabs.base_url.starts_with("http://") && !raw.elevenlabs.base_url.starts_with("https://") {
            return Err(invalid(
                "elevenlabs.base_url",
                format!("{:?} is not an http(s) URL", raw.elevenlabs.base_url),
            ));
        }
        if raw.elevenlabs.agent_connect_timeout_seconds == 0 || raw.elevenlabs.agent_idle_timeout_seconds == 0 {
            return Err(invalid(
                "elevenlabs.agent_connect_timeout_seconds/agent_idle_timeout_seconds",
                "must be at least 1",
            ));
        }
        if !raw.elevenlabs.ws_url.is_empty() && !raw.elevenlabs.ws_url.starts_with("ws://") && !raw.elevenlabs.ws_url.starts_with("wss://")
        {
            return Err(invalid(
                "elevenlabs.ws_url",
                format!("{:?} is not a ws(s) URL", raw.elevenlabs.ws_url),
            ));
        }
        if raw.elevenlabs.max_concurrent_requests == 0 || raw.elevenlabs.request_timeout_seconds == 0 {
            return Err(invalid(
                "elevenlabs.max_concurrent_requests/request_timeout_seconds",
                "must be at least 1",
            ));
        }
        if raw.data.dir.is_empty() {
            return Err(invalid("data.dir", "must name a directory"));
        }
        let data_dir = PathBuf::from(&raw.data.dir);
        let database_url = if raw.database.url.is_empty() {
            format!("sqlite://{}/precall.db?mode=rwc", raw.data.dir.trim_end_matches('/'))
        } else {
            raw.database.url.clone()
        };
        crate::store::Backend::from_url(&database_url).map_err(|e| invalid("database.url", e.to_string()))?;
        if raw.database.writer_queue == 0 || raw.database.writer_memory_limit == 0 {
            return Err(invalid("database.writer_queue/database.writer_memory_limit", "must be at least 1"));
        }
        if raw.clone.request_timeout_seconds < raw.clone.max_wait_seconds || raw.clone.request_timeout_seconds > 600 {
            return Err(invalid(
                "clone.request_timeout_seconds",
                format!(
                    "{} must be between clone.max_wait_seconds ({}) and 600: a clone must outlast the call's wait",
                    raw.clone.request_timeout_seconds, raw.clone.max_wait_seconds
                ),
            ));
        }
        if raw.clone.orphan_grace_seconds <= raw.clone.request_timeout_seconds {
            return Err(invalid(
                "clone.orphan_grace_seconds",
                "must be longer than clone.request_timeout_seconds, or a clone in flight could be deleted",
            ));
        }
        if raw.clone.cache_ttl_hours == 0 {
            return Err(invalid("clone.cache_ttl_hours", "must be at least 1"));
        }
        let node_id = if raw.node.id.is_empty() { hostname() } else { raw.node.id.clone() };
        let http_listen = if raw.http.listen.is_empty() {
            None
        } else {
            let addr: SocketAddr = raw
                .http
                .listen
                .parse()
                .map_err(|_| invalid("http.listen", format!("{:?} is not IP:port", raw.http.listen)))?;
            Some(addr)
        };
        let sip_tls = tls_listen(&raw.sip)?;
        let srtp = match raw.rtp.srtp.to_ascii_lowercase().as_str() {
            "off" => crate::media::srtp::Policy::Off,
            "optional" | "" => crate::media::srtp::Policy::Optional,
            "required" => crate::media::srtp::Policy::Required,
            other => return Err(invalid("rtp.srtp", format!("{other:?} is not off, optional or required"))),
        };
        let http_allow = cidrs("http.allow_cidrs", &raw.http.allow_cidrs)?;
        let sip_allow = cidrs("sip.allow_cidrs", &raw.sip.allow_cidrs)?;
        let sip_trusted = cidrs("sip.trusted_cidrs", &raw.sip.trusted_cidrs)?;
        let setup = (raw.limits.max_setup_rate, raw.limits.max_setup_burst);
        if !(setup.0.is_finite() && setup.0 > 0.0 && setup.1.is_finite() && setup.1 >= 1.0) {
            return Err(invalid(
                "limits.max_setup_rate/max_setup_burst",
                "the rate must be above 0 and the burst at least 1",
            ));
        }
        if raw.sip.session_min_se_seconds == 0 || raw.sip.session_expires_seconds < raw.sip.session_min_se_seconds {
            return Err(invalid(
                "sip.session_expires_seconds/session_min_se_seconds",
                "the minimum must be at least 1 and the default at least the minimum",
            ));
        }
        let mut registrations = Vec::new();
        for r in &raw.sip.registrations {
            let bad = |why: String| invalid("sip.registrations", format!("{}: {why}", r.aor));
            let host = r
                .registrar
                .strip_prefix("sip:")
                .ok_or_else(|| bad(format!("registrar {:?} is not a sip: URI", r.registrar)))?;
            let host = host.split(';').next().unwrap_or(host);
            if !r.aor.starts_with("sip:") || !r.aor.contains('@') {
                return Err(bad("aor must look like sip:user@domain".into()));
            }
            let password = if r.password_env.is_empty() {
                r.password.clone()
            } else {
                env.get(&r.password_env)
                    .filter(|v| !v.is_empty())
                    .cloned()
                    .ok_or_else(|| bad(format!("environment variable {} is not set", r.password_env)))?
            };
            if r.username.is_empty() || password.is_empty() || r.expires == 0 {
                return Err(bad("username, a password (or password_env) and expires > 0 are required".into()));
            }
            let transport = match r.transport.to_ascii_lowercase().as_str() {
                "udp" | "" => crate::sip::register::RegTransport::Udp,
                "tcp" => crate::sip::register::RegTransport::Tcp,
                "tls" => crate::sip::register::RegTransport::Tls,
                other => return Err(bad(format!("transport {other:?} is not udp, tcp or tls"))),
            };
            let default_port = if transport == crate::sip::register::RegTransport::Tls {
                5061
            } else {
                5060
            };
            let target = if r.outbound_proxy.is_empty() {
                host.to_owned()
            } else {
                r.outbound_proxy.clone()
            };
            let target = if target.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
                target
            } else {
                format!("{target}:{default_port}")
            };
            let host_only = host
                .rsplit_once(':')
                .filter(|(_, p)| p.parse::<u16>().is_ok())
                .map_or(host, |(h, _)| h);
            registrations.push(Registration {
                transport,
                host: host_only.to_owned(),
                registrar: r.registrar.clone(),
                target,
                aor: r.aor.clone(),
                username: r.username.clone(),
                password,
                expires: r.expires,
            });
        }
        let sip_auth = if raw.sip.auth_realm.is_empty() {
            None
        } else {
            let mut users = Vec::new();
            for u in &raw.sip.auth_users {
                let password = if u.password_env.is_empty() {
                    u.password.clone()
                } else {
                    env.get(&u.password_env).filter(|v| !v.is_empty()).cloned().ok_or_else(|| {
                        invalid(
                            "sip.auth_users",
                            format!("{}: environment variable {} is not set", u.username, u.password_env),
                        )
                    })?
                };
                if u.username.is_empty() || password.is_empty() {
                    return Err(invalid(
                        "sip.auth_users",
                        "each user needs a username and a password (or password_env)",
                    ));
                }
                users.push((u.username.clone(), password));
            }
            if users.is_empty() {
                return Err(invalid("sip.auth_users", "sip.auth_realm is set but no user may call"));
            }
            Some(crate::sip::auth::AuthConfig {
                realm: raw.sip.auth_realm.clone(),
                users,
                nonce_lifetime: Duration::from_secs(raw.sip.auth_nonce_seconds.max(1)),
            })
        };
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !(positive(raw.sip.invite_rate) && positive(raw.sip.request_rate) && raw.sip.invite_burst >= 1.0 && raw.sip.request_burst >= 1.0)
        {
            return Err(invalid(
                "sip.invite_rate/invite_burst/request_rate/request_burst",
                "rates must be above 0 and bursts at least 1",
            ));
        }
        if !(10..=3600).contains(&raw.elevenlabs.webhook_tolerance_seconds) {
            return Err(invalid("elevenlabs.webhook_tolerance_seconds", "must be 10-3600 seconds"));
        }
        if raw.http.max_body_bytes < 1024 {
            return Err(invalid("http.max_body_bytes", "must be at least 1024"));
        }
        if raw.http.max_connections == 0 || raw.http.max_connections_per_ip == 0 {
            return Err(invalid("http.max_connections/max_connections_per_ip", "must be at least 1"));
        }
        if !(1..=3600).contains(&raw.http.header_timeout_seconds) || !(1..=86_400).contains(&raw.http.request_timeout_seconds) {
            return Err(invalid(
                "http.header_timeout_seconds/request_timeout_seconds",
                "must be 1-3600 and 1-86400 seconds",
            ));
        }
        if raw.http.min_body_bytes_per_second == 0 || raw.http.admin_auth_failures_per_minute == 0 {
            return Err(invalid(
                "http.min_body_bytes_per_second/admin_auth_failures_per_minute",
                "must be at least 1",
            ));
        }
        Ok(Settings {
            sip_tls,
            srtp,
            sip_auth,
            registrations,
            http_listen,
            http_allow,
            sip_allow,
            sip_trusted,
            sip_listen,
            public_addr,
            rtp_ports: (lo_even, hi_even),
            greeting_file,
            hold_file,
            apology_file,
            log_format,
            data_dir,
            database_url,
            node_id,
            raw,
        })
    }

    /// The effective settings as TOML, every [`SECRETS`] entry masked and the
    /// database URL's password redacted.
    pub fn to_masked_toml(&self) -> String {
        let mut value = match toml::Value::try_from(&self.raw) {
            Ok(v) => v,
            Err(e) => return format!("# cannot render settings: {e}\n"),
        };
        mask(&mut value, "");
        if let Some(db) = value.get_mut("database").and_then(|d| d.as_table_mut()) {
            db.insert("url".into(), toml::Value::String(crate::store::redact(&self.database_url)));
        }
        if let Some(node) = value.get_mut("node").and_then(|d| d.as_table_mut()) {
            node.insert("id".into(), toml::Value::String(self.node_id.clone()));
        }
        toml::to_string_pretty(&value).unwrap_or_else(|e| format!("# cannot render settings: {e}\n"))
    }
}

/// Every setting that holds a secret, by its path (`[]`: any entry of a list).
/// `check-config` masks exactly these, and a test sets each one and checks that
/// no output shows it. A new secret setting is added here.
pub const SECRETS: &[&str] = &[
    "elevenlabs.api_key",
    "elevenlabs.webhook_secret",
    "twilio.auth_token",
    "twilio.webhook_signing_key",
    "api.key",
    "sip.registrations[].password",
    "sip.auth_users[].password",
];

fn mask(value: &mut toml::Value, path: &str) {
    match value {
        toml::Value::Table(table) => {
            for (k, v) in table.iter_mut() {
                let here = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                match v {
                    toml::Value::String(s) if !s.is_empty() && SECRETS.contains(&here.as_str()) => *s = "********".into(),
                    other => mask(other, &here),
                }
            }
        }
        toml::Value::Array(items) => {
            let here = format!("{path}[]");
            for item in items {
                mask(item, &here);
            }
        }
        _ => {}
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "precall".to_owned())
}

fn join_host_port(host: &str, port: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests;
