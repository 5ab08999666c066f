#!/usr/bin/env bash
# The SIPp suite: real SIPp calls against a release build of precall on loopback.
#   1. one PCMU call over UDP, SIPp streaming audio, 4 s, SIPp hangs up
#   2. the same over TCP
#   3. CANCEL before answer (against a daemon that rings for 3 s)
#   4. 50 calls at 10 calls/s, zero failures allowed
#   5. OPTIONS probes
#   6. a DTMF call, and a call the agent ends (precall sends the BYE)
#   7. a delayed offer whose ACK comes 300 ms after the 200: it must reach the
#      agent (the agent's audio sent to the caller, the caller's to the agent)
#   8. a silent sendonly hold of 90 s (runs in the background meanwhile)
#   9. an SRTP-only offer: 488 with a Warning header
#  10. trunk rate: 100 calls/s for 10 s from one allowlisted source, 0 refused
# Then it checks precall's own log: every call ended by the caller's BYE, and
# precall received SIPp's audio on each. Fails loudly; never skips.
set -euo pipefail
cd "$(dirname "$0")"

command -v sipp >/dev/null || { echo "run.sh: sipp not found (apt-get install sip-tester)" >&2; exit 1; }
BIN=${SIPP_SUITE_BINARY:-../target/release/precall}
if [ ! -x "$BIN" ]; then (cd .. && cargo build --release --locked); fi

LOGS=logs
mkdir -p "$LOGS"
rm -rf "$LOGS"/* ./*_[0-9]*_*.log ./*_[0-9]*_*.csv

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  mv ./*_[0-9]*_*.log ./*_[0-9]*_*.csv "$LOGS"/ 2>/dev/null || true
}
trap cleanup EXIT

start_daemon() { # name listen extra-env...
  local name=$1 listen=$2; shift 2
  env PRECALL_SIP__LISTEN="$listen" PRECALL_LOG__LEVEL=info NO_COLOR=1 "$@" "$BIN" serve >"$LOGS/$name.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 50); do
    grep -q "listening for SIP" "$LOGS/$name.log" && return 0
    sleep 0.1
  done
  echo "run.sh: $name did not start:" >&2; cat "$LOGS/$name.log" >&2; exit 1
}

# The main daemon clones voices through the built-in ElevenLabs simulator (no API
# key). SIPp's first caller (+15550001) has a voice sample; the others have none.
MAIN_DATA="$PWD/$LOGS/main-data"
rm -rf "$MAIN_DATA"
PRECALL_DATA__DIR="$MAIN_DATA" "$BIN" callers add +15550001 audio/caller-pcmu.wav --name "SIPp caller one" >"$LOGS/callers.out" 2>&1 \
  || { echo "run.sh: precall callers add failed:"; cat "$LOGS/callers.out"; exit 1; }
start_daemon main 127.0.0.1:5070 PRECALL_HTTP__LISTEN=127.0.0.1:3016 PRECALL_RTP__PORT_MIN=30000 PRECALL_RTP__PORT_MAX=30998 PRECALL_DATA__DIR="$MAIN_DATA"
# A trunk-facing daemon: the trunk (127.0.0.1) is in sip.allow_cidrs, so the
# per-source INVITE limit (20/s by default) does not apply to it.
start_daemon trunk 127.0.0.1:5074 PRECALL_HTTP__LISTEN=127.0.0.1:0 PRECALL_RTP__PORT_MIN=32000 PRECALL_RTP__PORT_MAX=33998 PRECALL_SIP__ALLOW_CIDRS=127.0.0.1/32 PRECALL_DATA__DIR="$PWD/$LOGS/trunk-data"
start_daemon ringing 127.0.0.1:5072 PRECALL_HTTP__LISTEN=127.0.0.1:0 PRECALL_RTP__PORT_MIN=31000 PRECALL_RTP__PORT_MAX=31998 PRECALL_SIP__ANSWER_DELAY_MS=3000

FAILED=0
scenario() { # label args...
  local label=$1; shift
  echo "== $label"
  if timeout 120 sipp "$@" -i 127.0.0.1 -mi 127.0.0.1 -nostdin -trace_err -trace_stat -trace_rtt -rtt_freq 1 >"$LOGS/$label.out" 2>&1; then
    grep -E "Successful call|Failed call" "$LOGS/$label.out" | sed 's/^/   /'
  else
    echo "   FAILED (sipp exit $?); see $LOGS/$label.out"; tail -30 "$LOGS/$label.out"; FAILED=1
  fi
}

# The 90 s hold runs beside the rest of the suite.
echo "== silent-hold-90s (in the background)"
timeout 150 sipp -sf uac_hold_silent.xml -m 1 -p 16120 -i 127.0.0.1 -mi 127.0.0.1 -nostdin -trace_err 127.0.0.1:5070 >"$LOGS/silent-hold-90s.out" 2>&1 &
HOLD_PID=$!

scenario call-udp -sf uac_call_pcmu.xml -m 1 -p 16100 127.0.0.1:5070
scenario call-tcp -sf uac_call_pcmu.xml -t t1 -m 1 -p 16102 127.0.0.1:5070
scenario cancel -sf uac_cancel.xml -m 1 -p 16104 127.0.0.1:5072
scenario load-50-at-10cps -sf uac_call_pcmu.xml -r 10 -m 50 -l 100 -p 16106 127.0.0.1:5070
scenario options -sf options_ping.xml -r 20 -m 20 -p 16108 127.0.0.1:5070
scenario dtmf -sf uac_dtmf.xml -m 1 -p 16110 127.0.0.1:5070
scenario agent-end-call -sf uac_agent_end_call.xml -m 1 -p 16112 127.0.0.1:5070
scenario delayed-offer-ack-300ms -sf uac_delayed_offer.xml -m 1 -p 16114 127.0.0.1:5070
scenario srtp-only-488 -sf uac_488.xml -m 1 -p 16116 127.0.0.1:5070
scenario trunk-100cps-10s -sf uac_trunk_rate.xml -r 100 -m 1000 -l 400 -p 16118 127.0.0.1:5074
# SIPp's final statistics: cumulative successful and failed calls.
OKS=$(grep -E "Successful call" "$LOGS/trunk-100cps-10s.out" | tail -1 | awk -F'|' '{gsub(/ /, "", $3); print $3}')
BAD=$(grep -E "Failed call" "$LOGS/trunk-100cps-10s.out" | tail -1 | awk -F'|' '{gsub(/ /, "", $3); print $3}')
echo "   trunk rate: ${OKS:-?} answered, ${BAD:-?} failed of 1000"
[ "${OKS:-0}" -eq 1000 ] && [ "${BAD:-1}" -eq 0 ] || { echo "   a trunk's calls were refused"; FAILED=1; }
echo "== waiting for the 90 s hold"
if wait "$HOLD_PID"; then
  grep -E "Successful call|Failed call" "$LOGS/silent-hold-90s.out" | sed 's/^/   /'
else
  echo "   FAILED: the silent hold was cut off; see $LOGS/silent-hold-90s.out"; tail -30 "$LOGS/silent-hold-90s.out"; FAILED=1
fi

# precall's view: 53 calls ended by the caller, each talking one (SIPp's audio
# received), and the DTMF caller's key press decoded.
ENDED=$(grep -c 'call ended.*reason=caller_bye' "$LOGS/main.log" || true)
LOW=$(grep 'call ended' "$LOGS/main.log" | grep -vE 'caller=\+15550077|caller=\+15550099|caller=\+15550066|caller=\+15550055|reason=rejected' | sed -E 's/.*rtp_in_packets=([0-9]+).*/\1/' | awk '$1 < 150' | wc -l)
echo "== precall log: $ENDED calls ended by caller BYE; $LOW talking calls with fewer than 150 RTP packets from SIPp"
[ "$ENDED" -eq 55 ] || { echo "   expected 55"; FAILED=1; }
DELAYED=$(grep 'call ended' "$LOGS/main.log" | grep 'caller=+15550055' || true)
OUT_FRAMES=$(printf '%s' "$DELAYED" | sed -nE 's/.*agent_frames_out=([0-9]+).*/\1/p')
IN_FRAMES=$(printf '%s' "$DELAYED" | sed -nE 's/.*agent_frames_in=([0-9]+).*/\1/p')
echo "   delayed offer (ACK 300 ms late): agent frames to the caller ${OUT_FRAMES:-none}, caller frames to the agent ${IN_FRAMES:-none}"
[ "${OUT_FRAMES:-0}" -gt 0 ] && [ "${IN_FRAMES:-0}" -gt 0 ] || { echo "   the delayed-offer call never reached the agent"; FAILED=1; }
if grep 'call ended' "$LOGS/main.log" | grep 'caller=+15550066' | grep -q 'reason=caller_bye'; then echo "   silent hold: kept for 90 s, ended by the caller"; else echo "   silent hold: not ended by the caller"; FAILED=1; fi
if grep 'call ended' "$LOGS/main.log" | grep 'caller=+15550077' | grep -q 'dtmf=1'; then echo "   DTMF call: digit 1 received"; else echo "   DTMF digit not received"; FAILED=1; fi
if grep 'call ended' "$LOGS/main.log" | grep 'caller=+15550099' | grep -q 'reason=agent_end_call'; then echo "   agent end_call: precall hung up after the goodbye"; else echo "   the agent's end_call did not end the call"; FAILED=1; fi
BRIDGED=$(grep -c 'caller handed from the greeting to the agent' "$LOGS/main.log" || true)
echo "   $BRIDGED calls handed from the greeting to the agent"
[ "$BRIDGED" -ge 1 ] || { echo "   the end_call caller should have heard the agent"; FAILED=1; }
[ "$LOW" -eq 0 ] || { echo "   every call should carry ~200 packets of SIPp audio"; FAILED=1; }
if grep -q "call ended.*reason=cancelled" "$LOGS/ringing.log"; then echo "   cancelled call recorded as cancelled"; else echo "   cancelled call not recorded"; FAILED=1; fi
# The HTTP side of the main daemon: healthy, and its metrics count the calls.
HEALTH=$(curl -fsS http://127.0.0.1:3016/health || true)
echo "== /health: $HEALTH"
case $HEALTH in *'"status":"ok"'*) ;; *) echo "   /health is not ok"; FAILED=1 ;; esac
METRICS=$(curl -fsS http://127.0.0.1:3016/metrics || true)
CALLS_METRIC=$(printf '%s\n' "$METRICS" | awk '/^precall_calls_total\{/ {s += $NF} END {print s + 0}')
echo "== /metrics: precall_calls_total = $CALLS_METRIC"
[ "$CALLS_METRIC" -ge 56 ] || { echo "   expected at least 56 calls counted"; FAILED=1; }
MOS_COUNT=$(printf '%s\n' "$METRICS" | awk '/^precall_call_mos_count/ {print $NF}')
echo "   precall_call_mos_count = ${MOS_COUNT:-missing}"
[ "${MOS_COUNT:-0}" -ge 50 ] || { echo "   expected a MOS for every call that sent audio"; FAILED=1; }
# call_log: the mapped caller's first call cloned, its later calls hit the cache,
# every other caller is unmapped, and nothing is missing.
kill "${PIDS[0]}" && wait "${PIDS[0]}" 2>/dev/null || true
OUTCOMES=$(python3 - "$MAIN_DATA/precall.db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
rows = db.execute("select caller, clone_outcome from call_log where end_reason != 'rejected'").fetchall()
rejected = db.execute("select caller, end_status from call_log where end_reason = 'rejected'").fetchall()
mos = db.execute("select min(rtp_in_mos_x100), max(rtp_in_mos_x100) from call_log where caller = '+15550001'").fetchone()
mapped = [o for c, o in rows if c == "+15550001"]
others = [o for c, o in rows if c != "+15550001"]
ok = (mapped[:1] == ["cloned"] and set(mapped[1:]) <= {"cache_hit"} and len(mapped) >= 2 and set(others) == {"unmapped"}
      and len(rows) == 56 and rejected == [("+15550088", 488)] and mos[0] is not None and mos[0] >= 400)
print(f"{'ok' if ok else 'BAD'}: {len(rows)} calls; +15550001: {mapped}; others: {sorted(set(others))}; rejected: {rejected}; loopback MOS x100 {mos}")
print(f"{'ok' if ok else 'BAD'}: {len(rows)} calls; +15550001: {mapped}; others: {sorted(set(others))}")
PY
)
echo "== call_log clone outcomes: $OUTCOMES"
case $OUTCOMES in ok*) ;; *) FAILED=1 ;; esac
if grep -qiE "panicked|ERROR" "$LOGS"/*.log; then echo "   errors in precall logs"; grep -iE "panicked|ERROR" "$LOGS"/*.log | head; FAILED=1; fi

if [ "$FAILED" -ne 0 ]; then echo "SIPp suite FAILED"; exit 1; fi
echo "SIPp suite passed"
