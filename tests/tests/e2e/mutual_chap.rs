//! Mutual CHAP per node (issue 11), end to end: the CLI turns it on and off and
//! shows the target's credentials in `node show` only; `bootd serve` proves itself
//! to libiscsi's `iscsi-inq` with the node's target secret, picks up changes while
//! it runs, and a wrong target secret makes the initiator refuse the target.
//!
//! With real iPXE: a BIOS guest with mutual CHAP on sanboots its overlay (iPXE
//! checks the target's answer; the OS initiator takes the reverse credentials from
//! the iBFT) and boots the golden image's Linux, while a guest whose script carries
//! a wrong target secret never gets to its disk.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bootd_tests::diskless::{
    boot_together, check_boot_stages, last_boot, now_ms, show_stages, Firmware, Lan, PxeBoot,
};
use bootd_tests::env::{e2e_required, Needs};
use bootd_tests::export::Server;
use bootd_tests::golden::{self, marker_field, GoldenImage, Markers};
use bootd_tests::guest;
use bootd_tests::netns::NetNs;
use bootd_tests::process::{run, Finished};
use bootd_tests::serve::{DataDir, Fields};
use serde_json::Value;

/// How long a running serve may take to act on a registry change.
const RELOAD_LIMIT: Duration = Duration::from_secs(10);
const INQ_LIMIT: Duration = Duration::from_secs(20);

/// A node's initiator-side view: what `node show --json` says it logs in with.
struct Creds {
    name: String,
    target_iqn: String,
    initiator_iqn: String,
    chap_user: String,
    chap_secret: String,
    /// (user, secret) the target proves itself with; `None` when off.
    mutual: Option<(String, String)>,
}

impl Creds {
    fn of(data: &DataDir, node: &str) -> Result<Self> {
        let v = data.json(&["node", "show", node, "--json"])?;
        let mutual = match (&v["mutual_chap_user"], &v["mutual_chap_secret"]) {
            (Value::String(u), Value::String(s)) => Some((u.clone(), s.clone())),
            (Value::Null, Value::Null) => None,
            other => bail!("half-set mutual CHAP in `node show {node} --json`: {other:?}"),
        };
        Ok(Self {
            name: v.str_field("name")?.to_string(),
            target_iqn: v.str_field("target_iqn")?.to_string(),
            initiator_iqn: v.str_field("initiator_iqn")?.to_string(),
            chap_user: v.str_field("chap_user")?.to_string(),
            chap_secret: v.str_field("chap_secret")?.to_string(),
            mutual,
        })
    }

    fn target_secret(&self) -> Result<&str> {
        match &self.mutual {
            Some((_, s)) => Ok(s),
            None => bail!("node {} has mutual CHAP off", self.name),
        }
    }
}

/// libiscsi's login and INQUIRY as the node's initiator; with `target`, the
/// initiator makes the target prove itself with that name and secret.
fn inq(port: u16, c: &Creds, target: Option<(&str, &str)>) -> Result<Finished> {
    let mut url = format!(
        "iscsi://{}%{}@127.0.0.1:{port}/{}/0",
        c.chap_user, c.chap_secret, c.target_iqn
    );
    if let Some((user, secret)) = target {
        url.push_str(&format!("?target_user={user}&target_password={secret}"));
    }
    run(
        Command::new("iscsi-inq").args(["-i", &c.initiator_iqn, &url]),
        INQ_LIMIT,
    )
}

fn logs_in(out: &Finished) -> bool {
    out.success() && out.stdout.contains("BOOTD")
}

/// Retries `inq` until its login succeeds (`want`) or fails, within RELOAD_LIMIT.
fn until(
    port: u16,
    c: &Creds,
    target: Option<(&str, &str)>,
    want: bool,
    what: &str,
) -> Result<Duration> {
    let t = Instant::now();
    loop {
        let out = inq(port, c, target)?;
        if logs_in(&out) == want {
            return Ok(t.elapsed());
        }
        if t.elapsed() > RELOAD_LIMIT {
            bail!("{what}: still {} after {RELOAD_LIMIT:?}: {out}", !want);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The node's boot script, fetched from the node's own (static) address.
fn script(http_port: u16, mac: &str, from: &str) -> Result<String> {
    let url = format!(
        "http://127.0.0.1:{http_port}/boot/{}.ipxe",
        mac.replace(':', "-")
    );
    let out = run(
        Command::new("curl").args(["-sS", "--fail", "--interface", from, &url]),
        INQ_LIMIT,
    )?
    .ok()?;
    Ok(out.stdout)
}

/// The `set reverse-…` lines of a script.
fn reverse_lines(script: &str) -> Vec<&str> {
    script
        .lines()
        .filter(|l| l.starts_with("set reverse-"))
        .collect()
}

fn small_image(dir: &Path) -> Result<std::path::PathBuf> {
    let file = dir.join("small.raw");
    let f = std::fs::File::create(&file)?;
    f.set_len(16 << 20)?;
    Ok(file)
}

#[test]
fn mutual_chap_cli_and_libiscsi_against_serve() -> Result<()> {
    let test = "mutual_chap_cli_and_libiscsi_against_serve";
    if Server::from_env() != Server::Bootd
        || !Needs::new()
            .server()
            .tool("iscsi-inq", "libiscsi-bin")
            .tool("curl", "curl")
            .met(test)
    {
        return Ok(());
    }
    let work = tempfile::tempdir()?;
    let data = DataDir::new()?;
    data.import("small", &small_image(work.path())?)?;
    data.run(&[
        "node",
        "add",
        "52:54:00:c4:a9:01",
        "--image",
        "small",
        "--name",
        "mc1",
        "--ip",
        "127.0.0.1",
        "--mutual-chap",
    ])?;
    data.run(&[
        "node",
        "add",
        "52:54:00:c4:a9:02",
        "--image",
        "small",
        "--name",
        "mc2",
        "--ip",
        "127.0.0.2",
    ])?;
    let a = Creds::of(&data, "mc1")?;
    let b = Creds::of(&data, "mc2")?;
    let a_secret = a.target_secret()?.to_string();
    ensure!(
        a.mutual.as_ref().map(|(u, _)| u.as_str()) == Some("bootd")
            && a_secret.len() == 16
            && a_secret.chars().all(|c| c.is_ascii_alphanumeric())
            && a_secret != a.chap_secret,
        "mc1's target credentials: {:?} (initiator secret {})",
        a.mutual,
        a.chap_secret
    );
    ensure!(b.mutual.is_none(), "mc2 has mutual CHAP: {:?}", b.mutual);

    // Listings carry no secret of either direction.
    let list = data.run(&["node", "list"])?;
    let list_json = data.json(&["node", "list", "--json"])?;
    for secret in [&a_secret, &a.chap_secret, &b.chap_secret] {
        ensure!(
            !list.stdout.contains(secret.as_str())
                && !list_json.to_string().contains(secret.as_str()),
            "a secret in node list: {list}\n{list_json}"
        );
    }
    let listed = list_json
        .as_array()
        .and_then(|l| l.iter().find(|n| n["name"] == "mc1"))
        .context("mc1 not in node list --json")?;
    ensure!(
        listed["mutual_chap_user"] == "bootd" && listed.get("mutual_chap_secret").is_none(),
        "node list --json entry: {listed}"
    );

    let serve = data.serve()?;
    let port = serve.port();
    let user = |c: &Creds| {
        c.mutual
            .as_ref()
            .map(|(u, _)| u.clone())
            .unwrap_or_default()
    };

    // The target proves itself with mc1's target secret.
    let out = inq(port, &a, Some((&user(&a), &a_secret)))?;
    ensure!(logs_in(&out), "mutual login as mc1: {out}\n{}", serve.log());
    // An initiator that expects another target secret refuses the target.
    let out = inq(port, &a, Some(("bootd", "0000000000000000")))?;
    ensure!(
        !logs_in(&out),
        "iscsi-inq accepted a target that does not know the target secret it expects: {out}"
    );
    // Mutual CHAP is the initiator's to ask for: one-way logins still work.
    let out = inq(port, &a, None)?;
    ensure!(
        logs_in(&out),
        "one-way login as mc1: {out}\n{}",
        serve.log()
    );
    // mc2 has no target secret: a login that asks for one is refused.
    let out = inq(port, &b, Some(("bootd", &a_secret)))?;
    ensure!(
        !logs_in(&out),
        "mc2's target proved itself without a target secret: {out}"
    );
    println!("{test}: mc1 mutual ok, wrong target secret refused, mc2 (off) cannot prove itself");

    // The scripts: reverse credentials for mc1 only.
    let want = format!("set reverse-password {a_secret}");
    let s1 = script(serve.http_port(), "52:54:00:c4:a9:01", "127.0.0.1")?;
    ensure!(
        reverse_lines(&s1) == ["set reverse-username bootd", want.as_str()],
        "mc1's script:\n{s1}"
    );
    let s2 = script(serve.http_port(), "52:54:00:c4:a9:02", "127.0.0.2")?;
    ensure!(
        s2.contains("sanboot ") && reverse_lines(&s2).is_empty(),
        "mc2's script:\n{s2}"
    );

    // On again while on: nothing changes (a fresh secret would lock out a running
    // OS holding the old one).
    data.run(&["node", "chap", "mc1", "--mutual", "on"])?;
    ensure!(
        Creds::of(&data, "mc1")?.target_secret()? == a_secret,
        "node chap --mutual on changed the secret of a node that had one"
    );

    // Off while serve runs: the target can no longer prove itself; one-way works.
    data.run(&["node", "chap", "mc1", "--mutual", "off"])?;
    ensure!(Creds::of(&data, "mc1")?.mutual.is_none(), "still on");
    let took = until(port, &a, Some(("bootd", &a_secret)), false, "mutual off")
        .with_context(|| serve.log())?;
    ensure!(logs_in(&inq(port, &a, None)?), "one-way login after off");
    let s1 = script(serve.http_port(), "52:54:00:c4:a9:01", "127.0.0.1")?;
    ensure!(
        reverse_lines(&s1).is_empty(),
        "mc1's script after off:\n{s1}"
    );
    println!("{test}: off while serving, picked up after {took:?}");

    // On again: a fresh secret, taken up while serving; the old one stays refused.
    let changed = data.run(&["node", "chap", "mc1", "--mutual", "on"])?;
    let a2 = Creds::of(&data, "mc1")?;
    let a2_secret = a2.target_secret()?.to_string();
    ensure!(
        !changed.stdout.contains(&a2_secret) && !changed.stderr.contains(&a2_secret),
        "node chap printed the secret: {changed}"
    );
    ensure!(a2_secret != a_secret, "on after off reused the old secret");
    let took = until(port, &a2, Some(("bootd", &a2_secret)), true, "on again")
        .with_context(|| serve.log())?;
    let out = inq(port, &a2, Some(("bootd", &a_secret)))?;
    ensure!(!logs_in(&out), "the old target secret works again: {out}");
    let s1 = script(serve.http_port(), "52:54:00:c4:a9:01", "127.0.0.1")?;
    ensure!(
        s1.contains(&format!("set reverse-password {a2_secret}\n")),
        "mc1's script after on again:\n{s1}"
    );
    println!("{test}: on again while serving with a fresh secret, accepted after {took:?}");

    // On by MAC for the other node.
    data.run(&["node", "chap", "52-54-00-C4-A9-02", "--mutual", "on"])?;
    let b2 = Creds::of(&data, "mc2")?;
    let b2_secret = b2.target_secret()?.to_string();
    until(port, &b2, Some(("bootd", &b2_secret)), true, "mc2 on").with_context(|| serve.log())?;

    // No secret of either direction in serve's log.
    let log = serve.log();
    for secret in [
        &a_secret,
        &a2_secret,
        &b2_secret,
        &a.chap_secret,
        &b.chap_secret,
    ] {
        ensure!(
            !log.contains(secret.as_str()),
            "a secret in serve's log:\n{log}"
        );
    }
    serve.stop()?;
    println!("{test}: passed");
    Ok(())
}

const SERVER_IP: &str = "192.0.2.1";
const POOL: &str = "192.0.2.100-192.0.2.120";
const BRIDGE: &str = "lan0";
/// Name, MAC, tap: the node with mutual CHAP, and the one whose script expects a
/// wrong target secret.
const GOOD: (&str, &str, &str) = ("mc-good", "52:54:00:c4:a9:11", "tap1");
const WRONG: (&str, &str, &str) = ("mc-wrong", "52:54:00:c4:a9:12", "tap2");
/// As the diskless tests: one BIOS boot takes about 40 s under TCG here.
const BOOT_LIMIT: Duration = Duration::from_secs(150);
/// See the diskless tests: iPXE's sanboot login, `iscsistart -b`'s, iscsid's.
const BIOS_STAGES: &[&str] = &[
    "ipxe-dhcp",
    "script",
    "iscsi-login-1",
    "iscsi-login-2",
    "iscsi-login-3",
];
/// sanboot.ipxe, but iPXE expects the target to answer with another secret.
const WRONG_SCRIPT: &str = "#!ipxe
set initiator-iqn {{ initiator_iqn }}
set username {{ chap_user }}
set password {{ chap_secret }}
set reverse-username {{ mutual_chap_user }}
set reverse-password x{{ mutual_chap_secret }}
sanboot iscsi:{{ iscsi_host }}::{{ iscsi_port }}:0:{{ target_iqn }} || goto failed
:failed
sleep 1
reboot
";

#[test]
fn bios_guest_sanboots_with_mutual_chap() -> Result<()> {
    let test = "bios_guest_sanboots_with_mutual_chap";
    if !can_run(test) {
        return Ok(());
    }
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let image = GoldenImage::build()?;
    let data = DataDir::new()?;
    data.import("golden", &image.path)?;
    let script = dir.path().join("wrong.ipxe");
    std::fs::write(&script, WRONG_SCRIPT)?;
    let script = script.to_str().context("temp path is not UTF-8")?;
    data.run(&[
        "template", "add", "wrongrev", "--image", "golden", "--script", script,
    ])?;
    data.run(&[
        "node",
        "add",
        GOOD.1,
        "--image",
        "golden",
        "--name",
        GOOD.0,
        "--mutual-chap",
    ])?;
    data.run(&[
        "node",
        "add",
        WRONG.1,
        "--template",
        "wrongrev",
        "--name",
        WRONG.0,
        "--mutual-chap",
    ])?;
    let good = Creds::of(&data, GOOD.0)?;
    good.target_secret()?;

    let ns = NetNs::new()?;
    let lan = Lan::new(&ns, BRIDGE, &format!("{SERVER_IP}/24"))?;
    for (_, _, tap) in [GOOD, WRONG] {
        lan.add_tap(tap)?;
    }
    let serve = lan.serve_full(&data, SERVER_IP, POOL, &[])?;
    let boots: Vec<PxeBoot> = [GOOD, WRONG]
        .iter()
        .map(|(name, mac, tap)| PxeBoot {
            firmware: Firmware::Bios,
            tap: tap.to_string(),
            mac: mac.to_string(),
            console: dir.path().join(format!("{name}.console")),
            limit: BOOT_LIMIT,
            memory_mib: 512,
            default_devices: true,
        })
        .collect();
    let since = now_ms();
    let outcomes = boot_together(&ns, &boots)?;
    let (good_out, wrong_out) = (&outcomes[0], &outcomes[1]);

    // The good node: iPXE accepted the target's proof, Linux logged in again from
    // the iBFT (which carries the reverse credentials) and left its marker.
    let m = Markers::of(good_out).with_context(|| format!("{}\n{}", GOOD.0, serve.log()))?;
    ensure!(
        m.previous.is_none() && marker_field(&m.wrote, "node") == Some(good.initiator_iqn.as_str()),
        "{}: markers {m:?}",
        GOOD.0
    );
    let stages = last_boot(&data, GOOD.0)?;
    println!(
        "{test}: {} powered off after {:.1}s, stages:\n{}",
        GOOD.0,
        good_out.elapsed.as_secs_f64(),
        show_stages(&stages).trim_end()
    );
    let log = serve.log();
    check_boot_stages(GOOD.0, &stages, BIOS_STAGES, since, &log)
        .with_context(|| format!("{}'s boot stages\n{log}", GOOD.0))?;

    // The wrong node fetched its script, then iPXE refused the target: no disk,
    // no Linux, and iPXE's `reboot` ended the machine long before the limit.
    let wrong_stages = last_boot(&data, WRONG.0)?;
    println!(
        "{test}: {} ended by itself ({:?}), stages:\n{}",
        WRONG.0,
        wrong_out.status,
        show_stages(&wrong_stages).trim_end()
    );
    ensure!(
        wrong_out.status.is_some() && wrong_out.elapsed < BOOT_LIMIT,
        "{} did not end by itself: {wrong_out}",
        WRONG.0
    );
    ensure!(
        wrong_stages.iter().any(|s| s.stage == "script"),
        "{} never fetched its script\n{}",
        WRONG.0,
        serve.log()
    );
    ensure!(
        !wrong_out.console.contains("BOOTD-E2E"),
        "{} reached its disk's Linux with a wrong target secret:\n{wrong_out}",
        WRONG.0
    );
    serve.stop()?;
    println!("{test}: passed in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

fn can_run(test: &str) -> bool {
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
