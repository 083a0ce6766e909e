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
