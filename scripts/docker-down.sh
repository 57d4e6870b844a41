#!/usr/bin/env bash
# `make docker-down`: stops the box `make docker-demo` started (systemd shuts down cleanly on
# `docker stop`), removes it and stops the demo's Docker engine and its containerd. The images
# stay in the engine's data root, so the next demo starts at once; the host's own Docker, if
# any, is not touched.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=../tests/lib.sh
source "$REPO/tests/lib.sh"
# shellcheck source=../tests/box/docker-engine.sh
source "$REPO/tests/box/docker-engine.sh"

require_root "stops the demo's Docker engine"

BOX=report-collector-box

engine_use demo
if [[ ! -d $ENGINE_RUN ]]; then
    echo "The demo's Docker engine is not running, so there is no box to remove."
    exit 0
fi
if tdocker info >/dev/null 2>&1 && [[ -n $(tdocker ps -aq --filter "name=^${BOX}\$") ]]; then
    tdocker stop -t 30 "$BOX" >/dev/null
    tdocker rm "$BOX" >/dev/null
    echo "Stopped and removed the box $BOX."
fi
ENGINE_KEEP_DATA=1 engine_stop
echo "Stopped the demo's Docker engine (its images stay in $ENGINE_DATA; remove that folder to reclaim the space)."
