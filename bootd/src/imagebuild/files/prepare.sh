#!/usr/bin/env bash
# Writes what must be in place BEFORE the image's packages are installed, so their
# maintainer scripts and the kernel's one initramfs generation already see it. Run as
# mmdebstrap's essential-hook (after the essential packages, before the --include ones),
# and by build.sh --rootfs into the unpacked tarball before its apt-get install. (The
# kernel is installed last, on its own, so the initramfs is generated once, with all this.)
# Usage: prepare.sh ROOT
set -euo pipefail
umask 022
FILES=$(cd "$(dirname "$0")" && pwd)
R=${1:?usage: prepare.sh ROOT}
[[ -d $R/etc && $R != / ]] || { echo "prepare: $R is not a root file system" >&2; exit 1; }

# open-iscsi's initramfs hook copies this file: ISCSI_AUTO logs in from the iBFT.
install -d -m 755 "$R/etc/iscsi"
install -m 644 "$FILES/iscsi.initramfs" "$R/etc/iscsi/iscsi.initramfs"
# The initiator name, before open-iscsi's postinst runs: it makes a random name only when
# this file does not exist, and the initramfs hook copies the file, so that build-time
# name would be in every node's initramfs (and every image's identity). GenerateName=yes
# instead: with an iBFT, iscsistart (ISCSI_AUTO) and bootd-iscsi-root.service use the
# iBFT's name (the node's IQN); without one, open-iscsi makes a name on the node.
printf 'GenerateName=yes\n' >"$R/etc/iscsi/initiatorname.iscsi"
chmod 600 "$R/etc/iscsi/initiatorname.iscsi"

# No documentation, manual pages or non-English translations (dpkg-nodoc.cfg says which
# paths): dpkg skips them for every package installed after this, and what is already
# there (the essential packages, or the tarball's) goes the same way. Copyright files
# stay.
install -d -m 755 "$R/etc/dpkg/dpkg.cfg.d"
install -m 644 "$FILES/dpkg-nodoc.cfg" "$R/etc/dpkg/dpkg.cfg.d/bootd-nodoc"
if [[ -d $R/usr/share/doc ]]; then
    find "$R/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
    find "$R/usr/share/doc" -mindepth 1 -type d -empty -delete
fi
for d in man info groff lintian linda; do
    if [[ -d $R/usr/share/$d ]]; then find "$R/usr/share/$d" -mindepth 1 -delete; fi
done
if [[ -d $R/usr/share/locale ]]; then
    find "$R/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'en*' ! -name locale.alias \
        -exec rm -rf {} +
fi
