#!/usr/bin/env bash
# Captures the DHCP requests real network-boot firmware and busybox udhcpc send, as
# hex test fixtures for bootd's DHCP decoder (bootd/dhcp/tests/fixtures, one packet a file).
# Everything runs in network namespaces of its own on 192.0.2.0/24: a bridge at 192.0.2.1
# with a tap for qemu and a veth to a client namespace for udhcpc, and a UDP listener on
# port 67 that saves each datagram. It answers a DISCOVER with an OFFER (an address only for
# iPXE and udhcpc, a boot file too for OVMF, which takes no offer without one) so that the
# client's REQUEST is captured too.
#   a. SeaBIOS + iPXE ROM (pxe-e1000.rom)     b. OVMF + iPXE EFI ROM (efi-e1000.rom)
#   c. OVMF's own PXE and HTTP boot (virtio-net without ROM)   d. busybox udhcpc
# Usage: sudo scripts/capture-dhcp-fixtures.sh [OUT_DIR]
# Env: QEMU_LIMIT (seconds per qemu run, default 90).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$ROOT/bootd/dhcp/tests/fixtures}
LIMIT=${QEMU_LIMIT:-90}
NS=bootd-dhcpcap-$$
CNS=bootd-dhcpcli-$$
IPXE_ROMS=/usr/lib/ipxe/qemu
OVMF_CODE=/usr/share/OVMF/OVMF_CODE.fd
OVMF_VARS=/usr/share/OVMF/OVMF_VARS.fd

log() { echo "capture-dhcp: $*" >&2; }
die() { log "$*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (network namespaces, tap)"
for c in ip python3 busybox qemu-system-x86_64; do
    command -v "$c" >/dev/null || die "missing $c"
done
for f in "$IPXE_ROMS/pxe-e1000.rom" "$IPXE_ROMS/efi-e1000.rom" "$OVMF_CODE" "$OVMF_VARS"; do
    [[ -f $f ]] || die "missing $f (apt-get install ipxe-qemu ovmf)"
done

WORK=$(mktemp -d /tmp/capture-dhcp.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    ip netns del "$NS" 2>/dev/null || true
    ip netns del "$CNS" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

version() { dpkg-query -W -f '${Version}' "$1" 2>/dev/null || echo unknown; }
QEMU_V=$(version qemu-system-x86)
IPXE_V=$(version ipxe-qemu)
OVMF_V=$(version ovmf)
BUSYBOX_V=$(busybox 2>&1 | sed -nE '1s/^BusyBox (v[^ ]+).*/\1/p')

# The server side: bridge br0 = 192.0.2.1/24, tap0 for qemu, veth-s to the client ns.
ip netns add "$NS"
ip netns add "$CNS"
ip -n "$NS" link set lo up
ip -n "$NS" link add br0 type bridge
ip -n "$NS" addr add 192.0.2.1/24 dev br0
ip -n "$NS" tuntap add dev tap0 mode tap
ip -n "$NS" link set tap0 master br0
ip -n "$NS" link add veth-s type veth peer name veth-c netns "$CNS"
ip -n "$NS" link set veth-s master br0
ip -n "$CNS" link set veth-c address 52:54:00:b0:07:04
for d in br0 tap0 veth-s; do ip -n "$NS" link set "$d" up; done
ip -n "$CNS" link set lo up
ip -n "$CNS" link set veth-c up

# Listener: saves the first datagram of each wanted kind as NAME.hex and exits once every
# kind is in. A kind is `msgtype:vendorclass-prefix[:ipxe]`; the spec NAME=KIND. MODE:
# answer (a bare OFFER to DISCOVERs) or boot (an OFFER with a boot file: a URL and vendor
# class HTTPClient for an HTTPClient).
cat >"$WORK/listen.py" <<'EOF'
import socket, struct, sys

out, mode, wants = sys.argv[1], sys.argv[2], sys.argv[3:]
want = {}  # kind -> name
for w in wants:
    name, kind = w.split("=", 1)
    want[kind] = name
TYPES = {1: "discover", 3: "request", 8: "inform"}


def options(b):
    opts, i = {}, 240
    while i < len(b):
        code = b[i]
        if code == 255:
            break
        if code == 0:
            i += 1
            continue
        n = b[i + 1]
        opts[code] = opts.get(code, b"") + b[i + 2:i + 2 + n]
        i += 2 + n
    return opts


def kind(b):
    o = options(b)
    vc = o.get(60, b"none").decode("ascii", "replace")
    prefix = vc.replace(" ", ":").split(":")[0]
    k = "%s:%s" % (TYPES.get(o.get(53, b"\0")[0], "other"), prefix)
    if 175 in o or b"iPXE" in o.get(77, b""):
        k += ":ipxe"
    return k, vc


def offer(b, http):
    """An OFFER of 192.0.2.100, with a boot file in mode boot."""
    m = bytearray(300)
    m[0:4] = bytes([2, b[1], b[2], 0])
    m[4:12] = b[4:12]  # xid, secs, flags
    m[16:20] = socket.inet_aton("192.0.2.100")
    m[28:44] = b[28:44]  # chaddr
    m[236:240] = bytes([99, 130, 83, 99])
    opts = bytes([53, 1, 2, 54, 4]) + socket.inet_aton("192.0.2.1")
    opts += bytes([1, 4, 255, 255, 255, 0, 51, 4]) + struct.pack(">I", 3600)
    if mode == "boot" and http:
        url = b"http://192.0.2.1/snponly.efi"
        opts += bytes([60, 10]) + b"HTTPClient" + bytes([67, len(url)]) + url
    elif mode == "boot":
        m[20:24] = socket.inet_aton("192.0.2.1")  # siaddr
        opts += bytes([67, 11]) + b"snponly.efi"
    opts += bytes([255])
    m[240:240 + len(opts)] = opts
    return bytes(m)


s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"br0")
s.bind(("0.0.0.0", 67))
print("listening", flush=True)
seen = set()
while set(want) - seen:
    b, src = s.recvfrom(4096)
    if len(b) < 240 or b[236:240] != bytes([99, 130, 83, 99]):
        continue
    k, vc = kind(b)
    print("got %s from %s: %d bytes, vendor class %r" % (k, src, len(b), vc), flush=True)
    if k in want and k not in seen:
        seen.add(k)
        with open("%s/%s.hex" % (out, want[k]), "w") as f:
            f.write(b.hex() + "\n")
    if k.startswith("discover:"):
        s.sendto(offer(b, k.startswith("discover:HTTPClient")), ("255.255.255.255", 68))
EOF

# run LABEL MODE CMD... -- NAME=KIND...: the listener, then CMD (bounded by LIMIT),
# until the listener has every kind or time is up.
run() {
    local label=$1 mode=$2
    shift 2
    local cmd=()
    while [[ $1 != -- ]]; do cmd+=("$1"); shift; done
    shift
    mkdir -p "$WORK/$label"
    ip netns exec "$NS" python3 "$WORK/listen.py" "$WORK/$label" "$mode" "$@" \
        >"$WORK/$label.log" 2>&1 &
    local lp=$!
    PIDS+=("$lp")
    for _ in $(seq 50); do
        grep -qs listening "$WORK/$label.log" && break
        sleep 0.1
    done
    "${cmd[@]}" >"$WORK/$label.out" 2>&1 &
    local cp=$!
    PIDS+=("$cp")
    local t=0
    while kill -0 "$lp" 2>/dev/null && ((t < LIMIT * 10)); do
        sleep 0.1
        t=$((t + 1))
    done
    kill "$cp" "$lp" 2>/dev/null || true
    wait "$cp" 2>/dev/null || true
    wait "$lp" 2>/dev/null || true
    log "$label: $(grep -c '^got' "$WORK/$label.log" || true) datagram(s) in $((t / 10)) s"
    sed 's/^/    /' "$WORK/$label.log" >&2
    local spec
    for spec in "$@"; do
        [[ -f $WORK/$label/${spec%%=*}.hex ]] || die "$label: no ${spec#*=} within $LIMIT s"
    done
}

QEMU=(timeout "$LIMIT" ip netns exec "$NS" qemu-system-x86_64 -accel tcg -m 256
    -display none -monitor none -serial none -no-reboot
    -netdev tap,id=n0,ifname=tap0,script=no,downscript=no)

# Each machine has its own SMBIOS UUID, which PXE clients send as option 97.
run ipxe-bios answer "${QEMU[@]}" -boot n -uuid b007d000-0000-4000-8000-000000000001 \
    -device e1000,netdev=n0,mac=52:54:00:b0:07:01,romfile="$IPXE_ROMS/pxe-e1000.rom" -- \
    ipxe-bios-discover=discover:PXEClient:ipxe ipxe-bios-request=request:PXEClient:ipxe

cp "$OVMF_VARS" "$WORK/vars-ipxe.fd"
run ipxe-efi answer "${QEMU[@]}" -uuid b007d000-0000-4000-8000-000000000002 \
    -drive if=pflash,format=raw,readonly=on,file="$OVMF_CODE" \
    -drive if=pflash,format=raw,file="$WORK/vars-ipxe.fd" \
    -device e1000,netdev=n0,mac=52:54:00:b0:07:02,romfile="$IPXE_ROMS/efi-e1000.rom" -- \
    ipxe-efi-discover=discover:PXEClient:ipxe ipxe-efi-request=request:PXEClient:ipxe

# OVMF's own stack on virtio-net (no ROM). IPv6 PXE is off so IPv4 comes first; for HTTP
# boot, IPv4 PXE is off too, else its retries (about a minute) come before HTTP.
cp "$OVMF_VARS" "$WORK/vars-pxe.fd"
run ovmf-pxe boot "${QEMU[@]}" -uuid b007d000-0000-4000-8000-000000000003 \
    -drive if=pflash,format=raw,readonly=on,file="$OVMF_CODE" \
    -drive if=pflash,format=raw,file="$WORK/vars-pxe.fd" \
    -fw_cfg name=opt/org.tianocore/IPv6PXESupport,string=n \
    -device virtio-net-pci,netdev=n0,mac=52:54:00:b0:07:03,romfile= -- \
    ovmf-pxe-discover=discover:PXEClient ovmf-pxe-request=request:PXEClient

cp "$OVMF_VARS" "$WORK/vars-http.fd"
run ovmf-http boot "${QEMU[@]}" -uuid b007d000-0000-4000-8000-000000000003 \
    -drive if=pflash,format=raw,readonly=on,file="$OVMF_CODE" \
    -drive if=pflash,format=raw,file="$WORK/vars-http.fd" \
    -fw_cfg name=opt/org.tianocore/IPv4PXESupport,string=n \
    -fw_cfg name=opt/org.tianocore/IPv6PXESupport,string=n \
    -device virtio-net-pci,netdev=n0,mac=52:54:00:b0:07:03,romfile= -- \
    ovmf-http-discover=discover:HTTPClient ovmf-http-request=request:HTTPClient

# udhcpc as bootd's e2e test drives it: plain, as a BIOS PXE ROM, as iPXE.
UDHCPC=(timeout 30 ip netns exec "$CNS" busybox udhcpc -i veth-c -f -q -n -t 3 -T 1 -s /bin/true)
run udhcpc-plain answer "${UDHCPC[@]}" -- \
    udhcpc-plain-discover=discover:udhcp udhcpc-plain-request=request:udhcp
run udhcpc-pxe answer "${UDHCPC[@]}" -V PXEClient:Arch:00000 -x 93:0000 -- \
    udhcpc-pxe-discover=discover:PXEClient udhcpc-pxe-request=request:PXEClient
run udhcpc-ipxe answer "${UDHCPC[@]}" -x 77:69505845 -- \
    udhcpc-ipxe-discover=discover:udhcp:ipxe udhcpc-ipxe-request=request:udhcp:ipxe

# Fixtures: a header naming the source, then the datagram as hex, 32 bytes a line.
source_of() {
    case $1 in
    ipxe-bios-*) echo "iPXE (ipxe-qemu $IPXE_V, pxe-e1000.rom) under SeaBIOS, qemu $QEMU_V e1000" ;;
    ipxe-efi-*) echo "iPXE EFI (ipxe-qemu $IPXE_V, efi-e1000.rom) under OVMF $OVMF_V, qemu $QEMU_V e1000" ;;
    ovmf-pxe-*) echo "OVMF $OVMF_V PXE (IPv4) on virtio-net, qemu $QEMU_V" ;;
    ovmf-http-*) echo "OVMF $OVMF_V HTTP boot (IPv4) on virtio-net, qemu $QEMU_V" ;;
    udhcpc-plain-*) echo "busybox $BUSYBOX_V udhcpc, no extra flags" ;;
    udhcpc-pxe-*) echo "busybox $BUSYBOX_V udhcpc -V PXEClient:Arch:00000 -x 93:0000" ;;
    udhcpc-ipxe-*) echo "busybox $BUSYBOX_V udhcpc -x 77:69505845" ;;
    esac
}
mkdir -p "$OUT"
n=0
for f in "$WORK"/*/*.hex; do
    [[ -e $f ]] || continue
    name=$(basename "$f")
    {
        echo "# source: $(source_of "$name"), captured with scripts/capture-dhcp-fixtures.sh"
        fold -w 64 "$f"
    } >"$OUT/$name"
    n=$((n + 1))
done
log "$n fixture(s) in $OUT"
