#!/usr/bin/env bash
# Boots a golden image made by `bootd image build` in one TCG guest through
# `bootd serve --dhcp full` on a private bridge in a network namespace, and waits for a
# login prompt on its serial console and the facts its user-data prints there. For trying
# built images by hand until the end-to-end test exists (issue 13).
# Usage (root): scripts/boot-image.sh IMAGE.raw [bios|uefi]
# Env: BOOTD (default build/release/bootd), LIMIT (seconds, default 600),
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
NAME=node1
MAC=52:54:00:d1:5c:41
log() { echo "boot-image: $*" >&2; }
die() { log "$*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (network namespaces, tap devices)"
[[ -f $IMAGE ]] || die "no image $IMAGE"
[[ -x $BOOTD ]] || die "no bootd binary at $BOOTD (cargo build --release -p bootd)"

WORK=$(mktemp -d /tmp/bootd-boot-image.XXXXXX)
NS=bootd-bi-$$
SERVE_PID= GUEST_PID=
cleanup() {
    [[ -n $GUEST_PID ]] && { kill "$GUEST_PID" 2>/dev/null || true; wait "$GUEST_PID" 2>/dev/null || true; }
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
"$BOOTD" node add "$MAC" --image built --name "$NAME" --user-data "$WORK/user-data" >/dev/null

ip netns add "$NS"
ip -n "$NS" link set lo up
ip -n "$NS" link add lan0 type bridge stp_state 0 forward_delay 0
ip -n "$NS" addr add "$SERVER_IP/24" dev lan0
ip -n "$NS" link set lan0 up
ip -n "$NS" tuntap add dev tap1 mode tap
ip -n "$NS" link set tap1 master lan0
ip -n "$NS" link set tap1 up

# HTTP on 8080: the port the image looks for the NoCloud seed on (image build --http-port).
ip netns exec "$NS" "$BOOTD" serve --listen-ip "$SERVER_IP" --iscsi-port 3260 --http-port 8080 \
    --tftp-port 69 --dhcp full --interface lan0 --pool "$POOL" --dns "$DNS" >"$WORK/serve.log" 2>&1 &
SERVE_PID=$!
for _ in $(seq 100); do
    grep -qx "tftp $SERVER_IP:69" "$WORK/serve.log" && break
    kill -0 "$SERVE_PID" 2>/dev/null || { cat "$WORK/serve.log" >&2; die "serve exited"; }
    sleep 0.1
done

QEMU=(qemu-system-x86_64 -accel tcg -m 1024 -smp 1 -nographic -monitor none -no-reboot
    -serial "file:$WORK/console" -netdev "tap,id=n0,ifname=tap1,script=no,downscript=no")
case $FW in
bios) QEMU+=(-boot n -device "e1000,netdev=n0,mac=$MAC,romfile=$ROM") ;;
uefi)
    cp "$OVMF_VARS" "$WORK/vars.fd"
    QEMU+=(-drive "if=pflash,format=raw,unit=0,readonly=on,file=$OVMF_CODE"
        -drive "if=pflash,format=raw,unit=1,file=$WORK/vars.fd"
        -device "virtio-net-pci,netdev=n0,mac=$MAC,romfile=")
    ;;
*) die "firmware: bios or uefi" ;;
esac
START=$SECONDS
ip netns exec "$NS" "${QEMU[@]}" </dev/null >"$WORK/qemu.log" 2>&1 &
GUEST_PID=$!
log "guest $NAME ($FW) powered on; waiting up to ${LIMIT}s for a login prompt"
RESULT=timeout
while (( SECONDS - START < LIMIT )); do
    if grep -aqs 'login:' "$WORK/console" && grep -aqs 'BOOTD-FACT done' "$WORK/console"; then
        RESULT=login; break
    fi
    kill -0 "$GUEST_PID" 2>/dev/null || { RESULT=guest-exited; break; }
    sleep 2
done
log "result: $RESULT after $((SECONDS - START))s"
plain() { sed -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' -e 's/\x1bc//g' -e 's/\r//g' "$1"; }
echo "=== console (last 60 lines) ==="
plain "$WORK/console" | grep -av '^[[:space:]]*$' | grep -av 'BOOTD-FACT' | tail -n 60
echo "=== facts ==="
plain "$WORK/console" | grep -a 'BOOTD-FACT' || true
echo "=== serve log (nocloud, sessions) ==="
grep -aiE 'nocloud|cloud-init|login|session|refus' "$WORK/serve.log" | tail -n 20 || true
"$BOOTD" node show "$NAME" 2>/dev/null | grep -iE 'overlay|generation' || true
[[ $RESULT == login ]]
