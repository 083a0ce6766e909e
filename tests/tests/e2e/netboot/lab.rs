//! The wire both network-boot tests run on: a server namespace holding a bridge with
//! 192.0.2.1 on it (where `bootd serve` runs) and machines in namespaces of their
//! own, each plugged into the bridge by a veth pair. Plus what the machines run:
//! busybox udhcpc and curl.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context, Result};
use bootd_tests::disk::noise;
use bootd_tests::env::Needs;
use bootd_tests::export::Server;
use bootd_tests::netns::NetNs;
use bootd_tests::process::{run, Finished};
use bootd_tests::serve::DataDir;

pub const SERVER_IP: &str = "192.0.2.1";
pub const SERVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// Device names live inside the namespaces, so they cannot collide between runs.
pub const BRIDGE: &str = "br0";
/// Each machine's interface, in its own namespace.
pub const NIC: &str = "nic0";
/// udhcpc gives up after 5 discovers 1 s apart (`-t 5 -T 1 -n`); this only catches a hang.
pub const CLIENT_LIMIT: Duration = Duration::from_secs(30);

/// PXE ROMs as they introduce themselves to udhcpc's `-V` and `-x` (option 93, hex).
pub const PXE_BIOS: &[&str] = &["-V", "PXEClient:Arch:00000", "-x", "93:0000"];
pub const PXE_UEFI_X64: &[&str] = &["-V", "PXEClient:Arch:00007", "-x", "93:0007"];
/// Arch 9 (EFI x86-64), which some x64 firmware sends instead of 7.
pub const PXE_UEFI_X64_9: &[&str] = &["-V", "PXEClient:Arch:00009", "-x", "93:0009"];
/// UEFI HTTP boot (arch 16), which wants a URL and its vendor class echoed.
pub const HTTP_UEFI_X64: &[&str] = &["-V", "HTTPClient:Arch:00016", "-x", "93:0010"];
/// User class `iPXE` (option 77, hex), as iPXE sends it.
pub const IPXE: &[&str] = &["-x", "77:69505845"];

/// Whether `test` can run: bootd is the server under test (DHCP and TFTP are its
/// own), and root, iproute2, busybox and the `extra` (tool, Debian package) are here.
pub fn can_run(test: &str, extra: &[(&str, &str)]) -> bool {
    if Server::from_env() != Server::Bootd {
        println!("{test}: skipped: DHCP and TFTP are bootd's own (BOOTD_TEST_TARGET)");
        return false;
    }
    let mut needs = Needs::new()
        .root()
        .server()
        .tool("ip", "iproute2")
        .tool("busybox", "busybox-static");
    for (tool, package) in extra {
        needs = needs.tool(tool, package);
    }
    needs.met(test)
}

/// A server namespace with a bridge, a data directory with a golden image, and a
/// scratch directory; machines are plugged in with [`Lab::machine`].
pub struct Lab {
    pub dir: tempfile::TempDir,
    pub data: DataDir,
    pub server_ns: NetNs,
    udhcpc_script: PathBuf,
    ports: AtomicU32,
}

impl Lab {
    pub fn new() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let data = DataDir::new()?;
        let golden = dir.path().join("golden.img");
        std::fs::write(&golden, noise(1 << 20, 7))?;
        data.import("golden", &golden)?;
        let server_ns = NetNs::new()?;
        server_ns.add_bridge(BRIDGE)?;
        server_ns.ip(&["addr", "add", &format!("{SERVER_IP}/24"), "dev", BRIDGE])?;
        let udhcpc_script = write_udhcpc_script(dir.path())?;
        Ok(Self {
            dir,
            data,
            server_ns,
            udhcpc_script,
            ports: AtomicU32::new(0),
        })
    }

    /// A new namespace plugged into the bridge as [`NIC`] with `mac`, up, no address.
    pub fn machine(&self, mac: &str) -> Result<NetNs> {
        let ns = NetNs::new()?;
        let port = format!("port{}", self.ports.fetch_add(1, Ordering::Relaxed));
        self.server_ns.plug(BRIDGE, &port, &ns, NIC)?;
        set_mac(&ns, mac)?;
        Ok(ns)
    }

    /// A file in the scratch directory that no earlier call named.
    pub fn scratch(&self, label: &str) -> PathBuf {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        self.dir
            .path()
            .join(format!("{label}-{}", NEXT.fetch_add(1, Ordering::Relaxed)))
    }

    /// One DHCP exchange (DISCOVER to ACK) by busybox udhcpc in `ns`, with `extra`
    /// flags; the bound lease. udhcpc's script puts the address on the interface.
    pub fn udhcpc(&self, ns: &NetNs, label: &str, extra: &[&str]) -> Result<Lease> {
        let out = self.scratch(&format!("lease-{label}"));
        let mut cmd = ns.command("busybox");
        cmd.env("BOOTD_LEASE_OUT", &out)
            .args(["udhcpc", "-i", NIC, "-f", "-q", "-n", "-t", "5", "-T", "1"])
            .arg("-s")
            .arg(&self.udhcpc_script)
            .args(extra);
        let done = run(&mut cmd, CLIENT_LIMIT)?;
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        ensure!(
            done.success(),
            "{label}: no lease\n{done}\nscript saw:\n{text}"
        );
        text.split("\n\n")
            .map(Lease::parse)
            .filter(|l| l.get("event") == "bound")
            .last()
            .with_context(|| format!("{label}: no `bound` event\n{done}\n{text}"))
    }

    /// `GET url` by curl in `ns`: the status and the body.
    pub fn http_get(&self, ns: &NetNs, url: &str) -> Result<(u16, Vec<u8>)> {
        let body = self.scratch("http-body");
        let mut curl = ns.command("curl");
        curl.args(["-sS", "--max-time", "10", "-o"])
            .arg(&body)
            .args(["-w", "%{http_code}", url]);
        let done = run(&mut curl, CLIENT_LIMIT)?.ok()?;
        let status = done
            .stdout
            .trim()
            .parse()
            .with_context(|| format!("curl printed no status: {done}"))?;
        Ok((status, std::fs::read(&body).unwrap_or_default()))
    }

    /// A TFTP read by curl in `ns` with `args`, into a fresh file; how curl ended and
    /// what it wrote (nothing when it wrote no file).
    pub fn tftp_get(&self, ns: &NetNs, url: &str, args: &[&str]) -> Result<(Finished, Vec<u8>)> {
        let out = self.scratch("tftp");
        let mut curl = ns.command("curl");
        // -v: curl reports the options the server acknowledged.
        curl.args(["-v", "-sS", "--path-as-is", "--max-time", "20"])
            .args(args)
            .arg("-o")
            .arg(&out)
            .arg(url);
        let done = run(&mut curl, CLIENT_LIMIT)?;
        let got = std::fs::read(&out).unwrap_or_default();
        Ok((done, got))
    }
}

/// Gives the machine's link another MAC (the registry's key): another machine.
pub fn set_mac(ns: &NetNs, mac: &str) -> Result<()> {
    ns.ip(&["link", "set", NIC, "down"])?;
    ns.ip(&["addr", "flush", "dev", NIC])?;
    ns.ip(&["link", "set", NIC, "address", mac])?;
    ns.ip(&["link", "set", NIC, "up"])
}

/// A seed no other run uses, so whatever arrives must come from this run.
pub fn fresh_seed() -> Result<u64> {
    let t = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    Ok((t as u64) ^ u64::from(std::process::id()).rotate_left(32))
}

/// udhcpc runs this at each event (`$1`) with the lease in its environment. It
/// configures the address, as a real client's script does, and appends what it got
/// to `$BOOTD_LEASE_OUT` as `key=value` lines, a blank line after each event.
/// `vendor` is option 60; options udhcpc has no name for come as `optN` (hex).
fn write_udhcpc_script(dir: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("udhcpc.sh");
    std::fs::write(
        &path,
        r#"#!/bin/sh
case "$1" in
deconfig) ip addr flush dev "$interface" ;;
bound|renew) ip addr flush dev "$interface" && ip addr add "$ip/$mask" dev "$interface" ;;
esac
printf 'event=%s\nip=%s\nsiaddr=%s\nserverid=%s\nboot_file=%s\nbootfile=%s\nvendor=%s\nopt43=%s\n\n' \
    "$1" "$ip" "$siaddr" "$serverid" "$boot_file" "$bootfile" "$vendor" "$opt43" >> "$BOOTD_LEASE_OUT"
"#,
    )?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// What udhcpc handed its script for one event.
#[derive(Debug)]
pub struct Lease(BTreeMap<String, String>);

impl Lease {
    fn parse(block: &str) -> Self {
        Self(
            block
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> &str {
        self.0.get(key).map_or("", String::as_str)
    }

    pub fn addr(&self, key: &str) -> Result<Ipv4Addr> {
        self.get(key)
            .parse()
            .with_context(|| format!("{key} is not an IPv4 address in {self:?}"))
    }

    pub fn ip(&self) -> Result<Ipv4Addr> {
        self.addr("ip")
    }

    /// The boot file from the `file` field and from option 67, which must agree.
    pub fn boot_file(&self) -> Result<&str> {
        let (field, opt) = (self.get("boot_file"), self.get("bootfile"));
        ensure!(
            field == opt,
            "file field {field:?} and option 67 {opt:?} differ: {self:?}"
        );
        Ok(field)
    }
}
