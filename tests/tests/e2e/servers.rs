//! Three `bootd serve --server-id` processes in network namespaces on one bridge share a
//! PostgreSQL registry (started by the test, reached through its Unix socket) and one data
//! directory. Nodes added through the CLI boot from the server that owns them, and a
//! login sent to a server that does not own the node is redirected there (iSCSI login
//! status 0x0101 "target moved temporarily", TargetAddress `IP:PORT,TPGT`) and succeeds:
//!
//! - iPXE in a BIOS TCG guest: the node's script (an operator template) names a server
//!   that does not own it, as a script rendered before a move would; iPXE follows the
//!   redirect, sanboots the golden image from the owner, whose Linux logs in again
//!   through the iBFT (which records the owner) and writes its marker.
//! - The Linux kernel initiator in a TCG guest: `iscsistart` against a non-owner's
//!   portal; raw I/O and ext4 on the disk it reaches through the redirect.
//! - libiscsi (QEMU's iSCSI driver) is covered by `bootd/tests/cli/servers.rs`
//!   (`three_servers_share_one_postgres_registry`), without guests.
//!
//! Each time the owner, and only the owner, holds the session: `server list --json`
//! sampled while the guest runs, the boot stages the owner logged, and the redirecting
//! server's log line for the redirect.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bootd_tests::diskless::{
    check_boot_stages, now_ms, show_stages, BootStage, Firmware, Lan, PxeBoot, PxeGuest,
};
use bootd_tests::env::{e2e_required, Needs};
use bootd_tests::export::Server;
use bootd_tests::fleet::{Peer, SharedRegistry};
use bootd_tests::golden::{self, marker_field, GoldenImage, Markers};
use bootd_tests::guest::{self, Boot, GuestImage};
use bootd_tests::netns::NetNs;
use bootd_tests::postgres::shared;
use bootd_tests::serve::Fields;

const POOL: &str = "192.0.2.100-192.0.2.120";
/// Every server listens for iSCSI on this port at its own address.
const ISCSI_PORT: &str = "3260";
const PXE: (&str, &str, &str) = ("pxe1", "52:54:00:d1:5e:01", "tap1");
const KERNEL: (&str, &str) = ("kern1", "tap2");
/// The kernel guest's own address (outside the pool).
const KERNEL_IP: &str = "192.0.2.50/24";
/// One BIOS boot (iPXE, redirect, sanboot, Linux, iscsistart, marker) takes about 40 s
/// under TCG here; the kernel guest about 20 s.
const BOOT_LIMIT: Duration = Duration::from_secs(150);
const GUEST_LIMIT: Duration = Duration::from_secs(120);
/// iPXE's session, Linux's `iscsistart -b` session, and iscsid's login of that session.
const BIOS_STAGES: &[&str] = &[
    "ipxe-dhcp",
    "script",
    "iscsi-login-1",
    "iscsi-login-2",
    "iscsi-login-3",
];
/// The golden image is 96 MiB: the kernel guest's ext4 and pattern fit below that.
const KERNEL_FS_MIB: u64 = 48;
const KERNEL_PATTERN: &str = "64:8";

/// The built-in sanboot template with another server's portal in place of the owner's.
fn wrong_portal_script(ip: &str) -> String {
    format!(
        "#!ipxe\n\
         set initiator-iqn {{{{ initiator_iqn }}}}\n\
         set username {{{{ chap_user }}}}\n\
         set password {{{{ chap_secret }}}}\n\
         echo bootd-e2e: sanboot via {ip}:{ISCSI_PORT}, not the owner\n\
         sanboot iscsi:{ip}::{ISCSI_PORT}:0:{{{{ target_iqn }}}} || goto failed\n\
         :failed\n\
         echo bootd-e2e: sanboot failed\n\
         reboot\n"
    )
}

#[test]
fn logins_at_the_wrong_server_are_redirected_to_the_owner() -> Result<()> {
    let test = "logins_at_the_wrong_server_are_redirected_to_the_owner";
    if !can_run(test) {
        return Ok(());
    }
    let Some(pg) = shared(test) else {
        return Ok(());
    };
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let golden_image = GoldenImage::build()?;
    let guest_image = GuestImage::build()?;
    let reg = SharedRegistry::fresh(pg)?;
    let golden_path = golden_image.path.to_str().context("golden path")?;
    reg.run(&["image", "import", "golden", golden_path])?;
    let disk_bytes = std::fs::metadata(&golden_image.path)?.len();

    let lan_ns = NetNs::new()?;
    let lan = Lan::new(&lan_ns, "lan0", "192.0.2.254/24")?;
    lan.add_tap(PXE.2)?;
    lan.add_tap(KERNEL.1)?;
    let hosts = (1..=3)
        .map(|n| lan.add_host(&format!("p{n}"), "eth0", &format!("192.0.2.{n}/24")))
        .collect::<Result<Vec<NetNs>>>()?;
    let ip = |id: &str| format!("192.0.2.{}", id.trim_start_matches('s'));

    // pxe1 will be pinned to s2; its script sends iPXE to s3.
    let script = dir.path().join("wrong-portal.ipxe");
    std::fs::write(&script, wrong_portal_script(&ip("s3")))?;
    let script = script.to_str().context("script path")?;
    reg.run(&[
        "template",
        "add",
        "wrong-portal",
        "--image",
        "golden",
        "--script",
        script,
    ])?;
    reg.run(&[
        "node",
        "add",
        PXE.1,
        "--template",
        "wrong-portal",
        "--name",
        PXE.0,
    ])?;
    reg.run(&[
        "node",
        "add",
        "52:54:00:d1:5e:02",
        "--image",
        "golden",
        "--name",
        KERNEL.0,
    ])?;
    let mut peers: Vec<Peer> = Vec::new();
    for (n, ns) in (1..=3).zip(&hosts) {
        let id = format!("s{n}");
        let mut extra = vec!["--iscsi-port", ISCSI_PORT];
        // One DHCP server is enough for one LAN; any server answers HTTP. Its
        // router advertisements (on with --dhcp full) end iPXE's IPv6
        // configuration at once instead of after its 15 s wait.
        if n == 1 {
            extra.extend(["--dhcp", "full", "--interface", "eth0", "--pool", POOL]);
        }
        peers.push(reg.serve(ns, &id, &ip(&id), &extra)?);
    }
    let logs = || peers.iter().map(Peer::log).collect::<Vec<_>>().join("\n");
    // A pin names a registered server: once s2 is up.
    reg.run(&["node", "move", PXE.0, "--server", "s2"])?;
    let settled = Instant::now();
    loop {
        let live = reg
            .servers()?
            .values()
            .filter(|s| s["live"] == true)
            .count();
        let pxe = reg.owner(PXE.0)?;
        let kernel = reg.owner(KERNEL.0)?;
        if live == 3 && pxe.as_deref() == Some("s2") && kernel.is_some() {
            break;
        }
        ensure!(
            settled.elapsed() < Duration::from_secs(30),
            "servers not settled: {live} live, {} on {pxe:?}, {} on {kernel:?}\n{}",
            PXE.0,
            KERNEL.0,
            logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "{test}: 3 servers live, {} on s2 (pinned), {} on {:?}, {:.1}s after the first started",
        PXE.0,
        KERNEL.0,
        reg.owner(KERNEL.0)?,
        settled.elapsed().as_secs_f64()
    );

    // iPXE: logs in at s3, is redirected to s2, boots the golden image from there.
    let pxe_node = reg.json(&["node", "show", PXE.0, "--json"])?;
    let since = now_ms();
    let (outcome, sessions) = sampling(&reg, || {
        let guest = PxeGuest::start(
            &lan_ns,
            &PxeBoot {
                firmware: Firmware::Bios,
                tap: PXE.2.to_string(),
                mac: PXE.1.to_string(),
                console: dir.path().join("pxe1.console"),
                limit: BOOT_LIMIT,
                memory_mib: 512,
                default_devices: true,
            },
        )?;
        guest.wait()
    })?;
    println!(
        "{test}: {} powered off after {:.1}s; peak sessions per server {sessions:?}",
        PXE.0,
        outcome.elapsed.as_secs_f64()
    );
    ensure!(
        outcome
            .console
            .contains(&format!("sanboot via {}:{ISCSI_PORT}", ip("s3"))),
        "the script did not send iPXE to s3\n{outcome}"
    );
    let markers = Markers::of(&outcome).with_context(logs)?;
    ensure!(
        marker_field(&markers.wrote, "node") == Some(pxe_node.str_field("initiator_iqn")?),
        "{} wrote {:?}\n{outcome}",
        PXE.0,
        markers.wrote
    );
    redirected(&peers, "s3", "s2", PXE.0, &sessions)?;
    let stages = last_boot(&reg, PXE.0)?;
    println!(
        "{test}: {}'s boot stages:\n{}",
        PXE.0,
        show_stages(&stages).trim_end()
    );
    check_boot_stages(PXE.0, &stages, BIOS_STAGES, since, &logs())
        .with_context(|| format!("{}'s boot stages\n{}", PXE.0, logs()))?;

    // The kernel initiator: iscsistart at a server that does not own kern1. Not s2,
    // which may still count iPXE's abandoned session.
    let owner = reg.owner(KERNEL.0)?.context("kern1 has no owner")?;
    let wrong = ["s1", "s3", "s2"]
        .into_iter()
        .find(|s| *s != owner)
        .context("no other server")?;
    let node = reg.json(&["node", "show", KERNEL.0, "--json"])?;
    let (outcome, sessions) = sampling(&reg, || {
        guest::boot(
            &lan_ns,
            &Boot {
                image: &guest_image,
                tap: KERNEL.1,
                params: vec![
                    format!("bootd.ip={KERNEL_IP}"),
                    format!("bootd.portal={}:{ISCSI_PORT}", ip(wrong)),
                    format!("bootd.iqn={}", node.str_field("target_iqn")?),
                    format!("bootd.initiator={}", node.str_field("initiator_iqn")?),
                    format!(
                        "bootd.chap={}:{}",
                        node.str_field("chap_user")?,
                        node.str_field("chap_secret")?
                    ),
                    format!("bootd.size={disk_bytes}"),
                    format!("bootd.token=r{:x}", std::process::id()),
                    format!("bootd.pattern={KERNEL_PATTERN}"),
                    format!("bootd.fs_mib={KERNEL_FS_MIB}"),
                ],
                console: dir.path().join("kern1.console"),
                limit: GUEST_LIMIT,
            },
        )
    })?;
    println!(
        "{test}: {} (kernel initiator, portal {wrong}, owner {owner}) finished in {:.1}s; peak sessions per server {sessions:?}",
        KERNEL.0,
        outcome.elapsed.as_secs_f64()
    );
    if !outcome.passed() {
        bail!("the kernel guest did not pass\n{outcome}\n{}", logs());
    }
    for step in ["login ok", "raw read-back ok", "filesystem ok", "logout ok"] {
        ensure!(
            outcome.mark(step).is_some(),
            "no {step:?} report\n{outcome}"
        );
    }
    redirected(&peers, wrong, &owner, KERNEL.0, &sessions)?;
    let stages = last_boot(&reg, KERNEL.0)?;
    println!(
        "{test}: {}'s logins:\n{}",
        KERNEL.0,
        show_stages(&stages).trim_end()
    );

    for p in peers {
        p.stop()?;
    }
    println!("{test}: passed in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Runs `f` (a guest) while sampling every server's live sessions; the peak per server.
fn sampling<T: Send>(
    reg: &SharedRegistry,
    f: impl FnOnce() -> Result<T> + Send,
) -> Result<(T, BTreeMap<String, u64>)> {
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let sampler = s.spawn(|| -> Result<BTreeMap<String, u64>> {
            let mut peak = BTreeMap::new();
            while !done.load(Ordering::Relaxed) {
                for (id, v) in reg.servers()? {
                    let n = v["sessions"].as_u64().unwrap_or(0);
                    let e = peak.entry(id).or_insert(0);
                    *e = (*e).max(n);
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            Ok(peak)
        });
        let out = f();
        done.store(true, Ordering::Relaxed);
        let peak = sampler
            .join()
            .map_err(|_| anyhow::anyhow!("sampler panicked"))??;
        Ok((out?, peak))
    })
}

/// `node`'s logins reached `owner` through `from`'s redirect: `from` logged the
/// redirect to the owner's portal and no login of the node, the owner logged its
/// logins, and while the guest ran only the owner held sessions (of the three, `from`
/// never did).
fn redirected(
    peers: &[Peer],
    from: &str,
    owner: &str,
    node: &str,
    sessions: &BTreeMap<String, u64>,
) -> Result<()> {
    let peer = |id: &str| peers.iter().find(|p| p.id == id).context("no such server");
    let (from_peer, owner_peer) = (peer(from)?, peer(owner)?);
    let moved = format!("target moved to {}", owner_peer.portal());
    ensure!(
        from_peer.log().contains(&moved),
        "{from} logged no {moved:?}\n{}",
        from_peer.log()
    );
    let login = format!("boot {node} iscsi-login-1 +");
    ensure!(
        owner_peer.log().contains(&login),
        "{owner} logged no {login:?}\n{}",
        owner_peer.log()
    );
    ensure!(
        !from_peer
            .log()
            .contains(&format!("boot {node} iscsi-login")),
        "{from} logged a login of {node}\n{}",
        from_peer.log()
    );
    ensure!(
        sessions.get(owner).copied().unwrap_or(0) >= 1,
        "{owner} never listed a session: {sessions:?}"
    );
    ensure!(
        sessions.get(from).copied().unwrap_or(0) == 0,
        "{from} listed a session: {sessions:?}"
    );
    Ok(())
}

/// `node show NODE --json`'s `last_boot`, through the shared registry.
fn last_boot(reg: &SharedRegistry, node: &str) -> Result<Vec<BootStage>> {
    let v = reg.json(&["node", "show", node, "--json"])?;
    v["last_boot"]
        .as_array()
        .with_context(|| format!("no last_boot in {v}"))?
        .iter()
        .map(|s| {
            Ok(BootStage {
                stage: s.str_field("stage")?.to_string(),
                at_ms: s["at_ms"]
                    .as_i64()
                    .with_context(|| format!("at_ms in {s}"))?,
                detail: s.str_field("detail")?.to_string(),
            })
        })
        .collect()
}

/// Whether everything the test needs is there; skips (or fails under `BOOTD_E2E=1`) if not.
fn can_run(test: &str) -> bool {
    if Server::from_env() != Server::Bootd {
        println!("{test}: skipped: serve is bootd's own (BOOTD_TEST_TARGET)");
        return false;
    }
    let mut needs = Needs::new().root().server().postgres();
    for (tool, package) in guest::TOOLS.iter().chain(golden::TOOLS) {
        needs = needs.tool(tool, package);
    }
    if !needs.met(test) {
        return false;
    }
    match Firmware::Bios.missing() {
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
