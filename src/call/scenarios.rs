//! Whole calls on fake time ([`super::harness`]): the behaviours that used to
//! need real sockets and seconds of sleeping, each now a few milliseconds and
//! deterministic. The real-socket suites (`tests/bridge.rs`, `tests/calls.rs`,
//! SIPp, baresip, Kamailio) stay as the outer ring.

use std::time::Duration;

use super::harness::*;
use super::machine::{MediaEdge, SipOut};
use super::{CallInput, EndReason};
use crate::elevenlabs::ws::AgentEvent;
use crate::media::format::AudioFormat;
use crate::media::g711;
use crate::sim::voice_pitch_hz;
use crate::sip::endpoint::ReferProgress;
use crate::store::Record;
use crate::store::records::CloneEvent;

fn bridged(h: &mut Harness) {
    assert!(
        h.run_until(30 * SEC, |h| h.last_row().bridged_at.is_some()),
        "the call never reached the agent"
    );
}

fn quiet(pcm: &[i16]) -> bool {
    pcm.iter().all(|s| s.abs() < 300)
}

/// Greeting first, then the agent on the very next frame (gap 0), the caller's
/// audio resampled to the agent, every packet on the media clock's schedule
/// (sequence +1, timestamp +160, 20 ms apart) across the hand-off, then BYE.
#[test]
fn greeting_hands_off_to_the_agent_without_a_gap_and_the_caller_reaches_it() {
    let mut h = Harness::new(World::default());
    bridged(&mut h);
    h.run_for(500 * MS);
    let greeting = h.first_heard(GREETING_HZ).expect("the greeting played");
    let agent = h.first_heard(voice_pitch_hz(DEFAULT_VOICE)).expect("the agent spoke");
    assert!(greeting < h.t0 + 40 * MS, "the greeting starts with the answer");
    assert!(agent >= h.t0 + 2 * SEC, "the greeting (2 s) played through first");
    let row = h.last_row();
    assert_eq!(row.conversation_id.as_deref(), Some("conv-1"));
    let hand_off = h.records.iter().find_map(|r| match r {
        Record::CloneEvent(CloneEvent::Transfer { gap_ms, event_id, .. }) => Some((*gap_ms, event_id.clone())),
        _ => None,
    });
    assert_eq!(hand_off, Some((0, "event-1".to_owned())), "hand-off without a silent frame");

    h.talk.extend(crate::sim::speak("caller-voice", 8000, 0.6));
    let before = h.agent_received.len();
    h.run_for(SEC);
    let pcm16: Vec<i16> = h.agent_received[before..]
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    assert_eq!(pcm16.len(), 16000, "one second of 16 kHz audio upstream, silence included");
    let spoken = &pcm16[3200..8000];
    let hz = pitch(spoken) * 2.0; // `pitch` assumes 8 kHz
    assert!(
        (hz - voice_pitch_hz("caller-voice")).abs() < 15.0,
        "the caller's voice at {hz} Hz, not {}",
        voice_pitch_hz("caller-voice")
    );

    for w in h.heard.windows(2) {
        assert_eq!(w[1].seq, w[0].seq.wrapping_add(1), "sequence continuous");
        assert_eq!(w[1].ts, w[0].ts.wrapping_add(160), "timestamp continuous");
        assert_eq!(w[1].at - w[0].at, 20 * MS, "paced at 20 ms");
    }
    assert!(h.heard[0].marker && h.heard.iter().skip(1).all(|p| !p.marker));

    h.at(MS, Scheduled::Sip(CallInput::ByeReceived));
    h.run_for(SEC);
    assert_eq!(h.ended(), Some(&EndReason::CallerBye));
    let row = h.last_row();
    assert_eq!(row.end_reason.as_deref(), Some("caller_bye"));
    let ended = h.finished.as_ref().unwrap().0;
    assert_eq!(row.ended_at, Some(row.started_at + (ended - h.t0).as_millis() as i64));
    assert!(
        row.rtp_in_packets == Some(176)
            && row.rtp_out_packets == Some(177)
            && row.rtp_in_lost == Some(0)
            && row.rtp_in_mos_x100.unwrap() > 400,
        "{row:?}"
    );
}

#[test]
fn the_same_inputs_give_the_same_call() {
    let run = || {
        let mut h = Harness::new(World::default());
        h.run_for(4 * SEC);
        h.heard.iter().map(|p| (p.seq, p.ts, p.pcm.clone())).collect::<Vec<_>>()
    };
    assert_eq!(run(), run());
}

/// μ-law in, μ-law out: the caller's bytes reach the agent unchanged; an
/// interruption silences the agent's turn from the next frame on.
#[test]
fn ulaw_passthrough_is_byte_exact_and_barge_in_flushes_within_a_frame() {
    let mut h = Harness::new(World {
        agent: Some(AudioFormat::Ulaw8000),
        ..World::default()
    });
    bridged(&mut h);
    let spoken = crate::sim::speak("caller-voice", 8000, 0.4);
    h.talk.extend(spoken.iter().copied());
    h.run_for(SEC);
    let want: Vec<u8> = spoken.iter().map(|&s| g711::ulaw_encode(s)).collect();
    assert!(
        h.agent_received.windows(want.len()).any(|w| w == want.as_slice()),
        "the caller's μ-law reached the agent unchanged"
    );

    h.agent_says(Duration::ZERO, DEFAULT_VOICE, 10.0, 2);
    h.run_for(SEC);
    let interrupted = h.now;
    assert!(
        !quiet(&h.heard_between(interrupted - 200 * MS, interrupted)),
        "the agent was speaking"
    );
    h.at(Duration::ZERO, Scheduled::Agent(AgentEvent::Interruption { event_id: 2 }));
    h.run_for(SEC);
    let after = h.heard_between(interrupted + 20 * MS, h.now);
    assert_eq!(after.len(), 49 * 160);
    assert!(quiet(&after), "nothing of the interrupted turn plays after one frame");
}

/// The agent fails mid-call: the apology plays at once (never silence), then BYE.
#[test]
fn agent_failure_plays_the_apology_then_hangs_up() {
    let mut h = Harness::new(World::default());
    bridged(&mut h);
    h.run_for(500 * MS);
    let failed = h.now;
    let closed = AgentEvent::Closed {
        code: 1011,
        reason: "internal error".into(),
    };
    h.at(Duration::ZERO, Scheduled::Agent(closed));
    h.run_for(5 * SEC);
    assert_eq!(h.hangups(), vec![EndReason::AgentError(1011)]);
    let bye_at = h.sip.iter().find(|(_, c)| matches!(c, SipOut::Hangup(_))).unwrap().0;
    let apology = h.first_heard(APOLOGY_HZ).expect("the apology played");
    assert!(apology - failed <= 20 * MS, "the apology starts on the next frame");
    assert!(bye_at - failed >= 1500 * MS, "the whole apology (1.5 s) played before the BYE");
    let row = h.last_row();
    assert_eq!((row.end_reason.as_deref(), row.end_status), (Some("agent_error"), Some(1011)));
}

/// The agent cannot be reached at all: greeting, then the apology, then BYE.
#[test]
fn an_unreachable_agent_gets_the_apology_not_silence() {
    let mut h = Harness::new(World {
        agent_ready_after: 3600 * SEC,
        ..World::default()
    });
    assert!(h.run_until(SEC, |h| !h.conversations.is_empty()));
    h.run_for(SEC);
    let lost = AgentEvent::Closed {
        code: 1006,
        reason: "connection refused".into(),
    };
    h.at(Duration::ZERO, Scheduled::Agent(lost));
    h.run_for(10 * SEC);
    assert_eq!(h.ended(), Some(&EndReason::AgentError(1006)));
    assert!(h.first_heard(GREETING_HZ).is_some() && h.first_heard(APOLOGY_HZ).is_some());
    let last_frames = &h.heard[h.heard.len().saturating_sub(20)..];
    assert!(last_frames.len() == 20, "audio kept flowing until the BYE");
}

/// `end_call`: the agent's last words play out, then precall hangs up.
#[test]
fn end_call_plays_the_last_words_then_hangs_up() {
    let mut h = Harness::new(World::default());
    bridged(&mut h);
    h.run_for(2 * SEC);
    let said = h.now;
    h.agent_says(Duration::ZERO, DEFAULT_VOICE, 1.0, 5);
    h.at(MS, Scheduled::Agent(AgentEvent::EndCall));
    let bye = AgentEvent::Closed {
        code: 1000,
        reason: "end_call".into(),
    };
    h.at(2 * MS, Scheduled::Agent(bye));
    h.run_for(5 * SEC);
    assert_eq!(h.hangups(), vec![EndReason::AgentEnded]);
    let bye_at = h.sip.iter().find(|(_, c)| matches!(c, SipOut::Hangup(_))).unwrap().0;
    // The goodbye starts at once (a new talkspurt) and plays out (the
    // resampler's last partial frame aside) before the BYE.
    assert!(bye_at - said >= 960 * MS, "the goodbye (1 s) played first: {:?}", bye_at - said);
    assert_eq!(h.last_row().end_reason.as_deref(), Some("agent_end_call"));
}

fn tool_results(h: &Harness) -> Vec<serde_json::Value> {
    h.to_agent
        .iter()
        .filter_map(|(_, j)| serde_json::from_str::<serde_json::Value>(j).ok())
        .filter(|v| v["type"] == "client_tool_result")
        .collect()
}

/// The agent transfers the caller: REFER; a failed attempt goes back to the
/// agent as an error and the call goes on; a second request while one is in
/// progress is refused; a 2xx NOTIFY ends the call as `transferred`.
#[test]
fn transfer_refers_reports_failures_to_the_agent_and_ends_on_success() {
    let mut h = Harness::new(World::default());
    bridged(&mut h);
    let transfer = |id: &str| {
        Scheduled::Agent(AgentEvent::Transfer {
            tool_call_id: id.into(),
            destination: "sip:desk@example.com".into(),
        })
    };
    h.at(Duration::ZERO, transfer("t1"));
    h.at(MS, Scheduled::Refer(ReferProgress::Answered(202)));
    h.at(2 * MS, transfer("t2"));
    let busy = ReferProgress::Notified {
        status: 486,
        terminated: true,
    };
    h.at(50 * MS, Scheduled::Refer(busy));
    h.run_for(100 * MS);
    let results = tool_results(&h);
    assert_eq!(results.len(), 2, "{results:?}");
    assert_eq!(
        (results[0]["tool_call_id"].as_str(), results[0]["is_error"].as_bool()),
        (Some("t2"), Some(true))
    );
    assert!(results[0]["result"].as_str().unwrap().contains("already in progress"));
    assert_eq!(
        (results[1]["tool_call_id"].as_str(), results[1]["is_error"].as_bool()),
        (Some("t1"), Some(true))
    );
    assert!(h.finished.is_none(), "a failed transfer keeps the call");

    h.at(Duration::ZERO, transfer("t3"));
    let ok = ReferProgress::Notified {
        status: 200,
        terminated: true,
    };
    h.at(30 * MS, Scheduled::Refer(ok));
    h.run_for(SEC);
    let refers = h
        .sip
        .iter()
        .filter(|(_, c)| matches!(c, SipOut::Refer(t) if t == "sip:desk@example.com"))
        .count();
    assert_eq!(refers, 2);
    let last = tool_results(&h).pop().unwrap();
    assert_eq!(
        (last["tool_call_id"].as_str(), last["is_error"].as_bool()),
        (Some("t3"), Some(false))
    );
    assert_eq!(h.ended(), Some(&EndReason::Transferred));
}

/// Issue 13 #1 on fake time: a delayed offer reaches the agent whatever the
/// ACK's delay, and an answered but never acknowledged call never does.
#[test]
fn a_delayed_offer_bridges_for_any_ack_delay_and_an_unacked_call_never_does() {
    for delay_ms in [0u64, 50, 300, 1000, 20_000] {
        let mut h = Harness::new(World {
            invite_offer: None,
            ack_after: Duration::from_millis(delay_ms),
            ..World::default()
        });
        assert!(h.heard.is_empty());
        bridged(&mut h);
        assert_eq!(h.conversations.len(), 1, "ACK after {delay_ms} ms");
        h.talk.extend(crate::sim::speak("caller-voice", 8000, 0.5));
        let before = h.agent_received.len();
        h.run_for(SEC);
        assert!(
            h.agent_received.len() - before >= 30_000,
            "ACK after {delay_ms} ms: the caller reaches the agent"
        );
    }
    let mut h = Harness::new(World {
        ack_after: 3600 * SEC,
        ..World::default()
    });
    h.run_for(20 * SEC);
    assert!(h.conversations.is_empty(), "an unacknowledged call opened an agent conversation");
}

/// An offerless re-INVITE mid-call: we offer the session as it stands; its
/// ACK's answer keeps the bridge (no second conversation, audio both ways).
#[test]
fn an_offerless_reinvite_keeps_the_bridge() {
    let mut h = Harness::new(World::default());
    bridged(&mut h);
    h.at(Duration::ZERO, Scheduled::Reoffer(String::new()));
    h.run_for(10 * MS);
    let reoffer = h.sip.iter().find_map(|(_, c)| match c {
        SipOut::AnswerReoffer(Ok(body)) => Some(String::from_utf8_lossy(body).into_owned()),
        _ => None,
    });
    assert!(reoffer.expect("a re-offer").contains(" RTP/AVP 0 101\r\n"), "the codec in use");
    h.at(Duration::ZERO, Scheduled::Ack(offer("0 101", "sendrecv")));
    let before = (h.agent_received.len(), h.heard.len());
    h.agent_says(10 * MS, DEFAULT_VOICE, 1.0, 9);
    h.run_for(SEC);
    assert_eq!(h.conversations.len(), 1);
    assert!(h.agent_received.len() >= before.0 + 30_000 && h.heard.len() >= before.1 + 49);
    let since = h.now - 500 * MS;
    assert!(!quiet(&h.heard_between(since, h.now)), "the agent is still heard");
}

/// Hold (`sendonly` from the caller, or `inactive`) with no RTP at all lasts
/// past the RTP timeout and ends only at the hold timeout; the same for a
/// call that starts on hold.
#[test]
fn a_silent_hold_outlasts_the_rtp_timeout_until_the_hold_timeout() {
    for direction in ["sendonly", "inactive"] {
        let mut h = Harness::new(World {
            agent: None,
            ..World::default()
        });
        h.run_for(SEC);
        h.caller_sends = false;
        h.at(Duration::ZERO, Scheduled::Reoffer(offer("0 101", direction)));
        h.run_for(90 * SEC);
        assert!(h.finished.is_none(), "{direction}: the hold outlasted the 30 s RTP timeout");
        let held = h.heard.len();
        h.run_for(90 * SEC);
        assert_eq!(h.heard.len(), held, "{direction}: nothing is sent while held");
        h.run_for(200 * SEC);
        assert_eq!(h.hangups(), vec![EndReason::RtpTimeout], "{direction}");
    }
    let mut h = Harness::new(World {
        invite_offer: Some(offer("0 101", "inactive")),
        agent: None,
        ..World::default()
    });
    h.caller_sends = false;
    h.run_for(100 * SEC);
    assert!(h.finished.is_none() && h.heard.is_empty(), "a call that starts on hold waits");
}

/// A caller that goes silent (no hold) is hung up at the RTP timeout, to the frame.
#[test]
fn rtp_silence_ends_the_call_at_the_rtp_timeout() {
    let mut h = Harness::new(World {
        agent: None,
        ..World::default()
    });
    h.run_for(3 * SEC);
    h.caller_sends = false;
    let last = h.now;
    h.run_for(60 * SEC);
    let bye_at = h.sip.iter().find(|(_, c)| matches!(c, SipOut::Hangup(_))).unwrap().0;
    assert_eq!(h.hangups(), vec![EndReason::RtpTimeout]);
    assert!(
        bye_at - last >= 29 * SEC && bye_at - last <= 30 * SEC + 20 * MS,
        "{:?}",
        bye_at - last
    );
}

/// A mapped caller: the greeting plays while the voice clones; the agent
/// speaks in the clone, and a DTMF digit reaches it as context.
#[test]
fn the_agent_speaks_in_the_cloned_voice_and_hears_dtmf() {
    let mut h = Harness::new(World {
        clone: Some((3 * SEC, "sim-clone-7".into())),
        ..World::default()
    });
    bridged(&mut h);
    h.run_for(500 * MS);
    assert_eq!(h.clones_started, 1);
    assert_eq!(h.conversations[0].voice_id, "sim-clone-7");
    let row = h.last_row();
    assert_eq!(
        (row.clone_outcome.as_deref(), row.voice_id.as_deref()),
        (Some("cloned"), Some("sim-clone-7"))
    );
    let agent = h.first_heard(voice_pitch_hz("sim-clone-7")).expect("the clone speaks");
    assert!(agent >= h.t0 + 3 * SEC, "not before the clone was ready");
    assert!(h.first_heard(HOLD_HZ).is_some(), "hold audio filled the wait after the greeting");

    // RFC 4733: digit 5, three updates and an end packet, one event.
    for (i, flags) in [0x0a, 0x0a, 0x8a, 0x8a].into_iter().enumerate() {
        let mut packet = [0u8; 16];
        let header = crate::media::rtp::RtpHeader {
            marker: i == 0,
            payload_type: 101,
            sequence: 30_000 + i as u16,
            timestamp: 777_000,
            ssrc: 0xCA11_E500,
        };
        let _ = header.write(&mut packet);
        packet[12..].copy_from_slice(&[5, flags, 0, 160]);
        let from = CALLER_RTP;
        h.m.handle(h.now, super::machine::Input::Rtp { data: &packet, from });
    }
    h.run_for(40 * MS);
    let updates: Vec<_> = h.to_agent.iter().filter(|(_, j)| j.contains("contextual_update")).collect();
    assert_eq!(updates.len(), 1, "{updates:?}");
    assert!(updates[0].1.contains("pressed the key 5"));
}

/// `sip.answer_delay_ms`: the call rings, then answers; `answered_at` says when.
#[test]
fn an_answer_delay_rings_then_answers() {
    let mut h = Harness::new(World {
        answer_delay: 3 * SEC,
        agent: None,
        ..World::default()
    });
    h.run_for(2900 * MS);
    assert!(h.sip.is_empty() && h.heard.is_empty(), "ringing: no 200, no media");
    h.run_for(200 * MS);
    assert!(matches!(h.sip.first(), Some((_, SipOut::Accept(_)))));
    h.run_for(SEC);
    let row = h.last_row();
    assert_eq!(row.answered_at, Some(row.started_at + 3000));
    assert!(h.first_heard(GREETING_HZ).is_some());
}

/// `limits.max_call_seconds` ends even a lively call.
#[test]
fn max_duration_ends_a_lively_call() {
    let mut world = World::default();
    world.limits.max_duration = 60 * SEC;
    let mut h = Harness::new(world);
    h.run_for(120 * SEC);
    assert_eq!(h.hangups(), vec![EndReason::MaxDuration]);
    assert_eq!(h.last_row().end_reason.as_deref(), Some("max_duration"));
}

/// A Twilio stream drives the same machine through the frames edge: paced
/// μ-law frames out (no RTP header), the caller's frames to the agent, no
/// REFER (the agent is told transfers are not available), no RTP statistics
/// in the record, and the agent's `end_call` hangs up after its last words.
#[test]
fn a_frames_edge_runs_the_same_call_without_rtp() {
    let mut h = Harness::new(World {
        edge: MediaEdge::Frames,
        greeting_seconds: 0.0,
        agent: Some(AudioFormat::Ulaw8000),
        ..World::default()
    });
    bridged(&mut h);
    h.run_for(500 * MS);
    assert!(h.heard.iter().all(|f| f.pcm.len() == 160), "20 ms μ-law frames, no header");
    let agent = h.first_heard(voice_pitch_hz(DEFAULT_VOICE)).expect("the agent is heard");
    assert!(agent - h.t0 < 300 * MS, "no greeting on this edge: the agent speaks first");
    let spoken = crate::sim::speak("caller-voice", 8000, 0.4);
    h.talk.extend(spoken.iter().copied());
    h.run_for(SEC);
    let want: Vec<u8> = spoken.iter().map(|&s| g711::ulaw_encode(s)).collect();
    assert!(h.agent_received.windows(want.len()).any(|w| w == want.as_slice()));
    // Two frames lost on the way: Twilio's frame numbers show the gap.
    h.skip_rtp(2);
    h.run_for(100 * MS);
    let transfer = AgentEvent::Transfer {
        tool_call_id: "t1".into(),
        destination: "sip:desk@example.com".into(),
    };
    h.at(Duration::ZERO, Scheduled::Agent(transfer));
    h.run_for(10 * MS);
    let results = tool_results(&h);
    assert_eq!(results[0]["result"], "Transfers are not available on this line.");
    assert!(!h.sip.iter().any(|(_, c)| matches!(c, SipOut::Refer(_))));
    h.agent_says(Duration::ZERO, DEFAULT_VOICE, 0.5, 3);
    h.at(MS, Scheduled::Agent(AgentEvent::EndCall));
    let bye = AgentEvent::Closed {
        code: 1000,
        reason: "end_call".into(),
    };
    h.at(2 * MS, Scheduled::Agent(bye));
    h.run_for(3 * SEC);
    assert_eq!(h.ended(), Some(&EndReason::AgentEnded));
    let row = h.last_row();
    assert_eq!(row.end_reason.as_deref(), Some("agent_end_call"));
    assert!(row.bridged_at.is_some());
    // Issue 17 #5: frames in and out, and losses, counted like RTP packets.
    let (_, f) = h.finished.as_ref().unwrap();
    assert_eq!(row.rtp_in_packets, Some(f.stats.packets as i64));
    assert!(row.rtp_in_packets.unwrap() > 100, "{row:?}");
    assert_eq!(row.rtp_in_lost, Some(2), "{row:?}");
    assert!(row.rtp_out_packets.unwrap() > 100 && row.rtp_in_mos_x100.is_some(), "{row:?}");
    assert_eq!(row.rtp_in_max_jitter_us, None, "no send times on a stream");
}

/// Issue 16: no delay added to the caller's audio. On fake time every caller
/// packet reaches the agent at the instant it arrives; a packet behind a gap
/// waits at most one frame time, and order is kept.
#[test]
fn caller_audio_reaches_the_agent_on_arrival() {
    let mut h = Harness::new(World {
        agent: Some(AudioFormat::Ulaw8000),
        ..World::default()
    });
    bridged(&mut h);
    h.run_for(100 * MS);
    h.caller_sends = false;
    let sent_at = h.now;
    let before = h.agent_received.len();
    h.talk.extend(std::iter::repeat_n(1000i16, 160));
    h.send_rtp();
    h.drain_now();
    assert_eq!(
        h.agent_received.len(),
        before + 160,
        "forwarded at {:?}, not on a tick",
        h.now - sent_at
    );
    // Two packets swapped by the network: the later one waits for the first.
    h.skip_rtp(1);
    h.talk.extend(std::iter::repeat_n(2000i16, 160));
    h.send_rtp();
    h.drain_now();
    assert_eq!(h.agent_received.len(), before + 160, "held behind the gap");
    h.rewind_rtp(2);
    h.talk.extend(std::iter::repeat_n(3000i16, 160));
    h.send_rtp();
    h.drain_now();
    assert_eq!(h.agent_received.len(), before + 480, "both out, in order, when the gap closed");
    let tail = &h.agent_received[before + 160..];
    assert_eq!(g711::ulaw_to_linear(tail[0]), g711::ulaw_to_linear(g711::ulaw_encode(3000)));
    assert_eq!(g711::ulaw_to_linear(tail[160]), g711::ulaw_to_linear(g711::ulaw_encode(2000)));
}

/// Issue 16: an agent turn starts at once. Audio that arrives between frames
/// while the agent is quiet goes out at that instant as a new talkspurt
/// (marker, sequence and timestamp continuing), then every 20 ms from there.
#[test]
fn an_agent_turn_starts_the_instant_its_audio_arrives() {
    let mut h = Harness::new(World {
        agent: Some(AudioFormat::Ulaw8000),
        ..World::default()
    });
    bridged(&mut h);
    h.run_for(2 * SEC); // the first message is over; the agent is quiet
    let quiet = h.heard.len();
    h.run_for(7 * MS); // off the 20 ms grid
    let arrives = h.now;
    h.agent_says(Duration::ZERO, DEFAULT_VOICE, 0.5, 4);
    h.run_for(SEC);
    let first = h.heard[quiet..].iter().position(|p| p.at >= arrives).map(|i| quiet + i).unwrap();
    let (prev, p) = (&h.heard[first - 1], &h.heard[first]);
    assert_eq!(p.at, arrives, "the first frame leaves when the audio arrives");
    assert!(p.marker, "a new talkspurt");
    assert_eq!((p.seq, p.ts), (prev.seq.wrapping_add(1), prev.ts.wrapping_add(160)));
    assert!(!quiet_frame(&p.pcm), "it is the agent's audio");
    for (i, w) in h.heard[first..first + 20].windows(2).enumerate() {
        assert_eq!(w[1].at - w[0].at, 20 * MS, "paced from the turn's start (frame {i})");
        assert!(!w[1].marker);
    }
}

fn quiet_frame(pcm: &[i16]) -> bool {
    pcm.iter().all(|s| s.abs() < 300)
}

/// A DTLS-SRTP offer: the call answers at once but sends nothing, in clear or
/// otherwise, until the handshake's keys arrive; then every packet carries an
/// SRTP tag. A failed handshake ends the call instead of falling back to clear.
#[test]
fn dtls_srtp_holds_media_until_the_keys_and_a_failed_handshake_ends_the_call() {
    use crate::media::srtp::{KeyMaterial, Policy, SrtpParams, Suite};
    let dtls_offer = super::harness::offer("0 101", "sendrecv").replace("RTP/AVP", "UDP/TLS/RTP/SAVP")
        + &format!(
            "a=fingerprint:sha-256 {}\r\na=setup:actpass\r\n",
            crate::media::dtls::format_fingerprint(&[0x5A; 32])
        );
    let security = crate::sip::sdp::MediaSecurity {
        policy: Policy::Required,
        insecure_signalling: Some("UDP"),
        key: [1; 30],
        dtls_fingerprint: Some([0xC3; 32]),
    };
    let keys = SrtpParams {
        tag: 0,
        suite: Suite::AesCm128HmacSha1_80,
        local: KeyMaterial::from_random(Suite::AesCm128HmacSha1_80, &[2; 30]),
        remote: KeyMaterial::from_random(Suite::AesCm128HmacSha1_80, &[3; 30]),
    };
    let mut h = Harness::new(World {
        invite_offer: Some(dtls_offer.clone()),
        security,
        dtls: (300 * MS, Ok(keys)),
        ..World::default()
    });
    h.run_for(SEC);
    let started = h.dtls_started.expect("the machine asked for a handshake");
    assert!(started <= h.t0 + 20 * MS, "at the answer");
    assert!(h.heard.first().is_some_and(|p| p.at >= h.t0 + 300 * MS), "nothing before the keys");
    assert!(h.heard.len() >= 30, "media flows once keyed: {}", h.heard.len());
    assert!(
        h.heard_sizes.iter().all(|&n| n == 12 + 160 + 10),
        "every packet is SRTP: {:?}",
        &h.heard_sizes[..3]
    );

    let mut failed = Harness::new(World {
        invite_offer: Some(dtls_offer),
        security,
        dtls: (200 * MS, Err("handshake timed out".into())),
        ..World::default()
    });
    failed.run_for(SEC);
    assert!(failed.heard.is_empty(), "no clear media ever");
    assert!(
        matches!(failed.ended(), Some(EndReason::Error(e)) if e.contains("DTLS")),
        "{:?}",
        failed.ended()
    );
}
