# shellcheck shell=bash
# The journal catalogs in a booted box: the packages ship them under /usr/lib/systemd/catalog/,
# systemd's dpkg trigger puts them in the catalog database, and `journalctl -x` explains the
# lines that carry their MESSAGE_ID; `journalctl MESSAGE_ID=...` finds every line of a kind.
# Sourced by scenario.sh; the phases read the box only through box_exec, like the others.

CATALOG_SOURCES=$(dirname "${BASH_SOURCE[0]}")/../../packaging/debian
# The IDs the phases look for (common/src/message_id.rs).
SERVER_READY_ID=91f213b92fd848088a306d9646d75d01
HEAVY_LOAD_ON_ID=68b33298cd1a4bf4867ab0e6121aa951
HEAVY_LOAD_OFF_ID=4c003a0b9ff84b9687ee6e0e45a93260
SKIPPED_LOCK_HELD_ID=d0b59ee9a55745759e93c69d0b1731d2
SKIPPED_LATE_ID=dc71fbd7fb7f41c993f4163c72c59947
COLLECTED_ID=48f90c49e58148d79eba1360cfbb768d
FAILED_ID=228d0a2afd1448c5b9e3bef585cbc6cb
CANCELLED_ID=50f22f13d83b4c02a3bde8ea59229442
# Kinds of the PostgreSQL lock (common/src/message_id.rs), counted when a box has them.
SKIPPED_SLOT_TAKEN_ID=78b58419927f4e45b87f0106607f79f8
DATABASE_UNAVAILABLE_ID=d0b3c2c5e24c4f2a80f9b816e9b27c01
LEASE_LOST_ID=c562304aedb54c09a50a4b86a4d5496f
LOCK_FILE=/var/lib/report-collector/collector.lock

# catalog_ids: every ID the two shipped catalogs define, one a line.
catalog_ids() {
    sed -n 's/^-- \([0-9a-f]\{32\}\)$/\1/p' "$CATALOG_SOURCES"/report-*/report-*.catalog
}

# catalog_listed BOX: how many of the shipped IDs the box's catalog database lists.
catalog_listed() {
    local listed
    listed=$(box_exec "$1" journalctl --list-catalog 2>/dev/null | awk '{ print $1 }')
    comm -12 <(catalog_ids | sort) <(sort <<<"$listed") | grep -c . || true
}

# phase_catalog BOX: the dpkg trigger has put both catalogs into the journal's database.
phase_catalog() {
    local box=$1 want listed trigger
    want=$(catalog_ids | grep -c .)
    listed=$(catalog_listed "$box")
    trigger=$(grep -h 'Processing triggers for systemd' "$(box_out "$box")/dpkg-install.log" 2>/dev/null | head -n 1)
    if ((want > 0 && listed == want)); then
        pass "journalctl --list-catalog lists all $want entries of report-apis.catalog and report-collector.catalog${trigger:+ (dpkg: $trigger)}"
    else
        fail "journalctl --list-catalog lists $listed of the $want shipped catalog entries"
        box_exec "$box" ls -l /usr/lib/systemd/catalog/ | show
    fi
    box_exec "$box" journalctl --list-catalog 2>/dev/null | grep -E ' report-(apis|collector): ' | show
}

# phase_catalog_server BOX: with a 1 s heavy-load period, the server's ready line and both
# heavy-load toggles carry their IDs and `journalctl -x` explains them with their fields filled
# in. The shipped configuration is put back afterwards.
phase_catalog_server() {
    local box=$1 t0 explained
    t0=$(date +%s)
    box_exec "$box" cp -p /etc/report-apis/config.toml /root/report-apis.config.toml
    box_exec "$box" tee /etc/report-apis/config.toml >/dev/null <<'EOF'
# Written by the end-to-end test: heavy load toggles every second.
[heavy-load]
period = "1s"
EOF
    box_exec "$box" systemctl restart report-apis.service
    _toggled() { (($(journal_count "$box" -u report-apis.service MESSAGE_ID="$HEAVY_LOAD_OFF_ID" --since "@$t0") >= 1)); }
    wait_until 8 _toggled || true

    if (($(journal_count "$box" -u report-apis.service MESSAGE_ID="$SERVER_READY_ID" LISTEN=127.0.0.1:8080 --since "@$t0") == 1)); then
        pass "the server's ready line carries MESSAGE_ID=$SERVER_READY_ID (SERVER_READY) and LISTEN"
    else
        fail "no ready line with MESSAGE_ID=$SERVER_READY_ID LISTEN=127.0.0.1:8080 since the restart"
        journal_text "$box" -u report-apis.service --since "@$t0" | head -n 10 | show
    fi
    explained=$(journal_text "$box" -x -u report-apis.service MESSAGE_ID="$SERVER_READY_ID" --since "@$t0")
    if grep -q 'Subject: report-apis is ready on 127.0.0.1:8080' <<<"$explained" &&
        grep -q 'bound its socket on 127.0.0.1:8080' <<<"$explained"; then
        pass "journalctl -u report-apis -x explains the ready line, LISTEN filled in"
    else
        fail "journalctl -u report-apis -x: no explanation with LISTEN under the ready line"
    fi
    echo "$explained" | head -n 8 | show

    if (($(journal_count "$box" -u report-apis.service MESSAGE_ID="$HEAVY_LOAD_ON_ID" HEAVY_LOAD=1 --since "@$t0") >= 1)) &&
        (($(journal_count "$box" -u report-apis.service MESSAGE_ID="$HEAVY_LOAD_OFF_ID" HEAVY_LOAD=0 --since "@$t0") >= 1)); then
        pass "heavy load on and off lines carry MESSAGE_ID $HEAVY_LOAD_ON_ID and $HEAVY_LOAD_OFF_ID"
    else
        fail "no heavy load on/off lines with their MESSAGE_IDs within 8 s of a 1 s period"
        journal_text "$box" -u report-apis.service --since "@$t0" | show
    fi
    explained=$(journal_text "$box" -x -u report-apis.service MESSAGE_ID="$HEAVY_LOAD_ON_ID" --since "@$t0")
    if grep -q 'Subject: report-apis entered heavy load' <<<"$explained" &&
        grep -Eq 'A heavy-load phase began, with [0-9]+ tickets pending' <<<"$explained"; then
        pass "journalctl -u report-apis -x explains heavy load on, PENDING filled in"
    else
        fail "journalctl -u report-apis -x: no explanation with PENDING under heavy load on"
        echo "$explained" | show
    fi

    box_exec "$box" cp -p /root/report-apis.config.toml /etc/report-apis/config.toml
    box_exec "$box" systemctl restart report-apis.service
    check "report-apis.service active again with the shipped configuration" \
        test "$(prop "$box" report-apis.service ActiveState)" = active
}

# phase_catalog_skip BOX: a run that finds the lock held (by flock as report-collector) logs a
# skip that `journalctl MESSAGE_ID=<SKIPPED_LOCK_HELD>` finds and `journalctl -u
# report-collector -x` explains, naming the holder. Returns 1 if the lock stays held.
phase_catalog_skip() {
    local box=$1 t0 holder="" explained
    t0=$(date +%s)
    # A transient unit, so the holder is stopped by name; StateDirectory= makes the directory
    # as the collector's own unit would, should no run have made it yet. --no-fork: the unit's
    # main process is the one holding the lock, so stopping the unit frees it (a forked sleep
    # kept the descriptor when systemd 252 in nspawn could not kill the rest of the cgroup).
    box_exec "$box" systemd-run --quiet --unit=catalog-lock-holder -p User=report-collector \
        -p Group=report-collector -p StateDirectory=report-collector -p StateDirectoryMode=0750 \
        -p UMask=0027 flock --no-fork "$LOCK_FILE" sleep 60
    # flock -n exits 99 only when the lock is taken; any other failure (runuser, the open) is
    # neither "held" nor "free" and is shown should the wait fail.
    _try_lock() {
        box_exec "$box" runuser -u report-collector -- flock -n -E 99 "$LOCK_FILE" true 2>"$BOX_WORKDIR/catalog-flock.$box"
    }
    _held() {
        local rc=0
        _try_lock || rc=$?
        ((rc == 99))
    }
    # A timer run that began on the minute just before holds the lock first (the holder's flock
    # waits for it) and keeps report-collector.service busy, so the start below would start
    # nothing: let it end first, and the run started below meets the holder.
    _collector_idle() {
        [[ $(prop "$box" report-collector.service ActiveState) != activating ]]
    }
    if wait_until 5 _held && wait_until 60 _collector_idle && wait_until 5 _held; then
        holder=$(prop "$box" catalog-lock-holder.service MainPID)
        info "lock $LOCK_FILE held by flock, pid $holder (catalog-lock-holder.service)"
    else
        fail "flock as report-collector did not take $LOCK_FILE"
    fi
    box_exec "$box" systemctl start report-collector.service 2>/dev/null || true

    if (($(journal_count "$box" MESSAGE_ID="$SKIPPED_LOCK_HELD_ID" OUTCOME=skipped SKIP=lock-held HOLDER_PID="$holder" --since "@$t0") >= 1)); then
        pass "journalctl MESSAGE_ID=$SKIPPED_LOCK_HELD_ID finds the skip (SKIP=lock-held HOLDER_PID=$holder)"
    else
        fail "journalctl MESSAGE_ID=$SKIPPED_LOCK_HELD_ID finds no skip naming pid $holder"
        journal_text "$box" -t report-collector --since "@$t0" | show
    fi
    explained=$(journal_text "$box" -x -u report-collector.service --since "@$t0")
    if ! grep -q 'Subject: report-collector skipped a run: another run holds the lock' <<<"$explained" &&
        grep -q . <<<"$(journal_text "$box" -t report-collector MESSAGE_ID="$SKIPPED_LOCK_HELD_ID" --since "@$t0")"; then
        # journald could not attribute the line to the unit: the process had exited when it
        # read the entry (FACTS.md 4, systemd issue 2913; seen once in 252). -t finds it.
        note "the skip line is missing from journalctl -u report-collector (journald did not attribute it to the unit, systemd issue 2913); judging journalctl -t report-collector -x instead"
        explained=$(journal_text "$box" -x -t report-collector --since "@$t0")
    fi
    if grep -q 'Subject: report-collector skipped a run: another run holds the lock' <<<"$explained" &&
        grep -q "process id \"$holder\"" <<<"$explained" &&
        grep -q 'What to do:' <<<"$explained"; then
        pass "journalctl -x explains the skip under its line: what happened (holder pid $holder filled in), why, what to do"
    else
        fail "journalctl -x shows no explanation naming pid $holder under the skip"
    fi
    echo "$explained" | grep -A 6 'report-collector\[' | head -n 8 | show

    box_exec "$box" systemctl stop catalog-lock-holder.service
    if ! wait_until 15 _try_lock; then
        local rc=0
        _try_lock || rc=$?
        fail "$LOCK_FILE not free 15 s after stopping catalog-lock-holder.service (flock -n as report-collector: exit $rc, 99 = held)"
        {
            cat "$BOX_WORKDIR/catalog-flock.$box"
            box_exec "$box" systemctl status --no-pager catalog-lock-holder.service report-collector.service
            box_exec "$box" sh -c "ls -li $LOCK_FILE; cat /proc/locks; ps -eo pid,ppid,user,stat,lstart,args"
        } 2>&1 | show
        rm -f "$BOX_WORKDIR/catalog-flock.$box"
        return 1
    fi
    rm -f "$BOX_WORKDIR/catalog-flock.$box"
}

# phase_catalog_decisions BOX: over the whole scenario, every decision line carries the
# MESSAGE_ID of its kind (skips split by SKIP), and the late start it forced is found by its
# own ID.
phase_catalog_decisions() {
    local box=$1 kind outcome skip id all tagged=0 n counts='' late explained
    all=$(journal_count "$box" -t report-collector OUTCOME=collected OUTCOME=skipped \
        OUTCOME=failed OUTCOME=cancelled)
    for kind in "collected::$COLLECTED_ID" "skipped:lock-held:$SKIPPED_LOCK_HELD_ID" \
        "skipped:late:$SKIPPED_LATE_ID" "skipped:slot-taken:$SKIPPED_SLOT_TAKEN_ID" \
        "failed::$FAILED_ID" "failed::$DATABASE_UNAVAILABLE_ID" "failed::$LEASE_LOST_ID" \
        "cancelled::$CANCELLED_ID"; do
        IFS=: read -r outcome skip id <<<"$kind"
        n=$(journal_count "$box" -t report-collector OUTCOME="$outcome" SKIP="$skip" MESSAGE_ID="$id")
        tagged=$((tagged + n))
        counts+="${counts:+, }${skip:-$outcome} $n"
    done
    if ((all > 0 && tagged == all)); then
        pass "all $all decision lines carry the MESSAGE_ID of their kind ($counts)"
    else
        fail "$tagged of $all decision lines carry the MESSAGE_ID of their kind ($counts)"
    fi
    late=$(journal_count "$box" MESSAGE_ID="$SKIPPED_LATE_ID" OUTCOME=skipped SKIP=late)
    if ((late >= 1)); then
        pass "journalctl MESSAGE_ID=$SKIPPED_LATE_ID finds the late start skipped after slot B, SKIP=late ($late)"
        explained=$(journal_text "$box" -x -t report-collector MESSAGE_ID="$SKIPPED_LATE_ID")
        if grep -q 'Subject: report-collector skipped a run that started too late after its slot' <<<"$explained" &&
            grep -Eq 'schedule slot [0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}Z' <<<"$explained" &&
            grep -q 'The timer (report-collector.timer) started this run' <<<"$explained"; then
            pass "journalctl -x explains the late start, its TRIGGER and SLOT filled in"
        else
            fail "journalctl -x shows no explanation with TRIGGER and SLOT under the late start"
        fi
        echo "$explained" | head -n 10 | show
    else
        note "no late start was skipped in this box (see the late_start phase), so MESSAGE_ID=$SKIPPED_LATE_ID had nothing to find"
    fi
}

# phase_catalog_removed BOX: after removal the dpkg trigger has taken both catalogs out of the
# journal's database.
phase_catalog_removed() {
    local box=$1 listed
    listed=$(catalog_listed "$box")
    check "after remove: journalctl --list-catalog lists none of the packages' entries ($listed)" \
        test "$listed" -eq 0
}
