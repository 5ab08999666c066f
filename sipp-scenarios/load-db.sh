#!/usr/bin/env bash
# Call-record throughput and RTP pacing with each database backend, while ~500
# calls are live (docs/PERFORMANCE.md, "Call records"):
#   for sqlite, postgres, and postgres behind a 50 ms-per-hop latency proxy:
#     - start precall on that database,
#     - run examples/loadgen.rs: 1000 calls at 100 calls/s, 5 s each (~500 live),
#     - at the same time push 20 000 records through a second writer
#       (examples/store_throughput.rs) into the same backend: rows/s under load,
#     - check every call reached call_log.
# Needs PostgreSQL on 127.0.0.1:5432 (trust auth) and the sqlite3 CLI is optional.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin precall --example loadgen --example store_throughput --example latency_proxy
OUT=sipp-scenarios/logs
mkdir -p "$OUT"
ulimit -n 65536 2>/dev/null || true
PG=postgres://postgres@127.0.0.1:5432
psql() { command psql -h 127.0.0.1 -U postgres -qAt "$@"; }
fresh_pg() { psql -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" postgres; psql -c "CREATE DATABASE $1" postgres; }

PIDS=()
trap 'for p in "${PIDS[@]}"; do kill $p 2>/dev/null || true; done' EXIT
target/release/examples/latency_proxy 127.0.0.1:15432 127.0.0.1:5432 50 & PIDS+=($!)

run() { # label daemon-url bench-url
  local label=$1 url=$2 bench=$3 dir
  dir=$(mktemp -d)
  echo "## $label"
  PRECALL_SIP__LISTEN=127.0.0.1:5070 PRECALL_HTTP__LISTEN=127.0.0.1:3016 PRECALL_SIP__INVITE_RATE=100000 PRECALL_SIP__INVITE_BURST=100000 PRECALL_SIP__REQUEST_RATE=1000000 PRECALL_SIP__REQUEST_BURST=1000000 PRECALL_LOG__LEVEL=warn PRECALL_LIMITS__MAX_CALLS=2000 PRECALL_DATA__DIR="$dir" \
    DATABASE_URL="$url" target/release/precall serve >"$OUT/load-db-$label.log" 2>&1 &
  local pid=$!
  PIDS+=($pid)
  sleep 1
  kill -0 $pid 2>/dev/null || { echo "precall did not start:"; cat "$OUT/load-db-$label.log"; exit 1; }
  target/release/examples/store_throughput --url "$bench" --records 20000 > "$OUT/load-db-$label-bench.out" &
  local bench_pid=$!
  target/release/examples/loadgen --target 127.0.0.1:5070 --calls 1000 --rate 100 --hold 5 --pid $pid
  wait $bench_pid; cat "$OUT/load-db-$label-bench.out"
  kill -TERM $pid; wait $pid || true
  case $label in
    sqlite) echo "call_log rows: $(python3 -c "import sqlite3,sys; print(sqlite3.connect('$dir/precall.db').execute('select count(*), sum(end_reason=\"caller_bye\") from call_log').fetchone())")" ;;
    *) echo "call_log rows: $(psql -c "select count(*), sum(case when end_reason='caller_bye' then 1 else 0 end) from call_log" "${url##*/}")" ;;
  esac
  rm -rf "$dir"
}

run sqlite "" "sqlite://$(mktemp -d)/bench.db?mode=rwc"
fresh_pg precall_load; fresh_pg precall_bench
run postgres "$PG/precall_load" "$PG/precall_bench"
fresh_pg precall_load; fresh_pg precall_bench
run postgres-50ms "postgres://postgres@127.0.0.1:15432/precall_load" "postgres://postgres@127.0.0.1:15432/precall_bench"
psql -c "DROP DATABASE IF EXISTS precall_load WITH (FORCE)" postgres; psql -c "DROP DATABASE IF EXISTS precall_bench WITH (FORCE)" postgres
