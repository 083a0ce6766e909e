#!/usr/bin/env bash
# Installs every Debian package the tests use. Idempotent; run as root. Does nothing
# (and needs no network) when everything is already present.
#
# Trap handled here: qemu-utils and qemu-block-extra must come from the same suite at
# the same version. A qemu-utils from backports next to a qemu-block-extra from the
# release (or the reverse) makes apt remove one of them, and qemu-img then loses
# iscsi:// support. So both are always installed together, pinned to one suite.
set -euo pipefail

log() { echo "install-test-deps: $*" >&2; }
die() { log "$*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root"
command -v apt-get >/dev/null || die "needs apt-get (Debian 12)"

# Packages the tests use, one group per user:
#   libiscsi-bin       iscsi-test-cu, iscsi-ls, iscsi-inq, iscsi-perf (conformance, discovery, bench)
#   tgt                reference target for the benchmark and for validating the harness
#   qemu-*             qemu-img/qemu-io over iscsi:// (block-extra holds the iSCSI driver); TCG
#                      guests with iPXE NIC ROMs (ipxe-qemu) and UEFI firmware (ovmf)
#   open-iscsi         the Linux kernel initiator's tools (iscsistart, iscsiadm) for guests
#   busybox-static cpio kmod xz-utils zstd e2fsprogs   building guest initramfs and filesystems
#   python3-fusepy     tests/faults/failfs.py, the FUSE file system that fails on demand (EIO
#                      tests; run with Debian's /usr/bin/python3, libfuse2 mounts as root)
#   ipxe               iPXE binaries served to PXE clients
#   iproute2           network namespaces, bridges, veth, tap
#   curl procps        tftp:// and http:// clients; pgrep/ps for process checks
#   apache2-utils      ab, the HTTP load generator of scripts/bench-http.sh
#   dnsmasq-base       the site's DHCP server beside proxy mode, and the DHCP benchmark's peer
#                      (the binary only: no service that would answer on the host)
#   kea-admin          perfdhcp, the DHCP load generator
#   ndisc6             rdisc6: solicits an IPv6 router and prints the advertisement
#                      (serve --ipv6-ra)
#   syslinux syslinux-common mtools dosfstools fdisk systemd-boot-efi
#                      building the bootable golden test image (BIOS and UEFI loaders, FAT)
#   mmdebstrap         `bootd image build`: the Debian root file system of a real golden image
#                      (with e2fsprogs, dosfstools, mtools, fdisk above for its disk)
#                      and the container-like tarball of the `--rootfs` e2e test (which also
#                      reads the built disk with debugfs, mcopy, gzip/zstd and uses busybox)
#   postgresql-15      the shared registry's tests (`--registry postgres://`): the tests run
#                      initdb and postgres from /usr/lib/postgresql/15/bin themselves, as the
#                      postgres user, in a temporary directory (the package's own cluster
#                      service is not used)
#   openssl            the registry TLS test's CA and server certificates
#   python3-venv       the venv for PyPI tools the tests run (see install_venv below)
#   keepalived         VRRP moving a floating address between servers in the takeover test
#                      (run by the test in network namespaces; the package's service is not used)
PACKAGES=(
    libiscsi-bin tgt open-iscsi qemu-system-x86 ipxe-qemu ovmf busybox-static ipxe cpio kmod iproute2
    e2fsprogs xz-utils zstd curl procps dnsmasq-base kea-admin syslinux syslinux-common mtools
    dosfstools fdisk systemd-boot-efi python3-fusepy ndisc6 mmdebstrap postgresql-15 openssl python3-venv
    keepalived apache2-utils
)
QEMU_PAIR=(qemu-utils qemu-block-extra)

# The web dashboard's tests:
#   chromium chromium-driver   tests/tests/e2e/dashboard.rs drives headless Chromium through
#                              chromedriver (W3C WebDriver) while guests boot
#   node-typescript            `tsc --noEmit --checkJs --strict` type-checks the dashboard's
#                              JavaScript (bootd/src/api/dashboard/app.js: JSDoc types, no
#                              build step; a unit test of bootd runs it)
PACKAGES+=(chromium chromium-driver node-typescript)

export DEBIAN_FRONTEND=noninteractive
APT=(apt-get -y -q -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confdef
    -o Dpkg::Options::=--force-confold)

installed_version() { dpkg-query -W -f='${db:Status-Status} ${Version}\n' "$1" 2>/dev/null | awk '$1 == "installed" {print $2}'; }

# qemu-img lists the block drivers it can load, modules included, on one line.
qemu_img_has_iscsi() {
    local help
    command -v qemu-img >/dev/null || return 1
    help=$(qemu-img --help 2>/dev/null) || true
    grep '^Supported formats:' <<<"$help" | grep -qw iscsi
}

missing=()
for p in "${PACKAGES[@]}" "${QEMU_PAIR[@]}"; do
    [[ -n $(installed_version "$p") ]] || missing+=("$p")
done
qemu_ok=0
if [[ -n $(installed_version qemu-utils) && $(installed_version qemu-utils) == "$(installed_version qemu-block-extra)" ]] &&
    qemu_img_has_iscsi; then
    qemu_ok=1
fi
# PyPI tools the tests run, in a venv of their own (Debian's python3 stays as it is):
#   openapi-spec-validator   validates `serve --api-listen`'s /api/v1/openapi.json
#                            (bootd/tests/cli/api_openapi.rs runs VENV/bin/openapi-spec-validator)
# Idempotent: nothing is fetched when the validator is already there and runs.
VENV=/opt/bootd-test-venv
PYPI_PACKAGES=(openapi-spec-validator)
install_venv() {
    if [[ -x $VENV/bin/openapi-spec-validator ]] && "$VENV/bin/openapi-spec-validator" --help >/dev/null 2>&1; then
        log "$VENV has ${PYPI_PACKAGES[*]}"
        return
    fi
    log "making $VENV with ${PYPI_PACKAGES[*]}"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PYPI_PACKAGES[@]}"
    "$VENV/bin/openapi-spec-validator" --help >/dev/null || die "openapi-spec-validator does not run"
}

if [[ ${#missing[@]} -eq 0 && $qemu_ok -eq 1 ]]; then
    log "all test packages present"
    install_venv
    exit 0
fi
log "missing: ${missing[*]:-none}; qemu-utils/qemu-block-extra matched with iscsi: $qemu_ok"

# Refresh package lists when they are absent or older than a day.
if [[ -z $(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -1440 -print -quit 2>/dev/null) ]]; then
    log "apt-get update"
    "${APT[@]}" update
fi

# Choose one suite for the qemu pair: backports when the installed qemu-utils comes from
# there and backports offers qemu-block-extra at that same version; otherwise the release.
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
cur=$(installed_version qemu-utils)
qemu_args=()
if [[ $cur == *bpo* ]] && grep -qxF "$cur" <<<"$(apt-cache madison qemu-block-extra | awk -F'|' '{gsub(/ /,"",$2); print $2}')"; then
    log "qemu-utils $cur from ${codename}-backports: taking qemu-block-extra from there too"
    qemu_args=(-t "${codename}-backports" qemu-utils qemu-block-extra)
else
    log "taking qemu-utils and qemu-block-extra from ${codename}"
    qemu_args=(--allow-downgrades "qemu-utils/${codename}" "qemu-block-extra/${codename}")
fi

# qemu-system-x86 pins qemu-block-extra's version too, so all three go in one transaction.
# A failure with day-old lists may be a package that moved on: refresh and retry once.
install() { "${APT[@]}" install --no-install-recommends "${qemu_args[@]}" "${PACKAGES[@]}"; }
if ! install; then
    log "install failed; apt-get update and retry"
    "${APT[@]}" update
    install
fi

# Verify what the tests rely on.
for tool in iscsi-test-cu iscsi-ls iscsi-perf tgtd tgtadm qemu-img qemu-io qemu-system-x86_64 \
    iscsistart busybox cpio mkfs.ext4 ip curl pgrep dnsmasq perfdhcp mcopy mkfs.vfat sfdisk mmdebstrap \
    chromium chromedriver tsc; do
    command -v "$tool" >/dev/null || die "after install, $tool is still missing"
done
[[ $(installed_version qemu-utils) == "$(installed_version qemu-block-extra)" ]] ||
    die "qemu-utils $(installed_version qemu-utils) and qemu-block-extra $(installed_version qemu-block-extra) differ"
qemu_img_has_iscsi || die "qemu-img does not list the iscsi block driver (qemu-block-extra not loaded)"
for tool in initdb postgres; do
    [[ -x /usr/lib/postgresql/15/bin/$tool ]] || die "after install, /usr/lib/postgresql/15/bin/$tool is missing"
done
install_venv
log "done: qemu-img $(installed_version qemu-utils) with iscsi"
