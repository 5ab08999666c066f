#!/usr/bin/env bash
# The black-box abuse suite (issue 12): the release binary under the attacks
# that once stopped it (abuse.py), while a real SIPp call runs beside them.
# Afterwards the daemon must still be alive, the SIPp call must have succeeded,
# and no loop may have spun (precall_loop_spins_total absent or 0).
set -euo pipefail
cd "$(dirname "$0")"
command -v sipp >/dev/null || { echo "abuse.sh: sipp not found (apt-get install sip-tester)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "abuse.sh: python3 not found" >&2; exit 1; }
BIN=${SIPP_SUITE_BINARY:-../target/release/precall}
[ -x "$BIN" ] || (cd .. && cargo build --release --locked)
LOGS=logs/abuse
mkdir -p "$LOGS"
rm -rf "${LOGS:?}"/*
SIP=127.0.0.1:5097
HTTP=127.0.0.1:3097
env PRECALL_SIP__LISTEN=$SIP PRECALL_HTTP__LISTEN=$HTTP PRECALL_API__KEY=abuse-admin-key PRECALL_LOG__LEVEL=info NO_COLOR=1 \
  PRECALL_RTP__PORT_MIN=36000 PRECALL_RTP__PORT_MAX=36198 PRECALL_DATA__DIR="$PWD/$LOGS/data" "$BIN" serve >"$LOGS/daemon.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; wait 2>/dev/null || true; mv ./*_[0-9]*_*.log "$LOGS"/ 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do curl -fsS "http://$HTTP/health" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsS "http://$HTTP/health" >/dev/null || { echo "abuse.sh: daemon did not start" >&2; cat "$LOGS/daemon.log" >&2; exit 1; }

# A real call that lasts through the attacks.
timeout 90 sipp -sf uac_call_pcmu.xml -m 3 -r 1 -rp 8000 -i 127.0.0.1 -mi 127.0.0.1 -nostdin -trace_err "$SIP" >"$LOGS/sipp.out" 2>&1 &
SIPP=$!
python3 abuse.py "$SIP" "$HTTP"
wait "$SIPP" || { echo "abuse.sh: FAILED: the SIPp calls beside the attacks failed" >&2; tail -30 "$LOGS/sipp.out" >&2; exit 1; }
grep -E "Successful call|Failed call" "$LOGS/sipp.out" | sed 's/^/   /'
kill -0 "$PID" || { echo "abuse.sh: FAILED: the daemon died" >&2; tail -50 "$LOGS/daemon.log" >&2; exit 1; }
spins=$(curl -fsS "http://$HTTP/metrics" | awk '/^precall_loop_spins_total/ {s += $NF} END {print s + 0}')
[ "$spins" = "0" ] || { echo "abuse.sh: FAILED: $spins loop spins" >&2; exit 1; }
if grep -q "panicked" "$LOGS/daemon.log"; then echo "abuse.sh: FAILED: a panic in the daemon log" >&2; grep -m3 panicked "$LOGS/daemon.log" >&2; exit 1; fi
echo "abuse.sh: passed (daemon alive, SIPp calls succeeded, no spins, no panics)"
