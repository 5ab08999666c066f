//! The SIP task's side of admitting an INVITE (the decisions are
//! [`crate::call::admission`]'s): the node's limits (draining, `limits.max_calls`,
//! the set-up rate), the SDP offer (488 with a `Warning` when nothing is
//! acceptable), an RTP port, then the 200 and the call's task. Every refused
//! INVITE is recorded.

use super::*;

impl SipTask {
    /// An INVITE the endpoint refused before the call layer saw it (420, 415…) is
    /// still an attempted call: record it.
    pub(super) fn record_refused_invite(&self, r: &Refusal) {
        let Some(invite) = &r.invite else { return };
        let now = now_ms();
        let caller = invite.caller.as_deref().map(crate::caller_id::for_record);
        self.records.submit(Record::Call(Box::new(CallRow {
            call_id: new_id(),
            revision: 1,
            node_id: self.settings.node_id.clone(),
            protocol: "sip".into(),
            external_id: invite.call_id.clone(),
            caller,
            callee: invite.callee.as_deref().map(crate::caller_id::for_record),
            started_at: now,
            ended_at: Some(now),
            end_reason: Some("rejected".into()),
            end_status: Some(i64::from(r.status)),
            ..CallRow::default()
        })));
    }

    /// Refuses an admitted INVITE and records the call as rejected.
    pub(super) fn refuse_call(&mut self, call: CallKey, mut row: CallRow, rejection: Rejection) {
        self.stats.calls_rejected.fetch_add(1, Ordering::Relaxed);
        row.ended_at = Some(now_ms());
        row.end_reason = Some("rejected".into());
        row.end_status = Some(i64::from(rejection.status));
        self.records.submit(Record::Call(Box::new(row)));
        self.endpoint.reject(Instant::now(), call, rejection);
    }

    /// Decides about a new INVITE: capacity, SDP, an RTP port; then answers and
    /// starts the call task.
    pub(super) fn admit(&mut self, call: CallKey, request: Request, flow: Flow) {
        let now = Instant::now();
        let row = call_row(&request, &self.settings.node_id);
        let limits = &self.settings.raw.limits;
        let capacity = Capacity {
            draining: self.draining_since.is_some(),
            live_calls: self.calls.len(),
            max_calls: limits.max_calls,
            retry_after: limits.retry_after_seconds,
            max_setup_rate: limits.max_setup_rate,
        };
        if let Err(r) = admission::check_capacity(now, &capacity, &mut self.setup_rate) {
            return self.refuse_call(call, row, r);
        }
        let Some(socket) = self.ports.allocate() else {
            let r =
                Rejection::new(503, "Service Unavailable: no free RTP port").with_header("Retry-After", capacity.retry_after.to_string());
            return self.refuse_call(call, row, r);
        };
        let rtp_port = socket.local_addr().map(|a| a.port()).unwrap_or(0);
        let media_ip = self.settings.public_addr.map_or(flow.local.ip(), |a| a.ip());
        let mut rng = rand::rng();
        let security = admission::media_security(
            self.settings.srtp,
            flow.transport,
            self.settings.raw.rtp.srtp_allow_insecure_sdes,
            rng.random(),
            crate::media::dtls::identity().ok().map(|i| i.fingerprint),
        );
        let local = admission::local_media(media_ip, rtp_port, rng.random_range(1..u32::MAX as u64), security);
        let negotiation = match admission::negotiate(&request, &local) {
            Ok(n) => n,
            Err(r) => return self.refuse_call(call, row, r),
        };
        let socket = match UdpSocket::from_std(socket) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot register RTP socket");
                return self.refuse_call(call, row, Rejection::new(500, "Server Internal Error: RTP socket"));
            }
        };
        let body = negotiation.1.clone();
        let seeds = Seeds {
            ssrc: rng.random(),
            sequence: rng.random(),
            timestamp: rng.random(),
            hand_off_event: new_id(),
        };
        let policy = self.policy();
        let setup = {
            let prompts = self.prompts.read().unwrap_or_else(|p| p.into_inner());
            admission::setup(local, negotiation, row, &prompts, &policy, seeds)
        };
        let (events_tx, events_rx) = mpsc::channel(256);
        let ctx = CallContext {
            key: call,
            sip_call_id: request.call_id.clone(),
            callee: request.uri.user_decoded().unwrap_or_default(),
            peer: flow.remote,
            socket,
            events: events_rx,
            commands: self.cmd_tx.clone(),
            records: self.records.clone(),
            clone: self.clone.clone(),
            self_events: events_tx.clone(),
            agent: self.agent.clone(),
            setup,
        };
        if policy.answer_delay.is_zero() {
            self.endpoint.accept(now, call, body.as_bytes());
        } else {
            self.endpoint.ring(call);
        }
        self.calls.insert(call, CallEntry { events: events_tx });
        self.stats.live_calls.store(self.calls.len(), Ordering::Relaxed);
        self.stats.calls_total.fetch_add(1, Ordering::Relaxed);
        let mut crash_row = ctx.setup.row.clone();
        let records = self.records.clone();
        let commands = self.cmd_tx.clone();
        let running = tokio::spawn(task::run(ctx, now));
        // A panicking call must not leave its dialog up or its slot taken: the
        // SIP task hangs up and forgets it, and the record says `error`.
        tokio::spawn(async move {
            let Err(e) = running.await else { return };
            let why = panic_message(e);
            tracing::error!(%call, panic = %why, "a call task panicked; hanging up");
            metrics::counter!("precall_task_panics_total", "task" => "call").increment(1);
            crash_row.revision = CRASH_REVISION;
            crash_row.ended_at = Some(now_ms());
            crash_row.end_reason = Some("error".into());
            records.submit(Record::Call(Box::new(crash_row)));
            let _ = commands.send(SipCommand::Crashed { call }).await;
        });
    }
}

impl SipTask {
    /// What every SIP call starts from, as the settings say now.
    fn policy(&self) -> Policy {
        let raw = &self.settings.raw;
        Policy {
            limits: self.settings.call_limits(),
            answer_delay: Duration::from_millis(raw.sip.answer_delay_ms),
            cloning: self.clone.is_some(),
            agent: self.agent.as_ref().map(|a| AgentPlan {
                default_voice_id: a.default_voice_id.clone(),
                max_queue_seconds: a.max_queue_seconds,
            }),
            strict_rtp_source: raw.rtp.strict_source,
        }
    }
}

/// The first `call_log` row of a call. The caller is the P-Asserted-Identity
/// (set by trusted trunks) or the From user, normalised toward E.164.
pub(super) fn call_row(request: &Request, node_id: &str) -> CallRow {
    let asserted = request
        .headers
        .get("P-Asserted-Identity")
        .and_then(|v| crate::sip::header::NameAddr::parse("P-Asserted-Identity", v).ok())
        .and_then(|n| n.uri.user_decoded());
    let user = asserted.or_else(|| request.from.uri.user_decoded());
    let caller = user.map(|u| crate::caller_id::for_record(&u));
    CallRow {
        call_id: new_id(),
        revision: 1,
        node_id: node_id.to_owned(),
        protocol: "sip".into(),
        external_id: request.call_id.clone(),
        caller,
        callee: request.uri.user_decoded().map(|u| crate::caller_id::for_record(&u)),
        started_at: now_ms(),
        ..CallRow::default()
    }
}
