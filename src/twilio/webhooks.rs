//! `POST /webhooks/inbound`, `POST /webhooks/status-callback` and
//! `GET /media/greeting.wav`: the seed's Twilio flow. The inbound webhook
//! records the call, starts the clone at once and answers within milliseconds
//! with the greeting; the status callback polls (a second's pause per round)
//! until the voice is decided, then connects the Media Stream. Twilio's call
//! status callbacks (`CallStatus=completed`…) close the call record.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{OriginalUri, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::TwilioState;
use super::{TwilioCall, public_base, twiml, verify};
use crate::clone::{Outcome, Resolution};
use crate::store::records::new_id;
use crate::store::{CallRow, Record, now_ms};

fn xml(body: String) -> Response {
    ([("content-type", "text/xml; charset=utf-8")], body).into_response()
}

/// Parses the form and checks the signature; `Err` is the response to give.
#[allow(
    clippy::result_large_err,
    reason = "the error is the response itself, built once per refused request"
)]
fn authenticate(state: &TwilioState, headers: &HeaderMap, uri: &OriginalUri, body: &[u8]) -> Result<Vec<(String, String)>, Response> {
    let params: Vec<(String, String)> =
        serde_urlencoded::from_bytes(body).map_err(|e| (StatusCode::BAD_REQUEST, format!("bad form body: {e}\n")).into_response())?;
    let settings = &state.settings;
    let path = uri.0.path_and_query().map_or("/", |p| p.as_str());
    let url = format!("{}{path}", public_base(settings, headers));
    if !verify(settings, headers, &url, &params) {
        tracing::warn!(%url, "Twilio webhook with a missing or invalid X-Twilio-Signature refused");
        return Err((StatusCode::FORBIDDEN, "Forbidden: invalid X-Twilio-Signature\n").into_response());
    }
    Ok(params)
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

pub async fn inbound(State(state): State<TwilioState>, headers: HeaderMap, uri: OriginalUri, body: Bytes) -> Response {
    let params = match authenticate(&state, &headers, &uri, &body) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let ctx = &*state;
    let Some(call_sid) = param(&params, "CallSid").map(str::to_owned) else {
        return (StatusCode::BAD_REQUEST, "CallSid is required\n").into_response();
    };
    let base = public_base(&ctx.settings, &headers);
    let redirect = format!("{base}/webhooks/status-callback");
    // A retried webhook for a call we already have: answer the same way.
    let known = state
        .calls
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .any(|c| c.call_sid == call_sid);
    if !known {
        let live =
            state.calls.lock().unwrap_or_else(|p| p.into_inner()).len() + ctx.stats.live_calls.load(std::sync::atomic::Ordering::Relaxed);
        if live >= ctx.settings.raw.limits.max_calls {
            tracing::warn!(%call_sid, "Twilio call refused: at limits.max_calls");
            return xml(twiml::hangup(Some("Sorry, all our lines are busy. Please call again later.")));
        }
        let now = now_ms();
        let caller = param(&params, "From").map(crate::caller_id::for_record);
        let row = CallRow {
            call_id: new_id(),
            revision: 1,
            node_id: ctx.settings.node_id.clone(),
            protocol: "twilio".into(),
            external_id: call_sid.clone(),
            caller: caller.clone(),
            callee: param(&params, "To").map(str::to_owned),
            started_at: now,
            answered_at: Some(now),
            ..CallRow::default()
        };
        ctx.records.submit(Record::Call(Box::new(row.clone())));
        tracing::info!(call = %row.call_id, %call_sid, caller = ?caller, "Twilio call started");
        let started = Instant::now();
        let call_id = row.call_id.clone();
        state.calls.lock().unwrap_or_else(|p| p.into_inner()).insert(
            call_id.clone(),
            TwilioCall {
                call_sid,
                row,
                started,
                resolution: None,
            },
        );
        // The clone starts now, while Twilio plays the greeting.
        let state2 = state.clone();
        tokio::spawn(async move {
            let resolution = match &state2.clone {
                Some(service) => service.resolve(&call_id, caller.as_deref(), started).await,
                None => Resolution {
                    voice_id: state2.settings.raw.elevenlabs.default_voice_id.clone(),
                    outcome: Outcome::Unmapped,
                    waited: started.elapsed(),
                    caller_id: caller,
                },
            };
            crate::clone::record_metrics(&resolution);
            let mut calls = state2.calls.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(call) = calls.get_mut(&call_id) {
                state2.records.revise(&mut call.row, |row| {
                    row.clone_outcome = Some(resolution.outcome.as_str().to_owned());
                    row.voice_id = Some(resolution.voice_id.clone());
                });
                call.resolution = Some(resolution);
            }
        });
    }
    let message = &ctx.settings.raw.greeting.message;
    let play = format!("{base}/media/greeting.wav");
    xml(twiml::greeting(
        Some(&play),
        (!message.is_empty()).then_some(message.as_str()),
        &redirect,
    ))
}

const FINAL_STATUSES: &[&str] = &["completed", "busy", "failed", "no-answer", "canceled"];

pub async fn status_callback(State(state): State<TwilioState>, headers: HeaderMap, uri: OriginalUri, body: Bytes) -> Response {
    let params = match authenticate(&state, &headers, &uri, &body) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let ctx = &*state;
    let call_sid = param(&params, "CallSid").unwrap_or_default();
    let status = param(&params, "CallStatus").unwrap_or("in-progress");
    let mut calls = state.calls.lock().unwrap_or_else(|p| p.into_inner());
    let Some((call_id, call)) = calls.iter_mut().find(|(_, c)| c.call_sid == call_sid).map(|(k, v)| (k.clone(), v)) else {
        // Unknown or already finished (the stream closed the record).
        return xml(if FINAL_STATUSES.contains(&status) {
            twiml::empty()
        } else {
            twiml::hangup(None)
        });
    };
    if FINAL_STATUSES.contains(&status) {
        let mut row = call.row.clone();
        calls.remove(&call_id);
        drop(calls);
        row.ended_at = Some(now_ms());
        row.end_reason = Some(if status == "completed" {
            "caller_bye".into()
        } else {
            format!("twilio_{}", status.replace('-', "_"))
        });
        ctx.records.submit_final(row);
        metrics::counter!("precall_calls_total", "protocol" => "twilio", "reason" => "caller_bye").increment(1);
        tracing::info!(call = %call_id, %call_sid, %status, "Twilio call ended before its stream");
        return xml(twiml::empty());
    }
    let base = public_base(&ctx.settings, &headers);
    let redirect = format!("{base}/webhooks/status-callback");
    if call.resolution.is_none() {
        drop(calls);
        return xml(twiml::hold(None, &redirect));
    }
    drop(calls);
    let stream = format!("{}/twilio/media", super::ws_base(&base));
    xml(twiml::connect(&stream, &call_id))
}

pub async fn greeting_wav(State(state): State<TwilioState>) -> Response {
    (
        [("content-type", "audio/wav"), ("cache-control", "public, max-age=300")],
        state.greeting_wav.clone(),
    )
        .into_response()
}
