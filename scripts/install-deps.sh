#!/usr/bin/env bash
# Installs what `make test`, `make demo`, `make fuzz` and `make bench` need on a fresh Debian 12
# or 13 machine, and nothing when it is all there already: the Debian packages, a Rust toolchain
# (through rustup when cargo is missing or too old), cargo-deb and cargo-fuzz. With --docker,
# also what the Docker box needs (`make test`, `make docker-demo`): Debian's docker.io,
# installed without starting or enabling the host's Docker services, and it undoes what earlier
# versions of tests/docker.sh left on the host (tests/box/docker-engine.sh says what). With
# --build, only what building the packages needs (`make deb`): a C toolchain, curl for rustup,
# Rust, cargo-deb; not the lint components (rustfmt, clippy) nor any test tool. With
# --experiment, what --build installs and the PostgreSQL server (`make experiment`: its arms on
# the PostgreSQL lock start a throw-away cluster).
# promtool, which `make test` uses to check the example alerting rules, comes from Debian's
# prometheus package, installed without starting or enabling the Prometheus server; the
# PostgreSQL server the fleet tests start clusters of, from Debian's postgresql package, with
# no cluster left running.
# Run as root.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=../tests/lib.sh
source "$REPO/tests/lib.sh"

# The workspace's rust-version: what the code and Cargo.lock need (scripts/check-msrv.sh keeps
# it true); a packaged rustc older than that would pass a looser check and then fail to build.
RUST_MIN=$(sed -n 's/^rust-version = "\(.*\)"$/\1/p' "$REPO/Cargo.toml")
BUILD_PACKAGES=(
    build-essential # cc for the linker, dpkg-dev for cargo-deb's dependency lookup
    ca-certificates curl
)
APT_PACKAGES=(
    "${BUILD_PACKAGES[@]}"
    systemd-container debootstrap # the boxes
    lintian shellcheck
    jq # the box tests read `report-collector status --json`
    strace # the collector's crash-point test kills it at each file operation
    dbus-daemon # the collector's D-Bus tests run a private bus (systemd's side is a stand-in)
    wrk hyperfine time # the benchmarks
    iproute2 iptables openssl # the fleet tests: network namespaces, cut links, the database's TLS
)

# The lint steps of `make test` (`make lint`).
RUST_COMPONENTS=(rustfmt clippy)

require_root "installs Debian packages"

if [[ ${1:-} == --build || ${1:-} == --experiment ]]; then
    APT_PACKAGES=("${BUILD_PACKAGES[@]}")
    RUST_COMPONENTS=()
fi

missing=()
for package in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f '${Status}' "$package" 2>/dev/null | grep -q 'ok installed'; then
        missing+=("$package")
    fi
done
if ((${#missing[@]})); then
    echo "installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q -o DPkg::Lock::Timeout=600 >/dev/null
    apt-get install -y -q -o DPkg::Lock::Timeout=600 "${missing[@]}" >/dev/null
fi

# install_without_starting PACKAGE...: apt-get install without Recommends and without
# starting any service: a policy-rc.d forbids every start during the install
# (deb-systemd-invoke asks it); an existing policy-rc.d is kept as it is.
install_without_starting() {
    local policy=/usr/sbin/policy-rc.d mark="# report-collector install-deps: no service starts"
    if [[ -e $policy ]]; then
        echo "keeping the existing $policy" >&2
    else
        printf '#!/bin/sh\n%s\nexit 101\n' "$mark" >"$policy"
        chmod 0755 "$policy"
    fi
    export DEBIAN_FRONTEND=noninteractive
    local rc=0
    if ! apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=600 "$@" >/dev/null; then
        apt-get update -q -o DPkg::Lock::Timeout=600 >/dev/null &&
            apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=600 "$@" >/dev/null ||
            rc=1
    fi
    if grep -qsF "$mark" "$policy"; then
        rm -f "$policy"
    fi
    if ((rc)); then
        echo "could not install $*; see the apt-get output above" >&2
    fi
    return "$rc"
}

# promtool_installed: Debian's prometheus package (promtool is part of it), without starting
# or enabling prometheus.service (disabled again when this call installed the package).
promtool_installed() {
    if command -v promtool >/dev/null 2>&1; then
        return 0
    fi
    echo "installing prometheus for promtool (its server neither started nor enabled)" >&2
    install_without_starting prometheus || return 1
    systemctl --root=/ --quiet disable prometheus.service 2>/dev/null || true
}

# postgres_installed: Debian's PostgreSQL server binaries, for the tests' own throw-away
# clusters (initdb and pg_ctl in a temporary folder, tests/box/fleet.sh and tests/fleet/).
# Debian's package creates a cluster "main" and starts it: nothing is started during the
# install, and a cluster the install created is dropped, so the host runs no PostgreSQL
# afterwards (and none at the next boot).
postgres_installed() {
    local before after cluster
    if compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
        return 0
    fi
    before=$(pg_lsclusters -h 2>/dev/null | awk '{ print $1 "/" $2 }') || true
    echo "installing postgresql (no cluster left running)" >&2
    install_without_starting postgresql || return 1
    after=$(pg_lsclusters -h 2>/dev/null | awk '{ print $1 "/" $2 }') || true
    for cluster in $after; do
        if ! grep -qxF "$cluster" <<<"$before"; then
            echo "dropping the cluster $cluster the package created" >&2
            pg_dropcluster --stop "${cluster%/*}" "${cluster#*/}"
        fi
    done
}
if [[ ${1:-} == --experiment ]]; then
    postgres_installed
elif [[ ${1:-} != --build ]]; then
    promtool_installed
    postgres_installed
fi

export PATH=$HOME/.cargo/bin:$PATH

version_at_least() {
    [[ $(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1) == "$2" ]]
}

component_args=()
if ((${#RUST_COMPONENTS[@]})); then
    component_args=(--component "$(IFS=,; echo "${RUST_COMPONENTS[*]}")")
fi
rust_version=$(rustc --version 2>/dev/null | awk '{ print $2 }') || true
if [[ -z $rust_version ]] || ! version_at_least "$rust_version" "$RUST_MIN"; then
    if command -v rustup >/dev/null 2>&1; then
        echo "updating the stable Rust toolchain (found ${rust_version:-none}, need $RUST_MIN)" >&2
        rustup toolchain install stable --profile minimal "${component_args[@]}"
        rustup default stable
    else
        echo "installing Rust with rustup (found ${rust_version:-none}, need $RUST_MIN)" >&2
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
            sh -s -- -y --profile minimal "${component_args[@]}"
    fi
fi
if command -v rustup >/dev/null 2>&1; then
    for component in "${RUST_COMPONENTS[@]}"; do
        if ! rustup component list --installed 2>/dev/null | grep -q "^$component"; then
            rustup component add "$component"
        fi
    done
fi

cargo_deb_ready

# cargo-fuzz, for `make fuzz` and the fuzz step of `make test` (fuzz/README.md); it builds
# libFuzzer with the C++ compiler of build-essential.
CARGO_FUZZ_VERSION=0.13.2
if [[ ${1:-} != --build && ${1:-} != --experiment && $(cargo fuzz --version 2>/dev/null) != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
    echo "installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

if [[ ${1:-} == --docker ]]; then
    # shellcheck source=../tests/box/docker-engine.sh
    source "$REPO/tests/box/docker-engine.sh"
    engine_installed
    engine_legacy_cleanup
fi
