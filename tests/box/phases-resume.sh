# shellcheck shell=bash
# No ticket thrown away, in the booted box: the timer's run is killed with kill -9 while the
# server is under heavy load (the server keeps running), and the next timer run resumes the
# ticket it left: one ticket on the server from the kill to the collection, its report on
# disk once. Sourced by scenario.sh.

# lock_record_ticket BOX [PID]: the ticket the lock file's record names (empty if none); with
# PID, only when the record is that process's (a record left by an earlier run counts as none).
lock_record_ticket() {
    box_exec "$1" cat /var/lib/report-collector/collector.lock 2>/dev/null |
        jq -r --arg pid "${2:-}" 'select($pid == "" or (.pid | tostring) == $pid) | .ticket // empty' 2>/dev/null || true
}

# phase_kill_under_load BOX SLOT_K PREVIOUS INV PID TICKET: the timer's run of slot K (a run
# other than invocation PREVIOUS), polling a server under heavy load, is killed with kill -9
# once the lock's record names its ticket (the record of that run, not one an earlier killed
# run left). Its invocation id, pid and ticket go to the variables named INV, PID and TICKET.
phase_kill_under_load() {
    local box=$1 slot_k=$2 previous=$3 out_inv=$4 out_pid=$5 out_ticket=$6 pid ticket='' left status
    run_to_kill "$box" "$slot_k" K "$previous" || return 1
    hand_back "$out_inv" "$(prop "$box" report-collector.service InvocationID)"
    pid=$(prop "$box" report-collector.service MainPID)
    _has_ticket() { ticket=$(lock_record_ticket "$box" "$pid") && [[ -n $ticket ]]; }
    if ! wait_until 10 _has_ticket; then
        fail "slot K's run (pid $pid) did not record a ticket in the lock file within 10 s"
        return 1
    fi
    sleep 2
    # The ticket it is polling now (a ticket it first tried to resume may have been replaced).
    _has_ticket || true
    info "kill -9 $pid (slot K's collector, polling ticket $ticket under heavy load)"
    box_exec "$box" bash -c "kill -9 $pid"
    _killed() { ! collector_active "$box"; }
    wait_until 10 _killed || true
    hand_back "$out_pid" "$pid"
    hand_back "$out_ticket" "$ticket"
    left=$(lock_record_ticket "$box")
    if [[ $left == "$ticket" ]]; then
        pass "after kill -9 the lock file's record still names ticket $ticket, for the next run"
    else
        fail "after kill -9 the lock file's record names '$left', want $ticket"
    fi
    status=$(box_exec "$box" runuser -u report-collector -- report-collector status 2>&1) || true
    if grep -q "^left: .*ticket $ticket" <<<"$status"; then
        pass "report-collector status shows the ticket left for the next run"
    else
        fail "report-collector status does not show the left ticket $ticket"
    fi
    echo "$status" | show
}

# phase_resumed BOX SLOT_B PID_K TICKET_K: slot B's timer run resumed the ticket slot K's
# killed run left, the server issued no other ticket meanwhile, and the report is on disk once.
phase_resumed() {
    local box=$1 slot_b=$2 pid_k=$3 ticket_k=$4 line saved issued cancelled
    line=$(journal_json "$box" -t report-collector --since "@$slot_b" OUTCOME=collected RESUMED_FROM_PID="$pid_k" TICKET="$ticket_k" | head -n 1)
    if [[ -n $line ]] && [[ $(jq -r .TRIGGER <<<"$line") != manual ]]; then
        pass "slot B's timer run collected ticket $ticket_k, left by the killed run: OUTCOME=collected RESUMED_FROM_PID=$pid_k TICKET_AGE=$(jq -r .TICKET_AGE <<<"$line") TRIGGER=$(jq -r .TRIGGER <<<"$line")"
        jq -r .MESSAGE <<<"$line" | show
    else
        fail "no timer run since slot B collected ticket $ticket_k with RESUMED_FROM_PID=$pid_k; the journal since slot B:"
        journal_text "$box" -t report-collector --since "@$slot_b" | tail -n 20 | show
    fi
    saved=$(box_exec "$box" find /var/lib/report-collector/reports -name "*_${ticket_k}.csv" | grep -c . || true)
    check "the report of ticket $ticket_k is on disk once ($saved file)" test "$saved" = 1
    issued=$(metric "$box" report_apis_tickets_issued_total)
    cancelled=$(metric "$box" report_apis_tickets_cancelled_total)
    check "the server issued one ticket from slot K to slot B's collection (report_apis_tickets_issued_total $issued), cancelled none ($cancelled)" \
        test "$issued:$cancelled" = 1:0
}
