//! The server over real TCP on 127.0.0.1 with a minimal initiator built
//! from the protocol crate's own encoder: session reinstatement, isolation
//! of a hostile connection, the connection cap and orderly shutdown.

use bytes::{Bytes, BytesMut};
use iscsi_proto::pdu::{self, Digests, LoginRequest, RawPdu, Request, ScsiCommandPdu};
use iscsi_proto::text::Pairs;
use iscsi_target::lun::{Lun, LunConfig};
use iscsi_target::mem::MemDevice;
use iscsi_target::{Server, ServerConfig, Target};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const IQN: &str = "iqn.2026-11.test:server";
const LIMIT: Duration = Duration::from_secs(10);

async fn start(
    config: ServerConfig,
) -> Res<(Arc<Server>, SocketAddr, tokio::task::JoinHandle<()>)> {
    let lun = Lun::new(
        Arc::new(MemDevice::new(512, 2048, false)),
        LunConfig {
            serial: "s1".into(),
            naa_id: 1,
            vendor: "BOOTD".into(),
            product: "test".into(),
            pr_state: None,
            removable: false,
        },
    )?;
    let server = Server::new(config);
    server.add_target(Target {
        iqn: IQN.into(),
        alias: None,
        luns: BTreeMap::from([(0, Arc::new(lun))]),
        allowed_initiators: None,
        chap: None,
    })?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let srv = server.clone();
    let task = tokio::spawn(async move {
        let _ = srv.serve(listener).await;
    });
    Ok((server, addr, task))
}

/// Reads one target PDU.
async fn read_pdu(s: &mut TcpStream) -> Res<RawPdu> {
    let mut buf = BytesMut::new();
    loop {
        if let Some(len) = pdu::frame_len(&buf, Digests::default(), 1 << 24)? {
            return Ok(RawPdu::parse(
                buf.split_to(len).freeze(),
                Digests::default(),
            )?);
        }
        if timeout(LIMIT, s.read_buf(&mut buf)).await?? == 0 {
            return Err("connection closed".into());
        }
    }
}

async fn send(s: &mut TcpStream, req: &Request) -> Res<()> {
    let mut out = BytesMut::new();
    req.encode(&mut out, Digests::default());
    s.write_all(&out).await?;
    Ok(())
}

/// Logs in to a normal session straight from the operational stage.
async fn login(addr: SocketAddr, isid: [u8; 6]) -> Res<TcpStream> {
    let mut s = TcpStream::connect(addr).await?;
    let mut keys = Pairs::default();
    keys.push("InitiatorName", "iqn.2026-11.test:init");
    keys.push("TargetName", IQN);
    keys.push("SessionType", "Normal");
    send(
        &mut s,
        &Request::Login(LoginRequest {
            transit: true,
            cont: false,
            csg: 1,
            nsg: 3,
            version_max: 0,
            version_min: 0,
            isid,
            tsih: 0,
            itt: 1,
            cid: 0,
            cmd_sn: 1,
            exp_stat_sn: 0,
            data: keys.encode(),
        }),
    )
    .await?;
    let r = read_pdu(&mut s).await?;
    assert_eq!(r.opcode(), pdu::op::LOGIN_RESPONSE);
    assert_eq!((r.bhs[36], r.bhs[37]), (0, 0), "login status");
    Ok(s)
}

/// TEST UNIT READY; returns the SCSI status.
async fn tur(s: &mut TcpStream, itt: u32, cmd_sn: u32) -> Res<u8> {
    let mut cdb = vec![0u8; 16];
    cdb[0] = 0x00;
    send(
        s,
        &Request::ScsiCommand(ScsiCommandPdu {
            immediate: false,
            final_: true,
            read: false,
            write: false,
            attr: 1,
            lun: 0,
            itt,
            expected_len: 0,
            cmd_sn,
            exp_stat_sn: 0,
            cdb: Bytes::from(cdb),
            data: Bytes::new(),
        }),
    )
    .await?;
    let r = read_pdu(s).await?;
    assert_eq!(r.opcode(), pdu::op::SCSI_RESPONSE);
    Ok(r.bhs[3])
}

async fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 512];
    loop {
        match timeout(LIMIT, s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn same_isid_reinstates_new_isid_coexists() -> Res<()> {
    let (server, addr, _task) = start(ServerConfig::default()).await?;
    let mut a = login(addr, [0x80, 0, 0, 0, 0, 1]).await?;
    // The first command of a new nexus reports the power-on unit attention.
    assert_eq!(tur(&mut a, 10, 1).await?, 0x02);
    assert_eq!(tur(&mut a, 11, 2).await?, 0x00);
    // Another ISID (the OS initiator after iPXE): both sessions live on.
    let mut b = login(addr, [0x80, 0, 0, 0, 0, 2]).await?;
    assert_eq!(tur(&mut b, 10, 1).await?, 0x02);
    assert_eq!(tur(&mut a, 12, 3).await?, 0x00);
    assert_eq!(server.session_count(), 2);
    // Same ISID as `a`: reinstatement ends `a`.
    let mut c = login(addr, [0x80, 0, 0, 0, 0, 1]).await?;
    assert!(closed(&mut a).await, "old session must end");
    assert_eq!(tur(&mut c, 10, 1).await?, 0x02);
    assert_eq!(tur(&mut b, 11, 2).await?, 0x00);
    Ok(())
}

#[tokio::test]
async fn hostile_connection_does_not_disturb_others() -> Res<()> {
    let (_server, addr, _task) = start(ServerConfig::default()).await?;
    let mut good = login(addr, [0x80, 0, 0, 0, 0, 3]).await?;
    assert_eq!(tur(&mut good, 1, 1).await?, 0x02);
    // Garbage before login, and an oversized segment after login.
    let mut bad = TcpStream::connect(addr).await?;
    bad.write_all(&[0xffu8; 4096]).await?;
    assert!(closed(&mut bad).await);
    let mut bad = login(addr, [0x80, 0, 0, 0, 0, 4]).await?;
    let mut bhs = [0u8; 48];
    bhs[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    bad.write_all(&bhs).await?;
    assert!(closed(&mut bad).await);
    assert_eq!(tur(&mut good, 2, 2).await?, 0x00);
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
    assert_eq!(tur(&mut first, 1, 1).await?, 0x02);
    // Shutdown asks the initiator to log out (Async Message), then closes.
    server.shutdown();
    let msg = read_pdu(&mut first).await?;
    assert_eq!(msg.opcode(), pdu::op::ASYNC);
    assert_eq!(msg.bhs[36], 1, "logout requested");
    assert!(closed(&mut first).await);
    timeout(LIMIT, task).await??;
    Ok(())
}

#[tokio::test]
async fn the_observer_sees_logins_and_their_end() -> Res<()> {
    use iscsi_proto::pdu::LogoutPdu;
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
    send(
        &mut s,
        &Request::Logout(LogoutPdu {
            immediate: true,
            reason: 0,
            itt: 2,
            cid: 0,
            cmd_sn: 1,
            exp_stat_sn: 1,
        }),
    )
    .await?;
    assert!(closed(&mut s).await);
    match timeout(LIMIT, rx.recv()).await?.ok_or("no event")? {
        SessionEvent::Ended { reason, .. } => assert_eq!(reason, "logout"),
        other => panic!("expected the end, got {other:?}"),
    }
    Ok(())
}
