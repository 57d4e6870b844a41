# shellcheck shell=bash
# Phases of the box scenario (sourced by scenario.sh): what a monitor sees of the collector.
# `report-collector status` gives a verdict with documented exit codes, to root and to a user
# who cannot read the state directory; with Debian's prometheus-node-exporter in the box (the
# cached root has it) and metrics-file set as documented, node_exporter's /metrics on :9100
# serves report_collector_last_success_timestamp_seconds, and a skip keeps it.

HEALTH_TEXTFILE_DIR=/var/lib/prometheus/node-exporter
HEALTH_METRICS_FILE=$HEALTH_TEXTFILE_DIR/report-collector.prom

# node_metrics BOX: node_exporter's /metrics, fetched inside the box (its own loopback).
node_metrics() {
    box_exec "$1" bash -c 'exec 3<>/dev/tcp/127.0.0.1/9100 || exit 1
        printf "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" >&3
        cat <&3' 2>/dev/null | tr -d '\r'
}

# metric_value NAME [LABELS]: the value of the series NAME{LABELS} (or NAME) read from stdin.
metric_value() {
    local series=$1${2:+"{$2}"}
    awk -v s="$series" '$1 == s { print $2; exit }'
}

# status_of BOX USER ARG...: `report-collector status ARG...` as USER, bounded by 10 s (it must
# never block); prints the output, then the exit code on a last line of its own.
status_of() {
    local box=$1 user=$2 rc=0 out
    shift 2
    out=$(box_exec "$box" timeout 10 runuser -u "$user" -- report-collector status "$@" 2>&1) || rc=$?
    printf '%s\n%s\n' "$out" "$rc"
}

# json_field FIELD: a field of the JSON on stdin, e.g. verdict.health, read by the host's jq
# (scripts/install-deps.sh installs it; the box has none).
json_field() {
    jq -r ".$1" 2>/dev/null
}

# phase_health_fresh BOX: right after installation, before any run of ours: status does not
# alert (a fresh install is in its grace period; with no state directory yet, it says that it
# cannot see one), and the package gave the collector's user write access to node_exporter's
# textfile directory, its owner unchanged.
phase_health_fresh() {
    local box=$1 result rc out health mode
    result=$(status_of "$box" report-collector --json)
    rc=${result##*$'\n'}
    out=${result%$'\n'*}
    health=$(json_field verdict.health <<<"$out")
    if box_exec "$box" test -d /var/lib/report-collector; then
        if ((rc == 0)) && [[ $health == @(no-run-yet|grace|healthy) ]]; then
            pass "status on a fresh install: exit 0, health $health ($(json_field verdict.reason <<<"$out"))"
        else
            fail "status on a fresh install: exit $rc, health $health; want 0 (no run yet, or grace)"
            echo "$out" | show
        fi
    elif ((rc == 74)) && grep -q 'its directory /var/lib/report-collector does not exist' <<<"$out"; then
        pass "status on a fresh install without a state directory yet: exit 74, naming /var/lib/report-collector as missing"
    else
        fail "status on a fresh install without a state directory: exit $rc; want 74 naming it"
        echo "$out" | show
    fi
    check "prometheus-node-exporter.service active" \
        test "$(prop "$box" prometheus-node-exporter.service ActiveState)" = active
    mode=$(box_exec "$box" ls -ld "$HEALTH_TEXTFILE_DIR" | awk '{ print $1, $3, $4 }')
    # ls marks a directory that has an ACL with a trailing "+".
    if [[ $mode == d*+\ root\ root ]] &&
        box_exec "$box" runuser -u report-collector -- test -w "$HEALTH_TEXTFILE_DIR" &&
        ! box_exec "$box" runuser -u nobody -- test -w "$HEALTH_TEXTFILE_DIR"; then
        pass "the report-collector user (and no other) may write $HEALTH_TEXTFILE_DIR: an ACL entry, owner unchanged ($mode)"
    else
        fail "the report-collector user cannot write $HEALTH_TEXTFILE_DIR ($mode)"
    fi
}

# phase_health_scrape BOX: with metrics-file set as the config file documents, a run that
# systemd starts puts report_collector_last_success_timestamp_seconds on node_exporter's
# /metrics, and a skip keeps it; status exits 0 (healthy), 1 with a stale-after shorter than
# the time since that collection, and 77 for a user who cannot read the state directory.
phase_health_scrape() {
    local box=$1 t0 scrape value skipped skipped_after result rc out rc_run
    box_exec "$box" sed -i '/^metrics-file *=/d' /etc/report-collector/config.toml
    echo "metrics-file = \"$HEALTH_METRICS_FILE\"" |
        box_exec "$box" tee -a /etc/report-collector/config.toml >/dev/null
    # A timer's run still going read the file before the key was there: let it end first.
    _collector_idle() { ! collector_active "$box"; }
    wait_until 40 _collector_idle || true
    t0=$(date +%s)
    if hand_start "$box" &&
        (($(journal_count "$box" -t report-collector --since "@$t0" OUTCOME=collected) >= 1)); then
        pass "systemctl start report-collector.service: one run, collected"
    else
        fail "systemctl start report-collector.service did not collect (result $(prop "$box" report-collector.service Result)); the journal:"
        journal_text "$box" -u report-collector.service --since "@$t0" | show
        return 0
    fi

    scrape=$(node_metrics "$box")
    value=$(metric_value report_collector_last_success_timestamp_seconds <<<"$scrape")
    if [[ -n $value ]] && awk -v v="$value" -v t="$t0" 'BEGIN { exit !(v >= t && v <= t + 60) }'; then
        pass "node_exporter's :9100/metrics has report_collector_last_success_timestamp_seconds $value (the run just made, as the sandboxed unit wrote it)"
    else
        fail "node_exporter's :9100/metrics lacks a fresh report_collector_last_success_timestamp_seconds ('$value', run started at $t0); its report_collector lines and textfile errors:"
        grep -E '^(report_collector|node_textfile)' <<<"$scrape" | show
    fi
    skipped=$(metric_value report_collector_runs_total 'outcome="skipped"' <<<"$scrape")

    # A skip (the lock held by flock(1) meanwhile) rewrites the file and keeps the success.
    rc_run=0
    box_exec "$box" flock "$(collector_lock_file)" runuser -u report-collector -- report-collector run \
        >/dev/null 2>&1 || rc_run=$?
    scrape=$(node_metrics "$box")
    skipped_after=$(metric_value report_collector_runs_total 'outcome="skipped"' <<<"$scrape")
    if ((rc_run == 75)) && [[ $skipped_after == $((${skipped:-0} + 1)) ]] &&
        [[ $(metric_value report_collector_last_success_timestamp_seconds <<<"$scrape") == "$value" ]]; then
        pass "after a skip (exit 75, skipped $skipped -> $skipped_after) the scrape still has last_success_timestamp_seconds $value"
    else
        fail "after a skip (exit $rc_run, skipped ${skipped:-?} -> ${skipped_after:-?}) last_success is '$(metric_value report_collector_last_success_timestamp_seconds <<<"$scrape")', want $value"
    fi

    result=$(status_of "$box" report-collector --json)
    rc=${result##*$'\n'}
    out=${result%$'\n'*}
    if ((rc == 0)) && [[ $(json_field verdict.health <<<"$out") == healthy ]] &&
        [[ $(json_field last_run.outcome <<<"$out") == skipped ]]; then
        pass "status --json after the skip: exit 0, health healthy (last run skipped, last collection at $(json_field last_collection.finished.at <<<"$out"))"
    else
        fail "status --json after the skip: exit $rc, want 0 and health healthy"
        echo "$out" | show
    fi

    # The same state judged with a stale-after of 1 s.
    box_exec "$box" tee /tmp/stale-after.toml >/dev/null <<'EOF'
# Written by the end-to-end test: the packaged paths, a 1 s stale-after.
schedule-period = "1s"
stale-after = "1s"
EOF
    sleep 1.1
    result=$(status_of "$box" root --config /tmp/stale-after.toml)
    rc=${result##*$'\n'}
    out=${result%$'\n'*}
    if ((rc == 1)) && grep -q '^health: *stale (exit 1): no collection for' <<<"$out"; then
        pass "status with stale-after 1s: exit 1, $(head -n 1 <<<"$out")"
    else
        fail "status with stale-after 1s: exit $rc, want 1 and health stale"
        echo "$out" | show
    fi
    result=$(status_of "$box" root --config /tmp/stale-after.toml --json)
    check "status --json with stale-after 1s carries the same verdict (exit 1, health stale)" \
        test "${result##*$'\n'}/$(json_field verdict.health <<<"${result%$'\n'*}")" = 1/stale

    # A user who cannot read /var/lib/report-collector (0750).
    result=$(status_of "$box" nobody)
    rc=${result##*$'\n'}
    out=${result%$'\n'*}
    if ((rc == 77)) && grep -q 'cannot inspect the state file /var/lib/report-collector/last-run.json: Permission denied' <<<"$out"; then
        pass "status as nobody: exit 77 (EX_NOPERM), naming the state file and the reason"
    else
        fail "status as nobody: exit $rc, want 77 naming /var/lib/report-collector/last-run.json"
    fi
    echo "$out" | show
}

# The lock file status and runs use: the packaged default.
collector_lock_file() {
    echo /var/lib/report-collector/collector.lock
}
