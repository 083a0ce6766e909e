//! Persistent reservations live in the registry (issue 15): what a node's
//! initiators registered and reserved is still there after serve is
//! killed and started again (SQLite), and after another server takes the
//! node over (PostgreSQL), where a non-holder's write still meets
//! RESERVATION CONFLICT. The initiator is the protocol crate's, two ISIDs
//! of the node's IQN being the two I_T nexuses.

use crate::common::*;
use crate::pr_client::{Session, GOOD, RESERVATION_CONFLICT, WE};
use crate::servers::{owners, within};
use crate::takeover::{registry_with_one_node, s1_owns_n1_beside_s2, serve_logged, with_logs};
use std::time::{Duration, Instant};

const KEY_A: u64 = 0xA1A1_0000_0000_00A1;
const KEY_B: u64 = 0xB2;

/// Logs in as soon as the node's target is up (serve has just started).
fn login_eventually(portal: &str, node: &serde_json::Value, isid: u8) -> Result<Session> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match Session::login(portal, node, isid) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() > deadline => {
                return Err(format!("login to {portal}: {e}").into())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// A registers and reserves Write Exclusive, B registers; B may not write.
fn register_and_reserve(portal: &str, node: &serde_json::Value) -> Result {
    let mut a = login_eventually(portal, node, 1)?;
    let mut b = Session::login(portal, node, 2)?;
    assert_eq!(a.register(KEY_A)?, GOOD);
    assert_eq!(b.register(KEY_B)?, GOOD);
    assert_eq!(a.reserve(KEY_A, WE)?, GOOD);
    assert_eq!(b.write_block(8, 0xbb)?, RESERVATION_CONFLICT);
    assert_eq!(a.write_block(8, 0xaa)?, GOOD);
    Ok(())
}

/// What a fresh session of B's nexus finds: PRgeneration `generation`,
/// both keys, A's reservation, and its own writes refused; A's nexus
/// still writes.
fn still_reserved(portal: &str, node: &serde_json::Value, generation: u32) -> Result {
    let mut b = login_eventually(portal, node, 2)?;
    assert_eq!(b.read_keys()?, (generation, vec![KEY_A, KEY_B]));
    assert_eq!(b.read_reservation()?, Some((KEY_A, WE)));
    assert_eq!(b.write_block(8, 0xbb)?, RESERVATION_CONFLICT);
    let mut a = Session::login(portal, node, 1)?;
    assert_eq!(a.write_block(9, 0xaa)?, GOOD);
    Ok(())
}

#[test]
fn reservations_survive_a_sigkill_and_restart_of_serve() -> Result {
    let env = Env::new()?;
    let node = one_node(&env, "02:00:00:00:0a:01")?;
    let serve = Serve::start(&env)?;
    register_and_reserve(&format!("127.0.0.1:{}", serve.port), &node)?;
    // SIGKILL: nothing is written on the way out.
    drop(serve);
    let serve = Serve::start(&env)?;
    still_reserved(&format!("127.0.0.1:{}", serve.port), &node, 2)?;
    serve.stop()
}

#[test]
fn a_peer_that_takes_the_node_over_keeps_its_reservation() -> Result {
    let Some((env, node)) = registry_with_one_node(
        "cli::reservations::a_peer_that_takes_the_node_over_keeps_its_reservation",
    )?
    else {
        return Ok(());
    };
    let (s1, s2, log1, log2) = s1_owns_n1_beside_s2(&env, &[])?;
    register_and_reserve(&format!("127.0.0.1:{}", s1.port), &node)
        .map_err(|e| with_logs(e, &[&log1, &log2]))?;
    // The owner dies; s2 takes n1 once s1's ownership has expired.
    drop(s1);
    let killed = Instant::now();
    within(Duration::from_secs(20), "n1 owned by s2", || {
        Ok(owners(&env)?["n1"].as_deref() == Some("s2"))
    })
    .map_err(|e| with_logs(e, &[&log1, &log2]))?;
    println!("s1 killed: n1 owned by s2 {:?} later", killed.elapsed());
    still_reserved(&format!("127.0.0.2:{}", s2.port), &node, 2)
        .map_err(|e| with_logs(e, &[&log1, &log2]))?;

    // s1 comes back: n1 (pinned, idle) moves back to it, state and all,
    // and a change made there (A registers its key again: the
    // PRgeneration moves on) goes with n1 when s1 is drained.
    let s1 = serve_logged(&env, "s1", "127.0.0.1", &log1)?;
    within(Duration::from_secs(20), "n1 back on s1", || {
        Ok(owners(&env)?["n1"].as_deref() == Some("s1"))
    })
    .map_err(|e| with_logs(e, &[&log1, &log2]))?;
    let p1 = format!("127.0.0.1:{}", s1.port);
    still_reserved(&p1, &node, 2).map_err(|e| with_logs(e, &[&log1, &log2]))?;
    let mut a = Session::login(&p1, &node, 1)?;
    assert_eq!(a.prout(0, 0, KEY_A, KEY_A)?, GOOD);
    drop(a);
    env.ok(&["server", "drain", "s1"])?;
    within(Duration::from_secs(20), "n1 on s2 after the drain", || {
        Ok(owners(&env)?["n1"].as_deref() == Some("s2"))
    })
    .map_err(|e| with_logs(e, &[&log1, &log2]))?;
    still_reserved(&format!("127.0.0.2:{}", s2.port), &node, 3)
        .map_err(|e| with_logs(e, &[&log1, &log2]))?;
    s1.stop()?;
    s2.stop()
}

/// libiscsi's persistent-reservation tests (`ALL.Prin*`, `ALL.Prout*`:
/// 20 tests) through serve's registry-backed store, as the conformance
/// suite runs them through `export`. Both sessions use the node's IQN
/// (the only one its target admits): libiscsi gives each its own ISID,
/// so they are two I_T nexuses.
fn libiscsi_pr_suite(portal: &str, node: &serde_json::Value) -> Result {
    let s = |k: &str| node[k].as_str().unwrap_or_default().to_string();
    let url = format!(
        "iscsi://{}%{}@{portal}/{}/0",
        s("chap_user"),
        s("chap_secret"),
        s("target_iqn")
    );
    let (mut passed, mut failed) = (0, Vec::new());
    for family in ["ALL.Prin*", "ALL.Prout*"] {
        let mut c = std::process::Command::new("iscsi-test-cu");
        c.args(["-d", "-t", family, "-i"])
            .arg(s("initiator_iqn"))
            .arg("-I")
            .arg(s("initiator_iqn"))
            .arg(&url);
        let out = run(c)?;
        let log = String::from_utf8_lossy(&out.stdout).to_string();
        let report = bootd_tests::cunit::parse(&log).map_err(|e| format!("{e:#}\n{log}"))?;
        passed += report.count(bootd_tests::cunit::Outcome::Passed);
        failed.extend(
            report
                .with(bootd_tests::cunit::Outcome::Failed)
                .map(|t| t.name.clone()),
        );
    }
    assert!(failed.is_empty(), "failed: {failed:?}");
    assert_eq!(passed, 20, "libiscsi's PR tests that passed");
    // What a saved change costs: 50 REGISTERs of the same key, each a
    // registry transaction before its GOOD.
    let mut a = Session::login(portal, node, 1)?;
    let (_, keys) = a.read_keys()?;
    let mut key = keys.first().copied().unwrap_or(0);
    if key == 0 {
        assert_eq!(a.register(KEY_A)?, GOOD);
        key = KEY_A;
    }
    let t = Instant::now();
    for _ in 0..50 {
        assert_eq!(a.prout(0, 0, key, key)?, GOOD);
    }
    println!(
        "PERSISTENT RESERVE OUT saved in the registry: {:?} each (mean of 50)",
        t.elapsed() / 50
    );
    Ok(())
}

#[test]
fn libiscsi_reservation_tests_pass_through_serve() -> Result {
    if !bootd_tests::env::Needs::new()
        .tool("iscsi-test-cu", "libiscsi-bin")
        .met("cli::reservations::libiscsi_reservation_tests_pass_through_serve")
    {
        return Ok(());
    }
    let env = Env::new()?;
    let node = one_node(&env, "02:00:00:00:0a:02")?;
    let serve = Serve::start(&env)?;
    let portal = format!("127.0.0.1:{}", serve.port);
    drop(login_eventually(&portal, &node, 1)?);
    libiscsi_pr_suite(&portal, &node)?;
    serve.stop()
}

#[test]
fn libiscsi_reservation_tests_pass_through_serve_on_postgres() -> Result {
    let test = "cli::reservations::libiscsi_reservation_tests_pass_through_serve_on_postgres";
    if !bootd_tests::env::Needs::new()
        .tool("iscsi-test-cu", "libiscsi-bin")
        .met(test)
    {
        return Ok(());
    }
    let Some((env, node)) = registry_with_one_node(test)? else {
        return Ok(());
    };
    let log = env.path("s1.log");
    let s1 = serve_logged(&env, "s1", "127.0.0.1", &log)?;
    let portal = format!("127.0.0.1:{}", s1.port);
    drop(login_eventually(&portal, &node, 1)?);
    libiscsi_pr_suite(&portal, &node).map_err(|e| with_logs(e, &[&log]))?;
    s1.stop()
}
