//! The UAS core for INVITE (RFC 3261 §13.3): admission hand-off to the call
//! layer, ringing, the 2xx and its retransmission until the ACK, refusals,
//! CANCEL (§9.2), and the answer to a re-INVITE or UPDATE offer.

use super::*;

impl Endpoint {
    pub(super) fn handle_invite(&mut self, now: Instant, flow: Flow, req: Request, key: String) {
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
            if let Err(failure) = a.verify(now, "INVITE", credentials) {
                let stale = failure == crate::sip::auth::AuthFailure::Stale;
                let r = Rejection::new(401, "Unauthorized").with_header("WWW-Authenticate", a.challenge(now, stale));
                return self.refuse(now, flow, req, key, r);
            }
        }
        let session = match self.session_request(now, &req) {
            Ok(s) => s,
            Err(r) => return self.refuse(now, flow, req, key, r),
        };
        let call = CallKey(self.next_id());
        let tx = self.new_server_tx(key.clone(), true, flow, Some(call));
        let local_tag = self.tokens.token(10);
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
            sips: req.uri.scheme == crate::sip::uri::Scheme::Sips,
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
        let mut extra = vec![("Contact", self.contact(flow, d.sips)), ("Allow", ALLOW.to_owned())];
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
        let (flow, sips) = (d.flow, d.sips);
        let (status, reason, body, extra) = match &answer {
            Ok(sdp) => {
                let mut h = vec![("Contact", self.contact(flow, sips))];
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

    pub(super) fn handle_ack(&mut self, now: Instant, req: Request) {
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

    pub(super) fn handle_cancel(&mut self, now: Instant, flow: Flow, req: Request) {
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
}
