#!/usr/bin/env bash
# Compare bootd's iSCSI target with tgt on the same page-cached file, on 127.0.0.1 only.
# Usage: sudo scripts/bench-iscsi.sh [--json]
# Env: BENCH_SECONDS (10), BENCH_ROUNDS (3), BENCH_SIZE_MIB (1024), BOOTD_PORT (3270),
#      TGT_PORT (3271), TGT_CTL (7: tgtd control-port index, keeps clear of a system tgtd).
set -euo pipefail

JSON=0
[[ "${1:-}" == "--json" ]] && JSON=1
SECS=${BENCH_SECONDS:-10}
ROUNDS=${BENCH_ROUNDS:-3}
SIZE_MIB=${BENCH_SIZE_MIB:-1024}
BOOTD_PORT=${BOOTD_PORT:-3270}
TGT_PORT=${TGT_PORT:-3271}
TGT_CTL=${TGT_CTL:-7}
IQN_BOOTD=iqn.2026-01.test.bootd:bench
IQN_TGT=iqn.2026-01.test.tgt:bench
ROOT=$(cd "$(dirname "$0")/.." && pwd)

log() { echo "bench: $*" >&2; }
die() { log "$*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (tgtd needs it)"
for tool in iscsi-perf:libiscsi-bin tgtd:tgt tgtadm:tgt cargo:cargo timeout:coreutils; do
    command -v "${tool%%:*}" >/dev/null || die "missing ${tool%%:*}: apt-get install ${tool#*:}"
done

WORK=$(mktemp -d /tmp/bench-iscsi.XXXXXX)
PIDS=()
cleanup() {
    # tgtd ignores SIGTERM while it has targets: delete them and shut it down through tgtadm.
    if [[ -n "${TGT_PID:-}" ]]; then
        tgtadm -C "$TGT_CTL" --lld iscsi --mode target --op delete --force --tid 1 >/dev/null 2>&1 || true
        tgtadm -C "$TGT_CTL" --mode sys --op delete >/dev/null 2>&1 || true
    fi
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

log "building bootd (release)"
(cd "$ROOT" && cargo build --release -p bootd) >&2 || die "cargo build --release -p bootd failed"
BOOTD=$ROOT/build/release/bootd

IMG=$WORK/disk.img
log "creating ${SIZE_MIB} MiB file"
head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom >"$IMG"
cat "$IMG" >/dev/null # page-cache it

# --- bootd ---
BOOTD_OK=1
BOOTD_DATA_DIR="$WORK/data" "$BOOTD" export "$IMG" --listen "127.0.0.1:$BOOTD_PORT" --iqn "$IQN_BOOTD" >"$WORK/bootd.log" 2>&1 &
PIDS+=($!)
BOOTD_PID=$!
for _ in $(seq 50); do grep -q "^iscsi://" "$WORK/bootd.log" && break; sleep 0.1; done
if ! grep -q "^iscsi://" "$WORK/bootd.log"; then
    log "bootd export did not start; its output:"; sed 's/^/  bootd: /' "$WORK/bootd.log" >&2
    BOOTD_OK=0
fi

# --- tgt, own control port and portal ---
tgtd -f -C "$TGT_CTL" --iscsi "portal=127.0.0.1:$TGT_PORT" >"$WORK/tgtd.log" 2>&1 &
PIDS+=($!)
TGT_PID=$!
TA=(tgtadm -C "$TGT_CTL" --lld iscsi)
for _ in $(seq 50); do "${TA[@]}" --mode target --op show >/dev/null 2>&1 && break; sleep 0.1; done
"${TA[@]}" --mode target --op new --tid 1 --targetname "$IQN_TGT" || die "tgtadm target new failed"
"${TA[@]}" --mode logicalunit --op new --tid 1 --lun 1 --backing-store "$IMG" || die "tgtadm lun failed"
"${TA[@]}" --mode target --op bind --tid 1 --initiator-address ALL || die "tgtadm bind failed"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

# Runs one iscsi-perf pass; prints "IOPS CPU%" of the target process.
run_perf() { # url blocks random(0/1) pid
    local url=$1 blocks=$2 rnd=$3 pid=$4 args=(-m 32 -b "$blocks") out t0 t1 iops
    [[ $rnd == 1 ]] && args+=(-r)
    t0=$(cpu_ticks "$pid")
    out=$(timeout --signal=INT "$SECS" iscsi-perf -i iqn.2026-01.test:bench-init "${args[@]}" "$url" 2>&1 || true)
    t1=$(cpu_ticks "$pid")
    echo "$out" >>"$WORK/perf.log"
    # iscsi-perf prints "iops average N (M MB/s)" every second; the last one covers the run.
    iops=$(echo "$out" | grep -oE 'iops average [0-9]+' | tail -1 | grep -oE '[0-9]+$' || true)
    local hz; hz=$(getconf CLK_TCK)
    echo "${iops:-0} $(( (t1 - t0) * 100 / hz / SECS ))"
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR ? a[int((NR+1)/2)] : 0)}'; }

declare -A RES
WORKLOADS=("4k-randread:8:1" "128k-seqread:256:0")
for w in "${WORKLOADS[@]}"; do
    IFS=: read -r name blocks rnd <<<"$w"
    : >"$WORK/$name.bootd"; : >"$WORK/$name.tgt"
    for r in $(seq "$ROUNDS"); do
        if [[ $BOOTD_OK == 1 ]]; then
            read -r i c < <(run_perf "iscsi://127.0.0.1:$BOOTD_PORT/$IQN_BOOTD/0" "$blocks" "$rnd" "$BOOTD_PID")
            echo "$i" >>"$WORK/$name.bootd"; log "$name round $r bootd: $i IOPS, bootd CPU ${c}%"
        fi
        read -r i c < <(run_perf "iscsi://127.0.0.1:$TGT_PORT/$IQN_TGT/1" "$blocks" "$rnd" "$TGT_PID")
        echo "$i" >>"$WORK/$name.tgt"; log "$name round $r tgt: $i IOPS, tgtd CPU ${c}%"
    done
    RES[$name.bootd]=$(median <"$WORK/$name.bootd")
    RES[$name.tgt]=$(median <"$WORK/$name.tgt")
    RES[$name.kib]=$((blocks / 2))
done

if [[ $JSON == 1 ]]; then
    sep=""; printf '{"seconds":%s,"rounds":%s,"workloads":[' "$SECS" "$ROUNDS"
    for w in "${WORKLOADS[@]}"; do
        n=${w%%:*}; b=${RES[$n.bootd]}; t=${RES[$n.tgt]}; k=${RES[$n.kib]}
        awk -v n="$n" -v b="$b" -v t="$t" -v k="$k" -v s="$sep" 'BEGIN{printf "%s{\"workload\":\"%s\",\"bootd_iops\":%s,\"tgt_iops\":%s,\"ratio\":%s,\"bootd_mibs\":%.1f,\"tgt_mibs\":%.1f}", s,n,b,t,(t>0 && b>0?sprintf("%.2f",b/t):"null"),b*k/1024,t*k/1024}'
        sep=","
    done
    echo "]}"
else
    printf '%-14s %12s %12s %7s %11s %11s\n' workload "bootd IOPS" "tgt IOPS" ratio "bootd MiB/s" "tgt MiB/s"
    for w in "${WORKLOADS[@]}"; do
        n=${w%%:*}; b=${RES[$n.bootd]}; t=${RES[$n.tgt]}; k=${RES[$n.kib]}
        awk -v n="$n" -v b="$b" -v t="$t" -v k="$k" 'BEGIN{printf "%-14s %12s %12s %7s %11.1f %11.1f\n", n,b,t,(t>0 && b>0?sprintf("%.2f",b/t):"-"),b*k/1024,t*k/1024}'
    done
fi
[[ $BOOTD_OK == 1 ]] || die "bootd side failed (see above); tgt figures only"
