#!/usr/bin/env bash
# What `--sync-writes always` costs: 4 KiB random writes over iSCSI on 127.0.0.1
# into a fresh qcow2 overlay (64 KiB clusters, 2 KiB subclusters, as bootd creates
# them) served by `bootd export --sync-writes MODE`, for three modes:
#   flush   writes durable at SYNCHRONIZE CACHE (the default alone);
#   always  every write durable before its status, concurrent writes sharing one
#           commit (group commit; the default with peers);
#   each    every write durable before its status with a commit of its own (the
#           naive fdatasync per write, kept only to measure what grouping saves).
# QD1: qemu-io `write` commands one after the other. QD32: batches of 32 `aio_write`s,
# each batch waited for with `aio_flush` (which drains, it sends no SYNCHRONIZE
# CACHE). qemu-io (-t writeback: no FUA) flushes once as it closes the disk; that
# flush is inside the timing, so flush mode pays for making its writes durable too.
# Every mode gets the same random offsets (one write per 4 KiB over the disk, mostly
# first writes to their cluster, which commit an L2 update as well as the data).
# Usage: scripts/bench-sync-writes.sh [--json]
# Env: BENCH_WRITES (2000 per run), BENCH_ROUNDS (3; medians), BENCH_SIZE_MIB (1024),
#      BENCH_PORT (3281), BENCH_DIR (where the overlay lives: a real disk, never a
#      tmpfs, whose fdatasync costs nothing; default a directory under the repository),
#      BENCH_BOOTD (a bootd binary instead of building this tree's release build).
set -euo pipefail

JSON=0
[[ "${1:-}" == "--json" ]] && JSON=1
WRITES=${BENCH_WRITES:-2000}
ROUNDS=${BENCH_ROUNDS:-3}
SIZE_MIB=${BENCH_SIZE_MIB:-1024}
PORT=${BENCH_PORT:-3281}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

log() { echo "bench: $*" >&2; }
die() { log "$*"; exit 1; }
for tool in qemu-io:qemu-utils qemu-img:qemu-utils cargo:cargo timeout:coreutils; do
    command -v "${tool%%:*}" >/dev/null || die "missing ${tool%%:*}: apt-get install ${tool#*:}"
done
grep -qw iscsi <<<"$(qemu-img --help)" || die "qemu-img lacks iscsi support: apt-get install qemu-block-extra"

mkdir -p "${BENCH_DIR:-$ROOT/build/bench}"
WORK=$(mktemp -d "${BENCH_DIR:-$ROOT/build/bench}/sync-writes.XXXXXX")
[[ $(stat -f -c %T "$WORK") == tmpfs ]] && die "$WORK is on tmpfs: fdatasync costs nothing there; set BENCH_DIR"
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
    BOOTD=$BENCH_BOOTD
else
    log "building bootd (release)"
    (cd "$ROOT" && cargo build --release -p bootd) >&2 || die "cargo build failed"
    BOOTD=$ROOT/build/release/bootd
fi

GOLDEN=$WORK/golden.raw
truncate -s "${SIZE_MIB}M" "$GOLDEN"

# The same random 4 KiB-aligned offsets for every run.
awk -v n="$WRITES" -v blocks="$((SIZE_MIB * 256))" 'BEGIN { srand(42); for (i = 0; i < n; i++) print int(rand() * blocks) * 4096 }' >"$WORK/offsets"
# QD1: one write at a time. QD32: batches of 32, each drained before the next.
awk '{ printf "write -P %d %d 4k\n", NR % 251 + 1, $1 }' "$WORK/offsets" >"$WORK/qd1.cmds"
awk '{ printf "aio_write -P %d %d 4k\n", NR % 251 + 1, $1; if (NR % 32 == 0) print "aio_flush" } END { print "aio_flush" }' "$WORK/offsets" >"$WORK/qd32.cmds"

# run MODE QD: appends the IOPS to $WORK/MODE.QD (a fresh overlay each time). Not
# called in $(...): a subshell's export would outlive the cleanup.
run() {
    local mode=$1 qd=$2 url t0 t1 out wrote
    stop_export
    rm -f "$WORK"/ov.qcow2*
    qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=64k -b "$GOLDEN" -F raw "$WORK/ov.qcow2"
    BOOTD_DATA_DIR=$WORK/data "$BOOTD" export "$WORK/ov.qcow2" --backing "$GOLDEN" --sync-writes "$mode" \
        --iqn iqn.2026-11.test:sync --listen "127.0.0.1:$PORT" >"$WORK/export.log" 2>&1 &
    PID=$!
    for _ in $(seq 300); do grep -q '^iscsi://' "$WORK/export.log" && break; sleep 0.1; done
    url=$(grep -m1 '^iscsi://' "$WORK/export.log") || { cat "$WORK/export.log" >&2; die "export did not start"; }
    # A login refused now and then on this busy box ("can't open device"): nothing was
    # written yet, so try again.
    for try in 1 2 3; do
        t0=$(date +%s.%N)
        if out=$(timeout 900 qemu-io -f raw -t writeback "$url" <"$WORK/qd$qd.cmds" 2>&1); then break; fi
        grep -q "can't open device" <<<"$out" && [[ $try != 3 ]] || { echo "$out" | tail -5 >&2; die "qemu-io failed ($mode, QD$qd)"; }
        log "login failed, again: $(grep -m1 "can't open" <<<"$out")"
        sleep 1
    done
    t1=$(date +%s.%N)
    wrote=$(grep -c 'wrote 4096/4096' <<<"$out" || true)
    [[ $wrote == "$WRITES" ]] || { echo "$out" | grep -v '^wrote\|^4 KiB' | tail -5 >&2; die "$mode QD$qd: $wrote of $WRITES writes acknowledged"; }
    stop_export
    qemu-img check -q "$WORK/ov.qcow2" || die "$mode QD$qd: overlay failed qemu-img check"
    awk -v n="$WRITES" -v a="$t0" -v b="$t1" 'BEGIN { printf "%d\n", n / (b - a) }' >>"$WORK/$mode.$qd"
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR ? a[int((NR+1)/2)] : 0)}'; }

for r in $(seq "$ROUNDS"); do
    for qd in 1 32; do
        # Alternate the order: a run pays for the file the previous one deleted.
        modes="flush always each"
        ((r % 2 == 0)) && modes="each always flush"
        for mode in $modes; do
            run "$mode" "$qd"; log "round $r QD$qd $mode: $(tail -1 "$WORK/$mode.$qd") IOPS"
        done
    done
done
declare -A R
for qd in 1 32; do for mode in flush always each; do R[$mode.$qd]=$(median <"$WORK/$mode.$qd"); done; done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.2f", a / b; else printf "null" }'; }
if [[ $JSON == 1 ]]; then
    printf '{"writes":%s,"rounds":%s,"size_mib":%s' "$WRITES" "$ROUNDS" "$SIZE_MIB"
    for qd in 1 32; do
        printf ',"qd%s":{"flush":%s,"always":%s,"each":%s}' "$qd" "${R[flush.$qd]}" "${R[always.$qd]}" "${R[each.$qd]}"
    done
    printf '}\n'
else
    printf '%-28s %10s %10s %10s %16s %16s\n' "4 KiB random writes" flush always each "always/flush" "always/each"
    for qd in 1 32; do
        printf '%-28s %10s %10s %10s %16s %16s\n' "QD$qd (IOPS, median of $ROUNDS)" "${R[flush.$qd]}" "${R[always.$qd]}" "${R[each.$qd]}" \
            "$(ratio "${R[always.$qd]}" "${R[flush.$qd]}")" "$(ratio "${R[always.$qd]}" "${R[each.$qd]}")"
    done
fi
