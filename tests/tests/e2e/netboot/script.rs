//! The iPXE stage, done the way iPXE does it from the machine: fetch `/boot.ipxe`,
//! follow its `chain` to the node's own script, and log in to the disk that script
//! sanboots, with the initiator name and CHAP credentials it sets.

use std::collections::BTreeMap;

use anyhow::{ensure, Context, Result};
use bootd_tests::netns::NetNs;
use bootd_tests::process::run;
use bootd_tests::serve::{Node, Serve};

use super::lab::{Lab, CLIENT_LIMIT, SERVER_IP};

/// Follows the chain for `node`, checks the script is the node's own and not
/// `other`'s, logs in as it would, and checks `stranger` (unregistered) gets a 404.
pub fn follow(
    lab: &Lab,
    machine: &NetNs,
    serve: &Serve,
    node: &Node,
    other: &Node,
    stranger: &str,
) -> Result<()> {
    let base = format!("http://{SERVER_IP}:{}", serve.http_port());
    let (status, chain) = lab.http_get(machine, &format!("{base}/boot.ipxe"))?;
    let chain = String::from_utf8(chain)?;
    ensure!(
        status == 200 && chain.starts_with("#!ipxe"),
        "/boot.ipxe: {status}\n{chain}"
    );
    let target = chain
        .lines()
        .find_map(|l| l.trim().strip_prefix("chain "))
        .and_then(|rest| rest.split_whitespace().next())
        .with_context(|| format!("/boot.ipxe has no chain line:\n{chain}"))?;
    // iPXE expands its MAC settings; these are the spellings it has.
    let expand = |mac: &str| {
        target
            .replace("${netX/mac:hexhyp}", &mac.replace(':', "-"))
            .replace("${net0/mac:hexhyp}", &mac.replace(':', "-"))
            .replace("${netX/mac}", mac)
            .replace("${net0/mac}", mac)
    };
    let node_url = expand(&node.mac);
    ensure!(
        node_url.starts_with(&format!("{base}/")) && !node_url.contains('$'),
        "/boot.ipxe chains to {target:?}, which does not expand to this server:\n{chain}"
    );
    let (status, script) = lab.http_get(machine, &node_url)?;
    let script = String::from_utf8(script)?;
    ensure!(
        status == 200 && script.starts_with("#!ipxe"),
        "{node_url}: {status}\n{script}"
    );
    let sanboot = format!(
        "sanboot iscsi:{SERVER_IP}::{}:0:{}",
        serve.port(),
        node.target_iqn
    );
    let settings = settings(&script);
    ensure!(
        script.lines().any(|l| l.trim().starts_with(&sanboot)),
        "{node_url}: no line `{sanboot}`:\n{script}"
    );
    for (key, want) in [
        ("initiator-iqn", &node.initiator_iqn),
        ("username", &node.chap_user),
        ("password", &node.chap_secret),
    ] {
        ensure!(
            settings.get(key) == Some(want),
            "{node_url}: `set {key}` is {:?}, not the node's {want}:\n{script}",
            settings.get(key)
        );
    }
    for foreign in [&other.target_iqn, &other.initiator_iqn, &other.chap_secret] {
        ensure!(
            !script.contains(foreign.as_str()),
            "{node_url} carries another node's {foreign}:\n{script}"
        );
    }

    // The disk the script boots, reached from the machine as iPXE reaches it. The
    // other node's disk must stay shut to this node's identity.
    let login = |iqn: &str| {
        let url = format!(
            "iscsi://{}%{}@{SERVER_IP}:{}/{iqn}/0",
            settings["username"],
            settings["password"],
            serve.port()
        );
        let mut inq = machine.command("iscsi-inq");
        inq.args(["-i", &settings["initiator-iqn"], &url]);
        run(&mut inq, CLIENT_LIMIT)
    };
    login(&node.target_iqn)?
        .ok()
        .context("logging in as the node's script says")?;
    let foreign = login(&other.target_iqn)?;
    ensure!(
        !foreign.success(),
        "the node's initiator name and CHAP credentials opened another node's disk {}: {foreign}",
        other.target_iqn
    );

    let (status, _) = lab.http_get(machine, &expand(stranger))?;
    ensure!(status == 404, "{stranger}'s script: {status}, not 404");
    println!("script {node_url}: {sanboot}; its login works, another node's disk refuses it; unknown MAC: 404");
    Ok(())
}

/// `set NAME VALUE` lines of an iPXE script.
fn settings(script: &str) -> BTreeMap<String, String> {
    script
        .lines()
        .filter_map(|l| l.trim().strip_prefix("set "))
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}
