#!/usr/bin/env bash
# Proves that the box tests leave the host as they found it. `tests/host-state.sh CMD...` takes
# a snapshot of what they could change on the host, runs CMD, takes another and prints one
# PASS or FAIL line for each part, then "N passed, M failed". It exits with CMD's status when
# CMD failed, else 1 when anything differs. `make test` runs the box tests under it.
#
# The parts: /etc/docker; the containers and images of the host's own Docker engine, when one
# answers on the default socket; the daemons the tests start (dockerd, containerd and its
# shims, systemd-nspawn) or may later (postgres); network interfaces and namespaces; mounts of
# Docker, containerd and the tests' folders; the cgroups of the boxes.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib.sh
source "$REPO/tests/lib.sh"
# shellcheck source=box/docker-engine.sh
source "$REPO/tests/box/docker-engine.sh"

require_root "reads the host's Docker engine and daemons"
if (($# == 0)); then
    echo "usage: $0 CMD..." >&2
    exit 2
fi

workdir_init host-state
results_init

part_etc_docker() {
    if [[ -e /etc/docker ]]; then
        find /etc/docker -printf '%p %M %U:%G %s\n' | sort
        find /etc/docker -type f -exec sha256sum {} + | sort
    else
        echo "absent"
    fi
}

# The host's engine is asked with its own CLI configuration: this is the user's engine.
part_host_docker() {
    if [[ -S /var/run/docker.sock ]] &&
        "$DOCKER_CLI" --host unix:///var/run/docker.sock info >/dev/null 2>&1; then
        "$DOCKER_CLI" --host unix:///var/run/docker.sock ps -a --no-trunc \
            --format '{{.ID}} {{.Names}} {{.Image}} {{.State}}' | sort
        "$DOCKER_CLI" --host unix:///var/run/docker.sock images -a --no-trunc \
            --format '{{.ID}} {{.Repository}}:{{.Tag}}' | sort
    else
        echo "no engine answers on /var/run/docker.sock"
    fi
}

# Daemons by pid and command line; for postgres only the postmaster, whose workers come and go.
# A process already exiting (a zombie, or one whose command line is gone) is not running.
part_daemons() {
    local pid ppid stat comm cmdline
    # (pgrep refuses a pattern this long: it would match nothing, silently.)
    ps -eo pid=,ppid=,stat=,comm= | while read -r pid ppid stat comm; do
        [[ $comm =~ ^(dockerd|containerd|containerd-shim.*|systemd-nspawn|postgres)$ ]] || continue
        [[ $stat == Z* ]] && continue
        if [[ $comm == postgres && $(ps -o comm= -p "$ppid") == postgres ]]; then
            continue
        fi
        cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || continue
        [[ -n $cmdline ]] || continue
        echo "$pid $cmdline"
    done | sort
}

part_network() {
    ip -o link | awk -F': ' '{ sub(/@.*/, "", $2); print "link " $2 }' | sort
    ip netns list 2>/dev/null | sed 's/^/netns /' | sort
}

part_mounts() {
    findmnt -rn -o TARGET,FSTYPE |
        grep -E 'docker|containerd|report-collector-tests|[[:space:]](overlay|nsfs)$' | sort || true
}

# The boxes' cgroups: each box's own (report-collector-box.NAME, tests/box/driver-nspawn.sh),
# the "payload" and "supervisor" cgroups systemd-nspawn makes below the one it is started in,
# and the parent of the test engine's containers (report-collector-docker-NAME,
# tests/box/docker-engine.sh).
part_cgroups() {
    local mount
    findmnt -rn -t cgroup,cgroup2 -o TARGET | while read -r mount; do
        find "$mount" -maxdepth 6 -type d \( -name 'report-collector-box.*' -o -name 'report-collector-docker-*' \
            -o -name payload -o -name supervisor \) -prune
    done | sort
}

PARTS=(
    "etc_docker:/etc/docker"
    "host_docker:the host's Docker engine (containers and images)"
    "daemons:running dockerd, containerd, shims, systemd-nspawn, postgres"
    "network:network interfaces (ip -o link) and namespaces"
    "mounts:Docker, containerd and test mounts"
    "cgroups:the boxes' cgroups"
)

snapshot() {
    local dir=$BOX_WORKDIR/$1 part
    mkdir -p "$dir"
    for part in "${PARTS[@]}"; do
        "part_${part%%:*}" >"$dir/${part%%:*}" 2>&1 || true
    done
}

# same_as_before: whether the last "after" snapshot matches "before" in every part.
same_as_before() {
    local part
    for part in "${PARTS[@]}"; do
        cmp -s "$BOX_WORKDIR/before/${part%%:*}" "$BOX_WORKDIR/after/${part%%:*}" || return 1
    done
}

snapshot before
rc=0
"$@" || rc=$?
# What the tests stopped may take a moment to be gone (a shim reaped by its parent, a link
# deleted with its namespace): look again for up to SETTLE seconds. Anything they left running
# or configured is still there after that, and is reported.
SETTLE=${SETTLE:-15}
settle_until=$(($(date +%s) + SETTLE))
snapshot after
while ! same_as_before && (($(date +%s) < settle_until)); do
    sleep 1
    snapshot after
done

echo
echo "== the host after the box tests, against before them"
for part in "${PARTS[@]}"; do
    name=${part%%:*}
    if diff -u "$BOX_WORKDIR/before/$name" "$BOX_WORKDIR/after/$name" >"$BOX_WORKDIR/$name.diff"; then
        pass "the host is as before: ${part#*:} ($(wc -l <"$BOX_WORKDIR/after/$name") lines alike)"
    else
        fail "the host changed: ${part#*:}"
        tail -n +3 "$BOX_WORKDIR/$name.diff" | show
    fi
done
if ! summary && ((rc == 0)); then
    rc=1
fi
exit "$rc"
