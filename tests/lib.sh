# shellcheck shell=bash
# What every test and demo script needs, in one place: the root check, clean-ups that run on
# exit and on Ctrl-C, a work folder, timings, the .deb build, and the PASS/FAIL/NOTE lines with
# their summary. Sourced by tests/run.sh, tests/docker.sh, the box scenario and scripts/.
#
# Every check prints one line starting with PASS or FAIL, also appended to $RESULTS when it is
# set, so that checks made in parallel processes (one per box) are counted once by summary.

if [[ -n ${_TESTS_LIB_SOURCED:-} ]]; then
    return 0
fi
_TESTS_LIB_SOURCED=1

TESTS_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CARGO_DEB_VERSION=3.8.0
# The version the boxes upgrade to: higher than any the workspace builds.
DEB_NEXT_VERSION=0.1.1-1

RESULTS=${RESULTS:-}
# The label in front of every line: the box's name, or "host".
TEST_LABEL=${TEST_LABEL:-host}

# --- the root check, clean-ups, the work folder ---------------------------------------------

# require_root WHY: exits 2 with a sentence naming this script and WHY unless run as root.
require_root() {
    if [[ $EUID -ne 0 ]]; then
        echo "${0#"$TESTS_REPO"/} $1: run it as root (sudo)." >&2
        exit 2
    fi
}

_ON_EXIT=()

# on_exit CMD [ARG...]: runs CMD when the script ends, however it ends (normally, on an error,
# on Ctrl-C or SIGTERM); the last registered runs first, as each undoes an earlier step.
on_exit() {
    _ON_EXIT+=("$(printf '%q ' "$@")")
}

_run_on_exit() {
    local i
    # A second Ctrl-C must not cut the clean-up short: it is what leaves the host as it was.
    trap '' INT TERM
    for ((i = ${#_ON_EXIT[@]} - 1; i >= 0; i--)); do
        eval "${_ON_EXIT[i]}" || true
    done
    _ON_EXIT=()
}
trap _run_on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# workdir_init NAME: sets BOX_WORKDIR to a fresh folder for this run's logs, box roots and
# packages, removed at exit unless KEEP_WORKDIR is set.
workdir_init() {
    BOX_WORKDIR=/var/tmp/report-collector-tests/$1-$$
    export BOX_WORKDIR
    mkdir -p "$BOX_WORKDIR"
    if [[ -z ${KEEP_WORKDIR:-} ]]; then
        on_exit _workdir_remove
    else
        on_exit echo "logs kept in $BOX_WORKDIR"
    fi
}

_workdir_remove() {
    rm -rf "$BOX_WORKDIR"
    rmdir /var/tmp/report-collector-tests 2>/dev/null || true
}

# --- timing ----------------------------------------------------------------------------------

TIMINGS=()

now() { date +%s.%N; }
# elapsed T0 T1 [DECIMALS]: seconds from T0 to T1, whole unless DECIMALS says otherwise.
elapsed() { awk -v a="$1" -v b="$2" -v d="${3:-0}" 'BEGIN { printf "%.*f", d, b - a }'; }

# timing LABEL T0: records "LABEL: N s" since T0 (from now) for timings_print.
timing() {
    TIMINGS+=("$1: $(elapsed "$2" "$(now)") s")
}

timings_print() {
    if ((${#TIMINGS[@]})); then
        printf 'time: %s\n' "${TIMINGS[@]}"
    fi
}

# --- results ---------------------------------------------------------------------------------

# results_init: the results file of this run, in BOX_WORKDIR; box processes inherit it.
results_init() {
    RESULTS=$BOX_WORKDIR/results
    export RESULTS
    : >"$RESULTS"
}

_result() {
    local line="$1 [$TEST_LABEL] $2"
    echo "$line"
    if [[ -n $RESULTS ]]; then echo "$line" >>"$RESULTS"; fi
}

pass() { _result PASS "$*"; }
fail() { _result FAIL "$*"; }

# A NOTE line: something outside the project went wrong and the check was made another way
# (the line says how). Listed again above the summary, so it is not lost among the PASS lines.
note() { _result NOTE "$*"; }

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

# summary_and_exit: for a run that cannot go on (its FAIL line says why).
summary_and_exit() {
    summary || true
    exit 1
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

# --- waiting ---------------------------------------------------------------------------------

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

# --- the packages ----------------------------------------------------------------------------

# cargo_deb_ready: installs cargo-deb $CARGO_DEB_VERSION unless that version is there.
cargo_deb_ready() {
    export PATH=$HOME/.cargo/bin:$PATH
    if [[ $(cargo deb --version 2>/dev/null) != "cargo-deb $CARGO_DEB_VERSION" ]]; then
        echo "installing cargo-deb $CARGO_DEB_VERSION" >&2
        cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked
    fi
}

# debs_build DIR APIS COLLECTOR [APIS_NEXT COLLECTOR_NEXT]: builds the two packages of this
# tree into DIR and sets the variables named APIS and COLLECTOR to their paths; with two more
# names, also the same packages at $DEB_NEXT_VERSION (in DIR/next), for the upgrade in the
# boxes. The names must not be this function's own locals (dir, log, path, crate, out*).
# Made in a folder of the run's own, never target/debian, which `make deb` or another
# run may be rewriting. The log is DIR/cargo-deb.log; its end is printed when a build fails.
debs_build() {
    local dir=$1 out_apis=$2 out_collector=$3 out_apis_next=${4:-} out_collector_next=${5:-}
    local log=$1/cargo-deb.log path
    mkdir -p "$dir"
    cargo_deb_ready >>"$log" 2>&1 || {
        echo "could not install cargo-deb $CARGO_DEB_VERSION; the end of $log follows" >&2
        tail -n 30 "$log" >&2
        return 1
    }
    # cargo deb prints the path of the package it made as its last line.
    _deb() {
        local crate=$1 out=$2
        shift 2
        if ! path=$(cd "$TESTS_REPO" && cargo deb -p "$crate" "$@" 2>>"$log" | tail -n 1) ||
            [[ ! -f $path ]]; then
            echo "cargo deb -p $crate $* failed; the end of $log follows" >&2
            tail -n 30 "$log" >&2
            return 1
        fi
        printf -v "$out" '%s' "$path"
    }
    _deb report-apis "$out_apis" -o "$dir/" &&
        _deb report-collector "$out_collector" -o "$dir/" || return 1
    if [[ -n $out_apis_next ]]; then
        mkdir -p "$dir/next"
        _deb report-apis "$out_apis_next" --no-build --deb-version "$DEB_NEXT_VERSION" -o "$dir/next/" &&
            _deb report-collector "$out_collector_next" --no-build --deb-version "$DEB_NEXT_VERSION" \
                -o "$dir/next/" || return 1
    fi
}
