# shellcheck shell=bash
# Box driver: a Docker container with systemd as PID 1, built from packaging/docker/Dockerfile.
#
# The same four functions as driver-nspawn.sh, so the scenario (which only calls box_exec) runs
# unchanged in a Docker box:
#   box_start NAME RELEASE   start a box from the image docker_box_image built for RELEASE;
#                            returns once systemd is up
#   box_exec NAME CMD...     run CMD as root inside the box; stdin, stdout, exit status pass through
#   box_stop NAME            `docker stop` (systemd shuts down cleanly), then remove the container
#   box_log NAME             path of a file holding the box's console output (`docker logs`)
# and what only Docker needs: the base image imported from a debootstrap root
# (docker_base_image) and the box image (docker_box_image).
# Sourced by tests/docker.sh and scripts/docker-demo.sh; needs tests/box/rootfs.sh sourced
# first, and an engine chosen and started (tests/box/docker-engine.sh: every docker call here
# goes through tdocker, to that engine only).
#
# Boxes run with --network=none (their own loopback; the server and the collector talk over
# it) and builds use --network=host (apt-get inside the build): the engine has no bridge. No
# image is pulled: the base is imported from the debootstrap root the nspawn boxes boot from.

BOX_WORKDIR=${BOX_WORKDIR:-/var/tmp/report-collector-tests/$$}
DOCKER_BOX_REPO=report-collector-box
DOCKER_BASE_REPO=report-collector-base
# Label on the box images, so that a rebuild can prune the one it replaced.
DOCKER_BOX_LABEL=org.report-collector.box
# shellcheck source=docker-engine.sh
source "$(dirname "${BASH_SOURCE[0]}")/docker-engine.sh"

# How long `docker stop` lets systemd shut down before Docker kills it.
DOCKER_STOP_TIMEOUT=${DOCKER_STOP_TIMEOUT:-30}

# The `docker run` flags systemd needs as PID 1; packaging/docker/README.md says why each one.
# Kept in this one place: the tests prove the line the README gives users.
DOCKER_BOX_RUN_FLAGS=(
    --network=none
    --tmpfs /run --tmpfs /run/lock
    --cgroupns=host -v /sys/fs/cgroup:/sys/fs/cgroup:rw
    --cap-add SYS_ADMIN --cap-add SYS_PTRACE
    --security-opt apparmor=unconfined
)

# Prints the tag of the base image for RELEASE, imported from the cached debootstrap root
# (tests/box/rootfs.sh). Imported again only when that root was made anew.
docker_base_image() {
    local release=$1 root tag stamp stale
    root=$(rootfs_cached "$release") || return 1
    tag=$DOCKER_BASE_REPO:${root##*/}
    stamp=$(stat -c %Y "$root/.complete")
    if [[ $(tdocker image inspect -f '{{index .Config.Labels "org.report-collector.rootfs"}}' \
        "$tag" 2>/dev/null) != "$stamp" ]]; then
        echo "importing $root as $tag" >&2
        tar -C "$root" --exclude=./.complete -c . |
            tdocker import --change "LABEL org.report-collector.rootfs=$stamp" - "$tag" >/dev/null ||
            return 1
        # Bases imported from earlier roots of this release (an older package list) are stale.
        for stale in $(tdocker image ls --format '{{.Repository}}:{{.Tag}}' "$DOCKER_BASE_REPO" |
            grep "^$DOCKER_BASE_REPO:$release-" | grep -vx "$tag"); do
            tdocker image rm "$stale" >/dev/null 2>&1 || true
        done
    fi
    echo "$tag"
}

# Builds the box image for RELEASE from packaging/docker/Dockerfile with the two .debs given,
# on the imported base; prints its tag. The build log goes to $BOX_WORKDIR.
docker_box_image() {
    local release=$1 apis_deb=$2 collector_deb=$3 repo base context tag log
    repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
    base=$(docker_base_image "$release") || return 1
    tag=$DOCKER_BOX_REPO:$release
    mkdir -p "$BOX_WORKDIR"
    # A context of exactly these two files: target/debian may hold other versions.
    context=$(mktemp -d "$BOX_WORKDIR/context.XXXXXX")
    cp "$apis_deb" "$collector_deb" "$context/"
    log=$BOX_WORKDIR/docker-build-$release.log
    echo "building $tag from $base (log: $log)" >&2
    if ! tdocker build --network=host --force-rm --build-arg "BASE=$base" \
        --label "$DOCKER_BOX_LABEL=image" \
        -f "$repo/packaging/docker/Dockerfile" -t "$tag" "$context" >"$log" 2>&1; then
        echo "docker build failed; the end of its log follows" >&2
        tail -n 30 "$log" >&2
        rm -rf "$context"
        return 1
    fi
    rm -rf "$context"
    # The image this build replaced under the same tag, unless a box still runs on it.
    tdocker image prune -f --filter "label=$DOCKER_BOX_LABEL=image" >/dev/null 2>&1 || true
    echo "$tag"
}

box_log() {
    local file=$BOX_WORKDIR/$1.console
    mkdir -p "$BOX_WORKDIR"
    tdocker logs "$1" >"$file" 2>&1 || true
    echo "$file"
}

# Waits until systemd in the box has finished starting up (running, or degraded: the
# scenario's assertions say which unit failed).
docker_box_wait() {
    local name=$1 state deadline=$((SECONDS + 120))
    while ((SECONDS < deadline)); do
        if [[ $(tdocker inspect -f '{{.State.Running}}' "$name" 2>/dev/null) != true ]]; then
            echo "box $name: the container stopped during boot; its output follows" >&2
            tail -n 30 "$(box_log "$name")" >&2
            return 1
        fi
        # --wait blocks until start-up is over, which a unit that never gets ready could make
        # last its whole start timeout: ask again every 10 s.
        # (timeout runs programs, not shell functions: the CLI is named with its --host here.)
        state=$(timeout 10 "$DOCKER_CLI" --host "$DOCKER_HOST" exec "$name" systemctl is-system-running --wait \
            2>/dev/null </dev/null) || true
        case $state in
        running | degraded) return 0 ;;
        esac
        sleep 0.2
    done
    echo "box $name: systemd did not finish booting within 120 s (state: ${state:-unknown})" >&2
    tdocker exec "$name" systemctl list-jobs --no-pager </dev/null >&2 || true
    return 1
}

box_start() {
    local name=$1 release=$2
    tdocker rm -f "$name" >/dev/null 2>&1 || true
    if ! tdocker run -d --name "$name" --hostname "$name" \
        "${DOCKER_BOX_RUN_FLAGS[@]}" "$DOCKER_BOX_REPO:$release" >/dev/null; then
        echo "box $name: docker run failed (is the image $DOCKER_BOX_REPO:$release built?)" >&2
        return 1
    fi
    docker_box_wait "$name"
}

box_exec() {
    local name=$1
    shift
    # -i: stdin passes through, as with nsenter. The same clean environment as the nspawn
    # driver: a login shell's, nothing of the host's.
    tdocker exec -i "$name" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
        TERM=dumb SYSTEMD_COLORS=0 SYSTEMD_PAGER= HOME=/root "$@"
}

box_stop() {
    local name=$1
    tdocker stop -t "$DOCKER_STOP_TIMEOUT" "$name" >/dev/null 2>&1 || true
    tdocker rm -f "$name" >/dev/null 2>&1 || true
}
