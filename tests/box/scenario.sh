# shellcheck shell=bash
# The end-to-end scenario in one booted box: install the two packages, then watch the timer,
# the lock, the starting deadline, crashes, the watchdog, upgrade, removal and purge happen
# in a real systemd, reading only what an operator would read (systemctl, journalctl,
# /metrics, the files on disk).
#
# It talks to the box only through box_exec (see driver-nspawn.sh), so any driver can run it.
# Time is compressed with the configuration files, never by editing units: the timer stays
# minutely, so the scenario is planned around its minute slots (A, B, C, D below) and takes
# four to five minutes of wall time.
#
# Entry point: scenario_run BOX. Reads DEB_APIS, DEB_COLLECTOR (the packages to install; when
# unset, REPORT_APIS_DEB/REPORT_COLLECTOR_DEB, and when those are unset too the box must have
# them installed already, as the Docker image does) and DEB_APIS_NEXT, DEB_COLLECTOR_NEXT (the
# same with a higher version, for the upgrade; without them the upgrade is reported as not run).

# shellcheck source=../lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

UNIT_STARTING_ID=7d4958e842da4a758f6c1cdc7b36dcc5
UNIT_STARTED_ID=39f53479d3a045ac8e11786248231fbf

bx() {
    box_exec "$BOX" "$@"
}

prop() {
    bx systemctl show -p "$2" --value "$1"
}

# One metric's value from the server's /metrics, fetched inside the box (its own loopback).
metric() {
    # shellcheck disable=SC2016
    bx bash -c 'exec 3<>/dev/tcp/127.0.0.1/8080 || exit 1
        printf "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" >&3
        cat <&3' 2>/dev/null | tr -d '\r' | awk -v m="$1" '$1 == m { print $2 }'
}

# Journal entries matching the arguments, one JSON object a line.
journal_json() {
    bx journalctl --no-pager -q -o json "$@" 2>/dev/null || true
}

journal_count() {
    journal_json "$@" | grep -c . || true
}

journal_text() {
    bx journalctl --no-pager -q -o short-iso-precise "$@" 2>/dev/null || true
}

# systemd's own line when it failed to start report-collector.service since EPOCH_SECONDS
# (its cgroup race, see phase_skipped_slot); empty when it did not.
spawn_failure_since() {
    journal_text -u report-collector.service --since "@$1" \
        --grep 'status=219/CGROUP|Failed to spawn executor' | head -n 1
}

collector_active() {
    [[ $(prop report-collector.service ActiveState) == activating ]]
}

# Waits for a run of report-collector.service other than invocation $1 to be running.
wait_new_run() {
    local previous=$1 timeout=$2
    # shellcheck disable=SC2317
    _new_run_running() {
        local inv
        inv=$(prop report-collector.service InvocationID)
        [[ -n $inv && $inv != "$previous" ]] && collector_active &&
            [[ $(prop report-collector.service MainPID) != 0 ]]
    }
    wait_until "$timeout" _new_run_running
}

# How late after its slot a timer's run may start: AccuracySec=1s lets systemd fire anywhere in
# the first second, and on a busy 2-core host a start 1.023 s after :00 has been measured (the
# event loop's own delay); half a second is allowed for that, and every offset is printed.
START_LIMIT=1.5

# Prints the offset (seconds) after SLOT at which systemd started report-collector.service for
# that slot, from the journal's "Starting" entry; fails when no start lies within
# [SLOT, SLOT + START_LIMIT).
start_offset() {
    local slot=$1
    bx journalctl --no-pager -q -o short-unix -u report-collector.service \
        MESSAGE_ID=$UNIT_STARTING_ID --since "@$((slot - 5))" --until "@$((slot + 5))" 2>/dev/null |
        awk -v s="$slot" -v limit="$START_LIMIT" '{ d = $1 - s; if (d >= 0 && d < limit) { printf "%.3f\n", d; found = 1; exit } }
            END { exit !found }'
}

hhmmss() {
    date -u -d "@$1" +%H:%M:%S
}

# --- phases --------------------------------------------------------------------------------

phase_install() {
    local now sec inv_before
    bx mkdir -p /root/debs
    if [[ -n $DEB_APIS_NEXT && -n $DEB_COLLECTOR_NEXT ]]; then
        bx tee /root/debs/report-apis-next.deb >/dev/null <"$DEB_APIS_NEXT"
        bx tee /root/debs/report-collector-next.deb >/dev/null <"$DEB_COLLECTOR_NEXT"
    fi
    if [[ -z $DEB_APIS || -z $DEB_COLLECTOR ]]; then
        if bx dpkg-query -W report-apis report-collector >/dev/null 2>&1; then
            info "packages already installed in the box: $(bx dpkg-query -W report-apis report-collector | tr '\n' ' ')"
        else
            fail "no packages to install (DEB_APIS, DEB_COLLECTOR) and none installed in the box"
            return 1
        fi
    else
        bx tee /root/debs/report-apis.deb >/dev/null <"$DEB_APIS"
        bx tee /root/debs/report-collector.deb >/dev/null <"$DEB_COLLECTOR"
        # Install away from a minute boundary, so a timer run cannot be mistaken for one that
        # dpkg started.
        now=$(date +%s)
        sec=$((now % 60))
        if ((sec >= 50)); then
            sleep_until $((now - sec + 62))
        fi
        inv_before=$(prop report-collector.service InvocationID)
        if bx dpkg -i /root/debs/report-apis.deb /root/debs/report-collector.deb </dev/null >"$BOX_OUT/dpkg-install.log" 2>&1; then
            pass "dpkg -i report-apis report-collector"
        else
            fail "dpkg -i report-apis report-collector"
            show <"$BOX_OUT/dpkg-install.log"
            return 1
        fi
        if [[ $(prop report-collector.service InvocationID) == "$inv_before" ]]; then
            pass "dpkg did not start report-collector.service (no collection inside dpkg)"
        else
            fail "report-collector.service was started during installation"
        fi
    fi

    _apis_active() { [[ $(prop report-apis.service ActiveState) == active ]]; }
    if wait_until 15 _apis_active; then
        pass "report-apis.service active after install (Type=notify: READY=1 received); status: $(prop report-apis.service StatusText)"
    else
        fail "report-apis.service not active after install: $(prop report-apis.service ActiveState)/$(prop report-apis.service SubState)"
        journal_text -u report-apis.service | tail -n 20 | show
    fi
    local ready
    ready=$(journal_count -u report-apis.service MESSAGE_ID=$UNIT_STARTED_ID)
    if ((ready >= 1)) && [[ -n $(prop report-apis.service StatusText) ]]; then
        pass "journal has systemd's 'Started report-apis.service' (sent after READY=1) and a StatusText"
    else
        fail "no 'Started' entry ($ready) or no StatusText for report-apis.service"
    fi
    check "report-apis.service enabled" test "$(bx systemctl is-enabled report-apis.service)" = enabled
    check "report-collector.timer enabled" test "$(bx systemctl is-enabled report-collector.timer)" = enabled
    check "report-collector.timer active" test "$(prop report-collector.timer ActiveState)" = active
    check "system user report-collector exists (sysusers.d): $(bx getent passwd report-collector)" \
        bx getent passwd report-collector
    check "man pages installed" bx test -f /usr/share/man/man8/report-apis.8.gz -a -f /usr/share/man/man8/report-collector.8.gz

    local verify
    if verify=$(bx systemd-analyze verify --man=no report-apis.service report-collector.service report-collector.timer 2>&1) &&
        [[ -z $verify ]]; then
        pass "systemd-analyze verify clean inside the box ($(bx systemctl --version | head -n1))"
    else
        fail "systemd-analyze verify inside the box"
        echo "$verify" | show
    fi
    local unit exposure
    for unit in report-apis.service report-collector.service; do
        exposure=$(bx systemd-analyze security --no-pager "$unit" 2>/dev/null | sed -n 's/.*Overall exposure level for [^:]*: //p')
        info "systemd-analyze security $unit (running system): ${exposure:-?}"
    done
}

phase_timer_listed() {
    local timers next next_epoch
    timers=$(bx systemctl list-timers --no-pager report-collector.timer)
    echo "$timers" | show
    next=$(prop report-collector.timer NextElapseUSecRealtime)
    next_epoch=$(date -d "$next" +%s 2>/dev/null || echo 0)
    if grep -q report-collector.timer <<<"$timers" && ((next_epoch > 0 && next_epoch % 60 == 0)); then
        pass "list-timers lists report-collector.timer, next elapse on the minute ($(hhmmss "$next_epoch"))"
    else
        fail "list-timers: report-collector.timer missing or next elapse not on the minute ($next)"
    fi
    SLOT_A=$next_epoch
}

# Compressed settings: no heavy load for now, a 5 s report, a 1 s poll. The shipped starting
# deadline (10 s) is kept, as is the minutely timer.
phase_configure() {
    bx tee /etc/report-apis/config.toml >/dev/null <<'EOF'
# Written by the end-to-end test: no heavy load, a report takes 5 s.
[heavy-load]
period = "0s"

[report]
generation-time = "5s"
EOF
    bx tee /etc/report-collector/config.toml >/dev/null <<'EOF'
# Written by the end-to-end test: poll every second, shipped starting deadline.
poll-interval = "1s"
starting-deadline = "10s"
EOF
    bx systemctl restart report-apis.service
    check "report-apis.service active with the test configuration" test "$(prop report-apis.service ActiveState)" = active
}

# Slot A: the timer's run is killed with SIGKILL while it holds the lock; slot B must run.
phase_kill_collector() {
    info "waiting for slot A ($(hhmmss "$SLOT_A"))"
    sleep_until "$SLOT_A"
    if ! wait_new_run "" 10; then
        fail "no run of report-collector.service started at slot A"
        return 1
    fi
    INV_A=$(prop report-collector.service InvocationID)
    sleep 1.5
    local pid
    pid=$(prop report-collector.service MainPID)
    info "kill -9 $pid (the collector of slot A, holding the lock)"
    bx bash -c "kill -9 $pid"
    _killed() { ! collector_active && [[ $(prop report-collector.service Result) == signal ]]; }
    if wait_until 10 _killed; then
        pass "killed run recorded by systemd as failed (Result=signal)"
    else
        fail "killed run: state $(prop report-collector.service ActiveState), result $(prop report-collector.service Result)"
    fi
}

# From now until 15 s after slot C (= slot B + 60) the server is under heavy load: slot B's run
# polls past slot C, the elapse of C is swallowed, and the run systemd then starts at once is late.
phase_heavy_load() {
    local slot_b=$1 heavy_end period
    heavy_end=$((slot_b + 75))
    period=$((heavy_end - $(date +%s)))
    bx tee /etc/report-apis/config.toml >/dev/null <<EOF
# Written by the end-to-end test: heavy load from start until 15 s after slot C.
[heavy-load]
period = "${period}s"
initially-on = true

[report]
generation-time = "5s"
EOF
    bx systemctl restart report-apis.service
    if [[ $(metric report_apis_heavy_load) == 1 ]]; then
        pass "server under heavy load for ${period}s (report_apis_heavy_load 1)"
    else
        fail "server not under heavy load after restart (report_apis_heavy_load '$(metric report_apis_heavy_load)')"
    fi
}

# phase_slot_b SLOT_B PREVIOUS_INVOCATION WHAT_PREVIOUS: the long run of slot B, and a manual
# run meanwhile.
phase_slot_b() {
    local slot_b=$1 previous=$2 what_previous=$3 slot_c=$(($1 + 60)) pid_b out rc
    info "waiting for slot B ($(hhmmss "$slot_b"))"
    sleep_until "$slot_b"
    if wait_new_run "$previous" 10; then
        pass "slot B's run started normally after $what_previous (no stale lock)"
    else
        fail "slot B: no run is going after $what_previous; the journal since slot B:"
        journal_text -u report-collector.service --since "@$slot_b" | show
        return 1
    fi
    INV_B=$(prop report-collector.service InvocationID)
    pid_b=$(prop report-collector.service MainPID)
    sleep_until $((slot_b + 8))

    rc=0
    out=$(bx runuser -u report-collector -- report-collector run 2>&1) || rc=$?
    if ((rc == 75)) && grep -q "\b$pid_b\b" <<<"$out"; then
        pass "manual run while slot B holds the lock: exit 75, holder pid $pid_b named"
    else
        fail "manual run while slot B holds the lock: exit $rc (want 75), holder $pid_b named?"
    fi
    echo "$out" | show
    if (($(journal_count -t report-collector OUTCOME=skipped HOLDER_PID="$pid_b") >= 1)); then
        pass "journal (-t report-collector) has the manual skip with OUTCOME=skipped HOLDER_PID=$pid_b"
    else
        fail "journal has no OUTCOME=skipped HOLDER_PID=$pid_b entry for the manual run"
    fi
    local status
    status=$(bx runuser -u report-collector -- report-collector status 2>&1) || true
    info "report-collector status while slot B runs:"
    echo "$status" | show

    sleep_until $((slot_c + 3))
    if [[ $(prop report-collector.service InvocationID) == "$INV_B" ]] && collector_active; then
        pass "slot B's run still going 3 s after slot C: it outlasted its minute"
    else
        fail "slot B's run did not outlast its minute (heavy load too short?)"
    fi
}

# phase_skipped_slot SLOT_B: the late start after slot B's long run skips itself. Returns 2
# when systemd itself failed to start that late run (the skip could not be observed), so the
# caller can judge the next long run instead; the other guarantees are judged either way.
phase_skipped_slot() {
    local slot_b=$1 slot_c=$(($1 + 60)) collected skipped late_inv peak status=0
    # The run of slot B ends once heavy load is over (C+15 s) and the report is generated.
    _b_done() { [[ $(prop report-collector.service InvocationID) != "$INV_B" ]] || ! collector_active; }
    if ! wait_until 45 _b_done; then
        fail "slot B's run still running 45 s after heavy load should have ended"
        return 1
    fi
    collected=$(journal_count -t report-collector OUTCOME=collected --since "@$slot_b")
    if ((collected >= 1)); then
        pass "slot B's run collected its report after heavy load"
    else
        fail "slot B's run did not collect (journal -t report-collector OUTCOME=collected: $collected)"
    fi
    # systemd starts the swallowed elapse at once; that start is past the starting deadline.
    _late_skip() { (($(journal_count -t report-collector OUTCOME=skipped --since "@$((slot_c + 10))") >= 1)); }
    local late_skipped=0
    if wait_until 15 _late_skip; then
        late_skipped=1
        pass "the elapse swallowed during slot B's run was started late and skipped (journal -t report-collector)"
        journal_text -t report-collector OUTCOME=skipped --since "@$((slot_c + 10))" | show
        journal_json -t report-collector OUTCOME=skipped --since "@$((slot_c + 10))" |
            grep -o '"SLOT":"[^"]*"' | head -n1 | sed 's/^/SLOT field: /' | show
    elif SPAWN_FAILURE=$(spawn_failure_since $((slot_c + 10))) && [[ -n $SPAWN_FAILURE ]]; then
        # Seen in about one run in five, in both releases: the start comes a few milliseconds
        # after the long run ends, and systemd's late cleanup of the previous run's cgroup
        # removes it under the new process. systemd never ran the collector, so there is no
        # skip to see; the caller judges the next long run's late start instead.
        status=2
        journal_text -u report-collector.service --since "@$((slot_c + 10))" | tail -n 8 | show
    else
        fail "no skipped slot in the journal after slot B's long run"
        journal_text -u report-collector.service --since "@$slot_c" | tail -n 20 | show
    fi
    late_inv=$(prop report-collector.service InvocationID)
    if ((late_skipped)); then
        if [[ $late_inv != "$INV_B" ]] && [[ $(prop report-collector.service Result) == success ]]; then
            pass "the skipped run counts as success for systemd (SuccessExitStatus=75)"
        else
            fail "the skipped run: result $(prop report-collector.service Result)"
        fi
    fi
    skipped=$(journal_count -u report-collector.service --since "@$((slot_c + 10))")
    info "journalctl -u report-collector.service since the late start: $skipped entries"
    journal_text -u report-collector.service --since "@$((slot_c + 10))" | show

    peak=$(metric report_apis_tickets_pending_peak)
    if [[ $peak == 1 ]]; then
        pass "report_apis_tickets_pending_peak stayed 1 through heavy load, manual run and late start"
    else
        fail "report_apis_tickets_pending_peak is '$peak', want 1: two collections at once"
    fi
    return "$status"
}

phase_slot_d() {
    local slot_d=$((SLOT_A + 180 + SLOT_SHIFT)) slot reports offset
    info "waiting for slot D ($(hhmmss "$slot_d"))"
    sleep_until "$slot_d"
    _d_collected() { (($(journal_count -t report-collector OUTCOME=collected --since "@$slot_d") >= 1)); }
    local want=2 spawn_failure
    if wait_until 30 _d_collected; then
        pass "slot D collected normally after the long run and the skip"
    elif spawn_failure=$(spawn_failure_since "$slot_d") && [[ -n $spawn_failure ]]; then
        # The same systemd cgroup race as at the late start (see phase_skipped_slot): systemd
        # never ran the collector for this slot. Slot E's run, in the upgrade, collects again.
        note "systemd failed to spawn slot D's run of report-collector.service (systemd's cgroup race, not the collector): ${spawn_failure#* }"
        want=1
    else
        fail "slot D did not collect; the journal since slot D:"
        journal_text -u report-collector.service --since "@$slot_d" | tail -n 20 | show
        journal_text -t report-collector --since "@$slot_d" | tail -n 20 | show
    fi
    if (($(journal_count -u report-collector.service OUTCOME=collected) >= want)); then
        pass "journalctl -u report-collector shows the collected runs (OUTCOME=collected)"
    else
        fail "journalctl -u report-collector shows fewer than $want collected runs"
    fi
    journal_text -u report-collector.service OUTCOME=collected | show
    reports=$(bx find /var/lib/report-collector/reports -type f | wc -l)
    if ((reports >= want)); then
        pass "reports kept in /var/lib/report-collector/reports ($reports files)"
        # shellcheck disable=SC2016 # expanded inside the box
        bx sh -c 'ls -l /var/lib/report-collector/reports; f=$(ls -t /var/lib/report-collector/reports/* | head -n1); echo "$f:"; cat "$f"' | show
    else
        fail "reports kept: $reports, want at least $want"
    fi
    for slot in "$SLOT_A" $((SLOT_A + 60)) ${SLOT_B_RETRY:+"$SLOT_B_RETRY"} "$slot_d"; do
        if offset=$(start_offset "$slot"); then
            pass "run for slot $(hhmmss "$slot") started ${offset} s after it (AccuracySec=1s; limit $START_LIMIT s)"
        else
            fail "no run started within $START_LIMIT s of slot $(hhmmss "$slot")"
            journal_text -u report-collector.service MESSAGE_ID=$UNIT_STARTING_ID | show
        fi
    done
}

phase_server_crashes() {
    local pid restarts
    # Longer reports from here on, so that a collection is running during the upgrade below.
    bx tee /etc/report-apis/config.toml >/dev/null <<'EOF'
# Written by the end-to-end test: no heavy load, a report takes 20 s.
[heavy-load]
period = "0s"

[report]
generation-time = "20s"
EOF
    pid=$(prop report-apis.service MainPID)
    restarts=$(prop report-apis.service NRestarts)
    info "kill -9 $pid (report-apis)"
    bx bash -c "kill -9 $pid"
    _restarted() {
        local now
        now=$(prop report-apis.service MainPID)
        [[ $now != 0 && $now != "$pid" && $(prop report-apis.service ActiveState) == active ]]
    }
    if wait_until 15 _restarted && (($(prop report-apis.service NRestarts) > restarts)); then
        pass "kill -9 of the server: systemd restarted it (NRestarts $(prop report-apis.service NRestarts))"
    else
        fail "kill -9 of the server: not restarted ($(prop report-apis.service ActiveState))"
    fi

    pid=$(prop report-apis.service MainPID)
    info "kill -STOP $pid (report-apis stops answering and stops sending WATCHDOG=1)"
    bx bash -c "kill -STOP $pid"
    if wait_until 40 _restarted; then
        pass "stalled server: the watchdog got it restarted"
    else
        fail "stalled server: not restarted within 40 s"
    fi
    if (($(journal_count -u report-apis.service --since "@$(($(date +%s) - 60))" --grep "[Ww]atchdog timeout") >= 1)); then
        pass "journalctl -u report-apis shows the watchdog timeout"
        journal_text -u report-apis.service --grep "[Ww]atchdog" | tail -n 3 | show
    else
        fail "journalctl -u report-apis has no watchdog timeout line"
        journal_text -u report-apis.service | tail -n 15 | show
    fi
}

# Slot E: the timer's run is going (a 20 s report since the crash tests) while dpkg upgrades
# the collector; then the server is upgraded.
phase_upgrade() {
    local inv pid_before version slot_e=$((SLOT_A + 240 + SLOT_SHIFT))
    if [[ -z $DEB_APIS_NEXT || -z $DEB_COLLECTOR_NEXT ]]; then
        info "upgrade not run: DEB_APIS_NEXT and DEB_COLLECTOR_NEXT name no packages"
        return 0
    fi
    inv=$(prop report-collector.service InvocationID)
    info "waiting for slot E ($(hhmmss "$slot_e")) to upgrade during its run"
    sleep_until "$slot_e"
    if ! wait_new_run "$inv" 10; then
        fail "upgrade: no run going at slot E; the journal:"
        journal_text -u report-collector.service -n 15 | show
    fi
    inv=$(prop report-collector.service InvocationID)
    sleep_until $((slot_e + 3))
    if bx dpkg -i /root/debs/report-collector-next.deb </dev/null >"$BOX_OUT/dpkg-upgrade.log" 2>&1; then
        version=$(bx dpkg-query -W -f '${Version}' report-collector)
        pass "dpkg -i report-collector $version (upgrade)"
    else
        fail "dpkg -i report-collector (upgrade)"
        show <"$BOX_OUT/dpkg-upgrade.log"
    fi
    if [[ $(prop report-collector.service InvocationID) == "$inv" ]] && collector_active; then
        pass "the timer's run going during the upgrade is still running after it"
    else
        fail "the upgrade cut the running collection (state $(prop report-collector.service ActiveState)); the journal:"
        journal_text -u report-collector.service -n 15 | show
    fi
    _inv_done() { [[ $(prop report-collector.service InvocationID) != "$inv" ]] || ! collector_active; }
    if wait_until 40 _inv_done && [[ $(prop report-collector.service Result) == success ]] &&
        (($(journal_count -u report-collector.service _SYSTEMD_INVOCATION_ID="$inv" OUTCOME=collected) >= 1)); then
        pass "that run then finished collected"
    else
        fail "that run did not finish collected (result $(prop report-collector.service Result)); the journal:"
        journal_text -u report-collector.service -n 15 | show
    fi
    check "report-collector.timer still enabled and active after the upgrade" \
        test "$(bx systemctl is-enabled report-collector.timer)/$(prop report-collector.timer ActiveState)" = enabled/active

    pid_before=$(prop report-apis.service MainPID)
    if bx dpkg -i /root/debs/report-apis-next.deb </dev/null >>"$BOX_OUT/dpkg-upgrade.log" 2>&1; then
        version=$(bx dpkg-query -W -f '${Version}' report-apis)
        pass "dpkg -i report-apis $version (upgrade)"
    else
        fail "dpkg -i report-apis (upgrade)"
        show <"$BOX_OUT/dpkg-upgrade.log"
    fi
    local pid_after
    pid_after=$(prop report-apis.service MainPID)
    if [[ $pid_after != 0 && $pid_after != "$pid_before" && $(prop report-apis.service ActiveState) == active ]] &&
        ! bx readlink "/proc/$pid_after/exe" | grep -q deleted; then
        pass "upgrade restarted the server on the new binary (pid $pid_before -> $pid_after)"
    else
        fail "upgrade did not restart the server (pid $pid_before -> $pid_after)"
    fi
}

phase_remove() {
    if bx dpkg -r report-collector report-apis </dev/null >"$BOX_OUT/dpkg-remove.log" 2>&1; then
        pass "dpkg -r report-collector report-apis"
    else
        fail "dpkg -r report-collector report-apis"
        show <"$BOX_OUT/dpkg-remove.log"
    fi
    local u state
    for u in report-apis.service report-collector.service report-collector.timer; do
        state=$(prop "$u" ActiveState)
        check "after remove: $u stopped ($state)" test "$state" = inactive -o "$state" = failed
    done
    # (--all would still list it: on removal the generated postrm masks the units, as
    # debhelper does, until purge.)
    check "after remove: report-collector.timer no longer in list-timers" \
        bash -c '! grep -q report-collector.timer <<<"$1"' _ "$(bx systemctl list-timers --no-pager)"
    check "after remove: binaries gone" bx test ! -e /usr/bin/report-apis -a ! -e /usr/bin/report-collector
    check "after remove: configuration kept" bx test -f /etc/report-apis/config.toml -a -f /etc/report-collector/config.toml
    check "after remove: state kept (/var/lib/report-collector/reports)" bx test -d /var/lib/report-collector/reports

    if bx dpkg --purge report-collector report-apis </dev/null >"$BOX_OUT/dpkg-purge.log" 2>&1; then
        pass "dpkg --purge report-collector report-apis"
    else
        fail "dpkg --purge report-collector report-apis"
        show <"$BOX_OUT/dpkg-purge.log"
    fi
    check "after purge: /etc/report-apis and /etc/report-collector gone" \
        bx test ! -e /etc/report-apis -a ! -e /etc/report-collector
    check "after purge: /var/lib/report-collector gone" bx test ! -e /var/lib/report-collector
    check "after purge: the system user report-collector stays" bx getent passwd report-collector
    check "after purge: dpkg knows neither package" \
        bash -c '! grep -Eq "^(ii|rc) +report-(apis|collector) " <<<"$1"' _ "$(bx dpkg -l 2>/dev/null)"
}

# Called when phase_skipped_slot returned STATUS. On 2 (systemd failed to start the late run:
# its own race, not the collector's) the long run is played once more with the slot after C as
# its slot B, so the late start is judged on the next long run; two minutes later for the rest.
phase_retry_long_run() {
    local status=$1 slot_b previous
    ((status == 2)) || return "$status"
    slot_b=$((SLOT_A + 180))
    note "systemd failed to spawn the late run of report-collector.service, so its skip could not be observed (systemd's cgroup race, not the collector): ${SPAWN_FAILURE#* }; judging the late start after the next long run instead (slot B again at $(hhmmss "$slot_b"))"
    SLOT_SHIFT=120 SLOT_B_RETRY=$slot_b
    previous=$(prop report-collector.service InvocationID)
    phase_heavy_load "$slot_b"
    phase_slot_b "$slot_b" "$previous" "the late start systemd failed to spawn" || return 1
    phase_skipped_slot "$slot_b" && return 0
    status=$?
    if ((status == 2)); then
        fail "systemd failed to spawn the late run again, after the retry too; the skip could not be observed"
    fi
    return 1
}

# Runs every phase in order; a phase that cannot leave the box in the state the next one needs
# ends the scenario (its FAIL line says why).
scenario_run() {
    BOX=$1
    if [[ $TEST_LABEL == host ]]; then
        TEST_LABEL=$BOX
    fi
    DEB_APIS=${DEB_APIS:-${REPORT_APIS_DEB:-}}
    DEB_COLLECTOR=${DEB_COLLECTOR:-${REPORT_COLLECTOR_DEB:-}}
    DEB_APIS_NEXT=${DEB_APIS_NEXT:-}
    DEB_COLLECTOR_NEXT=${DEB_COLLECTOR_NEXT:-}
    BOX_OUT=${BOX_OUT:-$BOX_WORKDIR/$BOX.out}
    mkdir -p "$BOX_OUT"

    phase_install || return 0
    phase_timer_listed
    phase_configure
    phase_kill_collector || return 0
    phase_heavy_load $((SLOT_A + 60))
    phase_slot_b $((SLOT_A + 60)) "$INV_A" "the killed run" || return 0
    SLOT_SHIFT=0 SLOT_B_RETRY=
    phase_skipped_slot $((SLOT_A + 60)) || phase_retry_long_run $? || true
    phase_slot_d
    phase_server_crashes
    phase_upgrade
    # A caller with checks of its own on the installed system afterwards (tests/docker.sh)
    # sets SCENARIO_REMOVE=no.
    if [[ ${SCENARIO_REMOVE:-yes} != no ]]; then
        phase_remove
    fi
}
