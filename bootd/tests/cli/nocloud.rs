//! cloud-init's NoCloud seed from serve's HTTP server: one URL for every
//! node, answered only to the address holding the node's iSCSI session,
//! with the node's own rendered user-data and an instance-id that changes
//! when the node's overlay is made anew.

use crate::boot_http::HttpGet;
use crate::common::*;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// GET `path` from local address `source`: (status, body).
fn get(serve: &Serve, source: &str, path: &str) -> Result<(u16, String)> {
    serve.get_as(source, path)
}

/// A qemu-io process holding a session to `node`'s target from 127.0.0.1.
fn hold_session(env: &Env, serve: &Serve, node: &str) -> Result<Child> {
    let v = env.json(&["node", "show", node, "--json"])?;
    let f = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    let mut child = Command::new("qemu-io")
        .arg("--image-opts")
        .arg(format!(
            "driver=iscsi,transport=tcp,portal=127.0.0.1:{},target={},lun=0,\
             initiator-name={},user={},password={}",
            serve.port,
            f("target_iqn"),
            f("initiator_iqn"),
            f("chap_user"),
            f("chap_secret")
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(stdin) = child.stdin.as_mut() {
        stdin.write_all(b"read 0 512\n")?;
        stdin.flush()?;
    }
    Ok(child)
}

fn end_session(mut child: Child) -> Result {
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(b"quit\n")?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err("qemu-io did not finish".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Polls until `path` from `source` answers `status` (sessions come and go
/// with the target's events).
fn eventually(serve: &Serve, source: &str, path: &str, status: u16) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (code, body) = get(serve, source, path)?;
        if code == status {
            return Ok(body);
        }
        if Instant::now() > deadline {
            return Err(format!("{path} from {source}: {code}, want {status}: {body}").into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_seed_goes_to_the_address_holding_the_nodes_session() -> Result {
    let env = Env::new()?;
    let raw = env.path("g.raw");
    golden(&raw, 8 << 20, 1 << 20, 0x5a)?;
    env.ok(&["image", "import", "deb", &raw.to_string_lossy()])?;
    let ud = env.path("user-data");
    std::fs::write(
        &ud,
        "#cloud-config\nhostname: {{ name }}\nwrite_files:\n- path: /etc/bootd-node\n  \
         content: \"{{ mac }} {{ image }} v{{ version }}\"\n",
    )?;
    env.ok(&[
        "node",
        "add",
        "52:54:00:ab:cd:05",
        "--image",
        "deb",
        "--name",
        "n5",
        "--user-data",
        &ud.to_string_lossy(),
    ])?;
    env.ok(&[
        "node",
        "add",
        "52:54:00:ab:cd:06",
        "--image",
        "deb",
        "--name",
        "n6",
    ])?;
    let serve = Serve::start(&env)?;

    // Nobody's session: nothing, whatever the address.
    assert_eq!(get(&serve, "127.0.0.1", "/nocloud/meta-data")?.0, 404);

    let session = hold_session(&env, &serve, "n5")?;
    let meta = eventually(&serve, "127.0.0.1", "/nocloud/meta-data", 200)?;
    assert!(meta.contains("local-hostname: n5\n"), "{meta}");
    let first_id = meta
        .lines()
        .find_map(|l| l.strip_prefix("instance-id: "))
        .ok_or("no instance-id")?
        .to_string();
    assert!(first_id.starts_with("bootd-n5-"), "{meta}");
    let (code, user) = get(&serve, "127.0.0.1", "/nocloud/user-data")?;
    assert_eq!(code, 200);
    assert!(user.starts_with("#cloud-config\nhostname: n5\n"), "{user}");
    assert!(user.contains("52:54:00:ab:cd:05 deb v1"), "{user}");
    let (_, net) = get(&serve, "127.0.0.1", "/nocloud/network-config")?;
    assert!(net.contains("config: disabled"), "{net}");
    assert_eq!(get(&serve, "127.0.0.1", "/nocloud/vendor-data")?.0, 200);
    // Another address gets nothing of n5's.
    assert_eq!(get(&serve, "127.0.0.2", "/nocloud/user-data")?.0, 404);
    end_session(session)?;
    eventually(&serve, "127.0.0.1", "/nocloud/user-data", 404)?;

    // n6 has no user-data of its own: the default sets its hostname.
    let session = hold_session(&env, &serve, "n6")?;
    let user = eventually(&serve, "127.0.0.1", "/nocloud/user-data", 200)?;
    assert_eq!(
        user,
        "#cloud-config\nhostname: n6\npreserve_hostname: false\n"
    );
    end_session(session)?;

    // A new overlay is a new instance: cloud-init's first boot runs again.
    env.ok(&["node", "reset", "n5"])?;
    let session = hold_session(&env, &serve, "n5")?;
    let meta = eventually(&serve, "127.0.0.1", "/nocloud/meta-data", 200)?;
    let second_id = meta
        .lines()
        .find_map(|l| l.strip_prefix("instance-id: "))
        .ok_or("no instance-id")?;
    assert_ne!(second_id, first_id, "{meta}");
    end_session(session)?;

    let (_, metrics) = get(&serve, "127.0.0.1", "/metrics")?;
    let refused = metrics
        .lines()
        .find_map(|l| l.strip_prefix("bootd_nocloud_refused_total "))
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or("no refusal counter")?;
    assert!(refused >= 3, "{refused} refusals counted");
    serve.stop()?;
    Ok(())
}
