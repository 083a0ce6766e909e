//! What serve tells about boots: `node show` reports the stages of a node's
//! last boot (the script served over HTTP, then each iSCSI login and logout,
//! in order, with their times), `GET /metrics` counts them, and
//! `--record-io` keeps the node's I/O trace.

use crate::common::*;
use std::time::{Duration, Instant};

fn stages(env: &Env) -> Result<Vec<String>> {
    let v = env.json(&["node", "show", "n1", "--json"])?;
    Ok(v["last_boot"]
        .as_array()
        .ok_or("no last_boot")?
        .iter()
        .filter_map(|s| s["stage"].as_str().map(String::from))
        .collect())
}

#[test]
fn node_show_reports_the_last_boot() -> Result {
    let env = Env::new()?;
    let n1 = one_node_at(&env, "52:54:00:ab:cd:01", Some("127.0.0.1"))?;
    assert_eq!(n1["last_boot"].as_array().map(Vec::len), Some(0));
    let text = env.ok(&["node", "show", "n1"])?;
    assert!(text.contains("never seen booting"), "{text}");

    let traces = env.path("traces");
    let serve = Serve::start_with(&env, &["--record-io", &traces.to_string_lossy()])?;
    let url = format!(
        "http://127.0.0.1:{}/boot/52-54-00-ab-cd-01.ipxe",
        serve.http
    );
    tool("curl", &["-sf", "--max-time", "10", &url])?;
    let field = |k: &str| n1[k].as_str().unwrap_or_default().to_string();
    let (target, initiator) = (field("target_iqn"), field("initiator_iqn"));
    let (user, secret) = (field("chap_user"), field("chap_secret"));
    let login = Login {
        target: &target,
        initiator: &initiator,
        chap: Some((&user, &secret)),
    };
    io_ok(
        serve.port,
        &login,
        &["read 0 4k", "write -P 7 8k 4k", "flush"],
    )?;

    // Recorded by a thread beside the servers: give it a moment.
    let want = ["script", "iscsi-login-1", "iscsi-logout-1"];
    let deadline = Instant::now() + Duration::from_secs(10);
    let got = loop {
        let got = stages(&env)?;
        if got == want || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(got, want);
    let text = env.ok(&["node", "show", "n1"])?;
    assert!(
        text.contains("last_boot") && text.contains("iscsi-login-1"),
        "{text}"
    );
    serve.stop()?;
    Ok(())
}

/// A node added while serve runs reaches every server from the one fleet
/// view: its script over HTTP, its TFTP fetch recorded as its boot stage
/// (known by its address, with no look at the kernel's neighbour table),
/// its disk over iSCSI; removed, it is gone from all of them.
#[test]
fn a_node_added_while_serving_is_seen_by_http_tftp_and_iscsi() -> Result {
    let env = Env::new()?;
    let raw = env.path("g.raw");
    golden(&raw, 8 << 20, 1 << 20, 0x5a)?;
    env.ok(&["image", "import", "deb", &raw.to_string_lossy()])?;
    let dir = env.path("boot");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("snponly.efi"), b"not really iPXE")?;
    let serve = Serve::start_with(&env, &["--tftp-dir", &dir.to_string_lossy()])?;
    let script = |serve: &Serve| -> Result<String> {
        let url = format!(
            "http://127.0.0.1:{}/boot/52-54-00-ab-cd-02.ipxe",
            serve.http
        );
        tool(
            "curl",
            &[
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "10",
                &url,
            ],
        )
    };
    assert_eq!(script(&serve)?, "404");

    env.ok(&[
        "node",
        "add",
        "52:54:00:ab:cd:02",
        "--image",
        "deb",
        "--name",
        "n1",
        "--ip",
        "127.0.0.1",
    ])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while script(&serve)? != "200" {
        assert!(Instant::now() < deadline, "HTTP never saw the new node");
        std::thread::sleep(Duration::from_millis(100));
    }
    let tftp = format!("tftp://127.0.0.1:{}/snponly.efi", serve.tftp);
    tool(
        "curl",
        &["-sf", "--max-time", "10", "-o", "/dev/null", &tftp],
    )?;
    let n1 = env.json(&["node", "show", "n1", "--json"])?;
    let field = |k: &str| n1[k].as_str().unwrap_or_default().to_string();
    let (target, initiator) = (field("target_iqn"), field("initiator_iqn"));
    let (user, secret) = (field("chap_user"), field("chap_secret"));
    let login = Login {
        target: &target,
        initiator: &initiator,
        chap: Some((&user, &secret)),
    };
    io_eventually(serve.port, &login, &["read -P 0x5a 0 4k"])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let got = loop {
        let got = stages(&env)?;
        if got.iter().any(|s| s == "iscsi-logout-1") || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(got, ["script", "tftp", "iscsi-login-1", "iscsi-logout-1"]);

    env.ok(&["node", "rm", "n1"])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while script(&serve)? != "404" {
        assert!(
            Instant::now() < deadline,
            "HTTP still serves a removed node"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(io_ok(serve.port, &login, &["read 0 512"]).is_err());
    serve.stop()?;
    Ok(())
}
