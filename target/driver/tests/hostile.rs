//! Hostile peers on the boot network against the server over real TCP on
//! loopback: they must not end, starve or crowd out another node's session.

mod common;

use common::*;
use iscsi_target::ServerConfig;
use tokio::net::TcpStream;

const VICTIM_ISID: [u8; 6] = [0x00, 0x02, 0x3d, 0x00, 0x00, 0x01];

#[tokio::test]
async fn discovery_or_foreign_target_login_does_not_end_a_session() -> Res<()> {
    const OTHER: &str = "iqn.2026-11.test:other";
    let (server, addr, _task) = start_with(
        ServerConfig::default(),
        vec![target(IQN, 2048)?, target(OTHER, 2048)?],
    )
    .await?;
    let mut victim = login(addr, VICTIM_ISID).await?;
    assert_eq!(tur(&mut victim).await?, 0x02, "power-on UA");
    assert_eq!(tur(&mut victim).await?, 0x00);

    // A discovery login (no credentials needed) with the victim's
    // initiator name and the well-known open-iscsi ISID.
    let (attacker, status) = login_as(
        TcpStream::connect(addr).await?,
        INITIATOR,
        None,
        VICTIM_ISID,
    )
    .await?;
    assert_eq!(status, (0, 0));
    // A normal login to another target with the same name and ISID: a
    // different I_T nexus, so no reinstatement either.
    let (mut other, status) = login_as(
        TcpStream::connect(addr).await?,
        INITIATOR,
        Some(OTHER),
        VICTIM_ISID,
    )
    .await?;
    assert_eq!(status, (0, 0));
    assert_eq!(tur(&mut other).await?, 0x02);

    // The victim's I/O goes on.
    for i in 0..4 {
        assert_eq!(tur(&mut victim).await?, 0x00, "victim TUR {i}");
    }
    assert_eq!(read10(&mut victim, 8).await?, 4096);
    assert_eq!(server.session_count(), 3);
    drop(attacker);
    drop(other);
    assert_eq!(tur(&mut victim).await?, 0x00);
    Ok(())
}

#[tokio::test]
async fn idle_sockets_from_one_source_do_not_stop_another_sources_login() -> Res<()> {
    let (_server, addr, _task) = start(ServerConfig::default()).await?;
    // 1024 sockets that never log in, from one machine (127.0.0.1).
    let mut idle = Vec::new();
    for _ in 0..1024 {
        idle.push(connect_from("127.0.0.1", addr).await?);
    }
    // Another machine (127.0.0.2) logs in and uses its disk.
    let victim = connect_from("127.0.0.2", addr).await?;
    let (mut victim, status) = login_as(victim, INITIATOR, Some(IQN), VICTIM_ISID).await?;
    assert_eq!(status, (0, 0), "login from another source");
    assert_eq!(tur(&mut victim).await?, 0x02);
    assert_eq!(read10(&mut victim, 8).await?, 4096);
    // The flooding source keeps at most its share: all but 64 of its
    // sockets were closed, and it can still log in itself (its oldest idle
    // socket makes room).
    let mut open = 0;
    for s in &mut idle {
        let mut b = [0u8; 1];
        match tokio::time::timeout(std::time::Duration::from_millis(2), s.peek(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            _ => open += 1,
        }
    }
    println!("idle sockets still open: {open} of 1024");
    assert!(open <= 64, "{open} idle sockets from one source kept");
    let same = connect_from("127.0.0.1", addr).await?;
    let (_same, status) = login_as(same, INITIATOR, Some(IQN), [0x80, 0, 0, 0, 0, 9]).await?;
    assert_eq!(status, (0, 0), "login from the flooding source");
    Ok(())
}
