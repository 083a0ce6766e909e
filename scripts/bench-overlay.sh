#!/usr/bin/env bash
# Overlay vs raw, in one run, over iSCSI on 127.0.0.1 only:
#  - reads: iscsi-perf QD32, 4 KiB random and 128 KiB sequential, from a qcow2
#    overlay (nothing written yet; 64 KiB clusters with 2 KiB subclusters, as
#    bootd creates them) over a golden image vs the golden image
#    exported raw;
#  - first-touch writes: `qemu-img bench -w -s 4k -S 64k -d 32` (one 4 KiB write
#    per 64 KiB cluster) into a fresh overlay vs into a fresh raw copy, with QEMU's
#    own qcow2 driver on a local overlay printed beside them.
# Usage: scripts/bench-overlay.sh [--json]
# Env: BENCH_SECONDS (10), BENCH_ROUNDS (3), BENCH_SIZE_MIB (1024), BENCH_PORT (3280),
#      BENCH_BOOTD (a bootd binary to measure instead of building this tree's).
set -euo pipefail

JSON=0
[[ "${1:-}" == "--json" ]] && JSON=1
SECS=${BENCH_SECONDS:-10}
ROUNDS=${BENCH_ROUNDS:-3}
SIZE_MIB=${BENCH_SIZE_MIB:-1024}
PORT=${BENCH_PORT:-3280}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

log() { echo "bench: $*" >&2; }
die() { log "$*"; exit 1; }
for tool in iscsi-perf:libiscsi-bin qemu-img:qemu-utils cargo:cargo timeout:coreutils; do
    command -v "${tool%%:*}" >/dev/null || die "missing ${tool%%:*}: apt-get install ${tool#*:}"
done
grep -qw iscsi <<<"$(qemu-img --help)" || die "qemu-img lacks iscsi support: apt-get install qemu-block-extra"

WORK=$(mktemp -d /tmp/bench-overlay.XXXXXX)
PID=""
stop_export() {
    if [[ -n $PID ]]; then
        kill "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
        PID=""
    fi
}
cleanup() { stop_export; rm -rf "$WORK"; }
trap cleanup EXIT INT TERM

if [[ -n ${BENCH_BOOTD:-} ]]; then
    # Another build (e.g. an older commit's) to compare, against the same peers.
    BOOTD=$BENCH_BOOTD
else
    log "building bootd (release)"
    (cd "$ROOT" && cargo build --release -p bootd) >&2 || die "cargo build failed"
    BOOTD=$ROOT/build/release/bootd
fi

GOLDEN=$WORK/golden.raw
log "creating ${SIZE_MIB} MiB golden image"
head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom >"$GOLDEN"
cat "$GOLDEN" >/dev/null # page-cache it

# start_export FILE [ARGS...]: serves FILE, sets URL.
start_export() {
    stop_export
    BOOTD_DATA_DIR=$WORK/data "$BOOTD" export "$@" --listen "127.0.0.1:$PORT" >"$WORK/export.log" 2>&1 &
    PID=$!
    for _ in $(seq 100); do grep -q '^iscsi://' "$WORK/export.log" && break; sleep 0.1; done
    URL=$(grep -m1 '^iscsi://' "$WORK/export.log") || { cat "$WORK/export.log" >&2; die "export did not start"; }
}

perf() { # url blocks random(0/1) -> IOPS
    local args=(-m 32 -b "$2") out
    [[ $3 == 1 ]] && args+=(-r)
    out=$(timeout --signal=INT "$SECS" iscsi-perf -i iqn.2026-11.test:bench "${args[@]}" "$1" 2>&1 || true)
    echo "$out" | grep -oE 'iops average [0-9]+' | tail -1 | grep -oE '[0-9]+$' || echo 0
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR ? a[int((NR+1)/2)] : 0)}'; }

# qemu-img bench prints "Run completed in N seconds."; IOPS = count / seconds.
COUNT=$((SIZE_MIB * 16)) # one write per 64 KiB cluster over the whole disk
bench_writes() { # qemu-img bench args... -> IOPS
    local out secs
    out=$(timeout 600 qemu-img bench -w -c "$COUNT" -d 32 -s 4k -S 64k "$@" 2>&1) || { echo "$out" >&2; echo 0; return; }
    secs=$(echo "$out" | grep -oE 'completed in [0-9.]+' | grep -oE '[0-9.]+$')
    awk -v c="$COUNT" -v s="$secs" 'BEGIN{ printf "%d", (s > 0 ? c / s : 0) }'
}

declare -A R
for r in $(seq "$ROUNDS"); do
    start_export "$GOLDEN" --read-only --iqn iqn.2026-11.test:raw
    RAW_URL=$URL
    for w in "4k:8:1" "128k:256:0"; do
        IFS=: read -r n b rnd <<<"$w"
        i=$(perf "$RAW_URL" "$b" "$rnd"); echo "$i" >>"$WORK/read-$n.raw"; log "round $r read $n raw: $i IOPS"
    done
    rm -f "$WORK/ov.qcow2"
    qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=64k -b "$GOLDEN" -F raw "$WORK/ov.qcow2"
    start_export "$WORK/ov.qcow2" --backing "$GOLDEN" --iqn iqn.2026-11.test:overlay
    for w in "4k:8:1" "128k:256:0"; do
        IFS=: read -r n b rnd <<<"$w"
        i=$(perf "$URL" "$b" "$rnd"); echo "$i" >>"$WORK/read-$n.overlay"; log "round $r read $n overlay: $i IOPS"
    done
    # First-touch writes into the same fresh overlay, then into a fresh raw copy.
    i=$(bench_writes -f raw "$URL"); echo "$i" >>"$WORK/write.overlay"; log "round $r first-touch overlay: $i IOPS"
    stop_export
    qemu-img check -q "$WORK/ov.qcow2" || die "overlay failed qemu-img check"
    rm -f "$WORK/copy.raw"; cp --sparse=always "$GOLDEN" "$WORK/copy.raw"
    start_export "$WORK/copy.raw" --iqn iqn.2026-11.test:copy
    i=$(bench_writes -f raw "$URL"); echo "$i" >>"$WORK/write.raw"; log "round $r first-touch raw: $i IOPS"
    stop_export
    rm -f "$WORK/local.qcow2"
    qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=64k -b "$GOLDEN" -F raw "$WORK/local.qcow2"
    i=$(bench_writes -f qcow2 "$WORK/local.qcow2"); echo "$i" >>"$WORK/write.qemu"; log "round $r first-touch QEMU qcow2 (local): $i IOPS"
done
for k in read-4k read-128k write; do
    R[$k.raw]=$(median <"$WORK/$k.raw")
    R[$k.overlay]=$(median <"$WORK/$k.overlay")
done
R[write.qemu]=$(median <"$WORK/write.qemu")

ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.2f", a / b; else printf "null" }'; }
if [[ $JSON == 1 ]]; then
    printf '{"seconds":%s,"rounds":%s,"size_mib":%s,' "$SECS" "$ROUNDS" "$SIZE_MIB"
    printf '"read_4k":{"overlay":%s,"raw":%s,"ratio":%s},' "${R[read-4k.overlay]}" "${R[read-4k.raw]}" "$(ratio "${R[read-4k.overlay]}" "${R[read-4k.raw]}")"
    printf '"read_128k":{"overlay":%s,"raw":%s,"ratio":%s},' "${R[read-128k.overlay]}" "${R[read-128k.raw]}" "$(ratio "${R[read-128k.overlay]}" "${R[read-128k.raw]}")"
    printf '"first_touch_write":{"overlay":%s,"raw":%s,"ratio":%s,"qemu_qcow2_local":%s}}\n' "${R[write.overlay]}" "${R[write.raw]}" "$(ratio "${R[write.overlay]}" "${R[write.raw]}")" "${R[write.qemu]}"
else
    printf '%-34s %12s %12s %7s\n' workload "overlay IOPS" "raw IOPS" ratio
    printf '%-34s %12s %12s %7s\n' "4 KiB random read (QD32)" "${R[read-4k.overlay]}" "${R[read-4k.raw]}" "$(ratio "${R[read-4k.overlay]}" "${R[read-4k.raw]}")"
    printf '%-34s %12s %12s %7s\n' "128 KiB sequential read (QD32)" "${R[read-128k.overlay]}" "${R[read-128k.raw]}" "$(ratio "${R[read-128k.overlay]}" "${R[read-128k.raw]}")"
    printf '%-34s %12s %12s %7s\n' "4 KiB first-touch write (QD32)" "${R[write.overlay]}" "${R[write.raw]}" "$(ratio "${R[write.overlay]}" "${R[write.raw]}")"
    printf '%-34s %12s\n' "  QEMU qcow2 driver, local file" "${R[write.qemu]}"
fi
