//! The agent conversation as the call sees it: opening it in the decided
//! voice, its events (formats, transfers, failures), the REFER's progress and
//! the hand-off record.

use std::time::Instant;

use super::{CallMachine, MediaEdge, Output, SipOut};
use crate::call::agent::{AgentLink, LinkAction};
use crate::call::{CallInput, EndReason};
use crate::elevenlabs::agent::ClientMessage;
use crate::elevenlabs::ws::{AgentEvent, Conversation};
use crate::sip::endpoint::ReferProgress;
use crate::store::Record;
use crate::store::records::CloneEvent;
impl CallMachine {
    /// Opens the agent conversation in `voice_id` (the lifecycle decides when);
    /// the greeting keeps playing until the agent's first audio is queued.
    pub(super) fn connect_agent(&mut self, voice_id: String) {
        let (Some(plan), Some(n)) = (self.plan.as_ref(), self.negotiated) else {
            return;
        };
        if self.agent.is_some() {
            return;
        }
        self.agent = Some(Box::new(AgentLink::new(n.codec, plan.max_queue_seconds)));
        self.outputs.push_back(Output::ConnectAgent(Conversation {
            call_id: self.row.call_id.clone(),
            caller: self.row.caller.clone(),
            voice_id,
        }));
    }

    pub(super) fn agent_event(&mut self, ev: AgentEvent, now: Instant) {
        let Some(link) = self.agent.as_mut() else { return };
        if let AgentEvent::Closed { code, reason } = &ev {
            tracing::info!(call = %self.row.call_id, code, reason = %reason, "agent conversation closed");
        }
        match link.on_event(ev) {
            Ok(LinkAction::None) => {}
            Ok(LinkAction::Conversation(id)) => {
                let (input, output) = link.formats().unzip();
                tracing::info!(call = %self.row.call_id, conversation = %id, input = ?input, output = ?output, "agent conversation started");
                self.revise(|row| row.conversation_id = Some(id));
            }
            Ok(LinkAction::Transfer { tool_call_id, destination }) => {
                let refused = if self.edge != MediaEdge::Rtp {
                    Some("Transfers are not available on this line.")
                } else if self.transfer.is_some() {
                    Some("a transfer is already in progress")
                } else if destination.trim().is_empty() {
                    Some("no destination given")
                } else {
                    None
                };
                if let Some(why) = refused {
                    link.reply(tool_result(&tool_call_id, why, true));
                } else {
                    tracing::info!(call = %self.row.call_id, %destination, "agent transfers the call (REFER)");
                    self.transfer = Some(tool_call_id);
                    self.outputs.push_back(Output::Sip(SipOut::Refer(destination)));
                }
            }
            Err(e) => {
                tracing::warn!(call = %self.row.call_id, error = %e, "cannot bridge the agent's audio formats");
                let _ = link.on_event(AgentEvent::Closed {
                    code: 1003,
                    reason: e.to_string(),
                });
            }
        }
        let greeting_done = self.player.greeting_done();
        if let Some(link) = self.agent.as_mut()
            && link.take_turn_start(greeting_done)
            && let Some(s) = self.sender.as_mut().filter(|_| !self.stopped)
        {
            s.start_talkspurt(now);
        }
        self.drain_agent();
    }

    pub(super) fn drain_agent(&mut self) {
        if let Some(link) = self.agent.as_mut() {
            while let Some(cmd) = link.poll_command() {
                self.outputs.push_back(Output::Agent(cmd));
            }
        }
    }

    /// The transfer succeeded once the transferee's NOTIFY reports a 2xx: the
    /// caller has left us, so hang up (`transferred`). A failure goes back to the
    /// agent as the tool's error result and the conversation carries on.
    pub(super) fn refer_progress(&mut self, progress: ReferProgress, now: Instant) {
        let Some(tool_call_id) = self.transfer.clone() else { return };
        tracing::info!(call = %self.row.call_id, ?progress, "transfer progress");
        let failed = match progress {
            ReferProgress::Answered(s) if s >= 300 => Some(format!("the caller's phone refused the transfer ({s})")),
            ReferProgress::Answered(_) => None,
            ReferProgress::Notified { status, .. } if (200..300).contains(&status) => {
                if let Some(link) = self.agent.as_mut() {
                    link.reply(tool_result(&tool_call_id, "The call was transferred.", false));
                }
                self.transfer = None;
                self.drain_agent();
                self.call.handle(now, CallInput::End(EndReason::Transferred));
                return;
            }
            ReferProgress::Notified { status, .. } if status >= 300 => Some(format!("the transfer target did not answer ({status})")),
            ReferProgress::Notified { terminated: true, status } => Some(format!("the transfer ended without an answer ({status})")),
            ReferProgress::Notified { .. } => None,
        };
        if let Some(why) = failed {
            self.transfer = None;
            if let Some(link) = self.agent.as_mut() {
                link.reply(tool_result(&tool_call_id, &why, true));
            }
            self.drain_agent();
        }
    }

    /// The caller now hears the agent: `bridged_at` and a `clone_transfer_events` row.
    pub(super) fn record_hand_off(&mut self, now: Instant, gap_ms: u64) {
        let at = self.wall_ms(now);
        let waited_ms = self.row.answered_at.map_or(0, |a| (at - a).max(0));
        self.revise(|row| row.bridged_at = Some(at));
        self.outputs.push_back(Output::Record(Record::CloneEvent(CloneEvent::Transfer {
            event_id: self.seeds.hand_off_event.clone(),
            call_id: self.row.call_id.clone(),
            voice_id: self.row.voice_id.clone().unwrap_or_default(),
            waited_ms,
            gap_ms: gap_ms as i64,
            created_at: at,
        })));
        tracing::info!(call = %self.row.call_id, waited_ms, gap_ms, "caller handed from the greeting to the agent");
    }
}

fn tool_result(tool_call_id: &str, result: &str, is_error: bool) -> String {
    ClientMessage::ClientToolResult {
        tool_call_id: tool_call_id.to_owned(),
        result: result.to_owned(),
        is_error,
    }
    .to_json()
}
