//! Trunk registrations (`[[sip.registrations]]`) from the SIP task's side:
//! ticking the sans-IO `Registration`s, sending their REGISTERs on UDP or their
//! own TCP connection, feeding them responses, unREGISTER at shutdown, and
//! publishing their state for `/health` and `/metrics`.

use super::*;

impl SipTask {
    /// Our address as the peer sees it: the listen address, or (listening on
    /// 0.0.0.0) the source address the kernel routes towards the peer.
    /// Sends whatever the registrations want to send now, and publishes their states.
    pub(super) async fn registration_ticks(&mut self, now: Instant) {
        let mut out = Vec::new();
        for (i, r) in self.registrations.iter_mut().enumerate() {
            if let Some(bytes) = r.handle_timeout(now) {
                out.push((i, bytes));
            }
        }
        for (i, bytes) in out {
            self.send_registration(i, bytes).await;
        }
        self.publish_registrations();
    }

    /// UDP from the SIP socket, or TCP/TLS over the registration's own connection
    /// (opened, or reopened, on demand).
    pub(super) async fn send_registration(&mut self, i: usize, bytes: Vec<u8>) {
        let Some(r) = self.registrations.get(i) else { return };
        let target = r.target();
        if !r.stream() {
            let _ = self.udp.send_to(&bytes, target).await;
            return;
        }
        let bytes = Bytes::from(bytes);
        if let Some(writer) = self.reg_conns.get(&i).and_then(|id| self.tcp_writers.get(id))
            && writer.try_send(bytes.clone()).is_ok()
        {
            return;
        }
        let tls = self.reg_tls.get(i).cloned().flatten();
        self.reg_conns.remove(&i);
        transport::connect_outbound(target, i, bytes, self.inbound_tx.clone(), tls);
    }

    pub(super) async fn registration_response(&mut self, now: Instant, resp: &crate::sip::message::Response) {
        let mut out = Vec::new();
        for (i, r) in self.registrations.iter_mut().enumerate() {
            if r.owns(resp) {
                let before = r.state().clone();
                if let Some(bytes) = r.handle_response(now, resp) {
                    out.push((i, bytes));
                }
                if *r.state() != before {
                    tracing::info!(aor = %r.aor(), state = ?r.state(), status = resp.status, "registration");
                }
            }
        }
        for (i, bytes) in out {
            self.send_registration(i, bytes).await;
        }
        self.publish_registrations();
    }

    pub(super) async fn unregister_all(&mut self) {
        let now = Instant::now();
        let mut out = Vec::new();
        for (i, r) in self.registrations.iter_mut().enumerate() {
            if let Some(bytes) = r.unregister(now) {
                tracing::info!(aor = %r.aor(), "unregistering (Expires: 0)");
                out.push((i, bytes));
            }
        }
        for (i, bytes) in out {
            self.send_registration(i, bytes).await;
        }
    }

    pub(super) fn publish_registrations(&self) {
        if self.registrations.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut shared = self.stats.registrations.lock().unwrap_or_else(|p| p.into_inner());
        shared.resize_with(self.registrations.len(), || RegistrationStatus {
            aor: String::new(),
            state: RegState::Unregistered,
            since: now,
            last_error: None,
        });
        for (r, status) in self.registrations.iter().zip(shared.iter_mut()) {
            if status.aor == r.aor() && status.state == *r.state() {
                continue;
            }
            status.aor = r.aor().to_owned();
            status.state = r.state().clone();
            status.since = now;
            if let RegState::Failed { why } = r.state() {
                status.last_error = Some(why.clone());
            }
            let up = if status.state.is_registered() { 1.0 } else { 0.0 };
            metrics::gauge!("precall_registration_up", "aor" => status.aor.clone()).set(up);
        }
    }
}

/// One trunk registration as `/health` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistrationStatus {
    pub aor: String,
    pub state: RegState,
    /// When `state` was entered.
    pub since: Instant,
    /// Why the last failed attempt failed (kept after a later success).
    pub last_error: Option<String>,
}

impl RegistrationStatus {
    /// The stable JSON shape documented in docs/API.md: `state` is one word,
    /// `expires_in` the seconds left of a granted registration.
    pub fn to_json(&self, now: Instant) -> serde_json::Value {
        let expires_in = match self.state {
            RegState::Registered { expires } => {
                Some(u64::from(expires).saturating_sub(now.saturating_duration_since(self.since).as_secs()))
            }
            _ => None,
        };
        serde_json::json!({
            "aor": self.aor,
            "registered": self.state.is_registered(),
            "state": self.state.name(),
            "expires_in": expires_in,
            "last_error": self.last_error,
        })
    }
}
