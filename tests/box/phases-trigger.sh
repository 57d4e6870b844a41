# shellcheck shell=bash
# Runs started by hand, in the booted box: `systemctl start report-collector.service` while the
# timer is active, at a second of the minute where the shipped starting deadline (10 s) would
# skip a timer start, collects and says it was started by hand; so does `report-collector run`
# typed by root, which leaves no root-owned file behind. A timer elapse during a run started
# by hand is merged into it; a timer moved by a drop-in (`OnCalendar=`) places its runs in its
# own slots. Sourced by scenario.sh.

# hand_window BOX [FROM TO]: waits until no run is going and the second of the minute is
# between FROM and TO (default :15 to :40), so that a run started now is past the starting
# deadline of its minute's slot and ends before the next elapse; it returns at the start of a
# whole second, so that `--since @$(date +%s)` finds only what comes after.
hand_window() {
    local box=$1 from=${2:-15} to=${3:-40} sec
    _idle() { ! collector_active "$box"; }
    wait_until 90 _idle || return 1
    sec=$(($(date +%s) % 60))
    if ((sec < from)); then
        sleep $((from - sec))
    elif ((sec > to)); then
        # The next minute's timer run comes first; let it finish.
        sleep $((60 + from - sec))
        wait_until 60 _idle || return 1
        sec=$(($(date +%s) % 60))
        if ((sec < from || sec > to)); then
            return 1
        fi
    fi
    sleep_until $(($(date +%s) + 1))
}

# hand_start BOX [--no-block]: `systemctl start report-collector.service`; its status. The
# start is in HAND_SINCE (its whole second), HAND_CALLED and HAND_RETURNED (when `systemctl
# start` was called and when it returned, seconds.nanoseconds).
hand_start() {
    local box=$1 rc=0
    shift
    HAND_SINCE=$(date +%s)
    HAND_CALLED=$(now)
    box_exec "$box" systemctl start "$@" report-collector.service || rc=$?
    HAND_RETURNED=$(now)
    return "$rc"
}

# journal_usec BOX MATCH...: the journal's time (microseconds since the epoch) of the first
# entry matching; empty when there is none.
journal_usec() {
    journal_json "$@" | head -n 1 | jq -r '.__REALTIME_TIMESTAMP // empty' 2>/dev/null
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

# phase_hand_started BOX: soon after installation (phase_install checked the state directory
# before any run), a run by root as typed and a `systemctl start` (blocking, then --no-block)
# collect as runs started by hand.
phase_hand_started() {
    local box=$1 t0 rc=0 stray out started ended
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
    if ! hand_start "$box" --no-block; then
        fail "systemctl start --no-block report-collector.service failed"
        return 0
    fi
    t0=$HAND_SINCE
    _run_ended() { journal_json "$box" -t report-collector --since "@$t0" | grep -q '"OUTCOME"'; }
    if ! wait_until 60 _run_ended; then
        fail "systemctl start --no-block: no decision line within 60 s"
        journal_text "$box" -u report-collector.service --since "@$t0" | show
        return 0
    fi
    # The run's own start (systemd's "Starting" line) and end (its decision line, written as it
    # ends), against the instant `systemctl start --no-block` had returned on this side.
    started=$(journal_usec "$box" -u report-collector.service MESSAGE_ID="$UNIT_STARTING_ID" --since "@$t0")
    ended=$(journal_usec "$box" -t report-collector --since "@$t0" OUTCOME=collected)
    if [[ -n $started && -n $ended ]] &&
        awk -v r="$HAND_RETURNED" -v e="$ended" 'BEGIN { exit !(r < e / 1e6) }'; then
        pass "systemctl start --no-block returned $(elapsed "$HAND_CALLED" "$HAND_RETURNED" 3) s after the call, before the run it queued had ended (the run started at $(elapsed "$HAND_CALLED" "${started%??????}.${started: -6}" 3) s and ended at $(elapsed "$HAND_CALLED" "${ended%??????}.${ended: -6}" 3) s)"
    else
        fail "systemctl start --no-block returned $(elapsed "$HAND_CALLED" "$HAND_RETURNED" 3) s after the call, not before its run ended (started ${started:-?} us, decision line ${ended:-none} us)"
    fi
    hand_collected "$box" "$t0" "systemctl start --no-block"
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

# timer_starts BOX: how many runs of report-collector.service systemd started in the first 5 s
# of a minute, as the timer does (the scenario's starts by hand come later in the minute; 5 s,
# not START_LIMIT, so that a start slowed by a busy host still counts here).
timer_starts() {
    box_exec "$1" journalctl --no-pager -q -o short-unix -u report-collector.service \
        MESSAGE_ID="$UNIT_STARTING_ID" 2>/dev/null |
        awk '{ if ($1 % 60 < 5) n++ } END { print n + 0 }'
}

# phase_hand_after BOX WHAT [fast] [FROM-TO] [TIMER_STARTS]: a `systemctl start` later in the
# scenario (after a kill -9 of the timer's run, late in a minute, after the timer has fired
# many times) still collects as a run started by hand. With "fast", the server is first given
# 2 s reports, so the run ends before the next elapse. FROM-TO: the seconds of the minute to
# start in (default 15-40). With TIMER_STARTS, the timer must have started at least that many
# runs on the minute by then.
phase_hand_after() {
    local box=$1 what=$2 fast=${3:-} window=${4:-15-40} min_fired=${5:-} t0 fired ended
    fired=$(timer_starts "$box")
    if [[ -n $min_fired ]]; then
        if ((fired >= min_fired)); then
            pass "the timer had started $fired runs on the minute before this start (at least $min_fired seen by the scenario)"
        else
            fail "the timer had started $fired runs on the minute, fewer than the $min_fired the scenario saw"
            journal_text "$box" -u report-collector.service MESSAGE_ID="$UNIT_STARTING_ID" | show
        fi
    fi
    if [[ -n $fast ]]; then
        _idle() { ! collector_active "$box"; }
        wait_until 90 _idle || true
        apis_reports_take "$box" 2s
        box_exec "$box" systemctl restart report-apis.service
    fi
    if ! hand_window "$box" "${window%-*}" "${window#*-}"; then
        fail "no quiet moment between :${window%-*} and :${window#*-} to start a run by hand ($what)"
        return 0
    fi
    t0=$(date +%s)
    if ! hand_start "$box"; then
        fail "systemctl start report-collector.service ($what) failed"
    fi
    hand_collected "$box" "$t0" "systemctl start $what (the timer had started $fired runs on the minute)"
    # A run that outlasted its minute would have taken the next elapse in (merged).
    ended=$(journal_usec "$box" -t report-collector --since "@$t0" OUTCOME=collected)
    if [[ -n $ended ]] && ((ended / 1000000 / 60 != t0 / 60)); then
        fail "systemctl start $what: the run ended at $(hhmmss $((ended / 1000000))), past the next elapse"
    fi
}

# decision_fields BOX MATCH...: the decision lines' OUTCOME, SKIP, SLOT and TRIGGER, one a line.
decision_fields() {
    local box=$1
    shift
    journal_json "$box" -t report-collector "$@" |
        jq -c 'select(.OUTCOME != null) | {OUTCOME, SKIP, SLOT, TRIGGER}' 2>/dev/null
}

# iso_slot EPOCH: a slot as the decision line's SLOT field writes it.
iso_slot() {
    date -u -d "@$1" +%Y-%m-%dT%H:%M:%SZ
}

# phase_timer_calendar BOX: an operator moves the timer with a drop-in (`OnCalendar=*:*:30`)
# and a daemon-reload, and changes nothing else: the timer's run at :30 collects in the slot
# hh:mm:30 (schedule-period, 1m by default, would place it at hh:mm:00, 30 s late against the
# 10 s starting deadline, and skip it: shown with `run --trigger timer`). The drop-in is then
# removed and the timer is back on :00.
phase_timer_calendar() {
    local box=$1 t0 next slot lines offset rc out
    local dropin=/etc/systemd/system/report-collector.timer.d/test-calendar.conf
    _idle() { ! collector_active "$box"; }
    wait_until 30 _idle || true
    box_exec "$box" mkdir -p "${dropin%/*}"
    box_exec "$box" tee "$dropin" >/dev/null <<'EOF'
# Written by the end-to-end test: the timer moved to :30.
[Timer]
OnCalendar=
OnCalendar=*:*:30
EOF
    t0=$(date +%s)
    box_exec "$box" systemctl daemon-reload
    next=$(date -d "$(prop "$box" report-collector.timer NextElapseUSecRealtime)" +%s 2>/dev/null || echo 0)
    if ((next % 60 == 30)); then
        pass "after a drop-in OnCalendar=*:*:30 and daemon-reload, the timer's next elapse is $(hhmmss "$next")"
    else
        fail "after a drop-in OnCalendar=*:*:30 and daemon-reload, the timer's next elapse is '$(prop "$box" report-collector.timer NextElapseUSecRealtime)', not on :30"
    fi
    slot=$(((($(date +%s) + 2) / 60) * 60 + 30))
    ((slot < $(date +%s) + 2)) && slot=$((slot + 60))
    # What systemd started on the reload itself, before that elapse (shown, not judged).
    lines=$(journal_text "$box" -u report-collector.service --since "@$t0" MESSAGE_ID="$UNIT_STARTING_ID")
    [[ -n $lines ]] && info "systemd started report-collector.service after the daemon-reload, before the :30 elapse: $lines"
    info "waiting for the timer's elapse at $(hhmmss "$slot")"
    sleep_until "$slot"
    _slot_decided() { journal_json "$box" -t report-collector --since "@$slot" | grep -q '"OUTCOME"'; }
    wait_until 20 _slot_decided || true
    lines=$(journal_json "$box" -t report-collector --since "@$slot" OUTCOME=collected \
        TRIGGER=report-collector.timer SLOT="$(iso_slot "$slot")")
    if [[ -n $lines ]] && offset=$(start_offset "$box" "$slot"); then
        pass "the timer's run at $(hhmmss "$slot") (started $offset s after it) collected with SLOT=$(iso_slot "$slot") TRIGGER=report-collector.timer: the schedule is the timer's"
    else
        fail "no run collected with SLOT=$(iso_slot "$slot") TRIGGER=report-collector.timer after OnCalendar=*:*:30; the journal since:"
        journal_text "$box" -u report-collector.service --since "@$slot" | show
    fi
    decision_fields "$box" --since "@$slot" | show

    # The same second held to schedule-period, as a run outside systemd declares it.
    wait_until 30 _idle || true
    rc=0
    out=$(box_exec "$box" runuser -u report-collector -- report-collector --trigger timer run 2>&1) || rc=$?
    if ((rc == 75)) && grep -q "$(date -u -d "@$((slot - 30))" +%H:%M:%S)" <<<"$out"; then
        pass "a timer start at :$(printf %02d $(($(date +%s) % 60))) placed by schedule-period (run --trigger timer) is skipped as late for slot $(hhmmss $((slot - 30))): exit 75"
    else
        fail "run --trigger timer at :$(printf %02d $(($(date +%s) % 60))): exit $rc, want 75 (late for slot $(hhmmss $((slot - 30))))"
    fi
    echo "$out" | tail -n 2 | show

    t0=$(date +%s)
    box_exec "$box" rm -f "$dropin"
    box_exec "$box" rmdir --ignore-fail-on-non-empty "${dropin%/*}"
    box_exec "$box" systemctl daemon-reload
    next=$(date -d "$(prop "$box" report-collector.timer NextElapseUSecRealtime)" +%s 2>/dev/null || echo 0)
    check "drop-in removed and daemon-reload: the timer's next elapse is back on :00 ($(hhmmss "$next"))" \
        test $((next % 60)) -eq 0 -a "$next" -gt "$t0"
    sleep 1
    lines=$(journal_text "$box" -u report-collector.service --since "@$t0" MESSAGE_ID="$UNIT_STARTING_ID")
    [[ -n $lines ]] && info "systemd started report-collector.service on the daemon-reload that removed the drop-in: $lines"
    wait_until 20 _idle || true
}

# epoch_of BOX UNIT PROPERTY: a timestamp property of a unit in seconds since the epoch, 0
# when it has none.
epoch_of() {
    date -d "$(prop "$1" "$2" "$3")" +%s 2>/dev/null || echo 0
}

# phase_merged_elapse BOX: a run started by hand (`systemctl start --no-block` at :50, a 15 s
# report) is still going when the timer's elapse comes. As report-collector/README.md says
# ("Runs started by hand"): systemd merges the elapse into that run (the timer's
# LastTriggerUSec moves to it), starts nothing then nor when the run ends, and the journal has
# one start and the run's own decision line, started by hand, in the slot of the minute it
# started in; the timer waits for its next elapse.
phase_merged_elapse() {
    local box=$1 elapse inv inv_after last n_starts lines decided want_slot ended
    _idle() { ! collector_active "$box"; }
    wait_until 60 _idle || true
    apis_reports_take "$box" 15s
    box_exec "$box" systemctl restart report-apis.service
    elapse=$(epoch_of "$box" report-collector.timer NextElapseUSecRealtime)
    if ((elapse % 60 != 0)); then
        fail "the timer's next elapse is not on the minute ($(prop "$box" report-collector.timer NextElapseUSecRealtime))"
        return 0
    fi
    if ((elapse - $(date +%s) < 13)); then
        elapse=$((elapse + 60))
    fi
    info "starting a run by hand 10 s before the elapse at $(hhmmss "$elapse")"
    sleep_until $((elapse - 10))
    if ! hand_start "$box" --no-block; then
        fail "systemctl start --no-block report-collector.service failed"
        return 0
    fi
    if ! wait_new_run "$box" "" 5; then
        fail "no run going after systemctl start --no-block at $(hhmmss "${HAND_CALLED%.*}")"
        journal_text "$box" -u report-collector.service --since "@$HAND_SINCE" | show
        return 0
    fi
    inv=$(prop "$box" report-collector.service InvocationID)
    want_slot=$(iso_slot $((HAND_SINCE / 60 * 60)))
    sleep_until $((elapse + 2))
    last=$(epoch_of "$box" report-collector.timer LastTriggerUSec)
    inv_after=$(prop "$box" report-collector.service InvocationID)
    if ((last == elapse)) && [[ $inv_after == "$inv" ]] && collector_active "$box"; then
        pass "the elapse at $(hhmmss "$elapse") fell during the run started by hand at $(hhmmss "${HAND_CALLED%.*}"): the timer's LastTriggerUSec moved to it, the same run goes on ($inv)"
    else
        fail "at the elapse $(hhmmss "$elapse") during the run started by hand: LastTriggerUSec $(hhmmss "$last"), invocation $inv -> $inv_after, $(prop "$box" report-collector.service ActiveState)"
    fi
    _decided() { journal_json "$box" -t report-collector --since "@$HAND_SINCE" | grep -q '"OUTCOME"'; }
    if ! wait_until 30 _decided; then
        fail "the run started by hand at $(hhmmss "${HAND_CALLED%.*}") wrote no decision line within 30 s of the elapse"
        journal_text "$box" -u report-collector.service --since "@$HAND_SINCE" | show
        return 0
    fi
    # systemd fires a swallowed elapse the instant a timer's run ends: give it time to.
    wait_until 30 _idle || true
    sleep 3
    n_starts=$(journal_count "$box" -u report-collector.service MESSAGE_ID="$UNIT_STARTING_ID" --since "@$HAND_SINCE")
    decided=$(journal_count "$box" -t report-collector --since "@$HAND_SINCE" OUTCOME=collected OUTCOME=skipped OUTCOME=failed OUTCOME=cancelled)
    lines=$(journal_json "$box" -t report-collector --since "@$HAND_SINCE" OUTCOME=collected TRIGGER=manual SLOT="$want_slot")
    ended=$(journal_usec "$box" -t report-collector --since "@$HAND_SINCE" OUTCOME=collected)
    if [[ -n $ended ]] && ((HAND_SINCE < elapse && ended / 1000000 >= elapse)); then
        pass "the run started by hand at $(hhmmss "$HAND_SINCE") ended at $(hhmmss $((ended / 1000000))), across the elapse"
    else
        fail "the run started by hand at $(hhmmss "$HAND_SINCE") did not span the elapse $(hhmmss "$elapse") (decision line at ${ended:-none} us)"
    fi
    if ((n_starts == 1 && decided == 1)) && [[ -n $lines ]] && grep -q 'started by hand' <<<"$lines"; then
        pass "one run, one decision line: collected, started by hand (TRIGGER=manual), SLOT=$want_slot; systemd started nothing at the elapse nor when the run ended"
    else
        fail "after the run started by hand across the elapse: $n_starts starts, $decided decision lines (want 1 and 1, collected, TRIGGER=manual, SLOT=$want_slot)"
    fi
    journal_text "$box" -u report-collector.service --since "@$HAND_SINCE" | show
    decision_fields "$box" --since "@$HAND_SINCE" | show
    check "the timer waits for its next elapse ($(hhmmss "$(epoch_of "$box" report-collector.timer NextElapseUSecRealtime)"), want $(hhmmss $((elapse + 60))))" \
        test "$(epoch_of "$box" report-collector.timer NextElapseUSecRealtime)" -eq $((elapse + 60))

    apis_reports_take "$box" 2s
    box_exec "$box" systemctl restart report-apis.service
}
