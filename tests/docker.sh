#!/usr/bin/env bash
# The Docker systemd box, end to end: the image users build from packaging/docker/Dockerfile,
# started with the `docker run` flags the README gives, must pass the same scenario as the
# nspawn boxes (tests/box/scenario.sh, through tests/box/driver-docker.sh), and then what only
# Docker has: `docker stop` shuts systemd down cleanly, `docker restart` comes back with the
# timer running.
#
# Run as root on Debian 12: installs what it needs (scripts/install-deps.sh --docker) and runs
# its own Docker engine (tests/box/docker-engine.sh), stopped again at the end; the host's
# Docker, if any, is never used. Prints one PASS/FAIL line per check and, last,
# "N passed, M failed"; exits 1 on a failure. KEEP_WORKDIR=1 keeps the logs.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

# shellcheck source=lib.sh
source "$REPO/tests/lib.sh"
# shellcheck source=box/rootfs.sh
source "$REPO/tests/box/rootfs.sh"
# shellcheck source=box/driver-docker.sh
source "$REPO/tests/box/driver-docker.sh"
# shellcheck source=box/scenario.sh
source "$REPO/tests/box/scenario.sh"

require_root "starts containers and installs packages"

RELEASE=bookworm
BOX=report-collector-docker-test-$$
TEST_LABEL=docker-$RELEASE
workdir_init docker
results_init

# The journal of BOX after CURSOR, read from a copy of its files (the box may be stopped) with
# the journalctl of IMAGE, the box's own.
journal_cursor() {
    box_exec "$1" journalctl -n 0 --show-cursor -q </dev/null | sed -n 's/^-- cursor: //p'
}

journal_after() {
    local box=$1 image=$2 cursor=$3 copy
    copy=$(mktemp -d "$BOX_WORKDIR/journal.XXXXXX")
    tdocker cp "$box:/var/log/journal" "$copy/" >/dev/null
    tdocker run --rm --network=none -v "$copy:/j:ro" --entrypoint journalctl "$image" \
        -D /j/journal --after-cursor="$cursor" --no-pager -o short-precise 2>/dev/null
    rm -rf "$copy"
}

# Lines that mean a unit did not stop (or start) the way it should.
UNIT_TROUBLE='Failed with result|Failed to start|Failed to stop|timed out|SIGKILL|core-dump'

# phase_docker_stop BOX IMAGE: `docker stop` shuts systemd down cleanly.
phase_docker_stop() {
    local box=$1 image=$2 cursor t0 seconds code journal trouble
    cursor=$(journal_cursor "$box")
    t0=$(now)
    tdocker stop -t "$DOCKER_STOP_TIMEOUT" "$box" >/dev/null
    seconds=$(elapsed "$t0" "$(now)" 1)
    code=$(tdocker inspect -f '{{.State.ExitCode}}' "$box")
    # systemd halts on SIGRTMIN+3; in a container its reboot(2) ends the PID namespace with
    # SIGINT (exit status 130), or, without CAP_SYS_BOOT, it exits 0. Docker's kill after the
    # timeout would show as 137.
    if [[ $code == 0 || $code == 130 ]] &&
        awk -v s="$seconds" -v t="$DOCKER_STOP_TIMEOUT" 'BEGIN { exit !(s < t) }'; then
        pass "docker stop: systemd shut down by itself in $seconds s (exit status $code)"
    else
        fail "docker stop: exit status $code after $seconds s (a clean halt exits 0 or 130 well within ${DOCKER_STOP_TIMEOUT} s)"
    fi
    timing "docker stop" "$t0"

    journal=$(journal_after "$box" "$image" "$cursor")
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

# phase_docker_restart BOX IMAGE: the stopped box boots again, and `docker restart` comes back
# with the server active and the timer firing.
phase_docker_restart() {
    local box=$1 image=$2 cursor t0 seconds state timer journal trouble
    tdocker start "$box" >/dev/null
    if docker_box_wait "$box"; then
        pass "docker start: the stopped box boots again"
    else
        fail "docker start: the stopped box did not boot again"
        return 1
    fi
    cursor=$(journal_cursor "$box")
    t0=$(now)
    tdocker restart -t "$DOCKER_STOP_TIMEOUT" "$box" >/dev/null
    if ! docker_box_wait "$box"; then
        fail "docker restart: systemd did not come back up"
        return 1
    fi
    seconds=$(elapsed "$t0" "$(now)" 1)
    timing "docker restart, until systemd is up" "$t0"
    state=$(box_exec "$box" systemctl is-system-running </dev/null || true)
    if [[ $state == running ]]; then
        pass "docker restart: systemd is back up in $seconds s, state running"
    else
        fail "docker restart: systemd state is $state after the restart"
        box_exec "$box" systemctl --failed --no-pager </dev/null | show || true
    fi
    if [[ $(prop "$box" report-apis.service ActiveState) == active ]]; then
        pass "docker restart: report-apis.service is active"
    else
        fail "docker restart: report-apis.service is not active"
    fi
    timer=$(box_exec "$box" systemctl list-timers --no-pager --no-legend report-collector.timer </dev/null || true)
    if [[ $timer == *report-collector.timer* ]] &&
        [[ $(prop "$box" report-collector.timer ActiveState) == active ]]; then
        pass "docker restart: report-collector.timer is active and listed: $(tr -s ' ' <<<"$timer")"
    else
        fail "docker restart: report-collector.timer is not active and listed"
    fi
    # The timer must not only be listed: it fires on the next minute.
    _fired() {
        local trigger
        trigger=$(prop "$box" report-collector.timer LastTriggerUSec 2>/dev/null) &&
            [[ -n $trigger && $trigger != n/a ]]
    }
    if wait_until 75 _fired; then
        pass "docker restart: the timer fired after the restart ($(prop "$box" report-collector.timer LastTriggerUSec))"
    else
        fail "docker restart: the timer did not fire within 75 s of the restart"
    fi
    journal=$(journal_after "$box" "$image" "$cursor")
    trouble=$(grep -E "$UNIT_TROUBLE" <<<"$journal" || true)
    if [[ -z $trouble ]]; then
        pass "docker restart: no unit failed or was killed across the restart"
    else
        fail "docker restart: units in trouble across the restart:"
        show <<<"$trouble"
    fi
}

# The nspawn boxes' scenario, less the install (the image has the packages installed), with
# what only Docker has before the removal, which needs the packages in place.
scenario_docker() {
    local box=$1 image=$2 apis_next=$3 collector_next=$4
    phase installed "$box"
    scenario_minutes "$box" "$apis_next" "$collector_next" || return
    phase docker_stop "$box" "$image"
    phase docker_restart "$box" "$image" || return
    phase remove "$box"
}

main() {
    local t_start t0 image deb_apis deb_collector deb_apis_next deb_collector_next
    t_start=$(now)
    # Also undoes what earlier versions of this script left on the host.
    "$REPO/scripts/install-deps.sh" --docker

    t0=$(now)
    if debs_build "$BOX_WORKDIR/debs" deb_apis deb_collector deb_apis_next deb_collector_next; then
        pass "cargo deb: $(basename "$deb_apis"), $(basename "$deb_collector"), and at $DEB_NEXT_VERSION for the upgrade"
    else
        fail "cargo deb (the end of its log is above)"
        summary_and_exit
    fi
    timing "cargo deb (4 packages)" "$t0"

    t0=$(now)
    engine_use "test-$$"
    if engine_start; then
        pass "a Docker engine of the tests' own answers on $DOCKER_HOST (no bridge, no iptables)"
    else
        fail "could not start the tests' Docker engine"
        summary_and_exit
    fi
    timing "Docker engine ready" "$t0"

    t0=$(now)
    if ! image=$(docker_box_image "$RELEASE" "$deb_apis" "$deb_collector"); then
        fail "docker build of packaging/docker/Dockerfile"
        summary_and_exit
    fi
    timing "base image and box image" "$t0"

    t0=$(now)
    if box_start "$BOX" "$RELEASE"; then
        pass "docker run: systemd booted as PID 1 in the box ($image) in $(elapsed "$t0" "$(now)") s"
    else
        fail "docker run: the box did not boot"
        summary_and_exit
    fi

    t0=$(now)
    scenario_run "$BOX" docker "$image" "$deb_apis_next" "$deb_collector_next"
    timing "scenario, with the Docker-only checks" "$t0"
    box_stop "$BOX"

    timing tests/docker.sh "$t_start"
    echo
    timings_print
    summary
}

main "$@"
