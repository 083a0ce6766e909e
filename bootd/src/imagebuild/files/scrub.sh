#!/usr/bin/env bash
# Removes everything that makes a root file system one particular machine, so every node
# that boots it becomes itself on its first boot (into its own overlay). Used by
# `bootd image build`; `bootd image capture` will run the same on a node's disk.
# Usage: scrub.sh ROOT
set -euo pipefail
# Files written here (hostname, hosts, machine-id) are world-readable on every system.
umask 022
R=${1:?usage: scrub.sh ROOT}
[[ -d $R/etc && $R != / ]] || { echo "scrub: $R is not a root file system" >&2; exit 1; }

# machine-id: empty, not absent: systemd then treats the boot as the first one (units'
# ConditionFirstBoot) and writes a fresh id; absent makes /etc read-only setups fail.
# Replaced, not rewritten in place: a container export's copies (bind mounts of the
# runtime) can carry odd modes (seen: /etc/hostname 0755).
rm -f "$R/etc/machine-id" "$R/etc/hostname" "$R/etc/hosts"
: >"$R/etc/machine-id"
chmod 444 "$R/etc/machine-id"
rm -f "$R/var/lib/dbus/machine-id" "$R/var/lib/systemd/random-seed" "$R/var/lib/systemd/credential.secret"
# SSH host keys: cloud-init (cc_ssh) or ssh-keygen -A makes new ones.
rm -f "$R"/etc/ssh/ssh_host_*
# cloud-init's instance state: without it the next boot is a first boot.
rm -rf "$R"/var/lib/cloud/*
# iSCSI: the initiator name the package made at install time would be every node's;
# node records hold a node's CHAP secret.
printf 'GenerateName=yes\n' >"$R/etc/iscsi/initiatorname.iscsi"
rm -rf "$R/etc/iscsi/nodes" "$R/etc/iscsi/send_targets"
mkdir -p "$R/etc/iscsi/nodes"
# Names and network state.
echo localhost >"$R/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$R/etc/hosts"
rm -f "$R/etc/resolv.conf"
rm -rf "$R"/var/lib/dhcp/* "$R"/var/lib/systemd/network/* 2>/dev/null || true
# Logs, journals, caches, temporary files.
find "$R/var/log" -type f -delete
rm -rf "$R"/var/log/journal/* "$R"/var/cache/apt/*.bin "$R"/var/cache/apt/archives/*.deb \
    "$R"/var/lib/apt/lists/* "$R"/tmp/* "$R"/var/tmp/* "$R"/root/.bash_history
