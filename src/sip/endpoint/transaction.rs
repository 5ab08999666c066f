//! Transactions (RFC 3261 §17): the server transactions with their
//! retransmission timers (G/H/I for INVITE, J otherwise), absorbing
//! retransmitted requests, the client transactions of requests we send (E/F/K),
//! and building the responses and refusals they carry (`Via` with
//! `received`/`rport`, To tags).

use super::*;

impl Endpoint {
    pub(super) fn new_server_tx(&mut self, key: String, invite: bool, flow: Flow, call: Option<CallKey>) -> u64 {
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

    pub(super) fn remove_server(&mut self, id: u64) {
        if let Some(tx) = self.server.remove(&id) {
            self.server_index.remove(&tx.key);
        }
    }

    pub(super) fn send_provisional(&mut self, id: u64, data: Vec<u8>) {
        let Some(tx) = self.server.get_mut(&id) else { return };
        tx.last_response = Some(data.clone());
        self.outputs.push_back(Output::Transmit(Transmit { flow: tx.flow, data }));
    }

    /// Sends a final response on a server transaction and arms its timers.
    pub(super) fn send_final(&mut self, now: Instant, id: u64, data: Vec<u8>, status: u16) {
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

    pub(super) fn server_retransmission(&mut self, now: Instant, id: u64, req: &Request) {
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

    pub(super) fn server_timer(&mut self, now: Instant, id: u64) {
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

    pub(super) fn refuse(&mut self, now: Instant, flow: Flow, req: Request, key: String, rejection: Rejection) {
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
    pub(super) fn refuse_raw(&mut self, flow: Flow, method: &str, raw: &RawMessage, rejection: Rejection) {
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
                    w.header(name, format!("{v};tag={}", self.tokens.token(10)));
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

    pub(super) fn note_refusal(&mut self, peer: SocketAddr, method: &str, rejection: &Rejection) {
        self.push_refusal(Refusal {
            peer,
            method: method.to_owned(),
            status: rejection.status,
            reason: rejection.reason.clone(),
            invite: None,
        });
    }

    pub(super) fn push_refusal(&mut self, refusal: Refusal) {
        if self.refusals.len() < 1024 {
            self.refusals.push_back(refusal);
        }
    }

    // ---- ACK, CANCEL, in-dialog requests ---------------------------------------

    pub(super) fn handle_response(&mut self, now: Instant, resp: Response) {
        let Some(&id) = resp.via.branch().and_then(|b| self.client_index.get(b)) else {
            self.outputs.push_back(Output::Response(Box::new(resp)));
            return;
        };
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

    pub(super) fn client_timer(&mut self, now: Instant, id: u64) {
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

    pub(super) fn response(
        &self,
        req: &Request,
        status: u16,
        reason: &str,
        body: Option<(&str, &[u8])>,
        extra: &[(&str, String)],
    ) -> Vec<u8> {
        // Every non-100 response carries a To tag (§8.2.6.2).
        let tag = if status > 100 && req.to.tag().is_none() {
            Some(self.tokens.token(10))
        } else {
            None
        };
        self.response_tagged(req, status, reason, tag.as_deref(), body, extra)
    }

    pub(super) fn response_tagged(
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

    /// The top Via with `received`/`rport` filled in (RFC 3261 §18.2.1, RFC 3581),
    /// so a NATed caller's responses route back.
    pub(super) fn received_via(&self, via: &str, flow: Flow) -> String {
        if flow == DUMMY_FLOW {
            return via.to_owned();
        }
        let Ok(parsed) = Via::parse(via) else { return via.to_owned() };
        let mut out = String::with_capacity(via.len() + 40);
        let mut pieces = crate::sip::syntax::split_outside_quotes(via, b';');
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
}

/// The server transaction key (§17.2.3): branch + sent-by + method, with ACK
/// matching its INVITE. Pre-RFC 3261 requests (no magic cookie) key on the
/// dialog-ish fields instead.
pub(super) fn server_key(req: &Request) -> String {
    let method = if req.method == "ACK" { "INVITE" } else { req.method.as_str() };
    server_key_for(req, method)
}

pub(super) fn server_key_for(req: &Request, method: &str) -> String {
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
