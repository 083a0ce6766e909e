#!/usr/bin/env bash
# Builds the golden test image: a raw disk that boots Linux from a BIOS firmware (syslinux)
# or a UEFI one (systemd-boot), both from one FAT partition. Its init attaches the disk again
# through the iBFT that iPXE wrote and leaves a per-node marker on it (tests/guest/golden-init).
# Made from Debian packages only, and cached.
# Usage: tests/guest/build-golden.sh OUT_DIR [GUEST_DIR]
#   GUEST_DIR: build.sh's cache (default OUT_DIR/guest); share it with the other guest tests.
# Prints one line on stdout: "golden=PATH". Everything else goes to stderr.
#
# Layout (96 MiB, MBR):
#   partition 1: FAT16, bootable: vmlinuz, initrd.img; for BIOS syslinux (MBR code, ldlinux.sys,
#                syslinux.cfg), for UEFI systemd-boot as EFI/BOOT/BOOTX64.EFI (the removable-media
#                path iPXE's EFI sanboot loads) with loader/loader.conf and loader/entries/
#   partition 2: type 0xda (raw data), all zeros; sector 0 holds the node's marker record
# The kernel and the busybox initramfs (with the iBFT driver, iscsi_ibft) come from
# tests/guest/build.sh; this script replaces the init with tests/guest/golden-init.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:?usage: build-golden.sh OUT_DIR [GUEST_DIR]}
GUEST_DIR=${2:-$OUT/guest}
# Absolute: the golden= path printed must hold from any directory.
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
log() { echo "golden-build: $*" >&2; }
die() { log "$*"; exit 1; }

for tool in dpkg-query cpio sha256sum flock sfdisk mkfs.fat mcopy mmd syslinux truncate; do
    command -v "$tool" >/dev/null || die "missing tool: $tool"
done
MBR=/usr/lib/syslinux/mbr/mbr.bin
[[ -f $MBR ]] || die "missing $MBR (apt-get install syslinux-common)"
SDBOOT=/usr/lib/systemd/boot/efi/systemd-bootx64.efi
[[ -f $SDBOOT ]] || die "missing $SDBOOT (apt-get install systemd-boot-efi)"

# The kernel and base initramfs (cached by build.sh itself).
BASE=$(bash "$HERE/build.sh" "$GUEST_DIR") || die "tests/guest/build.sh failed"
KERNEL=$(sed -n 's/^kernel=//p' <<<"$BASE")
INITRD=$(sed -n 's/^initrd=//p' <<<"$BASE")
[[ -f $KERNEL && -f $INITRD ]] || die "build.sh printed no kernel/initrd: $BASE"
BASEDIR=$(dirname "$KERNEL")
[[ -f $BASEDIR/VERSIONS ]] || die "no $BASEDIR/VERSIONS"

HOSTVERS=$(dpkg-query -W -f='${Package}=${Version};' syslinux syslinux-common dosfstools mtools \
    fdisk systemd-boot-efi)
SRCHASH=$(cat "$HERE/build-golden.sh" "$HERE/golden-init" | sha256sum | cut -c1-16)
# The base directory's name already carries build.sh's own cache key.
KEY=$(printf '%s' "$(basename "$BASEDIR");${HOSTVERS};${SRCHASH}" | sha256sum | cut -c1-16)
DEST=$OUT/golden-$KEY

exec 9>"$OUT/.golden.lock"
flock -w 600 9 || die "timed out waiting for $OUT/.golden.lock"

if [[ -f $DEST/golden.img ]]; then
    log "cached: $DEST"
    echo "golden=$DEST/golden.img"
    exit 0
fi

WORK=$(mktemp -d "$OUT/.golden-work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# --- initramfs: build.sh's (it carries the iBFT driver), with the golden init ---
ROOT=$WORK/root
mkdir -p "$ROOT"
(cd "$ROOT" && cpio -id --quiet) <"$INITRD"
# iscsi_ibft exposes the table under /sys/firmware/ibft (the table search itself is built in).
[[ -n $(find "$ROOT/lib/modules" -name 'iscsi_ibft.ko*' -print -quit) ]] ||
    die "$INITRD has no iscsi_ibft module (tests/guest/build.sh's module list)"
cp "$HERE/golden-init" "$ROOT/init"
chmod 755 "$ROOT/init"
(cd "$ROOT" && find . -print0 | sort -z | cpio --null -o -H newc --quiet) >"$WORK/initrd.img"

# --- partition 1: FAT16 with both boot loaders ---
cat >"$WORK/syslinux.cfg" <<'EOF'
SERIAL 0 115200
PROMPT 0
TIMEOUT 0
DEFAULT golden
LABEL golden
  LINUX /vmlinuz
  INITRD /initrd.img
  APPEND console=ttyS0,115200 panic=-1 loglevel=4
EOF
# The same kernel and command line for systemd-boot (a Boot Loader Specification entry).
cat >"$WORK/loader.conf" <<'EOF'
default golden.conf
timeout 0
editor no
EOF
cat >"$WORK/golden.conf" <<'EOF'
title bootd golden test image
linux /vmlinuz
initrd /initrd.img
options console=ttyS0,115200 panic=-1 loglevel=4
EOF
MIB=1048576
P1_START_MIB=1
P1_MIB=72
DISK_MIB=96
P2_START_MIB=$((P1_START_MIB + P1_MIB))
# Hidden sectors = the partition's first LBA: syslinux's boot sector finds itself by it.
mkfs.fat -F 16 -n GOLDEN -i 0b007d01 -h $((P1_START_MIB * 2048)) \
    -C "$WORK/part1.img" $((P1_MIB * 1024)) >&2
syslinux --install "$WORK/part1.img"
mcopy -i "$WORK/part1.img" "$WORK/syslinux.cfg" ::/syslinux.cfg
mcopy -i "$WORK/part1.img" "$KERNEL" ::/vmlinuz
mcopy -i "$WORK/part1.img" "$WORK/initrd.img" ::/initrd.img
mmd -i "$WORK/part1.img" ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries
mcopy -i "$WORK/part1.img" "$SDBOOT" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$WORK/part1.img" "$WORK/loader.conf" ::/loader/loader.conf
mcopy -i "$WORK/part1.img" "$WORK/golden.conf" ::/loader/entries/golden.conf

# --- the disk: MBR boot code, partition table, partition 1 ---
DISK=$WORK/golden.img
truncate -s $((DISK_MIB * MIB)) "$DISK"
sfdisk --quiet "$DISK" <<EOF
label: dos
label-id: 0x0b007d00
start=$((P1_START_MIB * 2048)), size=$((P1_MIB * 2048)), type=e, bootable
start=$((P2_START_MIB * 2048)), type=da
EOF
# The first 440 bytes only: the partition table after them stays.
dd if="$MBR" of="$DISK" bs=440 count=1 conv=notrunc status=none
dd if="$WORK/part1.img" of="$DISK" bs=$MIB seek=$P1_START_MIB conv=notrunc,sparse status=none

mkdir -p "$WORK/out"
mv "$DISK" "$WORK/out/golden.img"
{
    cat "$BASEDIR/VERSIONS"
    echo "$HOSTVERS"
} >"$WORK/out/VERSIONS"
rm -rf "$DEST"
mv "$WORK/out" "$DEST"
# Older builds (other package versions or sources) are dead weight now, and so are the
# iBFT module caches of earlier versions of this script.
for old in "$OUT"/golden-* "$OUT"/ibft-*; do
    [[ $old == "$DEST" ]] || rm -rf "$old"
done
log "built $DEST/golden.img ($(du -h --apparent-size "$DEST/golden.img" | cut -f1), initramfs $(du -h "$WORK/initrd.img" | cut -f1))"
echo "golden=$DEST/golden.img"
