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

TARGET="sip:100@127.0.0.1:5094"
ACCOUNT_EXTRA=""
TLS_CONFIG=""
if [ "$MODE" = tls-sdes ]; then
  command -v openssl >/dev/null || { echo "baresip-test.sh: openssl not found" >&2; exit 1; }
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=precall test CA" \
    -keyout "$WORK/ca.key" -out "$WORK/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$WORK/tls.key" -out "$WORK/tls.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$WORK/san.ext"
  openssl x509 -req -in "$WORK/tls.csr" -CA "$WORK/ca.crt" -CAkey "$WORK/ca.key" -CAcreateserial -days 2 \
    -extfile "$WORK/san.ext" -out "$WORK/tls.crt" 2>/dev/null
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

PRECALL_SIP__LISTEN=127.0.0.1:5094 PRECALL_HTTP__LISTEN= PRECALL_RTP__PORT_MIN=33000 PRECALL_RTP__PORT_MAX=33998 \
  PRECALL_DATA__DIR="$WORK/data" PRECALL_LOG__LEVEL=info NO_COLOR=1 "$BIN" serve >"$LOGS/precall-$MODE.log" 2>&1 &
PID=$!
PLOG="$LOGS/precall-$MODE.log"
for _ in $(seq 1 50); do grep -q "listening for SIP" "$PLOG" && break; sleep 0.1; done
grep -q "listening for SIP" "$PLOG" || { echo "precall did not start"; cat "$PLOG"; exit 1; }

# baresip: files instead of a sound card, no registration, G.711 first.
sox sipp-scenarios/audio/caller-pcmu.wav -r 8000 -c 1 -b 16 -e signed-integer "$WORK/speak.wav" 2>/dev/null \
  || cp sipp-scenarios/audio/caller-pcmu.wav "$WORK/speak.wav"
mkdir -p "$WORK/baresip" "$WORK/rec"
cat >"$WORK/baresip/config" <<CFG
poll_method epoll
sip_listen 127.0.0.1:5096
audio_player aufile,$WORK/heard.wav
audio_source aufile,$WORK/speak.wav
audio_alert aufile,$WORK/alert.wav
audio_srate 8000
audio_channels 1
module_path /usr/lib/baresip/modules
module g711.so
module aufile.so
module sndfile.so
snd_path $WORK/rec
module_app account.so
module_app menu.so
$TLS_CONFIG
CFG
echo "<sip:baresip@127.0.0.1:5096>;regint=0;audio_codecs=PCMU,PCMA$ACCOUNT_EXTRA" >"$WORK/baresip/accounts"
BLOG="$LOGS/baresip-$MODE.log"
timeout 30 baresip -f "$WORK/baresip" -e "/dial $TARGET" -t 8 >"$BLOG" 2>&1 || true
sleep 1

FAILED=0
LINE=$(grep 'call ended' "$PLOG" | tail -1 || true)
echo "precall: $LINE"
case $LINE in *reason=caller_bye*) ;; *) echo "FAIL: no call ended by baresip's BYE"; FAILED=1 ;; esac
IN=$(printf '%s' "$LINE" | sed -E 's/.*rtp_in_packets=([0-9]+).*/\1/')
if [ "$MODE" != plain ]; then
  case $LINE in *srtp=AES_CM_128_HMAC_SHA1_80*|*srtp=AES_CM_128_HMAC_SHA1_32*|*srtp=AEAD_AES_128_GCM*) ;;
    *) echo "FAIL: the call was not SRTP"; FAILED=1 ;; esac
  case $LINE in *srtp_auth_failures=0*) ;; *) echo "FAIL: SRTP packets failed authentication"; FAILED=1 ;; esac
fi
[ "${IN:-0}" -ge 100 ] 2>/dev/null || { echo "FAIL: precall received ${IN:-0} RTP packets from baresip"; FAILED=1; }
# sndfile writes what baresip decoded (heard) as *-dec.wav.
HEARD=$(ls "$WORK"/rec/*dec*.wav 2>/dev/null | head -1 || true)
if [ -n "$HEARD" ] && [ -s "$HEARD" ]; then
  RMS=$(sox "$HEARD" -n stat 2>&1 | awk '/RMS     amplitude/ {print $3}')
  echo "baresip heard: $(soxi -D "$HEARD" 2>/dev/null) s, RMS amplitude $RMS"
  awk -v r="${RMS:-0}" 'BEGIN { exit !(r > 0.01) }' || { echo "FAIL: baresip heard silence"; FAILED=1; }
else
  echo "FAIL: baresip recorded nothing"; FAILED=1
fi
if [ "$FAILED" -ne 0 ]; then echo "--- baresip log"; tail -40 "$BLOG"; echo "baresip test ($MODE) FAILED"; exit 1; fi
echo "baresip test ($MODE) passed"
