#!/usr/bin/env bash
# A real third-party softphone calls precall headless: baresip (Debian's
# baresip-core), configured like linphone-config/linphonerc — direct IP call, no
# registrar, PCMU/PCMA (and Opus when precall is built with it). baresip plays a
# speech WAV into the call (aufile) and records what it hears; precall must log
# an answered call that ended by the caller's BYE with baresip's audio received,
# and the recording must carry precall's audio (the greeting).
# BARESIP_MODE=tls-sdes runs the same call encrypted: SIP over TLS (a
# certificate made here with openssl, from a CA of its own) and SDES-SRTP
# (baresip's srtp module, `mediaenc=srtp-mand`, so RTP/SAVP), against precall
# with `rtp.srtp = "required"`; precall must log the suite and no
# authentication failures, and baresip must still hear the greeting.
# BARESIP_MODE=dtls does the same with DTLS-SRTP (baresip's dtls_srtp module)
# over UDP signalling.
# Why not linphonec: Debian's linphone-cli needs a sound card or PulseAudio to
# start a call and has no file-based audio device, so it cannot run headless in
# CI; see linphone-config/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v baresip >/dev/null || { echo "baresip-test.sh: baresip not found (apt-get install baresip-core)" >&2; exit 1; }
MODE=${BARESIP_MODE:-plain}
BIN=${SIPP_SUITE_BINARY:-target/release/precall}
[ -x "$BIN" ] || cargo build --release --locked
WORK=$(mktemp -d)
LOGS=linphone-config/logs
mkdir -p "$LOGS"
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT

. linphone-config/baresip-lib.sh
TARGET="sip:100@127.0.0.1:5094"
ACCOUNT_EXTRA=""
TLS_CONFIG=""
if [ "$MODE" = tls-sdes ]; then
  make_tls_cert "$WORK"
  export PRECALL_SIP__TLS_LISTEN=127.0.0.1:5095 PRECALL_SIP__TLS_CERT_FILE="$WORK/tls.crt" \
    PRECALL_SIP__TLS_KEY_FILE="$WORK/tls.key" PRECALL_RTP__SRTP=required
  TARGET="sip:100@127.0.0.1:5095;transport=tls"
  ACCOUNT_EXTRA=";mediaenc=srtp-mand"
  TLS_CONFIG="sip_cafile $WORK/ca.crt
module srtp.so"
elif [ "$MODE" = dtls ]; then
  # DTLS-SRTP (baresip's dtls_srtp module: UDP/TLS/RTP/SAVP, a=fingerprint,
  # a=setup:actpass) over plain UDP signalling: no key crosses the SDP.
  export PRECALL_RTP__SRTP=required
  ACCOUNT_EXTRA=";mediaenc=dtls_srtp"
  TLS_CONFIG="module dtls_srtp.so"
fi
echo "baresip test: $MODE"

PLOG="$LOGS/precall-$MODE.log"
PRECALL_SIP__LISTEN=127.0.0.1:5094 PRECALL_HTTP__LISTEN= PRECALL_RTP__PORT_MIN=33000 PRECALL_RTP__PORT_MAX=33998 \
  PRECALL_DATA__DIR="$WORK/data" PRECALL_LOG__LEVEL=info NO_COLOR=1 "$BIN" serve >"$PLOG" 2>&1 &
PID=$!
for _ in $(seq 1 50); do grep -q "listening for SIP" "$PLOG" && break; sleep 0.1; done
grep -q "listening for SIP" "$PLOG" || { echo "precall did not start"; cat "$PLOG"; exit 1; }

BLOG="$LOGS/baresip-$MODE.log"
baresip_call "$WORK" "$TARGET" "$ACCOUNT_EXTRA" "$TLS_CONFIG" "$BLOG"
SECURE=1; [ "$MODE" = plain ] && SECURE=0
FAILED=0
check_call "$(grep 'call ended' "$PLOG" | tail -1 || true)" "$SECURE" || FAILED=1
check_heard "$WORK" || FAILED=1
if [ "$FAILED" -ne 0 ]; then echo "--- baresip log"; tail -40 "$BLOG"; echo "baresip test ($MODE) FAILED"; exit 1; fi
echo "baresip test ($MODE) passed"
