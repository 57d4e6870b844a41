# shellcheck shell=bash
# Two booted boxes as two hosts sharing one lock in PostgreSQL: the packages installed as
# shipped, their minutely timers running, one database and one report server in a network
# namespace of their own. Every minute exactly one host collects and the other's journal names
# it; the holding box killed hard mid-run (its link cut first, so the database hears nothing:
# no FIN, no RST), the other box collects the next slot once the dead holder's lease has run
# out.
#
# The network: namespace DB (PostgreSQL 15+ from Debian's packages, a throw-away cluster with
# TLS and a password; report-apis) and one namespace a host, each wired to DB by a veth pair on
# link-local addresses (169.254.10N.0/30). The boxes boot with --network-namespace-path (see
# driver-nspawn.sh). Everything is undone when the run ends, fails or is interrupted.
#
# Entry point: fleet_run APIS_DEB COLLECTOR_DEB (needs lib.sh, rootfs.sh and driver-nspawn.sh
# sourced, BOX_WORKDIR set).

FLEET_DB_PORT=5432
FLEET_PASSWORD=fleet-test-password

# fleet_pg_bin: the directory of the newest PostgreSQL server installed.
fleet_pg_bin() {
    local dir
    dir=$(find /usr/lib/postgresql -maxdepth 3 -path '*/bin/initdb' 2>/dev/null | sort -V | tail -n 1)
    [[ -n $dir ]] && dirname "$dir"
}

# fleet_cleanup: whatever fleet_run made, undone; safe to run twice, at any point, and from the
# process that started fleet_run (every name derives from $$, the same in its subshells).
fleet_cleanup() {
    local box ns pid data=$BOX_WORKDIR/fleet/pg/data
    for box in rcf1-$$ rcf2-$$; do
        box_stop "$box" 2>/dev/null || true
    done
    if [[ -f $data/postmaster.pid ]]; then
        runuser -u postgres -- "$(fleet_pg_bin)/pg_ctl" -D "$data" -m immediate -w stop \
            >/dev/null 2>&1 || true
    fi
    # What is left in the database's namespace: report-apis (stopped or not).
    for pid in $(ip netns pids "rcdb-$$" 2>/dev/null); do
        kill -CONT "$pid" 2>/dev/null || true
        kill -KILL "$pid" 2>/dev/null || true
    done
    for ns in "rcdb-$$" "rch1-$$" "rch2-$$"; do
        if [[ -e /run/netns/$ns ]]; then
            ip netns del "$ns" 2>/dev/null || true
        fi
    done
}

# fleet_network: the database's namespace and two hosts' namespaces, wired.
fleet_network() {
    local i ns link
    FLEET_DB_NS=rcdb-$$
    ip netns add "$FLEET_DB_NS"
    ip -n "$FLEET_DB_NS" link set lo up
    for i in 1 2; do
        ns=rch$i-$$
        link=rcv$i-$$
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        ip link add "$link" netns "$FLEET_DB_NS" type veth peer name eth0 netns "$ns"
        ip -n "$FLEET_DB_NS" addr add "169.254.10$i.1/30" dev "$link"
        ip -n "$ns" addr add "169.254.10$i.2/30" dev eth0
        ip -n "$FLEET_DB_NS" link set "$link" up
        ip -n "$ns" link set eth0 up
        ip -n "$ns" route add default via "169.254.10$i.1"
    done
}

# fleet_tls DIR: a CA and a server certificate for both of the database's addresses.
fleet_tls() {
    local dir=$1
    mkdir -p "$dir"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=report-collector test CA" \
        -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=fleet-db" \
        -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
    printf 'subjectAltName=IP:169.254.101.1,IP:169.254.102.1\nextendedKeyUsage=serverAuth\n' >"$dir/ext"
    openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
        -CAcreateserial -days 2 -extfile "$dir/ext" -out "$dir/server.pem" 2>/dev/null
}

# fleet_database: a throw-away cluster in the database's namespace, TLS only over TCP, a
# password for the collectors' role, as an operator would set it up.
fleet_database() {
    local bin dir=$FLEET_DIR/pg
    bin=$(fleet_pg_bin) || {
        fail "no PostgreSQL server installed (/usr/lib/postgresql/*/bin); scripts/install-deps.sh installs it"
        return 1
    }
    mkdir -p "$dir/run"
    fleet_tls "$dir/tls"
    chown -R postgres: "$dir"
    chmod 0600 "$dir/tls/server.key"
    runuser -u postgres -- "$bin/initdb" -D "$dir/data" -U postgres --auth-local=trust \
        --auth-host=reject >"$dir/initdb.log" 2>&1 || {
        fail "initdb failed"
        show <"$dir/initdb.log"
        return 1
    }
    cat >"$dir/data/pg_hba.conf" <<EOF
local all postgres trust
hostssl reports report_collector 169.254.0.0/16 scram-sha-256
EOF
    # No TCP keepalive settings: the server's defaults (the kernel's two hours) are what an
    # operator has, so a cut-off holder's session outlives its lease.
    if ! ip netns exec "$FLEET_DB_NS" runuser -u postgres -- "$bin/pg_ctl" -D "$dir/data" \
        -l "$dir/postgres.log" -w -o "-c listen_addresses=169.254.101.1,169.254.102.1 \
        -c port=$FLEET_DB_PORT -c unix_socket_directories=$dir/run -c ssl=on \
        -c ssl_cert_file=$dir/tls/server.pem -c ssl_key_file=$dir/tls/server.key" \
        start >/dev/null 2>&1; then
        fail "PostgreSQL did not start in namespace $FLEET_DB_NS"
        show <"$dir/postgres.log"
        return 1
    fi
    if ! fleet_psql postgres "CREATE ROLE report_collector LOGIN PASSWORD '$FLEET_PASSWORD'" ||
        ! fleet_psql postgres "CREATE DATABASE reports OWNER report_collector"; then
        fail "could not create the role and database"
        return 1
    fi
    pass "PostgreSQL $("$bin/postgres" --version | awk '{ print $3 }') in namespace $FLEET_DB_NS: TLS, scram-sha-256, role report_collector owning database reports"
}

# fleet_psql DATABASE SQL: one statement as the superuser, over the cluster's socket; prints
# the rows unaligned.
fleet_psql() {
    runuser -u postgres -- psql -X -q -At -h "$FLEET_DIR/pg/run" -p "$FLEET_DB_PORT" -d "$1" -c "$2"
}

# fleet_server APIS_DEB: report-apis from its package, in the database's namespace, with no
# heavy-load phases.
fleet_server() {
    local deb=$1 dir=$FLEET_DIR/apis
    mkdir -p "$dir"
    dpkg-deb -x "$deb" "$dir/root"
    cat >"$dir/config.toml" <<EOF
listen = "0.0.0.0:8080"
[heavy-load]
period = "0s"
[report]
generation-time = "1s"
[fence]
state-file = "$dir/fence.json"
EOF
    ip netns exec "$FLEET_DB_NS" "$dir/root/usr/bin/report-apis" --config "$dir/config.toml" \
        </dev/null >"$dir/log" 2>&1 &
    FLEET_APIS_PID=$!
    # Stopped by fleet_cleanup, whose SIGKILL is then no news to print.
    disown "$FLEET_APIS_PID"
}

# fleet_host BOX INDEX COLLECTOR_DEB: boots BOX in host namespace INDEX, installs the collector
# and points it at the database: TLS verified against the test CA, the password a systemd
# credential (LoadCredential= in a drop-in), as report-collector/README.md says.
fleet_host() {
    local box=$1 i=$2 deb=$3
    if ! BOX_NETNS=rch$i-$$ box_start "$box" bookworm; then
        fail "could not boot $box"
        return 1
    fi
    box_exec "$box" tee /root/report-collector.deb >/dev/null <"$deb"
    box_exec "$box" dpkg -i /root/report-collector.deb </dev/null >"$FLEET_DIR/$box-dpkg.log" 2>&1 || {
        fail "dpkg -i report-collector in $box"
        show <"$FLEET_DIR/$box-dpkg.log"
        return 1
    }
    box_exec "$box" tee /etc/report-collector/db-ca.pem >/dev/null <"$FLEET_DIR/pg/tls/ca.pem"
    box_exec "$box" bash -c "umask 077; printf '%s\n' '$FLEET_PASSWORD' >/etc/report-collector/postgres-password"
    box_exec "$box" tee /etc/report-collector/config.toml >/dev/null <<EOF
server-url = "http://169.254.10$i.1:8080"
policy = "forbid"
starting-deadline = "10s"
lock-backend = "postgres"

[postgres]
connect = "host=169.254.10$i.1 port=$FLEET_DB_PORT user=report_collector dbname=reports"
tls = "verify-full"
tls-ca-file = "/etc/report-collector/db-ca.pem"
EOF
    box_exec "$box" mkdir -p /etc/systemd/system/report-collector.service.d
    box_exec "$box" tee /etc/systemd/system/report-collector.service.d/postgres.conf >/dev/null <<EOF
[Service]
LoadCredential=postgres-password:/etc/report-collector/postgres-password
EOF
    box_exec "$box" systemctl daemon-reload
}

# fleet_outcome BOX SLOT: the decision line of the timer's run of SLOT in BOX, as
# "OUTCOME MESSAGE", or nothing.
fleet_outcome() {
    journal_json "$1" -t report-collector --since "@$2" --until "@$(($2 + 50))" |
        jq -r 'select(.OUTCOME != null and .TRIGGER == "report-collector.timer") | "\(.OUTCOME) \(.MESSAGE)"' |
        head -n 1
}

# fleet_one_collects SLOT NAME: exactly one box collected SLOT; the other skipped, naming it.
fleet_one_collects() {
    local slot=$1 name=$2 a b out_a out_b
    a=${FLEET_BOXES[0]} b=${FLEET_BOXES[1]}
    _both_decided() {
        out_a=$(fleet_outcome "$a" "$slot")
        out_b=$(fleet_outcome "$b" "$slot")
        [[ -n $out_a && -n $out_b ]]
    }
    wait_until 40 _both_decided || true
    info "slot $name: $a: ${out_a:-no decision}"
    info "slot $name: $b: ${out_b:-no decision}"
    if [[ $out_a == collected* && $out_b == skipped* && $out_b == *"$a"* ]] ||
        [[ $out_b == collected* && $out_a == skipped* && $out_a == *"$b"* ]]; then
        pass "slot $name: exactly one host collected, the other skipped naming it"
    else
        fail "slot $name: want one host collecting and the other skipping with its name"
        journal_text "$a" -t report-collector --since "@$slot" | show
        journal_text "$b" -t report-collector --since "@$slot" | show
    fi
}

# fleet_kill_holder SLOT NAME: with the server stopped so the timer's run of SLOT keeps
# polling, the box holding the lock is cut off and killed; the other collects the next slot.
fleet_kill_holder() {
    local slot=$1 name=$2 box holder="" survivor="" init out rows
    kill -STOP "$FLEET_APIS_PID"
    sleep_until $((slot + 5))
    for box in "${FLEET_BOXES[@]}"; do
        if collector_active "$box"; then
            holder=$box
        else
            survivor=$box
        fi
    done
    if [[ -z $holder || -z $survivor ]]; then
        kill -CONT "$FLEET_APIS_PID"
        fail "slot $name: want one box holding the lock, the other done; holder '${holder}', other '${survivor}'"
        return 1
    fi
    rows=$(fleet_psql reports "SELECT holder_host FROM report_collector_lock" 2>&1 || true)
    info "slot $name: $holder holds the lock (database: ${rows//$'\n'/ }); cutting its link, then killing it"
    out=$(fleet_outcome "$survivor" "$slot")
    if [[ $out == skipped* && $out == *"$holder"* ]]; then
        pass "slot $name: $survivor skipped, naming the holder $holder"
    else
        fail "slot $name: want $survivor to skip naming $holder; its decision: ${out:-none}"
    fi
    ip netns exec "$(fleet_ns_of "$holder")" iptables -A INPUT -j DROP
    ip netns exec "$(fleet_ns_of "$holder")" iptables -A OUTPUT -j DROP
    init=$(cat "$BOX_WORKDIR/$holder.init")
    kill -KILL "$init"
    kill -CONT "$FLEET_APIS_PID"
    pass "slot $name: $holder killed hard mid-run (SIGKILL to its PID 1 after its link was cut)"

    local next=$((slot + 60))
    sleep_until "$next"
    _survivor_decided() {
        out=$(fleet_outcome "$survivor" "$next")
        [[ -n $out ]]
    }
    if wait_until 50 _survivor_decided && [[ $out == collected* ]]; then
        pass "slot after the kill: $survivor collected it (${out})"
    else
        fail "slot after the kill: want $survivor to collect; its decision: ${out:-none}"
        journal_text "$survivor" -t report-collector --since "@$next" | show
    fi
    # The dead holder's session outlived its lease (no keepalive answer yet): the survivor
    # ended it, saying so.
    local ended
    ended=$(journal_text "$survivor" -t report-collector --since "@$next" \
        --grep "lease of .*$holder.* ran out .* ending that session" | head -n 1)
    if [[ -n $ended ]]; then
        pass "slot after the kill: $survivor ended the dead holder's database session once its lease had run out"
        echo "$ended" | show
    else
        fail "slot after the kill: no journal line of $survivor ending $holder's session"
        journal_text "$survivor" -t report-collector --since "@$next" | show
    fi
}

# fleet_ns_of BOX: the host namespace BOX was booted in.
fleet_ns_of() {
    cat "$BOX_WORKDIR/$1.netns"
}

# fleet_run APIS_DEB COLLECTOR_DEB: the whole scenario.
fleet_run() {
    local apis=$1 collector=$2 t0 i box minute pids=()
    # shellcheck disable=SC2034 # read by pass and fail (lib.sh)
    TEST_LABEL=fleet
    t0=$(now)
    FLEET_DIR=$BOX_WORKDIR/fleet
    FLEET_BOXES=()
    mkdir -p "$FLEET_DIR"
    fleet_network
    fleet_database || return 0
    fleet_server "$apis"
    for i in 1 2; do
        box=rcf$i-$$
        FLEET_BOXES+=("$box")
        echo "rch$i-$$" >"$BOX_WORKDIR/$box.netns"
        fleet_host "$box" "$i" "$collector" &
        pids+=($!)
    done
    # Not a bare `wait`: report-apis is a child of this shell too.
    wait "${pids[@]}" || true
    for box in "${FLEET_BOXES[@]}"; do
        if [[ ! -f $BOX_WORKDIR/$box.init ]] ||
            ! box_exec "$box" test -f /etc/systemd/system/report-collector.service.d/postgres.conf; then
            fail "host $box is not ready; the scenario stops here"
            fleet_cleanup
            return 0
        fi
    done
    pass "two bookworm boxes booted in their own network namespaces, report-collector installed, pointed at PostgreSQL"
    # The first whole minute from now, with 5 s to spare for the timers.
    minute=$((($(date +%s) + 65) / 60 * 60))
    info "waiting for slot M ($(hhmmss "$minute"))"
    sleep_until "$minute"
    fleet_one_collects "$minute" M
    fleet_kill_holder $((minute + 60)) M+1
    for box in "${FLEET_BOXES[@]}"; do
        TEST_LABEL=$box phase_spawned "$box"
    done
    fleet_cleanup
    echo "TIME [fleet] $(elapsed "$t0" "$(now)") s"
}
