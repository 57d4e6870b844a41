#!/usr/bin/env bash
# Builds the previous version's collector for the rolling-upgrade tests
# (report-collector/tests/collector/upgrade.rs) and prints the path of its binary.
#
# The previous version is the tree at PREVIOUS, the last release before the lock core: the same
# PostgreSQL schema and row guards, another code base. Its sources come from this clone's
# history (git archive), and it is built in the workspace's target directory after the tests'
# own build (`cargo test --workspace --no-run`), so it reuses their dependencies (about 30 s;
# alone, a cold build takes minutes). The binary is kept under target/previous/, and a second
# call only prints its path.
#
# Building there also links the previous binary as target/debug/report-collector for a moment,
# so the script ends with `cargo test --workspace --no-run` again, which links this version's
# back (cargo links a fresh target again, rebuilding nothing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PREVIOUS=e3333e3267f373c5f2853c6e5ca96695846b3b67
target=${CARGO_TARGET_DIR:-target}
target=$(realpath -m "$target")
home=$target/previous/$PREVIOUS
binary=$home/report-collector

if [[ -x $binary ]]; then
    echo "$binary"
    exit 0
fi
if ! git cat-file -e "$PREVIOUS^{commit}" 2>/dev/null; then
    echo "FAIL [previous] commit $PREVIOUS is not in this clone's history; fetch it (git fetch --unshallow) and run again" >&2
    exit 1
fi
CARGO_TARGET_DIR=$target cargo test --workspace --no-run >&2
echo "building the previous version's collector (commit ${PREVIOUS:0:12}) for the rolling-upgrade tests ..." >&2
rm -rf "$home"
mkdir -p "$home/src"
git archive "$PREVIOUS" | tar -x -C "$home/src"
(cd "$home/src" && CARGO_TARGET_DIR=$target cargo build --locked -q -p report-collector --bin report-collector) >&2
cp "$target/debug/report-collector" "$binary.new"
mv "$binary.new" "$binary"
rm -rf "$home/src"
CARGO_TARGET_DIR=$target cargo test --workspace --no-run --quiet >&2
echo "$binary"
