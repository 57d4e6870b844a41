#!/usr/bin/env bash
# `make docker-demo`: the Docker systemd box, for a newcomer to watch. Builds the .debs and the
# image, starts the box (systemd as PID 1, both packages installed), prints
# `systemctl list-timers`, then follows the server's and the collector's journal for
# DEMO_MINUTES (3 by default; Ctrl-C ends it sooner). The box keeps running afterwards:
# `make docker-down` removes it.
#
# Run as root on Debian 12; installs what it needs and starts the Docker engine without a
# bridge when it is not running. DOCKER_BASE=debian:bookworm builds on the Docker Hub image
# instead of a debootstrap root (needs a host that can pull).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

if [[ $EUID -ne 0 ]]; then
    echo "make docker-demo starts a container and installs packages: run it as root (sudo)." >&2
    exit 2
fi

BOX=report-collector-box
RELEASE=bookworm
DEMO_MINUTES=${DEMO_MINUTES:-3}
BOX_WORKDIR=/var/tmp/report-collector-tests/docker-demo
export BOX_WORKDIR

# shellcheck source=tests/box/rootfs.sh
source "$REPO/tests/box/rootfs.sh"
# shellcheck source=tests/box/driver-docker.sh
source "$REPO/tests/box/driver-docker.sh"

docker_tools_ready
docker_debs_built ""
docker_engine_ready
if [[ -n ${DOCKER_BASE:-} ]]; then
    # The build on a pulled base: docker_box_image's import step is for hosts that cannot pull.
    docker_base_image() { echo "$DOCKER_BASE"; }
fi
docker_box_image "$RELEASE" "$REPORT_APIS_DEB" "$REPORT_COLLECTOR_DEB" >/dev/null

box_start "$BOX" "$RELEASE"
cat <<MSG

The box "$BOX" is up: Debian 12, systemd as PID 1, report-apis and report-collector installed
from their packages. Inside it:

MSG
box_exec "$BOX" systemctl list-timers --no-pager report-collector.timer </dev/null
echo
box_exec "$BOX" systemctl status --no-pager --lines=0 report-apis.service </dev/null || true
cat <<MSG

Following the journal for $DEMO_MINUTES minutes (Ctrl-C to stop watching; the box keeps running):
  docker exec $BOX journalctl -f -u report-apis -u report-collector
A run is collected at the start of every minute. Try a run by hand while the timer's run holds
the lock, from another terminal:
  docker exec $BOX runuser -u report-collector -- report-collector run
Remove the box with: make docker-down

MSG
# Ctrl-C ends the follow, not the demo's last words.
trap 'echo; echo "The box is still running; make docker-down removes it."; exit 0' INT
if ((DEMO_MINUTES > 0)); then
    timeout --foreground "$((DEMO_MINUTES * 60))" \
        docker exec "$BOX" journalctl -f -n 20 --no-pager -u report-apis -u report-collector || true
fi
echo
echo "The box is still running; make docker-down removes it."
