#!/usr/bin/env bash
# The trunk/PBX suite (issue 8): real SIPp against the release binary.
#   1. registration: SIPp as the trunk's registrar challenges (401), verifies the
#      digest, sees the re-registration before expiry and the unREGISTER at shutdown;
#   2. a PBX call challenged with digest and retried with credentials;
#   3. session timers: SIPp refreshes past the interval; precall refreshes;
#   4. a call from a source outside sip.allow_cidrs gets 403;
#   5. 500 INVITEs in one second from 127.0.0.2 while a call from 127.0.0.1 runs:
#      the flood gets 503s and the call's RTP keeps its pacing.
# Fails loudly; never skips.
set -euo pipefail
cd "$(dirname "$0")"
command -v sipp >/dev/null || { echo "trunk.sh: sipp not found (apt-get install sip-tester)" >&2; exit 1; }
BIN=${SIPP_SUITE_BINARY:-../target/release/precall}
LOAD=${LOADGEN_BINARY:-../target/release/examples/loadgen}
[ -x "$BIN" ] || (cd .. && cargo build --release --locked)
[ -x "$LOAD" ] || (cd .. && cargo build --release --locked --example loadgen)
LOGS=logs/trunk
mkdir -p "$LOGS"
rm -rf "${LOGS:?}"/*
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; mv ./*_[0-9]*_*.log "$LOGS"/ 2>/dev/null || true; }
trap cleanup EXIT
FAILED=0

start_daemon() { # name listen extra-env...
  local name=$1 listen=$2; shift 2
  env PRECALL_SIP__LISTEN="$listen" PRECALL_HTTP__LISTEN= PRECALL_LOG__LEVEL=info NO_COLOR=1 PRECALL_DATA__DIR="$PWD/$LOGS/$name-data" "$@" "$BIN" serve >"$LOGS/$name.log" 2>&1 &
  PIDS+=($!)
  LAST_PID=$!
  for _ in $(seq 1 50); do grep -q "listening for SIP" "$LOGS/$name.log" && return 0; sleep 0.1; done
  echo "trunk.sh: $name did not start:" >&2; cat "$LOGS/$name.log" >&2; exit 1
}
run() { # label args... (sipp must succeed)
  local label=$1; shift
  echo "== $label"
  if timeout 60 sipp "$@" -nostdin -trace_err >"$LOGS/$label.out" 2>&1; then
    grep -E "Successful call|Failed call" "$LOGS/$label.out" | sed 's/^/   /'
  else
    echo "   FAILED (sipp exit $?)"; tail -30 "$LOGS/$label.out"; FAILED=1
  fi
}

# 1. Registration.
echo "== registration (SIPp registrar on 127.0.0.1:5190)"
timeout 60 sipp -sf uas_registrar.xml -m 1 -i 127.0.0.1 -p 5190 -nostdin -trace_err >"$LOGS/registrar.out" 2>&1 &
REG=$!
sleep 0.5
cat >"$LOGS/register.toml" <<TOML
[[sip.registrations]]
registrar = "sip:127.0.0.1:5190"
aor = "sip:precall@127.0.0.1"
username = "precall"
password_env = "TRUNK_TEST_PASSWORD"
expires = 3
TOML
TRUNK_TEST_PASSWORD=s3cret start_daemon registering 127.0.0.1:5093 PRECALL_CONFIG="$PWD/$LOGS/register.toml" PRECALL_RTP__PORT_MIN=34000 PRECALL_RTP__PORT_MAX=34098
sleep 4.5
kill -TERM "$LAST_PID"
if wait "$REG"; then echo "   registrar scenario passed (challenge, refresh, unREGISTER)"; else echo "   FAILED: see $LOGS/registrar.out"; tail -20 "$LOGS/registrar.out"; FAILED=1; fi
grep -E "registration" "$LOGS/registering.log" | sed 's/^/   /' | head -5

# 2. A PBX call challenged with digest.
cat >"$LOGS/auth.toml" <<TOML
[sip]
auth_realm = "precall-trunk-test"
[[sip.auth_users]]
username = "pbx"
password = "s3cret"
TOML
start_daemon auth 127.0.0.1:5094 PRECALL_CONFIG="$PWD/$LOGS/auth.toml" PRECALL_RTP__PORT_MIN=34100 PRECALL_RTP__PORT_MAX=34198
run auth-call -sf uac_auth_call.xml -m 1 -au pbx -ap s3cret -i 127.0.0.1 -mi 127.0.0.1 -p 16300 127.0.0.1:5094

# 3. Session timers, both roles; 5. the flood (same daemon, with metrics).
start_daemon timers 127.0.0.1:5095 PRECALL_SIP__SESSION_MIN_SE_SECONDS=2 PRECALL_HTTP__LISTEN=127.0.0.1:3017 \
  PRECALL_RTP__PORT_MIN=34200 PRECALL_RTP__PORT_MAX=35998 PRECALL_LIMITS__MAX_CALLS=2000
run session-timer-caller-refreshes -sf uac_session_timer.xml -m 1 -i 127.0.0.1 -mi 127.0.0.1 -p 16302 127.0.0.1:5095
run session-timer-precall-refreshes -sf uac_session_timer_uas.xml -m 1 -i 127.0.0.1 -mi 127.0.0.1 -p 16304 127.0.0.1:5095

# 4. A source outside the allowlist.
start_daemon allowlist 127.0.0.1:5096 PRECALL_SIP__ALLOW_CIDRS=127.0.0.2/32 PRECALL_RTP__PORT_MIN=36000 PRECALL_RTP__PORT_MAX=36098
run forbidden-source -sf uac_forbidden.xml -m 1 -i 127.0.0.1 -p 16306 127.0.0.1:5096

# 5. The flood.
echo "== flood: 500 INVITEs in 1 s from 127.0.0.2 while 127.0.0.1 holds a call"
"$LOAD" --target 127.0.0.1:5095 --calls 1 --rate 1 --hold 4 >"$LOGS/flood-victim.out" 2>&1 &
VICTIM=$!
sleep 0.5
timeout 60 sipp -sf uac_flood.xml -r 500 -m 500 -i 127.0.0.2 -p 16308 -nostdin -recv_timeout 5000 127.0.0.1:5095 >"$LOGS/flood.out" 2>&1 || true
if wait "$VICTIM"; then
  grep -E "rtp_gap|first_rtp" "$LOGS/flood-victim.out" | sed 's/^/   victim: /'
  P99=$(sed -nE 's/^rtp_gap_deviation_us p50=[0-9]+ p99=([0-9]+).*/\1/p' "$LOGS/flood-victim.out")
  [ "${P99:-999999}" -le 10000 ] || { echo "   FAILED: the legitimate call's RTP gap p99 was ${P99} us during the flood"; FAILED=1; }
else
  echo "   FAILED: the legitimate call failed during the flood"; cat "$LOGS/flood-victim.out"; FAILED=1
fi
METRICS=$(curl -fsS http://127.0.0.1:3017/metrics)
REFUSED=$(printf '%s\n' "$METRICS" | awk '/^precall_sip_refused_total\{status="503"\}/ {print $NF}')
DROPPED=$(printf '%s\n' "$METRICS" | awk '/^precall_sip_dropped_total/ {print $NF}')
ADMITTED=$(grep -c 'call started.*caller=+1555100' "$LOGS/timers.log" || true)
echo "   flood: ${REFUSED:-0} INVITEs answered 503, ${DROPPED:-0} requests dropped (INVITEs, ACKs and retransmissions over the request budget), $ADMITTED calls admitted"
[ "$ADMITTED" -le 100 ] || { echo "   FAILED: the flood was not rate-limited"; FAILED=1; }
[ "${REFUSED:-0}" -ge 100 ] 2>/dev/null || { echo "   FAILED: expected 503s for the flood"; FAILED=1; }

if grep -qiE "panicked" "$LOGS"/*.log; then echo "   panics in precall logs"; FAILED=1; fi
if [ "$FAILED" -ne 0 ]; then echo "trunk suite FAILED"; exit 1; fi
echo "trunk suite passed"
