#!/usr/bin/env bash
# Issue 16's table in one command: latency both ways through the bridge, the
# daemon's CPU and memory per call (bridged and greeting-phase), and how many
# greeting-phase calls the box carries with under 0.1 % late packets. The
# daemon runs in its own process; the load generator and the ElevenLabs
# simulator in others, and only the daemon's CPU and RSS are reported.
# Run it on an otherwise idle machine; it takes about five minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin precall --example bridge_load --example loadgen
BIN=target/release/precall
BRIDGE=target/release/examples/bridge_load
LOAD=target/release/examples/loadgen
ulimit -n 65536 2>/dev/null || true
echo "## machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
for n in 100 500; do
  echo "## $n bridged calls (pcm_16000 agent): latency, CPU and RSS per call"
  "$BRIDGE" --bin "$BIN" --calls $n --hold 20 --port 5090
done
echo "## 500 greeting-phase calls (no agent): CPU and RSS per call"
"$BRIDGE" --bin "$BIN" --calls 500 --hold 20 --agent false --port 5090
for rate in 100 200; do
  echo "## greeting-phase capacity: $((rate * 10)) concurrent calls ($rate calls/s, 10 s hold)"
  PRECALL_SIP__LISTEN=127.0.0.1:5071 PRECALL_HTTP__LISTEN= PRECALL_SIP__TRUSTED_CIDRS=127.0.0.1/32 \
    PRECALL_LIMITS__MAX_CALLS=4000 PRECALL_LIMITS__MAX_SETUP_RATE=1000 PRECALL_LIMITS__MAX_SETUP_BURST=1000 \
    PRECALL_RTP__PORT_MIN=20000 PRECALL_RTP__PORT_MAX=29998 PRECALL_LOG__LEVEL=warn \
    ELEVENLABS_API_KEY=greeting-only PRECALL_ELEVENLABS__BASE_URL=http://127.0.0.1:9 \
    "$BIN" serve >/dev/null 2>&1 &
  PID=$!
  sleep 0.5
  "$LOAD" --target 127.0.0.1:5071 --calls $((rate * 15)) --rate $rate --hold 10 --pid $PID || true
  kill $PID; wait $PID 2>/dev/null || true
done
