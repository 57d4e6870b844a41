# shellcheck shell=bash
# Box driver: a Debian root booted with systemd-nspawn, entered with nsenter.
#
# The scenario only ever calls box_exec, so another driver (Docker, a VM) can run the same
# scenario by defining these four functions:
#   box_start NAME RELEASE   boot a fresh box from a cached root; returns once systemd is up
#                            (BOX_NETNS=NS: in network namespace NS instead of a private one)
#   box_exec NAME CMD...     run CMD as root inside the box; stdin, stdout, exit status pass through
#   box_stop NAME            power the box off (kill it if it does not stop), delete its root
#   box_log NAME             path of the box's console log
# Sourced by tests/run.sh, scripts/demo.sh and scripts/long-run.sh; needs tests/box/rootfs.sh
# sourced first.

BOX_WORKDIR=${BOX_WORKDIR:-/var/tmp/report-collector-tests/$$}

box_log() {
    echo "$BOX_WORKDIR/$1.console"
}

# PID 1 of the box: the systemd process whose parent is the box's systemd-nspawn.
_box_find_init() {
    local nspawn_pid=$1 pid
    local children
    children=$(cat "/proc/$nspawn_pid/task/"*/children 2>/dev/null) || return 1
    for pid in $children; do
        if [[ $(cat "/proc/$pid/comm" 2>/dev/null) == systemd ]]; then
            echo "$pid"
            return 0
        fi
    done
    return 1
}

# A box's own cgroups. systemd-nspawn --keep-unit --register=no places a box below the cgroup
# it is started in, in "payload" (the box) and "supervisor" (nspawn itself): boxes started from
# one shell would share one "payload", and their systemd instances one cgroup tree, so one box
# removing a unit's cgroup as its run ended removed it under the other box's new run of the same
# unit (status=219/CGROUP; measured with two bookworm boxes side by side, each killing and
# restarting a `sleep` service: 26 failed starts of 80 in one shared "payload", 0 of 240 in
# cgroups of their own). So each box is started in a cgroup of its own,
# "report-collector-box.NAME" below this shell's, in the cgroup2 hierarchy and, on a hybrid
# host, the named "systemd" v1 one (empty since the boxes run cgroup2 alone; made so that the
# driver holds without SYSTEMD_NSPAWN_UNIFIED_HIERARCHY). box_stop removes them again.

# box_cgroup_dirs NAME: those cgroup directories, one a line.
box_cgroup_dirs() {
    local name=$1 id hierarchy path mount
    while IFS=: read -r id hierarchy path; do
        case $id:$hierarchy in
        0:) mount=$(_cgroup_mount cgroup2 '') ;;
        *:name=systemd) mount=$(_cgroup_mount cgroup name=systemd) ;;
        *) continue ;;
        esac
        [[ -n $mount ]] && echo "$mount${path%/}/report-collector-box.$name"
    done </proc/self/cgroup
}

# _cgroup_mount FSTYPE OPTION: the mount point of this host's cgroup hierarchy of type FSTYPE
# whose super options include OPTION (any when empty), from /proc/self/mountinfo.
_cgroup_mount() {
    awk -v type="$1" -v option="$2" '{
        for (i = 7; i <= NF; i++) if ($i == "-") break
        if ($(i + 1) == type && (option == "" || index("," $(i + 3) ",", "," option ","))) { print $5; exit }
    }' /proc/self/mountinfo
}

# _box_cgroups_remove NAME: removes the box's cgroups, innermost first; the last processes of a
# box may take a moment to leave them.
_box_cgroups_remove() {
    local name=$1 dir i
    [[ -f $BOX_WORKDIR/$name.cgroups ]] || return 0
    while read -r dir; do
        [[ -d $dir ]] || continue
        for ((i = 0; i < 50; i++)); do
            find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null
            [[ -d $dir ]] || break
            sleep 0.1
        done
        [[ -d $dir ]] && echo "box $name: could not remove its cgroup $dir" >&2
    done <"$BOX_WORKDIR/$name.cgroups"
    rm -f "$BOX_WORKDIR/$name.cgroups"
}

box_start() {
    local name=$1 release=$2 root nspawn_pid init_pid state i cgroups=()
    root=$BOX_WORKDIR/$name.root
    mkdir -p "$BOX_WORKDIR"
    rootfs_copy "$release" "$root"
    # The boxes must not start collections the moment they boot: nothing of ours is installed
    # yet, so nothing to do here but keep the hostname recognisable in journal lines.
    echo "$name" >"$root/etc/hostname"
    # A box of its own network, or, with BOX_NETNS set, in that network namespace (a host of
    # tests/box/fleet.sh, wired to the database's namespace).
    local network=--private-network
    if [[ -n ${BOX_NETNS:-} ]]; then
        network=--network-namespace-path=/run/netns/$BOX_NETNS
    fi
    mapfile -t cgroups < <(box_cgroup_dirs "$name")
    printf '%s\n' "${cgroups[@]}" >"$BOX_WORKDIR/$name.cgroups"
    if ! mkdir -p "${cgroups[@]}"; then
        echo "box $name: could not make its cgroups (${cgroups[*]})" >&2
        return 1
    fi
    # The process moves itself into the box's cgroups, then becomes systemd-nspawn (same pid).
    # SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1: the box gets the cgroup2 hierarchy alone, as a
    # Debian 12 or 13 host has, even on a host of both hierarchies (hybrid), where nspawn
    # would otherwise pass that on.
    setsid bash -c 'while [[ $1 != -- ]]; do echo $$ >"$1/cgroup.procs" || exit 1; shift; done
        shift; exec "$@"' box-cgroups "${cgroups[@]}" -- \
        env SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 systemd-nspawn --quiet --keep-unit --register=no "$network" \
        -D "$root" -M "$name" -b </dev/null >"$(box_log "$name")" 2>&1 &
    nspawn_pid=$!
    echo "$nspawn_pid" >"$BOX_WORKDIR/$name.nspawn"
    for ((i = 0; i < 100; i++)); do
        if init_pid=$(_box_find_init "$nspawn_pid"); then
            break
        fi
        if ! kill -0 "$nspawn_pid" 2>/dev/null; then
            echo "box $name: systemd-nspawn exited during boot; console log follows" >&2
            tail -n 30 "$(box_log "$name")" >&2
            return 1
        fi
        sleep 0.1
    done
    if [[ -z ${init_pid:-} ]]; then
        echo "box $name: no systemd process appeared under systemd-nspawn" >&2
        return 1
    fi
    echo "$init_pid" >"$BOX_WORKDIR/$name.init"
    # `is-system-running --wait` needs the manager's bus, which appears a moment after PID 1.
    for ((i = 0; i < 300; i++)); do
        state=$(box_exec "$name" systemctl is-system-running --wait 2>/dev/null) || true
        case $state in
        running | degraded) return 0 ;;
        esac
        sleep 0.2
    done
    echo "box $name: systemd did not finish booting (state: ${state:-unknown})" >&2
    return 1
}

box_exec() {
    local name=$1 init_pid
    shift
    init_pid=$(cat "$BOX_WORKDIR/$name.init")
    # A clean environment, as a login shell inside the box would have: nothing of the host's
    # (JOURNAL_STREAM, NOTIFY_SOCKET, ...) may leak into the programs under test.
    nsenter -t "$init_pid" -a env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
        TERM=dumb SYSTEMD_COLORS=0 SYSTEMD_PAGER= HOME=/root "$@"
}

box_stop() {
    local name=$1 nspawn_pid i
    if ! nspawn_pid=$(cat "$BOX_WORKDIR/$name.nspawn" 2>/dev/null); then
        _box_cgroups_remove "$name"
        return 0
    fi
    if kill -0 "$nspawn_pid" 2>/dev/null; then
        box_exec "$name" systemctl poweroff --no-block >/dev/null 2>&1 || true
        for ((i = 0; i < 150; i++)); do
            kill -0 "$nspawn_pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$nspawn_pid" 2>/dev/null; then
            echo "box $name: did not power off in 15 s; killing it" >&2
            kill -TERM "$nspawn_pid" 2>/dev/null || true
            sleep 2
            kill -KILL "$nspawn_pid" 2>/dev/null || true
        fi
    fi
    # The nspawn process is this shell's child only when started from it; wait if so.
    wait "$nspawn_pid" 2>/dev/null || true
    _box_cgroups_remove "$name"
    rm -rf "${BOX_WORKDIR:?}/$name.root"
    rm -f "$BOX_WORKDIR/$name.nspawn" "$BOX_WORKDIR/$name.init"
}
