# shellcheck shell=bash
# Result lines and small waiting helpers shared by tests/run.sh and the box scenario.
#
# Every check prints one line starting with PASS or FAIL; with $RESULTS set (tests/run.sh sets
# it) the line is also appended there, so checks made in parallel processes (one per box) are
# counted once at the end. A caller that keeps its own count (tests/docker.sh) defines pass and
# fail before sourcing this file, and keeps them.

RESULTS=${RESULTS:-}

# The label in front of every line: the box's name, or "host".
TEST_LABEL=${TEST_LABEL:-host}

if ! declare -F pass >/dev/null; then
    pass() {
        local line="PASS [$TEST_LABEL] $*"
        echo "$line"
        if [[ -n $RESULTS ]]; then echo "$line" >>"$RESULTS"; fi
    }
fi

if ! declare -F fail >/dev/null; then
    fail() {
        local line="FAIL [$TEST_LABEL] $*"
        echo "$line"
        if [[ -n $RESULTS ]]; then echo "$line" >>"$RESULTS"; fi
    }
fi

# A NOTE line: something outside the project went wrong and the check was made another way
# (the line says how). Listed again above the summary, so it is not lost among the PASS lines.
note() {
    local line="NOTE [$TEST_LABEL] $*"
    echo "$line"
    if [[ -n $RESULTS ]]; then echo "$line" >>"$RESULTS"; fi
}

info() {
    echo "     [$TEST_LABEL] $*"
}

# Prints indented lines of command output (read from stdin) under a check.
show() {
    sed "s/^/       [$TEST_LABEL] | /"
}

# check DESCRIPTION CMD...: PASS when CMD succeeds.
check() {
    local description=$1
    shift
    if "$@" >/dev/null; then
        pass "$description"
    else
        fail "$description"
    fi
}

# wait_until SECONDS CMD...: polls CMD every 0.2 s until it succeeds; fails after SECONDS.
wait_until() {
    local timeout=$1 deadline
    shift
    deadline=$(($(date +%s) + timeout))
    while ! "$@"; do
        if (($(date +%s) >= deadline)); then
            return 1
        fi
        sleep 0.2
    done
}

# sleep_until EPOCH: sleeps until the wall clock reaches EPOCH (seconds, may be fractional).
sleep_until() {
    local delay
    delay=$(awk -v t="$1" -v now="$(date +%s.%N)" 'BEGIN { d = t - now; printf "%.3f", (d > 0 ? d : 0) }')
    sleep "$delay"
}

# The final line: "N passed, M failed", alone; exit status 1 when anything failed.
summary() {
    local passed failed
    passed=$(grep -c '^PASS ' "$RESULTS" || true)
    failed=$(grep -c '^FAIL ' "$RESULTS" || true)
    if grep -q '^NOTE ' "$RESULTS"; then
        echo
        echo "Notes:"
        grep '^NOTE ' "$RESULTS" | sed 's/^/  /'
    fi
    if ((failed > 0)); then
        echo
        echo "Failed checks:"
        grep '^FAIL ' "$RESULTS" | sed 's/^/  /'
    fi
    echo
    echo "$passed passed, $failed failed"
    ((failed == 0))
}
