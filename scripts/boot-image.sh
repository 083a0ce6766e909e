#!/usr/bin/env bash
# Boots a golden image made by `bootd image build` in one TCG guest through
# `bootd serve --dhcp full` on a private bridge in a network namespace, and waits for a
# login prompt on its serial console and the facts its user-data prints there, then prints
# `bootd df` (what the nodes' first boots cost on disk). For trying built images by hand;
# CI's test is tests/tests/e2e/debian.rs.
# Usage (root): scripts/boot-image.sh IMAGE.raw [bios|uefi]
# Env: BOOTD (default build/release/bootd), LIMIT (seconds, default 600),
#      NODES=N boots N guests at once (default 1; node1..nodeN),
#      KEEP=1 keeps the work directory (console log, serve log) for a look afterwards.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
IMAGE=${1:?usage: boot-image.sh IMAGE.raw [bios|uefi]}
FW=${2:-bios}
LIMIT=${LIMIT:-600}
BOOTD=${BOOTD:-$ROOT/build/release/bootd}
ROM=/usr/lib/ipxe/qemu/pxe-e1000.rom
OVMF_CODE=/usr/share/OVMF/OVMF_CODE_4M.fd
OVMF_VARS=/usr/share/OVMF/OVMF_VARS_4M.fd
SERVER_IP=192.0.2.1
POOL=192.0.2.100-192.0.2.120
# Announced by serve's DHCP; the image's bootd-resolv.service writes it to resolv.conf.
DNS=192.0.2.53
NODES=${NODES:-1}
[[ $NODES =~ ^[0-9]+$ && $NODES -ge 1 && $NODES -le 8 ]] || { echo "NODES: 1 to 8" >&2; exit 1; }
mac() { printf '52:54:00:d1:5c:%02x' "$((0x40 + $1))"; }
log() { echo "boot-image: $*" >&2; }
die() { log "$*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (network namespaces, tap devices)"
[[ -f $IMAGE ]] || die "no image $IMAGE"
[[ -x $BOOTD ]] || die "no bootd binary at $BOOTD (cargo build --release -p bootd)"

WORK=$(mktemp -d /tmp/bootd-boot-image.XXXXXX)
NS=bootd-bi-$$
SERVE_PID=
GUEST_PIDS=()
cleanup() {
    for p in "${GUEST_PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    [[ -n $SERVE_PID ]] && { kill "$SERVE_PID" 2>/dev/null || true; wait "$SERVE_PID" 2>/dev/null || true; }
    ip netns del "$NS" 2>/dev/null || true
    if [[ ${KEEP:-0} == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

export BOOTD_DATA_DIR=$WORK/data
"$BOOTD" image import built "$IMAGE" >/dev/null
# user-data: the default (hostname) plus facts printed on the serial console once
# cloud-init's final stage runs, the things issue 13 asks the image to get right.
cat >"$WORK/user-data" <<'USERDATA'
#cloud-config
hostname: {{ name }}
runcmd:
  - - sh
    - -c
    - |
      exec >/dev/ttyS0 2>&1
      f() { echo "BOOTD-FACT $*"; }
      f "hostname=$(hostname)"
      f "machine-id=$(cat /etc/machine-id)"
      f "ssh-hostkey=$(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub 2>&1)"
      f "iscsid=$(systemctl is-active iscsid.service)"
      f "bootd-iscsi-root=$(systemctl is-active bootd-iscsi-root.service)"
      for s in /sys/class/iscsi_session/session*; do f "$(basename "$s") recovery_tmo=$(cat "$s/recovery_tmo")"; done
      for c in /sys/class/iscsi_connection/connection*; do f "$(basename "$c") ping_tmo=$(cat "$c/ping_tmo" 2>&1) recv_tmo=$(cat "$c/recv_tmo" 2>&1)"; done
      f "initiatorname=$(cat /etc/iscsi/initiatorname.iscsi)"
      f "node-records=$(ls /etc/iscsi/nodes 2>&1 | tr '\n' ' ')"
      f "seed=$(grep seedfrom /etc/cloud/cloud.cfg.d/90_bootd_seed.cfg)"
      f "addr=$(ip -4 -o addr show scope global | awk '{print $2, $4}' | tr '\n' ' ')"
      f "networkd=$(systemctl is-active systemd-networkd.service)"
      f "resolv=$(grep -v '^#' /etc/resolv.conf 2>&1 | tr '\n' ' ') ($(systemctl is-active bootd-resolv.service))"
      f "failed-units=$(systemctl --failed --no-legend --plain | awk '{print $1}' | tr '\n' ' ')"
      for u in $(systemctl --failed --no-legend --plain | awk '{print $1}'); do
        journalctl -b -u "$u" --no-pager -o cat | tail -n 15 | sed "s/^/BOOTD-FACT $u: /"
      done
      f done
USERDATA
for i in $(seq "$NODES"); do
    "$BOOTD" node add "$(mac "$i")" --image built --name "node$i" --user-data "$WORK/user-data" >/dev/null
done

ip netns add "$NS"
ip -n "$NS" link set lo up
ip -n "$NS" link add lan0 type bridge stp_state 0 forward_delay 0
ip -n "$NS" addr add "$SERVER_IP/24" dev lan0
ip -n "$NS" link set lan0 up
for i in $(seq "$NODES"); do
    ip -n "$NS" tuntap add dev "tap$i" mode tap
    ip -n "$NS" link set "tap$i" master lan0
    ip -n "$NS" link set "tap$i" up
done

# HTTP on 8080: the port the image looks for the NoCloud seed on (image build --http-port).
ip netns exec "$NS" "$BOOTD" serve --listen-ip "$SERVER_IP" --iscsi-port 3260 --http-port 8080 \
    --tftp-port 69 --dhcp full --interface lan0 --pool "$POOL" --dns "$DNS" >"$WORK/serve.log" 2>&1 &
SERVE_PID=$!
for _ in $(seq 100); do
    grep -qx "tftp $SERVER_IP:69" "$WORK/serve.log" && break
    kill -0 "$SERVE_PID" 2>/dev/null || { cat "$WORK/serve.log" >&2; die "serve exited"; }
    sleep 0.1
done

boot() { # boot N: powers on guest N in the background
    local i=$1 mac
    mac=$(mac "$i")
    local q=(qemu-system-x86_64 -accel tcg -m 1024 -smp 1 -nographic -monitor none -no-reboot
        -serial "file:$WORK/console$i" -netdev "tap,id=n0,ifname=tap$i,script=no,downscript=no")
    case $FW in
    bios) q+=(-boot n -device "e1000,netdev=n0,mac=$mac,romfile=$ROM") ;;
    uefi)
        cp "$OVMF_VARS" "$WORK/vars$i.fd"
        q+=(-drive "if=pflash,format=raw,unit=0,readonly=on,file=$OVMF_CODE"
            -drive "if=pflash,format=raw,unit=1,file=$WORK/vars$i.fd"
            -device "virtio-net-pci,netdev=n0,mac=$mac,romfile=")
        ;;
    *) die "firmware: bios or uefi" ;;
    esac
    ip netns exec "$NS" "${q[@]}" </dev/null >"$WORK/qemu$i.log" 2>&1 &
    GUEST_PIDS+=($!)
}
START=$SECONDS
for i in $(seq "$NODES"); do boot "$i"; done
log "$NODES guest(s) ($FW) powered on; waiting up to ${LIMIT}s for login prompts"
declare -A DONE=()
while (( SECONDS - START < LIMIT && ${#DONE[@]} < NODES )); do
    for i in $(seq "$NODES"); do
        [[ -n ${DONE[$i]:-} ]] && continue
        if grep -aqs 'login:' "$WORK/console$i" && grep -aqs 'BOOTD-FACT done' "$WORK/console$i"; then
            DONE[$i]=login; log "node$i: login prompt and facts after $((SECONDS - START))s"
        elif ! kill -0 "${GUEST_PIDS[$((i - 1))]}" 2>/dev/null; then
            DONE[$i]=guest-exited; log "node$i: guest exited after $((SECONDS - START))s"
        fi
    done
    sleep 2
done
RESULT=login
for i in $(seq "$NODES"); do [[ ${DONE[$i]:-timeout} == login ]] || RESULT=${DONE[$i]:-timeout}; done
log "result: $RESULT after $((SECONDS - START))s"
plain() { sed -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' -e 's/\x1bc//g' -e 's/\r//g' "$1"; }
for i in $(seq "$NODES"); do
    echo "=== node$i console (last 30 lines) ==="
    plain "$WORK/console$i" | grep -av '^[[:space:]]*$' | grep -av 'BOOTD-FACT' | tail -n 30
    echo "=== node$i facts ==="
    plain "$WORK/console$i" | grep -a 'BOOTD-FACT' || true
done
echo "=== serve log (nocloud, sessions) ==="
grep -aiE 'nocloud|cloud-init|login|session|refus' "$WORK/serve.log" | tail -n 20 || true
echo "=== bootd df (the nodes' first boots against full copies) ==="
"$BOOTD" df || true
[[ $RESULT == login ]]
