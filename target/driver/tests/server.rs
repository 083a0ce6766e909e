//! The server over real TCP on 127.0.0.1 with the protocol crate's sans-IO
//! initiator: session reinstatement, isolation
//! of a hostile connection, the connection cap and orderly shutdown.

mod common;

use common::*;
use iscsi_proto::initiator::Event;
use iscsi_proto::pdu::Response;
use iscsi_target::ServerConfig;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout;

#[tokio::test]
async fn same_isid_reinstates_new_isid_coexists() -> Res<()> {
    let (server, addr, _task) = start(ServerConfig::default()).await?;
    let mut a = login(addr, [0x80, 0, 0, 0, 0, 1]).await?;
    // The first command of a new nexus reports the power-on unit attention.
    assert_eq!(tur(&mut a).await?, 0x02);
    assert_eq!(tur(&mut a).await?, 0x00);
    // Another ISID (the OS initiator after iPXE): both sessions live on.
    let mut b = login(addr, [0x80, 0, 0, 0, 0, 2]).await?;
    assert_eq!(tur(&mut b).await?, 0x02);
    assert_eq!(tur(&mut a).await?, 0x00);
    assert_eq!(server.session_count(), 2);
    // Same ISID as `a`: reinstatement ends `a`.
    let mut c = login(addr, [0x80, 0, 0, 0, 0, 1]).await?;
    assert!(a.closed().await, "old session must end");
    assert_eq!(tur(&mut c).await?, 0x02);
    assert_eq!(tur(&mut b).await?, 0x00);
    Ok(())
}

#[tokio::test]
async fn hostile_connection_does_not_disturb_others() -> Res<()> {
    let (_server, addr, _task) = start(ServerConfig::default()).await?;
    let mut good = login(addr, [0x80, 0, 0, 0, 0, 3]).await?;
    assert_eq!(tur(&mut good).await?, 0x02);
    // Garbage before login, and an oversized segment after login.
    let mut bad = TcpStream::connect(addr).await?;
    bad.write_all(&[0xffu8; 4096]).await?;
    assert!(closed(&mut bad).await);
    let mut bad = login(addr, [0x80, 0, 0, 0, 0, 4]).await?;
    let mut bhs = [0u8; 48];
    bhs[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    bad.stream.write_all(&bhs).await?;
    assert!(bad.closed().await);
    assert_eq!(tur(&mut good).await?, 0x00);
    Ok(())
}

#[tokio::test]
async fn connection_cap_and_shutdown() -> Res<()> {
    let (server, addr, task) = start(ServerConfig {
        max_connections: 1,
        ..ServerConfig::default()
    })
    .await?;
    let mut first = login(addr, [0x80, 0, 0, 0, 0, 5]).await?;
    let mut second = TcpStream::connect(addr).await?;
    assert!(closed(&mut second).await, "over the cap: closed at once");
    assert_eq!(tur(&mut first).await?, 0x02);
    // Shutdown asks the initiator to log out (Async Message), then closes.
    server.shutdown();
    let msg = first.next_event().await?;
    assert!(
        matches!(msg, Event::Pdu(Response::Async { event: 1, .. })),
        "logout requested: {msg:?}"
    );
    assert!(first.closed().await);
    timeout(LIMIT, task).await??;
    Ok(())
}

#[tokio::test]
async fn the_observer_sees_logins_and_their_end() -> Res<()> {
    use iscsi_target::SessionEvent;
    let (server, addr, _task) = start(ServerConfig::default()).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    assert!(server.observe(Arc::new(move |ev: &SessionEvent| {
        let _ = tx.send(ev.clone());
    })));
    let isid = [0x80, 0, 0, 0, 0, 7];
    let mut s = login(addr, isid).await?;
    match timeout(LIMIT, rx.recv()).await?.ok_or("no event")? {
        SessionEvent::LoggedIn {
            initiator,
            target,
            isid: got,
            ..
        } => {
            assert_eq!(
                (initiator.as_str(), target.as_str()),
                ("iqn.2026-11.test:init", IQN)
            );
            assert_eq!(got, isid);
        }
        other => panic!("expected a login, got {other:?}"),
    }
    s.ini.logout();
    assert!(matches!(
        s.next_event().await?,
        Event::LoggedOut { response: 0, .. }
    ));
    assert!(s.closed().await);
    match timeout(LIMIT, rx.recv()).await?.ok_or("no event")? {
        SessionEvent::Ended { reason, .. } => {
            assert!(
                matches!(reason, iscsi_target::EndReason::Logout),
                "{reason:?}"
            );
            assert_eq!(reason.to_string(), "logout");
        }
        other => panic!("expected the end, got {other:?}"),
    }
    Ok(())
}

/// A target about to be served here (a takeover under way): its
/// initiator's login is held, not answered, and goes on as soon as the
/// target arrives, so the node's stall ends with the takeover rather than
/// at its initiator's next retry. Held past `coming_hold`, it is answered
/// "service unavailable" (0x0301), which initiators retry. Anyone else's
/// login to that name gets the unknown-target answer at once.
#[tokio::test]
async fn a_login_for_a_coming_target_is_held_until_it_arrives() -> Res<()> {
    use iscsi_target::Elsewhere;
    use std::time::{Duration, Instant};
    let (server, addr, _task) = start_with(
        ServerConfig {
            coming_hold: Duration::from_secs(3),
            ..ServerConfig::default()
        },
        vec![],
    )
    .await?;
    server.set_elsewhere(IQN, INITIATOR, Elsewhere::Coming);
    let arrives = Duration::from_millis(700);
    let (srv, t) = (server.clone(), target(IQN, 2048)?);
    let adder = tokio::spawn(async move {
        tokio::time::sleep(arrives).await;
        let added = srv.add_target(t);
        srv.clear_moved(IQN);
        added.map_err(|e| e.to_string())
    });
    let t = Instant::now();
    let mut c = login(addr, [0x80, 0, 0, 0, 0, 8]).await?;
    let waited = t.elapsed();
    assert!(
        waited >= arrives,
        "answered before the target came: {waited:?}"
    );
    assert!(waited < Duration::from_secs(3), "held too long: {waited:?}");
    adder.await??;
    assert_eq!(tur(&mut c).await?, 0x02);

    // Never arrives: answered 0x0301 once the hold is over.
    server.set_elsewhere("iqn.2026-11.test:late", INITIATOR, Elsewhere::Coming);
    let t = Instant::now();
    let stream = TcpStream::connect(addr).await?;
    let (_c, status) = login_as(
        stream,
        INITIATOR,
        Some("iqn.2026-11.test:late"),
        [0x80, 0, 0, 0, 0, 9],
    )
    .await?;
    assert_eq!(status, (3, 1));
    let waited = t.elapsed();
    assert!(waited >= Duration::from_secs(3), "{waited:?}");

    // Another initiator learns nothing: the unknown-target answer (the
    // decoy's authentication failure), at once.
    let t = Instant::now();
    let stream = TcpStream::connect(addr).await?;
    let (_c, status) = login_as(
        stream,
        "iqn.other",
        Some("iqn.2026-11.test:late"),
        [0x80, 0, 0, 0, 0, 10],
    )
    .await?;
    assert_ne!(status, (3, 1));
    assert_ne!(status, (0, 0));
    assert!(t.elapsed() < Duration::from_secs(2));
    Ok(())
}
