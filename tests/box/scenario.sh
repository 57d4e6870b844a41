# shellcheck shell=bash
# The end-to-end scenario in one booted box: install the two packages, then watch the timer,
# the lock, the starting deadline, crashes, the watchdog, upgrade, removal and purge happen
# in a real systemd, reading only what an operator would read (systemctl, journalctl,
# /metrics, the files on disk).
#
# It talks to the box only through box_exec (see driver-nspawn.sh), so any driver can run it.
# Time is compressed with the configuration files, never by editing units: the timer stays
# minutely, so the scenario is planned around its minute slots (A, B, C, D, E below) and takes
# four to five minutes of wall time.
#
# A scenario is a list of phases (scenario_packages, scenario_minutes; tests/docker.sh has one
# of its own), run by scenario_run. A phase takes what it needs as arguments, the box first,
# and hands back what it found (hand_back) in variables whose names its caller passes: the
# list shows everything that goes from one phase to the next. A phase returns 1 only when the
# box is not in the state the next phases need; the list then ends there (the FAIL line says
# why).
#
# Entry point: scenario_run BOX SCENARIO ARG..., e.g.
#   scenario_run "$box" packages "$apis_deb" "$collector_deb" "$apis_next_deb" "$collector_next_deb"

# shellcheck source=../lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=phases-config.sh
source "$(dirname "${BASH_SOURCE[0]}")/phases-config.sh"
# shellcheck source=phases-trigger.sh
source "$(dirname "${BASH_SOURCE[0]}")/phases-trigger.sh"
# shellcheck source=phases-catalog.sh
source "$(dirname "${BASH_SOURCE[0]}")/phases-catalog.sh"
# shellcheck source=phases-health.sh
source "$(dirname "${BASH_SOURCE[0]}")/phases-health.sh"
# shellcheck source=phases-resume.sh
source "$(dirname "${BASH_SOURCE[0]}")/phases-resume.sh"

UNIT_STARTING_ID=7d4958e842da4a758f6c1cdc7b36dcc5
UNIT_STARTED_ID=39f53479d3a045ac8e11786248231fbf

# --- the runner ----------------------------------------------------------------------------

# scenario_run BOX SCENARIO ARG...: runs scenario_SCENARIO BOX ARG..., its lines labelled
# with the box's name unless the caller chose a label.
scenario_run() {
    local box=$1 scenario=$2
    shift 2
    if [[ $TEST_LABEL == host ]]; then
        TEST_LABEL=$box
    fi
    mkdir -p "$(box_out "$box")"
    "scenario_$scenario" "$box" "$@" || info "scenario $scenario ended early"
    phase spawned "$box"
}

# phase_spawned BOX: systemd started every process of every unit it was asked to in the box,
# the whole scenario long: none failed before it ran (status=219/CGROUP, "Failed to spawn
# executor"). Each box has cgroups of its own for this (box_cgroup_dirs in driver-nspawn.sh).
phase_spawned() {
    local lines
    info "systemd's \"Failed to kill control group\" lines in the box's journal (shown, not judged): $(journal_text "$1" --grep 'Failed to kill control group' | grep -c . || true)"
    lines=$(spawn_failures "$1")
    if [[ -z $lines ]]; then
        pass "systemd spawned every unit's process the scenario started (no status=219/CGROUP, no failed executor, in the box's journal)"
    else
        fail "systemd could not spawn some unit's process in the box:"
        echo "$lines" | show
    fi
}

_HANDED=()

# hand_back VAR VALUE: what a phase found, for the variable its caller named VAR. phase sets it
# once the phase has returned, when the phase's own locals (which could hide VAR) are gone.
hand_back() {
    _HANDED+=("$1" "$2")
}

# phase NAME ARG...: runs phase_NAME ARG... between two lines that name it, with the wall
# clock and how long it took: what to look for first when a box run fails once in ten. A
# command that fails inside a phase never ends the box's process (errexit is off there); the
# phase judges it with a FAIL line. (Its locals start with _: they must not hide the caller's.)
phase() {
    local _name=$1 _t0 _rc=0 _i
    shift
    _t0=$(now)
    _HANDED=()
    info "-- $_name (at $(hhmmss "${_t0%.*}"))"
    "phase_$_name" "$@" || _rc=$?
    for ((_i = 0; _i < ${#_HANDED[@]}; _i += 2)); do
        printf -v "${_HANDED[_i]}" '%s' "${_HANDED[_i + 1]}"
    done
    if ((_rc == 0)); then
        info "-- $_name: $(elapsed "$_t0" "$(now)") s"
    else
        info "-- $_name: $(elapsed "$_t0" "$(now)") s; the box is not as the next phases need it"
    fi
    return "$_rc"
}

# The packages' whole life in a fresh box (tests/run.sh): install, the timer's minutes,
# upgrade, removal and purge.
scenario_packages() {
    local box=$1 apis=$2 collector=$3 apis_next=$4 collector_next=$5
    phase install "$box" "$apis" "$collector" || return
    phase installed "$box"
    phase health_fresh "$box"
    phase config_check "$box"
    phase config_reload "$box"
    phase catalog "$box"
    phase catalog_server "$box"
    phase catalog_skip "$box" || return
    phase hand_started "$box"
    scenario_minutes "$box" "$apis_next" "$collector_next" || return
    # The timer's runs on the minute so far: A, K, B, D and E at least.
    phase hand_after "$box" "after the timer fired many times" fast 15-40 5
    phase schedule_from_timer "$box"
    phase catalog_decisions "$box"
    phase merged_elapse "$box"
    # After the minutes: the server's configuration then makes a run take seconds.
    phase health_scrape "$box"
    phase remove "$box"
    phase catalog_removed "$box"
}

# From installed packages to their upgrade: what every box runs, whoever installed them.
# Slot A's run is killed (a run started by hand follows), K's is killed under heavy load, B's
# resumes K's ticket and outlasts its minute (C is swallowed), D is normal, E is upgraded
# under.
scenario_minutes() {
    local box=$1 apis_next=$2 collector_next=$3
    local slot_a='' inv_a='' slot_k inv_k='' pid_k='' ticket_k='' slot_b inv_b=''
    phase timer_listed "$box" slot_a || return
    phase compress_time "$box"
    phase kill_run "$box" "$slot_a" inv_a || return
    phase hand_after "$box" "right after the timer's run was killed with kill -9"
    slot_k=$((slot_a + 60))
    slot_b=$((slot_k + 60))
    # Heavy load from before slot K until 15 s after slot C, the server never restarted.
    phase heavy_load "$box" "$slot_b"
    phase kill_under_load "$box" "$slot_k" "$inv_a" inv_k pid_k ticket_k || return
    phase slot_b "$box" "$slot_b" "$inv_k" "the run killed under heavy load" inv_b || return
    phase late_start "$box" "$slot_b" "$inv_b"
    phase resumed "$box" "$slot_b" "$pid_k" "$ticket_k"
    # In the wait for slot D: a start by hand late in the minute (2 s reports from here on).
    phase hand_after "$box" "late in the minute" fast 50-53
    phase slot_d "$box" $((slot_b + 120))
    phase on_time "$box" "$slot_a" "$slot_k" "$slot_b" $((slot_b + 120))
    # In the wait for slot E: the timer moved to :30 by a drop-in, and back.
    phase timer_calendar "$box"
    phase server_crashes "$box"
    # Slot E: the next minute that leaves a few seconds to see its run start.
    phase upgrade "$box" $((($(date +%s) + 3) / 60 * 60 + 60)) "$apis_next" "$collector_next"
}

# --- reading the box -----------------------------------------------------------------------

# Where the box's dpkg logs go on the host.
box_out() {
    echo "$BOX_WORKDIR/$1.out"
}

# prop BOX UNIT PROPERTY
prop() {
    box_exec "$1" systemctl show -p "$3" --value "$2"
}

# metric BOX NAME: one metric's value from the server's /metrics, fetched inside the box (its
# own loopback).
metric() {
    box_exec "$1" bash -c 'exec 3<>/dev/tcp/127.0.0.1/8080 || exit 1
        printf "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" >&3
        cat <&3' 2>/dev/null | tr -d '\r' | awk -v m="$2" '$1 == m { print $2 }'
}

# journal_json BOX MATCH...: journal entries matching, one JSON object a line.
journal_json() {
    local box=$1
    shift
    box_exec "$box" journalctl --no-pager -q -o json "$@" 2>/dev/null || true
}

journal_count() {
    journal_json "$@" | grep -c . || true
}

journal_text() {
    local box=$1
    shift
    box_exec "$box" journalctl --no-pager -q -o short-iso-precise "$@" 2>/dev/null || true
}

# journal_says BOX SECONDS TEXT ARGS...: whether the journal (journalctl ARGS) shows a line
# holding TEXT within SECONDS. journald reads a process's output stream on its own time: a
# line a process wrote just before it exited may not be there yet when it has exited.
journal_says() {
    local box=$1 seconds=$2 text=$3 deadline
    shift 3
    deadline=$((SECONDS + seconds))
    until journal_text "$box" "$@" | grep -qF -- "$text"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

# spawn_failures BOX: systemd's own lines, all the box's boot long, where it could not start a
# unit's process (status=219/CGROUP in 252, "Failed to spawn executor" in 257).
spawn_failures() {
    journal_text "$1" --grep 'status=219/CGROUP|Failed to spawn executor|Failed to attach to cgroup'
}

collector_active() {
    [[ $(prop "$1" report-collector.service ActiveState) == activating ]]
}

# wait_new_run BOX PREVIOUS SECONDS: waits for a run of report-collector.service other than
# invocation PREVIOUS to be running.
wait_new_run() {
    local box=$1 previous=$2 timeout=$3
    _new_run_running() {
        local inv
        inv=$(prop "$box" report-collector.service InvocationID)
        [[ -n $inv && $inv != "$previous" ]] && collector_active "$box" &&
            [[ $(prop "$box" report-collector.service MainPID) != 0 ]]
    }
    wait_until "$timeout" _new_run_running
}

# timer_run_at BOX SLOT NAME PREVIOUS: waits for SLOT (called NAME in messages) and for the
# timer's run of it, a run other than invocation PREVIOUS, to be going; fails (quietly: the
# caller judges) when none is within 10 s.
timer_run_at() {
    local box=$1 slot=$2 name=$3 previous=$4
    info "waiting for slot $name ($(hhmmss "$slot"))"
    sleep_until "$slot"
    wait_new_run "$box" "$previous" 10
}

# run_to_kill BOX SLOT NAME PREVIOUS: the timer's run of SLOT (called NAME) going, to be
# killed. Fails, showing the journal, when it is not.
run_to_kill() {
    local box=$1 slot=$2 name=$3 previous=$4
    timer_run_at "$box" "$slot" "$name" "$previous" && return 0
    fail "no run of report-collector.service started at slot $name; the journal since:"
    journal_text "$box" -u report-collector.service --since "@$slot" | show
    return 1
}

# How late after its slot a timer's run may start: AccuracySec=1s lets systemd fire anywhere in
# the first second, and on a busy 2-core host a start 1.023 s after :00 has been measured (the
# event loop's own delay); half a second is allowed for that, and every offset is printed.
START_LIMIT=1.5

# start_offset BOX SLOT: prints the offset (seconds) after SLOT at which systemd started
# report-collector.service for that slot, from the journal's "Starting" entry; fails when no
# start lies within [SLOT, SLOT + START_LIMIT).
start_offset() {
    local box=$1 slot=$2
    box_exec "$box" journalctl --no-pager -q -o short-unix -u report-collector.service \
        MESSAGE_ID="$UNIT_STARTING_ID" --since "@$((slot - 5))" --until "@$((slot + 5))" 2>/dev/null |
        awk -v s="$slot" -v limit="$START_LIMIT" '{ d = $1 - s; if (d >= 0 && d < limit) { printf "%.3f\n", d; found = 1; exit } }
            END { exit !found }'
}

hhmmss() {
    date -u -d "@$1" +%H:%M:%S
}

# --- phases --------------------------------------------------------------------------------

# phase_install BOX APIS_DEB COLLECTOR_DEB: dpkg -i both packages, away from a minute boundary.
phase_install() {
    local box=$1 apis=$2 collector=$3 out now sec inv_before inv state
    out=$(box_out "$box")
    box_exec "$box" mkdir -p /root/debs
    box_exec "$box" tee /root/debs/report-apis.deb >/dev/null <"$apis"
    box_exec "$box" tee /root/debs/report-collector.deb >/dev/null <"$collector"
    # Away from a minute boundary, so that a timer run cannot be taken for one dpkg started.
    now=$(date +%s)
    sec=$((now % 60))
    if ((sec >= 50)); then
        sleep_until $((now - sec + 62))
    fi
    inv_before=$(prop "$box" report-collector.service InvocationID)
    if box_exec "$box" dpkg -i /root/debs/report-apis.deb /root/debs/report-collector.deb \
        </dev/null >"$out/dpkg-install.log" 2>&1; then
        pass "dpkg -i report-apis report-collector"
    else
        fail "dpkg -i report-apis report-collector"
        show <"$out/dpkg-install.log"
        return 1
    fi
    inv=$(prop "$box" report-collector.service InvocationID)
    if [[ $inv == "$inv_before" ]]; then
        pass "dpkg did not start report-collector.service (no collection inside dpkg)"
    else
        fail "report-collector.service was started during installation"
    fi
    # The state directory is the package's (tmpfiles.d), not made by a run's StateDirectory=:
    # judged only while report-collector.service has never run in this boot (no InvocationID).
    state=$(box_exec "$box" stat -c '%U:%G %a' /var/lib/report-collector 2>&1)
    if [[ -n $inv ]]; then
        note "report-collector.service already ran ($inv) when dpkg -i returned, so the state directory ($state) may be its StateDirectory='s: not judged"
    elif [[ $state == "report-collector:report-collector 750" ]]; then
        pass "the state directory exists from installation on, before any run (report-collector.service has no InvocationID yet): $state"
    else
        fail "the state directory right after dpkg -i, before any run: '$state', want report-collector:report-collector 750"
    fi
}

# phase_installed BOX: the packages as installed, whoever installed them (dpkg -i in
# phase_install, or the Docker image's build).
phase_installed() {
    local box=$1 ready verify unit exposure
    info "installed: $(box_exec "$box" dpkg-query -W report-apis report-collector | tr '\n' ' ')"
    _apis_active() { [[ $(prop "$box" report-apis.service ActiveState) == active ]]; }
    if wait_until 15 _apis_active; then
        pass "report-apis.service active after install (Type=notify: READY=1 received); status: $(prop "$box" report-apis.service StatusText)"
    else
        fail "report-apis.service not active after install: $(prop "$box" report-apis.service ActiveState)/$(prop "$box" report-apis.service SubState)"
        journal_text "$box" -u report-apis.service | tail -n 20 | show
    fi
    ready=$(journal_count "$box" -u report-apis.service MESSAGE_ID="$UNIT_STARTED_ID")
    if ((ready >= 1)) && [[ -n $(prop "$box" report-apis.service StatusText) ]]; then
        pass "journal has systemd's 'Started report-apis.service' (sent after READY=1) and a StatusText"
    else
        fail "no 'Started' entry ($ready) or no StatusText for report-apis.service"
    fi
    check "report-apis.service enabled" test "$(box_exec "$box" systemctl is-enabled report-apis.service)" = enabled
    check "report-collector.timer enabled" test "$(box_exec "$box" systemctl is-enabled report-collector.timer)" = enabled
    check "report-collector.timer active" test "$(prop "$box" report-collector.timer ActiveState)" = active
    check "system user report-collector exists (sysusers.d): $(box_exec "$box" getent passwd report-collector)" \
        box_exec "$box" getent passwd report-collector
    check "man pages installed" box_exec "$box" test -f /usr/share/man/man8/report-apis.8.gz -a -f /usr/share/man/man8/report-collector.8.gz
    # LimitNOFILE= in the unit: the server's connection cap (512 by default) stays below the
    # limit its process really runs with, so accept() never fails for want of a descriptor.
    local nofile
    nofile=$(box_exec "$box" sh -c "awk '/^Max open files/ { print \$4 }' /proc/\$(systemctl show -p MainPID --value report-apis.service)/limits")
    check "report-apis runs with the unit's open-file limit (LimitNOFILE=2048): $nofile" test "$nofile" = 2048

    if verify=$(box_exec "$box" systemd-analyze verify --man=no report-apis.service report-collector.service report-collector.timer 2>&1) &&
        [[ -z $verify ]]; then
        pass "systemd-analyze verify clean inside the box ($(box_exec "$box" systemctl --version | head -n1))"
    else
        fail "systemd-analyze verify inside the box"
        echo "$verify" | show
    fi
    for unit in report-apis.service report-collector.service; do
        exposure=$(box_exec "$box" systemd-analyze security --no-pager "$unit" 2>/dev/null | sed -n 's/.*Overall exposure level for [^:]*: //p')
        info "systemd-analyze security $unit (running system): ${exposure:-?}"
    done
}

# phase_timer_listed BOX SLOT_A: the timer is listed, its next elapse on the minute; that
# elapse, slot A, goes to the variable named SLOT_A.
phase_timer_listed() {
    local box=$1 out_slot_a=$2 timers next next_epoch
    timers=$(box_exec "$box" systemctl list-timers --no-pager report-collector.timer)
    echo "$timers" | show
    next=$(prop "$box" report-collector.timer NextElapseUSecRealtime)
    next_epoch=$(date -d "$next" +%s 2>/dev/null || echo 0)
    if grep -q report-collector.timer <<<"$timers" && ((next_epoch > 0 && next_epoch % 60 == 0)); then
        pass "list-timers lists report-collector.timer, next elapse on the minute ($(hhmmss "$next_epoch"))"
    else
        fail "list-timers: report-collector.timer missing or next elapse not on the minute ($next)"
        return 1
    fi
    hand_back "$out_slot_a" "$next_epoch"
}

# apis_reports_take BOX DURATION: report-apis' configuration for what follows: no heavy load,
# a report ready DURATION after its request. Read at the server's next start.
apis_reports_take() {
    box_exec "$1" tee /etc/report-apis/config.toml >/dev/null <<EOF
# Written by the end-to-end test: no heavy load, a report takes $2.
[heavy-load]
period = "0s"

[report]
generation-time = "$2"
EOF
}

# phase_compress_time BOX: no heavy load for now, a 5 s report, a 1 s poll. The shipped
# starting deadline (10 s) is kept, as is the minutely timer.
phase_compress_time() {
    local box=$1
    apis_reports_take "$box" 5s
    box_exec "$box" tee /etc/report-collector/config.toml >/dev/null <<'EOF'
# Written by the end-to-end test: poll every second, shipped starting deadline.
poll-interval = "1s"
starting-deadline = "10s"
EOF
    box_exec "$box" systemctl restart report-apis.service
    check "report-apis.service active with the test configuration" test "$(prop "$box" report-apis.service ActiveState)" = active
}

# phase_kill_run BOX SLOT_A INV_A: the timer's run of slot A is killed with SIGKILL while it
# holds the lock; its invocation id goes to the variable named INV_A.
phase_kill_run() {
    local box=$1 slot_a=$2 out_inv_a=$3 pid
    run_to_kill "$box" "$slot_a" A "" || return 1
    hand_back "$out_inv_a" "$(prop "$box" report-collector.service InvocationID)"
    sleep 1.5
    pid=$(prop "$box" report-collector.service MainPID)
    info "kill -9 $pid (the collector of slot A, holding the lock)"
    box_exec "$box" bash -c "kill -9 $pid"
    _killed() { ! collector_active "$box" && [[ $(prop "$box" report-collector.service Result) == signal ]]; }
    if wait_until 10 _killed; then
        pass "killed run recorded by systemd as failed (Result=signal)"
    else
        fail "killed run: state $(prop "$box" report-collector.service ActiveState), result $(prop "$box" report-collector.service Result)"
    fi
}

# phase_heavy_load BOX SLOT_B: from now until 15 s after slot C (= SLOT_B + 60) the server is
# under heavy load: slot B's run polls past slot C, the elapse of C is swallowed, and the run
# systemd then starts at once is late. Started before slot K (SLOT_B - 60), it also holds the
# run of K that is killed.
phase_heavy_load() {
    local box=$1 slot_b=$2 heavy_end period
    heavy_end=$((slot_b + 75))
    period=$((heavy_end - $(date +%s)))
    box_exec "$box" tee /etc/report-apis/config.toml >/dev/null <<EOF
# Written by the end-to-end test: heavy load from start until 15 s after slot C.
[heavy-load]
period = "${period}s"
initially-on = true

[report]
generation-time = "5s"
EOF
    box_exec "$box" systemctl restart report-apis.service
    if [[ $(metric "$box" report_apis_heavy_load) == 1 ]]; then
        pass "server under heavy load for ${period}s (report_apis_heavy_load 1)"
    else
        fail "server not under heavy load after restart (report_apis_heavy_load '$(metric "$box" report_apis_heavy_load)')"
    fi
}

# phase_slot_b BOX SLOT_B PREVIOUS WHAT_PREVIOUS INV_B: the long run of slot B, which starts
# after invocation PREVIOUS (described as WHAT_PREVIOUS), and a manual run meanwhile; B's
# invocation id goes to the variable named INV_B.
phase_slot_b() {
    local box=$1 slot_b=$2 previous=$3 what_previous=$4 out_inv_b=$5
    local slot_c=$(($2 + 60)) inv_b pid_b out rc status
    info "waiting for slot B ($(hhmmss "$slot_b"))"
    sleep_until "$slot_b"
    if wait_new_run "$box" "$previous" 10; then
        pass "slot B's run started normally after $what_previous (no stale lock)"
    else
        fail "slot B: no run is going after $what_previous; the journal since slot B:"
        journal_text "$box" -u report-collector.service --since "@$slot_b" | show
        return 1
    fi
    inv_b=$(prop "$box" report-collector.service InvocationID)
    hand_back "$out_inv_b" "$inv_b"
    pid_b=$(prop "$box" report-collector.service MainPID)
    sleep_until $((slot_b + 8))

    rc=0
    out=$(box_exec "$box" runuser -u report-collector -- report-collector run 2>&1) || rc=$?
    if ((rc == 75)) && grep -q "\b$pid_b\b" <<<"$out"; then
        pass "manual run while slot B holds the lock: exit 75, holder pid $pid_b named"
    else
        fail "manual run while slot B holds the lock: exit $rc (want 75), holder $pid_b named?"
    fi
    echo "$out" | show
    if (($(journal_count "$box" -t report-collector OUTCOME=skipped HOLDER_PID="$pid_b") >= 1)); then
        pass "journal (-t report-collector) has the manual skip with OUTCOME=skipped HOLDER_PID=$pid_b"
    else
        fail "journal has no OUTCOME=skipped HOLDER_PID=$pid_b entry for the manual run"
    fi
    status=$(box_exec "$box" runuser -u report-collector -- report-collector status 2>&1) || true
    info "report-collector status while slot B runs:"
    echo "$status" | show

    sleep_until $((slot_c + 3))
    if [[ $(prop "$box" report-collector.service InvocationID) == "$inv_b" ]] && collector_active "$box"; then
        pass "slot B's run still going 3 s after slot C: it outlasted its minute"
    else
        fail "slot B's run did not outlast its minute (heavy load too short?)"
    fi
}

# phase_late_start BOX SLOT_B INV_B: slot B's run collects once heavy load ends, and the start
# systemd fires at once after it is late and skips itself; never two collections at once.
phase_late_start() {
    local box=$1 slot_b=$2 inv_b=$3
    local slot_c=$(($2 + 60)) collected entries late_inv peak late_skipped=0
    # The run of slot B ends once heavy load is over (C+15 s) and the report is generated.
    _b_done() { [[ $(prop "$box" report-collector.service InvocationID) != "$inv_b" ]] || ! collector_active "$box"; }
    if ! wait_until 45 _b_done; then
        fail "slot B's run still running 45 s after heavy load should have ended"
        return 1
    fi
    collected=$(journal_count "$box" -t report-collector OUTCOME=collected --since "@$slot_b")
    if ((collected >= 1)); then
        pass "slot B's run collected its report after heavy load"
    else
        fail "slot B's run did not collect (journal -t report-collector OUTCOME=collected: $collected)"
    fi
    # systemd starts the swallowed elapse at once; that start is past the starting deadline.
    _late_skip() { (($(journal_count "$box" -t report-collector OUTCOME=skipped SKIP=late --since "@$((slot_c + 10))") >= 1)); }
    if wait_until 15 _late_skip; then
        late_skipped=1
        pass "the elapse swallowed during slot B's run was started late and skipped as late (journal -t report-collector OUTCOME=skipped SKIP=late)"
        journal_text "$box" -t report-collector OUTCOME=skipped SKIP=late --since "@$((slot_c + 10))" | show
        journal_json "$box" -t report-collector OUTCOME=skipped SKIP=late --since "@$((slot_c + 10))" |
            grep -o '"SLOT":"[^"]*"' | head -n1 | sed 's/^/SLOT field: /' | show
    else
        fail "no late start skipped as late (SKIP=late) in the journal after slot B's long run"
        journal_text "$box" -u report-collector.service --since "@$slot_c" | tail -n 20 | show
    fi
    late_inv=$(prop "$box" report-collector.service InvocationID)
    if ((late_skipped)); then
        if [[ $late_inv != "$inv_b" ]] && [[ $(prop "$box" report-collector.service Result) == success ]]; then
            pass "the skipped run counts as success for systemd (SuccessExitStatus=75)"
        else
            fail "the skipped run: result $(prop "$box" report-collector.service Result)"
        fi
    fi
    entries=$(journal_count "$box" -u report-collector.service --since "@$((slot_c + 10))")
    info "journalctl -u report-collector.service since the late start: $entries entries"
    journal_text "$box" -u report-collector.service --since "@$((slot_c + 10))" | show

    peak=$(metric "$box" report_apis_tickets_pending_peak)
    if [[ $peak == 1 ]]; then
        pass "report_apis_tickets_pending_peak stayed 1 through heavy load, manual run and late start"
    else
        fail "report_apis_tickets_pending_peak is '$peak', want 1: two collections at once"
    fi
}

# phase_slot_d BOX SLOT_D: a normal run after the long one; the collected runs and the reports
# kept on disk.
phase_slot_d() {
    local box=$1 slot_d=$2 reports want=2
    info "waiting for slot D ($(hhmmss "$slot_d"))"
    sleep_until "$slot_d"
    _d_collected() { (($(journal_count "$box" -t report-collector OUTCOME=collected --since "@$slot_d") >= 1)); }
    if wait_until 30 _d_collected; then
        pass "slot D collected normally after the long run and the skip"
    else
        fail "slot D did not collect; the journal since slot D:"
        journal_text "$box" -u report-collector.service --since "@$slot_d" | tail -n 20 | show
        journal_text "$box" -t report-collector --since "@$slot_d" | tail -n 20 | show
    fi
    if (($(journal_count "$box" -u report-collector.service OUTCOME=collected) >= want)); then
        pass "journalctl -u report-collector shows the collected runs (OUTCOME=collected)"
    else
        fail "journalctl -u report-collector shows fewer than $want collected runs"
    fi
    journal_text "$box" -u report-collector.service OUTCOME=collected | show
    reports=$(box_exec "$box" find /var/lib/report-collector/reports -type f | wc -l)
    if ((reports >= want)); then
        pass "reports kept in /var/lib/report-collector/reports ($reports files)"
        box_exec "$box" sh -c 'ls -l /var/lib/report-collector/reports; f=$(ls -t /var/lib/report-collector/reports/* | head -n1); echo "$f:"; cat "$f"' | show
    else
        fail "reports kept: $reports, want at least $want"
    fi
}

# phase_on_time BOX SLOT...: the timer's runs for these slots started within START_LIMIT of
# them (journal timestamps).
phase_on_time() {
    local box=$1 slot offset
    shift
    for slot in "$@"; do
        if offset=$(start_offset "$box" "$slot"); then
            pass "run for slot $(hhmmss "$slot") started ${offset} s after it (AccuracySec=1s; limit $START_LIMIT s)"
        else
            fail "no run started within $START_LIMIT s of slot $(hhmmss "$slot")"
            journal_text "$box" -u report-collector.service MESSAGE_ID="$UNIT_STARTING_ID" | show
        fi
    done
}

# phase_server_crashes BOX: kill -9 of the server, then a stalled one (the watchdog).
phase_server_crashes() {
    local box=$1 pid restarts
    # Longer reports from here on, so that a collection is running during the upgrade after.
    apis_reports_take "$box" 20s
    pid=$(prop "$box" report-apis.service MainPID)
    restarts=$(prop "$box" report-apis.service NRestarts)
    info "kill -9 $pid (report-apis)"
    box_exec "$box" bash -c "kill -9 $pid"
    _restarted() {
        local now
        now=$(prop "$box" report-apis.service MainPID)
        [[ $now != 0 && $now != "$pid" && $(prop "$box" report-apis.service ActiveState) == active ]]
    }
    if wait_until 15 _restarted && (($(prop "$box" report-apis.service NRestarts) > restarts)); then
        pass "kill -9 of the server: systemd restarted it (NRestarts $(prop "$box" report-apis.service NRestarts))"
    else
        fail "kill -9 of the server: not restarted ($(prop "$box" report-apis.service ActiveState))"
    fi

    pid=$(prop "$box" report-apis.service MainPID)
    info "kill -STOP $pid (report-apis stops answering and stops sending WATCHDOG=1)"
    box_exec "$box" bash -c "kill -STOP $pid"
    if wait_until 40 _restarted; then
        pass "stalled server: the watchdog got it restarted"
    else
        fail "stalled server: not restarted within 40 s"
    fi
    if (($(journal_count "$box" -u report-apis.service --since "@$(($(date +%s) - 60))" --grep "[Ww]atchdog timeout") >= 1)); then
        pass "journalctl -u report-apis shows the watchdog timeout"
        journal_text "$box" -u report-apis.service --grep "[Ww]atchdog" | tail -n 3 | show
    else
        fail "journalctl -u report-apis has no watchdog timeout line"
        journal_text "$box" -u report-apis.service | tail -n 15 | show
    fi
}

# phase_upgrade BOX SLOT_E APIS_NEXT_DEB COLLECTOR_NEXT_DEB: the timer's run of slot E is going
# (a 20 s report since phase_server_crashes) while dpkg upgrades the collector, and the server's
# upgrade is refused over an invalid configuration (apis_upgrade_refused); once the run ended,
# `dpkg --configure -a` finishes the server's upgrade (or `dpkg -i`, when dpkg did not refuse).
# Without the two packages the upgrade is reported as not run.
phase_upgrade() {
    local box=$1 slot_e=$2 apis_next=$3 collector_next=$4 out inv pid_before pid_after version
    local running refused=0

    if [[ -z $apis_next || -z $collector_next ]]; then
        info "upgrade not run: no packages of a higher version given"
        return 0
    fi
    out=$(box_out "$box")
    box_exec "$box" mkdir -p /root/debs
    box_exec "$box" tee /root/debs/report-apis-next.deb >/dev/null <"$apis_next"
    box_exec "$box" tee /root/debs/report-collector-next.deb >/dev/null <"$collector_next"
    inv=$(prop "$box" report-collector.service InvocationID)
    info "waiting for slot E ($(hhmmss "$slot_e")) to upgrade during its run"
    sleep_until "$slot_e"
    running=1
    if ! wait_new_run "$box" "$inv" 10; then
        fail "upgrade: no run going at slot $(hhmmss "$slot_e") to upgrade under; the journal:"
        journal_text "$box" -u report-collector.service -n 15 | show
        running=0
    fi
    inv=$(prop "$box" report-collector.service InvocationID)
    sleep_until $((slot_e + 3))
    if box_exec "$box" dpkg -i /root/debs/report-collector-next.deb </dev/null >"$out/dpkg-upgrade.log" 2>&1; then
        version=$(box_exec "$box" dpkg-query -W -f '${Version}' report-collector)
        pass "dpkg -i report-collector $version (upgrade)"
    else
        fail "dpkg -i report-collector (upgrade)"
        show <"$out/dpkg-upgrade.log"
    fi
    if ((running)); then
        if [[ $(prop "$box" report-collector.service InvocationID) == "$inv" ]] && collector_active "$box"; then
            pass "the timer's run going during the upgrade is still running after it"
        else
            fail "the upgrade cut the running collection (state $(prop "$box" report-collector.service ActiveState)); the journal:"
            journal_text "$box" -u report-collector.service -n 15 | show
        fi
    fi
    # While that run goes on: the server's upgrade refused over an invalid configuration.
    apis_upgrade_refused "$box" && refused=1
    if ((running)); then
        _inv_done() { [[ $(prop "$box" report-collector.service InvocationID) != "$inv" ]] || ! collector_active "$box"; }
        if wait_until 40 _inv_done && [[ $(prop "$box" report-collector.service Result) == success ]] &&
            (($(journal_count "$box" -u report-collector.service _SYSTEMD_INVOCATION_ID="$inv" OUTCOME=collected) >= 1)); then
            pass "that run then finished collected"
        else
            fail "that run did not finish collected (result $(prop "$box" report-collector.service Result)); the journal:"
            journal_text "$box" -u report-collector.service -n 15 | show
        fi
    fi
    check "report-collector.timer still enabled and active after the upgrade" \
        test "$(box_exec "$box" systemctl is-enabled report-collector.timer)/$(prop "$box" report-collector.timer ActiveState)" = enabled/active

    pid_before=$(prop "$box" report-apis.service MainPID)
    if ((refused)); then
        # As the refusal says: the file fixed, `dpkg --configure -a` finishes the upgrade.
        if box_exec "$box" dpkg --configure -a </dev/null >>"$out/dpkg-upgrade.log" 2>&1; then
            version=$(box_exec "$box" dpkg-query -W -f '${Version} ${Status}' report-apis)
            check "dpkg --configure -a with the configuration fixed: report-apis $version (upgrade)" \
                test "$version" = "$DEB_NEXT_VERSION install ok installed"
        else
            fail "dpkg --configure -a (report-apis upgrade, the configuration fixed)"
            show <"$out/dpkg-upgrade.log"
        fi
    elif box_exec "$box" dpkg -i /root/debs/report-apis-next.deb </dev/null >>"$out/dpkg-upgrade.log" 2>&1; then
        version=$(box_exec "$box" dpkg-query -W -f '${Version}' report-apis)
        pass "dpkg -i report-apis $version (upgrade)"
    else
        fail "dpkg -i report-apis (upgrade)"
        show <"$out/dpkg-upgrade.log"
    fi
    pid_after=$(prop "$box" report-apis.service MainPID)
    if [[ $pid_after != 0 && $pid_after != "$pid_before" && $(prop "$box" report-apis.service ActiveState) == active ]] &&
        ! box_exec "$box" readlink "/proc/$pid_after/exe" | grep -q deleted; then
        pass "upgrade restarted the server on the new binary (pid $pid_before -> $pid_after)"
    else
        fail "upgrade did not restart the server (pid $pid_before -> $pid_after)"
    fi
}

# apis_upgrade_refused BOX: with /etc/report-apis/config.toml made invalid, `dpkg -i` of the
# next report-apis fails in its postinst's check, saying what is wrong and what to do, and the
# old server keeps running (same pid, still answering); the file is then put back. Fails (for
# the caller: the package is not left half-configured) when dpkg did not refuse.
apis_upgrade_refused() {
    local box=$1 out pid rc=0 log
    out=$(box_out "$box")
    log=$out/dpkg-upgrade-refused.log
    pid=$(prop "$box" report-apis.service MainPID)
    box_exec "$box" cp /etc/report-apis/config.toml /root/report-apis.config.kept
    box_exec "$box" sh -c 'printf "generation-tme = \"1s\"\n" >>/etc/report-apis/config.toml'
    box_exec "$box" dpkg -i /root/debs/report-apis-next.deb </dev/null >"$log" 2>&1 || rc=$?
    box_exec "$box" cp /root/report-apis.config.kept /etc/report-apis/config.toml
    if ((rc != 0)) && grep -q 'key `report.generation-tme`' "$log" &&
        grep -q 'the running server was NOT restarted' "$log"; then
        pass "dpkg -i report-apis $DEB_NEXT_VERSION with an invalid configuration: exit $rc, the postinst names the key and says the server was not restarted"
    else
        fail "dpkg -i report-apis $DEB_NEXT_VERSION with an invalid configuration: exit $rc, want a refusal naming report.generation-tme"
    fi
    grep -E 'generation-tme|NOT restarted|dpkg: error' "$log" | show
    if [[ $(prop "$box" report-apis.service MainPID) == "$pid" && $(prop "$box" report-apis.service ActiveState) == active ]] &&
        [[ $(apis_get "$box" /healthz) == "200 ok" ]]; then
        pass "after the refused upgrade the old server runs on (pid $pid, active, /healthz answers)"
    else
        fail "after the refused upgrade: pid $pid -> $(prop "$box" report-apis.service MainPID), $(prop "$box" report-apis.service ActiveState), /healthz '$(apis_get "$box" /healthz)'"
    fi
    ((rc != 0))
}

# phase_remove BOX: dpkg -r keeps configuration and state; dpkg --purge removes them.
phase_remove() {
    local box=$1 out unit state reports kept
    out=$(box_out "$box")
    reports=$(box_exec "$box" find /var/lib/report-collector/reports -type f | wc -l)
    # The fence: every run sent its lock's token, report-apis kept the lock's mark on disk in its
    # StateDirectory, and acknowledged it (status says nothing of a fence not acknowledged).
    check "the server keeps the collector's fence mark in /var/lib/report-apis/fence.json" \
        box_exec "$box" grep -q '"locks":\[{"id":"[0-9a-f]\{32\}"' /var/lib/report-apis/fence.json
    check "report-collector status: the server acknowledged the fence" \
        bash -c '! grep -q "^fence:" <<<"$1"' _ "$(box_exec "$box" report-collector status 2>&1)"
    if box_exec "$box" dpkg -r report-collector report-apis </dev/null >"$out/dpkg-remove.log" 2>&1; then
        pass "dpkg -r report-collector report-apis"
    else
        fail "dpkg -r report-collector report-apis"
        show <"$out/dpkg-remove.log"
    fi
    for unit in report-apis.service report-collector.service report-collector.timer; do
        state=$(prop "$box" "$unit" ActiveState)
        check "after remove: $unit stopped ($state)" test "$state" = inactive -o "$state" = failed
    done
    # (--all would still list it: on removal the generated postrm masks the units, as
    # debhelper does, until purge.)
    check "after remove: report-collector.timer no longer in list-timers" \
        bash -c '! grep -q report-collector.timer <<<"$1"' _ "$(box_exec "$box" systemctl list-timers --no-pager)"
    check "after remove: binaries gone" box_exec "$box" test ! -e /usr/bin/report-apis -a ! -e /usr/bin/report-collector
    check "after remove: configuration kept" box_exec "$box" test -f /etc/report-apis/config.toml -a -f /etc/report-collector/config.toml
    kept=$(box_exec "$box" find /var/lib/report-collector/reports -type f 2>/dev/null | wc -l)
    check "after remove: state kept: the $reports reports in /var/lib/report-collector/reports are all there ($kept)" \
        test "$reports" -ge 1 -a "$kept" -eq "$reports"

    if box_exec "$box" dpkg --purge report-collector report-apis </dev/null >"$out/dpkg-purge.log" 2>&1; then
        pass "dpkg --purge report-collector report-apis"
    else
        fail "dpkg --purge report-collector report-apis"
        show <"$out/dpkg-purge.log"
    fi
    check "after purge: /etc/report-apis and /etc/report-collector gone" \
        box_exec "$box" test ! -e /etc/report-apis -a ! -e /etc/report-collector
    check "after purge: /var/lib/report-collector gone" box_exec "$box" test ! -e /var/lib/report-collector
    check "after purge: the server's fence marks gone (/var/lib/report-apis, /var/lib/private/report-apis)" \
        box_exec "$box" test ! -e /var/lib/report-apis -a ! -e /var/lib/private/report-apis
    check "after purge: the system user report-collector stays" box_exec "$box" getent passwd report-collector
    check "after purge: dpkg knows neither package" \
        bash -c '! grep -Eq "^(ii|rc) +report-(apis|collector) " <<<"$1"' _ "$(box_exec "$box" dpkg -l 2>/dev/null)"
}
