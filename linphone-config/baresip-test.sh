#!/usr/bin/env bash
# A real third-party softphone calls precall headless: baresip (Debian's
# baresip-core), configured like linphone-config/linphonerc — direct IP call, no
# registrar, PCMU/PCMA (and Opus when precall is built with it). baresip plays a
# speech WAV into the call (aufile) and records what it hears; precall must log
# an answered call that ended by the caller's BYE with baresip's audio received,
# and the recording must carry precall's audio (the greeting).
# Why not linphonec: Debian's linphone-cli needs a sound card or PulseAudio to
# start a call and has no file-based audio device, so it cannot run headless in
# CI; see linphone-config/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v baresip >/dev/null || { echo "baresip-test.sh: baresip not found (apt-get install baresip-core)" >&2; exit 1; }
BIN=${SIPP_SUITE_BINARY:-target/release/precall}
[ -x "$BIN" ] || cargo build --release --locked
WORK=$(mktemp -d)
LOGS=linphone-config/logs
mkdir -p "$LOGS"
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT

PRECALL_SIP__LISTEN=127.0.0.1:5094 PRECALL_HTTP__LISTEN= PRECALL_RTP__PORT_MIN=33000 PRECALL_RTP__PORT_MAX=33998 \
  PRECALL_DATA__DIR="$WORK/data" PRECALL_LOG__LEVEL=info NO_COLOR=1 "$BIN" serve >"$LOGS/precall.log" 2>&1 &
PID=$!
for _ in $(seq 1 50); do grep -q "listening for SIP" "$LOGS/precall.log" && break; sleep 0.1; done
grep -q "listening for SIP" "$LOGS/precall.log" || { echo "precall did not start"; cat "$LOGS/precall.log"; exit 1; }

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
CFG
echo "<sip:baresip@127.0.0.1:5096>;regint=0;audio_codecs=PCMU,PCMA" >"$WORK/baresip/accounts"
timeout 30 baresip -f "$WORK/baresip" -e "/dial sip:100@127.0.0.1:5094" -t 8 >"$LOGS/baresip.log" 2>&1 || true
sleep 1

FAILED=0
LINE=$(grep 'call ended' "$LOGS/precall.log" | tail -1 || true)
echo "precall: $LINE"
case $LINE in *reason=caller_bye*) ;; *) echo "FAIL: no call ended by baresip's BYE"; FAILED=1 ;; esac
IN=$(printf '%s' "$LINE" | sed -E 's/.*rtp_in_packets=([0-9]+).*/\1/')
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
if [ "$FAILED" -ne 0 ]; then echo "--- baresip log"; tail -40 "$LOGS/baresip.log"; echo "baresip test FAILED"; exit 1; fi
echo "baresip test passed"
