//! Unregistered machines (`serve --unknown`): with `discover`, a PXE client is
//! recorded (a plain DHCP client is not), `node adopt` registers it and its next
//! DHCP gets a boot file, and `node show` has the boot's first stage; with
//! `default=TEMPLATE`, a PXE client is registered from the template and booted at
//! its first DHCP.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bootd_tests::serve::ServeOptions;

use super::lab::{self, Lab, SERVER_IP};

const NEWCOMER: &str = "52:54:00:e2:0c:01";
const LAPTOP: &str = "52:54:00:e2:0c:02";
const AUTO: &str = "52:54:00:e2:0c:03";

fn options<'a>(lab: &'a Lab, unknown: &str) -> ServeOptions<'a> {
    ServeOptions {
        netns: Some(&lab.server_ns),
        listen_ip: SERVER_IP.to_string(),
        extra: [
            "--dhcp",
            "full",
            "--interface",
            lab::BRIDGE,
            "--pool",
            "192.0.2.130-192.0.2.140",
            "--unknown",
            unknown,
        ]
        .map(String::from)
        .to_vec(),
    }
}

#[test]
fn unknown_machines_are_discovered_adopted_or_enrolled() -> Result<()> {
    let test = "unknown_machines_are_discovered_adopted_or_enrolled";
    if !lab::can_run(test, &[]) {
        return Ok(());
    }
    let lab = Lab::new()?;
    lab.data
        .run(&["template", "add", "lab", "--image", "golden"])?;
    let machine = lab.machine(NEWCOMER)?;

    let mut serve = lab.data.serve_with(&options(&lab, "discover"))?;
    let first = lab.udhcpc(&machine, "newcomer", lab::PXE_BIOS)?;
    ensure!(first.boot_file()?.is_empty(), "not adopted yet: {first:?}");
    lab::set_mac(&machine, LAPTOP)?;
    lab.udhcpc(&machine, "laptop", &[])?;
    let found = lab.data.json(&["node", "list", "--discovered", "--json"])?;
    let macs: Vec<&str> = found
        .as_array()
        .context("not a list")?
        .iter()
        .filter_map(|d| d["mac"].as_str())
        .collect();
    ensure!(
        macs == [NEWCOMER],
        "discovered {macs:?}, want only {NEWCOMER}"
    );
    ensure!(
        found[0]["arch"] == 0 && found[0]["vendor_class"] == "PXEClient:Arch:00000",
        "{found}"
    );

    lab.data
        .run(&["node", "adopt", NEWCOMER, "--template", "lab"])?;
    let left = lab.data.json(&["node", "list", "--discovered", "--json"])?;
    ensure!(
        left.as_array().is_some_and(Vec::is_empty),
        "still listed: {left}"
    );
    lab::set_mac(&machine, NEWCOMER)?;
    // serve reloads the registry at the next datagram after the change.
    let adopted = lab.udhcpc(&machine, "adopted", lab::PXE_BIOS)?;
    ensure!(
        adopted.boot_file()? == "undionly.kpxe",
        "{adopted:?}\n{}",
        serve.log()
    );
    let name = format!("node-{}", NEWCOMER.replace(':', ""));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let show = lab.data.json(&["node", "show", &name, "--json"])?;
        let first_stage = show["last_boot"][0]["stage"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if first_stage == "dhcp" {
            break;
        }
        ensure!(Instant::now() < deadline, "no dhcp stage recorded: {show}");
        std::thread::sleep(Duration::from_millis(200));
    }
    ensure!(serve.running()?, "serve exited\n{}", serve.log());
    serve.stop()?;

    // default=TEMPLATE: registered and booted at the first DHCP.
    let serve = lab.data.serve_with(&options(&lab, "default=lab"))?;
    lab::set_mac(&machine, AUTO)?;
    let auto = lab.udhcpc(&machine, "auto", lab::PXE_BIOS)?;
    ensure!(
        auto.boot_file()? == "undionly.kpxe",
        "{auto:?}\n{}",
        serve.log()
    );
    let node = lab.data.json(&[
        "node",
        "show",
        &format!("node-{}", AUTO.replace(':', "")),
        "--json",
    ])?;
    ensure!(node["template"] == "lab" && node["mac"] == AUTO, "{node}");
    serve.stop()?;
    println!("{test}: discovered, adopted and enrolled");
    Ok(())
}
