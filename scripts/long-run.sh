#!/usr/bin/env bash
# The experiment in real time: the shipped packages, units and configuration (timer every
# minute, heavy load toggling every 2 minutes) in a booted Debian 12 box for LONG_RUN_MINUTES
# (default 12), with nothing compressed. Keeps the journal of the server and the collector as
# evidence in experiment/results/box-journal.txt, with a summary at its head, and fails when
# the evidence shows two collections at once (the server's pending peak above 1), a failed run,
# or no run that outlasted its minute (then the heavy load was not seen at all). Whether the
# run systemd fires right after a long one is skipped depends on how late it is against the
# shipped starting-deadline (10s); the summary counts both.
#
# Optional in `make test` (LONG_RUN=1 make test); on its own: `make long-run`. Run as root.
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
# shellcheck source=../tests/box/scenario.sh
source "$REPO/tests/box/scenario.sh" # metric

require_root "boots a container"

MINUTES=${LONG_RUN_MINUTES:-12}
RELEASE=${LONG_RUN_RELEASE:-bookworm}
OUT=${LONG_RUN_OUT:-$REPO/experiment/results/box-journal.txt}
BOX=report-collector-long-$$
workdir_init long
on_exit box_stop "$BOX"

box_install_shipped "$BOX" "$RELEASE"

started=$(box_exec "$BOX" date -u '+%Y-%m-%d %H:%M:%S')
echo "== running for $MINUTES minutes from $started UTC (the shipped 2-minute heavy load, the minutely timer)"
sleep "$((MINUTES * 60))"

journal=$(box_exec "$BOX" journalctl --no-pager -o short-iso-precise --since "$started" \
    _SYSTEMD_UNIT=report-apis.service + UNIT=report-apis.service + \
    _SYSTEMD_UNIT=report-collector.service + UNIT=report-collector.service + \
    SYSLOG_IDENTIFIER=report-collector)
fields=$(box_exec "$BOX" journalctl --no-pager -o export --since "$started" \
    SYSLOG_IDENTIFIER=report-collector | grep -a '^OUTCOME=' || true)
peak=$(metric "$BOX" report_apis_tickets_pending_peak)
collected=$(grep -c '^OUTCOME=collected' <<<"$fields" || true)
skipped=$(grep -c '^OUTCOME=skipped' <<<"$fields" || true)
failed=$(grep -c '^OUTCOME=failed' <<<"$fields" || true)
late=$(grep -c 'missed slot' <<<"$journal" || true)
long=$(grep -oE 'collected the report for ticket [^ ]+ in [0-9.]+s' <<<"$journal" |
    awk '{ sub(/s$/, "", $NF); if ($NF + 0 > 60) n++ } END { print n + 0 }')

mkdir -p "$(dirname "$OUT")"
{
    echo "# report-collector in a booted Debian box ($RELEASE), shipped packages and configuration"
    echo "# $MINUTES minutes from $started UTC: timer every minute (AccuracySec=1s), heavy load"
    echo "# toggling every 2 minutes, starting-deadline 10s, policy forbid."
    echo "# runs collected: $collected, skipped: $skipped (late re-fires skipped: $late), failed: $failed"
    echo "# runs that outlasted their minute (held back by heavy load): $long"
    echo "# server's highest pending ticket count: ${peak:-unknown}"
    echo
    echo "$journal"
} >"$OUT"
echo "== journal kept in $OUT"
head -n 5 "$OUT"

status=0
if [[ ${peak:-} != 1 ]]; then
    echo "FAIL: the server's pending peak is ${peak:-unknown}, not 1: two collections overlapped" >&2
    status=1
fi
if ((collected == 0 || failed > 0)); then
    echo "FAIL: $collected runs collected and $failed failed in $MINUTES minutes" >&2
    status=1
fi
if ((MINUTES >= 8 && long == 0)); then
    echo "FAIL: no run outlasted its minute: the heavy-load phases were not seen" >&2
    status=1
fi
exit "$status"
