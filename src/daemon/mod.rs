//! The daemon's runtime: the SIP task that drives the [`Endpoint`], admits calls
//! and owns the registry of live calls, and one task per call that runs the
//! [`Call`] state machine and the call's RTP. Shutdown follows mini-redis: a
//! `watch` signal, a drain period, then BYE to whatever is left.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;
use thiserror::Error;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::call::CallInput;
use crate::call::admission::{self, Capacity, Policy};
use crate::call::machine::{AgentPlan, Seeds};
use crate::call::task::{self, CallContext, CallEvent, SipCommand};
use crate::clone::CloneService;
use crate::config::Settings;
use crate::elevenlabs::ws::AgentConfig;
use crate::media::prompt::{Prompt, PromptError};
use crate::sip::endpoint::{CallKey, Endpoint, Output, ReferProgress, Refusal, SipEvent};
use crate::sip::guard::{Guard, SetupRate, Verdict};
use crate::sip::message::{Rejection, Request};
use crate::sip::register::{RegState, Registration, RegistrationConfig};
use crate::sip::tls::ServerTls;

use crate::sip::transport::{self, Inbound};
use crate::sip::{Flow, Transport};
use crate::store::writer::RecordSink;
use crate::store::{CallRow, Record, now_ms, records::new_id};

mod admit;
mod ports;
mod registrations;

pub use registrations::RegistrationStatus;

use ports::PortPool;

/// The greeting built into the binary, used when `greeting.file` is empty.
pub const BUILTIN_GREETING: &[u8] = include_bytes!("../../assets/greeting.wav");
/// Played when the agent cannot be reached or fails mid-call, before the BYE.
pub const BUILTIN_APOLOGY: &[u8] = include_bytes!("../../assets/apology.wav");

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error("cannot listen for SIP on {addr}: {error}")]
    Bind { addr: SocketAddr, error: std::io::Error },
    #[error(transparent)]
    Prompt(#[from] PromptError),
    #[error("cannot start the SIP TLS listener: {0}")]
    Tls(crate::sip::tls::TlsError),
}

pub use crate::call::admission::Prompts;

/// Audio the daemon plays, loaded once and shared by every call.
impl Prompts {
    pub fn load(settings: &Settings) -> Result<Self, PromptError> {
        let greeting = match &settings.greeting_file {
            Some(path) => Prompt::from_wav_file(path)?,
            None => Prompt::from_wav_reader(std::io::Cursor::new(BUILTIN_GREETING), "built-in greeting")?,
        };
        let hold = settings.hold_file.as_deref().map(Prompt::from_wav_file).transpose()?;
        let apology = match &settings.apology_file {
            Some(path) => Prompt::from_wav_file(path)?,
            None => Prompt::from_wav_reader(std::io::Cursor::new(BUILTIN_APOLOGY), "built-in apology")?,
        };
        Ok(Prompts { greeting, hold, apology })
    }
}

/// Counters shared with whoever reports on the daemon (logs now, metrics later).
#[derive(Debug, Default)]
pub struct Stats {
    pub live_calls: AtomicUsize,
    pub calls_total: AtomicU64,
    pub calls_rejected: AtomicU64,
    pub draining: AtomicBool,
    /// Bumped by every turn of the SIP task's loop (at least once a second): the
    /// systemd watchdog pings only while it moves.
    pub heartbeat: AtomicU64,
    /// When the SIP task last turned, in milliseconds since [`Stats::epoch`].
    pub heartbeat_at_ms: AtomicU64,
    /// False once the SIP task has ended for any reason (a panic included).
    pub sip_alive: AtomicBool,
    /// The reference for `heartbeat_at_ms`.
    pub epoch: std::sync::OnceLock<Instant>,
    /// Trunk registrations, updated on changes.
    pub registrations: std::sync::Mutex<Vec<RegistrationStatus>>,
}

impl Stats {
    fn epoch(&self) -> Instant {
        *self.epoch.get_or_init(Instant::now)
    }

    fn beat(&self, now: Instant) {
        self.heartbeat.fetch_add(1, Ordering::Relaxed);
        let ms = now.saturating_duration_since(self.epoch()).as_millis() as u64;
        self.heartbeat_at_ms.store(ms, Ordering::Relaxed);
    }

    /// Whether the SIP task is alive and turned within `within`: what `/health`
    /// and the systemd watchdog report, so a dead or stuck SIP task is seen.
    pub fn sip_live(&self, within: Duration) -> bool {
        if !self.sip_alive.load(Ordering::Relaxed) {
            return false;
        }
        let at = Duration::from_millis(self.heartbeat_at_ms.load(Ordering::Relaxed));
        let age = Instant::now().saturating_duration_since(self.epoch()).saturating_sub(at);
        age <= within
    }
}

/// How the SIP task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SipExit {
    /// Drained and stopped after a shutdown request.
    Stopped,
    /// It panicked: the daemon can no longer take calls.
    Panicked(String),
}

/// A running daemon.
pub struct ServerHandle {
    pub sip_addr: SocketAddr,
    /// The TLS listener's address, when `sip.tls_listen` is set.
    pub tls_addr: Option<SocketAddr>,
    tls: Option<Arc<ServerTls>>,
    pub stats: Arc<Stats>,
    prompts: Arc<RwLock<Prompts>>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
    exit: watch::Receiver<Option<SipExit>>,
}

impl ServerHandle {
    /// Replaces the greeting and hold audio for calls that start from now on
    /// (SIGHUP); live calls keep what they are playing.
    pub fn reload_prompts(&self, prompts: Prompts) {
        *self.prompts.write().unwrap_or_else(|p| p.into_inner()) = prompts;
    }

    /// Re-reads the TLS certificate and key (SIGHUP after a renewal): new
    /// handshakes use them, live connections and calls keep theirs. `Ok(false)`
    /// when there is no TLS listener.
    pub fn reload_tls(&self) -> Result<bool, crate::sip::tls::TlsError> {
        match &self.tls {
            Some(t) => t.reload().map(|()| true),
            None => Ok(false),
        }
    }

    /// Starts draining: new calls get 503, live calls get `drain_seconds`, then BYE.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Waits until every call has ended and the SIP task has stopped.
    pub async fn wait(self) {
        let _ = self.task.await;
    }

    /// Resolves when the SIP task has died without being asked to stop: the
    /// binary then exits non-zero so that systemd restarts the daemon.
    pub async fn failed(&self) -> String {
        let mut exit = self.exit.clone();
        loop {
            if let Some(SipExit::Panicked(why)) = exit.borrow_and_update().clone() {
                return why;
            }
            if exit.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}

/// The message a panic carried.
pub(crate) fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".to_owned()),
        Err(e) => e.to_string(),
    }
}

/// Binds the SIP sockets and starts the daemon.
pub async fn start(
    settings: Settings,
    prompts: Prompts,
    records: RecordSink,
    clone: Option<CloneService>,
    agent: Option<AgentConfig>,
) -> Result<ServerHandle, ServerError> {
    let addr = settings.sip_listen;
    let (udp, tcp) = transport::bind(addr).await.map_err(|error| ServerError::Bind { addr, error })?;
    let sip_addr = udp.local_addr().map_err(|error| ServerError::Bind { addr, error })?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (inbound_tx, inbound_rx) = mpsc::channel(4096);
    let tcp_limits = settings.tcp_limits();
    tokio::spawn(transport::accept_loop(
        tcp,
        inbound_tx.clone(),
        tcp_limits,
        shutdown_rx.clone(),
        None,
    ));
    let (tls_addr, tls) = match &settings.sip_tls {
        None => (None, None),
        Some(t) => {
            let server = Arc::new(ServerTls::load(t.files.clone()).map_err(ServerError::Tls)?);
            let listener = tokio::net::TcpListener::bind(t.listen)
                .await
                .map_err(|error| ServerError::Bind { addr: t.listen, error })?;
            let bound = listener.local_addr().map_err(|error| ServerError::Bind { addr: t.listen, error })?;
            let accept = transport::TlsAccept {
                server: server.clone(),
                handshake_timeout: t.handshake_timeout,
            };
            tokio::spawn(transport::accept_loop(
                listener,
                inbound_tx.clone(),
                tcp_limits,
                shutdown_rx.clone(),
                Some(accept),
            ));
            tracing::info!(tls_addr = %bound, "listening for SIP over TLS");
            (Some(bound), Some(server))
        }
    };
    let stats = Arc::new(Stats::default());
    let endpoint = Endpoint::new(settings.endpoint_config());
    let (cmd_tx, cmd_rx) = mpsc::channel(8192);
    let prompts = Arc::new(RwLock::new(prompts));
    let guard = Guard::new(settings.guard_config());
    let mut registrations = Vec::new();
    let mut reg_tls = Vec::new();
    for r in &settings.registrations {
        let tls = match registration_tls(&settings, r) {
            Ok(tls) => tls,
            Err(e) => {
                tracing::error!(aor = %r.aor, error = %e, "cannot set up TLS for this registration; it is skipped");
                continue;
            }
        };
        let target = match tokio::net::lookup_host(r.target.as_str())
            .await
            .ok()
            .and_then(|mut a| a.find(SocketAddr::is_ipv4))
        {
            Some(t) => t,
            None => {
                tracing::error!(aor = %r.aor, target = %r.target, "cannot resolve the registrar; this registration is skipped");
                continue;
            }
        };
        let local = settings.public_addr.unwrap_or_else(|| {
            if sip_addr.ip().is_unspecified() {
                std::net::UdpSocket::bind("0.0.0.0:0")
                    .and_then(|s| {
                        s.connect(target)?;
                        s.local_addr()
                    })
                    .map_or(sip_addr, |a| SocketAddr::new(a.ip(), sip_addr.port()))
            } else {
                sip_addr
            }
        });
        let cfg = RegistrationConfig {
            registrar: r.registrar.clone(),
            target,
            aor: r.aor.clone(),
            username: r.username.clone(),
            password: r.password.clone(),
            expires: r.expires,
            transport: r.transport,
        };
        tracing::info!(aor = %r.aor, registrar = %r.registrar, %target, "registering to the trunk");
        registrations.push(Registration::new(cfg, local, Instant::now()));
        reg_tls.push(tls);
    }
    let task = SipTask {
        inbound_tx: inbound_tx.clone(),
        reg_conns: HashMap::new(),
        registrations,
        reg_tls,
        guard,
        setup_rate: SetupRate::new(
            Instant::now(),
            settings.raw.limits.max_setup_rate,
            settings.raw.limits.max_setup_burst,
        ),
        endpoint,
        udp: Arc::new(udp),
        sip_addr,
        tcp_writers: HashMap::new(),
        calls: HashMap::new(),
        local_ips: HashMap::new(),
        ports: PortPool::new(settings.rtp_ports, sip_addr.ip()),
        prompts: prompts.clone(),
        stats: stats.clone(),
        cmd_tx,
        draining_since: None,
        records,
        clone,
        agent,
        settings,
    };
    stats.sip_alive.store(true, Ordering::Relaxed);
    stats.beat(Instant::now());
    let sip = tokio::spawn(task.run(inbound_rx, cmd_rx, shutdown_rx));
    let (exit_tx, exit) = watch::channel(None);
    let supervised = stats.clone();
    let task = tokio::spawn(async move {
        let exit = match sip.await {
            Ok(()) => SipExit::Stopped,
            Err(e) => {
                let why = panic_message(e);
                tracing::error!(panic = %why, "the SIP task died: the daemon cannot take calls any more");
                metrics::counter!("precall_task_panics_total", "task" => "sip").increment(1);
                SipExit::Panicked(why)
            }
        };
        supervised.sip_alive.store(false, Ordering::Relaxed);
        let _ = exit_tx.send(Some(exit));
    });
    tracing::info!(%sip_addr, "listening for SIP on UDP and TCP");
    Ok(ServerHandle {
        sip_addr,
        tls_addr,
        tls,
        stats,
        prompts,
        shutdown,
        task,
        exit,
    })
}

/// The TLS client side of a `transport = "tls"` registration: `sip.tls_ca_file`'s
/// CAs (or the Mozilla roots) and the registrar's host name for SNI.
fn registration_tls(
    settings: &Settings,
    r: &crate::config::Registration,
) -> Result<Option<transport::TlsConnect>, crate::sip::tls::TlsError> {
    if r.transport != crate::sip::register::RegTransport::Tls {
        return Ok(None);
    }
    let ca = Some(settings.raw.sip.tls_ca_file.as_str())
        .filter(|p| !p.is_empty())
        .map(std::path::Path::new);
    Ok(Some(transport::TlsConnect {
        config: crate::sip::tls::client_config(ca)?,
        name: crate::sip::tls::server_name(&r.host)?,
    }))
}

/// The revision of the record written for a call whose task panicked: above
/// any revision the task itself could have reached, so it is the one kept.
const CRASH_REVISION: i64 = 1 << 40;

/// How long after `limits.drain_seconds` calls may take to end cleanly (their
/// BYEs answered) before drain stops waiting for the network.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

struct CallEntry {
    events: mpsc::Sender<CallEvent>,
}

struct SipTask {
    /// For outbound TCP connections (registrations) to report like accepted ones.
    inbound_tx: mpsc::Sender<Inbound>,
    /// Registration index → its TCP connection id.
    reg_conns: HashMap<usize, u64>,
    /// Registration index → its TLS client side (for `transport = "tls"`).
    reg_tls: Vec<Option<transport::TlsConnect>>,
    registrations: Vec<Registration>,
    guard: Guard,
    /// The node-wide set-up rate (`limits.max_setup_rate`), for every source.
    setup_rate: SetupRate,
    endpoint: Endpoint,
    udp: Arc<UdpSocket>,
    sip_addr: SocketAddr,
    tcp_writers: HashMap<u64, mpsc::Sender<Bytes>>,
    calls: HashMap<CallKey, CallEntry>,
    /// Peer IP → our source IP towards it (when listening on 0.0.0.0).
    local_ips: HashMap<IpAddr, IpAddr>,
    ports: PortPool,
    prompts: Arc<RwLock<Prompts>>,
    stats: Arc<Stats>,
    cmd_tx: mpsc::Sender<SipCommand>,
    draining_since: Option<Instant>,
    records: RecordSink,
    clone: Option<CloneService>,
    agent: Option<AgentConfig>,
    settings: Settings,
}

impl SipTask {
    async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        mut commands: mpsc::Receiver<SipCommand>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut buf = vec![0u8; 65536];
        let far = Duration::from_secs(3600);
        let sleep = tokio::time::sleep(far);
        tokio::pin!(sleep);
        let mut shutdown_open = true;
        let mut hung_up = false;
        let mut abandoned = false;
        loop {
            let now = Instant::now();
            self.stats.beat(now);
            // Wake at least once a second so the heartbeat shows the task is alive.
            self.registration_ticks(now).await;
            let mut wake = self.endpoint.poll_timeout().unwrap_or(now + far).min(now + Duration::from_secs(1));
            for r in &self.registrations {
                if let Some(at) = r.poll_timeout() {
                    wake = wake.min(at);
                }
            }
            if let Some(since) = self.draining_since {
                let drain_end = crate::deadline::after(since, self.settings.drain());
                let hard_stop = drain_end + DRAIN_GRACE;
                if now >= drain_end && !hung_up {
                    hung_up = true;
                    self.hang_up_everyone();
                }
                // A BYE waits for an ACK that may never come (RFC 3261 §15) and
                // then for an answer that may never come either: up to 64·T1
                // each. Drain does not: DRAIN_GRACE after the drain every call
                // still up ends where it stands, and records its end.
                if now >= hard_stop && !abandoned {
                    abandoned = true;
                    if !self.calls.is_empty() || self.endpoint.pending_byes() > 0 {
                        tracing::warn!(
                            calls = self.calls.len(),
                            byes = self.endpoint.pending_byes(),
                            "drain over: ending the calls still up without waiting for their ACKs or BYE answers"
                        );
                    }
                    for entry in self.calls.values() {
                        let _ = entry.events.try_send(CallEvent::Input(CallInput::SignallingLost));
                    }
                }
                // Done when no call is left and our BYEs have been answered (or
                // their transactions, 64·T1, have run out, or the drain is over)
                // …and our unREGISTERs are answered (for at most 2 s).
                let unregistering = self.registrations.iter().any(Registration::unregistering) && now < since + Duration::from_secs(2);
                if self.calls.is_empty() && (self.endpoint.pending_byes() == 0 || abandoned) && !unregistering {
                    break;
                }
                if now >= hard_stop + DRAIN_GRACE {
                    tracing::error!(calls = self.calls.len(), "call tasks did not end after the drain; stopping anyway");
                    break;
                }
                wake = wake.min(if hung_up { now + Duration::from_millis(100) } else { drain_end });
            }
            sleep.as_mut().reset(tokio::time::Instant::from_std(wake));
            tokio::select! {
                r = self.udp.recv_from(&mut buf) => match r {
                    Ok((n, remote)) => {
                        let flow = Flow { transport: Transport::Udp, remote, local: self.local_addr_for(remote) };
                        self.inbound_message(flow, &buf[..n]).await;
                    }
                    Err(e) => {
                        // Never spin on a socket that keeps failing.
                        tracing::debug!(error = %e, "UDP receive error");
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                },
                Some(msg) = inbound.recv() => match msg {
                    Inbound::Message { flow, data } => self.inbound_message(flow, &data).await,
                    Inbound::TcpOpened { id, writer } => { self.tcp_writers.insert(id, writer); }
                    Inbound::TcpClosed { id } => {
                        self.tcp_writers.remove(&id);
                        self.reg_conns.retain(|_, c| *c != id);
                    }
                    Inbound::Connected { owner, id } => { self.reg_conns.insert(owner, id); }
                    Inbound::ConnectFailed { owner, error } => {
                        let aor = self.registrations.get(owner).map(|r| r.aor().to_owned()).unwrap_or_default();
                        tracing::warn!(%aor, %error, "cannot open the connection to the registrar (TCP or TLS)");
                    }
                },
                Some(cmd) = commands.recv() => self.command(cmd),
                _ = &mut sleep => self.endpoint.handle_timeout(Instant::now()),
                r = shutdown.changed(), if shutdown_open => {
                    if r.is_err() || *shutdown.borrow() {
                        shutdown_open = false;
                        self.draining_since = Some(Instant::now());
                        self.stats.draining.store(true, Ordering::Relaxed);
                        self.endpoint.set_draining(true);
                        self.unregister_all().await;
                        tracing::info!(live_calls = self.calls.len(), drain_seconds = self.settings.drain().as_secs(), "draining: refusing new calls");
                    }
                }
            }
            self.drain_outputs().await;
        }
        tracing::info!("SIP task stopped");
    }

    fn hang_up_everyone(&mut self) {
        for entry in self.calls.values() {
            let _ = entry.events.try_send(CallEvent::Input(CallInput::Shutdown));
        }
    }

    fn command(&mut self, cmd: SipCommand) {
        let now = Instant::now();
        match cmd {
            SipCommand::Accept { call, sdp } => self.endpoint.accept(now, call, &sdp),
            SipCommand::Hangup { call, reason } => self.endpoint.hangup(now, call, reason.as_str()),
            SipCommand::AnswerReoffer { call, answer } => self.endpoint.answer_reoffer(now, call, answer),
            SipCommand::Refer { call, target } => {
                if !self.endpoint.refer(now, call, &target)
                    && let Some(entry) = self.calls.get(&call)
                {
                    let _ = entry.events.try_send(CallEvent::Refer(ReferProgress::Answered(481)));
                }
            }
            SipCommand::Crashed { call } => {
                self.endpoint.hangup(now, call, "error");
                if self.calls.remove(&call).is_some() {
                    self.stats.live_calls.store(self.calls.len(), Ordering::Relaxed);
                }
            }
            SipCommand::Finished { call } => {
                if self.calls.remove(&call).is_some() {
                    self.stats.live_calls.store(self.calls.len(), Ordering::Relaxed);
                }
            }
        }
    }

    async fn drain_outputs(&mut self) {
        while let Some(out) = self.endpoint.poll_output() {
            match out {
                Output::Transmit(t) => self.transmit(t.flow, t.data).await,
                Output::Event(ev) => self.event(ev),
                Output::Response(r) if r.cseq.method == "REGISTER" => self.registration_response(Instant::now(), &r).await,
                Output::Response(r) => tracing::debug!(status = r.status, method = %r.cseq.method, "response to no transaction of ours"),
            }
        }
        while let Some(r) = self.endpoint.poll_refusal() {
            tracing::info!(peer = %r.peer, method = %r.method, status = r.status, reason = %r.reason, "refused request");
            self.record_refused_invite(&r);
        }
    }

    async fn transmit(&mut self, flow: Flow, data: Vec<u8>) {
        match flow.transport {
            Transport::Udp => {
                if let Err(e) = self.udp.send_to(&data, flow.remote).await {
                    tracing::debug!(peer = %flow.remote, error = %e, "UDP send failed");
                }
            }
            Transport::Tcp(id) | Transport::Tls(id) => match self.tcp_writers.get(&id) {
                Some(w) => {
                    if w.try_send(Bytes::from(data)).is_err() {
                        tracing::warn!(peer = %flow.remote, "TCP connection backlogged or closed; message dropped");
                    }
                }
                None => tracing::debug!(peer = %flow.remote, "TCP connection gone; message dropped"),
            },
        }
    }

    fn event(&mut self, ev: SipEvent) {
        let (call, event) = match ev {
            SipEvent::Invite { call, request, flow } => return self.admit(call, *request, flow),
            SipEvent::Confirmed { call, body } if !body.is_empty() => (call, CallEvent::AckBody(body)),
            SipEvent::Confirmed { call, .. } => (call, CallEvent::Input(CallInput::Confirmed)),
            SipEvent::Cancelled { call } => (call, CallEvent::Input(CallInput::Cancelled)),
            SipEvent::ByeReceived { call } => (call, CallEvent::Input(CallInput::ByeReceived)),
            SipEvent::AckTimeout { call } => (call, CallEvent::Input(CallInput::AckTimeout)),
            SipEvent::SessionExpired { call } => (call, CallEvent::Input(CallInput::SessionExpired)),
            SipEvent::Reoffer { call, body } => (call, CallEvent::Reoffer(body)),
            SipEvent::Terminated { call } => (call, CallEvent::Input(CallInput::Terminated)),
            SipEvent::Refer { call, progress } => (call, CallEvent::Refer(progress)),
        };
        if let Some(entry) = self.calls.get(&call)
            && entry.events.try_send(event).is_err()
        {
            tracing::warn!(%call, "call task is not keeping up; signalling event dropped");
        }
    }

    /// Every SIP message passes the guard (allowlist, per-source rates) first.
    async fn inbound_message(&mut self, flow: Flow, data: &[u8]) {
        let now = Instant::now();
        let (verdict, log) = self.guard.check(now, flow.remote.ip(), data);
        match verdict {
            Verdict::Pass => self.endpoint.handle_datagram(now, flow, data),
            Verdict::Refuse(r) => {
                metrics::counter!("precall_sip_refused_total", "status" => r.status.to_string()).increment(1);
                if log {
                    tracing::warn!(peer = %flow.remote, status = r.status, reason = %r.reason, "SIP request refused by the guard (logged once per 10 s per source)");
                }
                self.endpoint.refuse_datagram(flow, data, r);
            }
            Verdict::Drop => {
                metrics::counter!("precall_sip_dropped_total").increment(1);
                if log {
                    tracing::warn!(peer = %flow.remote, "SIP message from this source dropped by the guard (logged once per 10 s per source)");
                }
            }
        }
    }

    fn local_addr_for(&mut self, remote: SocketAddr) -> SocketAddr {
        if !self.sip_addr.ip().is_unspecified() {
            return self.sip_addr;
        }
        let port = self.sip_addr.port();
        if let Some(ip) = self.local_ips.get(&remote.ip()) {
            return SocketAddr::new(*ip, port);
        }
        let ip = route_source(remote).unwrap_or(self.sip_addr.ip());
        if self.local_ips.len() > 10_000 {
            self.local_ips.clear();
        }
        self.local_ips.insert(remote.ip(), ip);
        SocketAddr::new(ip, port)
    }
}

fn route_source(remote: SocketAddr) -> Option<IpAddr> {
    let bind: SocketAddr = if remote.is_ipv4() {
        "0.0.0.0:0".parse().ok()?
    } else {
        "[::]:0".parse().ok()?
    };
    let probe = StdUdpSocket::bind(bind).ok()?;
    probe.connect(remote).ok()?;
    probe.local_addr().ok().map(|a| a.ip())
}
