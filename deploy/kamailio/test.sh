#!/usr/bin/env bash
# Scale-out test: Kamailio (dispatcher, OPTIONS probing) on 127.0.0.1:5080 in
# front of two precall nodes (127.0.0.1:5070 and :5072) that share one PostgreSQL
# database and one ElevenLabs account (the simulator, `precall sim`).
#   1. 40 SIPp calls through Kamailio: both nodes take calls, none fails;
#   2. one mapped caller calls 6 times at once, over both nodes, while the clone
#      takes 1.5 s: it is cloned exactly once (one voice_clone_log row);
#   3. 400 calls at twice a node's set-up rate: the nodes' limits.max_setup_rate
#      are 32/s (a) and 10/s (b), 21/s on average, and the calls come at 40/s.
#      Round robin gives each 20/s: node b refuses about half of its share with
#      503, Kamailio retries those on node a without marking b down, and no
#      call fails (had b been marked down, a alone would get 40/s > 32/s);
#   4. node B is stopped (SIGTERM) during 30 calls: no call fails, node A takes
#      the new calls.
# Needs kamailio, sipp, psql and PostgreSQL on 127.0.0.1:5432 (trust auth).
set -euo pipefail
cd "$(dirname "$0")"
HERE=$PWD
ROOT=$(cd ../.. && pwd)
for tool in kamailio sipp psql; do command -v $tool >/dev/null || { echo "cluster test: $tool not found" >&2; exit 1; }; done
BIN=${SIPP_SUITE_BINARY:-$ROOT/target/release/precall}
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release --locked)
LOGS=$ROOT/sipp-scenarios/logs/cluster
rm -rf "$LOGS"; mkdir -p "$LOGS"
DB=precall_cluster_$$
PG=postgres://postgres@127.0.0.1:5432
psql() { command psql -h 127.0.0.1 -U postgres -qAt "$@"; }
psql -c "CREATE DATABASE $DB" postgres

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" postgres || true
}
trap cleanup EXIT

export DATABASE_URL=$PG/$DB
export PRECALL_DATA__DIR=$LOGS/data
export ELEVENLABS_API_KEY=cluster-key
export PRECALL_ELEVENLABS__BASE_URL=http://127.0.0.1:18089
export PRECALL_LIMITS__DRAIN_SECONDS=15

"$BIN" sim --listen 127.0.0.1:18089 --api-key cluster-key --clone-latency-ms 1500 >"$LOGS/sim.log" 2>&1 & PIDS+=($!)
"$BIN" migrate >"$LOGS/migrate.log" 2>&1
"$BIN" callers add +15550099 "$ROOT/sipp-scenarios/audio/caller-pcmu.wav" >"$LOGS/callers.log" 2>&1

# Kamailio is the nodes' one source of calls: trusted, so the per-source INVITE
# limit does not apply to it (docs/DEPLOYMENT.md). Low set-up rates keep twice
# of them cheap to generate on a CI machine.
export PRECALL_SIP__TRUSTED_CIDRS=127.0.0.1/32 PRECALL_LIMITS__MAX_SETUP_BURST=5
start_node() { # name port rtp_min setup_rate
  PRECALL_LIMITS__MAX_SETUP_RATE=$4 PRECALL_NODE__ID=$1 PRECALL_SIP__LISTEN=127.0.0.1:$2 PRECALL_HTTP__LISTEN=127.0.0.1:0 PRECALL_RTP__PORT_MIN=$3 PRECALL_RTP__PORT_MAX=$(($3 + 998)) \
    "$BIN" serve >"$LOGS/node-$1.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 50); do grep -q "listening for SIP" "$LOGS/node-$1.log" && return 0; sleep 0.1; done
  echo "node $1 did not start"; cat "$LOGS/node-$1.log"; exit 1
}
start_node a 5070 30000 32
NODE_A=${PIDS[-1]}
start_node b 5072 32000 10
NODE_B=${PIDS[-1]}

kamailio -DD -E -f kamailio.cfg -A LISTEN=udp:127.0.0.1:5080 -A "DSLIST=\"$HERE/dispatcher.list\"" >"$LOGS/kamailio.log" 2>&1 &
PIDS+=($!)
sleep 5   # two probe rounds: both nodes active

FAILED=0
run() { # label args...
  local label=$1; shift
  echo "== $label"
  if (cd "$ROOT/sipp-scenarios" && timeout 120 sipp "$@" -i 127.0.0.1 -mi 127.0.0.1 -nostdin -trace_err 127.0.0.1:5080 >"$LOGS/$label.out" 2>&1); then
    grep -E "Successful call|Failed call" "$LOGS/$label.out" | sed 's/^/   /'
  else
    echo "   FAILED"; tail -20 "$LOGS/$label.out"; FAILED=1
  fi
}
count() { psql -c "$1" "$DB"; }

run spread-40 -sf uac_call_pcmu.xml -r 10 -m 40 -l 50 -p 16500
A=$(count "select count(*) from call_log where node_id='a'"); B=$(count "select count(*) from call_log where node_id='b'")
echo "   node a: $A calls, node b: $B calls"
[ "$A" -ge 10 ] && [ "$B" -ge 10 ] || { echo "   calls were not spread over both nodes"; FAILED=1; }

run same-caller-6 -sf uac_same_caller.xml -r 12 -m 6 -l 6 -p 16502
CLONES=$(count "select count(*) from voice_clone_log where caller_id='+15550099'")
OUT=$(count "select string_agg(node_id || ':' || clone_outcome, ' ' order by started_at) from call_log where caller='+15550099'")
echo "   voice_clone_log rows for +15550099: $CLONES; calls: $OUT"
[ "$CLONES" -eq 1 ] || { echo "   cloned $CLONES times, expected once across both nodes"; FAILED=1; }
case "$OUT" in *a:*) ;; *) echo "   node a took none of them"; FAILED=1 ;; esac
case "$OUT" in *b:*) ;; *) echo "   node b took none of them"; FAILED=1 ;; esac

run twice-setup-rate -sf uac_trunk_rate.xml -r 40 -m 400 -l 200 -p 16506
REFUSED=$(count "select count(*) from call_log where end_status=503")
ANSWERED=$(count "select count(*) from call_log where caller like '+1444%' and end_reason='caller_bye'")
LATE_B=$(count "select count(*) from call_log where caller like '+1444%' and node_id='b' and end_reason='caller_bye' and started_at > (select max(started_at) - 3000 from call_log where caller like '+1444%')")
echo "   400 calls at 40/s over nodes capped at 32/s and 10/s: $ANSWERED answered, $REFUSED refused by a node over its rate and retried on the other; node b still took $LATE_B calls in the last 3 s"
[ "$ANSWERED" -eq 400 ] || { echo "   calls were lost at twice a node's set-up rate"; FAILED=1; }
[ "$REFUSED" -ge 50 ] || { echo "   node b should have refused about half its share"; FAILED=1; }
[ "$LATE_B" -ge 10 ] || { echo "   node b was taken out of the set for refusing calls"; FAILED=1; }

before_a=$(count "select count(*) from call_log where node_id='a'")
(sleep 2; kill -TERM "$NODE_B") &
run failover-30 -sf uac_call_pcmu.xml -r 5 -m 30 -l 40 -p 16504
after_a=$(count "select count(*) from call_log where node_id='a'")
echo "   node a took $((after_a - before_a)) of the 30 calls after node b began to stop"
[ $((after_a - before_a)) -ge 15 ] || { echo "   node a did not take over"; FAILED=1; }
TOTAL=$(count "select count(*) from call_log where end_reason='caller_bye'")
echo "   call_log: $TOTAL calls ended by caller BYE (expected 476)"
[ "$TOTAL" -eq 476 ] || FAILED=1

if [ "$FAILED" -ne 0 ]; then echo "cluster test FAILED (logs in $LOGS)"; exit 1; fi
echo "cluster test passed"
