//! PostgreSQL restarted under load (issue 15): the registry is not on the
//! data path, so established sessions keep serving through a fast restart
//! (`pg_ctl restart -m fast`: clients cut, the server back a moment
//! later) and every server reconnects by itself. What cannot be saved
//! meanwhile is not acknowledged: a PERSISTENT RESERVE OUT fails. An
//! outage longer than the ownership lease (3.5 s) stops service by design
//! (self-fencing, `peers::lease`); the second test shows what the node
//! and the operator see then, and that service comes back on its own.

use crate::common::*;
use crate::pr_client::{Session, CHECK_CONDITION, GOOD};
use crate::servers::{owners, servers, within};
use crate::takeover::{finish, longest_write, serve_logged, text, verify, with_logs, writer};
use bootd_tests::postgres::PgServer;
use std::time::{Duration, Instant};

/// A PostgreSQL server of the test's own (it is restarted: the shared
/// one serves other tests), a registry on it with node `n1`, and serve
/// `s1` serving it; `None` when PostgreSQL is missing (and not required).
fn setup(test: &str) -> Result<Option<(PgServer, Env, serde_json::Value, Serve)>> {
    if !bootd_tests::env::Needs::new()
        .postgres()
        .tool("qemu-io", "qemu-utils")
        .met(test)
    {
        return Ok(None);
    }
    let pg = PgServer::start()?;
    let (env, _db) = on_postgres_with_image(&pg, Via::Tcp, 8 << 20)?;
    env.ok(&[
        "node",
        "add",
        "02:00:00:00:0b:01",
        "--image",
        "deb",
        "--name",
        "n1",
    ])?;
    let node = env.json(&["node", "show", "n1", "--json"])?;
    let s1 = serve_logged(&env, "s1", "127.0.0.1", &env.path("s1.log"))?;
    within(Duration::from_secs(15), "n1 owned by s1", || {
        Ok(owners(&env)?["n1"].as_deref() == Some("s1"))
    })?;
    Ok(Some((pg, env, node, s1)))
}

/// s1's heartbeat age in `server list`, in milliseconds.
fn heartbeat_age(env: &Env) -> Result<i64> {
    let list = servers(env)?;
    Ok(list
        .get("s1")
        .and_then(|s| s["heartbeat_age_ms"].as_i64())
        .unwrap_or(i64::MAX))
}

fn login_eventually(portal: &str, node: &serde_json::Value, isid: u8) -> Result<Session> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match Session::login(portal, node, isid) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

#[test]
fn a_fast_registry_restart_under_load_keeps_sessions_serving() -> Result {
    let Some((mut pg, env, node, s1)) =
        setup("cli::registry_restart::a_fast_registry_restart_under_load_keeps_sessions_serving")?
    else {
        return Ok(());
    };
    let log = env.path("s1.log");
    let portal = format!("127.0.0.1:{}", s1.port);
    let mut a = login_eventually(&portal, &node, 1)?;
    assert_eq!(a.register(0xA1)?, GOOD);
    // Load: a 4 KiB write every 100 ms for 6 s, through the restart.
    let load = writer("127.0.0.1", s1.port, &node, 0, 60)?;
    std::thread::sleep(Duration::from_millis(1500));

    let down = Instant::now();
    pg.halt();
    // No registry: a reservation change cannot be saved, so it is refused
    // (INTERNAL TARGET FAILURE), not acknowledged and then lost.
    let pr = a.prout(0, 0, 0xA1, 0xA2)?;
    // Down 1.2 s, as a restart of a busy server may take: a heartbeat or
    // two fail. Within the lease's margin: the last heartbeat before the
    // outage renewed the lease 3.5 s ahead and came at most a second
    // before it, and the first one after it comes within a second.
    std::thread::sleep(Duration::from_millis(1200).saturating_sub(down.elapsed()));
    pg.start_again()?;
    let outage = down.elapsed();
    assert_eq!(
        pr, CHECK_CONDITION,
        "a PR change acknowledged without a registry"
    );
    assert!(
        outage < Duration::from_millis(2000),
        "PostgreSQL took {outage:?} to restart: too slow for a fast restart"
    );

    let out = finish(load, Duration::from_secs(40))?;
    let t = text(&out);
    let (stall, writes) = longest_write(&t);
    assert!(
        out.status.success() && !t.contains("failed") && writes == 60,
        "writes during the restart: {t}"
    );
    // Heartbeats resume: `server list` shows s1 fresh again.
    let back = Instant::now();
    let fresh = within(Duration::from_secs(10), "s1's heartbeat fresh", || {
        Ok(heartbeat_age(&env)? < 1500)
    })
    .map_err(|e| with_logs(e, &[&log]))?;
    println!(
        "registry down {outage:?}; longest write {stall:?} of {writes}; heartbeat fresh {:?} after the load ended ({fresh:?})",
        back.elapsed()
    );
    let l = std::fs::read_to_string(&log)?;
    assert!(!l.contains("ownership lease lapsed"), "{l}");
    // It did lose the registry, and found it again by itself.
    assert!(l.contains("heartbeat written again"), "{l}");
    // The same session carries on; the refused change left nothing behind
    // and the next one is saved.
    assert_eq!(a.read_keys()?, (1, vec![0xA1]));
    assert_eq!(a.prout(0, 0, 0xA1, 0xA2)?, GOOD);
    assert_eq!(a.read_keys()?, (2, vec![0xA2]));
    verify("127.0.0.1", s1.port, &node, 0, 60)?;
    s1.stop()
}

#[test]
fn a_registry_outage_longer_than_the_lease_stops_service_until_it_returns() -> Result {
    let Some((mut pg, env, node, s1)) = setup(
        "cli::registry_restart::a_registry_outage_longer_than_the_lease_stops_service_until_it_returns",
    )?
    else {
        return Ok(());
    };
    let log = env.path("s1.log");
    // A 4 KiB write every 100 ms for 12 s: across a 6 s outage.
    let load = writer("127.0.0.1", s1.port, &node, 0, 120)?;
    std::thread::sleep(Duration::from_millis(1500));
    pg.halt();
    let down = Instant::now();
    let fenced = within(Duration::from_secs(8), "s1 fencing itself", || {
        Ok(std::fs::read_to_string(&log)?.contains("ownership lease lapsed"))
    })
    .map_err(|e| with_logs(e, &[&log]))?;
    std::thread::sleep(Duration::from_secs(6).saturating_sub(down.elapsed()));
    pg.start_again()?;
    let outage = down.elapsed();
    let up = Instant::now();
    // s1 claims n1 again by itself and serves it; the node's initiator
    // (libiscsi, reconnecting) finishes every write, none of them failed.
    let served = within(Duration::from_secs(20), "n1 served again", || {
        Ok(std::fs::read_to_string(&log)?
            .matches("targets: serving ")
            .count()
            >= 2)
    })
    .map_err(|e| with_logs(e, &[&log]))?;
    let out = finish(load, Duration::from_secs(60))?;
    let t = text(&out);
    let (stall, writes) = longest_write(&t);
    println!(
        "registry down {outage:?}: s1 fenced itself {fenced:?} in, served n1 again {served:?} after the registry came back; the load finished {:?} after that, longest write {stall:?} of {writes}",
        up.elapsed()
    );
    assert!(
        out.status.success() && !t.contains("failed") && writes == 120,
        "{}",
        with_logs(t.into(), &[&log])
    );
    assert!(
        stall >= Duration::from_secs(2),
        "no stall at all: {stall:?}"
    );
    assert!(heartbeat_age(&env)? < 2000);
    verify("127.0.0.1", s1.port, &node, 0, 120)?;
    s1.stop()
}
