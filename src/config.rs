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

use serde::{Deserialize, Serialize};
use thiserror::Error;

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

fn invalid(key: &'static str, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, why: why.into() }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SipSection {
    /// UDP and TCP listen address.
    pub listen: String,
    /// Address for SDP `c=` and Contact when behind NAT: `IP` or `IP:port`; empty =
    /// the local address the request arrived on.
    pub public_addr: String,
    /// Server/User-Agent header value.
    pub user_agent: String,
    /// Milliseconds of `180 Ringing` before answering (0 = answer at once).
    pub answer_delay_ms: u64,
    /// Largest concurrent TCP connections accepted.
    pub max_tcp_connections: usize,
    /// A SIP message on TCP must be complete this many seconds after its first byte.
    pub tcp_message_timeout_seconds: u64,
    /// A TCP connection that delivers no message (or keepalive) for this long is closed.
    pub tcp_idle_timeout_seconds: u64,
    /// Comma-separated CIDRs or addresses (trunks, PBXs) allowed to send SIP;
    /// empty = anyone.
    pub allow_cidrs: String,
    /// Comma-separated CIDRs of trunks, PBXs and proxies on a port that is
    /// otherwise public: like `allow_cidrs` sources, they are exempt from the
    /// per-source limits (bounded by `limits.max_calls` and `max_setup_rate`).
    pub trusted_cidrs: String,
    /// Sources outside `allow_cidrs` get no answer at all (instead of 403).
    pub drop_unknown: bool,
    /// New INVITEs per second per source address, and the burst allowed; beyond: 503.
    pub invite_rate: f64,
    pub invite_burst: f64,
    /// SIP requests of any kind per second per source address, and the burst; beyond: dropped.
    pub request_rate: f64,
    pub request_burst: f64,
    /// Session timer (RFC 4028) asked for when the caller supports timers but names no interval.
    pub session_expires_seconds: u64,
    /// Shortest session interval accepted (RFC 4028's floor is 90); shorter gets 422.
    pub session_min_se_seconds: u64,
    /// Trunks to register to (`[[sip.registrations]]` in the TOML file).
    pub registrations: Vec<RegistrationSection>,
    /// Digest-authenticate incoming INVITEs in this realm; empty = no authentication.
    pub auth_realm: String,
    /// Who may call when `auth_realm` is set (`[[sip.auth_users]]`).
    pub auth_users: Vec<AuthUserSection>,
    /// How long a challenge's nonce stays fresh (older: `stale=true`).
    pub auth_nonce_seconds: u64,
}

/// One `[[sip.auth_users]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AuthUserSection {
    pub username: String,
    pub password: String,
    /// The environment variable holding the password (better than `password`).
    pub password_env: String,
}

/// One `[[sip.registrations]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrationSection {
    /// The registrar: `sip:sip.provider.example[:port]`.
    pub registrar: String,
    /// Address of record: `sip:1000@provider.example`.
    pub aor: String,
    pub username: String,
    /// The password, or (better) `password_env`: the environment variable holding it.
    pub password: String,
    pub password_env: String,
    /// Requested registration lifetime; precall re-registers at 80 % of what is granted.
    pub expires: u32,
    /// Send REGISTERs here (`host[:port]`) instead of to the registrar's host.
    pub outbound_proxy: String,
    /// `udp` or `tcp`.
    pub transport: String,
}

impl Default for RegistrationSection {
    fn default() -> Self {
        RegistrationSection {
            registrar: String::new(),
            aor: String::new(),
            username: String::new(),
            password: String::new(),
            password_env: String::new(),
            expires: 3600,
            outbound_proxy: String::new(),
            transport: "udp".into(),
        }
    }
}

impl Default for SipSection {
    fn default() -> Self {
        SipSection {
            listen: "0.0.0.0:5060".into(),
            public_addr: String::new(),
            user_agent: format!("precall/{}", env!("CARGO_PKG_VERSION")),
            answer_delay_ms: 0,
            max_tcp_connections: 1024,
            tcp_message_timeout_seconds: 30,
            tcp_idle_timeout_seconds: 300,
            allow_cidrs: String::new(),
            trusted_cidrs: String::new(),
            drop_unknown: false,
            invite_rate: 20.0,
            invite_burst: 40.0,
            request_rate: 200.0,
            request_burst: 400.0,
            session_expires_seconds: 1800,
            session_min_se_seconds: 90,
            registrations: Vec::new(),
            auth_realm: String::new(),
            auth_users: Vec::new(),
            auth_nonce_seconds: 300,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RtpSection {
    pub port_min: u16,
    pub port_max: u16,
    /// Seconds without caller RTP before the call is ended (`rtp_timeout`).
    pub timeout_seconds: u64,
    /// The same while the caller holds the call (`sendonly`, `inactive`, or no
    /// media expected from it): phones often send nothing on hold, and a hold
    /// lasts longer than a silence (Asterisk's `rtp_timeout_hold`).
    pub hold_timeout_seconds: u64,
    /// Accept RTP only from the address the SDP names (no symmetric-RTP
    /// learning): for trunks and SBCs whose SDP is always right.
    pub strict_source: bool,
}

impl Default for RtpSection {
    fn default() -> Self {
        RtpSection {
            port_min: 10000,
            port_max: 20000,
            timeout_seconds: 60,
            hold_timeout_seconds: 300,
            strict_source: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct GreetingSection {
    /// WAV file to play on answer; empty = the greeting built into the binary.
    pub file: String,
    /// Text to render with ElevenLabs TTS at startup instead of `file`.
    pub message: String,
    /// Voice for `message`; empty = `elevenlabs.default_voice_id`.
    pub voice_id: String,
    /// Loop `music_file` after the greeting while the clone is pending.
    pub music_enabled: bool,
    /// WAV hold music; with `music_enabled` and no file, the greeting loops.
    pub music_file: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ElevenLabsSection {
    /// Empty: the built-in simulator answers instead of ElevenLabs (offline default).
    pub api_key: String,
    pub base_url: String,
    /// Voice used when there is no clone (unmapped, failed, timed out).
    pub default_voice_id: String,
    /// Requests in flight to ElevenLabs at once, across all calls.
    pub max_concurrent_requests: usize,
    /// Upper bound for one HTTP request.
    pub request_timeout_seconds: u64,
    /// The Conversational AI agent calls are bridged to. Empty with an API key:
    /// calls stay on the greeting and hold audio (no agent).
    pub agent_id: String,
    /// The agent has authentication enabled: fetch a signed URL per call.
    pub private_agent: bool,
    /// WebSocket base; empty = derived from `base_url` (https → wss).
    pub ws_url: String,
    /// Overrides sent in the initiation (each must be allowed in the agent's security settings).
    pub agent_first_message: String,
    pub agent_prompt: String,
    pub agent_language: String,
    /// The client tool the agent calls to transfer the caller (parameter `destination`).
    pub transfer_tool_name: String,
    pub agent_connect_timeout_seconds: u64,
    /// No message from the agent for this long counts as a lost connection (it pings every few seconds).
    pub agent_idle_timeout_seconds: u64,
    /// How far ahead of playback agent audio may queue per call.
    pub agent_max_queue_seconds: u32,
    /// The post-call webhook's HMAC secret (`ElevenLabs-Signature`).
    pub webhook_secret: String,
    /// A signed webhook's timestamp may differ from our clock by at most this
    /// (either way); replays within it are refused.
    pub webhook_tolerance_seconds: u64,
}

impl Default for ElevenLabsSection {
    fn default() -> Self {
        ElevenLabsSection {
            api_key: String::new(),
            base_url: "https://api.elevenlabs.io".into(),
            default_voice_id: "21m00Tcm4TlvDq8ikWAM".into(),
            max_concurrent_requests: 4,
            request_timeout_seconds: 30,
            agent_id: String::new(),
            private_agent: false,
            ws_url: String::new(),
            agent_first_message: String::new(),
            agent_prompt: String::new(),
            agent_language: String::new(),
            transfer_tool_name: "transfer_call".into(),
            agent_connect_timeout_seconds: 10,
            agent_idle_timeout_seconds: 30,
            agent_max_queue_seconds: 120,
            webhook_secret: String::new(),
            webhook_tolerance_seconds: 300,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSection {
    pub max_calls: usize,
    pub max_call_seconds: u64,
    /// Seconds live calls may continue after SIGTERM before they get BYE.
    pub drain_seconds: u64,
    /// `Retry-After` seconds sent with 503 when full or draining.
    pub retry_after_seconds: u64,
    /// New calls per second the node sets up, whatever their source (trunks
    /// and proxies included), and the burst allowed; beyond them `503` with
    /// `Retry-After: 1`. Sized from the measured capacity (docs/PERFORMANCE.md).
    pub max_setup_rate: f64,
    pub max_setup_burst: f64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_calls: 1000,
            max_call_seconds: 3600,
            drain_seconds: 30,
            retry_after_seconds: 30,
            max_setup_rate: 200.0,
            max_setup_burst: 200.0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    /// A `tracing` filter: `info`, `precall=debug`, …
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSection {
    /// `sqlite://…` or `postgres://…`; empty = `sqlite://<data.dir>/precall.db?mode=rwc`.
    pub url: String,
    /// Apply migrations on start.
    pub auto_migrate: bool,
    /// PostgreSQL pool size (SQLite always uses one connection).
    pub max_connections: u32,
    /// Records queued between calls and the writer.
    pub writer_queue: usize,
    /// Records held in memory while the database is unreachable; more spill to disk.
    pub writer_memory_limit: usize,
}

impl Default for DatabaseSection {
    fn default() -> Self {
        DatabaseSection {
            url: String::new(),
            auto_migrate: true,
            max_connections: 8,
            writer_queue: 10_000,
            writer_memory_limit: 50_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DataSection {
    /// Where the SQLite file, voice samples and the record spill file live.
    pub dir: String,
}

impl Default for DataSection {
    fn default() -> Self {
        DataSection { dir: "data".into() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSection {
    /// This daemon's name in a cluster (call records, crash recovery); empty = hostname.
    pub id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CloneSection {
    /// How long a cloned voice is reused for the same caller and samples.
    pub cache_ttl_hours: u64,
    /// How long a call waits for its clone before using the default voice.
    pub max_wait_seconds: u64,
    /// Ask ElevenLabs to isolate the voice in the samples.
    pub remove_background_noise: bool,
    /// How often expired and orphaned clones are deleted at ElevenLabs.
    pub sweep_interval_seconds: u64,
    /// How long the clone request itself may take, retries included. At least
    /// `max_wait_seconds`: after the call stops waiting, the clone goes on and
    /// fills the cache for the caller's next call (at most 600).
    pub request_timeout_seconds: u64,
    /// A voice labelled `created_by: precall` that no cache row names is deleted
    /// once it is this old; longer than `request_timeout_seconds`, so a clone
    /// about to write its cache row is never taken for an orphan.
    pub orphan_grace_seconds: u64,
}

impl Default for CloneSection {
    fn default() -> Self {
        CloneSection {
            cache_ttl_hours: 24,
            max_wait_seconds: 35,
            remove_background_noise: false,
            sweep_interval_seconds: 600,
            request_timeout_seconds: 120,
            orphan_grace_seconds: 900,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSection {
    /// The HTTP listener (Twilio webhooks and Media Streams, the post-call
    /// webhook, health, metrics, admin API); empty = no listener.
    pub listen: String,
    /// Comma-separated CIDRs allowed to reach the webhooks and the admin API
    /// (health and metrics stay open); empty = anyone.
    pub allow_cidrs: String,
    /// Largest request body (post-call audio, sample uploads).
    pub max_body_bytes: usize,
    /// Concurrent HTTP connections (further capped so that calls keep their
    /// file descriptors), and per client address.
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// A request head must arrive within this; idle keep-alive connections close after it.
    pub header_timeout_seconds: u64,
    /// A whole request (body and handler) must finish within this: else 408.
    pub request_timeout_seconds: u64,
    /// After 5 s, a request body must keep arriving at least this fast.
    pub min_body_bytes_per_second: u64,
    /// Failed admin API keys allowed per client address per minute; beyond: 429.
    pub admin_auth_failures_per_minute: u32,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            listen: "0.0.0.0:3006".into(),
            allow_cidrs: String::new(),
            max_body_bytes: 64 << 20,
            max_connections: 512,
            max_connections_per_ip: 64,
            header_timeout_seconds: 10,
            request_timeout_seconds: 60,
            min_body_bytes_per_second: 8192,
            admin_auth_failures_per_minute: 10,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TwilioSection {
    /// The account's Auth Token: the key of `X-Twilio-Signature` (HMAC-SHA1).
    pub auth_token: String,
    /// A webhook shared key for the HMAC-SHA256 variant, when Twilio is set up to use one.
    pub webhook_signing_key: String,
    /// The public base URL Twilio calls (`https://voice.example.com`), so
    /// signatures verify behind a TLS proxy; empty = rebuilt from the Host header.
    pub public_url: String,
    /// Local testing only: accept unsigned webhooks (a loud warning at start).
    pub skip_signature_validation: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSection {
    /// The admin API key (`Authorization: Bearer` or `X-API-Key`); empty = the admin API answers 401 to everyone.
    pub key: String,
}

/// The raw, deserialised settings (what `check-config` prints).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct RawSettings {
    pub sip: SipSection,
    pub rtp: RtpSection,
    pub greeting: GreetingSection,
    pub limits: LimitsSection,
    pub log: LogSection,
    pub database: DatabaseSection,
    pub data: DataSection,
    pub node: NodeSection,
    pub clone: CloneSection,
    pub elevenlabs: ElevenLabsSection,
    pub http: HttpSection,
    pub twilio: TwilioSection,
    pub api: ApiSection,
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
    pub tcp: bool,
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
        Self::compile(raw)
    }

    pub fn compile(raw: RawSettings) -> Result<Self, ConfigError> {
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
                std::env::var(&r.password_env).map_err(|_| bad(format!("environment variable {} is not set", r.password_env)))?
            };
            if r.username.is_empty() || password.is_empty() || r.expires == 0 {
                return Err(bad("username, a password (or password_env) and expires > 0 are required".into()));
            }
            let target = if r.outbound_proxy.is_empty() {
                host.to_owned()
            } else {
                r.outbound_proxy.clone()
            };
            let target = if target.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
                target
            } else {
                format!("{target}:5060")
            };
            let tcp = match r.transport.to_ascii_lowercase().as_str() {
                "udp" | "" => false,
                "tcp" => true,
                other => return Err(bad(format!("transport {other:?} is neither udp nor tcp"))),
            };
            registrations.push(Registration {
                tcp,
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
                    std::env::var(&u.password_env).map_err(|_| {
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
            log_format,
            data_dir,
            database_url,
            node_id,
            raw,
        })
    }

    /// The effective settings as TOML, secrets masked (none yet in this section set;
    /// keys named `*password*`, `*secret*`, `*token*`, `*key*` are masked).
    pub fn to_masked_toml(&self) -> String {
        let mut value = match toml::Value::try_from(&self.raw) {
            Ok(v) => v,
            Err(e) => return format!("# cannot render settings: {e}\n"),
        };
        mask(&mut value);
        if let Some(db) = value.get_mut("database").and_then(|d| d.as_table_mut()) {
            db.insert("url".into(), toml::Value::String(crate::store::redact(&self.database_url)));
        }
        if let Some(node) = value.get_mut("node").and_then(|d| d.as_table_mut()) {
            node.insert("id".into(), toml::Value::String(self.node_id.clone()));
        }
        toml::to_string_pretty(&value).unwrap_or_else(|e| format!("# cannot render settings: {e}\n"))
    }
}

fn mask(value: &mut toml::Value) {
    if let toml::Value::Table(table) = value {
        for (k, v) in table.iter_mut() {
            let secret = ["password", "secret", "token", "api_key", "signing_key"]
                .iter()
                .any(|s| k.contains(s))
                || k == "key";
            match v {
                toml::Value::String(s) if secret && !s.is_empty() => *s = "********".into(),
                other => mask(other),
            }
        }
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
mod tests {
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
        let mut v: toml::Value = toml::from_str("[x]\napi_key = \"sk-123\"\nother = \"y\"\n").unwrap();
        mask(&mut v);
        let out = toml::to_string(&v).unwrap();
        assert!(
            out.contains("********") && !out.contains("sk-123") && out.contains("\"y\""),
            "{out}"
        );
    }
}
