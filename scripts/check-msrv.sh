#!/usr/bin/env bash
# Keeps the workspace's `rust-version` true: what the code and Cargo.lock really need.
#
#   scripts/check-msrv.sh           the locked crates' own rust-version fields (cargo metadata)
#                                   are at most the declared one (a second; `make lint`)
#   scripts/check-msrv.sh --build   and `cargo +VERSION check --workspace --locked` with the
#                                   declared toolchain, in target/msrv (minutes; `make test`
#                                   runs it beside the boxes at the lowest priority)
#
# The third leg is clippy's `incompatible_msrv` (warn by default, an error under `make lint`),
# which refuses a standard library item newer than the declared version.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

declared=$(sed -n 's/^rust-version = "\(.*\)"$/\1/p' Cargo.toml)
if [[ -z $declared ]]; then
    echo "FAIL [msrv] no rust-version in Cargo.toml's [workspace.package]" >&2
    exit 1
fi

# Only the crates the lock file resolves for this workspace (metadata also lists every
# platform's), each with the rust-version it declares.
needs=$(cargo metadata --format-version 1 --locked |
    jq -r '(.resolve.nodes | map(.id)) as $used
        | .packages[] | select(.id as $id | $used | index($id))
        | select(.rust_version != null) | "\(.rust_version) \(.name) \(.version)"' |
    sort -V | tail -n 1)
need=${needs%% *}
# 1.89 and 1.89.0 are one version.
three() { local IFS=.; read -r -a part <<<"$1"; echo "${part[0]}.${part[1]:-0}.${part[2]:-0}"; }
if [[ $(printf '%s\n%s\n' "$(three "$need")" "$(three "$declared")" | sort -V | tail -n 1) != "$(three "$declared")" ]]; then
    echo "FAIL [msrv] Cargo.lock needs Rust $need (${needs#* }), but rust-version is $declared: raise rust-version (and RUST_MIN follows) or lock an older version of that crate" >&2
    exit 1
fi
echo "PASS [msrv] rust-version $declared covers every locked crate (the highest: ${needs#* } needs $need)"

[[ ${1:-} == --build ]] || exit 0
if ! rustup toolchain install "$declared" --profile minimal >/dev/null 2>&1; then
    echo "NOTE [msrv] rustup cannot install Rust $declared here; the build with the declared toolchain is not checked"
    exit 0
fi
if cargo "+$declared" check --workspace --all-targets --locked --quiet --target-dir target/msrv; then
    echo "PASS [msrv] the workspace builds with Rust $declared (--locked)"
else
    echo "FAIL [msrv] the workspace does not build with Rust $declared, its declared rust-version: raise it to what the code needs" >&2
    exit 1
fi
