//! A minimal initiator built from the protocol crate's own encoder, and a
//! server with one in-memory target, shared by the server tests.
#![allow(dead_code)] // each test binary uses its own subset

use blockdev::MemDevice;
use bytes::{Bytes, BytesMut};
use iscsi_proto::pdu::{self, Digests, LoginRequest, RawPdu, Request, ScsiCommandPdu};
use iscsi_proto::text::Pairs;
use iscsi_target::lun::{Lun, LunConfig};
use iscsi_target::{Server, ServerConfig, Target};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::timeout;

pub type Res<T> = Result<T, Box<dyn std::error::Error>>;

pub const IQN: &str = "iqn.2026-11.test:server";
pub const INITIATOR: &str = "iqn.2026-11.test:init";
pub const LIMIT: Duration = Duration::from_secs(10);

pub fn target(iqn: &str, blocks: u64) -> Res<Target> {
    let lun = Lun::new(
        Arc::new(MemDevice::new(512, blocks, false)),
        LunConfig {
            serial: "s1".into(),
            naa_id: 1,
            vendor: "BOOTD".into(),
            product: "test".into(),
            pr_state: None,
            removable: false,
        },
    )?;
    Ok(Target {
        iqn: iqn.into(),
        alias: None,
        luns: BTreeMap::from([(0, Arc::new(lun))]),
        allowed_initiators: None,
        chap: None,
    })
}

/// A server on 127.0.0.1 with target [`IQN`] (1 MiB in memory).
pub async fn start(
    config: ServerConfig,
) -> Res<(Arc<Server>, SocketAddr, tokio::task::JoinHandle<()>)> {
    start_with(config, vec![target(IQN, 2048)?]).await
}

pub async fn start_with(
    config: ServerConfig,
    targets: Vec<Target>,
) -> Res<(Arc<Server>, SocketAddr, tokio::task::JoinHandle<()>)> {
    let server = Server::new(config);
    for t in targets {
        server.add_target(t)?;
    }
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let srv = server.clone();
    let task = tokio::spawn(async move {
        let _ = srv.serve(listener).await;
    });
    Ok((server, addr, task))
}

/// Reads exactly one target PDU (never past it, so PDUs that arrive
/// together are all seen).
pub async fn read_pdu(s: &mut TcpStream) -> Res<RawPdu> {
    let mut bhs = [0u8; 48];
    timeout(LIMIT, s.read_exact(&mut bhs)).await??;
    let ahs = usize::from(bhs[4]) * 4;
    let data = usize::from(bhs[5]) << 16 | usize::from(bhs[6]) << 8 | usize::from(bhs[7]);
    let mut rest = vec![0u8; ahs + data.div_ceil(4) * 4];
    timeout(LIMIT, s.read_exact(&mut rest)).await??;
    let mut buf = BytesMut::from(&bhs[..]);
    buf.extend_from_slice(&rest);
    let len = pdu::frame_len(&buf, Digests::default(), 1 << 24)?.ok_or("short PDU")?;
    Ok(RawPdu::parse(
        buf.split_to(len).freeze(),
        Digests::default(),
    )?)
}

pub async fn send(s: &mut TcpStream, req: &Request) -> Res<()> {
    let mut out = BytesMut::new();
    req.encode(&mut out, Digests::default());
    s.write_all(&out).await?;
    Ok(())
}

/// One login request/response from the operational stage straight to full
/// feature phase; returns the response's status (class, detail).
pub async fn login_as(
    s: &mut TcpStream,
    initiator: &str,
    target: Option<&str>,
    isid: [u8; 6],
) -> Res<(u8, u8)> {
    login_keys(s, initiator, target, isid, &[]).await
}

/// [`login_as`] with more keys (e.g. MaxRecvDataSegmentLength).
pub async fn login_keys(
    s: &mut TcpStream,
    initiator: &str,
    target: Option<&str>,
    isid: [u8; 6],
    extra: &[(&str, &str)],
) -> Res<(u8, u8)> {
    let mut keys = Pairs::default();
    for (k, v) in extra {
        keys.push(*k, *v);
    }
    keys.push("InitiatorName", initiator);
    match target {
        Some(t) => {
            keys.push("TargetName", t);
            keys.push("SessionType", "Normal");
        }
        None => keys.push("SessionType", "Discovery"),
    }
    send(
        s,
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
    let r = read_pdu(s).await?;
    assert_eq!(r.opcode(), pdu::op::LOGIN_RESPONSE);
    Ok((r.bhs[36], r.bhs[37]))
}

/// Logs in to a normal session of [`IQN`] as [`INITIATOR`].
pub async fn login(addr: SocketAddr, isid: [u8; 6]) -> Res<TcpStream> {
    let mut s = TcpStream::connect(addr).await?;
    let status = login_as(&mut s, INITIATOR, Some(IQN), isid).await?;
    assert_eq!(status, (0, 0), "login status");
    Ok(s)
}

/// Connects from a chosen local address (another loopback address stands
/// for another machine).
pub async fn connect_from(local: &str, addr: SocketAddr) -> Res<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(format!("{local}:0").parse()?)?;
    Ok(timeout(LIMIT, sock.connect(addr)).await??)
}

pub fn scsi(itt: u32, cmd_sn: u32, cdb: &[u8], read_len: u32, immediate: bool) -> Request {
    let mut c = vec![0u8; 16];
    c[..cdb.len()].copy_from_slice(cdb);
    Request::ScsiCommand(ScsiCommandPdu {
        immediate,
        final_: true,
        read: read_len > 0,
        write: false,
        attr: 1,
        lun: 0,
        itt,
        expected_len: read_len,
        cmd_sn,
        exp_stat_sn: 0,
        cdb: Bytes::from(c),
        data: Bytes::new(),
    })
}

/// TEST UNIT READY; returns the SCSI status.
pub async fn tur(s: &mut TcpStream, itt: u32, cmd_sn: u32) -> Res<u8> {
    send(s, &scsi(itt, cmd_sn, &[0x00], 0, false)).await?;
    let r = read_pdu(s).await?;
    assert_eq!(r.opcode(), pdu::op::SCSI_RESPONSE);
    Ok(r.bhs[3])
}

/// READ(10) of `blocks` 512-byte blocks at LBA 0; returns the bytes read.
pub async fn read10(s: &mut TcpStream, itt: u32, cmd_sn: u32, blocks: u16) -> Res<usize> {
    let len = u32::from(blocks) * 512;
    let b = blocks.to_be_bytes();
    send(
        s,
        &scsi(
            itt,
            cmd_sn,
            &[0x28, 0, 0, 0, 0, 0, 0, b[0], b[1], 0],
            len,
            false,
        ),
    )
    .await?;
    let mut got = 0;
    loop {
        let r = read_pdu(s).await?;
        match r.opcode() {
            pdu::op::DATA_IN => {
                got += r.data.len();
                // S bit: status in the last Data-In.
                if r.bhs[1] & 0x01 != 0 {
                    assert_eq!(r.bhs[3], 0, "read status");
                    return Ok(got);
                }
            }
            pdu::op::SCSI_RESPONSE => {
                assert_eq!(r.bhs[3], 0, "read status");
                return Ok(got);
            }
            op => return Err(format!("unexpected opcode {op:#x}").into()),
        }
    }
}

pub async fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 512];
    loop {
        match timeout(LIMIT, s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// This process's resident set size in bytes (from /proc).
pub fn rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}
