#!/usr/bin/env bash
# The Docker engine the tests and the Docker demo run on: an instance of their own, never the
# host's. It has its own socket, data and exec roots, pid file and containerd, no bridge and no
# iptables rules, and touches nothing under /etc/docker; whoever starts it stops it.
#
# Sourced by tests/box/driver-docker.sh, tests/docker.sh and scripts/; needs tests/lib.sh.
#   engine_use NAME         points every later docker call at the engine NAME (DOCKER_HOST)
#   engine_installed        installs Debian's docker.io without starting or enabling its services
#   engine_start            starts the engine unless it answers already, and stops it at exit
#   engine_stop             removes its containers, stops dockerd and its containerd, and
#                           deletes its folders (the data root only when ENGINE_KEEP_DATA is unset)
#   tdocker ARG...          the docker CLI, always against this engine
#   engine_legacy_cleanup   undoes what earlier versions of the tests left on the host
# Run directly: docker-engine.sh legacy-cleanup.

# shellcheck source=../lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

ENGINE_RUN_BASE=/run/report-collector-tests
ENGINE_DATA_BASE=/var/lib/report-collector-tests

# engine_use NAME: the engine's folders are named after NAME, and DOCKER_HOST is exported so
# that a docker call that forgot tdocker still reaches this engine, never the host's.
engine_use() {
    ENGINE_RUN=$ENGINE_RUN_BASE/docker-$1
    ENGINE_DATA=$ENGINE_DATA_BASE/docker-$1
    DOCKER_HOST=unix://$ENGINE_RUN/docker.sock
    # The parent cgroup of its containers, in every hierarchy (Docker's default, /docker, would
    # be shared with the host's engine and stay behind after it).
    ENGINE_CGROUP=report-collector-docker-$1
    # The CLI's own configuration (contexts, credentials) stays out of the user's ~/.docker.
    DOCKER_CONFIG=$ENGINE_RUN/cli
    export DOCKER_HOST DOCKER_CONFIG
    unset DOCKER_CONTEXT
}

# The CLI of the same package as the engine (another docker may come first on PATH).
DOCKER_CLI=/usr/bin/docker
if [[ ! -x $DOCKER_CLI ]]; then
    DOCKER_CLI=docker
fi

tdocker() {
    "$DOCKER_CLI" --host "$DOCKER_HOST" "$@"
}

# --- installing ------------------------------------------------------------------------------

_ENGINE_POLICY=/usr/sbin/policy-rc.d
_ENGINE_POLICY_MARK="# report-collector tests: no service starts while docker.io is installed"

_engine_policy_remove() {
    if grep -qsF "$_ENGINE_POLICY_MARK" "$_ENGINE_POLICY"; then
        rm -f "$_ENGINE_POLICY"
    fi
}

_engine_package_installed() {
    dpkg-query -W -f '${Status}' "$1" 2>/dev/null | grep -q 'ok installed'
}

# engine_installed: Debian's docker.io (dockerd, containerd, runc), installed without starting
# or enabling docker.service, docker.socket or containerd.service: the host keeps no Docker
# daemon of its own because of the tests. A policy-rc.d forbids every start during the install
# (invoke-rc.d and deb-systemd-invoke both ask it); the units the packages enable are disabled
# again at once, for the packages this call installed only.
engine_installed() {
    local had_docker=0 had_containerd=0 rc=0 units=() unit state
    if command -v dockerd >/dev/null 2>&1 && command -v containerd >/dev/null 2>&1; then
        return 0
    fi
    _engine_package_installed docker.io && had_docker=1
    _engine_package_installed containerd && had_containerd=1
    if [[ -e $_ENGINE_POLICY ]]; then
        echo "keeping the existing $_ENGINE_POLICY" >&2
    else
        on_exit _engine_policy_remove
        printf '#!/bin/sh\n%s\nexit 101\n' "$_ENGINE_POLICY_MARK" >"$_ENGINE_POLICY"
        chmod 0755 "$_ENGINE_POLICY"
    fi
    echo "installing docker.io (its services neither started nor enabled)" >&2
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q -o DPkg::Lock::Timeout=600 docker.io >/dev/null; then
        apt-get update -q -o DPkg::Lock::Timeout=600 >/dev/null &&
            apt-get install -y -q -o DPkg::Lock::Timeout=600 docker.io >/dev/null || rc=1
    fi
    _engine_policy_remove
    if ((rc)); then
        echo "could not install docker.io; see the apt-get output above" >&2
        return 1
    fi
    if ((!had_docker)); then
        # update-rc.d disables the init script's links and, through systemctl, docker.service.
        update-rc.d docker disable >/dev/null 2>&1 || true
        units+=(docker.service docker.socket)
    fi
    if ((!had_containerd)); then
        units+=(containerd.service)
    fi
    if ((${#units[@]})) && command -v systemctl >/dev/null 2>&1; then
        systemctl --root=/ --quiet disable "${units[@]}" 2>/dev/null || true
        for unit in "${units[@]}"; do
            state=$(systemctl --root=/ is-enabled "$unit" 2>/dev/null) || true
            if [[ $state == enabled ]]; then
                echo "$unit is still enabled after the install; disable it: systemctl disable $unit" >&2
                return 1
            fi
        done
    fi
}

# --- starting and stopping -------------------------------------------------------------------

_engine_write_config() {
    mkdir -p "$ENGINE_RUN/containerd" "$ENGINE_RUN/cli" "$ENGINE_DATA"
    chmod 0700 "$ENGINE_RUN" "$ENGINE_DATA"
    # Debian's containerd also carries Kubernetes' CRI plugin (it would look for CNI and
    # write /etc/cni), and its "opt" plugin creates /opt/containerd: neither is wanted here.
    cat >"$ENGINE_RUN/containerd.toml" <<EOF
version = 2
root = "$ENGINE_DATA/containerd"
state = "$ENGINE_RUN/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt"]

[grpc]
  address = "$ENGINE_RUN/containerd/containerd.sock"

[ttrpc]
  address = "$ENGINE_RUN/containerd/containerd.sock.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""
EOF
    # Every setting in this file, so the host's /etc/docker/daemon.json is never read.
    # No bridge, no iptables, no masquerading: boxes run with --network=none and builds with
    # --network=host. Docker 20.10 writes its key.json (an identity no one here uses) to
    # /etc/docker unless "deprecated-key-path" names another place.
    cat >"$ENGINE_RUN/daemon.json" <<EOF
{
  "hosts": ["$DOCKER_HOST"],
  "data-root": "$ENGINE_DATA",
  "exec-root": "$ENGINE_RUN/exec",
  "pidfile": "$ENGINE_RUN/dockerd.pid",
  "deprecated-key-path": "$ENGINE_RUN/key.json",
  "containerd": "$ENGINE_RUN/containerd/containerd.sock",
  "cgroup-parent": "/$ENGINE_CGROUP",
  "bridge": "none",
  "iptables": false,
  "ip-masq": false
}
EOF
}

_engine_answers() {
    tdocker info >/dev/null 2>&1
}

# engine_start [--keep-running]: starts containerd, then dockerd on it, and waits until
# dockerd answers; engine_stop runs at exit (unless --keep-running: the demo's engine stays up
# for `make docker-down`). An engine that answers already (the demo's) is used as it is, and
# left running.
engine_start() {
    local pid
    if _engine_answers; then
        return 0
    fi
    if [[ ${1:-} != --keep-running ]]; then
        on_exit engine_stop
    fi
    _engine_write_config
    # Two folders outside this engine's own that its daemons create whatever their settings:
    # /run/containerd/s (the shims' sockets) and /run/docker/plugins (dockerd's plugin
    # sockets). engine_stop removes the ones this start made, once empty.
    local dir
    for dir in /run/containerd /run/docker; do
        if [[ ! -e $dir ]]; then
            echo "$dir" >>"$ENGINE_RUN/made-dirs"
        fi
    done
    echo "starting a Docker engine of the tests' own ($DOCKER_HOST; logs in $ENGINE_RUN)" >&2
    # setsid: a Ctrl-C at the terminal reaches the script, which then stops the engine in order.
    setsid containerd --config "$ENGINE_RUN/containerd.toml" </dev/null \
        >>"$ENGINE_RUN/containerd.log" 2>&1 &
    echo $! >"$ENGINE_RUN/containerd.pid"
    if ! wait_until 30 test -S "$ENGINE_RUN/containerd/containerd.sock"; then
        echo "containerd did not start within 30 s; the end of its log follows" >&2
        tail -n 20 "$ENGINE_RUN/containerd.log" >&2
        return 1
    fi
    setsid dockerd --config-file "$ENGINE_RUN/daemon.json" </dev/null >>"$ENGINE_RUN/dockerd.log" 2>&1 &
    pid=$!
    if ! wait_until 60 _engine_answers; then
        echo "dockerd did not answer within 60 s; the end of its log follows" >&2
        tail -n 20 "$ENGINE_RUN/dockerd.log" >&2
        kill -0 "$pid" 2>/dev/null || echo "(dockerd has exited)" >&2
        return 1
    fi
}

# _engine_stop_pid FILE NAME: TERM the process whose pid FILE holds, KILL it after 30 s.
_engine_stop_pid() {
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 0
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    # Only this engine's process: never a pid the kernel has since given to another program.
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$2" ]] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    _gone() { ! kill -0 "$pid" 2>/dev/null; }
    if ! wait_until 30 _gone; then
        echo "$2 ($pid) did not stop within 30 s; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
        wait_until 5 _gone || true
    fi
}

# engine_stop: everything engine_start made, in reverse order.
engine_stop() {
    local ids mounts made_dirs dir
    if [[ ! -d $ENGINE_RUN ]]; then
        return 0
    fi
    if _engine_answers; then
        ids=$(tdocker ps -aq 2>/dev/null) || true
        if [[ -n $ids ]]; then
            # shellcheck disable=SC2086 # one id per word
            tdocker rm -f $ids >/dev/null 2>&1 || true
        fi
    fi
    _engine_stop_pid "$ENGINE_RUN/dockerd.pid" dockerd
    _engine_stop_pid "$ENGINE_RUN/containerd.pid" containerd
    # The containers' parent cgroup, empty once they are gone (and on cgroup v1 in each
    # hierarchy mounted).
    findmnt -rn -t cgroup,cgroup2 -o TARGET | while read -r dir; do
        if [[ -d $dir/$ENGINE_CGROUP ]]; then
            find "$dir/$ENGINE_CGROUP" -depth -type d -exec rmdir {} + 2>/dev/null || true
        fi
    done
    # A network namespace or overlay that a killed dockerd could not unmount.
    mounts=$(findmnt -rn -o TARGET | grep -E "^($ENGINE_RUN|$ENGINE_DATA)(/|$)" | sort -r) || true
    if [[ -n $mounts ]]; then
        xargs -r -d '\n' umount -l <<<"$mounts" 2>/dev/null || true
    fi
    made_dirs=$(cat "$ENGINE_RUN/made-dirs" 2>/dev/null) || true
    rm -rf --one-file-system "$ENGINE_RUN"
    if [[ -z ${ENGINE_KEEP_DATA:-} ]]; then
        rm -rf --one-file-system "$ENGINE_DATA"
    fi
    for dir in $made_dirs; do
        find "$dir" -depth -type d -empty -delete 2>/dev/null || true
    done
    rmdir "$ENGINE_RUN_BASE" "$ENGINE_DATA_BASE" 2>/dev/null || true
}

# --- what earlier versions of the tests left -------------------------------------------------

# Earlier versions wrote this file on first run and started dockerd with it (or with the same
# settings as flags), leaving it running: every container started on the host afterwards had
# no network. The file is removed only when it is exactly that text.
_ENGINE_LEGACY_DAEMON_JSON='{
  "bridge": "none",
  "iptables": false,
  "ip-masq": false
}'

# engine_legacy_cleanup: removes that daemon.json, and stops such a dockerd when it runs no
# container; otherwise prints how to stop it. Prints one line for each thing it found.
engine_legacy_cleanup() {
    local pid args running
    if [[ -f /etc/docker/daemon.json ]] &&
        [[ $(cat /etc/docker/daemon.json) == "$_ENGINE_LEGACY_DAEMON_JSON" ]]; then
        rm -f /etc/docker/daemon.json
        echo "removed /etc/docker/daemon.json (no bridge, no iptables), written by an earlier version of tests/docker.sh" >&2
    fi
    for pid in $(pgrep -x dockerd); do
        args=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || continue
        # Started exactly so, with its output appended to /var/log/docker.log: nobody else's.
        case $args in
        "dockerd " | "dockerd --bridge=none --iptables=false --ip-masq=false ") ;;
        *) continue ;;
        esac
        [[ $(readlink "/proc/$pid/fd/1") == /var/log/docker.log ]] || continue
        running=$("$DOCKER_CLI" --host unix:///var/run/docker.sock ps -q 2>/dev/null | wc -l) || running=unknown
        if [[ $running == 0 ]]; then
            kill -TERM "$pid" 2>/dev/null || true
            _legacy_gone() { ! kill -0 "$pid" 2>/dev/null; }
            if wait_until 30 _legacy_gone; then
                echo "stopped dockerd ($pid, no containers), left running by an earlier version of tests/docker.sh" >&2
                continue
            fi
        fi
        echo "dockerd ($pid: $args) was left running by an earlier version of tests/docker.sh, with $running containers; stop it when they are done: kill $pid" >&2
    done
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -euo pipefail
    case ${1:-} in
    legacy-cleanup)
        require_root "looks at the host's Docker engine"
        engine_legacy_cleanup
        ;;
    *)
        echo "usage: $0 legacy-cleanup" >&2
        exit 2
        ;;
    esac
fi
