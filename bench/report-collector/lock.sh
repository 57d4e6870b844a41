#!/bin/sh
# Benchmark of the run lock (release build): acquire + release with the flock backend and with
# the PostgreSQL backend, each the median of RUNS (default 200), printed as figures. The
# PostgreSQL figure is everything a run pays for the shared lock: connect, schema check,
# advisory lock, lease row, release, close; over a Unix socket to a throw-away cluster on this
# host (a remote database adds its round trips: about 8 of them). Needs root and the
# PostgreSQL 15 server binaries (postgresql-15); without them only flock is measured.
# Usage: bench/report-collector/lock.sh
set -eu

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RUNS=${RUNS:-200}
PG=/usr/lib/postgresql/15/bin
cd "$ROOT"
cargo build --release -q -p report-collector --example lock_bench
BENCH=$ROOT/target/release/examples/lock_bench

if [ "$(id -u)" != 0 ] || [ ! -x "$PG/postgres" ]; then
    echo "(PostgreSQL not measured: needs root and $PG)" >&2
    exec "$BENCH" "$RUNS"
fi

WORK=$(mktemp -d)
PORT=${PGBENCH_PORT:-25999}
cleanup() {
    runuser -u postgres -- "$PG/pg_ctl" -D "$WORK/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM
chown postgres "$WORK"
runuser -u postgres -- "$PG/initdb" -D "$WORK/data" -A trust -U postgres --no-sync >/dev/null
runuser -u postgres -- "$PG/pg_ctl" -D "$WORK/data" -l "$WORK/log" -w \
    -o "-k $WORK -c listen_addresses='' -p $PORT" start >/dev/null
runuser -u postgres -- psql -X -q -h "$WORK" -p "$PORT" -U postgres -d postgres \
    -c "CREATE ROLE report_collector LOGIN" -c "CREATE DATABASE report_collector OWNER report_collector"
"$BENCH" "$RUNS" "host=$WORK port=$PORT user=report_collector dbname=report_collector"
