#!/usr/bin/env bash
# Produces the figures in docs/PERFORMANCE.md on this machine:
#   - INVITE->200 latency, first RTP after the ACK, and RTP pacing at 1, 100 and
#     500 concurrent calls (examples/loadgen.rs, microsecond resolution), with the
#     daemon's CPU time read from /proc;
#   - SIPp at 100 calls/s as an independent cross-check of INVITE->200 (SIPp's
#     response-time resolution is 1 ms).
# Run it on an otherwise idle machine: cargo build is done first.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v sipp >/dev/null || { echo "load.sh: sipp not found (apt-get install sip-tester)" >&2; exit 1; }
cargo build --release --locked --bin precall --example loadgen
BIN=target/release/precall
LOAD=target/release/examples/loadgen
OUT=sipp-scenarios/logs
mkdir -p "$OUT"
ulimit -n 65536 2>/dev/null || true

PRECALL_SIP__LISTEN=127.0.0.1:5070 PRECALL_HTTP__LISTEN=127.0.0.1:3016 PRECALL_SIP__INVITE_RATE=100000 PRECALL_SIP__INVITE_BURST=100000 PRECALL_SIP__REQUEST_RATE=1000000 PRECALL_SIP__REQUEST_BURST=1000000 PRECALL_LOG__LEVEL=warn PRECALL_LIMITS__MAX_CALLS=2000 "$BIN" serve >"$OUT/load-daemon.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
sleep 0.5

echo "## machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "## 1 concurrent call (5 s)"
"$LOAD" --target 127.0.0.1:5070 --calls 1 --rate 1 --hold 5 --pid $PID
echo "## ~100 concurrent calls (100 calls/s, 1 s hold, 500 calls)"
"$LOAD" --target 127.0.0.1:5070 --calls 500 --rate 100 --hold 1 --pid $PID
echo "## ~500 concurrent calls (100 calls/s, 5 s hold, 1000 calls)"
"$LOAD" --target 127.0.0.1:5070 --calls 1000 --rate 100 --hold 5 --pid $PID
echo "## SIPp: 1000 calls at 100 calls/s, 4 s each (~400 concurrent)"
(cd sipp-scenarios && sipp -sf uac_call_pcmu.xml -r 100 -m 1000 -l 1000 -i 127.0.0.1 -mi 127.0.0.1 -p 16200 \
  -nostdin -trace_rtt -rtt_freq 100 127.0.0.1:5070 >"logs/load-sipp.out" 2>&1) || { echo "SIPp load failed"; tail -30 "$OUT/load-sipp.out"; exit 1; }
grep -E "Successful call|Failed call" "$OUT/load-sipp.out"
RTT=$(ls -t sipp-scenarios/uac_call_pcmu_*_rtt.csv | head -1)
tail -n +2 "$RTT" | cut -d';' -f2 | sort -n | awk '{v[NR]=$1} END {printf "SIPp INVITE->200 ms: p50=%s p99=%s max=%s (n=%d)\n", v[int(NR*0.5)], v[int(NR*0.99)], v[NR], NR}'
mv sipp-scenarios/uac_call_pcmu_*_rtt.csv "$OUT"/ 2>/dev/null || true

echo "## precall's own metrics after the run (http://127.0.0.1:3016/metrics)"
curl -fsS http://127.0.0.1:3016/metrics | grep -E '^precall_(calls_total|live_calls|rtp_packets_[a-z]+_total|clone_outcomes_total|agent_connect_seconds_count|clone_wait_seconds_count)' || echo "metrics unavailable"
echo "## /health while draining (SIGTERM): load balancers see 503 and move away"
curl -sS http://127.0.0.1:3016/health; echo
# A call in flight keeps the daemon draining long enough to look.
"$LOAD" --target 127.0.0.1:5070 --calls 1 --rate 1 --hold 3 >/dev/null 2>&1 &
sleep 0.5
kill -TERM $PID
sleep 0.3
curl -sS -o /dev/null -w "HTTP %{http_code} " http://127.0.0.1:3016/health; curl -sS http://127.0.0.1:3016/health; echo
wait $PID 2>/dev/null || true
