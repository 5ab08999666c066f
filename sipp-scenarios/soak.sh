#!/usr/bin/env bash
# Memory soak (issue 12, items 9 and 10): the release daemon in its offline
# default (the built-in simulator agent), under many short bridged calls and
# then many answered-but-never-acknowledged calls. Fails when memory grows per
# call: more than SOAK_MAX_KIB_PER_CALL (16) KiB of RSS per completed call after
# warm-up, or a half-open call costing more than SOAK_MAX_HALF_OPEN_KIB (300) KiB
# (about what a live bridged call holds).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${SIPP_SUITE_BINARY:-target/release/precall}
LOAD=${LOADGEN_BINARY:-target/release/examples/loadgen}
[ -x "$BIN" ] || cargo build --release --locked
[ -x "$LOAD" ] || cargo build --release --locked --example loadgen
OUT=sipp-scenarios/logs/soak
mkdir -p "$OUT"
rm -rf "${OUT:?}"/*
CALLS=${SOAK_CALLS:-1500}
MAX_PER_CALL=${SOAK_MAX_KIB_PER_CALL:-16}
MAX_HALF_OPEN=${SOAK_MAX_HALF_OPEN_KIB:-300}
env PRECALL_SIP__LISTEN=127.0.0.1:5098 PRECALL_HTTP__LISTEN=127.0.0.1:3098 PRECALL_SIP__INVITE_RATE=100000 PRECALL_SIP__INVITE_BURST=100000 \
  PRECALL_SIP__REQUEST_RATE=1000000 PRECALL_SIP__REQUEST_BURST=1000000 PRECALL_LOG__LEVEL=warn PRECALL_LIMITS__MAX_CALLS=3000 \
  PRECALL_RTP__PORT_MIN=40000 PRECALL_RTP__PORT_MAX=46000 PRECALL_DATA__DIR="$PWD/$OUT/data" "$BIN" serve >"$OUT/daemon.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; wait 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do curl -fsS http://127.0.0.1:3098/health >/dev/null 2>&1 && break; sleep 0.1; done
rss() { awk '/^VmRSS/ {print $2}' /proc/$PID/status; }
live() { curl -fsS http://127.0.0.1:3098/health | python3 -c 'import json,sys; print(json.load(sys.stdin)["live_calls"])'; }
settle() { for _ in $(seq 1 60); do [ "$(live)" = "0" ] && return 0; sleep 1; done; echo "soak.sh: calls did not end" >&2; exit 1; }

echo "== warm-up: 300 bridged calls (50/s, 2 s each)"
"$LOAD" --target 127.0.0.1:5098 --calls 300 --rate 50 --hold 2 --pid $PID >"$OUT/warmup.out"
settle
before=$(rss)
echo "   RSS after warm-up: $before KiB"
echo "== soak: $CALLS bridged calls (50/s, 2 s each)"
"$LOAD" --target 127.0.0.1:5098 --calls "$CALLS" --rate 50 --hold 2 --pid $PID >"$OUT/soak.out"
settle
after=$(rss)
per_call=$(( (after - before) / CALLS ))
echo "   RSS after the soak: $after KiB: $(( after - before )) KiB more, $per_call KiB per call (limit $MAX_PER_CALL)"
[ "$per_call" -le "$MAX_PER_CALL" ] || { echo "soak.sh: FAILED: memory grows with every call" >&2; exit 1; }

echo "== 300 answered calls that are never acknowledged"
base=$(rss)
python3 - <<'PY'
import socket, random, time
socks = []
for i in range(300):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    sdp = f"v=0\r\no=a 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port + 1} RTP/AVP 0\r\n"
    msg = (f"INVITE sip:precall@127.0.0.1:5098 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-{random.getrandbits(40):x}\r\n"
           f"Max-Forwards: 70\r\nFrom: <sip:+1555000{i:04d}@127.0.0.1>;tag={i}\r\nTo: <sip:precall@127.0.0.1>\r\n"
           f"Call-ID: halfopen-{i}-{random.getrandbits(32)}\r\nCSeq: 1 INVITE\r\nContact: <sip:x@127.0.0.1:{port}>\r\n"
           f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}")
    s.sendto(msg.encode(), ("127.0.0.1", 5098))
    socks.append(s)
    time.sleep(0.005)
time.sleep(8)  # the 200s retransmit; greetings play; nobody ACKs
PY
during=$(rss)
half=$(( (during - base) / 300 ))
echo "   RSS with 300 half-open calls: $during KiB: $half KiB per half-open call (limit $MAX_HALF_OPEN)"
[ "$half" -le "$MAX_HALF_OPEN" ] || { echo "soak.sh: FAILED: a half-open call costs more than a live one" >&2; exit 1; }
settle
echo "   RSS once they timed out (64*T1): $(rss) KiB"
echo "soak.sh: passed"
