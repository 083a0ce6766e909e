#!/usr/bin/env bash
# Builds the end-to-end test guest (a Debian kernel and a busybox initramfs with open-iscsi's
# initiator tools and e2fsprogs) from Debian packages only, and caches it.
# Usage: tests/guest/build.sh OUT_DIR
# Prints two lines on stdout: "kernel=PATH" and "initrd=PATH". Everything else goes to stderr.
# The cache key covers the kernel package version, the versions of the host packages copied in
# (busybox-static, open-iscsi, e2fsprogs) and this script and the guest init, so an upgrade or
# an edit rebuilds and a rerun costs nothing.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:?usage: build.sh OUT_DIR}
# Absolute: modprobe prints absolute module paths, which are matched against it below.
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
log() { echo "guest-build: $*" >&2; }
die() { log "$*"; exit 1; }

for tool in apt-get apt-cache dpkg dpkg-deb dpkg-query modprobe depmod cpio ldd sha256sum flock; do
    command -v "$tool" >/dev/null || die "missing tool: $tool"
done
BUSYBOX=/bin/busybox
# Not `busybox --list | grep -q`: with pipefail, grep leaving early makes busybox die of
# SIGPIPE now and then, and the check fails at random.
[[ -x $BUSYBOX ]] && grep -qx modprobe <<<"$("$BUSYBOX" --list)" || die "missing busybox-static ($BUSYBOX)"
# The initramfs has no libraries for busybox: it must be the static build.
if ldd "$BUSYBOX" >/dev/null 2>&1; then die "$BUSYBOX is dynamically linked (install busybox-static)"; fi
# Binaries copied from the host, with the package that ships them.
BINS=(/usr/sbin/iscsistart:open-iscsi /usr/sbin/iscsid:open-iscsi /usr/sbin/iscsiadm:open-iscsi
      /sbin/mke2fs:e2fsprogs /sbin/e2fsck:e2fsprogs)
for b in "${BINS[@]}"; do [[ -x ${b%%:*} ]] || die "missing ${b%%:*} (apt-get install ${b#*:})"; done

# linux-image-amd64 is a metapackage: the kernel lives in the linux-image-6.x-amd64 it depends on.
KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[[ -n $KPKG ]] || die "cannot resolve linux-image-amd64's kernel package (run apt-get update?)"
KVER_PKG=$(apt-cache show --no-all-versions "$KPKG" | awk '/^Version:/ {print $2; exit}')
[[ -n $KVER_PKG ]] || die "no version for $KPKG"
HOSTVERS=$(dpkg-query -W -f='${Package}=${Version};' busybox-static open-iscsi e2fsprogs)
SRCHASH=$(cat "$HERE/build.sh" "$HERE/init" | sha256sum | cut -c1-16)
KEY=$(printf '%s' "${KPKG}_${KVER_PKG};${HOSTVERS};${SRCHASH}" | sha256sum | cut -c1-16)
DEST=$OUT/${KPKG}_${KVER_PKG}-$KEY

# Parallel test runs share the cache: one builds, the others wait and reuse it.
exec 9>"$OUT/.lock"
flock -w 600 9 || die "timed out waiting for $OUT/.lock"

if [[ -f $DEST/vmlinuz && -f $DEST/initrd.cpio ]]; then
    log "cached: $DEST"
    echo "kernel=$DEST/vmlinuz"
    echo "initrd=$DEST/initrd.cpio"
    exit 0
fi

WORK=$(mktemp -d "$OUT/.work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
log "downloading $KPKG $KVER_PKG"
# apt-get download writes into the current directory; as root it warns that the _apt user
# cannot write there, which is harmless.
(cd "$WORK" && apt-get download -q "$KPKG=$KVER_PKG" >&2) || die "apt-get download $KPKG failed"
dpkg -x "$WORK"/"$KPKG"_*.deb "$WORK/pkg"
rm -f "$WORK"/"$KPKG"_*.deb
KREL=$(basename "$(find "$WORK/pkg/lib/modules" -mindepth 1 -maxdepth 1 -type d | head -1)")
[[ -n $KREL && -f $WORK/pkg/boot/vmlinuz-$KREL ]] || die "no vmlinuz in $KPKG"
# The package ships no modules.dep (its postinst runs depmod): make one to resolve dependencies.
depmod -b "$WORK/pkg" "$KREL"

ROOT=$WORK/root
mkdir -p "$ROOT"/{bin,sbin,etc/iscsi,lib,lib64,proc,sys,dev,run,tmp,mnt,var/lib/iscsi,var/lock}
# Modules for the NIC (virtio-net, e1000), the iSCSI initiator, SCSI disks and ext4, plus
# the crypto providers that crc32c/crc-t10dif/crc64-rocksoft users request at load time.
# iscsi_ibft (with iscsi_boot_sysfs) is for the golden image (build-golden.sh), whose init
# reads the iBFT iPXE wrote; this guest's own init never loads it.
MODS=(virtio_pci virtio_net e1000 iscsi_tcp sd_mod ext4 crc32c_generic crc32c-intel
      crct10dif_generic crc64_rocksoft_generic iscsi_ibft iscsi_boot_sysfs)
MODDIR=$ROOT/lib/modules/$KREL
for m in "${MODS[@]}"; do
    modprobe -d "$WORK/pkg" -S "$KREL" --show-depends "$m" || die "module $m not in $KPKG"
done | awk '$1 == "insmod" {print $2}' | sort -u | while read -r ko; do
    rel=${ko#"$WORK/pkg/lib/modules/$KREL/"}
    [[ $rel != /* ]] || die "module $ko is not under $WORK/pkg/lib/modules/$KREL"
    mkdir -p "$MODDIR/$(dirname "$rel")"
    # busybox insmod/modprobe cannot read compressed modules: store them plain.
    case $ko in
        *.ko.xz) xz -dc "$ko" >"$MODDIR/${rel%.xz}" ;;
        *.ko.zst) zstd -qdc "$ko" >"$MODDIR/${rel%.zst}" ;;
        *.ko.gz) gzip -dc "$ko" >"$MODDIR/${rel%.gz}" ;;
        *) cp "$ko" "$MODDIR/$rel" ;;
    esac
done
cp "$WORK/pkg/lib/modules/$KREL"/modules.{order,builtin,builtin.modinfo} "$MODDIR/"
depmod -b "$ROOT" "$KREL"

cp "$BUSYBOX" "$ROOT/bin/busybox"
for a in $("$BUSYBOX" --list); do
    [[ $a == busybox ]] || ln -sf busybox "$ROOT/bin/$a"
done
# The kernel runs /sbin/modprobe for request_module(); busybox provides it.
ln -sf ../bin/busybox "$ROOT/sbin/modprobe"

# Dynamic binaries and every shared library ldd finds for them, at the same paths.
copy_with_libs() {
    local bin=$1 lib
    cp "$bin" "$ROOT/sbin/$(basename "$bin")"
    for lib in $(ldd "$bin" | awk '/=> \// {print $3} /^\t\/lib/ {print $1}'); do
        mkdir -p "$ROOT$(dirname "$lib")"
        cp -L "$lib" "$ROOT$lib"
    done
}
for b in "${BINS[@]}"; do copy_with_libs "${b%%:*}"; done
[[ -f /etc/mke2fs.conf ]] && cp /etc/mke2fs.conf "$ROOT/etc/"
# iscsid only answers iscsiadm when it can name the peer's uid.
echo 'root:x:0:0:root:/:/bin/sh' >"$ROOT/etc/passwd"
echo 'root:x:0:' >"$ROOT/etc/group"
# Busybox's applets (mke2fs among them) come before these in PATH for /bin, so the init calls
# /sbin/mke2fs and /sbin/e2fsck by full path.

cp "$HERE/init" "$ROOT/init"
chmod 755 "$ROOT/init"

mkdir -p "$WORK/out"
cp "$WORK/pkg/boot/vmlinuz-$KREL" "$WORK/out/vmlinuz"
# Uncompressed: under TCG the kernel copies a plain cpio faster than it can inflate one.
(cd "$ROOT" && find . -print0 | sort -z | cpio --null -o -H newc --quiet) >"$WORK/out/initrd.cpio"
echo "$KPKG $KVER_PKG ($KREL); $HOSTVERS" >"$WORK/out/VERSIONS"
rm -rf "$DEST"
mv "$WORK/out" "$DEST"
# Older builds (other package versions or sources) are dead weight now.
for old in "$OUT"/linux-image-*; do
    [[ $old == "$DEST" ]] || rm -rf "$old"
done
log "built $DEST ($(du -sh "$DEST/initrd.cpio" | cut -f1) initramfs)"
echo "kernel=$DEST/vmlinuz"
echo "initrd=$DEST/initrd.cpio"
