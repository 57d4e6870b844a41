#!/bin/sh
# Benchmark of the run lock (release build), printed as figures:
#   1. acquire + release with the flock backend and with the PostgreSQL backend, each the median
#      of RUNS (default 200), and the PostgreSQL connection's start alone (startup and
#      authentication). The PostgreSQL figure is everything the lock itself costs a run:
#      connect, schema check, advisory lock, lease row, release, close;
#   2. whole collections: the release report-collector doing `run --trigger manual` against a
#      report-apis that answers at once (bench/lib.sh, as bench/report-collector/run.sh), in
#      ROUNDS (default 15) alternating rounds of three runs: lock-backend = "flock", "postgres",
#      and "postgres" on a database whose sessions commit with synchronous_commit = off (no
#      commit waits for its WAL flush); the medians and the median of the per-round
#      differences, in ms, and where PostgreSQL's extra time goes: the connection's start (1.),
#      the commit flushes (the difference of the two postgres runs), and the rest (statements
#      and round trips). BEFORE=<a report-collector binary> (a build of an earlier commit) adds
#      its postgres runs to every round, to compare a change within one invocation;
#   3. the statements one manual run sends, from the server's log (log_statement = all).
# Over a Unix socket to a throw-away PostgreSQL 15 cluster on this host (default settings, fsync
# on); a remote database adds a network round trip to each of a run's round trips. Needs root
# and the PostgreSQL 15 server binaries (postgresql-15); without them only the flock acquire +
# release is measured. Figures only: nothing here asserts a time.
#
# Where a PostgreSQL run's extra time goes (one run on the 2-core build machine, shared with
# other work: flock 5.64 ms, postgres 16.19 ms, 10.09 ms more per round):
#   - the connection's start, 1.63 ms: a backend forked for the run, and authentication;
#   - commit flushes, 2.51 ms: the take and the mark (and a timer run's slot claim) wait for
#     their WAL flush; every other write commits without waiting (lost only in a crash of the
#     database, which ends the run's session too: the module docs of src/lock/postgres.rs say
#     why each may);
#   - statements and round trips, the rest (5.96 ms): a manual run sends 11 statements in 7
#     round trips (a timer run 13 in 8), unprepared, and most of their time is the server's,
#     whose caches are cold in a new session.
# The build before (d498f53), in the same rounds: 17.48 ms more than flock, 3.82 ms of it
# flushes (six commits waited); 13 statements, each prepared first: 26 round trips.
# Usage: bench/report-collector/lock.sh
set -eu

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RUNS=${RUNS:-200}
ROUNDS=${ROUNDS:-15}
PG=/usr/lib/postgresql/15/bin
PG_PORT=${PGBENCH_PORT:-25999}
PORT=${PORT:-18296}
BEFORE=${BEFORE:-}
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

cd "$ROOT"
cargo build --release -q -p report-collector -p report-apis --bins --example lock_bench
BENCH=$RELEASE/examples/lock_bench
COLLECTOR=$RELEASE/report-collector

if [ "$(id -u)" != 0 ] || [ ! -x "$PG/postgres" ]; then
    echo "(PostgreSQL and whole runs not measured: needs root and $PG)" >&2
    exec "$BENCH" "$RUNS"
fi
need hyperfine hyperfine
need curl curl
need jq jq

WORK=$(mktemp -d)
SERVER_PID=
cleanup() {
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; fi
    wait 2>/dev/null || true
    runuser -u postgres -- "$PG/pg_ctl" -D "$WORK/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM
chown postgres "$WORK"
runuser -u postgres -- "$PG/initdb" -D "$WORK/data" -A trust -U postgres --no-sync >/dev/null
runuser -u postgres -- "$PG/pg_ctl" -D "$WORK/data" -l "$WORK/log" -w \
    -o "-k $WORK -c listen_addresses='' -p $PG_PORT" start >/dev/null
psql_do() { runuser -u postgres -- psql -X -q -h "$WORK" -p "$PG_PORT" -U postgres -d postgres "$@"; }
psql_do -c "CREATE ROLE report_collector LOGIN" \
    -c "CREATE DATABASE report_collector OWNER report_collector" \
    -c "CREATE DATABASE report_collector_async OWNER report_collector" \
    -c "ALTER DATABASE report_collector_async SET synchronous_commit = off"
connect() { echo "host=$WORK port=$PG_PORT user=report_collector dbname=$1"; }

echo "== lock acquire + release (median of $RUNS each) =="
"$BENCH" "$RUNS" "$(connect report_collector)" | tee "$WORK/lock.txt"
CONNECT_MS=$(sed -n 's/^connection start, postgres: *median *\([0-9.]*\) ms.*/\1/p' "$WORK/lock.txt")

# The collectors: one directory each (lock file, state, reports), the same report server.
fast_report_apis "$WORK" "$PORT"
URL=http://127.0.0.1:$PORT
collector_config "$WORK/flock" "$URL"
for name in postgres postgres-async before before-async; do
    db=report_collector
    case $name in *-async) db=report_collector_async ;; esac
    collector_config "$WORK/$name" "$URL"
    cat >>"$WORK/$name/config.toml" <<EOF
lock-backend = "postgres"
[postgres]
connect = "$(connect "$db")"
tls = "disable"
EOF
done
# journald is not used here: the collector writes its lines to stderr, like a manual run.
unset JOURNAL_STREAM
run_of() { echo "$1 --config $WORK/$2/config.toml run --trigger manual"; }
# One round: each run once, in this order (hyperfine -N: exec to exit, no shell).
set -- -n flock "$(run_of "$COLLECTOR" flock)" \
    -n postgres "$(run_of "$COLLECTOR" postgres)" \
    -n postgres-async "$(run_of "$COLLECTOR" postgres-async)"
if [ -n "$BEFORE" ]; then
    set -- "$@" -n before "$(run_of "$BEFORE" before)" -n before-async "$(run_of "$BEFORE" before-async)"
fi
round() {
    hyperfine -N --runs 1 --style none --export-json "$WORK/round.json" "$@" >"$WORK/round.txt" 2>&1 \
        || { cat "$WORK/round.txt"; exit 1; }
    jq -r '[.results[].times[0] * 1000] | @tsv' "$WORK/round.json" >>"$WORK/rounds.tsv"
}
echo "== whole run, report ready at once: $ROUNDS rounds, each $(($# / 3)) runs in turn =="
# A first round unmeasured: the tables created, the caches warm.
round "$@"
: >"$WORK/rounds.tsv"
i=0
while [ $i -lt "$ROUNDS" ]; do
    round "$@"
    i=$((i + 1))
done
for name in flock postgres postgres-async before before-async; do
    [ -f "$WORK/$name/last-run.json" ] || continue
    jq -e '.last_run.outcome == "collected"' "$WORK/$name/last-run.json" >/dev/null || {
        echo "the last $name run did not collect:" >&2
        cat "$WORK/$name/last-run.json" >&2
        exit 1
    }
done
# column N of every round, or the per-round difference of columns N and M (N - M).
col() { cut -f "$1" "$WORK/rounds.tsv" | median; }
diff_of() { awk -F '\t' -v n="$1" -v m="$2" '{ print $n - $m }' "$WORK/rounds.tsv" | median; }

# The statements of one manual run, as the server logs them (extended protocol: "execute").
statements() {
    psql_do -c "ALTER ROLE report_collector SET log_statement = 'all'"
    from=$(($(wc -c <"$WORK/log") + 1))
    $1 --config "$WORK/$2/config.toml" run --trigger manual >/dev/null 2>&1
    psql_do -c "ALTER ROLE report_collector RESET log_statement"
    tail -c +"$from" "$WORK/log" | sed -n 's/.*LOG:  \(execute [^:]*\|statement\): //p' >"$WORK/$2.statements"
}

echo
echo "== figures =="
printf 'whole run, median of %s: flock %.2f ms, postgres %.2f ms; per-round difference median %.2f ms\n' \
    "$ROUNDS" "$(col 1)" "$(col 2)" "$(diff_of 2 1)"
printf '  postgres with synchronous_commit = off: %.2f ms; the commit flushes: %.2f ms a run (per-round median of the difference)\n' \
    "$(col 3)" "$(diff_of 2 3)"
printf '  where the %.2f ms go: connection start %.2f ms, commit flushes %.2f ms, statements and round trips (the rest) %.2f ms\n' \
    "$(diff_of 2 1)" "$CONNECT_MS" "$(diff_of 2 3)" \
    "$(echo "$(diff_of 2 1) $CONNECT_MS $(diff_of 2 3)" | awk '{ print $1 - $2 - $3 }')"
if [ -n "$BEFORE" ]; then
    printf 'BEFORE (%s), postgres: %.2f ms, %.2f ms over flock, %.2f ms over this build (per-round medians); with synchronous_commit = off %.2f ms, flushes %.2f ms\n' \
        "$BEFORE" "$(col 4)" "$(diff_of 4 1)" "$(diff_of 4 2)" "$(col 5)" "$(diff_of 4 5)"
fi
statements "$COLLECTOR" postgres
echo "statements of one manual run, postgres: $(wc -l <"$WORK/postgres.statements")"
cut -c 1-100 "$WORK/postgres.statements" | sed 's/^/  /'
if [ -n "$BEFORE" ]; then
    statements "$BEFORE" before
    echo "statements of one manual run, BEFORE: $(wc -l <"$WORK/before.statements")"
    cut -c 1-100 "$WORK/before.statements" | sed 's/^/  /'
fi
echo "(the machine may be shared with other work: compare figures of one invocation)"
