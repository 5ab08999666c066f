//! The sans-IO SIP user agent server.
//!
//! [`Endpoint`] takes datagrams and timer ticks with an injected `Instant` and
//! produces [`Output`]s: bytes to transmit and [`SipEvent`]s for the call layer. It
//! runs the server transactions (RFC 3261 §17.2: INVITE with Timers G/H/I,
//! non-INVITE with Timer J), the UAS core's 2xx retransmission until ACK (§13.3.1.4,
//! ending the call with BYE when the ACK never comes), the client transaction for
//! our BYE (§17.1.2, Timers E/F/K), CANCEL (§9.2), and dialog matching (§12.2.2).
//!
//! Why not a SIP crate: see `docs/ARCHITECTURE.md`. In short, the candidates read
//! the clock themselves (so none of this could be tested on virtual time), and drop
//! unparsable requests silently, where a trunk operator needs `400` with a reason.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::header::{NameAddr, Via};
use super::message::{self, MessageWriter, RawMessage, Rejection, Request, Response, StartLine};
use super::tokens::Tokens;
use super::{Flow, Transmit, Transport};

/// Methods this UAS implements; sent in `Allow`.
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, NOTIFY";
/// Methods that exist but we do not serve (405, not 501).
const KNOWN_NOT_ALLOWED: &[&str] = &["REGISTER", "SUBSCRIBE", "NOTIFY", "PUBLISH", "MESSAGE", "REFER", "PRACK"];

/// An id for one call (one INVITE dialog), shared with the call layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallKey(pub u64);

impl std::fmt::Display for CallKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "c{}", self.0)
    }
}

/// RFC 3261 timer bases (§17.1.1.1 and Table 4).
#[derive(Debug, Clone, Copy)]
pub struct Timers {
    pub t1: Duration,
    pub t2: Duration,
    pub t4: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone)]
pub struct EndpointConfig {
    pub user_agent: String,
    pub timers: Timers,
    /// Overrides the address written into Contact and Via (NAT, `sip.public_addr`).
    pub public_addr: Option<SocketAddr>,
    /// Session timers (RFC 4028).
    pub session: SessionTimerConfig,
    /// Digest authentication of new INVITEs (`sip.auth_realm`).
    pub auth: Option<crate::sip::auth::AuthConfig>,
}

/// What the call layer learns from signalling.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum SipEvent {
    /// A new INVITE; the call layer must `accept`, `ring` or `reject` it.
    Invite { call: CallKey, request: Box<Request>, flow: Flow },
    /// The ACK for our 2xx arrived; `body` holds the SDP answer of a delayed offer.
    Confirmed { call: CallKey, body: Bytes },
    /// The caller cancelled before we answered; the 487 is already sent.
    Cancelled { call: CallKey },
    /// The caller hung up; the 200 to the BYE is already sent.
    ByeReceived { call: CallKey },
    /// Timer H ran out without an ACK for our 2xx; a BYE is on its way.
    AckTimeout { call: CallKey },
    /// A re-INVITE or UPDATE with an SDP offer; answer with `answer_reoffer`.
    Reoffer { call: CallKey, body: Bytes },
    /// The dialog is gone (our BYE completed or timed out, or a rejection was acknowledged).
    Terminated { call: CallKey },
    /// The caller stopped refreshing the session (RFC 4028), or our refresh was
    /// refused with 408/481: a BYE is on its way.
    SessionExpired { call: CallKey },
    /// How a transfer is going (RFC 3515): the final response to our REFER, then
    /// the status lines of the transferee's NOTIFYs. 408 when REFER got no answer.
    Refer { call: CallKey, progress: ReferProgress },
}

/// One step of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferProgress {
    /// The final response to the REFER (202 accepted, or a failure status).
    Answered(u16),
    /// A NOTIFY's `message/sipfrag` status line: the transferee's call to the target.
    Notified { status: u16, terminated: bool },
}

#[derive(Debug)]
pub enum Output {
    Transmit(Transmit),
    Event(SipEvent),
    /// A valid response that belongs to none of the endpoint's transactions:
    /// a trunk registration's (`sip::register` runs those), or a stray. Parsed
    /// once, here, and handed on.
    Response(Box<Response>),
}

/// A request we refused, for the caller to log once with the peer address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub peer: SocketAddr,
    pub method: String,
    pub status: u16,
    pub reason: String,
    /// Set for a new INVITE the endpoint refused on its own (420, 415, 406, 482…),
    /// so the call layer can record the attempted call.
    pub invite: Option<RefusedInvite>,
}

/// Who tried to call, for a refused INVITE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedInvite {
    pub call_id: String,
    pub caller: Option<String>,
    pub callee: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum TimerId {
    Server(u64),
    Client(u64),
    Dialog(CallKey),
    Session(CallKey),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerState {
    Proceeding,
    Completed,
    Confirmed,
}

/// A server transaction: absorbs retransmitted requests by resending the last
/// response, and for INVITE retransmits a non-2xx final until the ACK (Timer G/H).
#[derive(Debug)]
struct ServerTx {
    key: String,
    invite: bool,
    flow: Flow,
    state: ServerState,
    last_response: Option<Vec<u8>>,
    retransmit_at: Option<Instant>,
    interval: Duration,
    expires_at: Option<Instant>,
    call: Option<CallKey>,
}

/// Our BYE's or REFER's client transaction (Timers E, F, K).
#[derive(Debug)]
struct ClientTx {
    method: &'static str,
    branch: String,
    call: CallKey,
    flow: Flow,
    request: Vec<u8>,
    retransmit_at: Option<Instant>,
    interval: Duration,
    expires_at: Instant,
    done: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DialogState {
    /// INVITE received, no final response yet.
    Early,
    /// 2xx sent, retransmitting it until the ACK.
    WaitAck,
    Confirmed,
    /// We sent BYE (or rejected the INVITE); waiting for the transaction to end.
    Terminating,
}

#[derive(Debug)]
struct Dialog {
    call_id: String,
    local_tag: String,
    remote_tag: String,
    flow: Flow,
    /// The request's To value with our tag: our identity in this dialog.
    local_party: String,
    /// The request's From value: the remote identity.
    remote_party: String,
    remote_target: String,
    route_set: Vec<String>,
    local_cseq: u32,
    remote_cseq: u32,
    state: DialogState,
    /// The INVITE server transaction of the initial INVITE (or of a re-INVITE
    /// being answered).
    invite_tx: Option<u64>,
    invite_request: Option<Box<Request>>,
    /// The 2xx being retransmitted until the ACK, with its schedule.
    pending_2xx: Option<Vec<u8>>,
    invite_cseq: u32,
    retransmit_at: Option<Instant>,
    interval: Duration,
    give_up_at: Option<Instant>,
    /// A re-INVITE/UPDATE waiting for the call layer's answer: (tx, method).
    reoffer: Option<(u64, String)>,
    /// Set when the caller's INVITE carried no SDP: the ACK carries the answer.
    delayed_offer: bool,
    /// The initial INVITE's transaction key: its retransmissions after our 2xx
    /// get the 2xx again (RFC 6026 "Accepted").
    invite_key: String,
    /// The session timer, when the caller asked for one (RFC 4028).
    session: Option<session_timer::SessionTimer>,
    /// Our current SDP (the last one we sent in a 2xx), for re-INVITE refreshes.
    local_sdp: Option<Vec<u8>>,
    /// Refresh with re-INVITE: the caller does not allow UPDATE.
    refresh_with_invite: bool,
    /// The INVITE's Request-URI was `sips:` (so was its path): our Contact is too.
    sips: bool,
}

/// The sans-IO UAS. See the module docs.
pub struct Endpoint {
    authenticator: Option<crate::sip::auth::Authenticator>,
    config: EndpointConfig,
    server: HashMap<u64, ServerTx>,
    server_index: HashMap<String, u64>,
    client: HashMap<u64, ClientTx>,
    client_index: HashMap<String, u64>,
    /// Initial INVITE keys of answered calls → call (RFC 6026 Accepted state).
    accepted: HashMap<String, CallKey>,
    dialogs: HashMap<CallKey, Dialog>,
    /// (Call-ID, our tag) → dialog.
    dialog_index: HashMap<(String, String), CallKey>,
    timers: BinaryHeap<Reverse<(Instant, TimerId)>>,
    outputs: VecDeque<Output>,
    refusals: VecDeque<Refusal>,
    next_id: u64,
    /// Shutting down: OPTIONS probes hear 503, so a dispatcher stops sending.
    draining: bool,
    /// Tags and branches (injected randomness: seeded in tests).
    tokens: Tokens,
}

impl Endpoint {
    pub fn new(config: EndpointConfig) -> Self {
        Self::with_tokens(config, Tokens::from_os())
    }

    /// An endpoint whose tags, branches and nonce key come from `tokens`
    /// (a seeded source makes a simulated run reproducible).
    pub fn with_tokens(config: EndpointConfig, tokens: Tokens) -> Self {
        Endpoint {
            authenticator: config.auth.clone().map(|a| crate::sip::auth::Authenticator::new(a, tokens.key())),
            config,
            server: HashMap::new(),
            server_index: HashMap::new(),
            client: HashMap::new(),
            client_index: HashMap::new(),
            accepted: HashMap::new(),
            dialogs: HashMap::new(),
            dialog_index: HashMap::new(),
            timers: BinaryHeap::new(),
            outputs: VecDeque::new(),
            refusals: VecDeque::new(),
            next_id: 1,
            draining: false,
            tokens,
        }
    }

    /// While draining, out-of-dialog OPTIONS (a dispatcher's probe) get `503`
    /// so that new calls go elsewhere; at capacity they still get `200`: a full
    /// node is alive, and its INVITE refusals say so per call.
    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    /// Next output to carry out. Drain it after every input (str0m's contract).
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Requests refused since the last call, for logging with the peer address.
    pub fn poll_refusal(&mut self) -> Option<Refusal> {
        self.refusals.pop_front()
    }

    /// When `handle_timeout` must next be called.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// Number of live dialogs (including ones being set up or torn down).
    pub fn dialog_count(&self) -> usize {
        self.dialogs.len()
    }

    /// BYE transactions still waiting for their final response.
    pub fn pending_byes(&self) -> usize {
        self.client.values().filter(|t| !t.done).count()
    }

    /// Number of live transactions, for tests and metrics.
    pub fn transaction_count(&self) -> usize {
        self.server.len() + self.client.len()
    }

    /// One datagram or one framed stream message from `flow`.
    pub fn handle_datagram(&mut self, now: Instant, flow: Flow, data: &[u8]) {
        let raw = match message::parse(data) {
            Ok(raw) => raw,
            Err(e) => {
                tracing::debug!(peer = %flow.remote, error = %e, "dropping unparsable datagram");
                return;
            }
        };
        match raw.start {
            StartLine::Request { .. } => self.handle_request(now, flow, raw),
            StartLine::Response { .. } => {
                if let Some(resp) = Response::validate(raw) {
                    self.handle_response(now, resp);
                }
            }
        }
    }

    /// Answers a message the guard turned away with `rejection`, statelessly
    /// (never an ACK, and only what parses well enough to be answered).
    pub fn refuse_datagram(&mut self, flow: Flow, data: &[u8], rejection: Rejection) {
        let Ok(raw) = message::parse(data) else { return };
        let StartLine::Request { method, .. } = &raw.start else { return };
        if method == "ACK" || raw.headers.get("Via").is_none() {
            return;
        }
        let method = method.clone();
        self.refuse_raw(flow, &method, &raw, rejection);
    }

    fn handle_request(&mut self, now: Instant, flow: Flow, raw: RawMessage) {
        let method = match &raw.start {
            StartLine::Request { method, .. } => method.clone(),
            StartLine::Response { .. } => return,
        };
        let fallback = raw.clone();
        let req = match Request::validate(raw) {
            Ok(req) => req,
            Err(rejection) => {
                // ACKs are never answered (§17.2.1); a response needs a Via to be routed.
                if method != "ACK" && fallback.headers.get("Via").is_some() {
                    self.refuse_raw(flow, &method, &fallback, rejection);
                }
                return;
            }
        };
        // Retransmissions and ACK/CANCEL matching go through the transaction layer first.
        let key = server_key(&req);
        if let Some(&id) = self.server_index.get(&key) {
            self.server_retransmission(now, id, &req);
            return;
        }
        if req.method == "INVITE"
            && let Some(call) = self.accepted.get(&key)
        {
            if let Some(resp) = self.dialogs.get(call).and_then(|d| d.pending_2xx.clone()) {
                self.outputs.push_back(Output::Transmit(Transmit { flow, data: resp }));
            }
            return;
        }
        // RFC 5630 §3.1.3 / RFC 3261 §26.2.2: a `sips:` Request-URI asks for TLS
        // on every hop; served over UDP or TCP it would silently downgrade.
        if req.method != "ACK" && req.uri.scheme == crate::sip::uri::Scheme::Sips && !flow.transport.is_secure() {
            let r = Rejection::new(416, "Unsupported URI Scheme: a sips: Request-URI must be sent over TLS");
            return self.refuse(now, flow, req, key, r);
        }
        // §8.2.2.3: Require options we do not support (never for ACK or CANCEL).
        if req.method != "ACK" && req.method != "CANCEL" {
            let unsupported: Vec<&str> = req.headers.list("Require").collect();
            if !unsupported.is_empty() {
                let list = unsupported.join(", ");
                let r = Rejection::new(420, format!("Bad Extension: {list} not supported")).with_header("Unsupported", list);
                return self.refuse(now, flow, req, key, r);
            }
        }
        match req.method.as_str() {
            "ACK" => self.handle_ack(now, req),
            "CANCEL" => self.handle_cancel(now, flow, req),
            _ if req.to.tag().is_some() => self.handle_in_dialog(now, flow, req, key),
            "INVITE" => self.handle_invite(now, flow, req, key),
            "OPTIONS" if self.draining => {
                let r = Rejection::new(503, "Service Unavailable: shutting down").with_header("Retry-After", "30");
                self.refuse(now, flow, req, key, r);
            }
            "OPTIONS" => {
                let id = self.new_server_tx(key, false, flow, None);
                let resp = self.response(
                    &req,
                    200,
                    "OK",
                    None,
                    &[("Allow", ALLOW.into()), ("Accept", "application/sdp".into())],
                );
                self.send_final(now, id, resp, 200);
            }
            "BYE" | "INFO" | "UPDATE" => {
                // Without a To tag these cannot belong to a dialog we created.
                self.refuse(now, flow, req, key, Rejection::new(481, "Call/Transaction Does Not Exist"));
            }
            m if KNOWN_NOT_ALLOWED.contains(&m) => {
                let r = Rejection::new(405, format!("Method Not Allowed: precall does not accept {m}")).with_header("Allow", ALLOW);
                self.refuse(now, flow, req, key, r);
            }
            m => {
                let r = Rejection::new(501, format!("Not Implemented: unknown method {m}")).with_header("Allow", ALLOW);
                self.refuse(now, flow, req, key, r);
            }
        }
    }

    /// Timer tick: runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut due = Vec::new();
        while let Some(Reverse((at, id))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            due.push(id);
        }
        due.sort_unstable();
        due.dedup();
        for id in due {
            match id {
                TimerId::Server(tx) => self.server_timer(now, tx),
                TimerId::Client(tx) => self.client_timer(now, tx),
                TimerId::Dialog(call) => self.dialog_timer(now, call),
                TimerId::Session(call) => self.session_timer(now, call),
            }
        }
    }

    // ---- server transactions -------------------------------------------------

    fn schedule(&mut self, at: Instant, id: TimerId) {
        self.timers.push(Reverse((at, id)));
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }
}

const DUMMY_FLOW: Flow = Flow {
    transport: Transport::Udp,
    remote: SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0),
    local: SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0),
};

mod dialog;
mod session_timer;
mod transaction;
mod uas;

use transaction::{server_key, server_key_for};
#[cfg(test)]
mod session_tests;
#[cfg(test)]
mod tests;

pub use session_timer::SessionTimerConfig;
