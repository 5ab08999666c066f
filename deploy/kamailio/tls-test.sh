#!/usr/bin/env bash
# Kamailio as the TLS front of two precall nodes: callers speak SIP over TLS
# to Kamailio (tls module, a certificate made here with openssl), which
# dispatches round robin to the nodes over UDP. Two baresip calls with
# SDES-SRTP (mediaenc=srtp-mand) go through it: each node takes one, both are
# encrypted end to end (Kamailio relays signalling only), and baresip hears
# the greeting. Then a third node registers over TLS to a second Kamailio
# acting as registrar (registrar/usrloc over its tls listener): precall checks
# the registrar's certificate against the test CA and must reach Registered.
# Needs kamailio with kamailio-tls-modules, baresip, sox, openssl.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
for tool in kamailio baresip sox openssl; do command -v $tool >/dev/null || { echo "kamailio TLS test: $tool not found" >&2; exit 1; }; done
KMOD=$(dirname "$(dpkg -L kamailio 2>/dev/null | grep '/modules/tm.so$' | head -1)")
[ -f "$KMOD/tls.so" ] || { echo "kamailio TLS test: tls.so not found (apt-get install kamailio-tls-modules)" >&2; exit 1; }
BIN=${SIPP_SUITE_BINARY:-$ROOT/target/release/precall}
[ -x "$BIN" ] || cargo build --release --locked
. linphone-config/baresip-lib.sh
WORK=$(mktemp -d)
LOGS=$ROOT/sipp-scenarios/logs/cluster-tls
rm -rf "$LOGS"; mkdir -p "$LOGS"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

make_tls_cert "$WORK"
cat >"$WORK/tls.cfg" <<CFG
[server:default]
method = TLSv1.2+
verify_certificate = no
require_certificate = no
certificate = $WORK/tls.crt
private_key = $WORK/tls.key

[client:default]
method = TLSv1.2+
verify_certificate = no
CFG
printf '1 sip:127.0.0.1:5170\n1 sip:127.0.0.1:5172\n' >"$WORK/dispatcher.list"

# The nodes: SRTP required; the Kamailio hop is trusted for SDES keys.
start_node() { # name port rtp_min
  PRECALL_NODE__ID=$1 PRECALL_SIP__LISTEN=127.0.0.1:$2 PRECALL_HTTP__LISTEN= PRECALL_RTP__PORT_MIN=$3 PRECALL_RTP__PORT_MAX=$(($3 + 98)) \
    PRECALL_RTP__SRTP=required PRECALL_RTP__SRTP_ALLOW_INSECURE_SDES=true PRECALL_SIP__TRUSTED_CIDRS=127.0.0.1/32 \
    PRECALL_DATA__DIR="$WORK/data-$1" PRECALL_LOG__LEVEL=info NO_COLOR=1 "$BIN" serve >"$LOGS/node-$1.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 50); do grep -q "listening for SIP" "$LOGS/node-$1.log" && return 0; sleep 0.1; done
  echo "node $1 did not start"; cat "$LOGS/node-$1.log"; exit 1
}
start_node a 5170 34000
start_node b 5172 34200

kamailio -DD -E -f deploy/kamailio/kamailio.cfg -L "$KMOD" -A LISTEN=udp:127.0.0.1:5180 -A WITH_TLS \
  -A TLS_LISTEN=tls:127.0.0.1:5181 -A "TLSCFG=\"$WORK/tls.cfg\"" -A "DSLIST=\"$WORK/dispatcher.list\"" \
  >"$LOGS/kamailio.log" 2>&1 &
PIDS+=($!)
sleep 5   # two probe rounds: both nodes active

FAILED=0
for i in 1 2; do
  mkdir -p "$WORK/call$i"
  baresip_call "$WORK/call$i" "sip:100@127.0.0.1:5181;transport=tls" ";mediaenc=srtp-mand" \
    "sip_cafile $WORK/ca.crt
module srtp.so" "$LOGS/baresip-$i.log"
  grep -q "Call established: sip:100@127.0.0.1:5181;transport=tls" "$LOGS/baresip-$i.log" \
    || { echo "FAIL: call $i was not established over TLS to Kamailio"; FAILED=1; }
  check_heard "$WORK/call$i" || FAILED=1
done
for node in a b; do
  echo "== node $node"
  check_call "$(grep 'call ended' "$LOGS/node-$node.log" | tail -1 || true)" 1 || FAILED=1
done

echo "== a registration over TLS to Kamailio as registrar"
cat >"$WORK/registrar.cfg" <<CFG
#!KAMAILIO
debug=2
log_stderror=yes
fork=yes
children=2
enable_tls=yes
listen=tls:127.0.0.1:5183
auto_aliases=no
loadmodule "kex.so"
loadmodule "corex.so"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "textops.so"
loadmodule "pv.so"
loadmodule "xlog.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "tls.so"
modparam("tls", "config", "$WORK/tls.cfg")
request_route {
    if (is_method("REGISTER")) {
        xlog("L_INFO", "REGISTER \$fu over \$pr, Contact \$ct\n");
        if (!save("location")) { sl_reply_error(); }
        exit;
    }
    sl_send_reply("404", "Not here");
}
CFG
kamailio -DD -E -f "$WORK/registrar.cfg" -L "$KMOD" >"$LOGS/registrar.log" 2>&1 &
PIDS+=($!)
sleep 1
cat >"$WORK/node-c.toml" <<TOML
[sip]
listen = "127.0.0.1:5174"
tls_ca_file = "$WORK/ca.crt"

[[sip.registrations]]
registrar = "sip:localhost:5183"
aor = "sip:4000@localhost"
username = "4000"
password = "not-challenged"
expires = 120
transport = "tls"
TOML
PRECALL_NODE__ID=c PRECALL_HTTP__LISTEN= PRECALL_RTP__PORT_MIN=34400 PRECALL_RTP__PORT_MAX=34498 \
  PRECALL_DATA__DIR="$WORK/data-c" PRECALL_LOG__LEVEL=info NO_COLOR=1 "$BIN" serve --config "$WORK/node-c.toml" >"$LOGS/node-c.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 50); do grep -q "state=Registered" "$LOGS/node-c.log" && break; sleep 0.1; done
if grep -q "state=Registered" "$LOGS/node-c.log" && grep -q "REGISTER sip:4000@localhost over tls" "$LOGS/registrar.log"; then
  grep "state=Registered" "$LOGS/node-c.log" | head -1 | sed 's/^/   /'
else
  echo "FAIL: node c did not register over TLS"; tail -5 "$LOGS/node-c.log"; tail -5 "$LOGS/registrar.log"; FAILED=1
fi
if [ "$FAILED" -ne 0 ]; then echo "--- kamailio"; tail -30 "$LOGS/kamailio.log"; echo "kamailio TLS test FAILED"; exit 1; fi
echo "kamailio TLS test passed"
