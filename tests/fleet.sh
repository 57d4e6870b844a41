#!/usr/bin/env bash
# Fault injection across hosts: builds fleet-faults, report-collector and report-apis (release),
# or takes the binaries given, and runs fleet-faults with them. Arguments go to fleet-faults:
#
#   tests/fleet.sh                      # 50 rounds, a seed from the clock
#   tests/fleet.sh --rounds 500         # a longer soak
#   tests/fleet.sh --seed 1796194200    # one run played again
#   tests/fleet.sh --self-test          # the namespaces, the cluster and the faults' tools only
#
# FLEET_FAULTS, COLLECTOR and APIS name prebuilt binaries (all three skip the build);
# CARGO_TARGET_DIR is honoured for the build.
set -euo pipefail

# shellcheck source=tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_root "creates network namespaces, iptables rules and a PostgreSQL cluster"

target=${CARGO_TARGET_DIR:-$TESTS_REPO/target}
if [[ -z ${FLEET_FAULTS:-} || -z ${COLLECTOR:-} || -z ${APIS:-} ]]; then
    t0=$(now)
    (cd "$TESTS_REPO" && cargo build --release -p fleet -p report-collector -p report-apis)
    timing build "$t0"
fi
FLEET_FAULTS=${FLEET_FAULTS:-$target/release/fleet-faults}
COLLECTOR=${COLLECTOR:-$target/release/report-collector}
APIS=${APIS:-$target/release/report-apis}

for bin in "$FLEET_FAULTS" "$COLLECTOR" "$APIS"; do
    if [[ ! -x $bin ]]; then
        echo "${0##*/}: $bin is not an executable" >&2
        exit 2
    fi
done

# The newest PostgreSQL installed (15 on Debian 12, 17 on Debian 13), unless --pg-bin is given.
pg_bin=()
if [[ " $* " != *" --pg-bin "* ]]; then
    initdb=$(find /usr/lib/postgresql -maxdepth 3 -path '*/bin/initdb' 2>/dev/null | sort -V | tail -n 1)
    if [[ -n $initdb ]]; then
        pg_bin=(--pg-bin "$(dirname "$initdb")")
    fi
fi

# fleet-faults cleans up after itself however it ends (its namespaces, processes, cluster and
# work directory); what it printed is the result, its exit status the verdict.
t0=$(now)
status=0
"$FLEET_FAULTS" --collector "$COLLECTOR" --apis "$APIS" "${pg_bin[@]}" "$@" || status=$?
timing fleet-faults "$t0"
timings_print
exit "$status"
