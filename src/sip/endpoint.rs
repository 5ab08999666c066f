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
use rand::Rng;

use super::header::{NameAddr, Via};
use super::message::{self, MessageWriter, RawMessage, Rejection, Request, Response, StartLine};
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
}

impl Endpoint {
    pub fn new(config: EndpointConfig) -> Self {
        Endpoint {
            authenticator: config.auth.clone().map(crate::sip::auth::Authenticator::new),
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

    fn handle_invite(&mut self, now: Instant, flow: Flow, req: Request, key: String) {
        // §8.2.3: body types we cannot read.
        if !req.body.is_empty() {
            let ct = req.headers.get("Content-Type").unwrap_or("");
            let media_type = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            if media_type != "application/sdp" && media_type != "multipart/mixed" {
                let r = Rejection::new(415, format!("Unsupported Media Type {media_type:?}: precall reads application/sdp"))
                    .with_header("Accept", "application/sdp");
                return self.refuse(now, flow, req, key, r);
            }
            if let Some(enc) = req.headers.get("Content-Encoding").filter(|e| !e.eq_ignore_ascii_case("identity")) {
                let r = Rejection::new(415, format!("Unsupported Content-Encoding {enc:?}")).with_header("Accept-Encoding", "identity");
                return self.refuse(now, flow, req, key, r);
            }
        }
        // §21.4.7: the answer would be application/sdp, which the caller must accept.
        let accepts: Vec<&str> = req.headers.list("Accept").collect();
        if !accepts.is_empty()
            && !accepts.iter().any(|a| {
                let t = a.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
                t == "application/sdp" || t == "application/*" || t == "*/*"
            })
        {
            let r = Rejection::new(406, "Not Acceptable: precall answers with application/sdp").with_header("Accept", "application/sdp");
            return self.refuse(now, flow, req, key, r);
        }
        // §8.2.2.2 merged request: same From tag, Call-ID and CSeq as a live INVITE
        // that came by another path.
        let merged = self
            .dialogs
            .values()
            .any(|d| d.call_id == req.call_id && d.remote_tag == req.from.tag().unwrap_or("") && d.invite_cseq == req.cseq.seq);
        if merged {
            return self.refuse(now, flow, req, key, Rejection::new(482, "Loop Detected: merged request"));
        }

        // Digest authentication of new calls (re-INVITEs are in a dialog already).
        if let Some(a) = &self.authenticator {
            let credentials = req.headers.get("Authorization").or_else(|| req.headers.get("Proxy-Authorization"));
            if let Err(failure) = a.verify("INVITE", credentials) {
                let stale = failure == crate::sip::auth::AuthFailure::Stale;
                let r = Rejection::new(401, "Unauthorized").with_header("WWW-Authenticate", a.challenge(stale));
                return self.refuse(now, flow, req, key, r);
            }
        }
        let session = match self.session_request(now, &req) {
            Ok(s) => s,
            Err(r) => return self.refuse(now, flow, req, key, r),
        };
        let call = CallKey(self.next_id());
        let tx = self.new_server_tx(key.clone(), true, flow, Some(call));
        let local_tag = random_token(10);
        let local_party = format!("{};tag={local_tag}", req.headers.get("To").unwrap_or_default());
        let remote_target = req
            .headers
            .list("Contact")
            .next()
            .and_then(|c| NameAddr::parse("Contact", c).ok())
            .map_or_else(|| req.from.uri.as_str().to_owned(), |c| c.uri.as_str().to_owned());
        let route_set = req.headers.list("Record-Route").map(str::to_owned).collect();
        let dialog = Dialog {
            call_id: req.call_id.clone(),
            local_tag: local_tag.clone(),
            remote_tag: req.from.tag().unwrap_or("").to_owned(),
            flow,
            local_party,
            remote_party: req.headers.get("From").unwrap_or_default().to_owned(),
            remote_target,
            route_set,
            local_cseq: 0,
            remote_cseq: req.cseq.seq,
            state: DialogState::Early,
            invite_tx: Some(tx),
            invite_request: None,
            pending_2xx: None,
            invite_cseq: req.cseq.seq,
            retransmit_at: None,
            interval: self.config.timers.t1,
            give_up_at: None,
            reoffer: None,
            delayed_offer: req.body.is_empty(),
            invite_key: key.clone(),
            session,
            local_sdp: None,
            refresh_with_invite: {
                let allow: Vec<&str> = req.headers.list("Allow").collect();
                !allow.is_empty() && !allow.iter().any(|m| m.eq_ignore_ascii_case("UPDATE"))
            },
        };
        self.dialog_index.insert((req.call_id.clone(), local_tag), call);
        // 100 Trying at once (§17.2.1): it stops the caller's INVITE retransmissions.
        let trying = self.response(&req, 100, "Trying", None, &[]);
        self.send_provisional(tx, trying);
        let request = Box::new(req);
        let mut dialog = dialog;
        dialog.invite_request = Some(request.clone());
        self.dialogs.insert(call, dialog);
        self.outputs.push_back(Output::Event(SipEvent::Invite { call, request, flow }));
    }

    /// Sends `180 Ringing` for a call the layer above wants to delay.
    pub fn ring(&mut self, call: CallKey) {
        let Some(d) = self.dialogs.get(&call) else { return };
        let (Some(tx), Some(req)) = (d.invite_tx, d.invite_request.as_deref()) else {
            return;
        };
        if d.state != DialogState::Early {
            return;
        }
        let tag = d.local_tag.clone();
        let resp = self.response_tagged(req, 180, "Ringing", Some(&tag), None, &[]);
        self.send_provisional(tx, resp);
    }

    /// Answers the INVITE with 200 and `sdp` (our answer, or our offer when the
    /// INVITE had none). Retransmits until the ACK; gives up after 64·T1 with BYE.
    pub fn accept(&mut self, now: Instant, call: CallKey, sdp: &[u8]) {
        let t1 = self.config.timers.t1;
        let Some(d) = self.dialogs.get(&call) else { return };
        let (Some(tx), Some(req)) = (d.invite_tx, d.invite_request.as_deref()) else {
            return;
        };
        if d.state != DialogState::Early {
            return;
        }
        let (tag, flow, invite_key) = (d.local_tag.clone(), d.flow, d.invite_key.clone());
        let mut extra = vec![("Contact", self.contact(flow)), ("Allow", ALLOW.to_owned())];
        extra.extend(self.session_headers(call));
        let resp = self.response_tagged(req, 200, "OK", Some(&tag), Some(("application/sdp", sdp)), &extra);
        // §17.2.1: a 2xx ends the INVITE server transaction; the UAS core takes over.
        self.remove_server(tx);
        self.accepted.insert(invite_key, call);
        self.outputs.push_back(Output::Transmit(Transmit { flow, data: resp.clone() }));
        if let Some(d) = self.dialogs.get_mut(&call) {
            d.local_sdp = Some(sdp.to_vec());
            d.invite_tx = None;
            d.state = DialogState::WaitAck;
            d.pending_2xx = Some(resp);
            d.interval = t1;
            d.retransmit_at = Some(now + t1);
            d.give_up_at = Some(now + 64 * t1);
        }
        self.schedule(now + t1, TimerId::Dialog(call));
        self.session_started(now, call);
    }

    /// Refuses the INVITE (503 at capacity, 488 on SDP…). The dialog ends when the
    /// transaction does.
    pub fn reject(&mut self, now: Instant, call: CallKey, rejection: Rejection) {
        let Some(d) = self.dialogs.get_mut(&call) else { return };
        let (Some(tx), Some(req)) = (d.invite_tx, d.invite_request.take()) else {
            return;
        };
        if d.state != DialogState::Early {
            return;
        }
        d.state = DialogState::Terminating;
        let tag = d.local_tag.clone();
        let peer = d.flow.remote;
        let resp = self.response_tagged(&req, rejection.status, &rejection.reason, Some(&tag), None, &rejection.headers);
        self.note_refusal(peer, &req.method, &rejection);
        self.send_final(now, tx, resp, rejection.status);
    }

    /// Ends the call from our side: BYE when confirmed (or waiting for the ACK),
    /// `480`-style rejection if it was never answered.
    pub fn hangup(&mut self, now: Instant, call: CallKey, reason: &str) {
        let Some(d) = self.dialogs.get(&call) else { return };
        match d.state {
            DialogState::Early => {
                let r = Rejection::new(480, format!("Temporarily Unavailable: {reason}"));
                self.reject(now, call, r);
            }
            DialogState::WaitAck | DialogState::Confirmed => self.send_bye(now, call, reason),
            DialogState::Terminating => {}
        }
    }

    /// Answers a [`SipEvent::Reoffer`]: `Ok(sdp)` sends 200 with our answer.
    pub fn answer_reoffer(&mut self, now: Instant, call: CallKey, answer: Result<Vec<u8>, Rejection>) {
        let Some(d) = self.dialogs.get_mut(&call) else { return };
        let Some((tx, method)) = d.reoffer.take() else { return };
        let Some(req) = d.invite_request.take() else { return };
        let tag = d.local_tag.clone();
        let flow = d.flow;
        let (status, reason, body, extra) = match &answer {
            Ok(sdp) => {
                let mut h = vec![("Contact", self.contact(flow))];
                h.extend(self.session_headers(call));
                (200, "OK".to_owned(), Some(("application/sdp", sdp.as_slice())), h)
            }
            Err(r) => (
                r.status,
                r.reason.clone(),
                None,
                r.headers.iter().map(|(n, v)| (*n, v.clone())).collect(),
            ),
        };
        let resp = self.response_tagged(&req, status, &reason, Some(&tag), body, &extra);
        if let (Ok(sdp), Some(d)) = (&answer, self.dialogs.get_mut(&call)) {
            d.local_sdp = Some(sdp.clone());
        }
        if method == "INVITE" && status == 200 {
            let t1 = self.config.timers.t1;
            self.remove_server(tx);
            self.outputs.push_back(Output::Transmit(Transmit { flow, data: resp.clone() }));
            if let Some(d) = self.dialogs.get_mut(&call) {
                d.pending_2xx = Some(resp);
                d.invite_cseq = req.cseq.seq;
                d.interval = t1;
                d.retransmit_at = Some(now + t1);
                d.give_up_at = Some(now + 64 * t1);
            }
            self.schedule(now + t1, TimerId::Dialog(call));
        } else {
            self.send_final(now, tx, resp, status);
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

    fn new_server_tx(&mut self, key: String, invite: bool, flow: Flow, call: Option<CallKey>) -> u64 {
        let id = self.next_id();
        self.server_index.insert(key.clone(), id);
        let t1 = self.config.timers.t1;
        self.server.insert(
            id,
            ServerTx {
                key,
                invite,
                flow,
                state: ServerState::Proceeding,
                last_response: None,
                retransmit_at: None,
                interval: t1,
                expires_at: None,
                call,
            },
        );
        id
    }

    fn remove_server(&mut self, id: u64) {
        if let Some(tx) = self.server.remove(&id) {
            self.server_index.remove(&tx.key);
        }
    }

    fn send_provisional(&mut self, id: u64, data: Vec<u8>) {
        let Some(tx) = self.server.get_mut(&id) else { return };
        tx.last_response = Some(data.clone());
        self.outputs.push_back(Output::Transmit(Transmit { flow: tx.flow, data }));
    }

    /// Sends a final response on a server transaction and arms its timers.
    fn send_final(&mut self, now: Instant, id: u64, data: Vec<u8>, status: u16) {
        let Timers { t1, t4: _, .. } = self.config.timers;
        let Some(tx) = self.server.get_mut(&id) else { return };
        let reliable = tx.flow.transport.is_reliable();
        tx.state = ServerState::Completed;
        tx.last_response = Some(data.clone());
        self.outputs.push_back(Output::Transmit(Transmit { flow: tx.flow, data }));
        let at = if tx.invite && status >= 300 {
            // Timer G (UDP only) and Timer H.
            if !reliable {
                tx.retransmit_at = Some(now + t1);
            }
            tx.expires_at = Some(now + 64 * t1);
            tx.retransmit_at.unwrap_or(now + 64 * t1)
        } else {
            // Timer J: 64·T1 on UDP to absorb retransmissions, zero on TCP.
            let j = if reliable { Duration::ZERO } else { 64 * t1 };
            tx.expires_at = Some(now + j);
            now + j
        };
        self.schedule(at, TimerId::Server(id));
    }

    fn server_retransmission(&mut self, now: Instant, id: u64, req: &Request) {
        let t4 = self.config.timers.t4;
        let Some(tx) = self.server.get_mut(&id) else { return };
        if req.method == "ACK" {
            // ACK for our non-2xx final (§17.2.1): Confirmed, Timer I.
            if tx.invite && tx.state == ServerState::Completed {
                tx.state = ServerState::Confirmed;
                tx.retransmit_at = None;
                let wait = if tx.flow.transport.is_reliable() { Duration::ZERO } else { t4 };
                tx.expires_at = Some(now + wait);
                self.schedule(now + wait, TimerId::Server(id));
            }
            return;
        }
        if tx.state == ServerState::Confirmed {
            return;
        }
        if let Some(resp) = tx.last_response.clone() {
            self.outputs.push_back(Output::Transmit(Transmit { flow: tx.flow, data: resp }));
        }
    }

    fn server_timer(&mut self, now: Instant, id: u64) {
        let t2 = self.config.timers.t2;
        let Some(tx) = self.server.get_mut(&id) else { return };
        if tx.expires_at.is_some_and(|at| at <= now) {
            let call = tx.call;
            let was_rejected = tx.invite && tx.state != ServerState::Proceeding;
            self.remove_server(id);
            // A rejected INVITE's dialog ends with its transaction.
            if let Some(call) = call.filter(|_| was_rejected)
                && self
                    .dialogs
                    .get(&call)
                    .is_some_and(|d| d.state == DialogState::Terminating && d.invite_tx == Some(id))
            {
                self.drop_dialog(call);
            }
            return;
        }
        if let Some(at) = tx.retransmit_at.filter(|at| *at <= now) {
            let _ = at;
            if let Some(resp) = tx.last_response.clone() {
                self.outputs.push_back(Output::Transmit(Transmit { flow: tx.flow, data: resp }));
            }
            tx.interval = (tx.interval * 2).min(t2);
            tx.retransmit_at = Some(now + tx.interval);
        }
        let next = [tx.retransmit_at, tx.expires_at].into_iter().flatten().min();
        if let Some(next) = next {
            self.schedule(next, TimerId::Server(id));
        }
    }

    fn refuse(&mut self, now: Instant, flow: Flow, req: Request, key: String, rejection: Rejection) {
        let id = self.new_server_tx(key, req.method == "INVITE", flow, None);
        let resp = self.response(&req, rejection.status, &rejection.reason, None, &rejection.headers);
        // A digest challenge is part of setting up a call, not a refused call.
        let invite = (req.method == "INVITE" && req.to.tag().is_none() && rejection.status != 401).then(|| RefusedInvite {
            call_id: req.call_id.clone(),
            caller: req.from.uri.user_decoded(),
            callee: req.uri.user_decoded(),
        });
        self.push_refusal(Refusal {
            peer: flow.remote,
            method: req.method.clone(),
            status: rejection.status,
            reason: rejection.reason.clone(),
            invite,
        });
        self.send_final(now, id, resp, rejection.status);
    }

    /// Answers a request that failed validation. There is no transaction to absorb
    /// its retransmissions (we could not key one), so each gets the same answer.
    fn refuse_raw(&mut self, flow: Flow, method: &str, raw: &RawMessage, rejection: Rejection) {
        let mut w = MessageWriter::response(rejection.status, &rejection.reason);
        let mut first = true;
        for via in raw.headers.list("Via") {
            if first {
                w.header("Via", self.received_via(via, flow));
                first = false;
            } else {
                w.header("Via", via);
            }
        }
        for name in ["From", "To", "Call-ID", "CSeq"] {
            if let Some(v) = raw.headers.get(name) {
                if name == "To" && !v.contains("tag=") {
                    w.header(name, format!("{v};tag={}", random_token(10)));
                } else {
                    w.header(name, v);
                }
            }
        }
        for (n, v) in &rejection.headers {
            w.header(n, v);
        }
        w.header("Server", &self.config.user_agent);
        self.note_refusal(flow.remote, method, &rejection);
        self.outputs.push_back(Output::Transmit(Transmit {
            flow,
            data: w.finish(None, &[]),
        }));
    }

    fn note_refusal(&mut self, peer: SocketAddr, method: &str, rejection: &Rejection) {
        self.push_refusal(Refusal {
            peer,
            method: method.to_owned(),
            status: rejection.status,
            reason: rejection.reason.clone(),
            invite: None,
        });
    }

    fn push_refusal(&mut self, refusal: Refusal) {
        if self.refusals.len() < 1024 {
            self.refusals.push_back(refusal);
        }
    }

    // ---- ACK, CANCEL, in-dialog requests ---------------------------------------

    fn handle_ack(&mut self, now: Instant, req: Request) {
        let Some(call) = self.find_dialog(&req) else { return };
        let Some(d) = self.dialogs.get_mut(&call) else { return };
        if d.pending_2xx.is_none() || req.cseq.seq != d.invite_cseq {
            return;
        }
        d.pending_2xx = None;
        d.retransmit_at = None;
        d.give_up_at = None;
        let _ = now;
        if d.state == DialogState::WaitAck {
            d.state = DialogState::Confirmed;
            let body = if d.delayed_offer { req.body.clone() } else { Bytes::new() };
            self.outputs.push_back(Output::Event(SipEvent::Confirmed { call, body }));
        }
    }

    fn handle_cancel(&mut self, now: Instant, flow: Flow, req: Request) {
        // §9.2: the CANCEL matches the INVITE's transaction (same branch and sent-by).
        let invite_key = server_key_for(&req, "INVITE");
        let key = server_key(&req);
        let Some(&invite_tx) = self.server_index.get(&invite_key) else {
            return self.refuse(
                now,
                flow,
                req,
                key,
                Rejection::new(481, "Call/Transaction Does Not Exist: nothing to cancel"),
            );
        };
        let id = self.new_server_tx(key, false, flow, None);
        let ok = self.response(&req, 200, "OK", None, &[]);
        self.send_final(now, id, ok, 200);
        let call = self
            .server
            .get(&invite_tx)
            .and_then(|t| if t.state == ServerState::Proceeding { t.call } else { None });
        let Some(call) = call else { return };
        let Some(d) = self.dialogs.get_mut(&call) else { return };
        if d.state != DialogState::Early {
            return;
        }
        let Some(invite) = d.invite_request.take() else { return };
        d.state = DialogState::Terminating;
        let tag = d.local_tag.clone();
        let resp = self.response_tagged(&invite, 487, "Request Terminated", Some(&tag), None, &[]);
        self.send_final(now, invite_tx, resp, 487);
        self.outputs.push_back(Output::Event(SipEvent::Cancelled { call }));
    }

    fn handle_in_dialog(&mut self, now: Instant, flow: Flow, req: Request, key: String) {
        let Some(call) = self.find_dialog(&req) else {
            return self.refuse(now, flow, req, key, Rejection::new(481, "Call/Transaction Does Not Exist"));
        };
        let Some(d) = self.dialogs.get_mut(&call) else { return };
        // §12.2.2: CSeq must grow within a dialog.
        if req.cseq.seq < d.remote_cseq || (req.cseq.seq == d.remote_cseq && req.method != "ACK") {
            return self.refuse(now, flow, req, key, Rejection::new(500, "Server Internal Error: CSeq out of order"));
        }
        d.remote_cseq = req.cseq.seq;
        let state = d.state;
        let busy = d.reoffer.is_some() || d.pending_2xx.is_some() || state != DialogState::Confirmed;
        let local_tag = d.local_tag.clone();
        match req.method.as_str() {
            "BYE" => {
                let id = self.new_server_tx(key, false, flow, None);
                let resp = self.response(&req, 200, "OK", None, &[]);
                self.send_final(now, id, resp, 200);
                self.drop_dialog(call);
                self.outputs.push_back(Output::Event(SipEvent::ByeReceived { call }));
            }
            "INVITE" | "UPDATE" if !req.body.is_empty() || req.method == "INVITE" => {
                let id = self.new_server_tx(key, req.method == "INVITE", flow, Some(call));
                if busy {
                    let r = Rejection::new(491, "Request Pending: an offer is already in progress").with_header("Retry-After", "1");
                    let resp = self.response(&req, r.status, &r.reason, None, &r.headers);
                    return self.send_final(now, id, resp, 491);
                }
                if req.method == "INVITE" {
                    let trying = self.response_tagged(&req, 100, "Trying", Some(&local_tag), None, &[]);
                    self.send_provisional(id, trying);
                }
                self.session_refreshed(now, call, &req);
                let Some(d) = self.dialogs.get_mut(&call) else { return };
                d.reoffer = Some((id, req.method.clone()));
                d.delayed_offer = req.body.is_empty();
                let body = req.body.clone();
                d.invite_request = Some(Box::new(req));
                self.outputs.push_back(Output::Event(SipEvent::Reoffer { call, body }));
            }
            "NOTIFY"
                if req
                    .headers
                    .get("Event")
                    .is_some_and(|e| e.trim().to_ascii_lowercase().starts_with("refer")) =>
            {
                let id = self.new_server_tx(key, false, flow, None);
                let resp = self.response(&req, 200, "OK", None, &[]);
                self.send_final(now, id, resp, 200);
                // The body is a message/sipfrag: "SIP/2.0 200 OK".
                let status = std::str::from_utf8(&req.body)
                    .ok()
                    .and_then(|b| b.trim_start().strip_prefix("SIP/2.0 "))
                    .and_then(|r| r.get(..3))
                    .and_then(|c| c.parse().ok());
                let terminated = req
                    .headers
                    .get("Subscription-State")
                    .is_some_and(|s| s.trim().to_ascii_lowercase().starts_with("terminated"));
                if let Some(status) = status {
                    let progress = ReferProgress::Notified { status, terminated };
                    self.outputs.push_back(Output::Event(SipEvent::Refer { call, progress }));
                }
            }
            "NOTIFY" => {
                let r = Rejection::new(489, "Bad Event: precall only subscribes to refer").with_header("Allow-Events", "refer");
                self.refuse(now, flow, req, key, r);
            }
            "UPDATE" | "INFO" | "OPTIONS" => {
                let mut extra = vec![("Allow", ALLOW.to_owned())];
                if req.method == "UPDATE" {
                    // An UPDATE without an offer is a session refresh (RFC 4028 §8).
                    self.session_refreshed(now, call, &req);
                    extra.extend(self.session_headers(call));
                }
                let id = self.new_server_tx(key, false, flow, None);
                let resp = self.response_tagged(&req, 200, "OK", Some(&local_tag), None, &extra);
                self.send_final(now, id, resp, 200);
            }
            m if KNOWN_NOT_ALLOWED.contains(&m) => {
                let r = Rejection::new(405, format!("Method Not Allowed: {m} is not supported in a call")).with_header("Allow", ALLOW);
                self.refuse(now, flow, req, key, r);
            }
            m => {
                let r = Rejection::new(501, format!("Not Implemented: unknown method {m}")).with_header("Allow", ALLOW);
                self.refuse(now, flow, req, key, r);
            }
        }
    }

    fn find_dialog(&self, req: &Request) -> Option<CallKey> {
        let tag = req.to.tag()?;
        let call = *self.dialog_index.get(&(req.call_id.clone(), tag.to_owned()))?;
        let d = self.dialogs.get(&call)?;
        (d.remote_tag == req.from.tag().unwrap_or("")).then_some(call)
    }

    fn drop_dialog(&mut self, call: CallKey) {
        if let Some(d) = self.dialogs.remove(&call) {
            self.dialog_index.remove(&(d.call_id, d.local_tag));
            self.accepted.remove(&d.invite_key);
            if let Some(tx) = d.invite_tx
                && let Some(t) = self.server.get_mut(&tx)
            {
                t.call = None;
            }
        }
    }

    // ---- the 2xx retransmission and our BYE -------------------------------------

    fn dialog_timer(&mut self, now: Instant, call: CallKey) {
        let t2 = self.config.timers.t2;
        let Some(d) = self.dialogs.get_mut(&call) else { return };
        if d.give_up_at.is_some_and(|at| at <= now) {
            // §13.3.1.4: no ACK after 64·T1 — confirm and end the dialog with BYE.
            d.pending_2xx = None;
            d.retransmit_at = None;
            d.give_up_at = None;
            d.state = DialogState::Confirmed;
            self.outputs.push_back(Output::Event(SipEvent::AckTimeout { call }));
            self.send_bye(now, call, "ack_timeout");
            return;
        }
        if d.retransmit_at.is_some_and(|at| at <= now) {
            if let Some(resp) = d.pending_2xx.clone() {
                self.outputs.push_back(Output::Transmit(Transmit { flow: d.flow, data: resp }));
            }
            d.interval = (d.interval * 2).min(t2);
            d.retransmit_at = Some(now + d.interval);
        }
        let next = [d.retransmit_at, d.give_up_at].into_iter().flatten().min();
        if let Some(next) = next {
            self.schedule(next, TimerId::Dialog(call));
        }
    }

    fn send_bye(&mut self, now: Instant, call: CallKey, reason: &str) {
        let Some(d) = self.dialogs.get_mut(&call) else { return };
        d.state = DialogState::Terminating;
        d.pending_2xx = None;
        d.retransmit_at = None;
        d.give_up_at = None;
        // RFC 3326: say why, so the far end's CDRs show it.
        self.send_in_dialog(now, call, "BYE", &[("Reason", format!("SIP;cause=200;text=\"{reason}\""))]);
    }

    /// Transfers the caller (RFC 3515): REFER to the caller's UA, along the
    /// dialog's route set, so the caller's side places the new call. A bare
    /// number becomes a SIP URI on the caller's own domain (their PBX or trunk
    /// routes it). Progress comes back as [`SipEvent::Refer`]. False when the
    /// call is not in a confirmed dialog.
    pub fn refer(&mut self, now: Instant, call: CallKey, target: &str) -> bool {
        let Some(d) = self.dialogs.get(&call).filter(|d| d.state == DialogState::Confirmed) else {
            return false;
        };
        let target = target.trim();
        let uri = if ["sip:", "sips:", "tel:"].iter().any(|p| target.to_ascii_lowercase().starts_with(p)) {
            target.to_owned()
        } else {
            let host = NameAddr::parse("From", &d.remote_party)
                .ok()
                .and_then(|n| {
                    n.uri
                        .as_str()
                        .split_once('@')
                        .map(|(_, h)| h.split([';', '>']).next().unwrap_or(h).to_owned())
                })
                .unwrap_or_else(|| d.flow.remote.to_string());
            format!("sip:{target}@{host}")
        };
        let contact = format!("<sip:precall@{}>", self.config.public_addr.unwrap_or(d.flow.local));
        let referred_by = NameAddr::parse("To", &d.local_party).map_or_else(|_| contact.clone(), |n| format!("<{}>", n.uri.as_str()));
        self.send_in_dialog(
            now,
            call,
            "REFER",
            &[("Refer-To", format!("<{uri}>")), ("Referred-By", referred_by), ("Contact", contact)],
        );
        true
    }

    fn send_in_dialog(&mut self, now: Instant, call: CallKey, method: &'static str, extra: &[(&str, String)]) {
        self.send_in_dialog_body(now, call, method, extra, None);
    }

    fn send_in_dialog_body(
        &mut self,
        now: Instant,
        call: CallKey,
        method: &'static str,
        extra: &[(&str, String)],
        body: Option<(&str, &[u8])>,
    ) {
        let Timers { t1, .. } = self.config.timers;
        let Some(d) = self.dialogs.get_mut(&call) else { return };
        d.local_cseq += 1;
        let branch = format!("z9hG4bK{}", random_token(16));
        let flow = d.flow;
        let mut w = dialog_request(d, self.config.public_addr, method, &branch, d.local_cseq);
        for (name, value) in extra {
            w.header(name, value);
        }
        w.header("User-Agent", &self.config.user_agent);
        let request = match body {
            Some((ct, bytes)) => w.finish(Some(ct), bytes),
            None => w.finish(None, &[]),
        };
        let id = self.next_id();
        let reliable = flow.transport.is_reliable();
        let retransmit_at = (!reliable).then_some(now + t1);
        self.client_index.insert(branch.clone(), id);
        self.client.insert(
            id,
            ClientTx {
                method,
                branch,
                call,
                flow,
                request: request.clone(),
                retransmit_at,
                interval: t1,
                expires_at: now + 64 * t1,
                done: false,
            },
        );
        self.outputs.push_back(Output::Transmit(Transmit { flow, data: request }));
        self.schedule(retransmit_at.unwrap_or(now + 64 * t1), TimerId::Client(id));
    }

    /// ACK for a final response to our re-INVITE (not a transaction: sent as is).
    fn send_ack(&mut self, call: CallKey, cseq: u32, branch: Option<String>) {
        let Some(d) = self.dialogs.get(&call) else { return };
        let flow = d.flow;
        let branch = branch.unwrap_or_else(|| format!("z9hG4bK{}", random_token(16)));
        let data = dialog_request(d, self.config.public_addr, "ACK", &branch, cseq).finish(None, &[]);
        self.outputs.push_back(Output::Transmit(Transmit { flow, data }));
    }

    fn handle_response(&mut self, now: Instant, resp: Response) {
        let Some(branch) = resp.via.branch() else { return };
        let Some(&id) = self.client_index.get(branch) else { return };
        let t4 = self.config.timers.t4;
        let Some(tx) = self.client.get_mut(&id) else { return };
        if tx.method == "INVITE" && resp.cseq.method == "INVITE" && resp.status >= 200 {
            // Our refreshing re-INVITE: every final response is acknowledged,
            // retransmitted 2xx included (§13.2.2.4); a non-2xx in its transaction.
            let (call, seq) = (tx.call, resp.cseq.seq);
            let branch = (resp.status >= 300).then(|| tx.branch.clone());
            let first = !tx.done;
            tx.done = true;
            tx.retransmit_at = None;
            let k = if tx.flow.transport.is_reliable() { Duration::ZERO } else { t4 };
            tx.expires_at = now + k.max(Duration::from_secs(32));
            self.send_ack(call, seq, branch);
            if first {
                self.session_refresh_answered(now, call, resp.status);
            }
            return;
        }
        if resp.cseq.method != tx.method || resp.status < 200 || tx.done {
            // A provisional response stops Timer E only on the next final (§17.1.2.2):
            // keep retransmitting at T2 meanwhile, as the RFC allows.
            return;
        }
        tx.done = true;
        tx.retransmit_at = None;
        let (call, method) = (tx.call, tx.method);
        // Timer K absorbs retransmitted responses.
        let k = if tx.flow.transport.is_reliable() { Duration::ZERO } else { t4 };
        tx.expires_at = now + k;
        self.schedule(now + k, TimerId::Client(id));
        if method == "REFER" {
            let progress = ReferProgress::Answered(resp.status);
            self.outputs.push_back(Output::Event(SipEvent::Refer { call, progress }));
        } else if method == "UPDATE" {
            self.session_refresh_answered(now, call, resp.status);
        } else {
            self.finish_call(call);
        }
    }

    fn client_timer(&mut self, now: Instant, id: u64) {
        let t2 = self.config.timers.t2;
        let Some(tx) = self.client.get_mut(&id) else { return };
        if tx.expires_at <= now {
            let (call, done, method) = (tx.call, tx.done, tx.method);
            let branch = tx.branch.clone();
            self.client.remove(&id);
            self.client_index.remove(&branch);
            if !done && method == "REFER" {
                let progress = ReferProgress::Answered(408);
                self.outputs.push_back(Output::Event(SipEvent::Refer { call, progress }));
            } else if !done && (method == "UPDATE" || method == "INVITE") {
                self.session_refresh_answered(now, call, 408);
            } else if !done {
                // Timer F: the far end never answered our BYE; the call is over anyway.
                self.finish_call(call);
            }
            return;
        }
        if tx.retransmit_at.is_some_and(|at| at <= now) {
            self.outputs.push_back(Output::Transmit(Transmit {
                flow: tx.flow,
                data: tx.request.clone(),
            }));
            tx.interval = (tx.interval * 2).min(t2);
            tx.retransmit_at = Some(now + tx.interval);
        }
        let next = tx.retransmit_at.map_or(tx.expires_at, |r| r.min(tx.expires_at));
        self.schedule(next, TimerId::Client(id));
    }

    fn finish_call(&mut self, call: CallKey) {
        if self.dialogs.contains_key(&call) {
            self.drop_dialog(call);
            self.outputs.push_back(Output::Event(SipEvent::Terminated { call }));
        }
    }

    // ---- building responses ----------------------------------------------------

    fn response(&self, req: &Request, status: u16, reason: &str, body: Option<(&str, &[u8])>, extra: &[(&str, String)]) -> Vec<u8> {
        // Every non-100 response carries a To tag (§8.2.6.2).
        let tag = if status > 100 && req.to.tag().is_none() {
            Some(random_token(10))
        } else {
            None
        };
        self.response_tagged(req, status, reason, tag.as_deref(), body, extra)
    }

    fn response_tagged(
        &self,
        req: &Request,
        status: u16,
        reason: &str,
        tag: Option<&str>,
        body: Option<(&str, &[u8])>,
        extra: &[(&str, String)],
    ) -> Vec<u8> {
        let mut w = MessageWriter::response(status, reason);
        let flow_for_via = self.dialog_flow_hint(req);
        for (i, via) in req.headers.list("Via").enumerate() {
            if i == 0 {
                w.header("Via", self.received_via(via, flow_for_via.unwrap_or(DUMMY_FLOW)));
            } else {
                w.header("Via", via);
            }
        }
        for rr in req.headers.all("Record-Route") {
            if (101..300).contains(&status) {
                w.header("Record-Route", rr);
            }
        }
        w.header("From", req.headers.get("From").unwrap_or_default());
        let to = req.headers.get("To").unwrap_or_default();
        match (req.to.tag(), tag, status) {
            (None, Some(tag), 101..) => w.header("To", format!("{to};tag={tag}")),
            _ => w.header("To", to),
        };
        w.header("Call-ID", &req.call_id);
        w.header("CSeq", &req.cseq);
        for (n, v) in extra {
            w.header(n, v);
        }
        w.header("Server", &self.config.user_agent);
        match body {
            Some((ct, b)) => w.finish(Some(ct), b),
            None => w.finish(None, &[]),
        }
    }

    /// The flow a request arrived on, when we can tell from our state.
    fn dialog_flow_hint(&self, req: &Request) -> Option<Flow> {
        self.server_index
            .get(&server_key(req))
            .and_then(|id| self.server.get(id))
            .map(|t| t.flow)
    }

    /// The top Via with `received`/`rport` filled in (RFC 3261 §18.2.1, RFC 3581),
    /// so a NATed caller's responses route back.
    fn received_via(&self, via: &str, flow: Flow) -> String {
        if flow == DUMMY_FLOW {
            return via.to_owned();
        }
        let Ok(parsed) = Via::parse(via) else { return via.to_owned() };
        let mut out = String::with_capacity(via.len() + 40);
        let mut pieces = super::header::split_outside_quotes(via, b';');
        out.push_str(pieces.next().unwrap_or(via).trim_end());
        let ip = flow.remote.ip().to_string();
        for p in pieces {
            let name = p.split('=').next().unwrap_or("").trim();
            if name.eq_ignore_ascii_case("rport") || name.eq_ignore_ascii_case("received") {
                continue;
            }
            out.push(';');
            out.push_str(p.trim());
        }
        let host = parsed.host.trim_start_matches('[').trim_end_matches(']');
        if host != ip || parsed.params.contains("rport") {
            out.push_str(";received=");
            out.push_str(&ip);
        }
        if parsed.params.contains("rport") {
            out.push_str(";rport=");
            out.push_str(&flow.remote.port().to_string());
        }
        out
    }

    fn contact(&self, flow: Flow) -> String {
        let addr = self.config.public_addr.unwrap_or(flow.local);
        match flow.transport {
            Transport::Udp => format!("<sip:precall@{addr}>"),
            Transport::Tcp(_) => format!("<sip:precall@{addr};transport=tcp>"),
        }
    }

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

/// The server transaction key (§17.2.3): branch + sent-by + method, with ACK
/// matching its INVITE. Pre-RFC 3261 requests (no magic cookie) key on the
/// dialog-ish fields instead.
fn server_key(req: &Request) -> String {
    let method = if req.method == "ACK" { "INVITE" } else { req.method.as_str() };
    server_key_for(req, method)
}

fn server_key_for(req: &Request, method: &str) -> String {
    let port = req.via.port.unwrap_or(5060);
    match req.via.rfc3261_branch() {
        Some(branch) => format!("{branch}|{}:{port}|{method}", req.via.host.to_ascii_lowercase()),
        None => format!(
            "2543|{}|{}|{}|{}:{port}|{}|{method}",
            req.call_id,
            req.cseq.seq,
            req.from.tag().unwrap_or(""),
            req.via.host,
            req.uri.as_str()
        ),
    }
}

/// A random token for tags and branches (§19.3: at least 32 bits of randomness).
/// The start of a request we send inside `d`: request line, Via, route set,
/// From/To/Call-ID and CSeq (RFC 3261 §12.2.1.1).
fn dialog_request(d: &Dialog, public_addr: Option<SocketAddr>, method: &str, branch: &str, cseq: u32) -> MessageWriter {
    let flow = d.flow;
    let mut w = MessageWriter::request(method, &d.remote_target);
    let via_host = public_addr.unwrap_or(flow.local);
    w.header(
        "Via",
        format!("SIP/2.0/{} {via_host};branch={branch};rport", flow.transport.via_token()),
    );
    w.header("Max-Forwards", 70);
    for route in &d.route_set {
        w.header("Route", route);
    }
    w.header("From", &d.local_party);
    w.header("To", &d.remote_party);
    w.header("Call-ID", &d.call_id);
    w.header("CSeq", format!("{cseq} {method}"));
    w
}

pub fn random_token(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}

mod session_timer;
#[cfg(test)]
mod tests;

pub use session_timer::SessionTimerConfig;
