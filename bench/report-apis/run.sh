#!/bin/sh
# Benchmark of report-apis against a minimal axum hello-world server, on loopback, with wrk.
#
# Prints requests/s, p99 latency and the ratio to hello-world for each of:
#   /request_report            (max-pending raised so that no answer is a 503)
#   /get_report, not ready     (heavy load on for the whole run)
#   /get_report, ready         (the same ready ticket fetched again and again)
# then the peak resident memory with max-pending (10000) tickets held.
# Each endpoint is measured right after a hello-world run, and its ratio is taken against that
# run: on a machine shared with other work, adjacent runs see the same background load.
#
# Usage: bench/report-apis/run.sh            (from anywhere; about 80 s plus the build)
# Environment: DURATION (default 10s), CONNECTIONS (32), THREADS (1).
set -eu

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-1}

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
work=$(mktemp -d)
pids=""
cleanup() {
    for pid in $pids; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

need() {
    command -v "$1" >/dev/null 2>&1 && return
    echo "installing $2 (needs root and Debian's apt)..." >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null
}
need wrk wrk
need curl curl

echo "building release binaries..." >&2
cargo build --release --quiet -p report-apis --bin report-apis --example hello
bin=$root/target/release/report-apis
hello=$root/target/release/examples/hello

# start NAME COMMAND...: runs a server on a free loopback port; sets $url and $pid.
start() {
    name=$1
    shift
    "$@" >"$work/$name.log" 2>&1 &
    pid=$!
    pids="$pids $pid"
    tries=0
    until url=$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$work/$name.log" 2>/dev/null | head -n 1) \
        && [ -n "$url" ]; do
        tries=$((tries + 1))
        if [ "$tries" -gt 200 ]; then
            echo "$name did not start:" >&2
            cat "$work/$name.log" >&2
            exit 1
        fi
        sleep 0.05
    done
}

stop() {
    kill "$1"
    wait "$1" 2>/dev/null || true
}

config() { # config NAME TOML: writes a config file, prints its path
    printf '%s\n' "$2" >"$work/$1.toml"
    echo "$work/$1.toml"
}

# measure LABEL URL: one wrk run; appends "label rps p99 non2xx" to the results.
measure() {
    echo "  $1: $2" >&2
    out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$2")
    rps=$(printf '%s\n' "$out" | awk '/^Requests\/sec:/ {print $2}')
    p99=$(printf '%s\n' "$out" | awk '$1 == "99%" {print $2}')
    bad=$(printf '%s\n' "$out" | awk '/Non-2xx or 3xx responses:/ {print $NF}')
    errors=$(printf '%s\n' "$out" | awk '/Socket errors:/ {print}')
    echo "$1 $rps $p99 ${bad:-0}" >>"$work/results"
    if [ -n "$errors" ]; then echo "  $1: $errors" >&2; fi
}

kib() { # kib PID FIELD: a /proc/PID/status memory field (VmHWM, VmRSS) in KiB
    awk -v field="$2:" '$1 == field {print $2}' "/proc/$1/status"
}

metric() { # metric URL NAME
    curl -sf "$1/metrics" | awk -v name="$2" '$1 == name {print $2}'
}

echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency, $(nproc) cores, loopback" >&2

# The yardstick, kept running for the whole benchmark.
start hello "$hello" 127.0.0.1:0
hello_url=$url
hello_pid=$pid

# 2. /request_report with room for every ticket the run can issue.
cfg=$(config issue '[limits]
max-pending = 20000000
ticket-ttl = "1h"')
start issue "$bin" --config "$cfg" --listen 127.0.0.1:0
measure hello "$hello_url/"
measure request_report "$url/request_report"
issued=$(metric "$url" report_apis_tickets_issued_total)
stop "$pid"

# 3. /get_report while heavy load is on: "report is not ready" every time.
cfg=$(config heavy '[heavy-load]
initially-on = true
period = "1h"')
start heavy "$bin" --config "$cfg" --listen 127.0.0.1:0
ticket=$(curl -sf "$url/request_report")
measure hello "$hello_url/"
measure get_report_not_ready "$url/get_report/$ticket"
stop "$pid"

# 4. /get_report of a ready ticket: the CSV every time (a fetched report stays until its ttl).
cfg=$(config ready '[report]
generation-time = "1ms"
[limits]
ticket-ttl = "1h"')
start ready "$bin" --config "$cfg" --listen 127.0.0.1:0
ticket=$(curl -sf "$url/request_report")
sleep 0.1
curl -sf "$url/get_report/$ticket" | head -n 1 | grep -q '^timestamp,data$'
measure hello "$hello_url/"
measure get_report_ready "$url/get_report/$ticket"
stop "$pid"

# 5. Memory with the default max-pending (10000) tickets held: fill to the cap, and keep
#    hammering it (the 503s past the cap must not grow memory).
start full "$bin" --listen 127.0.0.1:0
echo "report-apis: filling max-pending tickets" >&2
wrk -t1 -c"$CONNECTIONS" -d3s "$url/request_report" >/dev/null
held=$(metric "$url" report_apis_tickets_pending)
rejected=$(metric "$url" report_apis_tickets_rejected_total)
full_hwm=$(kib "$pid" VmHWM)
full_rss=$(kib "$pid" VmRSS)
stop "$pid"
hello_hwm=$(kib "$hello_pid" VmHWM)

echo
echo "report-apis benchmark: wrk -t$THREADS -c$CONNECTIONS -d$DURATION on loopback, $(nproc) cores"
awk '
    BEGIN {
        printf "%-22s %11s %9s   %-22s %8s\n", "endpoint", "requests/s", "p99", "hello-world just before", "ratio"
    }
    $1 == "hello" { hello_rps = $2; hello_p99 = $3; next }
    {
        printf "%-22s %11.0f %9s   %11.0f/s %9s  %7.2fx", $1, $2, $3, hello_rps, hello_p99, $2 / hello_rps
        if ($4 != 0) printf "  (%s non-2xx!)", $4
        printf "\n"
    }
' "$work/results"
echo "tickets issued during the /request_report run: ${issued:-?} (no 503: max-pending 20000000)"
echo "hello-world memory: peak RSS $((hello_hwm / 1024)) MiB (VmHWM $hello_hwm KiB)"
echo "report-apis memory with ${held:-?} tickets held (max-pending 10000; ${rejected:-?} requests refused with 503 past the cap):"
echo "  peak RSS $((full_hwm / 1024)) MiB (VmHWM $full_hwm KiB), RSS now $((full_rss / 1024)) MiB"
