//! CHAP with a real initiator: libiscsi's `iscsi-inq` against the server in
//! this process, one-way and mutual (the target proves itself with its own
//! secret when the initiator asks, as iPXE and open-iscsi do with reverse
//! credentials), and login answers that do not tell an unauthenticated
//! initiator which targets exist.
//!
//! Without `iscsi-inq` (package libiscsi-bin) the test is skipped, unless
//! `BOOTD_E2E=1` demands it.

mod common;

use common::*;
use iscsi_proto::conn::ChapCredentials;
use iscsi_target::ServerConfig;
use std::process::Command;
use tokio::net::TcpStream;

const USER: &str = "node1";
const SECRET: &str = "node1-secret-1234";
const TARGET_USER: &str = "bootd-target";
const TARGET_SECRET: &str = "target-secret-5678";

fn have_tool(name: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("BOOTD_E2E").as_deref() != Ok("1"),
            "{name} missing (libiscsi-bin) and BOOTD_E2E=1"
        );
        println!("skipped: {name} not installed (libiscsi-bin)");
    }
    found
}

/// Runs iscsi-inq (bounded by coreutils' timeout); true if it succeeded.
async fn inq(url: String) -> Res<(bool, String)> {
    let out = tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .args(["20", "iscsi-inq", "-i", INITIATOR, &url])
            .output()
    })
    .await??;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

async fn server(mutual: bool) -> Res<std::net::SocketAddr> {
    let mut t = target(IQN, 2048)?;
    t.chap = Some(ChapCredentials {
        user: USER.into(),
        secret: SECRET.as_bytes().to_vec(),
        mutual: mutual.then(|| (TARGET_USER.into(), TARGET_SECRET.as_bytes().to_vec())),
    });
    let (_server, addr, _task) = start_with(ServerConfig::default(), vec![t]).await?;
    Ok(addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libiscsi_one_way_and_mutual_chap() -> Res<()> {
    if !have_tool("iscsi-inq") {
        return Ok(());
    }
    let addr = server(true).await?;
    let url = |user: &str, secret: &str, target: Option<(&str, &str)>| {
        let mut u = format!("iscsi://{user}%{secret}@{addr}/{IQN}/0");
        if let Some((tu, tp)) = target {
            u.push_str(&format!("?target_user={tu}&target_password={tp}"));
        }
        u
    };
    // Mutual: the initiator checks the target's answer.
    let (ok, out) = inq(url(USER, SECRET, Some((TARGET_USER, TARGET_SECRET)))).await?;
    assert!(ok && out.contains("BOOTD"), "mutual CHAP login: {out}");
    // The initiator expects another target secret: it must refuse us.
    let (ok, out) = inq(url(
        USER,
        SECRET,
        Some((TARGET_USER, "not-the-target-secret")),
    ))
    .await?;
    assert!(
        !ok,
        "initiator accepted a target that proved the wrong secret: {out}"
    );
    // One-way CHAP still works where the initiator does not ask.
    let (ok, out) = inq(url(USER, SECRET, None)).await?;
    assert!(ok, "one-way CHAP login: {out}");
    // A wrong initiator secret is refused.
    let (ok, _) = inq(url(USER, "wrong-secret-0000", None)).await?;
    assert!(!ok, "wrong initiator secret accepted");

    // A target without reverse credentials refuses an initiator that asks
    // for mutual CHAP rather than log it in unproven.
    let one_way = server(false).await?;
    let u = format!(
        "iscsi://{USER}%{SECRET}@{one_way}/{IQN}/0?target_user={TARGET_USER}&target_password={TARGET_SECRET}"
    );
    let (ok, out) = inq(u).await?;
    assert!(
        !ok,
        "mutual CHAP asked, none configured, yet logged in: {out}"
    );
    Ok(())
}

#[tokio::test]
async fn login_answers_do_not_reveal_which_targets_exist() -> Res<()> {
    let addr = server(false).await?;
    // No credentials: an existing CHAP target and an unknown name get the
    // same status (authentication failure) and no keys.
    let mut answers = Vec::new();
    for name in [IQN, "iqn.2026-11.test:no-such-target"] {
        let s = TcpStream::connect(addr).await?;
        let (_conn, status) = login_as(s, INITIATOR, Some(name), [0x80, 0, 0, 0, 0, 1]).await?;
        answers.push(status);
    }
    assert_eq!(answers, vec![(2, 1), (2, 1)]);
    Ok(())
}
