#!/usr/bin/env bash
# Runs the bounded fuzz step and the build with the declared rust-version beside other tests:
# `tests/beside.sh CMD...` starts `make fuzz-test msrv-test` at the lowest CPU priority, with
# one build job, runs CMD (the box tests, which spend most of their time waiting for boots,
# timers and the minute), waits for the fuzz step, then prints its output. It exits with CMD's status when CMD failed, else with the fuzz step's.
#
# Why beside: a cold build of the fuzz targets takes minutes of CPU (every dependency again,
# with coverage instrumentation); after the box tests it would add them all to `make test`,
# beside them it adds next to nothing (README.md gives the figures). At nice 19 it takes only
# the CPU the boxes leave, so their timing is what it is without it.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib.sh
source "$REPO/tests/lib.sh"
TEST_LABEL=fuzz

if (($# == 0)); then
    echo "usage: $0 CMD..." >&2
    exit 2
fi

# Not workdir_init: CMD would inherit its BOX_WORKDIR.
log=$(mktemp /var/tmp/report-collector-fuzz-test.XXXXXX)
on_exit rm -f "$log"
# A session of its own, so that an interrupted run stops the fuzzer and the build with it. A
# new session is also a new scheduler autogroup (kernel.sched_autogroup_enabled), and nice
# counts only within one: the group itself is niced too, or it would take half the CPU
# whatever its nice (measured: `cargo deb` beside it took 425 s instead of 192 s).
# shellcheck disable=SC2016 # $REPO is expanded by the inner shell, from its argument
setsid bash -c 'echo 19 >/proc/self/autogroup 2>/dev/null || true
    exec nice -n 19 env CARGO_BUILD_JOBS=1 make --no-print-directory -C "$1" fuzz-test msrv-test' \
    beside "$REPO" >"$log" 2>&1 &
fuzz_pid=$!
_stop_fuzz() { kill -- "-$fuzz_pid" 2>/dev/null || true; }
on_exit _stop_fuzz

code=0
"$@" || code=$?

fuzz_code=0
wait "$fuzz_pid" || fuzz_code=$?
echo
echo "== make fuzz-test msrv-test, run beside them (exit $fuzz_code)"
cat "$log"
if ((code == 0)); then
    code=$fuzz_code
fi
exit "$code"
