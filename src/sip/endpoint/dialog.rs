//! Dialogs (RFC 3261 §12): matching in-dialog requests, the requests we send
//! inside a dialog (BYE, REFER, UPDATE, re-INVITE, ACK for a 2xx), the route
//! set and remote target, and a dialog's end.

use super::*;

impl Endpoint {
    pub(super) fn handle_in_dialog(&mut self, now: Instant, flow: Flow, req: Request, key: String) {
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

    pub(super) fn find_dialog(&self, req: &Request) -> Option<CallKey> {
        let tag = req.to.tag()?;
        let call = *self.dialog_index.get(&(req.call_id.clone(), tag.to_owned()))?;
        let d = self.dialogs.get(&call)?;
        (d.remote_tag == req.from.tag().unwrap_or("")).then_some(call)
    }

    pub(super) fn drop_dialog(&mut self, call: CallKey) {
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

    pub(super) fn dialog_timer(&mut self, now: Instant, call: CallKey) {
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

    pub(super) fn send_bye(&mut self, now: Instant, call: CallKey, reason: &str) {
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
        let contact = self.contact(d.flow, d.sips);
        let referred_by = NameAddr::parse("To", &d.local_party).map_or_else(|_| contact, |n| format!("<{}>", n.uri.as_str()));
        self.send_in_dialog(
            now,
            call,
            "REFER",
            &[("Refer-To", format!("<{uri}>")), ("Referred-By", referred_by)],
        );
        true
    }

    pub(super) fn send_in_dialog(&mut self, now: Instant, call: CallKey, method: &'static str, extra: &[(&str, String)]) {
        self.send_in_dialog_body(now, call, method, extra, None);
    }

    pub(super) fn send_in_dialog_body(
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
        let branch = format!("z9hG4bK{}", self.tokens.token(16));
        let (flow, sips) = (d.flow, d.sips);
        let mut w = dialog_request(d, self.config.public_addr, method, &branch, d.local_cseq);
        for (name, value) in extra {
            w.header(name, value);
        }
        if carries_contact(method) {
            let contact = self.contact(flow, sips);
            w.header("Contact", &contact);
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
    pub(super) fn send_ack(&mut self, call: CallKey, cseq: u32, branch: Option<String>) {
        let Some(d) = self.dialogs.get(&call) else { return };
        let flow = d.flow;
        let branch = branch.unwrap_or_else(|| format!("z9hG4bK{}", self.tokens.token(16)));
        let data = dialog_request(d, self.config.public_addr, "ACK", &branch, cseq).finish(None, &[]);
        self.outputs.push_back(Output::Transmit(Transmit { flow, data }));
    }

    pub(super) fn finish_call(&mut self, call: CallKey) {
        if self.dialogs.contains_key(&call) {
            self.drop_dialog(call);
            self.outputs.push_back(Output::Event(SipEvent::Terminated { call }));
        }
    }

    // ---- building responses ----------------------------------------------------

    /// The flow a request arrived on, when we can tell from our state.
    pub(super) fn dialog_flow_hint(&self, req: &Request) -> Option<Flow> {
        self.server_index
            .get(&server_key(req))
            .and_then(|id| self.server.get(id))
            .map(|t| t.flow)
    }

    pub(super) fn contact(&self, flow: Flow, sips: bool) -> String {
        let addr = self.config.public_addr.unwrap_or(flow.local);
        match flow.transport {
            Transport::Udp => format!("<sip:precall@{addr}>"),
            Transport::Tcp(_) => format!("<sip:precall@{addr};transport=tcp>"),
            // RFC 5630 §3.1.3: `sips:` only when the request asked for it
            // end to end; `transport=tls` says "this hop is TLS".
            Transport::Tls(_) if sips => format!("<sips:precall@{addr}>"),
            Transport::Tls(_) => format!("<sip:precall@{addr};transport=tls>"),
        }
    }
}

/// A random token for tags and branches (§19.3: at least 32 bits of randomness).
/// The start of a request we send inside `d`: request line, Via, route set,
/// From/To/Call-ID and CSeq (RFC 3261 §12.2.1.1).
pub(super) fn dialog_request(d: &Dialog, public_addr: Option<SocketAddr>, method: &str, branch: &str, cseq: u32) -> MessageWriter {
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

/// In-dialog requests that must carry our Contact: the target-refresh requests
/// (re-INVITE, UPDATE: RFC 3261 §12.2, RFC 3311 §5.1) and those that set up a
/// subscription (REFER's implicit one, RFC 3515; SUBSCRIBE and NOTIFY, RFC
/// 6665 §4.1.1, §4.2.2). BYE, CANCEL, ACK, INFO and MESSAGE need none.
pub(crate) fn carries_contact(method: &str) -> bool {
    matches!(method, "INVITE" | "UPDATE" | "REFER" | "SUBSCRIBE" | "NOTIFY")
}
