#!/usr/bin/env bash
# The boot network's HTTP side under load, on 127.0.0.1 only, with ApacheBench (ab):
#   script      GET /boot.ipxe (the chain script), a new connection per request
#   script-ka   the same over kept-alive connections (ab -k; what iPXE's client does)
#   large       GET of a 48 MiB file from the boot directory (/ipxe/big.img), 4 at once
# against bootd (BOOTD, default: this tree's release build), optionally a baseline bootd
# (BENCH_BASE, e.g. main's release binary: the hand-written server), and two peers serving
# the same bytes as static files: busybox httpd and python3 -m http.server. Servers
# alternate for BENCH_ROUNDS rounds; the medians are printed, with each bootd's peak RSS
# (VmHWM) after the runs (the old server held a whole file in memory per file served).
# Every run must have 0 failed and 0 non-2xx answers.
# Usage: scripts/bench-http.sh
# Env: BOOTD, BENCH_BASE, BENCH_N (script requests per run, 20000), BENCH_C (16),
#      BENCH_LARGE (large-file requests per run, 24), BENCH_ROUNDS (3), BENCH_PEERS (1; 0 skips)
set -euo pipefail

N=${BENCH_N:-20000}
C=${BENCH_C:-16}
LARGE=${BENCH_LARGE:-24}
ROUNDS=${BENCH_ROUNDS:-3}
PEERS=${BENCH_PEERS:-1}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

log() { echo "bench-http: $*" >&2; }
die() { log "$*"; exit 1; }

command -v ab >/dev/null || die "missing ab: apt-get install apache2-utils (scripts/install-test-deps.sh)"
command -v curl >/dev/null || die "missing curl"

if [[ -z "${BOOTD:-}" ]]; then
    (cd "$ROOT" && cargo build --release -q -p bootd)
    BOOTD="$ROOT/build/release/bootd"
fi

WORK=$(mktemp -d /tmp/bench-http.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

mkdir -p "$WORK/srv" "$WORK/peer/ipxe"
# Under the old server's 64 MiB per-file limit, so that it can serve it too.
head -c $((48 << 20)) /dev/urandom >"$WORK/srv/big.img"
ln "$WORK/srv/big.img" "$WORK/peer/ipxe/big.img"

# start_bootd NAME BIN: serve on a free port; sets PORT[NAME] and PID[NAME]. All clients
# come from 127.0.0.1: --per-source 64 keeps bootd's per-address share (16) from refusing
# ab's next connection while the previous one's slot is being freed.
declare -A PORT PID
start_bootd() {
    local name=$1 bin=$2
    mkdir -p "$WORK/data-$name"
    BOOTD_LOG=warn "$bin" --data-dir "$WORK/data-$name" serve --dhcp off --listen-ip 127.0.0.1 \
        --iscsi-port 0 --http-port 0 --tftp-port 0 --tftp-dir "$WORK/srv" --per-source 64 \
        >"$WORK/$name.out" 2>"$WORK/$name.err" &
    PIDS+=($!)
    PID[$name]=$!
    for _ in $(seq 100); do
        grep -q '^http ' "$WORK/$name.out" 2>/dev/null && break
        sleep 0.1
    done
    grep -q '^http ' "$WORK/$name.out" || die "$name did not start: $(cat "$WORK/$name.err")"
    PORT[$name]=$(awk '/^http /{n=split($2,a,":"); print a[n]}' "$WORK/$name.out")
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

SERVERS=(bootd)
start_bootd bootd "$BOOTD"
if [[ -n "${BENCH_BASE:-}" ]]; then
    start_bootd base "$BENCH_BASE"
    SERVERS+=(base)
fi
# The peers serve the very bytes bootd's chain script has.
curl -sf "http://127.0.0.1:${PORT[bootd]}/boot.ipxe" >"$WORK/peer/boot.ipxe"
if [[ $PEERS == 1 ]]; then
    if command -v busybox >/dev/null; then
        PORT[busybox]=$(free_port)
        busybox httpd -f -p "127.0.0.1:${PORT[busybox]}" -h "$WORK/peer" &
        PIDS+=($!)
        SERVERS+=(busybox)
    fi
    PORT[python]=$(free_port)
    python3 -m http.server --bind 127.0.0.1 --directory "$WORK/peer" "${PORT[python]}" \
        >/dev/null 2>&1 &
    PIDS+=($!)
    SERVERS+=(python)
    sleep 1
fi

# ab_run FIELD ARGS...: runs ab, checks it had no failures, prints FIELD's number.
ab_run() {
    local field=$1 out
    shift
    out=$(ab -q -r -s 30 "$@" 2>&1) || die "ab $*: $out"
    local failed non2xx
    failed=$(awk '/^Failed requests:/{print $3}' <<<"$out")
    non2xx=$(awk '/^Non-2xx responses:/{print $3}' <<<"$out")
    [[ ${failed:-0} == 0 && ${non2xx:-0} == 0 ]] || die "ab $*: $failed failed, ${non2xx:-0} non-2xx"
    awk -v f="$field" 'index($0, f) == 1 {print $(split(f, _, " ") + 1)}' <<<"$out"
}

declare -A RES
for round in $(seq "$ROUNDS"); do
    for s in "${SERVERS[@]}"; do
        base="http://127.0.0.1:${PORT[$s]}"
        # Warm-up: the file in the page cache, connections set up.
        curl -sf -o /dev/null "$base/ipxe/big.img"
        RES[$s,script]+="$(ab_run "Requests per second:" -n "$N" -c "$C" "$base/boot.ipxe") "
        RES[$s,ka]+="$(ab_run "Requests per second:" -k -n "$N" -c "$C" "$base/boot.ipxe") "
        RES[$s,large]+="$(ab_run "Transfer rate:" -n "$LARGE" -c 4 "$base/ipxe/big.img") "
        log "round $round $s done"
    done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
printf '%-10s %14s %14s %16s %10s\n' server "script req/s" "script-ka req/s" "large MiB/s" "peak RSS"
for s in "${SERVERS[@]}"; do
    rss=-
    if [[ -n "${PID[$s]:-}" ]]; then
        rss="$(awk '/^VmHWM/{printf "%d MiB", $2/1024}' "/proc/${PID[$s]}/status")"
    fi
    large=$(median <<<"${RES[$s,large]}")
    printf '%-10s %14s %14s %16.0f %10s\n' "$s" "$(median <<<"${RES[$s,script]}")" \
        "$(median <<<"${RES[$s,ka]}")" "$(awk -v k="$large" 'BEGIN {print k / 1024}')" "$rss"
done
echo "(ab on 127.0.0.1, $N script requests at $C at once, $LARGE x 48 MiB at 4 at once; medians of $ROUNDS rounds)"
