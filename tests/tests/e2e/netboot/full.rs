//! `bootd serve --dhcp full` on the bridge, TFTP on port 69: a registered machine's
//! every firmware stage (BIOS PXE, UEFI x64 PXE, UEFI HTTP boot, iPXE) is told what
//! to load and can load it; its script sanboots its own target; a stranger gets an
//! address and nothing to boot; TFTP is byte-exact at 512 and 1428-byte blocks and
//! stays inside its directory; 2000 hostile datagrams leave it answering; a restart
//! keeps every address.

use std::net::Ipv4Addr;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use bootd_tests::disk::noise;
use bootd_tests::netns::NetNs;
use bootd_tests::serve::{Serve, ServeOptions};

use super::lab::{self, Lab, Lease, SERVER, SERVER_IP};
use super::{hostile, script};

const POOL: (Ipv4Addr, Ipv4Addr) = (Ipv4Addr::new(192, 0, 2, 100), Ipv4Addr::new(192, 0, 2, 120));
const NODE_MAC: &str = "52:54:00:e2:0b:01";
/// Registered too: its script must not show up in the first node's.
const OTHER_MAC: &str = "52:54:00:e2:0b:03";
const STRANGER_MAC: &str = "52:54:00:e2:0b:02";
const BIOS_FILE: &str = "undionly.kpxe";
const EFI_FILE: &str = "snponly.efi";
/// An exact number of 512-byte blocks: the transfer ends with an empty block.
const EVEN_FILE: &str = "even.bin";
/// Datagrams sent to each of ports 67 and 69.
const HOSTILE_PER_PORT: usize = 1000;

/// The boot files, different for every run and from each other.
struct Files {
    bios: Vec<u8>,
    efi: Vec<u8>,
    even: Vec<u8>,
}

#[test]
fn full_dhcp_tftp_http_on_a_bridge() -> Result<()> {
    let test = "full_dhcp_tftp_http_on_a_bridge";
    if !lab::can_run(
        test,
        &[
            ("curl", "curl"),
            ("iscsi-inq", "libiscsi-bin"),
            ("rdisc6", "ndisc6"),
        ],
    ) {
        return Ok(());
    }
    let start = Instant::now();
    let lab = Lab::new()?;
    let node = lab.data.add_node(NODE_MAC, "golden", "pxe1")?;
    let other = lab.data.add_node(OTHER_MAC, "golden", "pxe3")?;
    let seed = lab::fresh_seed()?;
    // Not multiples of 512 or 1428: the short last block ends those transfers.
    let files = Files {
        bios: noise(100_003, seed),
        efi: noise(210_001, seed ^ 0x5a5a),
        even: noise(512 * 100, seed ^ 0xa5a5),
    };
    let tftp_dir = lab.dir.path().join("tftp");
    std::fs::create_dir(&tftp_dir)?;
    std::fs::write(tftp_dir.join(BIOS_FILE), &files.bios)?;
    std::fs::write(tftp_dir.join(EFI_FILE), &files.efi)?;
    std::fs::write(tftp_dir.join(EVEN_FILE), &files.even)?;
    // Beside the boot directory: what a `../` escape would reach.
    std::fs::write(lab.dir.path().join("secret"), b"bootd-e2e secret\n")?;

    let machine = lab.machine(NODE_MAC)?;
    let tftp_dir = tftp_dir.to_str().context("temp dir is not UTF-8")?;
    let opts = ServeOptions {
        netns: Some(&lab.server_ns),
        listen_ip: SERVER_IP.to_string(),
        extra: [
            "--dhcp",
            "full",
            "--interface",
            lab::BRIDGE,
            "--pool",
            &format!("{}-{}", POOL.0, POOL.1),
            "--tftp-dir",
            tftp_dir,
            // Where PXE firmware looks, and where the hostile traffic goes.
            "--tftp-port",
            "69",
        ]
        .map(String::from)
        .to_vec(),
    };
    let mut serve = lab.data.serve_with(&opts)?;
    ensure!(serve.tftp_port() == 69, "TFTP is on {}", serve.tftp_port());

    let node_ip = firmware_stages(&lab, &machine, &serve).with_context(|| serve.log())?;
    script::follow(&lab, &machine, &serve, &node, &other, STRANGER_MAC)
        .with_context(|| serve.log())?;
    tftp(&lab, &machine, &files).with_context(|| serve.log())?;

    // An unregistered machine: an address of its own, nothing to boot.
    lab::set_mac(&machine, STRANGER_MAC)?;
    let stranger = lab
        .udhcpc(&machine, "stranger", lab::PXE_BIOS)
        .with_context(|| serve.log())?;
    let stranger_ip = in_pool(&stranger)?;
    ensure!(
        stranger_ip != node_ip,
        "two machines got {node_ip}: {stranger:?}"
    );
    ensure!(
        stranger.boot_file()?.is_empty(),
        "unregistered MAC was offered something to boot: {stranger:?}"
    );
    println!("{test}: stranger {STRANGER_MAC}: {stranger_ip}, no boot file");

    // Hostile traffic from the stranger's address, then the node must still boot.
    let arrived = hostile::flood(
        &machine,
        &lab.server_ns,
        SERVER,
        HOSTILE_PER_PORT,
        seed,
        BIOS_FILE,
    )?;
    let sent = arrived.sent;
    // They must reach bootd's sockets, or the test shows nothing about its decoders;
    // a busy machine may drop some for full socket buffers (`errors`). A closed port
    // would count a thousand `no_ports`; the odd one is bootd answering a forged
    // relay address that is its own.
    ensure!(
        arrived.no_ports <= sent / 100
            && arrived.delivered + arrived.errors + arrived.no_ports >= sent
            && arrived.delivered >= sent / 2
            && arrived.tftp_errors > 0,
        "hostile datagrams did not reach ports 67 and 69, or TFTP never answered: {arrived:?}"
    );
    ensure!(
        serve.running()?,
        "serve died under {sent} hostile datagrams (seed {seed})\n{}",
        serve.log()
    );
    lab::set_mac(&machine, NODE_MAC)?;
    let after = lab
        .udhcpc(&machine, "pxe-after-noise", lab::PXE_BIOS)
        .with_context(|| {
            format!(
                "after {sent} hostile datagrams (seed {seed})\n{}",
                serve.log()
            )
        })?;
    ensure!(
        after.ip()? == node_ip && after.boot_file()? == BIOS_FILE,
        "after hostile traffic the node got {after:?}, before {node_ip} with {BIOS_FILE}"
    );
    let url = format!("tftp://{SERVER_IP}/{BIOS_FILE}");
    let (done, got) = lab.tftp_get(&machine, &url, &[])?;
    ensure!(
        done.success() && got == files.bios,
        "after hostile traffic {url} returned {} bytes (seed {seed}): {done}\n{}",
        got.len(),
        serve.log()
    );
    ensure!(
        serve.running()? && !serve.log().contains("panicked"),
        "serve panicked under hostile traffic (seed {seed})\n{}",
        serve.log()
    );
    println!("{test}: hostile datagrams to 67 and 69 (seed {seed}): {arrived:?}; still answering");

    // udhcpc's script flushed the NIC's addresses, the IPv6 link-local one too: down
    // and up again (set_mac) makes a new one to solicit from.
    lab::set_mac(&machine, NODE_MAC)?;
    router_advertisement(&machine).with_context(|| serve.log())?;

    // A restart reads the lease file: the stranger asks first, so an empty table
    // would hand it the node's old address.
    serve.stop()?;
    let serve = lab.data.serve_with(&opts)?;
    lab::set_mac(&machine, STRANGER_MAC)?;
    let again = lab
        .udhcpc(&machine, "stranger-after-restart", lab::PXE_BIOS)
        .with_context(|| serve.log())?;
    ensure!(
        again.ip()? == stranger_ip,
        "after restart the stranger got {again:?}, before {stranger_ip}"
    );
    lab::set_mac(&machine, NODE_MAC)?;
    let again = lab
        .udhcpc(&machine, "pxe-after-restart", lab::PXE_BIOS)
        .with_context(|| serve.log())?;
    ensure!(
        again.ip()? == node_ip && again.boot_file()? == BIOS_FILE,
        "after restart the node got {again:?}, before {node_ip} with {BIOS_FILE}"
    );
    serve.stop()?;
    println!("{test}: passed in {:.1}s", start.elapsed().as_secs_f64());
    Ok(())
}

fn in_pool(lease: &Lease) -> Result<Ipv4Addr> {
    let ip = lease.ip()?;
    ensure!(
        (POOL.0..=POOL.1).contains(&ip),
        "{ip} is outside the pool {}-{}: {lease:?}",
        POOL.0,
        POOL.1
    );
    Ok(ip)
}

/// The registered machine as each firmware it may run: BIOS PXE and UEFI x64 PXE
/// get an iPXE binary over TFTP from this server, UEFI HTTP boot gets its URL (which
/// serves the same binary), iPXE gets the script URL; always the same address.
/// `--ipv6-ra` (on with `--dhcp full`): a router solicitation from the machine gets the
/// advertisement that configures nothing, which is what ends iPXE's wait for an IPv6
/// router. rdisc6 (ndisc6) solicits and prints what came back.
fn router_advertisement(machine: &NetNs) -> Result<()> {
    // A fresh namespace's link-local address is tentative for a second or
    // two (duplicate address detection); rdisc6 cannot solicit before.
    let deadline = Instant::now() + std::time::Duration::from_secs(15);
    let out = loop {
        let out = machine
            .command("rdisc6")
            .args(["-1", "-w", "1500", "-r", "2", lab::NIC])
            .output()
            .context("running rdisc6")?;
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "no router advertisement: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.split_whitespace().next().unwrap_or_default().to_string())
    };
    for (name, want) in [
        ("Stateful address conf.", "No"),
        ("Stateful other conf.", "No"),
        ("Router lifetime", "0"),
    ] {
        ensure!(
            field(name).as_deref() == Some(want),
            "{name} is not {want} in: {text}"
        );
    }
    ensure!(
        !text.contains("Prefix"),
        "the advertisement carries a prefix: {text}"
    );
    println!("router solicitation answered: not a router, nothing to configure");
    Ok(())
}

fn firmware_stages(lab: &Lab, machine: &NetNs, serve: &Serve) -> Result<Ipv4Addr> {
    let bios = lab.udhcpc(machine, "pxe-bios", lab::PXE_BIOS)?;
    let node_ip = in_pool(&bios)?;
    ensure!(
        bios.boot_file()? == BIOS_FILE,
        "BIOS client was not offered {BIOS_FILE}: {bios:?}"
    );
    ensure!(
        bios.addr("siaddr")? == SERVER && bios.addr("serverid")? == SERVER,
        "next-server / server id is not {SERVER_IP}: {bios:?}"
    );

    for (label, flags) in [
        ("uefi-x64-7", lab::PXE_UEFI_X64),
        ("uefi-x64-9", lab::PXE_UEFI_X64_9),
    ] {
        let uefi = lab.udhcpc(machine, label, flags)?;
        ensure!(
            uefi.boot_file()? == EFI_FILE && uefi.addr("siaddr")? == SERVER,
            "{label}: UEFI x64 client was not offered {EFI_FILE} from {SERVER_IP}: {uefi:?}"
        );
        ensure!(
            uefi.ip()? == node_ip,
            "{label}: address changed: {uefi:?}, first {node_ip}"
        );
    }

    let http = lab.udhcpc(machine, "uefi-http", lab::HTTP_UEFI_X64)?;
    let efi_url = http.boot_file()?;
    let efi_prefix = format!("http://{SERVER_IP}:{}/", serve.http_port());
    ensure!(
        efi_url.starts_with(&efi_prefix) && efi_url.ends_with(&format!("/ipxe/{EFI_FILE}")),
        "UEFI HTTP client was not offered {efi_prefix}…/ipxe/{EFI_FILE}: {http:?}"
    );
    ensure!(
        http.get("vendor") == "HTTPClient",
        "vendor class HTTPClient was not echoed (firmware ignores the offer): {http:?}"
    );
    ensure!(
        http.ip()? == node_ip,
        "HTTP boot: address changed: {http:?}"
    );
    let (status, body) = lab.http_get(machine, efi_url)?;
    let served = std::fs::read(lab.dir.path().join("tftp").join(EFI_FILE))?;
    ensure!(
        status == 200 && body == served,
        "GET {efi_url} (the UEFI HTTP boot URL): {status}, {} bytes; the TFTP directory's {EFI_FILE} has {}",
        body.len(),
        served.len()
    );

    let ipxe = lab.udhcpc(machine, "ipxe", lab::IPXE)?;
    let script_url = format!("http://{SERVER_IP}:{}/boot.ipxe", serve.http_port());
    ensure!(
        ipxe.get("bootfile") == script_url,
        "iPXE client was not offered {script_url}: {ipxe:?}"
    );
    ensure!(
        ipxe.ip()? == node_ip,
        "iPXE: address changed: {ipxe:?}, first {node_ip}"
    );
    println!(
        "node {NODE_MAC}: {node_ip}; BIOS {BIOS_FILE}, UEFI {EFI_FILE}, HTTP boot {efi_url}, iPXE {script_url}"
    );
    Ok(node_ip)
}

/// Byte-exact reads at RFC 1350's 512-byte blocks (no options at all) and at 1428
/// (negotiated, RFC 2348); escapes from the boot directory refused with a TFTP error.
fn tftp(lab: &Lab, machine: &NetNs, files: &Files) -> Result<()> {
    let url = |name: &str| format!("tftp://{SERVER_IP}/{name}");
    for (name, want, args) in [
        (BIOS_FILE, &files.bios, &["--tftp-no-options"][..]),
        (EVEN_FILE, &files.even, &["--tftp-no-options"][..]),
        (EFI_FILE, &files.efi, &["--tftp-blksize", "1428"][..]),
        (BIOS_FILE, &files.bios, &["--tftp-blksize", "1428"][..]),
    ] {
        let (done, got) = lab.tftp_get(machine, &url(name), args)?;
        ensure!(
            done.success() && got == *want,
            "{} {args:?}: {} bytes, {} served\n{done}",
            url(name),
            got.len(),
            want.len()
        );
        if args.contains(&"1428") {
            ensure!(
                done.stderr.contains("blksize parsed from OACK (1428)"),
                "{}: the server did not acknowledge blksize 1428\n{done}",
                url(name)
            );
        }
    }
    // curl's exit codes for a TFTP ERROR: 68 file not found, 69 access violation.
    for path in [
        "../etc/passwd",
        "/etc/passwd",
        "../secret",
        "a/../../secret",
        "./../secret",
        "tftp/../../secret",
    ] {
        let (done, got) = lab.tftp_get(machine, &url(path), &[])?;
        let code = done.status.code();
        ensure!(
            matches!(code, Some(68 | 69)) && got.is_empty(),
            "{}: expected a TFTP error and no data, got exit {code:?} and {} bytes\n{done}",
            url(path),
            got.len()
        );
    }
    println!("tftp: 512 and 1428-byte blocks byte-identical; ../ refused");
    Ok(())
}
