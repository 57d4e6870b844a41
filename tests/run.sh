#!/usr/bin/env bash
# The packages and units, proven: build the two .debs, hold them to lintian, check the units
# with systemd-analyze, then install them in booted Debian 12 and Debian 13 boxes
# (systemd-nspawn) and run tests/box/scenario.sh in both at once.
#
# Run as root (it boots containers). Prints one PASS/FAIL line per check and, last,
# "N passed, M failed"; exits 1 when anything failed.
# Environment:
#   BOX_RELEASES   Debian releases to boot (default "bookworm trixie"; empty: no boxes)
#   BOX_FLEET      two bookworm boxes sharing one lock in PostgreSQL, beside the others
#                  (tests/box/fleet.sh; default 1, empty: not run)
#   FLEET_ROUNDS   rounds of fault injection across hosts run beside the boxes (tests/fleet.sh;
#                  default 50, empty: not run)
#   EXPOSURE_MAX   highest `systemd-analyze security` exposure accepted (default 2.0)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

# shellcheck source=lib.sh
source "$REPO/tests/lib.sh"
# shellcheck source=box/rootfs.sh
source "$REPO/tests/box/rootfs.sh"
# shellcheck source=box/driver-nspawn.sh
source "$REPO/tests/box/driver-nspawn.sh"
# shellcheck source=box/scenario.sh
source "$REPO/tests/box/scenario.sh"
# shellcheck source=box/fleet.sh
source "$REPO/tests/box/fleet.sh"

require_root "boots containers and installs packages in them"

BOX_RELEASES=${BOX_RELEASES-bookworm trixie}
BOX_FLEET=${BOX_FLEET-1}
FLEET_ROUNDS=${FLEET_ROUNDS-50}
EXPOSURE_MAX=${EXPOSURE_MAX:-2.0}
workdir_init run
results_init

BOX_PIDS=()
declare -A BOX_RELEASE_OF
BOXES=()

# A box process may be in the middle of a minute-long sleep: its box is stopped from here,
# then the process itself is ended.
stop_boxes() {
    local pid box
    for box in "${BOXES[@]}"; do
        box_stop "$box" 2>/dev/null || true
    done
    for pid in "${BOX_PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
}
on_exit stop_boxes

# --- packages ------------------------------------------------------------------------------

# The packages, and the same at a higher version for the upgrade in the boxes.
build_debs() {
    local t0
    t0=$(now)
    if debs_build "$BOX_WORKDIR/debs" DEB_APIS DEB_COLLECTOR DEB_APIS_NEXT DEB_COLLECTOR_NEXT; then
        pass "cargo deb: $(basename "$DEB_APIS"), $(basename "$DEB_COLLECTOR")"
        pass "cargo deb --deb-version $DEB_NEXT_VERSION: $(basename "$DEB_APIS_NEXT"), $(basename "$DEB_COLLECTOR_NEXT") for the upgrade"
    else
        fail "cargo deb (log: $BOX_WORKDIR/debs/cargo-deb.log)"
        return 1
    fi
    timing "cargo deb (4 packages)" "$t0"
}

check_lintian() {
    local deb out
    for deb in "$DEB_APIS" "$DEB_COLLECTOR"; do
        # lintian leaves mldbm-elf-* files in $TMPDIR: keep them in the work folder.
        mkdir -p "$BOX_WORKDIR/lintian-tmp"
        if out=$(TMPDIR=$BOX_WORKDIR/lintian-tmp lintian --fail-on error,warning --info "$deb" 2>&1); then
            pass "lintian --fail-on error,warning $(basename "$deb")"
        else
            fail "lintian --fail-on error,warning $(basename "$deb")"
        fi
        if [[ -n $out ]]; then
            echo "$out" | show
        fi
    done
}

# The units as packaged, in a root that holds the host's own units (for the targets they name)
# and the packages' files, so that ExecStart= binaries exist.
check_units() {
    local root out unit exposure
    root=$BOX_WORKDIR/verify-root
    mkdir -p "$root/usr/lib/systemd" "$root/etc"
    cp -a /lib/systemd/system "$root/usr/lib/systemd/"
    ln -s usr/lib "$root/lib"
    ln -s usr/bin "$root/bin"
    dpkg-deb -x "$DEB_APIS" "$root"
    dpkg-deb -x "$DEB_COLLECTOR" "$root"
    if out=$(systemd-analyze verify --root="$root" --man=no \
        report-apis.service report-collector.service report-collector.timer 2>&1) && [[ -z $out ]]; then
        pass "systemd-analyze verify: the three packaged units are clean"
    else
        fail "systemd-analyze verify reports problems"
        echo "$out" | show
    fi
    for unit in report-apis.service report-collector.service; do
        out=$(systemd-analyze security --offline=yes --no-pager \
            --threshold="$(awk -v m="$EXPOSURE_MAX" 'BEGIN { print int(m * 10) }')" \
            "$root/usr/lib/systemd/system/$unit" 2>&1) || true
        exposure=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<<"$out")
        if [[ -n $exposure ]] && awk -v e="$exposure" -v m="$EXPOSURE_MAX" 'BEGIN { exit !(e <= m) }'; then
            pass "systemd-analyze security --offline=yes $unit: exposure $exposure (at most $EXPOSURE_MAX)"
        else
            fail "systemd-analyze security --offline=yes $unit: exposure ${exposure:-unknown}, want at most $EXPOSURE_MAX"
            grep '✗' <<<"$out" | show || true
        fi
        TIMINGS+=("exposure $unit: ${exposure:-?}")
    done
    rm -rf "$root"
}

check_scripts() {
    if shellcheck tests/*.sh tests/box/*.sh scripts/*.sh fuzz/*.sh bench/*.sh bench/*/*.sh .ci/run packaging/debian/*/postinst \
        packaging/debian/*/prerm packaging/debian/*/postrm >"$BOX_WORKDIR/shellcheck.log" 2>&1; then
        pass "shellcheck: test scripts, scripts/, fuzz/, bench/ and maintainer scripts"
    else
        fail "shellcheck: test scripts, scripts/, fuzz/, bench/ and maintainer scripts"
        show <"$BOX_WORKDIR/shellcheck.log"
    fi
}

# --- boxes ---------------------------------------------------------------------------------

# One box, in its own process: boot, scenario, stop. Its lines go to the terminal as they come
# and to $BOX_WORKDIR/NAME.log.
run_box() {
    local release=$1 name=$2 t0
    TEST_LABEL=$release
    t0=$(now)
    if box_start "$name" "$release"; then
        pass "booted $release under systemd-nspawn in $(elapsed "$t0" "$(now)") s ($(box_exec "$name" systemctl --version | head -n 1))"
    else
        fail "could not boot $release"
        box_stop "$name"
        return 0
    fi
    scenario_run "$name" packages "$DEB_APIS" "$DEB_COLLECTOR" "$DEB_APIS_NEXT" "$DEB_COLLECTOR_NEXT"
    box_stop "$name"
    echo "TIME [$release] box: $(elapsed "$t0" "$(now)") s"
}

# The fault-injection rounds across hosts (tests/fleet.sh), on the release binaries cargo deb
# built: network namespaces and a cluster of their own, mostly waiting on leases, so they run
# beside the boxes. One PASS or FAIL line on their verdict, their figures shown under it.
run_faults() {
    local t0 out=$BOX_WORKDIR/faults.log pid
    TEST_LABEL=faults
    t0=$(now)
    if ! (cd "$REPO" && cargo build --release -q -p fleet) >"$out" 2>&1; then
        fail "fault injection across hosts: cargo build -p fleet failed"
        show <"$out"
        return 0
    fi
    # A session of its own, so that an interrupted run.sh can end it (stop_faults): fleet-faults
    # then removes its namespaces and cluster before it exits.
    FLEET_FAULTS=$REPO/target/release/fleet-faults COLLECTOR=$REPO/target/release/report-collector \
        APIS=$REPO/target/release/report-apis setsid tests/fleet.sh --rounds "$FLEET_ROUNDS" \
        >>"$out" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$BOX_WORKDIR/faults.pid"
    if wait "$pid"; then
        pass "fault injection across hosts: $FLEET_ROUNDS rounds, no overlap, no slot or ticket collected twice, every take-over within the bound"
    else
        fail "fault injection across hosts (tests/fleet.sh --rounds $FLEET_ROUNDS): a check failed or it could not run"
    fi
    rm -f "$BOX_WORKDIR/faults.pid"
    show <"$out"
    echo "TIME [faults] $(elapsed "$t0" "$(now)") s"
}

# stop_faults: ends an interrupted fault run (SIGTERM to its session) and waits up to 30 s for
# its clean-up.
stop_faults() {
    local pid i
    pid=$(cat "$BOX_WORKDIR/faults.pid" 2>/dev/null) || return 0
    kill -TERM -- "-$pid" 2>/dev/null || return 0
    for ((i = 0; i < 150; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.2
    done
}

run_boxes() {
    local release name t0 pid
    t0=$(now)
    for release in $BOX_RELEASES; do
        name=rc-$release-$$
        BOXES+=("$name")
        # The first boot of a release debootstraps its root (35-40 s, then cached); do it here,
        # one release at a time, so that the boxes then start together.
        rootfs_cached "$release" >/dev/null
        run_box "$release" "$name" > >(tee "$BOX_WORKDIR/$release.log") 2>&1 &
        BOX_PIDS+=($!)
        BOX_RELEASE_OF[$!]=$release
    done
    if [[ -n $BOX_FLEET ]]; then
        on_exit fleet_cleanup
        rootfs_cached bookworm >/dev/null
        fleet_run "$DEB_APIS" "$DEB_COLLECTOR" > >(tee "$BOX_WORKDIR/fleet.log") 2>&1 &
        BOX_PIDS+=($!)
        BOX_RELEASE_OF[$!]=fleet
    fi
    if [[ -n $FLEET_ROUNDS ]]; then
        on_exit stop_faults
        run_faults > >(tee "$BOX_WORKDIR/faults.log.shown") 2>&1 &
        BOX_PIDS+=($!)
        BOX_RELEASE_OF[$!]=faults
    fi
    # A box process that died (a bug in the scenario: an unset variable, say) has left the
    # checks after that point unmade: that is a failure of its own.
    for pid in "${BOX_PIDS[@]}"; do
        if ! wait "$pid"; then
            TEST_LABEL=${BOX_RELEASE_OF[$pid]} fail "the box's process ended before the scenario did; the last lines of its log are above"
        fi
    done
    BOX_PIDS=()
    for release in $BOX_RELEASES ${BOX_FLEET:+fleet}; do
        TIMINGS+=("$(sed -n 's/^TIME \[\(.*\)\] /\1 /p' "$BOX_WORKDIR/$release.log" 2>/dev/null)")
    done
    if [[ -n $FLEET_ROUNDS ]]; then
        TIMINGS+=("$(sed -n 's/^TIME \[\(.*\)\] /\1 /p' "$BOX_WORKDIR/faults.log.shown" 2>/dev/null)")
    fi
    timing "all boxes" "$t0"
}

main() {
    local t0
    t0=$(now)
    check_scripts
    build_debs || summary_and_exit
    check_lintian
    check_units
    if [[ -n $BOX_RELEASES || -n $BOX_FLEET || -n $FLEET_ROUNDS ]]; then
        run_boxes
    fi
    timing tests/run.sh "$t0"
    echo
    timings_print
    summary
}

main "$@"
