#!/bin/sh
# Benchmark of report-collector as a whole process (release build), printed as figures:
#   1. one full run (lock, request, poll, atomic save) against a report-apis whose report is
#      ready at once, against a shell script doing the same with `flock -n` and `curl`, in the
#      same hyperfine invocation; median wall times and their ratio (target <= 0.5x);
#   2. peak RSS of one full run, by /usr/bin/time -f %M (target <= 7 MiB);
#   3. the skip decision under `forbid` while another process holds the lock, exec to exit
#      (target <= 5 ms);
#   4. peak RSS of one full run that asks the system bus whether the timer started it
#      (TRIGGER_UNIT set, as systemd sets it while the timer is active); target <= 7 MiB.
#      systemd cannot run here (it is not PID 1), so the bus is a private dbus-daemon and
#      systemd's side of the conversation is played by the example systemd_standin (the
#      stand-in of report-collector/tests/bus.rs): the same calls, and answers of the same
#      types as systemd 252 and 257 give, shaped as a timer start that has just fired, so the
#      run judges itself a timer start and collects.
# Everything runs on 127.0.0.1; the server is stopped on exit. Usage: bench/report-collector/run.sh
set -eu

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RUNS=${RUNS:-200}
PORT=${PORT:-18297}

need() {
    command -v "$1" >/dev/null 2>&1 || {
        echo "installing $2 ..." >&2
        apt-get install -y "$2" >/dev/null
    }
}
need hyperfine hyperfine
need curl curl
need flock util-linux
[ -x /usr/bin/time ] || { echo "installing time ..." >&2; apt-get install -y time >/dev/null; }

cd "$ROOT"
cargo build --release -q -p report-collector -p report-apis --bins --example systemd_standin
COLLECTOR=$ROOT/target/release/report-collector
APIS=$ROOT/target/release/report-apis

WORK=$(mktemp -d)
SERVER_PID=
HOLDER_PID=
BUS_PID=
STANDIN_PID=
cleanup() {
    if [ -n "$STANDIN_PID" ]; then kill "$STANDIN_PID" 2>/dev/null || true; fi
    if [ -n "$HOLDER_PID" ]; then kill "$HOLDER_PID" 2>/dev/null || true; fi
    if [ -n "$BUS_PID" ]; then kill "$BUS_PID" 2>/dev/null || true; fi
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; fi
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

cat >"$WORK/apis.toml" <<EOF
listen = "127.0.0.1:$PORT"
[heavy-load]
period = "0s"
[report]
generation-time = "0s"
EOF
"$APIS" --config "$WORK/apis.toml" >"$WORK/apis.log" 2>&1 &
SERVER_PID=$!
i=0
until curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; do
    i=$((i + 1))
    [ $i -lt 100 ] || { echo "report-apis did not start:" >&2; cat "$WORK/apis.log" >&2; exit 1; }
    sleep 0.05
done

mkdir -p "$WORK/collector" "$WORK/script/reports"
cat >"$WORK/collector/config.toml" <<EOF
server-url = "http://127.0.0.1:$PORT"
lock-file = "$WORK/collector/collector.lock"
report-dir = "$WORK/collector/reports"
state-file = "$WORK/collector/last-run.json"
EOF

# The same job as a shell script: the lock, one request, polls every 10 s while not ready,
# the CSV printed and saved through a temp file and a rename (no fsync, unlike the collector).
cat >"$WORK/script/collect.sh" <<'EOF'
#!/bin/sh
set -eu
URL=$1; DIR=$2
exec 9>>"$DIR/collector.lock"
flock -n 9 || { echo "lock busy" >&2; exit 75; }
ticket=$(curl -sf --max-time 10 "$URL/request_report")
while :; do
    body=$(curl -sf --max-time 10 "$URL/get_report/$ticket")
    [ "$body" = "report is not ready" ] || break
    sleep 10
done
printf '%s\n' "$body"
tmp=$(mktemp "$DIR/reports/.report-XXXXXX")
printf '%s\n' "$body" >"$tmp"
mv "$tmp" "$DIR/reports/$(date -u +%Y%m%dT%H%M%SZ)_$ticket.csv"
EOF
chmod +x "$WORK/script/collect.sh"

# journald is not used here: the collector writes its lines to stderr, like a manual run.
unset JOURNAL_STREAM
RUN_COLLECTOR="$COLLECTOR --config $WORK/collector/config.toml"
RUN_SCRIPT="$WORK/script/collect.sh http://127.0.0.1:$PORT $WORK/script"

echo "== whole run, report ready at once ($RUNS runs each) =="
hyperfine -N --warmup 10 --runs "$RUNS" --style basic \
    --export-json "$WORK/run.json" \
    -n report-collector "$RUN_COLLECTOR" \
    -n "flock+curl script" "$RUN_SCRIPT" >"$WORK/run.txt" 2>&1 || { cat "$WORK/run.txt"; exit 1; }
grep -E "Time|±|report-collector|script" "$WORK/run.txt" || true

median_ms() { jq -r ".results[$2].median * 1000" "$1"; }
C=$(median_ms "$WORK/run.json" 0)
S=$(median_ms "$WORK/run.json" 1)
RATIO=$(echo "$C $S" | awk '{ printf "%.2f", $1 / $2 }')

echo "== peak RSS of a whole run (max of 20) =="
RSS=0
for _ in $(seq 20); do
    kb=$(/usr/bin/time -f %M "$COLLECTOR" --config "$WORK/collector/config.toml" 2>&1 >/dev/null | tail -1)
    [ "$kb" -gt "$RSS" ] && RSS=$kb
done
CURL_RSS=$(/usr/bin/time -f %M curl -sf "http://127.0.0.1:$PORT/healthz" 2>&1 >/dev/null | tail -1)

echo "== peak RSS of a whole run that asks the system bus (max of 20) =="
need dbus-daemon dbus-daemon
dbus-daemon --session --nofork --nopidfile --address="unix:path=$WORK/bus" >/dev/null 2>&1 &
BUS_PID=$!
i=0
until [ -S "$WORK/bus" ]; do
    i=$((i + 1))
    [ $i -lt 100 ] || { echo "dbus-daemon did not start" >&2; exit 1; }
    sleep 0.05
done
"$ROOT/target/release/examples/systemd_standin" "unix:path=$WORK/bus" >"$WORK/standin.log" 2>&1 &
STANDIN_PID=$!
i=0
until grep -q ready "$WORK/standin.log"; do
    i=$((i + 1))
    [ $i -lt 100 ] || { echo "the systemd stand-in did not start:" >&2; cat "$WORK/standin.log" >&2; exit 1; }
    sleep 0.05
done
BUS_RSS=0
for _ in $(seq 20); do
    kb=$(DBUS_SYSTEM_BUS_ADDRESS="unix:path=$WORK/bus" TRIGGER_UNIT=report-collector.timer \
        /usr/bin/time -f %M "$COLLECTOR" --config "$WORK/collector/config.toml" 2>&1 >/dev/null | tail -1)
    [ "$kb" -gt "$BUS_RSS" ] && BUS_RSS=$kb
done
# Every one of those runs judged itself a timer start from the bus's answers and collected.
jq -e '.last_run.trigger == "report-collector.timer" and .last_run.outcome == "collected"' \
    "$WORK/collector/last-run.json" >/dev/null || {
    echo "the last run did not collect as a timer start:" >&2
    cat "$WORK/collector/last-run.json" >&2
    exit 1
}

echo "== forbid skip while another process holds the lock ($RUNS runs) =="
# --no-fork: the holder is the sleep itself, so the cleanup's kill ends it and frees the lock
# (a forking flock would leave its sleep behind, holding the lock and this script's output).
flock --no-fork "$WORK/collector/collector.lock" sleep 600 &
HOLDER_PID=$!
sleep 0.2
set +e
$RUN_COLLECTOR 2>/dev/null; code=$?
set -e
[ "$code" = 75 ] || { echo "expected exit 75 while the lock is held, got $code" >&2; exit 1; }
hyperfine -N -i --warmup 10 --runs "$RUNS" --style basic \
    --export-json "$WORK/skip.json" \
    -n "report-collector (skip)" "$RUN_COLLECTOR" >"$WORK/skip.txt" 2>&1 || { cat "$WORK/skip.txt"; exit 1; }
K=$(median_ms "$WORK/skip.json" 0)

verdict() { awk -v v="$1" -v t="$2" 'BEGIN { print (v <= t) ? "met" : "MISSED" }'; }
echo
echo "== figures =="
printf 'whole run, median:    report-collector %.2f ms, flock+curl script %.2f ms, ratio %sx (target <= 0.5x: %s)\n' \
    "$C" "$S" "$RATIO" "$(verdict "$RATIO" 0.5)"
printf 'peak RSS, whole run:  %s KiB = %.2f MiB (target <= 7 MiB: %s); one curl call: %s KiB\n' \
    "$RSS" "$(echo "$RSS" | awk '{ print $1 / 1024 }')" "$(verdict "$RSS" 7168)" "$CURL_RSS"
printf 'peak RSS, asking the bus: %s KiB = %.2f MiB (target <= 7 MiB: %s)\n' \
    "$BUS_RSS" "$(echo "$BUS_RSS" | awk '{ print $1 / 1024 }')" "$(verdict "$BUS_RSS" 7168)"
printf 'forbid skip, median:  %.2f ms exec to exit (target <= 5 ms: %s)\n' "$K" "$(verdict "$K" 5)"
