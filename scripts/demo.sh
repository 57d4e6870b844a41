#!/usr/bin/env bash
# The experiment, live: boot a Debian 12 box (systemd-nspawn), install the two packages with
# their shipped configuration, show the timer, then follow the journal of the server and the
# collector for DEMO_MINUTES minutes (default 6: one heavy-load phase of the shipped 2 min
# period, the long run, and the skipped slot after it). The box is stopped at the end or on
# Ctrl-C. Run as root.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

# shellcheck source=../tests/lib.sh
source "$REPO/tests/lib.sh"
# shellcheck source=../tests/box/rootfs.sh
source "$REPO/tests/box/rootfs.sh"
# shellcheck source=../tests/box/driver-nspawn.sh
source "$REPO/tests/box/driver-nspawn.sh"
# shellcheck source=../tests/box/install.sh
source "$REPO/tests/box/install.sh"

require_root "boots a container"

DEMO_MINUTES=${DEMO_MINUTES:-6}
RELEASE=${DEMO_RELEASE:-bookworm}
BOX=report-collector-demo-$$
workdir_init demo

manual_run=
stop_demo() {
    if [[ -n $manual_run ]]; then
        kill "$manual_run" 2>/dev/null || true
    fi
    echo
    echo "== stopping the box"
    box_stop "$BOX" || true
}
on_exit stop_demo

box_install_shipped "$BOX" "$RELEASE"

echo
echo "== systemctl list-timers report-collector.timer"
box_exec "$BOX" systemctl list-timers --no-pager report-collector.timer
echo
echo "== systemctl status report-apis"
box_exec "$BOX" systemctl status --no-pager --lines=0 report-apis.service || true
echo
echo "== journalctl -f: report-apis, report-collector and runs by hand (for $DEMO_MINUTES minutes; Ctrl-C stops)"
echo "   The server switches heavy load on and off every 2 minutes. Watch for a run that outlasts"
echo "   its minute, the slot skipped after it, and a run started by hand being refused."
# A run started by hand while the timer's run holds the lock, a little after the heavy-load
# phase begins, so the refusal shows up in the journal too.
(
    sleep 150
    echo "== runuser -u report-collector -- report-collector run   (by hand)"
    box_exec "$BOX" runuser -u report-collector -- report-collector run >/dev/null 2>&1 || true
) &
manual_run=$!
# `-u A -u B -t C` would mean (A or B) and C: spell the matches out instead. UNIT= carries
# systemd's own lines about a unit; SYSLOG_IDENTIFIER= the collector's runs started by hand.
box_exec "$BOX" timeout "$((DEMO_MINUTES * 60))" journalctl -f -n 20 --no-pager \
    _SYSTEMD_UNIT=report-apis.service + UNIT=report-apis.service + \
    _SYSTEMD_UNIT=report-collector.service + UNIT=report-collector.service + \
    SYSLOG_IDENTIFIER=report-collector || true
kill "$manual_run" 2>/dev/null || true
echo
echo "== report-collector status"
box_exec "$BOX" runuser -u report-collector -- report-collector status || true
