# shellcheck shell=bash
# Runs started by hand, in the booted box: `systemctl start report-collector.service` while the
# timer is active, at a second of the minute where the shipped starting deadline (10 s) would
# skip a timer start, collects and says it was started by hand; so does `report-collector run`
# typed by root, which leaves no root-owned file behind. Sourced by scenario.sh.

# hand_window BOX: waits until no run is going and the minute is between :15 and :40, so that
# a run started now is past the starting deadline of its minute's slot and ends before the
# next elapse; it returns at the start of a whole second, so that `--since @$(date +%s)` finds
# only what comes after.
hand_window() {
    local box=$1 sec
    _idle() { ! collector_active "$box"; }
    wait_until 90 _idle || return 1
    sec=$(($(date +%s) % 60))
    if ((sec < 15)); then
        sleep $((15 - sec))
    elif ((sec > 40)); then
        # The next minute's timer run comes first; let it finish.
        sleep $((75 - sec))
        wait_until 60 _idle || return 1
        sec=$(($(date +%s) % 60))
        if ((sec < 15 || sec > 40)); then
            return 1
        fi
    fi
    sleep_until $(($(date +%s) + 1))
}

# hand_start BOX [--no-block]: `systemctl start report-collector.service`. When systemd itself
# could not spawn the run (its cgroup race right after a run ended, status=219/CGROUP on 252 or
# "Failed to spawn executor" on 257; see tests/README.md), a NOTE quoting systemd's line and one
# more start.
hand_start() {
    local box=$1 t0 spawn_failure
    shift
    # The race is most likely in the moments after a run ended: give systemd a second.
    sleep 1
    t0=$(date +%s)
    if box_exec "$box" systemctl start "$@" report-collector.service; then
        sleep 0.5
        spawn_failure=$(spawn_failure_since "$box" "$t0")
        [[ -z $spawn_failure ]] && return 0
    else
        spawn_failure=$(spawn_failure_since "$box" "$t0")
        [[ -n $spawn_failure ]] || return 1
    fi
    note "systemd failed to spawn the run started by hand (its cgroup race, not the collector): ${spawn_failure#* }; starting it once more"
    sleep 1
    box_exec "$box" systemctl start "$@" report-collector.service
}

# hand_collected BOX SINCE WHAT: the runs since SINCE were all started by hand and at least one
# collected, as the journal (-t report-collector) shows; WHAT names the start.
hand_collected() {
    local box=$1 since=$2 what=$3 lines
    lines=$(journal_json "$box" -t report-collector --since "@$since" OUTCOME=collected TRIGGER=manual)
    if [[ -n $lines ]] && grep -q 'started by hand' <<<"$lines"; then
        pass "$what at :$(printf %02d $((since % 60))) (past the 10 s starting deadline of its minute) collected; the journal says it was started by hand (TRIGGER=manual)"
    else
        fail "$what at :$(printf %02d $((since % 60))) did not collect as a run started by hand; the journal since:"
        journal_text "$box" -t report-collector --since "@$since" | show
        return 1
    fi
    if (($(journal_count "$box" -t report-collector --since "@$since" SKIP=late) == 0)); then
        pass "$what: no skip for a missed slot (SKIP=late)"
    else
        fail "$what: skipped as a missed slot"
        journal_text "$box" -t report-collector --since "@$since" SKIP=late | show
    fi
}

# phase_hand_started BOX: right after installation, before the timer's first run has made the
# state directory: the directory exists (tmpfiles.d), a run by root as typed and a
# `systemctl start` (blocking, then --no-block) collect as runs started by hand.
phase_hand_started() {
    local box=$1 t0 rc=0 stray out s0
    check "the state directory exists from installation on: $(box_exec "$box" stat -c '%U:%G %a' /var/lib/report-collector 2>&1)" \
        test "$(box_exec "$box" stat -c '%U:%G %a' /var/lib/report-collector 2>&1)" = "report-collector:report-collector 750"
    if ! hand_window "$box"; then
        fail "no quiet moment between :15 and :40 to start runs by hand"
        return 0
    fi

    t0=$(date +%s)
    out=$(box_exec "$box" report-collector run 2>&1) || rc=$?
    echo "$out" | tail -n 3 | show
    if ((rc == 0)) && grep -q 'started as root: running as report-collector' <<<"$out"; then
        pass "report-collector run as root: exit 0, running as the state directory's owner"
    else
        fail "report-collector run as root: exit $rc (want 0, switched to report-collector)"
    fi
    stray=$(box_exec "$box" find /var/lib/report-collector ! -user report-collector -printf '%u %p\n' 2>&1)
    if [[ -z $stray ]]; then
        pass "the run by root left no file the timer's runs cannot use (all owned by report-collector)"
    else
        fail "files not owned by report-collector after the run by root:"
        echo "$stray" | show
    fi
    hand_collected "$box" "$t0" "report-collector run as root"

    hand_window "$box" || true
    t0=$(date +%s)
    if hand_start "$box"; then
        pass "systemctl start report-collector.service returned 0 once the run ended ($(($(date +%s) - t0)) s)"
    else
        fail "systemctl start report-collector.service failed"
    fi
    hand_collected "$box" "$t0" "systemctl start"

    hand_window "$box" || true
    t0=$(date +%s)
    s0=$(now)
    box_exec "$box" systemctl start --no-block report-collector.service
    info "systemctl start --no-block returned after $(elapsed "$s0" "$(now)" 3) s, the run still to come"
    _queued_run_done() { ! collector_active "$box"; }
    wait_until 30 _queued_run_done || true
    if [[ -n $(spawn_failure_since "$box" "$t0") ]]; then
        hand_start "$box" --no-block || true
    fi
    _run_ended() { journal_json "$box" -t report-collector --since "@$t0" | grep -q '"OUTCOME"'; }
    if wait_until 60 _run_ended; then
        hand_collected "$box" "$t0" "systemctl start --no-block"
    else
        fail "systemctl start --no-block: no decision line within 60 s"
    fi
}

# phase_schedule_from_timer BOX: with stale-after unset, `status` takes its default from the
# timer's interval as systemd shows it (1 min: 5m), not from schedule-period (set to 2m here,
# which would give 10m). Needs a timer that has triggered at least once and is waiting.
phase_schedule_from_timer() {
    local box=$1 seconds
    _idle() { ! collector_active "$box"; }
    wait_until 60 _idle || true
    box_exec "$box" sh -c 'printf "schedule-period = \"2m\"\n" >/run/schedule-2m.toml'
    seconds=$(box_exec "$box" runuser -u report-collector -- report-collector --config /run/schedule-2m.toml status --json 2>/dev/null |
        jq -r '.stale_after_seconds' 2>/dev/null) || true
    box_exec "$box" rm -f /run/schedule-2m.toml
    if [[ $seconds == 300 ]]; then
        pass "status: stale-after defaults to 5 periods of the timer as systemd shows it (300 s), not of schedule-period 2m"
    else
        fail "status: stale-after '${seconds:-?}' s, want 300 (5 x the timer's minute)"
    fi
}

# phase_hand_after BOX WHAT [fast]: a `systemctl start` later in the scenario (after a kill -9
# of the timer's run, after the timer has fired many times) still collects as a run started by
# hand. With "fast", the server is first given 2 s reports, so the run ends before the next
# elapse.
phase_hand_after() {
    local box=$1 what=$2 fast=${3:-} t0 fired
    fired=$(journal_count "$box" -u report-collector.service MESSAGE_ID="$UNIT_STARTING_ID")
    if [[ -n $fast ]]; then
        _idle() { ! collector_active "$box"; }
        wait_until 90 _idle || true
        box_exec "$box" tee /etc/report-apis/config.toml >/dev/null <<'EOF'
# Written by the end-to-end test: no heavy load, a report takes 2 s.
[heavy-load]
period = "0s"

[report]
generation-time = "2s"
EOF
        box_exec "$box" systemctl restart report-apis.service
    fi
    if ! hand_window "$box"; then
        fail "no quiet moment between :15 and :40 to start a run by hand ($what)"
        return 0
    fi
    t0=$(date +%s)
    if ! hand_start "$box"; then
        fail "systemctl start report-collector.service ($what) failed"
    fi
    hand_collected "$box" "$t0" "systemctl start $what (report-collector.service started $fired times before)"
}
