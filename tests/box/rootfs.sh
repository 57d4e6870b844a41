#!/usr/bin/env bash
# Debian root file systems for the test boxes, made once by debootstrap and cached.
#
# A root takes 35-40 s to debootstrap, so it is kept under $ROOTFS_CACHE keyed by release and
# package list; every run boots a fresh copy, so no run sees what an earlier one left behind.
# Usage: rootfs.sh RELEASE DEST   (DEST is created; it must not exist)
set -euo pipefail

ROOTFS_CACHE=${ROOTFS_CACHE:-/var/cache/report-collector-tests}
ROOTFS_MIRROR=${ROOTFS_MIRROR:-http://deb.debian.org/debian}
# Bump the key when the package list changes, so stale caches are not reused. The list is
# what the packages under test depend on (dpkg -i in a box cannot fetch anything), and
# prometheus-node-exporter, whose /metrics the health phases read (phases-health.sh).
ROOTFS_PACKAGES=systemd,systemd-sysv,dbus,ca-certificates,acl,prometheus-node-exporter
ROOTFS_KEY_VERSION=4

rootfs_cached() {
    local release=$1
    local cached=$ROOTFS_CACHE/$release-minbase-v$ROOTFS_KEY_VERSION
    if [[ ! -f $cached/.complete ]]; then
        local tmp
        mkdir -p "$ROOTFS_CACHE"
        tmp=$(mktemp -d "$ROOTFS_CACHE/.$release.XXXXXX")
        echo "debootstrap $release into $cached (once; cached for later runs)" >&2
        if ! debootstrap --variant=minbase --include="$ROOTFS_PACKAGES" "$release" "$tmp/root" \
            "$ROOTFS_MIRROR" >"$tmp/debootstrap.log" 2>&1; then
            echo "debootstrap $release failed; log follows" >&2
            tail -n 30 "$tmp/debootstrap.log" >&2
            rm -rf "$tmp"
            return 1
        fi
        rm -rf "$tmp/root/var/cache/apt/archives/"*.deb
        touch "$tmp/root/.complete"
        # A concurrent run may have finished first; keep whichever landed.
        if ! mv -T "$tmp/root" "$cached" 2>/dev/null; then
            rm -rf "$tmp/root"
        fi
        rm -rf "$tmp"
    fi
    echo "$cached"
}

rootfs_copy() {
    local release=$1 dest=$2 cached
    cached=$(rootfs_cached "$release")
    if [[ -e $dest ]]; then
        echo "rootfs: $dest already exists; remove it first" >&2
        return 1
    fi
    cp -a --reflink=auto "$cached" "$dest"
    rm -f "$dest/.complete"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    if [[ $# -ne 2 ]]; then
        echo "usage: $0 RELEASE DEST" >&2
        exit 2
    fi
    rootfs_copy "$1" "$2"
fi
