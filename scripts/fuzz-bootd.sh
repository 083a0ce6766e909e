#!/usr/bin/env bash
# Runs each of bootd's fuzz targets (DHCP decoding, TFTP packets and
# transfers, HTTP request heads) for a bounded time, starting from the
# committed seed corpus. Needs the nightly toolchain and cargo-fuzz
# (`cargo install cargo-fuzz`). Exits non-zero on the first crash.
#
#   scripts/fuzz-bootd.sh [SECONDS_PER_TARGET]   (default 20)
set -euo pipefail

secs=${1:-20}
[[ $secs =~ ^[0-9]+$ && $secs -gt 0 ]] || { echo "fuzz-bootd: seconds must be a positive number" >&2; exit 2; }
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/bootd/fuzz"
# Build output beside the workspace's (build/), never in the source tree.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/build/fuzz}

cargo +nightly fuzz --help >/dev/null 2>&1 \
    || { echo "fuzz-bootd: needs cargo-fuzz and the nightly toolchain" >&2; exit 2; }

for target in dhcp tftp http; do
    # New inputs go to a scratch directory, not into the committed corpus;
    # the committed one is read as a seed.
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    echo "fuzz-bootd: $target for ${secs}s" >&2
    # -rss_limit_mb: a parser that grows memory with its input fails here.
    timeout $((secs + 120)) cargo +nightly fuzz run "$target" "$scratch" "corpus/$target" -- \
        -max_total_time="$secs" -rss_limit_mb=512 -max_len=4096 -print_final_stats=1
    rm -rf "$scratch"
    trap - EXIT
done
echo "fuzz-bootd: every target ran ${secs}s without a crash" >&2
