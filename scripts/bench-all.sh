#!/usr/bin/env bash
# Every component of bootd against its peer, in one run, on this machine, and the ratios:
#   DHCP   bootd --dhcp full vs dnsmasq --no-ping: leases/s, 5000 clients, 64 in flight
#   TFTP   bootd vs tftpd-hpa: 200 concurrent fetches of iPXE's ipxe.efi, every copy checked
#   iSCSI  bootd export vs tgt: iscsi-perf QD32, 4 KiB random and 128 KiB sequential reads
#   overlay  a node's qcow2 overlay vs the raw golden image through bootd, reads and
#            first-touch writes
# The README's performance table comes from this script's output. Machines here are shared
# and noisy: the ratios (same run, same machine) are what count.
# Usage: sudo scripts/bench-all.sh [--json]
# Env: passed through to the scripts (BENCH_SECONDS, BENCH_ROUNDS, BENCH_SIZE_MIB, ...).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
JSON=0
[[ ${1:-} == --json ]] && JSON=1
log() { echo "bench-all: $*" >&2; }
die() { log "$*"; exit 1; }
[[ $(id -u) -eq 0 ]] || die "must run as root (namespaces, tgtd, tftpd-hpa)"

WORK=$(mktemp -d /tmp/bench-all.XXXXXX)
trap 'rm -rf "$WORK"' EXIT INT TERM

log "building bootd (release)"
(cd "$ROOT" && cargo build --release -p bootd) >&2 || die "cargo build --release -p bootd failed"

EFI=/usr/lib/ipxe/ipxe.efi
[[ -e $EFI ]] || die "missing $EFI: apt-get install ipxe"

run() { # name, command...: output to WORK/name.out, progress to stderr
    local name=$1; shift
    log "running $name: $*"
    local t0=$SECONDS
    "$@" >"$WORK/$name.out" 2> >(sed "s/^/  /" >&2) || die "$name failed; its output: $(cat "$WORK/$name.out")"
    log "$name done in $((SECONDS - t0)) s"
}
run dhcp bash "$ROOT/scripts/bench-dhcp.sh"
run tftp env BENCH_FILE="$EFI" bash "$ROOT/scripts/bench-tftp.sh" 200
run iscsi bash "$ROOT/scripts/bench-iscsi.sh" --json
run overlay bash "$ROOT/scripts/bench-overlay.sh" --json

kv() { sed -n "s/.*\b$2=\([0-9.]*\).*/\1/p" "$WORK/$1.out" | head -1; }
D_B=$(kv dhcp bootd_leases_per_s); D_D=$(kv dhcp dnsmasq_leases_per_s); D_R=$(kv dhcp ratio)
T_B=$(awk '/^bootd /{print $2}' "$WORK/tftp.out"); T_H=$(awk '/^tftpd-hpa /{print $2}' "$WORK/tftp.out")
T_R=$(awk '/^ratio /{print $2}' "$WORK/tftp.out" | tr -d x)
I=$(grep '^{' "$WORK/iscsi.out" | tail -1); O=$(grep '^{' "$WORK/overlay.out" | tail -1)
[[ -n $D_B && -n $T_B && -n $I && -n $O ]] || die "a script printed no figures; outputs in $WORK"

# One JSON document, and the table from it.
python3 - "$JSON" "$D_B" "$D_D" "$D_R" "$T_B" "$T_H" "$T_R" "$I" "$O" <<'PY'
import json, sys
as_json, d_b, d_d, d_r, t_b, t_h, t_r, i, o = sys.argv[1:]
i, o = json.loads(i), json.loads(o)
w = {x["workload"]: x for x in i["workloads"]}
rows = [
    ("DHCP leases/s (5000 clients, 64 in flight)", "dnsmasq", float(d_b), float(d_d), float(d_r)),
    ("TFTP ipxe.efi x200 at once, seconds (lower wins)", "tftpd-hpa", float(t_b), float(t_h), float(t_r)),
]
for key, label in (("4k-randread", "iSCSI 4 KiB random read IOPS (QD32)"), ("128k-seqread", "iSCSI 128 KiB sequential read IOPS (QD32)")):
    rows.append((label, "tgt", w[key]["bootd_iops"], w[key]["tgt_iops"], w[key]["ratio"]))
for key, label in (("read_4k", "overlay/raw 4 KiB random read IOPS"), ("read_128k", "overlay/raw 128 KiB sequential read IOPS"), ("first_touch_write", "overlay/raw 4 KiB first-touch write IOPS")):
    rows.append((label, "raw", o[key]["overlay"], o[key]["raw"], o[key]["ratio"]))
if as_json == "1":
    print(json.dumps({"rows": [dict(zip(("workload", "peer", "bootd", "peer_value", "ratio"), r)) for r in rows]}))
else:
    print(f"{'workload':<50} {'peer':<10} {'bootd':>12} {'peer':>12} {'ratio':>7}")
    for name, peer, b, p, r in rows:
        print(f"{name:<50} {peer:<10} {b:>12,.2f} {p:>12,.2f} {r if r is None else format(r, '.2f') + 'x':>7}")
PY
