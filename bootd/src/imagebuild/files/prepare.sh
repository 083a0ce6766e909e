#!/usr/bin/env bash
# Writes what must be in place BEFORE the image's packages are installed, so their
# maintainer scripts and the kernel's one initramfs generation already see it. Run as
# mmdebstrap's essential-hook (after the essential packages, before the --include ones),
# and by build.sh --rootfs into the unpacked tarball before its apt-get install.
# Usage: prepare.sh ROOT
set -euo pipefail
umask 022
FILES=$(cd "$(dirname "$0")" && pwd)
R=${1:?usage: prepare.sh ROOT}
[[ -d $R/etc && $R != / ]] || { echo "prepare: $R is not a root file system" >&2; exit 1; }

# open-iscsi's initramfs hook copies this file: ISCSI_AUTO logs in from the iBFT.
install -d -m 755 "$R/etc/iscsi"
install -m 644 "$FILES/iscsi.initramfs" "$R/etc/iscsi/iscsi.initramfs"
