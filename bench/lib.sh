# shellcheck shell=sh
# What the benchmarks under bench/ share (sourced, after ROOT is set): installing what is
# missing, where the release build is, waiting for a helper, a report-apis that answers at once,
# a collector's configuration, and a median.

# need COMMAND PACKAGE: installs PACKAGE (apt) when COMMAND is missing.
need() {
    command -v "$1" >/dev/null 2>&1 || {
        echo "installing $2 ..." >&2
        apt-get install -y "$2" >/dev/null
    }
}

# The release build's directory: cargo's, which CARGO_TARGET_DIR moves.
RELEASE=${CARGO_TARGET_DIR:-$ROOT/target}/release

# started WHAT LOG CMD...: waits up to 5 s until CMD... succeeds; else prints "WHAT did not
# start:" and LOG, and exits.
started() {
    what=$1 log=$2
    shift 2
    i=0
    until "$@" >/dev/null 2>&1; do
        i=$((i + 1))
        [ $i -lt 100 ] || { echo "$what did not start:" >&2; cat "$log" >&2; exit 1; }
        sleep 0.05
    done
}

# fast_report_apis DIR PORT: starts the release report-apis on 127.0.0.1:PORT with every report
# ready at once and no heavy load (its config and log in DIR), and waits until it answers; sets
# SERVER_PID, which the caller's cleanup stops.
fast_report_apis() {
    cat >"$1/apis.toml" <<EOF
listen = "127.0.0.1:$2"
[heavy-load]
period = "0s"
[report]
generation-time = "0s"
[fence]
state-file = "$1/fence.json"
EOF
    "$RELEASE/report-apis" --config "$1/apis.toml" >"$1/apis.log" 2>&1 &
    # shellcheck disable=SC2034 # the caller's cleanup stops it
    SERVER_PID=$!
    started report-apis "$1/apis.log" curl -sf "http://127.0.0.1:$2/healthz"
}

# collector_config DIR URL: DIR/config.toml for a collector of the report server at URL whose
# lock, state and reports are all under DIR; a caller appends what differs (the lock backend).
collector_config() {
    mkdir -p "$1"
    cat >"$1/config.toml" <<EOF
server-url = "$2"
lock-file = "$1/collector.lock"
report-dir = "$1/reports"
state-file = "$1/last-run.json"
EOF
}

# median: the median of the numbers on stdin, one a line.
median() {
    sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
