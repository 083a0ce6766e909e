#!/usr/bin/env bash
# Builds a Debian golden image that boots diskless through bootd, as a raw disk file.
# Run by `bootd image build` (which imports the result); usable by hand as root:
#   build.sh --out FILE --suite SUITE --bytes N --http-port N [--mirror URL]
#            [--cache DIR] [--package PKG]...
# FILES_DIR (next to this script, `files/`) holds what is installed into the image.
# Progress goes to stderr as "step: ..." lines; nothing else is printed on stdout.
# The design (partition layout, GRUB for BIOS and UEFI, iBFT login, NoCloud seed, identity
# scrubbing) is explained in bootd/src/imagebuild/README.md.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
FILES=$HERE/files
step() { echo "step: $*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

OUT= SUITE=bookworm BYTES= PORT=8080 MIRROR= CACHE=
PACKAGES=()
while [[ $# -gt 0 ]]; do
    case $1 in
    --out) OUT=$2; shift 2 ;;
    --suite) SUITE=$2; shift 2 ;;
    --bytes) BYTES=$2; shift 2 ;;
    --http-port) PORT=$2; shift 2 ;;
    --mirror) MIRROR=$2; shift 2 ;;
    --cache) CACHE=$2; shift 2 ;;
    --package) PACKAGES+=("$2"); shift 2 ;;
    *) die "unknown argument $1" ;;
    esac
done
[[ -n $OUT && -n $BYTES ]] || die "usage: build.sh --out FILE --bytes N [...]"
[[ $(id -u) -eq 0 ]] || die "must run as root (mmdebstrap --mode=root, chroot)"
[[ $PORT =~ ^[0-9]+$ && $PORT -ge 1 && $PORT -le 65535 ]] || die "bad --http-port $PORT"
[[ $SUITE =~ ^[a-z]+$ ]] || die "bad --suite $SUITE"
for p in "${PACKAGES[@]}"; do
    [[ $p =~ ^[a-z0-9][a-z0-9+.-]*$ ]] || die "bad package name $p"
done
for tool in mmdebstrap mkfs.ext4 mkfs.fat mcopy mmd sfdisk truncate sha256sum chroot dd; do
    command -v "$tool" >/dev/null || die "missing tool: $tool (scripts/install-test-deps.sh)"
done

MIB=1048576
ESP_START_MIB=1
ESP_MIB=64
ROOT_START_MIB=$((ESP_START_MIB + ESP_MIB))
DISK_MIB=$((BYTES / MIB))
[[ $DISK_MIB -ge 1024 ]] || die "image size must be at least 1 GiB"
ROOT_MIB=$((DISK_MIB - ROOT_START_MIB))

# The archive the image comes from: --mirror, else the host's own sources when building the
# host's release (the only archive this machine is known to reach), else mmdebstrap's default.
SOURCES=()
host_codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
if [[ -n $MIRROR ]]; then
    SOURCES=("$MIRROR")
elif [[ $SUITE == "$host_codename" ]]; then
    for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
        if [[ -s $f ]] && grep -qv '^\s*\(#\|$\)' "$f"; then SOURCES=("$f"); break; fi
    done
fi

INCLUDE=(linux-image-amd64 initramfs-tools busybox open-iscsi systemd-sysv udev dbus kmod
    cloud-init openssh-server sudo grub-pc-bin grub-efi-amd64-bin iproute2 netbase
    ca-certificates "${PACKAGES[@]}")
include=$(IFS=,; echo "${INCLUDE[*]}")

# Cache key: everything that shapes the result except the archive's moving contents.
KEY=$({
    cat "$0"
    find "$FILES" -type f | sort | xargs cat
    echo "$SUITE $BYTES $PORT $include"
    echo "${SOURCES[*]:-default}"
    for s in "${SOURCES[@]}"; do [[ -f $s ]] && cat "$s"; done
    mmdebstrap --version
} | sha256sum | cut -c1-16)
if [[ -n $CACHE && -f $CACHE/image-$KEY.raw ]]; then
    step "cached: $CACHE/image-$KEY.raw"
    cp --sparse=always "$CACHE/image-$KEY.raw" "$OUT"
    exit 0
fi

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/bootd-imagebuild.XXXXXX")
cleanup() {
    # mmdebstrap unmounts its own mounts; make sure nothing is left before deleting.
    for m in proc sys dev/pts dev; do mountpoint -q "$WORK/root/$m" 2>/dev/null && umount -l "$WORK/root/$m"; done
    rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT
ROOT=$WORK/root
UUID=$(cat /proc/sys/kernel/random/uuid)

step "mmdebstrap $SUITE (${#INCLUDE[@]} packages and their dependencies)"
# essential-hook: before the kernel's initramfs is made, so its one generation logs in
# through the iBFT (ISCSI_AUTO) without a second update-initramfs.
mmdebstrap --mode=root --variant=minbase --format=directory \
    --include="$include" \
    --essential-hook="mkdir -p \"\$1/etc/iscsi\" && cp '$FILES/iscsi.initramfs' \"\$1/etc/iscsi/iscsi.initramfs\"" \
    --customize-hook="chroot \"\$1\" dpkg-query -W -f='\${Package}=\${Version}\n' >'$WORK/packages.txt'" \
    "$SUITE" "$ROOT" "${SOURCES[@]}" >&2

step "configuring the image"
KVER=$(basename "$(ls -d "$ROOT"/lib/modules/* | sort -V | tail -n1)")
[[ -f $ROOT/boot/vmlinuz-$KVER && -f $ROOT/boot/initrd.img-$KVER ]] || die "no kernel/initrd for $KVER"
# The initramfs must carry the iBFT login switch; a silent miss would only show at boot.
chroot "$ROOT" lsinitramfs "/boot/initrd.img-$KVER" | grep -x 'etc/iscsi.initramfs' >/dev/null ||
    die "initrd.img-$KVER has no etc/iscsi.initramfs (the iBFT login would not run)"
[[ -L $ROOT/vmlinuz ]] || ln -sf "boot/vmlinuz-$KVER" "$ROOT/vmlinuz"
[[ -L $ROOT/initrd.img ]] || ln -sf "boot/initrd.img-$KVER" "$ROOT/initrd.img"

install -d -m 755 "$ROOT/usr/lib/bootd" "$ROOT/etc/bootd" "$ROOT/etc/systemd/system/ssh.service.d"
install -m 755 "$FILES/iscsi-root" "$FILES/nocloud-seed" "$ROOT/usr/lib/bootd/"
install -m 644 "$FILES/bootd-iscsi-root.service" "$FILES/bootd-nocloud.service" "$ROOT/etc/systemd/system/"
install -m 644 "$FILES/ssh-hostkeys.conf" "$ROOT/etc/systemd/system/ssh.service.d/bootd-hostkeys.conf"
install -m 644 "$FILES/cloud.cfg" "$ROOT/etc/cloud/cloud.cfg.d/90_bootd.cfg"
echo "HTTP_PORT=$PORT" >"$ROOT/etc/bootd/nocloud.conf"
systemctl --root="$ROOT" enable bootd-iscsi-root.service bootd-nocloud.service >&2
# The empty machine-id makes every node's first boot a systemd "first boot"; its wizard
# would wait on the console for a locale, time zone and root password. cloud-init
# configures the node instead.
systemctl --root="$ROOT" mask systemd-firstboot.service >&2
# open-iscsi's defaults drop a root disk after 120 s without the target and ping it with
# NOP-outs; its README asks for a very long replacement_timeout and no NOP-outs for root.
sed -i -e 's/^node.session.timeo.replacement_timeout = .*/node.session.timeo.replacement_timeout = 86400/' \
    -e 's/^node.conn\[0\].timeo.noop_out_interval = .*/node.conn[0].timeo.noop_out_interval = 0/' \
    -e 's/^node.conn\[0\].timeo.noop_out_timeout = .*/node.conn[0].timeo.noop_out_timeout = 0/' \
    "$ROOT/etc/iscsi/iscsid.conf"
grep -q '^node.session.timeo.replacement_timeout = 86400$' "$ROOT/etc/iscsi/iscsid.conf" ||
    die "iscsid.conf: replacement_timeout not set"
printf 'UUID=%s / ext4 errors=remount-ro 0 1\n' "$UUID" >"$ROOT/etc/fstab"

step "GRUB for BIOS and UEFI"
install -d "$ROOT/boot/grub"
sed "s/@UUID@/$UUID/g" "$FILES/grub.cfg" >"$ROOT/boot/grub/grub.cfg"
sed "s/@UUID@/$UUID/g" "$FILES/grub-early.cfg" >"$ROOT/tmp/early.cfg"
cp -r "$ROOT/usr/lib/grub/i386-pc" "$ROOT/usr/lib/grub/x86_64-efi" "$ROOT/boot/grub/"
# The modules that find and read the root file system are built in; everything else
# (normal, linux, serial) loads from $prefix, copied above from the same package.
chroot "$ROOT" grub-mkimage -O i386-pc -o /tmp/core.img -c /tmp/early.cfg -p /boot/grub \
    biosdisk part_msdos ext2 search search_fs_uuid
chroot "$ROOT" grub-mkimage -O x86_64-efi -o /tmp/bootx64.efi -c /tmp/early.cfg -p /boot/grub \
    part_msdos part_gpt ext2 search search_fs_uuid
cp "$ROOT/tmp/core.img" "$ROOT/tmp/bootx64.efi" "$ROOT/usr/lib/grub/i386-pc/boot.img" "$WORK/"
CORE_SECTORS=$(( ($(stat -c %s "$WORK/core.img") + 511) / 512 ))
[[ $CORE_SECTORS -lt $((ESP_START_MIB * 2048 - 1)) ]] || die "core.img ($CORE_SECTORS sectors) does not fit before partition 1"
rm -f "$ROOT/tmp/core.img" "$ROOT/tmp/bootx64.efi" "$ROOT/tmp/early.cfg"

step "scrubbing identity"
bash "$FILES/scrub.sh" "$ROOT"

step "file systems"
MKE2FS_CONFIG=$ROOT/etc/mke2fs.conf
[[ -f $MKE2FS_CONFIG ]] || MKE2FS_CONFIG=/etc/mke2fs.conf
truncate -s $((ROOT_MIB * MIB)) "$WORK/root.img"
MKE2FS_CONFIG=$MKE2FS_CONFIG mkfs.ext4 -q -F -L bootd-root -U "$UUID" -d "$ROOT" "$WORK/root.img"
mkfs.fat -F 16 -n BOOTD-ESP -h $((ESP_START_MIB * 2048)) -C "$WORK/esp.img" $((ESP_MIB * 1024)) >&2
mmd -i "$WORK/esp.img" ::/EFI ::/EFI/BOOT
mcopy -i "$WORK/esp.img" "$WORK/bootx64.efi" ::/EFI/BOOT/BOOTX64.EFI

step "disk"
DISK=$WORK/disk.raw
truncate -s $((DISK_MIB * MIB)) "$DISK"
sfdisk --quiet "$DISK" <<SFDISK
label: dos
start=$((ESP_START_MIB * 2048)), size=$((ESP_MIB * 2048)), type=ef
start=$((ROOT_START_MIB * 2048)), type=83, bootable
SFDISK
# GRUB's boot.img in the MBR's code area (the partition table after byte 440 stays);
# core.img right after it: boot.img's default kernel sector is 1 and core.img's own
# blocklist starts at sector 2, so neither needs patching.
dd if="$WORK/boot.img" of="$DISK" bs=440 count=1 conv=notrunc status=none
dd if="$WORK/core.img" of="$DISK" bs=512 seek=1 conv=notrunc status=none
dd if="$WORK/esp.img" of="$DISK" bs=$MIB seek=$ESP_START_MIB conv=notrunc,sparse status=none
dd if="$WORK/root.img" of="$DISK" bs=$MIB seek=$ROOT_START_MIB conv=notrunc,sparse status=none

if [[ -n $CACHE ]]; then
    mkdir -p "$CACHE"
    # Older builds are dead weight once the inputs changed.
    rm -f "$CACHE"/image-*.raw "$CACHE"/image-*.packages
    cp --sparse=always "$DISK" "$CACHE/.image-$KEY.tmp" && mv "$CACHE/.image-$KEY.tmp" "$CACHE/image-$KEY.raw"
    cp "$WORK/packages.txt" "$CACHE/image-$KEY.packages"
fi
mv "$DISK" "$OUT"
step "built: kernel $KVER, $(wc -l <"$WORK/packages.txt") packages, $(du -h "$OUT" | cut -f1) allocated"
