//! `GET /api/v1/events`: a node's boot stages and its I/O reach a live
//! view within a second of happening.

use crate::api::{agent, token, ApiServe};
use crate::api_openapi::{check_shape, shape};
use crate::common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

/// Opens the stream; yields `(event, data)` as they arrive.
fn subscribe(serve: &ApiServe, token: &str) -> Result<Receiver<(String, Value)>> {
    let resp = agent()
        .get(&serve.url("/events"))
        .set("Authorization", &format!("Bearer {token}"))
        .call()?;
    assert_eq!(resp.header("Content-Type"), Some("text/event-stream"));
    let reader = BufReader::new(resp.into_reader());
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let mut kind = String::new();
        for line in reader.lines() {
            let Ok(line) = line else { return };
            if let Some(k) = line.strip_prefix("event: ") {
                kind = k.to_string();
            } else if let Some(d) = line.strip_prefix("data: ") {
                let v = serde_json::from_str(d).unwrap_or(Value::Null);
                if tx.send((std::mem::take(&mut kind), v)).is_err() {
                    return;
                }
            }
        }
    });
    Ok(rx)
}

/// The first event of `kind` that `pick` accepts, within `limit`.
fn wait_for(
    rx: &Receiver<(String, Value)>,
    kind: &str,
    limit: Duration,
    pick: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (k, v) = rx
            .recv_timeout(left)
            .map_err(|_| format!("no {kind} event within {limit:?}"))?;
        if k == kind && pick(&v) {
            return Ok(v);
        }
    }
}

#[test]
fn boot_stages_and_io_reach_the_event_stream_within_a_second() -> Result {
    let env = Env::new()?;
    let n1 = one_node_at(&env, "52:54:00:ab:cd:31", Some("127.0.0.1"))?;
    let ro = token(&env, "dash", true)?;
    let serve = ApiServe::start(&env, &[])?;
    let (_, doc) = serve.call("GET", "/openapi.json", None, None)?;
    let rx = subscribe(&serve, &ro)?;
    // Unauthenticated: no stream.
    let r = agent().get(&serve.url("/events")).call();
    assert!(matches!(r, Err(ureq::Error::Status(401, _))), "{r:?}");

    // The node fetches its script from the boot network's HTTP port.
    let url = format!(
        "http://127.0.0.1:{}/boot/52-54-00-ab-cd-31.ipxe",
        serve.http
    );
    tool(
        "curl",
        &["-sf", "--max-time", "10", "-o", "/dev/null", &url],
    )?;
    let fetched = Instant::now();
    let v = wait_for(&rx, "stage", Duration::from_secs(1), |v| {
        v["stage"] == "script"
    })?;
    let took = fetched.elapsed();
    assert_eq!(v["node"], "n1");
    assert_eq!(v["mac"], "52:54:00:ab:cd:31");
    assert!(v["at_ms"].as_i64().is_some_and(|t| t > 0), "{v}");
    assert!(v["boot_started_ms"].as_i64().is_some(), "{v}");
    assert!(v["new_boot"].is_boolean() && v["detail"].is_string(), "{v}");
    println!("script stage on the stream {took:?} after the fetch");
    let (props, required) = shape(&doc, "StageEvent");
    check_shape("stage event", &v, &props, &required, true);

    // Its disk: a login, reads and writes, a logout.
    let field = |k: &str| n1[k].as_str().unwrap_or_default().to_string();
    let (target, initiator) = (field("target_iqn"), field("initiator_iqn"));
    let (user, secret) = (field("chap_user"), field("chap_secret"));
    let login = Login {
        target: &target,
        initiator: &initiator,
        chap: Some((&user, &secret)),
    };
    io_ok(
        serve.iscsi,
        &login,
        &["read 0 1M", "write -P 7 0 256k", "flush"],
    )?;
    let done = Instant::now();
    let v = wait_for(&rx, "stage", Duration::from_secs(1), |v| {
        v["stage"]
            .as_str()
            .is_some_and(|s| s.starts_with("iscsi-logout"))
    })?;
    assert_eq!(v["node"], "n1");
    println!("logout on the stream {:?} after qemu-io", done.elapsed());
    // The I/O rates of that second (events come every second).
    let v = wait_for(&rx, "io", Duration::from_secs(3), |v| {
        v["nodes"]
            .as_array()
            .is_some_and(|a| a.iter().any(|n| n["node"] == "n1"))
    })?;
    let n = v["nodes"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["node"] == "n1"))
        .ok_or("n1")?;
    assert_eq!(n["target"], target.as_str());
    assert!(
        n["read_bytes"].as_u64().is_some_and(|b| b >= 1 << 20),
        "{v}"
    );
    assert!(
        n["written_bytes"].as_u64().is_some_and(|b| b >= 256 << 10),
        "{v}"
    );
    assert!(n["read_bytes_per_s"].as_u64().is_some_and(|b| b > 0), "{v}");
    assert!(v["interval_ms"].as_u64().is_some_and(|ms| ms > 0), "{v}");
    let (props, required) = shape(&doc, "IoEvent");
    check_shape("io event", &v, &props, &required, true);
    let (props, required) = shape(&doc, "IoNode");
    check_shape("io event's node", n, &props, &required, true);
    // The timeline the stream showed is the one `node show` keeps.
    let shown = env.json(&["node", "show", "n1", "--json"])?;
    let stages: Vec<_> = shown["last_boot"]
        .as_array()
        .ok_or("last_boot")?
        .iter()
        .filter_map(|s| s["stage"].as_str())
        .collect();
    assert_eq!(stages, ["script", "iscsi-login-1", "iscsi-logout-1"]);
    // The stream ends with serve, so serve stops at once.
    let stopping = Instant::now();
    serve.stop()?;
    assert!(stopping.elapsed() < Duration::from_secs(10));
    Ok(())
}
