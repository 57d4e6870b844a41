#!/usr/bin/env bash
# `make docker-demo`: the Docker systemd box, for a newcomer to watch. Builds the .debs and the
# image, starts the box (systemd as PID 1, both packages installed), prints
# `systemctl list-timers`, then follows the server's and the collector's journal for
# DEMO_MINUTES (3 by default; Ctrl-C ends it sooner). The box keeps running afterwards, on a
# Docker engine of the demo's own (never the host's): `make docker-down` removes the box and
# stops that engine.
#
# Run as root on Debian 12; installs what it needs (scripts/install-deps.sh --docker).
# DOCKER_BASE=debian:bookworm builds on the Docker Hub image instead of a debootstrap root
# (needs a host that can pull).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

# shellcheck source=../tests/lib.sh
source "$REPO/tests/lib.sh"
# shellcheck source=../tests/box/rootfs.sh
source "$REPO/tests/box/rootfs.sh"
# shellcheck source=../tests/box/driver-docker.sh
source "$REPO/tests/box/driver-docker.sh"

require_root "starts a container and installs packages"

BOX=report-collector-box
RELEASE=bookworm
DEMO_MINUTES=${DEMO_MINUTES:-3}
workdir_init docker-demo

"$REPO/scripts/install-deps.sh" --docker
debs_build "$BOX_WORKDIR/debs" apis_deb collector_deb

engine_use demo
# Its images stay for the next demo; `make docker-down` stops the engine.
export ENGINE_KEEP_DATA=1
engine_start --keep-running
box_up=0
# Until the box is up, a failure (or Ctrl-C) stops the engine again.
stop_engine_unless_box_up() {
    if ((!box_up)); then
        engine_stop
    fi
}
on_exit stop_engine_unless_box_up

if [[ -n ${DOCKER_BASE:-} ]]; then
    # The build on a pulled base: docker_box_image's import step is for hosts that cannot pull.
    docker_base_image() { echo "$DOCKER_BASE"; }
fi
docker_box_image "$RELEASE" "$apis_deb" "$collector_deb" >/dev/null
box_start "$BOX" "$RELEASE"
box_up=1

docker="docker -H $DOCKER_HOST"
cat <<MSG

The box "$BOX" is up: Debian 12, systemd as PID 1, report-apis and report-collector installed
from their packages. Inside it:

MSG
box_exec "$BOX" systemctl list-timers --no-pager report-collector.timer </dev/null
echo
box_exec "$BOX" systemctl status --no-pager --lines=0 report-apis.service </dev/null || true
cat <<MSG

Following the journal for $DEMO_MINUTES minutes (Ctrl-C to stop watching; the box keeps running).
The box runs on the demo's own Docker engine, so every docker command names its socket:
  $docker exec $BOX journalctl -f -u report-apis -u report-collector
A run is collected at the start of every minute. Try a run by hand while the timer's run holds
the lock, from another terminal:
  $docker exec $BOX runuser -u report-collector -- report-collector run
Remove the box and stop its engine with: make docker-down

MSG
# Ctrl-C ends the follow, not the demo's last words.
trap 'echo; echo "The box is still running; make docker-down removes it."; exit 0' INT
if ((DEMO_MINUTES > 0)); then
    timeout --foreground "$((DEMO_MINUTES * 60))" \
        "$DOCKER_CLI" --host "$DOCKER_HOST" exec "$BOX" journalctl -f -n 20 --no-pager -u report-apis -u report-collector || true
fi
echo
echo "The box is still running; make docker-down removes it."
