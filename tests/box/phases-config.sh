# shellcheck shell=bash
# Box phases for checking a configuration before use and reloading it: `check-config` of the
# shipped files, command-line mistakes (exit 64), and `systemctl reload report-apis` with
# tickets pending, with a file the check refuses and with one only the server can refuse.
# Sourced by scenario.sh; run after phase_installed, while the shipped files are in place.

RELOADED_ID=be4bf0bd5bee48408c470f6f71744f23
RELOAD_REJECTED_ID=66790bed26e3495b9abd3456fc8e9b06

# apis_get BOX PATH: GET PATH from the server inside the box; prints the status code, a
# space and the body (one line).
apis_get() {
    local response
    response=$(box_exec "$1" bash -c 'exec 3<>/dev/tcp/127.0.0.1/8080 || exit 1
        printf "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" "$1" >&3
        cat <&3' _ "$2" 2>/dev/null | tr -d '\r')
    echo "$(head -n 1 <<<"$response" | awk '{ print $2 }') $(sed '1,/^$/d' <<<"$response" | paste -sd ' ')"
}

# apis_ticket BOX: a new ticket, or nothing when the server did not give one.
apis_ticket() {
    local answer
    answer=$(apis_get "$1" /request_report)
    [[ $answer == "200 "* ]] && echo "${answer#200 }"
}

# apis_served BOX TICKET SECONDS: polls /get_report/TICKET until it is served (a CSV: not the
# "report is not ready" body), at most SECONDS.
apis_served() {
    local box=$1 ticket=$2
    _served() {
        local answer
        answer=$(apis_get "$box" "/get_report/$ticket")
        [[ $answer == "200 "* && $answer != *"report is not ready"* ]]
    }
    wait_until "$3" _served
}

# phase_config_check BOX: the shipped files pass check-config; mistakes on the command line
# exit 64 in both programs.
phase_config_check() {
    local box=$1 out program code
    for program in report-apis report-collector; do
        if out=$(box_exec "$box" "$program" check-config --config "/etc/$program/config.toml" 2>&1) &&
            grep -q "^# $program: the configuration is valid" <<<"$out"; then
            pass "$program check-config of the shipped /etc/$program/config.toml exits 0 and prints the effective configuration ($(grep -c ' = ' <<<"$out") keys)"
        else
            fail "$program check-config of the shipped file"
            echo "$out" | show
        fi
        code=0
        box_exec "$box" "$program" --bogus >/dev/null 2>&1 || code=$?
        check "$program --bogus exits 64 (EX_USAGE), got $code" test "$code" = 64
    done
}

# phase_config_reload BOX: tickets pending on the running server survive `systemctl reload`
# and are served afterwards; new tickets use the new generation time; an invalid file and a
# changed listen address make `systemctl reload` fail, the old configuration staying in force.
# The shipped file is put back at the end.
phase_config_reload() {
    local box=$1 pid since code t0 took old=() ticket fresh
    box_exec "$box" cp /etc/report-apis/config.toml /root/report-apis.config.toml
    pid=$(prop "$box" report-apis.service MainPID)
    # Slow reports first (4 s, no slowdown, no heavy load), applied by a reload as well.
    _apis_config() {
        box_exec "$box" tee /etc/report-apis/config.toml >/dev/null <<EOF
# Written by the end-to-end test (phases-config.sh).
[heavy-load]
period = "0s"

[report]
generation-time = "$1"
slowdown = 0.0
${2:-}
EOF
    }
    _apis_config 4s
    since=$(date +%s)
    if ! box_exec "$box" systemctl reload report-apis.service; then
        fail "systemctl reload report-apis (to 4 s reports) failed"
        journal_text "$box" -u report-apis.service | tail -n 10 | show
        return 0
    fi
    for _ in 1 2; do
        ticket=$(apis_ticket "$box")
        [[ -n $ticket ]] && old+=("$ticket")
    done
    if ((${#old[@]} != 2)); then
        fail "could not get two tickets from the server"
        return 0
    fi

    _apis_config 200ms
    t0=$(now)
    code=0
    box_exec "$box" systemctl reload report-apis.service || code=$?
    took=$(elapsed "$t0" "$(now)" 2)
    if ((code == 0)) && [[ $(prop "$box" report-apis.service MainPID) == "$pid" ]] &&
        [[ $(prop "$box" report-apis.service ActiveState) == active ]]; then
        pass "systemctl reload report-apis with 2 tickets pending: exit 0 in $took s, same server (pid $pid), active"
    else
        fail "systemctl reload report-apis: exit $code, pid $pid -> $(prop "$box" report-apis.service MainPID), $(prop "$box" report-apis.service ActiveState)"
    fi
    if (($(journal_count "$box" -u report-apis.service MESSAGE_ID="$RELOADED_ID" --since "@$since") >= 2)); then
        pass "the journal has the RELOADED lines (MESSAGE_ID=$RELOADED_ID)"
        journal_text "$box" -u report-apis.service MESSAGE_ID="$RELOADED_ID" --since "@$since" | tail -n 1 | show
    else
        fail "no RELOADED line in the journal"
        journal_text "$box" -u report-apis.service --since "@$since" | show
    fi
    fresh=$(apis_ticket "$box")
    if [[ -n $fresh ]] && apis_served "$box" "$fresh" 2 &&
        [[ $(apis_get "$box" "/get_report/${old[0]}") == *"report is not ready"* ]]; then
        pass "a ticket issued after the reload uses the new 200 ms generation time, served while the older 4 s ones are still generating"
    else
        fail "the ticket issued after the reload was not served within 2 s before the older ones ($(apis_get "$box" "/get_report/${old[0]}"))"
    fi
    if apis_served "$box" "${old[0]}" 10 && apis_served "$box" "${old[1]}" 2; then
        pass "both tickets pending across the reload survived it and are served afterwards"
    else
        fail "a ticket pending across the reload was not served: $(apis_get "$box" "/get_report/${old[0]}") / $(apis_get "$box" "/get_report/${old[1]}")"
    fi

    # A file the check refuses: nothing is sent to the server.
    _apis_config 30s 'generation-tme = "1s"'
    since=$(date +%s)
    code=0
    box_exec "$box" systemctl reload report-apis.service 2>/dev/null || code=$?
    if ((code != 0)) && [[ $(prop "$box" report-apis.service MainPID) == "$pid" ]] &&
        [[ $(prop "$box" report-apis.service ActiveState) == active ]]; then
        pass "systemctl reload with an invalid file exits $code; the server (pid $pid) keeps running"
    else
        fail "systemctl reload with an invalid file: exit $code, $(prop "$box" report-apis.service ActiveState), pid $(prop "$box" report-apis.service MainPID)"
    fi
    if journal_says "$box" 5 'config.toml:8:1: key `report.generation-tme`' -u report-apis.service --since "@$since"; then
        pass "the journal says why, naming file, line and key"
        journal_text "$box" -u report-apis.service --since "@$since" --grep 'generation-tme' | tail -n 1 | show
    else
        fail "the journal does not name the invalid key"
        journal_text "$box" -u report-apis.service --since "@$since" | show
    fi
    fresh=$(apis_ticket "$box")
    if [[ -n $fresh ]] && apis_served "$box" "$fresh" 2; then
        pass "the server keeps serving with the configuration in force (a new ticket still takes 200 ms, not 30 s)"
    else
        fail "after the refused reload, a new ticket was not served within 2 s"
    fi

    # A file only the server can refuse: a new listen address.
    box_exec "$box" tee /etc/report-apis/config.toml >/dev/null <<<'listen = "127.0.0.1:8081"'
    since=$(date +%s)
    code=0
    box_exec "$box" systemctl reload report-apis.service 2>/dev/null || code=$?
    if ((code != 0)) && journal_says "$box" 5 'needs a restart' -u report-apis.service --since "@$since" &&
        (($(journal_count "$box" -u report-apis.service MESSAGE_ID="$RELOAD_REJECTED_ID" --since "@$since") >= 1)); then
        pass "a changed listen address: systemctl reload exits $code, the journal says it needs a restart (MESSAGE_ID=$RELOAD_REJECTED_ID)"
    else
        fail "a changed listen address: systemctl reload exit $code"
        journal_text "$box" -u report-apis.service --since "@$since" | show
    fi
    check "still listening on 127.0.0.1:8080" test "$(apis_get "$box" /healthz)" = "200 ok"

    box_exec "$box" cp /root/report-apis.config.toml /etc/report-apis/config.toml
    check "systemctl reload back to the shipped configuration" box_exec "$box" systemctl reload report-apis.service
}
