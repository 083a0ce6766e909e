//! Network boot on a wire: `bootd serve --dhcp full` with TFTP in one namespace, busybox
//! udhcpc and curl as the machine in another, joined by a veth pair on 192.0.2.0/24.
//! A registered MAC is told to load iPXE over TFTP (BIOS PXE) or its script over HTTP
//! (already iPXE); an unknown one gets an address only; the TFTP file arrives intact;
//! leases survive a restart of serve.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context, Result};
use bootd_tests::disk::noise;
use bootd_tests::env::Needs;
use bootd_tests::export::Server;
use bootd_tests::netns::NetNs;
use bootd_tests::process::run;
use bootd_tests::serve::{DataDir, Serve, ServeOptions};

const SERVER_IP: &str = "192.0.2.1";
const POOL: (Ipv4Addr, Ipv4Addr) = (Ipv4Addr::new(192, 0, 2, 100), Ipv4Addr::new(192, 0, 2, 120));
/// Device names live inside the namespaces, so they cannot collide between runs.
const SERVER_DEV: &str = "boot0";
const CLIENT_DEV: &str = "nic0";
const NODE_MAC: &str = "52:54:00:e2:0b:01";
const STRANGER_MAC: &str = "52:54:00:e2:0b:02";
const BOOT_FILE: &str = "undionly.kpxe";
/// udhcpc gives up after 5 discovers 1 s apart (`-t 5 -T 1 -n`); this only catches a hang.
const CLIENT_LIMIT: Duration = Duration::from_secs(30);
/// PXE BIOS (option 93 = 0), as a PXE ROM sends it.
const PXE_BIOS: &[&str] = &["-V", "PXEClient:Arch:00000", "-x", "93:0000"];
/// User class `iPXE` (option 77, hex), as iPXE sends it.
const IPXE: &[&str] = &["-x", "77:69505845"];

#[test]
fn dhcp_tftp_in_a_namespace() -> Result<()> {
    let test = "dhcp_tftp_in_a_namespace";
    if Server::from_env() != Server::Bootd {
        println!("{test}: skipped: DHCP and TFTP are bootd's own (BOOTD_TEST_TARGET)");
        return Ok(());
    }
    if !Needs::new()
        .root()
        .server()
        .tool("ip", "iproute2")
        .tool("busybox", "busybox-static")
        .tool("curl", "curl")
        .met(test)
    {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let data = DataDir::new()?;
    let golden = dir.path().join("golden.img");
    std::fs::write(&golden, noise(1 << 20, 7))?;
    data.import("golden", &golden)?;
    data.add_node(NODE_MAC, "golden", "pxe1")?;
    // A file no other run serves: whatever arrives must be this one.
    let tftp_dir = dir.path().join("tftp");
    std::fs::create_dir(&tftp_dir)?;
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)?
        .as_nanos()
        .wrapping_add(u128::from(std::process::id()));
    // Not a multiple of the 512-byte block: the short last block ends the transfer.
    let payload = noise(100_003, seed as u64);
    std::fs::write(tftp_dir.join(BOOT_FILE), &payload)?;
    let script = Client::write_script(dir.path())?;

    let server_ns = NetNs::new()?;
    let client_ns = NetNs::new()?;
    server_ns.add_veth(SERVER_DEV, &client_ns, CLIENT_DEV)?;
    server_ns.ip(&["addr", "add", &format!("{SERVER_IP}/24"), "dev", SERVER_DEV])?;
    server_ns.ip(&["link", "set", SERVER_DEV, "up"])?;
    let client = Client {
        ns: &client_ns,
        script: &script,
        dir: dir.path(),
    };
    client.set_mac(NODE_MAC)?;

    let tftp_dir = tftp_dir.to_str().context("temp dir is not UTF-8")?;
    let opts = ServeOptions {
        netns: Some(&server_ns),
        listen_ip: SERVER_IP.to_string(),
        extra: [
            "--dhcp",
            "full",
            "--interface",
            SERVER_DEV,
            "--pool",
            &format!("{}-{}", POOL.0, POOL.1),
            "--tftp-dir",
            tftp_dir,
        ]
        .map(String::from)
        .to_vec(),
    };
    let serve = data.serve_with(&opts)?;
    let server: Ipv4Addr = SERVER_IP.parse()?;

    // BIOS PXE ROM of a registered node: iPXE over TFTP from this server.
    let pxe = client.lease("pxe", PXE_BIOS, &serve)?;
    let node_ip = pxe.ip()?;
    ensure!(
        pxe.get("boot_file") == BOOT_FILE && pxe.get("bootfile") == BOOT_FILE,
        "registered BIOS client was not offered {BOOT_FILE}: {pxe:?}\n{}",
        serve.log()
    );
    ensure!(
        pxe.addr("siaddr")? == server && pxe.addr("serverid")? == server,
        "next-server / server id is not {SERVER_IP}: {pxe:?}"
    );

    // The same machine once iPXE runs: its script over HTTP, the same address.
    let ipxe = client.lease("ipxe", IPXE, &serve)?;
    let script_url = format!("http://{SERVER_IP}:{}/boot.ipxe", serve.http_port());
    ensure!(
        ipxe.get("bootfile") == script_url,
        "iPXE client was not offered {script_url}: {ipxe:?}\n{}",
        serve.log()
    );
    ensure!(
        ipxe.ip()? == node_ip,
        "the node's address changed: {ipxe:?}, first {node_ip}"
    );

    // An unregistered machine: an address of its own, nothing to boot.
    client.set_mac(STRANGER_MAC)?;
    let stranger = client.lease("stranger", PXE_BIOS, &serve)?;
    let stranger_ip = stranger.ip()?;
    ensure!(
        stranger_ip != node_ip,
        "two machines got {node_ip}: {stranger:?}"
    );
    ensure!(
        stranger.get("boot_file").is_empty() && stranger.get("bootfile").is_empty(),
        "unregistered MAC was offered a boot file: {stranger:?}"
    );

    println!(
        "node {NODE_MAC}: {node_ip}, {BOOT_FILE} then {script_url}; stranger {STRANGER_MAC}: {stranger_ip}"
    );

    // The boot file over TFTP, from the address the lease gave (the script set it).
    let got = dir.path().join("fetched");
    let url = format!("tftp://{SERVER_IP}:{}/{BOOT_FILE}", serve.tftp_port());
    let mut curl = client_ns.command("curl");
    curl.args(["-sS", "--max-time", "20", "-o"])
        .arg(&got)
        .arg(&url);
    run(&mut curl, CLIENT_LIMIT)?
        .ok()
        .with_context(|| serve.log())?;
    let fetched = std::fs::read(&got)?;
    ensure!(
        fetched == payload,
        "{url} returned {} bytes that differ from the {} served",
        fetched.len(),
        payload.len()
    );

    // A restart reads the lease file: the stranger asks first, so an empty table
    // would hand it the node's old address.
    serve.stop()?;
    let serve = data.serve_with(&opts)?;
    let again = client.lease("stranger-after-restart", PXE_BIOS, &serve)?;
    ensure!(
        again.ip()? == stranger_ip,
        "after restart the stranger got {again:?}, before {stranger_ip}"
    );
    client.set_mac(NODE_MAC)?;
    let again = client.lease("pxe-after-restart", PXE_BIOS, &serve)?;
    ensure!(
        again.ip()? == node_ip && again.get("boot_file") == BOOT_FILE,
        "after restart the node got {again:?}, before {node_ip} with {BOOT_FILE}"
    );
    serve.stop()
}

/// The machine: busybox udhcpc in the client namespace.
struct Client<'a> {
    ns: &'a NetNs,
    script: &'a Path,
    dir: &'a Path,
}

impl Client<'_> {
    /// udhcpc runs this at each event (`$1`) with the lease in its environment. It
    /// configures the address, as a real client's script does, and appends what it
    /// got to `$BOOTD_LEASE_OUT` as `key=value` lines, a blank line after each event.
    fn write_script(dir: &Path) -> Result<std::path::PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("udhcpc.sh");
        std::fs::write(
            &path,
            r#"#!/bin/sh
case "$1" in
deconfig) ip addr flush dev "$interface" ;;
bound|renew) ip addr flush dev "$interface" && ip addr add "$ip/$mask" dev "$interface" ;;
esac
printf 'event=%s\nip=%s\nsiaddr=%s\nserverid=%s\nboot_file=%s\nbootfile=%s\n\n' \
    "$1" "$ip" "$siaddr" "$serverid" "$boot_file" "$bootfile" >> "$BOOTD_LEASE_OUT"
"#,
        )?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        Ok(path)
    }

    /// Gives the client's link another MAC (the registry's key): another machine.
    fn set_mac(&self, mac: &str) -> Result<()> {
        self.ns.ip(&["link", "set", CLIENT_DEV, "down"])?;
        self.ns.ip(&["link", "set", CLIENT_DEV, "address", mac])?;
        self.ns.ip(&["link", "set", CLIENT_DEV, "up"])
    }

    /// One DHCP exchange (DISCOVER to ACK) with `extra` udhcpc flags; the bound lease.
    fn lease(&self, label: &str, extra: &[&str], serve: &Serve) -> Result<Lease> {
        let out = self.dir.join(format!("lease-{label}"));
        let mut cmd = self.ns.command("busybox");
        cmd.env("BOOTD_LEASE_OUT", &out)
            .args([
                "udhcpc", "-i", CLIENT_DEV, "-f", "-q", "-n", "-t", "5", "-T", "1",
            ])
            .arg("-s")
            .arg(self.script)
            .args(extra);
        let done = run(&mut cmd, CLIENT_LIMIT)?;
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        ensure!(
            done.success(),
            "{label}: no lease\n{done}\nscript saw:\n{text}\n{}",
            serve.log()
        );
        let bound = text
            .split("\n\n")
            .map(Lease::parse)
            .filter(|l| l.get("event") == "bound")
            .last()
            .with_context(|| format!("{label}: no `bound` event\n{done}\n{text}"))?;
        let ip = bound.ip()?;
        ensure!(
            (POOL.0..=POOL.1).contains(&ip),
            "{label}: {ip} is outside the pool {}-{}",
            POOL.0,
            POOL.1
        );
        Ok(bound)
    }
}

/// What udhcpc handed its script for one event.
#[derive(Debug)]
struct Lease(BTreeMap<String, String>);

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

    fn get(&self, key: &str) -> &str {
        self.0.get(key).map_or("", String::as_str)
    }

    fn addr(&self, key: &str) -> Result<Ipv4Addr> {
        self.get(key)
            .parse()
            .with_context(|| format!("{key} is not an IPv4 address in {self:?}"))
    }

    fn ip(&self) -> Result<Ipv4Addr> {
        self.addr("ip")
    }
}
