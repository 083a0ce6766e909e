#!/usr/bin/env bash
# Builds a Debian golden image that boots diskless through bootd, as a raw disk file.
# Run by `bootd image build` (which imports the result); usable by hand as root:
#   build.sh --out FILE --suite SUITE --bytes N --http-port N [--mirror URL]
#            [--rootfs TAR] [--cache DIR] [--package PKG]...
# --rootfs starts from a root file system tarball (docker/podman export of a Debian or
# Ubuntu container) instead of mmdebstrap, and installs what booting needs with its apt.
# FILES_DIR (next to this script, `files/`) holds what is installed into the image.
# Progress goes to stderr as "step: ..." lines; nothing else is printed on stdout.
# The design (partition layout, GRUB for BIOS and UEFI, iBFT login, NoCloud seed, identity
# scrubbing) is explained in bootd/src/imagebuild/README.md.
set -euo pipefail
# bootd runs with umask 077 (its data directory holds secrets); the image's files need
# the usual modes: 0600 /etc/fstab, /etc/hosts, grub.cfg or a resolv.conf that apt's
# unprivileged _apt user cannot read (seen: "Temporary failure resolving" in --rootfs).
umask 022

HERE=$(cd "$(dirname "$0")" && pwd)
FILES=$HERE/files
step() { echo "step: $*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

OUT= SUITE=bookworm BYTES= PORT=8080 MIRROR= CACHE= ROOTFS=
PACKAGES=()
while [[ $# -gt 0 ]]; do
    case $1 in
    --out) OUT=$2; shift 2 ;;
    --suite) SUITE=$2; shift 2 ;;
    --bytes) BYTES=$2; shift 2 ;;
    --http-port) PORT=$2; shift 2 ;;
    --mirror) MIRROR=$2; shift 2 ;;
    --cache) CACHE=$2; shift 2 ;;
    --rootfs) ROOTFS=$2; shift 2 ;;
    --package) PACKAGES+=("$2"); shift 2 ;;
    *) die "unknown argument $1" ;;
    esac
done
[[ -n $OUT && -n $BYTES ]] || die "usage: build.sh --out FILE --bytes N [...]"
[[ $(id -u) -eq 0 ]] || die "must run as root (mmdebstrap --mode=root, chroot, mount)"
[[ $PORT =~ ^[0-9]+$ && $PORT -ge 1 && $PORT -le 65535 ]] || die "bad --http-port $PORT"
[[ $SUITE =~ ^[a-z]+$ ]] || die "bad --suite $SUITE"
for p in "${PACKAGES[@]}"; do
    [[ $p =~ ^[a-z0-9][a-z0-9+.-]*$ ]] || die "bad package name $p"
done
[[ -z $ROOTFS || -f $ROOTFS ]] || die "--rootfs $ROOTFS: no such file"
[[ -z $ROOTFS || -z $MIRROR ]] || die "--rootfs uses the tarball's own apt sources; --mirror does not apply"
bootstrap=mmdebstrap
[[ -z $ROOTFS ]] || bootstrap=tar
for tool in $bootstrap mkfs.ext4 mkfs.fat mcopy mmd sfdisk truncate sha256sum chroot dd mount; do
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
elif [[ -z $ROOTFS && $SUITE == "$host_codename" ]]; then
    for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
        if [[ -s $f ]] && grep -qv '^\s*\(#\|$\)' "$f"; then SOURCES=("$f"); break; fi
    done
fi

INCLUDE=(linux-image-amd64 initramfs-tools busybox open-iscsi systemd-sysv udev dbus kmod
    cloud-init openssh-server sudo grub-pc-bin grub-efi-amd64-bin iproute2 netbase e2fsprogs
    ca-certificates "${PACKAGES[@]}")
# Kernels are installed last, in an apt run of their own: with everything in one run the
# initramfs is generated twice (the kernel's postinst, then initramfs-tools' trigger that
# udev, busybox, kmod and open-iscsi activated); with the kernel after them, once.
KERNELS=() BASE=()
for p in "${INCLUDE[@]}"; do
    case $p in linux-image-*) KERNELS+=("$p") ;; *) BASE+=("$p") ;; esac
done
include=$(IFS=,; echo "${INCLUDE[*]}")
base=$(IFS=,; echo "${BASE[*]}")

# Cache key: everything that shapes the result except the archive's moving contents.
KEY=$({
    cat "$0"
    find "$FILES" -type f | sort | xargs cat
    echo "$SUITE $BYTES $PORT $include"
    if [[ -n $ROOTFS ]]; then
        echo rootfs
        sha256sum <"$ROOTFS"
    else
        echo "${SOURCES[*]:-default}"
        for s in "${SOURCES[@]}"; do [[ -f $s ]] && cat "$s"; done
        mmdebstrap --version
    fi
} | sha256sum | cut -c1-16)
if [[ -n $CACHE && -f $CACHE/image-$KEY.raw ]]; then
    step "cached: $CACHE/image-$KEY.raw"
    cp --sparse=always "$CACHE/image-$KEY.raw" "$OUT"
    exit 0
fi

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/bootd-imagebuild.XXXXXX")
cleanup() {
    # mmdebstrap unmounts its own mounts; make sure nothing is left before deleting.
    local m
    for m in dev/pts dev sys proc; do
        if mountpoint -q "$WORK/root/$m" 2>/dev/null; then umount -l "$WORK/root/$m"; fi
    done
    rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT
ROOT=$WORK/root
UUID=$(cat /proc/sys/kernel/random/uuid)

CHROOT_ENV=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive)

# The tarball's apt needs /proc, /sys and /dev like a running system; always unmounted
# (cleanup too), and before mkfs.ext4 -d copies the tree.
mount_chroot() {
    local d
    for d in proc sys dev; do
        [[ -d $ROOT/$d && ! -L $ROOT/$d ]] || { rm -f "$ROOT/$d"; mkdir -p "$ROOT/$d"; }
    done
    mount -t proc proc "$ROOT/proc"
    mount -t sysfs sysfs "$ROOT/sys"
    mount --bind /dev "$ROOT/dev"
    mount --bind /dev/pts "$ROOT/dev/pts"
}
umount_chroot() {
    local m
    for m in dev/pts dev sys proc; do
        if mountpoint -q "$ROOT/$m"; then umount "$ROOT/$m"; fi
    done
}

# A container export: a root file system with dpkg and apt but no kernel, init, bootloader
# or fstab, and container tuning that a machine must not keep.
from_rootfs() {
    step "unpacking $ROOTFS"
    mkdir -p "$ROOT"
    # GNU tar strips leading / and refuses members with .. ; compression is detected.
    # As root it keeps owners, modes and (with --xattrs) file capabilities.
    tar --extract --file="$ROOTFS" --directory="$ROOT" --numeric-owner --preserve-permissions \
        --xattrs --xattrs-include='*' >&2 ||
        die "--rootfs $ROOTFS: cannot unpack (a tar archive, optionally compressed, is needed)"
    [[ -d $ROOT/etc && -d $ROOT/usr ]] && chroot "$ROOT" /bin/sh -c true 2>/dev/null ||
        die "--rootfs $ROOTFS is not a root file system (no etc/, usr/ and a working /bin/sh at its top; pass a whole exported container, e.g. podman export CONTAINER >rootfs.tar)"
    chroot "$ROOT" /bin/sh -c 'command -v apt-get && command -v dpkg' >/dev/null 2>&1 &&
        [[ -f $ROOT/var/lib/dpkg/status ]] ||
        die "--rootfs $ROOTFS has no apt-get/dpkg: it needs a Debian or Ubuntu root file system with apt (e.g. an export of debian:$SUITE), whose apt installs ${INCLUDE[*]}"

    # Container tuning a booting machine must not keep: /.dockerenv (and podman's
    # /run/.containerenv) make systemd believe it runs in a container and skip units;
    # policy-rc.d denies every service (re)start on the node; docker's apt/dpkg snippets
    # (unsafe I/O, caches deleted after every install) are for image layers.
    rm -f "$ROOT/.dockerenv" "$ROOT/run/.containerenv" "$ROOT/usr/sbin/policy-rc.d" \
        "$ROOT"/etc/apt/apt.conf.d/docker-* "$ROOT/etc/dpkg/dpkg.cfg.d/docker-apt-speedup"
    # During the build nothing may start: this is a chroot on the build host.
    printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
    chmod 755 "$ROOT/usr/sbin/policy-rc.d"
    # The host's resolver, for apt only: scrub.sh removes it (node DNS comes at boot).
    rm -f "$ROOT/etc/resolv.conf"
    cat /etc/resolv.conf >"$ROOT/etc/resolv.conf"
    bash "$FILES/prepare.sh" "$ROOT"
    local had_kernel=
    compgen -G "$ROOT/boot/vmlinuz-*" >/dev/null && had_kernel=1

    mount_chroot
    step "apt-get install in the tarball (${#INCLUDE[@]} packages and their dependencies)"
    chroot "$ROOT" "${CHROOT_ENV[@]}" apt-get -q --error-on=any update >&2
    local set
    for set in "${BASE[*]}" "${KERNELS[*]}"; do
        [[ -n $set ]] || continue
        # shellcheck disable=SC2086 # package names, checked above
        chroot "$ROOT" "${CHROOT_ENV[@]}" apt-get -q -y --no-install-recommends \
            -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
            install $set >&2
    done
    # A kernel that came with the tarball made its initramfs without the iBFT login.
    [[ -z $had_kernel ]] || chroot "$ROOT" "${CHROOT_ENV[@]}" update-initramfs -u -k all >&2
    chroot "$ROOT" "${CHROOT_ENV[@]}" apt-get clean >&2
    chroot "$ROOT" dpkg-query -W -f='${Package}=${Version}\n' >"$WORK/packages.txt"
    umount_chroot
    rm -f "$ROOT/usr/sbin/policy-rc.d"
}

if [[ -n $ROOTFS ]]; then
    from_rootfs
else
    step "mmdebstrap $SUITE (${#INCLUDE[@]} packages and their dependencies)"
    # essential-hook: before the kernel's initramfs is made, so its one generation logs in
    # through the iBFT (ISCSI_AUTO) without a second update-initramfs.
    mmdebstrap --mode=root --variant=minbase --format=directory \
        --include="$base" \
        --essential-hook="bash '$FILES/prepare.sh' \"\$1\"" \
        --customize-hook="chroot \"\$1\" env DEBIAN_FRONTEND=noninteractive apt-get -q -y --no-install-recommends install ${KERNELS[*]} >&2" \
        --customize-hook="chroot \"\$1\" dpkg-query -W -f='\${Package}=\${Version}\n' >'$WORK/packages.txt'" \
        "$SUITE" "$ROOT" "${SOURCES[@]}" >&2
fi

step "configuring the image"
KVER=$(basename "$(ls -d "$ROOT"/lib/modules/* | sort -V | tail -n1)")
[[ -f $ROOT/boot/vmlinuz-$KVER && -f $ROOT/boot/initrd.img-$KVER ]] || die "no kernel/initrd for $KVER"
# The initramfs must carry the iBFT login switch (a silent miss would only show at boot)
# and no initiator name of the build's (it would be every node's).
t0=$SECONDS
chroot "$ROOT" unmkinitramfs "/boot/initrd.img-$KVER" /tmp/bootd-initrd
INITRD=$ROOT/tmp/bootd-initrd
[[ -n $(find "$INITRD" -path '*/etc/iscsi.initramfs' -print -quit) ]] ||
    die "initrd.img-$KVER has no etc/iscsi.initramfs (the iBFT login would not run)"
[[ -n $(find "$INITRD" -path '*/etc/initiatorname.iscsi' -print -quit) ]] ||
    die "initrd.img-$KVER has no etc/initiatorname.iscsi (open-iscsi's hook did not run)"
if grep -rlsF -e 'InitiatorName=' -e 'iqn.1993-08.org.debian' "$INITRD"/etc "$INITRD"/*/etc; then
    die "initrd.img-$KVER holds a build-time initiator name (files above)"
fi
rm -rf "$INITRD"
step "initramfs checked in $((SECONDS - t0)) s (iBFT login, no initiator name)"
[[ -L $ROOT/vmlinuz ]] || ln -sf "boot/vmlinuz-$KVER" "$ROOT/vmlinuz"
[[ -L $ROOT/initrd.img ]] || ln -sf "boot/initrd.img-$KVER" "$ROOT/initrd.img"

install -d -m 755 "$ROOT/usr/lib/bootd" "$ROOT/etc/bootd" "$ROOT/etc/systemd/system/ssh.service.d"
install -m 755 "$FILES/iscsi-root" "$FILES/nocloud-seed" "$FILES/resolv-conf" "$ROOT/usr/lib/bootd/"
install -m 644 "$FILES/bootd-iscsi-root.service" "$FILES/bootd-nocloud.service" \
    "$FILES/bootd-resolv.service" "$ROOT/etc/systemd/system/"
install -m 644 "$FILES/ssh-hostkeys.conf" "$ROOT/etc/systemd/system/ssh.service.d/bootd-hostkeys.conf"
install -m 644 "$FILES/cloud.cfg" "$ROOT/etc/cloud/cloud.cfg.d/90_bootd.cfg"
echo "HTTP_PORT=$PORT" >"$ROOT/etc/bootd/nocloud.conf"
systemctl --root="$ROOT" enable bootd-iscsi-root.service bootd-nocloud.service \
    bootd-resolv.service >&2
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
# What GRUB loads at run time, as grub-install copies it: modules, their lists, efiemu;
# not the .module/.image objects only grub-mkimage reads (they stay in /usr/lib/grub).
for plat in i386-pc x86_64-efi; do
    install -d "$ROOT/boot/grub/$plat"
    find "$ROOT/usr/lib/grub/$plat" -maxdepth 1 -type f \
        \( -name '*.mod' -o -name '*.lst' -o -name 'efiemu*.o' -o -name modinfo.sh \) \
        -exec cp -t "$ROOT/boot/grub/$plat/" {} +
done
[[ -f $ROOT/boot/grub/i386-pc/normal.mod && -f $ROOT/boot/grub/x86_64-efi/linux.mod ]] ||
    die "GRUB modules missing under /boot/grub"
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
