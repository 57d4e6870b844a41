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
# and what only Docker needs: the engine (docker_engine_ready), the base image imported from a
# debootstrap root (docker_base_image) and the box image (docker_box_image).
# Sourced by tests/docker.sh and tests/docker-demo.sh; needs tests/box/rootfs.sh sourced first.
#
# The engine never gets a bridge network: boxes run with --network=none (their own loopback;
# the server and the collector talk over it) and builds use --network=host (apt-get inside
# the build). No image is pulled: the base is imported from the debootstrap root the nspawn
# boxes boot from.

BOX_WORKDIR=${BOX_WORKDIR:-/var/tmp/report-collector-tests/$$}
DOCKER_BOX_REPO=report-collector-box
DOCKER_BASE_REPO=report-collector-base
# Label on every box container, so a clean-up can find what a run left behind.
DOCKER_BOX_LABEL=org.report-collector.box
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

# Installs Debian's docker.io when missing and starts its daemon when it is not answering.
# The daemon gets no bridge, no iptables rules and no masquerading: only loopback traffic.
docker_engine_ready() {
    local i
    if ! command -v dockerd >/dev/null 2>&1; then
        _docker_install_engine || return 1
    fi
    if docker info >/dev/null 2>&1; then
        return 0
    fi
    mkdir -p /var/log
    echo "starting dockerd (no bridge, no iptables; log: /var/log/docker.log)" >&2
    # The settings may already be in /etc/docker/daemon.json (written at install below);
    # dockerd refuses a setting given both there and as a flag.
    if grep -qs '"bridge"' /etc/docker/daemon.json; then
        setsid dockerd </dev/null >>/var/log/docker.log 2>&1 &
    else
        setsid dockerd --bridge=none --iptables=false --ip-masq=false \
            </dev/null >>/var/log/docker.log 2>&1 &
    fi
    for ((i = 0; i < 120; i++)); do
        if docker info >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.5
    done
    echo "dockerd did not answer within 60 s; the end of /var/log/docker.log follows" >&2
    tail -n 20 /var/log/docker.log >&2
    return 1
}

_docker_install_engine() {
    local made_policy=0 rc=0
    # Written before the package is installed, so that however dockerd is started later (by
    # hand, by the init script, by systemd at the next boot) it never sets up the default bridge.
    if [[ ! -e /etc/docker/daemon.json ]]; then
        mkdir -p /etc/docker
        cat >/etc/docker/daemon.json <<'EOF'
{
  "bridge": "none",
  "iptables": false,
  "ip-masq": false
}
EOF
    fi
    # docker.io's postinst starts the daemon through its init script when systemd is not
    # PID 1; that start fails on some machines and fails the install with it. It is started
    # below, one way on every machine.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    echo "installing docker.io" >&2
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=600 \
        docker.io >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get update -q -o DPkg::Lock::Timeout=600 >/dev/null &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=600 \
                docker.io >/dev/null || rc=1
    fi
    if ((made_policy)); then
        rm -f /usr/sbin/policy-rc.d
    fi
    if ((rc)); then
        echo "could not install docker.io; see the apt-get output above" >&2
    fi
    return "$rc"
}

# debootstrap (for the base root) and, unless REPORT_APIS_DEB and REPORT_COLLECTOR_DEB name
# packages built already, cargo-deb 3.8.0.
docker_tools_ready() {
    if ! command -v debootstrap >/dev/null 2>&1; then
        echo "installing debootstrap" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=600 \
            debootstrap >/dev/null
    fi
    if [[ -z ${REPORT_APIS_DEB:-} || -z ${REPORT_COLLECTOR_DEB:-} ]] &&
        ! cargo deb --version 2>/dev/null | grep -q '^cargo-deb 3\.8\.0'; then
        echo "installing cargo-deb 3.8.0" >&2
        cargo install cargo-deb --version 3.8.0 --locked
    fi
}

# Sets REPORT_APIS_DEB and REPORT_COLLECTOR_DEB to the packages of the current tree, built by
# cargo deb (which prints the path of the package it made as its last line), unless both are
# set already. With an argument DIR, also DEB_APIS_NEXT and DEB_COLLECTOR_NEXT: the same
# packages with a higher version, made in DIR, for the scenario's upgrade (as tests/run.sh does).
docker_debs_built() {
    local next_dir=${1:-} repo log
    repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
    mkdir -p "$BOX_WORKDIR/debs"
    log=$BOX_WORKDIR/cargo-deb.log
    if [[ -z ${REPORT_APIS_DEB:-} || -z ${REPORT_COLLECTOR_DEB:-} ]]; then
        echo "building the packages (cargo deb; log: $log)" >&2
        # Made in this run's own folder: another run (make deb, tests/run.sh) may be rewriting
        # target/debian at the same moment.
        if ! REPORT_APIS_DEB=$(cd "$repo" && cargo deb -p report-apis \
            -o "$BOX_WORKDIR/debs/" 2>"$log" | tail -n 1) ||
            ! REPORT_COLLECTOR_DEB=$(cd "$repo" && cargo deb -p report-collector \
                -o "$BOX_WORKDIR/debs/" 2>>"$log" | tail -n 1) ||
            [[ ! -f $REPORT_APIS_DEB || ! -f $REPORT_COLLECTOR_DEB ]]; then
            echo "cargo deb failed; the end of its log follows" >&2
            tail -n 30 "$log" >&2
            return 1
        fi
    fi
    if [[ -n $next_dir ]]; then
        mkdir -p "$next_dir"
        if ! DEB_APIS_NEXT=$(cd "$repo" && cargo deb -p report-apis --no-build \
            --deb-version 0.1.1-1 -o "$next_dir/" 2>>"$log" | tail -n 1) ||
            ! DEB_COLLECTOR_NEXT=$(cd "$repo" && cargo deb -p report-collector --no-build \
                --deb-version 0.1.1-1 -o "$next_dir/" 2>>"$log" | tail -n 1); then
            echo "cargo deb --deb-version 0.1.1-1 failed; the end of its log follows" >&2
            tail -n 30 "$log" >&2
            return 1
        fi
        export DEB_APIS_NEXT DEB_COLLECTOR_NEXT
    fi
}

# Prints the tag of the base image for RELEASE, imported from the cached debootstrap root
# (tests/box/rootfs.sh). Imported again only when that root was made anew.
docker_base_image() {
    local release=$1 root tag stamp
    root=$(rootfs_cached "$release") || return 1
    tag=$DOCKER_BASE_REPO:${root##*/}
    stamp=$(stat -c %Y "$root/.complete")
    if [[ $(docker image inspect -f '{{index .Config.Labels "org.report-collector.rootfs"}}' \
        "$tag" 2>/dev/null) != "$stamp" ]]; then
        echo "importing $root as $tag" >&2
        tar -C "$root" --exclude=./.complete -c . |
            docker import --change "LABEL org.report-collector.rootfs=$stamp" - "$tag" >/dev/null ||
            return 1
        # Bases imported from earlier roots of this release (an older package list) are stale.
        docker image ls --format '{{.Repository}}:{{.Tag}}' "$DOCKER_BASE_REPO" |
            grep "^$DOCKER_BASE_REPO:$release-" | grep -vx "$tag" |
            xargs -r docker image rm >/dev/null 2>&1 || true
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
    if ! docker build --network=host --force-rm --build-arg "BASE=$base" \
        --label "$DOCKER_BOX_LABEL=image" \
        -f "$repo/packaging/docker/Dockerfile" -t "$tag" "$context" >"$log" 2>&1; then
        echo "docker build failed; the end of its log follows" >&2
        tail -n 30 "$log" >&2
        rm -rf "$context"
        return 1
    fi
    rm -rf "$context"
    # The image this build replaced under the same tag, unless a box still runs on it.
    docker image prune -f --filter "label=$DOCKER_BOX_LABEL=image" >/dev/null 2>&1 || true
    echo "$tag"
}

box_log() {
    local file=$BOX_WORKDIR/$1.console
    mkdir -p "$BOX_WORKDIR"
    docker logs "$1" >"$file" 2>&1 || true
    echo "$file"
}

# Waits until systemd in the box has finished starting up (running, or degraded: the
# scenario's assertions say which unit failed).
docker_box_wait() {
    local name=$1 state deadline=$((SECONDS + 120))
    while ((SECONDS < deadline)); do
        if [[ $(docker inspect -f '{{.State.Running}}' "$name" 2>/dev/null) != true ]]; then
            echo "box $name: the container stopped during boot; its output follows" >&2
            tail -n 30 "$(box_log "$name")" >&2
            return 1
        fi
        # --wait blocks until start-up is over, which a unit that never gets ready could make
        # last its whole start timeout: ask again every 10 s.
        state=$(timeout 10 docker exec "$name" systemctl is-system-running --wait \
            2>/dev/null </dev/null) || true
        case $state in
        running | degraded) return 0 ;;
        esac
        sleep 0.2
    done
    echo "box $name: systemd did not finish booting within 120 s (state: ${state:-unknown})" >&2
    docker exec "$name" systemctl list-jobs --no-pager </dev/null >&2 || true
    return 1
}

box_start() {
    local name=$1 release=$2
    docker rm -f "$name" >/dev/null 2>&1 || true
    if ! docker run -d --name "$name" --hostname "$name" --label "$DOCKER_BOX_LABEL=$$" \
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
    docker exec -i "$name" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
        TERM=dumb SYSTEMD_COLORS=0 SYSTEMD_PAGER= HOME=/root "$@"
}

box_stop() {
    local name=$1
    docker stop -t "$DOCKER_STOP_TIMEOUT" "$name" >/dev/null 2>&1 || true
    docker rm -f "$name" >/dev/null 2>&1 || true
}
