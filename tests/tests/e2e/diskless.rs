//! Diskless boot end to end: TCG guests on a private bridge get their addresses and
//! scripts from `bootd serve --dhcp full`, `sanboot` their own overlays of the golden image
//! (built by `tests/guest/build-golden.sh`), boot its Linux, attach the same disk again
//! through the iBFT and leave a marker on it.
//!
//! BIOS: two guests with iPXE's e1000 ROM at the same time. Booted again, each finds its
//! own marker and never the other's; the golden image is never written; after `node
//! reset` a node boots clean while the other keeps its state.
//!
//! Proxy: the same two BIOS guests beside dnsmasq, the site's DHCP server (addresses
//! only): iPXE takes its address from dnsmasq and the script URL from bootd's proxy offer.
//!
//! UEFI: OVMF's own PXE client loads `snponly.efi` over TFTP (port 69), which runs the
//! same script; iPXE's EFI sanboot starts systemd-boot from the same image.
//!
//! After every boot, `node show --json` must list that boot's stages in order (DHCP,
//! TFTP, iPXE's DHCP, the script, the logins and logouts) and serve must have logged a
//! `boot NODE STAGE +T.TTs` line for each; the tests print them.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bootd_tests::disk::sha256;
use bootd_tests::diskless::{
    boot_together, check_boot_stages, last_boot, now_ms, show_stages, Firmware, Lan, LanServe,
    PxeBoot, SiteDhcp,
};
use bootd_tests::env::{e2e_required, Needs};
use bootd_tests::export::Server;
use bootd_tests::golden::{self, marker_field, GoldenImage, Markers};
use bootd_tests::guest::{self, Outcome};
use bootd_tests::netns::NetNs;
use bootd_tests::serve::{DataDir, Fields, Node, ServeOptions};

const SERVER_IP: &str = "192.0.2.1";
const POOL: &str = "192.0.2.100-192.0.2.120";
/// Device names live inside the namespace, so they cannot collide between runs.
const BRIDGE: &str = "lan0";
/// Name, MAC and tap of each machine.
const MACHINES: [(&str, &str, &str); 2] = [
    ("n1", "52:54:00:d1:5c:01", "tap1"),
    ("n2", "52:54:00:d1:5c:02", "tap2"),
];
/// Name, MAC and tap of the UEFI machine.
const UEFI_MACHINE: (&str, &str, &str) = ("u1", "52:54:00:d1:5c:11", "tap1");
/// One boot (DHCP, script, sanboot, boot loader, Linux, iscsistart, marker, logout) takes
/// about 35-40 s for two BIOS guests at once and 45 s for a UEFI one (whose firmware PXE
/// and TFTP come first) under TCG here, with all three running together; the init's own
/// steps time out well within this.
const BOOT_LIMIT: Duration = Duration::from_secs(150);
/// The site's DHCP server (dnsmasq) beside bootd's proxy, and the addresses it leases.
const SITE_CIDR: &str = "192.0.2.2/24";
const SITE_RANGE: (&str, &str) = ("192.0.2.50", "192.0.2.60");
/// A BIOS boot as serve sees it: the e1000 ROM is iPXE already (no firmware DHCP, no
/// TFTP), then the script, then three logins: iPXE's sanboot session, Linux's
/// `iscsistart -b` session, and that session's second login when iscsid adopts it (open-iscsi
/// reconnects a session it did not create) so that `iscsiadm` can log it out.
const BIOS_STAGES: &[&str] = &[
    "ipxe-dhcp",
    "script",
    "iscsi-login-1",
    "iscsi-login-2",
    "iscsi-login-3",
];
/// Through bootd's proxy beside dnsmasq the stages are the same: iPXE takes its address
/// from dnsmasq's offer and the script URL from bootd's proxy offer.
const PROXY_STAGES: &[&str] = BIOS_STAGES;
/// A UEFI boot: OVMF's PXE DHCP and TFTP of snponly.efi come first.
const UEFI_STAGES: &[&str] = &[
    "dhcp",
    "tftp",
    "ipxe-dhcp",
    "script",
    "iscsi-login-1",
    "iscsi-login-2",
    "iscsi-login-3",
];

#[test]
fn two_bios_guests_sanboot_their_own_overlays() -> Result<()> {
    let test = "two_bios_guests_sanboot_their_own_overlays";
    if !can_run(test, Firmware::Bios) {
        return Ok(());
    }
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let Fleet {
        data,
        golden_path,
        golden_sum,
        nodes,
    } = Fleet::new(test, &MACHINES.map(|(name, mac, _)| (name, mac)))?;

    let ns = NetNs::new()?;
    let lan = Lan::new(&ns, BRIDGE, &format!("{SERVER_IP}/24"))?;
    for (_, _, tap) in MACHINES {
        lan.add_tap(tap)?;
    }
    let serve = lan.serve_full(&data, SERVER_IP, POOL, &[])?;
    let log = || serve.log();
    let round = |what: &str| -> Result<Vec<Markers>> {
        bios_round(
            test,
            what,
            &ns,
            dir.path(),
            &data,
            &nodes,
            BIOS_STAGES,
            &log,
        )
    };

    // First boot: a clean disk each, a marker each that names the node that wrote it.
    let first = round("boot1")?;
    first_boot_clean(test, &nodes, &first)?;

    // Second boot: each finds its own marker, never the other's.
    let second = round("boot2")?;
    second_boot_own(test, &nodes, &first, &second)?;
    for (node, m) in nodes.iter().zip(&second) {
        ensure!(
            marker_field(&m.wrote, "boot") == Some("2"),
            "{}: second marker {:?} does not count boot 2",
            node.name,
            m.wrote
        );
    }
    ensure!(
        sha256(&golden_path)? == golden_sum,
        "the golden image {} changed while nodes wrote to their disks",
        golden_path.display()
    );

    // Reset n1 while serve runs: n1 boots clean, n2 keeps its state.
    data.run(&["node", "reset", &nodes[0].name])?;
    let third = round("boot3")?;
    ensure!(
        third[0].previous.is_none(),
        "{} found {:?} after node reset, expected a clean disk",
        nodes[0].name,
        third[0].previous
    );
    ensure!(
        third[1].previous.as_deref() == Some(second[1].wrote.as_str()),
        "{} found {:?} after the other node's reset, expected its own {:?}",
        nodes[1].name,
        third[1].previous,
        second[1].wrote
    );
    println!(
        "{test}: boot3: {} clean after reset, {} kept its marker",
        nodes[0].name, nodes[1].name
    );

    // serve must flush the overlays and exit 0.
    serve.stop().context("stopping serve")?;
    ensure!(
        sha256(&golden_path)? == golden_sum,
        "the golden image {} changed",
        golden_path.display()
    );
    println!("{test}: passed in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

#[test]
fn two_bios_guests_boot_through_the_proxy_beside_dnsmasq() -> Result<()> {
    let test = "two_bios_guests_boot_through_the_proxy_beside_dnsmasq";
    if !can_run(test, Firmware::Bios) {
        return Ok(());
    }
    if !Needs::new().tool(SiteDhcp::BIN, "dnsmasq-base").met(test) {
        return Ok(());
    }
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let Fleet {
        data,
        golden_path,
        golden_sum,
        nodes,
    } = Fleet::new(test, &MACHINES.map(|(name, mac, _)| (name, mac)))?;

    let ns = NetNs::new()?;
    let lan = Lan::new(&ns, BRIDGE, &format!("{SERVER_IP}/24"))?;
    for (_, _, tap) in MACHINES {
        lan.add_tap(tap)?;
    }
    let mut site = SiteDhcp::start(&lan, SITE_CIDR, SITE_RANGE.0, SITE_RANGE.1, dir.path())?;
    let serve = data.serve_with(&ServeOptions {
        netns: Some(&ns),
        listen_ip: SERVER_IP.to_string(),
        extra: ["--dhcp", "proxy", "--interface", lan.bridge()]
            .map(String::from)
            .to_vec(),
    })?;
    let log = || format!("{}\n{}", serve.log(), site.log());
    let round = |what: &str| -> Result<Vec<Markers>> {
        bios_round(
            test,
            what,
            &ns,
            dir.path(),
            &data,
            &nodes,
            PROXY_STAGES,
            &log,
        )
    };

    let first = round("boot1")?;
    first_boot_clean(test, &nodes, &first)?;
    // The addresses came from the site's server: the iBFT iPXE wrote carries them.
    let range = (SITE_RANGE.0.parse::<Ipv4Addr>()?)..=(SITE_RANGE.1.parse::<Ipv4Addr>()?);
    for node in &nodes {
        let console =
            std::fs::read_to_string(dir.path().join(format!("{}.boot1.console", node.name)))?;
        let ip = ibft_ip(&console)
            .with_context(|| format!("{}: no iBFT address\n{console}", node.name))?;
        ensure!(
            range.contains(&ip),
            "{} booted with {ip}, not an address of dnsmasq's {range:?}\n{}",
            node.name,
            log()
        );
        println!("{test}: boot1: {} had {ip} from dnsmasq", node.name);
    }

    let second = round("boot2")?;
    second_boot_own(test, &nodes, &first, &second)?;
    ensure!(site.running()?, "dnsmasq exited\n{}", site.log());
    serve.stop().context("stopping serve")?;
    ensure!(
        sha256(&golden_path)? == golden_sum,
        "the golden image {} changed",
        golden_path.display()
    );
    println!("{test}: passed in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// First boot: a clean disk each, a marker each.
fn first_boot_clean(test: &str, nodes: &[Node], first: &[Markers]) -> Result<()> {
    for (node, m) in nodes.iter().zip(first) {
        ensure!(
            m.previous.is_none(),
            "{} found a marker on its first boot: {m:?}",
            node.name
        );
        println!("{test}: boot1: {} wrote {}", node.name, m.wrote);
    }
    Ok(())
}

/// Second boot: each node finds the marker it wrote, never the other's.
fn second_boot_own(
    test: &str,
    nodes: &[Node],
    first: &[Markers],
    second: &[Markers],
) -> Result<()> {
    for (i, (node, m)) in nodes.iter().zip(second).enumerate() {
        ensure!(
            m.previous.as_deref() == Some(first[i].wrote.as_str()),
            "{} found {:?} on its second boot, expected its own {:?} (the other wrote {:?})",
            node.name,
            m.previous,
            first[i].wrote,
            first[1 - i].wrote
        );
        println!("{test}: boot2: {} found its own marker", node.name);
    }
    Ok(())
}

/// The address in the golden init's `ibft ... ip=A.B.C.D/MASK` report.
fn ibft_ip(console: &str) -> Option<Ipv4Addr> {
    let line = console.lines().find(|l| l.contains("BOOTD-E2E: ibft "))?;
    let ip = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ip="))?;
    ip.split('/').next()?.parse().ok()
}

/// Powers both BIOS machines on at once and waits for both; checks each node's last boot
/// (`want`, stage by stage) and returns the markers each reported.
#[allow(clippy::too_many_arguments)]
fn bios_round(
    test: &str,
    what: &str,
    ns: &NetNs,
    dir: &Path,
    data: &DataDir,
    nodes: &[Node],
    want: &[&str],
    serve_log: &dyn Fn() -> String,
) -> Result<Vec<Markers>> {
    let boots: Vec<PxeBoot> = MACHINES
        .iter()
        .map(|(name, mac, tap)| PxeBoot {
            firmware: Firmware::Bios,
            tap: tap.to_string(),
            mac: mac.to_string(),
            console: dir.join(format!("{name}.{what}.console")),
            limit: BOOT_LIMIT,
            memory_mib: 512,
            default_devices: true,
        })
        .collect();
    let since = now_ms();
    let outcomes = boot_together(ns, &boots)?;
    let markers = nodes
        .iter()
        .zip(&outcomes)
        .map(|(node, o)| {
            println!(
                "{test}: {what}: {} powered off after {:.1}s",
                node.name,
                o.elapsed.as_secs_f64()
            );
            markers_of(node, o).with_context(|| format!("{what}\n{}", serve_log()))
        })
        .collect::<Result<Vec<_>>>()?;
    for node in nodes {
        check_stages(test, what, data, node, want, since, serve_log)?;
    }
    Ok(markers)
}

/// Prints `node`'s last boot and checks it against `want` (see [`check_boot_stages`]).
fn check_stages(
    test: &str,
    what: &str,
    data: &DataDir,
    node: &Node,
    want: &[&str],
    since_ms: i64,
    serve_log: &dyn Fn() -> String,
) -> Result<()> {
    let stages = last_boot(data, &node.name)?;
    println!(
        "{test}: {what}: {}'s boot stages:\n{}",
        node.name,
        show_stages(&stages).trim_end()
    );
    let log = serve_log();
    check_boot_stages(&node.name, &stages, want, since_ms, &log)
        .with_context(|| format!("{what}: {}'s boot stages\n{log}", node.name))?;
    // The third login is iscsid taking over the OS's session: the same ISID (the
    // first word of the detail) as the second.
    let isid = |stage: &str| {
        stages
            .iter()
            .find(|s| s.stage == stage)
            .and_then(|s| s.detail.split_whitespace().next())
    };
    ensure!(
        isid("iscsi-login-3").is_some() && isid("iscsi-login-3") == isid("iscsi-login-2"),
        "{what}: {}'s third login is not the OS's session again\n{}",
        node.name,
        show_stages(&stages)
    );
    Ok(())
}

/// The markers a node's boot reported; each one it wrote names this node and its MAC.
fn markers_of(node: &Node, outcome: &Outcome) -> Result<Markers> {
    let m = Markers::of(outcome).with_context(|| format!("node {}", node.name))?;
    ensure!(
        marker_field(&m.wrote, "node") == Some(node.initiator_iqn.as_str())
            && marker_field(&m.wrote, "mac") == Some(node.mac.as_str()),
        "{} wrote {:?}: not its initiator {} and MAC {}\n{outcome}",
        node.name,
        m.wrote,
        node.initiator_iqn,
        node.mac
    );
    Ok(m)
}

#[test]
fn uefi_guest_boots_through_the_efi_path() -> Result<()> {
    let test = "uefi_guest_boots_through_the_efi_path";
    if !can_run(test, Firmware::Uefi) {
        return Ok(());
    }
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let Fleet {
        data,
        golden_path,
        golden_sum,
        nodes,
    } = Fleet::new(test, &[(UEFI_MACHINE.0, UEFI_MACHINE.1)])?;
    let node = &nodes[0];

    let ns = NetNs::new()?;
    let lan = Lan::new(&ns, BRIDGE, &format!("{SERVER_IP}/24"))?;
    lan.add_tap(UEFI_MACHINE.2)?;
    let serve = LanServe::start(
        &ns,
        &lan,
        data.path(),
        SERVER_IP,
        POOL,
        "info",
        dir.path().join("serve.log"),
    )?;
    let boot = |what: &str| -> Result<Markers> {
        let console: PathBuf = dir.path().join(format!("{what}.console"));
        let since = now_ms();
        let outcome = boot_together(
            &ns,
            &[PxeBoot {
                firmware: Firmware::Uefi,
                tap: UEFI_MACHINE.2.to_string(),
                mac: UEFI_MACHINE.1.to_string(),
                console,
                limit: BOOT_LIMIT,
                memory_mib: 512,
                default_devices: true,
            }],
        )?
        .into_iter()
        .next()
        .context("no outcome for the one machine booted")?;
        println!(
            "{test}: {what}: {} powered off after {:.1}s",
            node.name,
            outcome.elapsed.as_secs_f64()
        );
        // The firmware's own PXE client was offered the UEFI x64 binary, not a script.
        ensure!(
            outcome.console.contains("NBP filename is snponly.efi"),
            "{what}: OVMF's PXE client did not load snponly.efi\n{outcome}\n{}",
            serve.log()
        );
        let markers =
            markers_of(node, &outcome).with_context(|| format!("{what}\n{}", serve.log()))?;
        check_stages(test, what, &data, node, UEFI_STAGES, since, &|| serve.log())?;
        Ok(markers)
    };

    let first = boot("boot1")?;
    ensure!(
        first.previous.is_none(),
        "{} found a marker on its first boot: {first:?}",
        node.name
    );
    println!("{test}: boot1: {} wrote {}", node.name, first.wrote);
    let second = boot("boot2")?;
    ensure!(
        second.previous.as_deref() == Some(first.wrote.as_str()),
        "{} found {:?} on its second boot, expected {:?}",
        node.name,
        second.previous,
        first.wrote
    );
    println!("{test}: boot2: {} found its own marker", node.name);

    serve.stop()?;
    ensure!(
        sha256(&golden_path)? == golden_sum,
        "the golden image {} changed",
        golden_path.display()
    );
    println!("{test}: passed in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// A data directory with the golden image imported and the machines registered.
struct Fleet {
    data: DataDir,
    /// The stored golden image (as `image list --json` names it) and its SHA-256.
    golden_path: PathBuf,
    golden_sum: String,
    nodes: Vec<Node>,
}

impl Fleet {
    fn new(test: &str, machines: &[(&str, &str)]) -> Result<Self> {
        let started = Instant::now();
        let image = GoldenImage::build()?;
        println!(
            "{test}: golden image {} ready in {:.1}s",
            image.path.display(),
            started.elapsed().as_secs_f64()
        );
        let data = DataDir::new()?;
        data.import("golden", &image.path)?;
        let stored = data.image("golden")?;
        let golden_path = Path::new(stored.str_field("path")?).to_path_buf();
        let golden_sum = sha256(&golden_path)?;
        let nodes = machines
            .iter()
            .map(|(name, mac)| data.add_node(mac, "golden", name))
            .collect::<Result<Vec<Node>>>()?;
        Ok(Self {
            data,
            golden_path,
            golden_sum,
            nodes,
        })
    }
}

/// Whether everything the test needs is there; skips (or fails under `BOOTD_E2E=1`) if not.
fn can_run(test: &str, firmware: Firmware) -> bool {
    if Server::from_env() != Server::Bootd {
        println!("{test}: skipped: serve is bootd's own (BOOTD_TEST_TARGET)");
        return false;
    }
    let mut needs = Needs::new().root().server();
    for (tool, package) in guest::TOOLS.iter().chain(golden::TOOLS) {
        needs = needs.tool(tool, package);
    }
    if !needs.met(test) {
        return false;
    }
    match firmware.missing() {
        None => true,
        Some(why) if e2e_required() => {
            panic!("{test}: BOOTD_E2E=1 but {why} (scripts/install-test-deps.sh installs it)")
        }
        Some(why) => {
            println!("{test}: skipped: {why}");
            false
        }
    }
}
