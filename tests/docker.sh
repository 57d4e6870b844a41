#!/usr/bin/env bash
# The Docker systemd box, end to end: the image users build from packaging/docker/Dockerfile,
# started with the `docker run` flags the README gives, must pass the same scenario as the
# nspawn boxes (tests/box/scenario.sh, through tests/box/driver-docker.sh), and then what only
# Docker has: `docker stop` shuts systemd down cleanly, `docker restart` comes back with the
# timer running.
#
# Run as root on Debian 12: installs what it needs (debootstrap, docker.io, cargo-deb), starts
# the Docker engine without a bridge when it is not running, and leaves it running.
# Prints one PASS/FAIL line per check and, last, "N passed, M failed"; exits 1 on a failure.
# REPORT_APIS_DEB and REPORT_COLLECTOR_DEB name packages already built (otherwise cargo deb
# builds them).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

if [[ $EUID -ne 0 ]]; then
    echo "tests/docker.sh starts containers and installs packages: run it as root (sudo)." >&2
    exit 2
fi

RELEASE=bookworm
BOX=report-collector-docker-test-$$
BOX_WORKDIR=/var/tmp/report-collector-tests/docker-$$
export BOX_WORKDIR

# shellcheck source=tests/box/rootfs.sh
source "$REPO/tests/box/rootfs.sh"
# shellcheck source=tests/box/driver-docker.sh
source "$REPO/tests/box/driver-docker.sh"

# Counted here; tests/lib.sh (sourced next, and by the scenario) keeps these two.
TEST_LABEL=docker-$RELEASE
passed=0
failed=0
pass() {
    echo "PASS [$TEST_LABEL] $*"
    passed=$((passed + 1))
}
fail() {
    echo "FAIL [$TEST_LABEL] $*"
    failed=$((failed + 1))
}
# shellcheck source=tests/lib.sh
source "$REPO/tests/lib.sh"

cleanup() {
    local ids
    ids=$(docker ps -aq --filter "label=$DOCKER_BOX_LABEL=$$" 2>/dev/null) || true
    if [[ -n $ids ]]; then
        # shellcheck disable=SC2086 # one id per word
        docker rm -f $ids >/dev/null 2>&1 || true
    fi
    if [[ -z ${KEEP_WORKDIR:-} ]]; then
        rm -rf "$BOX_WORKDIR"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Seconds since the epoch with a fraction, for the figures printed at the end.
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
timings=()

journal_cursor() {
    box_exec "$BOX" journalctl -n 0 --show-cursor -q </dev/null | sed -n 's/^-- cursor: //p'
}

# The box's journal after CURSOR, read from a copy of its files (the box may be stopped)
# with the journalctl of the box image itself.
journal_after() {
    local cursor=$1 copy
    copy=$(mktemp -d "$BOX_WORKDIR/journal.XXXXXX")
    docker cp "$BOX:/var/log/journal" "$copy/" >/dev/null
    docker run --rm --network=none -v "$copy:/j:ro" --entrypoint journalctl "$IMAGE" \
        -D /j/journal --after-cursor="$cursor" --no-pager -o short-precise 2>/dev/null
    rm -rf "$copy"
}

# Lines that mean a unit did not stop (or start) the way it should.
UNIT_TROUBLE='Failed with result|Failed to start|Failed to stop|timed out|SIGKILL|core-dump'

check_docker_stop() {
    local cursor t0 t1 seconds code journal trouble
    cursor=$(journal_cursor)
    t0=$(now)
    docker stop -t "$DOCKER_STOP_TIMEOUT" "$BOX" >/dev/null
    t1=$(now)
    seconds=$(elapsed "$t0" "$t1")
    code=$(docker inspect -f '{{.State.ExitCode}}' "$BOX")
    # systemd halts on SIGRTMIN+3; in a container its reboot(2) ends the PID namespace with
    # SIGINT (exit status 130), or, without CAP_SYS_BOOT, it exits 0. Docker's kill after the
    # timeout would show as 137.
    if [[ $code == 0 || $code == 130 ]] &&
        awk -v s="$seconds" -v t="$DOCKER_STOP_TIMEOUT" 'BEGIN { exit !(s < t) }'; then
        pass "docker stop: systemd shut down by itself in $seconds s (exit status $code)"
    else
        fail "docker stop: exit status $code after $seconds s (a clean halt exits 0 or 130 well within ${DOCKER_STOP_TIMEOUT} s)"
    fi
    timings+=("docker stop: $seconds s")

    journal=$(journal_after "$cursor")
    if grep -q 'systemd\[1\]: Shutting down\.' <<<"$journal"; then
        pass "docker stop: the journal shows systemd's whole shutdown, up to \"Shutting down.\""
    else
        fail "docker stop: no \"Shutting down.\" from systemd in the journal"
    fi
    if grep -q 'Stopped report-apis\.service' <<<"$journal"; then
        pass "docker stop: report-apis.service stopped in the shutdown"
    else
        fail "docker stop: no \"Stopped report-apis.service\" in the journal"
    fi
    trouble=$(grep -E "$UNIT_TROUBLE" <<<"$journal" || true)
    if [[ -z $trouble ]]; then
        pass "docker stop: no unit failed or was killed during the shutdown"
    else
        fail "docker stop: units in trouble during the shutdown:"
        show <<<"$trouble"
    fi
}

check_docker_restart() {
    local cursor t0 t1 seconds state timer trigger i journal trouble
    docker start "$BOX" >/dev/null
    if docker_box_wait "$BOX"; then
        pass "docker start: the stopped box boots again"
    else
        fail "docker start: the stopped box did not boot again"
        return
    fi
    cursor=$(journal_cursor)
    t0=$(now)
    docker restart -t "$DOCKER_STOP_TIMEOUT" "$BOX" >/dev/null
    if ! docker_box_wait "$BOX"; then
        fail "docker restart: systemd did not come back up"
        return
    fi
    t1=$(now)
    seconds=$(elapsed "$t0" "$t1")
    timings+=("docker restart, until systemd is up: $seconds s")
    state=$(box_exec "$BOX" systemctl is-system-running </dev/null || true)
    if [[ $state == running ]]; then
        pass "docker restart: systemd is back up in $seconds s, state running"
    else
        fail "docker restart: systemd state is $state after the restart"
        box_exec "$BOX" systemctl --failed --no-pager </dev/null | show || true
    fi
    if [[ $(box_exec "$BOX" systemctl is-active report-apis.service </dev/null) == active ]]; then
        pass "docker restart: report-apis.service is active"
    else
        fail "docker restart: report-apis.service is not active"
    fi
    timer=$(box_exec "$BOX" systemctl list-timers --no-pager --no-legend report-collector.timer </dev/null || true)
    if [[ $timer == *report-collector.timer* ]] &&
        [[ $(box_exec "$BOX" systemctl is-active report-collector.timer </dev/null) == active ]]; then
        pass "docker restart: report-collector.timer is active and listed: $(tr -s ' ' <<<"$timer")"
    else
        fail "docker restart: report-collector.timer is not active and listed"
    fi
    # The timer must not only be listed: it fires on the next minute.
    trigger=
    for ((i = 0; i < 150; i++)); do
        trigger=$(box_exec "$BOX" systemctl show -P LastTriggerUSec report-collector.timer </dev/null || true)
        if [[ -n $trigger && $trigger != n/a ]]; then
            break
        fi
        trigger=
        sleep 0.5
    done
    if [[ -n $trigger ]]; then
        pass "docker restart: the timer fired after the restart ($trigger)"
    else
        fail "docker restart: the timer did not fire within 75 s of the restart"
    fi
    journal=$(journal_after "$cursor")
    trouble=$(grep -E "$UNIT_TROUBLE" <<<"$journal" || true)
    if [[ -z $trouble ]]; then
        pass "docker restart: no unit failed or was killed across the restart"
    else
        fail "docker restart: units in trouble across the restart:"
        show <<<"$trouble"
    fi
}

# The nspawn boxes' scenario, unchanged. The image has the packages installed already, so none
# are handed to it to install, only the higher version for its upgrade; the removal and purge
# come after the Docker-only checks, which need the packages in place.
run_scenario() {
    # shellcheck source=tests/box/scenario.sh
    source "$REPO/tests/box/scenario.sh"
    DEB_APIS='' DEB_COLLECTOR='' REPORT_APIS_DEB='' REPORT_COLLECTOR_DEB='' SCENARIO_REMOVE=no \
        DEB_APIS_NEXT=$DEB_APIS_NEXT DEB_COLLECTOR_NEXT=$DEB_COLLECTOR_NEXT scenario_run "$BOX"
}

main() {
    local t_start t0
    t_start=$(now)
    docker_tools_ready

    t0=$(now)
    docker_debs_built "$BOX_WORKDIR/next"
    timings+=("cargo deb, both packages: $(elapsed "$t0" "$(now)") s")

    t0=$(now)
    docker_engine_ready
    timings+=("Docker engine ready: $(elapsed "$t0" "$(now)") s")

    t0=$(now)
    IMAGE=$(docker_box_image "$RELEASE" "$REPORT_APIS_DEB" "$REPORT_COLLECTOR_DEB")
    timings+=("base image and box image: $(elapsed "$t0" "$(now)") s")

    t0=$(now)
    if box_start "$BOX" "$RELEASE"; then
        pass "docker run: systemd booted as PID 1 in the box ($IMAGE) in $(elapsed "$t0" "$(now)") s"
    else
        fail "docker run: the box did not boot"
        echo "$passed passed, $failed failed"
        exit 1
    fi

    t0=$(now)
    run_scenario
    timings+=("shared scenario: $(elapsed "$t0" "$(now)") s")

    t0=$(now)
    check_docker_stop
    check_docker_restart
    timings+=("Docker-only checks: $(elapsed "$t0" "$(now)") s")

    t0=$(now)
    phase_remove
    timings+=("scenario's removal and purge: $(elapsed "$t0" "$(now)") s")
    box_stop "$BOX"

    timings+=("total: $(elapsed "$t_start" "$(now)") s")
    printf 'time: %s\n' "${timings[@]}"
    echo "$passed passed, $failed failed"
    ((failed == 0))
}

main "$@"
