#!/usr/bin/env bash
# The one command that checks everything: installs the system packages the tests use,
# then runs formatting and lint checks, builds bootd, and runs every test, the
# end-to-end tests against real initiators included, then every fuzz target briefly.
# CI runs exactly this.
# Usage: ./scripts/test.sh   (as root on Debian 12; any working directory)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

STEPS=()
CURRENT=""
now() { date +%s.%N; }
summary() {
    local rc=$?
    echo
    echo "== timings =="
    for s in "${STEPS[@]}"; do echo "  $s"; done
    if [[ $rc -ne 0 && -n $CURRENT ]]; then
        echo "FAILED at step: $CURRENT (exit $rc)"
    fi
    exit "$rc"
}
trap summary EXIT

# step NAME COMMAND...: runs COMMAND and records how long it took (also when it fails).
step() {
    local name=$1 t0 t1 rc=0
    shift
    CURRENT=$name
    echo
    echo "== $name: $* =="
    t0=$(now)
    "$@" || rc=$?
    t1=$(now)
    STEPS+=("$(awk -v n="$name" -v a="$t0" -v b="$t1" -v r="$rc" \
        'BEGIN { printf "%-28s %7.1fs%s", n, b - a, (r ? "  FAILED" : "") }')")
    [[ $rc -eq 0 ]] || return "$rc"
    CURRENT=""
}

install_deps() {
    if [[ $(id -u) -eq 0 ]]; then
        "$ROOT/scripts/install-test-deps.sh"
    elif command -v sudo >/dev/null; then
        sudo "$ROOT/scripts/install-test-deps.sh"
    else
        echo "not root and no sudo: cannot install test packages; using what is installed" >&2
    fi
}

step "install test packages" install_deps
step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings
step "cargo build --release bootd" cargo build --release -p bootd
# BOOTD_E2E=1: the end-to-end tests must run; a missing tool fails instead of skipping.
# --no-fail-fast: one failing test binary must not hide the others' results.
# --show-output: the conformance summary and skip list are printed even on success.
step "cargo test --workspace" env BOOTD_BIN="$ROOT/build/release/bootd" BOOTD_E2E=1 \
    cargo test --workspace --no-fail-fast -- --show-output
# Every cargo-fuzz target (iSCSI, DHCP, TFTP, HTTP, overlay files) from its committed
# seeds, briefly: a crash or runaway memory fails the run.
step "fuzz, 10 s a target" "$ROOT/scripts/fuzz.sh" 10
