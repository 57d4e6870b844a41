#!/bin/sh
# Benchmark of report-collector as a whole process (release build), printed as figures:
#   1. one full run (lock, request, poll, atomic save) against a report-apis whose report is
#      ready at once, against a shell script doing the same with `flock -n` and `curl`, in the
#      same hyperfine invocation; median wall times and their ratio (target <= 0.25x);
#   2. peak RSS of one full run, by /usr/bin/time -f %M (target <= 6.5 MiB);
#   3. the skip decision under `forbid` while another process holds the lock, exec to exit
#      (target <= 5 ms);
#   4. peak RSS of one full run that asks the system bus whether the timer started it
#      (TRIGGER_UNIT set, as systemd sets it while the timer is active); target <= 7 MiB.
#      systemd cannot run here (it is not PID 1), so the bus is a private dbus-daemon and
#      systemd's side of the conversation is played by the example systemd_standin (the
#      stand-in of report-collector/tests/collector/bus.rs): the same calls, and answers of
#      the same types as systemd 252 and 257 give, shaped as a timer start that has just
#      fired, so the run judges itself a timer start and collects;
#   5. peak RSS of one full run whose report is at max-report-size (64 MiB, the default), and of
#      one whose report is small, both served as static files by Python's http.server (with a
#      Content-Length, as report-apis sends one); target: the large report costs at most
#      4 MiB more than the small one, since a body is checked and written as it streams in.
# Everything runs on 127.0.0.1; the server is stopped on exit. Usage: bench/report-collector/run.sh
set -eu

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RUNS=${RUNS:-200}
PORT=${PORT:-18297}
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

need hyperfine hyperfine
need curl curl
need flock util-linux
need python3 python3
[ -x /usr/bin/time ] || { echo "installing time ..." >&2; apt-get install -y time >/dev/null; }

cd "$ROOT"
cargo build --release -q -p report-collector -p report-apis --bins --example systemd_standin
COLLECTOR=$RELEASE/report-collector

WORK=$(mktemp -d)
SERVER_PID=
HOLDER_PID=
BUS_PID=
STANDIN_PID=
FILES_PID=
cleanup() {
    if [ -n "$FILES_PID" ]; then kill "$FILES_PID" 2>/dev/null || true; fi
    if [ -n "$STANDIN_PID" ]; then kill "$STANDIN_PID" 2>/dev/null || true; fi
    if [ -n "$HOLDER_PID" ]; then kill "$HOLDER_PID" 2>/dev/null || true; fi
    if [ -n "$BUS_PID" ]; then kill "$BUS_PID" 2>/dev/null || true; fi
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; fi
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

fast_report_apis "$WORK" "$PORT"
collector_config "$WORK/collector" "http://127.0.0.1:$PORT"
mkdir -p "$WORK/script/reports"

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
started dbus-daemon /dev/null test -S "$WORK/bus"
"$RELEASE/examples/systemd_standin" "unix:path=$WORK/bus" >"$WORK/standin.log" 2>&1 &
STANDIN_PID=$!
started "the systemd stand-in" "$WORK/standin.log" grep -q ready "$WORK/standin.log"
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

SIZE_RUNS=${SIZE_RUNS:-5}
echo "== peak RSS of a whole run by report size (max of $SIZE_RUNS each) =="
# A report server of static files: the ticket, and the report under get_report/<ticket>.
FILES_PORT=$((PORT + 1))
CAP=$((64 * 1024 * 1024))
mkdir -p "$WORK/files/get_report"
# Rows of 24 bytes after the header, the last one longer: the body is exactly the cap.
python3 - "$CAP" "$WORK/files/get_report/big_0" <<'PY'
import sys
cap, path = int(sys.argv[1]), sys.argv[2]
header, row = b"timestamp,data\n", b"2026-01-01T00:00:00Z,42\n"
rows, rest = divmod(cap - len(header), len(row))
last = b"0," + b"x" * (len(row) + rest - 3) + b"\n"
with open(path, "wb") as f:
    f.write(header + row * (rows - 1) + last)
PY
[ "$(stat -c %s "$WORK/files/get_report/big_0")" = "$CAP" ] || { echo "the large report is not $CAP bytes" >&2; exit 1; }
printf 'timestamp,data\n2026-01-01T00:00:00Z,42\n' >"$WORK/files/get_report/small_0"
echo small_0 >"$WORK/files/request_report"
python3 -m http.server --bind 127.0.0.1 --directory "$WORK/files" "$FILES_PORT" >"$WORK/files.log" 2>&1 &
FILES_PID=$!
started "the static report server" "$WORK/files.log" curl -sf "http://127.0.0.1:$FILES_PORT/request_report"
collector_config "$WORK/sized" "http://127.0.0.1:$FILES_PORT"
echo "keep-reports = 1" >>"$WORK/sized/config.toml"
# peak_rss_of TICKET: the largest peak RSS of SIZE_RUNS runs that each collect TICKET's report.
peak_rss_of() {
    echo "$1" >"$WORK/files/request_report"
    peak=0
    for _ in $(seq "$SIZE_RUNS"); do
        kb=$(/usr/bin/time -f %M "$COLLECTOR" --config "$WORK/sized/config.toml" 2>&1 >/dev/null | tail -1)
        jq -e '.last_run.outcome == "collected"' "$WORK/sized/last-run.json" >/dev/null || {
            echo "a run did not collect the report of $1:" >&2
            cat "$WORK/sized/last-run.json" >&2
            exit 1
        }
        [ "$kb" -gt "$peak" ] && peak=$kb
    done
    echo "$peak"
}
SMALL_RSS=$(peak_rss_of small_0)
LARGE_RSS=$(peak_rss_of big_0)
cmp -s "$WORK/files/get_report/big_0" "$(jq -r .last_collection.report "$WORK/sized/last-run.json")" || {
    echo "the large report was not saved whole" >&2
    exit 1
}
kill "$FILES_PID" 2>/dev/null || true
wait "$FILES_PID" 2>/dev/null || true
FILES_PID=

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
printf 'whole run, median:    report-collector %.2f ms, flock+curl script %.2f ms, ratio %sx (target <= 0.25x: %s)\n' \
    "$C" "$S" "$RATIO" "$(verdict "$RATIO" 0.25)"
printf 'peak RSS, whole run:  %s KiB = %.2f MiB (target <= 6.5 MiB: %s); one curl call: %s KiB\n' \
    "$RSS" "$(echo "$RSS" | awk '{ print $1 / 1024 }')" "$(verdict "$RSS" 6656)" "$CURL_RSS"
printf 'peak RSS, asking the bus: %s KiB = %.2f MiB (target <= 7 MiB: %s)\n' \
    "$BUS_RSS" "$(echo "$BUS_RSS" | awk '{ print $1 / 1024 }')" "$(verdict "$BUS_RSS" 7168)"
printf 'peak RSS by report size: small %s KiB = %.2f MiB, at max-report-size (64 MiB) %s KiB = %.2f MiB; %.2f MiB more (target <= 4 MiB: %s)\n' \
    "$SMALL_RSS" "$(echo "$SMALL_RSS" | awk '{ print $1 / 1024 }')" \
    "$LARGE_RSS" "$(echo "$LARGE_RSS" | awk '{ print $1 / 1024 }')" \
    "$(echo "$LARGE_RSS $SMALL_RSS" | awk '{ print ($1 - $2) / 1024 }')" \
    "$(verdict "$((LARGE_RSS - SMALL_RSS))" 4096)"
printf 'forbid skip, median:  %.2f ms exec to exit (target <= 5 ms: %s)\n' "$K" "$(verdict "$K" 5)"
