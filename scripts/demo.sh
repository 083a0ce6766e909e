#!/usr/bin/env bash
# The one-command demo: two diskless QEMU guests PXE-boot from bootd at the same time.
#
# Builds bootd (release) if it is missing and the golden test image (tests/guest/build-golden.sh,
# from Debian packages, cached under build/), imports the image into a temporary data directory,
# registers two machines, and starts `bootd serve --dhcp full` on a private bridge inside a
# network namespace (192.0.2.0/24, nothing reaches the host's network). Both guests (TCG,
# e1000 with iPXE's ROM) get an address and a script from serve, sanboot their own
# copy-on-write overlay of the image, boot its Linux, attach the same disk again through the
# iBFT, write a marker to it and power off. Then it prints each guest's last console lines,
# each node's boot stages (`bootd node show`) and `bootd df`, and removes everything it made,
# also when interrupted.
#
# Usage: sudo scripts/demo.sh
# Env: BOOTD (a bootd binary; default: build/release/bootd, built if missing),
#      DEMO_LIMIT (seconds the guests get to finish; default 180),
#      DEMO_RECORD_IO (a directory: serve --record-io keeps each node's I/O trace there;
#      tests/storm/fixtures/golden-boot.trace was recorded this way).
# Needs: qemu-system-x86, ipxe-qemu, and what tests/guest/build-golden.sh needs
#        (scripts/install-test-deps.sh installs all of it).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
LIMIT=${DEMO_LIMIT:-180}
ROM=/usr/lib/ipxe/qemu/pxe-e1000.rom
SERVER_IP=192.0.2.1
POOL=192.0.2.100-192.0.2.120
# Name, MAC and tap of each machine (the same addresses the end-to-end tests use).
MACHINES=("demo1 52:54:00:d1:5c:01 tap1" "demo2 52:54:00:d1:5c:02 tap2")

log() { echo "demo: $*" >&2; }
die() { log "$*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (network namespaces, tap devices)"
command -v qemu-system-x86_64 >/dev/null || die "missing qemu-system-x86_64 (apt-get install qemu-system-x86)"
command -v ip >/dev/null || die "missing ip (apt-get install iproute2)"
[[ -f $ROM ]] || die "missing $ROM (apt-get install ipxe-qemu)"

START=$SECONDS
BOOTD=${BOOTD:-$ROOT/build/release/bootd}
if [[ ! -x $BOOTD ]]; then
    log "building bootd (cargo build --release -p bootd)"
    (cd "$ROOT" && cargo build --release -p bootd >&2)
fi
[[ -x $BOOTD ]] || die "no bootd binary at $BOOTD"

log "building the golden image (cached after the first run)"
GOLDEN=$(bash "$ROOT/tests/guest/build-golden.sh" "$ROOT/build/golden" "$ROOT/build/guest" |
    sed -n 's/^golden=//p')
[[ -f $GOLDEN ]] || die "tests/guest/build-golden.sh printed no image"

WORK=$(mktemp -d /tmp/bootd-demo.XXXXXX)
NS=bootd-demo-$$
SERVE_PID=
GUEST_PIDS=()
cleanup() {
    local pid
    for pid in "${GUEST_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${GUEST_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ -n $SERVE_PID ]]; then
        # SIGTERM: serve flushes the overlays and exits.
        kill "$SERVE_PID" 2>/dev/null || true
        wait "$SERVE_PID" 2>/dev/null || true
    fi
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

export BOOTD_DATA_DIR=$WORK/data
"$BOOTD" image import golden "$GOLDEN" >/dev/null
for m in "${MACHINES[@]}"; do
    read -r name mac _ <<<"$m"
    "$BOOTD" node add "$mac" --image golden --name "$name" >/dev/null
done
log "data dir $BOOTD_DATA_DIR: image golden, nodes demo1 and demo2"

# The LAN: a bridge carrying the server's address and one tap per machine. No STP: the
# bridge forwards the firmware's first DHCP DISCOVER at once.
ip netns add "$NS"
ip -n "$NS" link set lo up
ip -n "$NS" link add lan0 type bridge stp_state 0 forward_delay 0
ip -n "$NS" addr add "$SERVER_IP/24" dev lan0
ip -n "$NS" link set lan0 up
for m in "${MACHINES[@]}"; do
    read -r _ _ tap <<<"$m"
    ip -n "$NS" tuntap add dev "$tap" mode tap
    ip -n "$NS" link set "$tap" master lan0
    ip -n "$NS" link set "$tap" up
done

# TFTP on 69 (where PXE firmware looks; these guests' ROM is iPXE and needs none), the
# other ports picked by serve and printed.
ip netns exec "$NS" "$BOOTD" serve --listen-ip "$SERVER_IP" --iscsi-port 0 --http-port 0 \
    --tftp-port 69 --dhcp full --interface lan0 --pool "$POOL" \
    ${DEMO_RECORD_IO:+--record-io "$DEMO_RECORD_IO"} >"$WORK/serve.log" 2>&1 &
SERVE_PID=$!
for _ in $(seq 100); do
    grep -qx "tftp $SERVER_IP:69" "$WORK/serve.log" && break
    kill -0 "$SERVE_PID" 2>/dev/null || { cat "$WORK/serve.log" >&2; die "serve exited"; }
    sleep 0.1
done
grep -qx "tftp $SERVER_IP:69" "$WORK/serve.log" || { cat "$WORK/serve.log" >&2; die "serve did not start"; }
log "serve is up on $SERVER_IP ($(grep -E '^(iscsi|http) ' "$WORK/serve.log" | tr '\n' ' '))"

BOOTED=$SECONDS
for m in "${MACHINES[@]}"; do
    read -r name mac tap <<<"$m"
    # -no-reboot: the guest's power-off (or a failed boot's reboot) ends QEMU.
    ip netns exec "$NS" qemu-system-x86_64 -accel tcg -m 512 -smp 1 -nographic \
        -monitor none -no-reboot -serial "file:$WORK/$name.console" \
        -netdev "tap,id=n0,ifname=$tap,script=no,downscript=no" \
        -boot n -device "e1000,netdev=n0,mac=$mac,romfile=$ROM" \
        </dev/null >"$WORK/$name.qemu" 2>&1 &
    GUEST_PIDS+=($!)
done
log "powered on demo1 and demo2; waiting up to ${LIMIT}s for them to power off"
while (( SECONDS - BOOTED < LIMIT )); do
    running=0
    for pid in "${GUEST_PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && running=1; done
    (( running )) || break
    sleep 1
done
for pid in "${GUEST_PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null && log "a guest is still running after ${LIMIT}s: stopping it"
done
log "guests done after $((SECONDS - BOOTED))s"

# Console text without terminal escapes and carriage returns.
plain() { sed -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' -e 's/\x1bc//g' -e 's/\r//g' "$1"; }
FAILED=0
for m in "${MACHINES[@]}"; do
    read -r name _ _ <<<"$m"
    echo
    echo "=== $name: last console lines ==="
    plain "$WORK/$name.console" | grep -v '^[[:space:]]*$' | tail -n 8
    grep -q 'BOOTD-E2E-RESULT: PASS' "$WORK/$name.console" || FAILED=1
    echo
    echo "=== bootd node show $name ==="
    "$BOOTD" node show "$name"
done
echo
echo "=== bootd df ==="
"$BOOTD" df
echo
if (( FAILED )); then
    log "a guest did not pass; serve's log:"
    cat "$WORK/serve.log" >&2
    log "FAILED in $((SECONDS - START))s"
    exit 1
fi
log "both guests booted their own overlays and wrote to them; done in $((SECONDS - START))s"
