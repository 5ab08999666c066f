//! The raw settings as a TOML file or `PRECALL_*` variables give them, one
//! struct per section, each with its defaults. Deserialised first, then
//! compiled into the validated [`super::Settings`] (siphon-ai's raw → compile).

use serde::{Deserialize, Serialize};

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
    /// SIP over TLS listen address (conventionally port 5061); empty = no TLS.
    pub tls_listen: String,
    /// PEM certificate chain (leaf first) for the TLS listener; re-read on SIGHUP.
    pub tls_cert_file: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for the TLS listener; re-read on SIGHUP.
    pub tls_key_file: String,
    /// PEM CA bundle: when set, TLS clients must present a certificate it signs
    /// (mutual TLS with a trunk).
    pub tls_client_ca_file: String,
    /// PEM CA bundle that outbound TLS (registrations) trusts instead of the
    /// bundled Mozilla roots.
    pub tls_ca_file: String,
    /// A TLS handshake must finish within this many seconds.
    pub tls_handshake_timeout_seconds: u64,
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
    /// `udp`, `tcp` or `tls`.
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
            tls_listen: String::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            tls_client_ca_file: String::new(),
            tls_ca_file: String::new(),
            tls_handshake_timeout_seconds: 10,
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
    /// SRTP policy: `off` (plain RTP only), `optional` (SRTP when offered,
    /// plain RTP otherwise) or `required` (plain-RTP offers get 488).
    pub srtp: String,
    /// Accept SDES keys (`a=crypto`) that arrived over UDP or TCP, where anyone
    /// on the path can read them. Off: such offers are refused with a reason.
    pub srtp_allow_insecure_sdes: bool,
}

impl Default for RtpSection {
    fn default() -> Self {
        RtpSection {
            port_min: 10000,
            port_max: 20000,
            timeout_seconds: 60,
            hold_timeout_seconds: 300,
            strict_source: false,
            srtp: "optional".into(),
            srtp_allow_insecure_sdes: false,
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
    /// WAV played before hanging up when the agent fails or cannot be reached;
    /// empty = the apology built into the binary (English).
    pub apology_file: String,
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
