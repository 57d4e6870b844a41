#!/usr/bin/env bash
# Builds the fuzz targets and runs each in turn, one PASS or FAIL line a target with its
# executions and executions per second; a crash fails the run and prints the input that
# crashed and how to run it again. `make fuzz` and `make test` call it (fuzz/README.md says why
# it builds with `--sanitizer none` on stable Rust).
#
#   fuzz/run.sh [TARGET...]               every target (or those named), FUZZ_SECONDS each (300)
#   FUZZ_PROFILE=dev FUZZ_SECONDS=45 FUZZ_FRESH=1 fuzz/run.sh
#                                         `make fuzz-test`: unoptimised, 45 s each, each
#                                         target from its seeds alone
#
# Each target starts from its committed seeds (fuzz/seeds/TARGET/), copied into a scratch
# corpus (fuzz/target/corpus/TARGET/) that keeps what earlier runs found; with FUZZ_FRESH=1, into
# a fresh one each time. Crashing inputs go to fuzz/artifacts/TARGET/. None of it is committed.
set -euo pipefail

FUZZ_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../tests/lib.sh
source "$FUZZ_DIR/../tests/lib.sh"
TEST_LABEL=fuzz

FUZZ_SECONDS=${FUZZ_SECONDS:-300}
FUZZ_FRESH=${FUZZ_FRESH:-}
# An input that takes longer than this is a hang, reported like a crash: every parser here
# answers in microseconds.
FUZZ_TIMEOUT=10
# Coverage-guided without a sanitizer: stable rustc has no -Zsanitizer (README.md).
BUILD_FLAGS=(--sanitizer none)
# release (optimised, debug assertions on: cargo-fuzz's default) for long runs; dev
# (unoptimised) builds in about half the time and runs fewer inputs a second: `make test`'s
# bounded step uses it.
FUZZ_PROFILE=${FUZZ_PROFILE:-release}
case $FUZZ_PROFILE in
release) ;;
dev) BUILD_FLAGS+=(--dev) ;;
*)
    echo "FUZZ_PROFILE is release or dev, not $FUZZ_PROFILE" >&2
    exit 2
    ;;
esac

export PATH=$HOME/.cargo/bin:$PATH
# The targets build with their own flags into fuzz/target; a shared target dir would rebuild
# everything each time it alternates with the workspace's builds.
unset CARGO_TARGET_DIR

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: run scripts/install-deps.sh as root (or make deps)" >&2
    exit 2
fi

cd "$FUZZ_DIR"
if (($#)); then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

RESULTS=$(mktemp)
on_exit rm -f "$RESULTS"

t0=$(now)
echo "building ${#targets[@]} fuzz targets (fuzz/target, $FUZZ_PROFILE)"
if ! cargo fuzz build "${BUILD_FLAGS[@]}" 2>&1 | grep -E '^(warning|error)|Finished'; then
    fail "the fuzz targets build"
    summary_and_exit
fi
build_seconds=$(elapsed "$t0" "$(now)")
info "built in $build_seconds s"

seconds=$FUZZ_SECONDS
info "$seconds s a target"

mkdir -p target/logs
for target in "${targets[@]}"; do
    corpus=target/corpus/$target
    if [[ -n $FUZZ_FRESH ]]; then
        # From the seeds alone: reading back a corpus grown by long runs (ten thousand inputs
        # for a configuration file) would take most of a short run.
        corpus=target/corpus-fresh/$target
        rm -rf "$corpus"
    fi
    log=target/logs/$target.log
    mkdir -p "$corpus"
    # Again each run: a seed that links to a shipped file follows its changes.
    cp seeds/"$target"/* "$corpus"/
    if cargo fuzz run "${BUILD_FLAGS[@]}" "$target" "$corpus" -- \
        -max_total_time="$seconds" -timeout="$FUZZ_TIMEOUT" >"$log" 2>&1; then
        # "Done 10862332 runs in 9 second(s)"
        read -r runs took < <(awk '/^Done [0-9]+ runs in/ { print $2, $5 }' "$log")
        pass "$target: $runs runs in $took s ($((runs / (took > 0 ? took : 1))) exec/s)," \
            "corpus of $(find "$corpus" -type f | wc -l) inputs, no crash"
    else
        artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
        fail "$target: crashed on ${artifact:-an input (see $FUZZ_DIR/$log)}"
        # The panic and its message (the line after), libFuzzer's verdict, the input.
        grep -E -A1 'panicked at' "$log" | head -n 2 | show
        grep -E '^SUMMARY|^Base64' "$log" | head -n 2 | show
        if [[ -n $artifact ]]; then
            info "run it again: cd fuzz && cargo fuzz run ${BUILD_FLAGS[*]} $target $artifact"
        fi
    fi
done

info "all in $(elapsed "$t0" "$(now)") s (build $build_seconds s)"
summary
