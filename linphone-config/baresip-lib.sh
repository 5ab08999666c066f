# Shared by linphone-config/baresip-test.sh and deploy/kamailio/tls-test.sh:
# a headless baresip call (files instead of a sound card) and the checks on
# what precall logged and what baresip heard. Source it from bash.

# make_tls_cert DIR: a CA of its own (DIR/ca.crt) and a leaf for localhost and
# 127.0.0.1 signed by it (DIR/tls.crt, DIR/tls.key), with openssl.
make_tls_cert() {
  local d=$1
  command -v openssl >/dev/null || { echo "openssl not found" >&2; return 1; }
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=precall test CA" \
    -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$d/tls.key" -out "$d/tls.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$d/san.ext"
  openssl x509 -req -in "$d/tls.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 2 \
    -extfile "$d/san.ext" -out "$d/tls.crt" 2>/dev/null
}

# baresip_call DIR TARGET ACCOUNT_PARAMS EXTRA_CONFIG LOG: dials TARGET for 8 s,
# playing sipp-scenarios/audio/caller-pcmu.wav and recording what it hears
# under DIR/rec. Run from the repository root.
baresip_call() {
  local d=$1 target=$2 params=$3 extra=$4 log=$5
  sox sipp-scenarios/audio/caller-pcmu.wav -r 8000 -c 1 -b 16 -e signed-integer "$d/speak.wav" 2>/dev/null \
    || cp sipp-scenarios/audio/caller-pcmu.wav "$d/speak.wav"
  mkdir -p "$d/baresip" "$d/rec"
  cat >"$d/baresip/config" <<CFG
poll_method epoll
sip_listen 127.0.0.1:5096
audio_player aufile,$d/heard.wav
audio_source aufile,$d/speak.wav
audio_alert aufile,$d/alert.wav
audio_srate 8000
audio_channels 1
module_path /usr/lib/baresip/modules
module g711.so
module aufile.so
module sndfile.so
snd_path $d/rec
module_app account.so
module_app menu.so
$extra
CFG
  echo "<sip:baresip@127.0.0.1:5096>;regint=0;audio_codecs=PCMU,PCMA$params" >"$d/baresip/accounts"
  timeout 30 baresip -f "$d/baresip" -e "/dial $target" -t 8 >"$log" 2>&1 || true
  sleep 1
}

# check_call LINE SECURE: precall's "call ended" line shows a call ended by
# baresip's BYE with its audio received, and (SECURE=1) SRTP without a single
# authentication failure. Prints what failed; returns 1 then.
check_call() {
  local line=$1 secure=$2 failed=0 in
  echo "precall: $line"
  case $line in *reason=caller_bye*) ;; *) echo "FAIL: no call ended by baresip's BYE"; failed=1 ;; esac
  in=$(printf '%s' "$line" | sed -E 's/.*rtp_in_packets=([0-9]+).*/\1/')
  [ "${in:-0}" -ge 100 ] 2>/dev/null || { echo "FAIL: precall received ${in:-0} RTP packets from baresip"; failed=1; }
  if [ "$secure" = 1 ]; then
    case $line in *srtp=AES_CM_128_HMAC_SHA1_80*|*srtp=AES_CM_128_HMAC_SHA1_32*|*srtp=AEAD_AES_128_GCM*) ;;
      *) echo "FAIL: the call was not SRTP"; failed=1 ;; esac
    case $line in *srtp_auth_failures=0*) ;; *) echo "FAIL: SRTP packets failed authentication"; failed=1 ;; esac
  fi
  return $failed
}

# check_heard DIR: baresip's decoded recording (sndfile's *-dec.wav) carries
# precall's audio, not silence.
check_heard() {
  local heard rms
  heard=$(ls "$1"/rec/*dec*.wav 2>/dev/null | head -1 || true)
  if [ -z "$heard" ] || [ ! -s "$heard" ]; then echo "FAIL: baresip recorded nothing"; return 1; fi
  rms=$(sox "$heard" -n stat 2>&1 | awk '/RMS     amplitude/ {print $3}')
  echo "baresip heard: $(soxi -D "$heard" 2>/dev/null) s, RMS amplitude $rms"
  awk -v r="${rms:-0}" 'BEGIN { exit !(r > 0.01) }' || { echo "FAIL: baresip heard silence"; return 1; }
}
