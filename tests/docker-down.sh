#!/usr/bin/env bash
# `make docker-down`: stops the box `make docker-demo` started (systemd shuts down cleanly on
# `docker stop`) and removes it. The images stay, so the next demo starts at once; the Docker
# engine keeps running.
set -euo pipefail

BOX=report-collector-box

if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
    echo "No Docker engine is running here, so there is no box to remove."
    exit 0
fi
if [[ -z $(docker ps -aq --filter "name=^${BOX}\$") ]]; then
    echo "No box named $BOX; nothing to remove."
    exit 0
fi
docker stop -t 30 "$BOX" >/dev/null
docker rm "$BOX" >/dev/null
echo "Stopped and removed the box $BOX."
