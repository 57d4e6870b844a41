#!/bin/sh
# Benchmark of report-apis against a minimal axum hello-world server, on loopback, with wrk.
#
# Prints requests/s, p99 latency and the ratio to hello-world for each of:
#   /request_report            (max-pending raised so that no answer is a 503)
#   /get_report, not ready     (heavy load on for the whole run)
#   /get_report, ready         (the same ready ticket fetched again and again)
# then the peak resident memory with max-pending (10000) tickets held, and the resident memory
# with FLOOD connections held open, idle or each with half a request head (8 KiB of the 16 KiB
# allowed) sent and never finished, or each sending 400 KiB of one (refused with 431).
# Each endpoint is measured right after a hello-world run, and its ratio is taken against that
# run: on a machine shared with other work, adjacent runs see the same background load. The
# rounds repeat this, and the median ratio is reported, so one disturbed pair does not decide.
#
# Usage: bench/report-apis/run.sh            (from anywhere; about 100 s plus the build)
# Environment: DURATION (default 5s per run), ROUNDS (3), CONNECTIONS (32), THREADS (1),
# FLOOD (500).
set -eu

DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-1}
FLOOD=${FLOOD:-500}

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
cargo build --release --quiet -p report-apis --bin report-apis --example hello --example flood
bin=$root/target/release/report-apis
hello=$root/target/release/examples/hello
flood=$root/target/release/examples/flood

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

config() { # config NAME TOML: writes a config file (the fence's marks kept in $work), prints its path
    printf '%s\n[fence]\nstate-file = "%s"\n' "$2" "$work/$1-fence.json" >"$work/$1.toml"
    echo "$work/$1.toml"
}

# measure LABEL URL [HEADER]: one wrk run (sending HEADER with every request, if given); appends
# "label rps p99 non2xx" to the results.
measure() {
    if [ -n "${3:-}" ]; then
        out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -H "$3" "$2")
    else
        out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$2")
    fi
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


# The servers, all started up front and idle between their runs.
start hello "$hello" 127.0.0.1:0
hello_url=$url
hello_pid=$pid

# /request_report with room for every ticket a run can issue: a fresh server for each round,
# with max-pending at the top of its range and tickets that outlive the run (so that no run
# also pays for expiring them).
issue_cfg=$(config issue '[limits]
max-pending = 1000000
ticket-ttl = "1h"')
issued=0
issue_pid=""
# fresh_issue_server ROUND: stops the previous one (counting what it issued), starts another.
fresh_issue_server() {
    if [ -n "$issue_pid" ]; then
        issued=$((issued + $(metric "$issue_url" report_apis_tickets_issued_total)))
        stop "$issue_pid"
    fi
    start "issue$1" "$bin" --config "$issue_cfg" --listen 127.0.0.1:0
    issue_url=$url
    issue_pid=$pid
}

# /get_report while heavy load is on: "report is not ready" every time.
cfg=$(config heavy '[heavy-load]
initially-on = true
period = "1h"')
start heavy "$bin" --config "$cfg" --listen 127.0.0.1:0
not_ready_url=$url/get_report/$(curl -sf "$url/request_report")

# /get_report of a ready ticket: the CSV every time (a fetched report stays until its ttl).
cfg=$(config ready '[report]
generation-time = "1ms"
[limits]
ticket-ttl = "1h"')
start ready "$bin" --config "$cfg" --listen 127.0.0.1:0
ready_url=$url/get_report/$(curl -sf "$url/request_report")
sleep 0.1
curl -sf "$ready_url" | head -n 1 | grep -q '^timestamp,data$'

fence_header='Report-Fence: lock=bench; id=0123456789abcdef0123456789abcdef; token=1.1'
echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency, $ROUNDS rounds, $(nproc) cores, loopback" >&2
round=1
while [ "$round" -le "$ROUNDS" ]; do
    echo "round $round of $ROUNDS" >&2
    fresh_issue_server "$round"
    measure hello "$hello_url/"
    measure request_report "$issue_url/request_report"
    measure hello "$hello_url/"
    measure get_report_not_ready "$not_ready_url"
    measure hello "$hello_url/"
    measure get_report_ready "$ready_url"
    # The collector's path: every request carries its lock's fence. The ticket requests of one
    # lock get its pending ticket back; a ready report is served after the mark is checked.
    measure hello "$hello_url/"
    measure request_report_fenced "$issue_url/request_report" "$fence_header"
    measure hello "$hello_url/"
    measure get_report_ready_fenced "$ready_url" "$fence_header"
    round=$((round + 1))
done
issued=$((issued + $(metric "$issue_url" report_apis_tickets_issued_total)))
stop "$issue_pid"
hello_hwm=$(kib "$hello_pid" VmHWM)

# Memory with the default max-pending (10000) tickets held: fill to the cap, and keep
# hammering it (the 503s past the cap must not grow memory).
start full "$bin" --config "$(config full '')" --listen 127.0.0.1:0
echo "filling max-pending tickets" >&2
wrk -t1 -c"$CONNECTIONS" -d3s "$url/request_report" >/dev/null
held=$(metric "$url" report_apis_tickets_pending)
rejected=$(metric "$url" report_apis_tickets_rejected_total)
full_hwm=$(kib "$pid" VmHWM)
full_rss=$(kib "$pid" VmRSS)

# Memory with FLOOD connections held: idle, then each with half a request head. The header
# timeout is raised so that the server holds them while measured, and max-connections leaves room for
# the scrape of /metrics.
# flooded KIND BYTES: starts a server and the flood; sets ${KIND}_before and ${KIND}_held (KiB).
flooded() {
    cfg=$(config "flood-$1" "[limits]
max-connections = $((FLOOD + 8))
header-timeout = \"5m\"")
    start "flood-$1" "$bin" --config "$cfg" --listen 127.0.0.1:0
    server=$pid
    eval "$1_before=$(kib "$server" VmRSS)"
    "$flood" "${url#http://}" "$FLOOD" "$2" >"$work/flood-$1.out" &
    flooder=$!
    pids="$pids $flooder"
    tries=0
    until grep -q holding "$work/flood-$1.out" 2>/dev/null; do
        tries=$((tries + 1))
        if [ "$tries" -gt 400 ]; then echo "the $1 flood did not start" >&2; exit 1; fi
        sleep 0.05
    done
    sleep 1
    # shellcheck disable=SC2034 # read by the eval below
    open=$(metric "$url" report_apis_connections_open)
    eval "$1_held=$(kib "$server" VmRSS)"
    eval "$1_open=\${open:-?}"
    stop "$flooder"
    stop "$server"
}
# shellcheck disable=SC3045 # dash, /bin/sh here, has ulimit -n
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((FLOOD * 2 + 200)) ]; then
    ulimit -n $((FLOOD * 2 + 200)) 2>/dev/null || true
fi
echo "flooding with $FLOOD idle connections, $FLOOD half request heads, $FLOOD oversized ones" >&2
flooded idle 0
flooded half 8192
flooded huge 409600

echo
echo "report-apis benchmark: wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $ROUNDS rounds, loopback, $(nproc) cores"
echo "(each endpoint run right after a hello-world run; ratio = endpoint / that hello-world run)"
awk '
    BEGIN {
        printf "%-22s %5s %11s %9s %13s %9s %7s\n", "endpoint", "round", "requests/s", "p99", "hello req/s", "hello p99", "ratio"
    }
    $1 == "hello" { hello_rps = $2; hello_p99 = $3; next }
    {
        n[$1]++
        printf "%-22s %5d %11.0f %9s %13.0f %9s %6.2fx", $1, n[$1], $2, $3, hello_rps, hello_p99, $2 / hello_rps
        if ($4 != 0) printf "  (%s non-2xx!)", $4
        printf "\n"
        ratios[$1] = ratios[$1] " " $2 / hello_rps
    }
    END {
        print ""
        for (name in ratios) {
            count = split(ratios[name], r, " ")
            # median by insertion sort: a disturbed pair does not decide the result
            for (i = 2; i <= count; i++) { v = r[i]; j = i - 1; while (j >= 1 && r[j] > v) { r[j + 1] = r[j]; j-- } r[j + 1] = v }
            median = (count % 2) ? r[(count + 1) / 2] : (r[count / 2] + r[count / 2 + 1]) / 2
            printf "%-22s median ratio vs hello-world: %.2fx (target >= 0.80x)\n", name, median
        }
    }
' "$work/results"
echo "tickets issued by the /request_report runs: ${issued:-?}, none refused (a fresh server per round, max-pending 1000000)"
echo "hello-world memory: peak RSS $((hello_hwm / 1024)) MiB (VmHWM $hello_hwm KiB)"
echo "report-apis memory with ${held:-?} tickets held (max-pending 10000; ${rejected:-?} requests refused with 503 past the cap):"
echo "  peak RSS $((full_hwm / 1024)) MiB (VmHWM $full_hwm KiB), RSS now $((full_rss / 1024)) MiB (target <= 32 MiB)"
echo "report-apis memory under a flood of $FLOOD connections (max-connections $((FLOOD + 8)), header-timeout 5m):"
mib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }
# shellcheck disable=SC2154 # idle_*, half_* and huge_* are set by flooded's eval
echo "  idle:                   RSS $(mib "$idle_before") before, $(mib "$idle_held") with them held ($idle_open open)"
# shellcheck disable=SC2154
echo "  half request head each: RSS $(mib "$half_before") before, $(mib "$half_held") with 8 KiB each held ($half_open open)"
# shellcheck disable=SC2154
echo "  400 KiB head each:      RSS $(mib "$huge_before") before, $(mib "$huge_held") after ($huge_open open: 431, closed)"
