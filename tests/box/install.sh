# shellcheck shell=bash
# The two packages, installed as shipped in a booted box: the first steps of `make demo` and
# `make long-run` (scripts/). Needs tests/lib.sh and a driver's box_start and box_exec.

# box_install_shipped BOX RELEASE: build the .debs, boot BOX from RELEASE, dpkg -i both.
box_install_shipped() {
    local box=$1 release=$2 apis collector
    echo "== building the packages (cargo deb; log: $BOX_WORKDIR/debs/cargo-deb.log)"
    debs_build "$BOX_WORKDIR/debs" apis collector || return 1

    echo "== booting Debian ($release) under systemd-nspawn"
    box_start "$box" "$release" || return 1
    box_exec "$box" mkdir -p /root/debs
    box_exec "$box" tee /root/debs/report-apis.deb >/dev/null <"$apis"
    box_exec "$box" tee /root/debs/report-collector.deb >/dev/null <"$collector"

    echo "== dpkg -i $(basename "$apis") $(basename "$collector")"
    box_exec "$box" dpkg -i /root/debs/report-apis.deb /root/debs/report-collector.deb </dev/null
}
