#!/usr/bin/env bash
# Runs every cargo-fuzz target of the workspace for a short, bounded time each.
# Usage: ./scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 30; CI may pass less)
#
# Finds every fuzz crate (a fuzz/Cargo.toml with cargo-fuzz metadata), lists its
# targets with `cargo fuzz list`, and runs each with libFuzzer's time limit, an RSS
# limit (a target that lets hostile input grow memory without bound fails), and
# its committed seeds (fuzz/seeds/TARGET, read-only) next to the working corpus
# (fuzz/corpus/TARGET, not committed). A crash leaves its input in
# fuzz/artifacts/TARGET and makes the script fail.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SECONDS_PER_TARGET=${1:-30}
RSS_LIMIT_MB=${FUZZ_RSS_LIMIT_MB:-1024}

log() { echo "fuzz: $*" >&2; }

command -v rustup >/dev/null || { log "needs rustup (nightly toolchain)"; exit 1; }
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

status=0
while IFS= read -r manifest; do
    dir=$(dirname "$manifest")
    grep -q 'cargo-fuzz = true' "$manifest" || continue
    for t in $(cd "$dir" && cargo +nightly fuzz list); do
        mkdir -p "$dir/corpus/$t"
        seeds=()
        [[ -d $dir/seeds/$t ]] && seeds=("seeds/$t")
        log "$dir: $t for ${SECONDS_PER_TARGET}s"
        if ! (cd "$dir" && cargo +nightly fuzz run "$t" "corpus/$t" "${seeds[@]}" -- \
            -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb="$RSS_LIMIT_MB" \
            -max_len=65536 -print_final_stats=1 2>&1 | tail -n 25); then
            log "$dir: $t FAILED (see $dir/artifacts/$t)"
            status=1
        fi
    done
done < <(find "$ROOT" -path "$ROOT/build" -prune -o -path '*/fuzz/target' -prune \
    -o -name Cargo.toml -path '*/fuzz/Cargo.toml' -print | sort)
exit "$status"
