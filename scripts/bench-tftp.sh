#!/usr/bin/env bash
# N concurrent TFTP fetches of one file from bootd and from tftpd-hpa, on 127.0.0.1 only;
# every copy is compared with the original. Prints the median wall time per server and the
# ratio.
# Usage: sudo scripts/bench-tftp.sh [N]
# Env: BENCH_FILE (a file to serve; default: 1 MiB of random bytes), BENCH_BLKSIZE (1428),
#      BENCH_ROUNDS (3: the servers alternate, the medians are compared),
#      BOOTD_TFTP_PORT (6969), HPA_PORT (6970), BOOTD (a bootd binary; default: release build).
set -euo pipefail

N=${1:-200}
BLKSIZE=${BENCH_BLKSIZE:-1428}
ROUNDS=${BENCH_ROUNDS:-3}
BOOTD_TFTP_PORT=${BOOTD_TFTP_PORT:-6969}
HPA_PORT=${HPA_PORT:-6970}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

log() { echo "bench-tftp: $*" >&2; }
die() { log "$*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (in.tftpd drops privileges)"
command -v curl >/dev/null || die "missing curl: apt-get install curl"
if ! command -v in.tftpd >/dev/null; then
    log "installing tftpd-hpa"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q tftpd-hpa >/dev/null
fi

WORK=$(mktemp -d /tmp/bench-tftp.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

mkdir -p "$WORK/srv" "$WORK/data"
if [[ -n "${BENCH_FILE:-}" ]]; then
    cp -L "$BENCH_FILE" "$WORK/srv/file"
else
    head -c $((1 << 20)) /dev/urandom >"$WORK/srv/file"
fi
chmod 644 "$WORK/srv/file"
SIZE=$(stat -c %s "$WORK/srv/file")

if [[ -z "${BOOTD:-}" ]]; then
    (cd "$ROOT" && cargo build --release -q -p bootd)
    BOOTD="$ROOT/build/release/bootd"
fi

# bootd: ready once it prints its `tftp ADDR` line. All N clients come from 127.0.0.1 but
# play N machines: --per-source lets each have its transfer, as N real machines would
# (the default of 16 per address would queue them behind bootd's flood protection).
BOOTD_LOG=warn "$BOOTD" --data-dir "$WORK/data" serve --listen-ip 127.0.0.1 --iscsi-port 0 \
    --http-port 0 --tftp-port "$BOOTD_TFTP_PORT" --tftp-dir "$WORK/srv" --per-source "$N" \
    >"$WORK/bootd.out" 2>"$WORK/bootd.err" &
PIDS+=($!)
# tftpd-hpa in the foreground (-L), secure mode (-s) on its own port.
in.tftpd -L -s "$WORK/srv" -a "127.0.0.1:$HPA_PORT" 2>"$WORK/hpa.err" &
PIDS+=($!)
for _ in $(seq 100); do
    grep -q '^tftp ' "$WORK/bootd.out" 2>/dev/null && break
    sleep 0.1
done
grep -q '^tftp ' "$WORK/bootd.out" || die "bootd did not start: $(cat "$WORK/bootd.err")"

# run NAME PORT: N concurrent fetches, all verified; prints the wall time in seconds.
run() {
    local name=$1 port=$2 dir="$WORK/out-$1" start end i bad=0 cpids=()
    rm -rf "$dir"; mkdir -p "$dir"
    # Warm-up: one fetch, so both servers have the file in the page cache.
    curl -s --max-time 30 --tftp-blksize "$BLKSIZE" "tftp://127.0.0.1:$port/file" -o "$dir/warm"
    start=$(date +%s.%N)
    for i in $(seq "$N"); do
        curl -s --max-time 60 --tftp-blksize "$BLKSIZE" "tftp://127.0.0.1:$port/file" -o "$dir/$i" &
        cpids+=($!)
    done
    for p in "${cpids[@]}"; do wait "$p" || bad=$((bad + 1)); done
    end=$(date +%s.%N)
    for i in $(seq "$N"); do
        cmp -s "$WORK/srv/file" "$dir/$i" || bad=$((bad + 1))
    done
    ((bad == 0)) || die "$name: $bad of $N fetches failed or differ"
    awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }'
}

median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
log "$N concurrent fetches of $SIZE bytes, blksize $BLKSIZE, $ROUNDS rounds"
B=(); H=()
for r in $(seq "$ROUNDS"); do
    B+=("$(run bootd "$BOOTD_TFTP_PORT")")
    H+=("$(run tftpd-hpa "$HPA_PORT")")
    log "round $r: bootd ${B[-1]} s, tftpd-hpa ${H[-1]} s"
done
T_BOOTD=$(printf '%s\n' "${B[@]}" | median)
T_HPA=$(printf '%s\n' "${H[@]}" | median)
printf 'bootd      %6.3f s  (%d fetches of %d bytes, all intact)\n' "$T_BOOTD" "$N" "$SIZE"
printf 'tftpd-hpa  %6.3f s  (%d fetches of %d bytes, all intact)\n' "$T_HPA" "$N" "$SIZE"
printf 'ratio      %6.2fx  (tftpd-hpa time / bootd time)\n' "$(awk -v a="$T_HPA" -v b="$T_BOOTD" 'BEGIN { print a / b }')"
