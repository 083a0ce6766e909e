//! The protocol crate's sans-IO initiator on a TCP stream, and a
//! server with one in-memory target, shared by the server tests.
#![allow(dead_code)] // each test binary uses its own subset

use blockdev::MemDevice;
use bytes::{Bytes, BytesMut};
use iscsi_proto::initiator::{Event, Initiator, InitiatorConfig, Outcome};
use iscsi_proto::pdu::{Request, Response, ScsiCommandPdu};
use iscsi_proto::scsi::opcode as op;
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
            pr_store: None,
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

/// A connection driven by the protocol crate's sans-IO initiator: this
/// wrapper only moves bytes between it and the socket.
pub struct Client {
    pub stream: TcpStream,
    pub ini: Initiator,
    buf: BytesMut,
}

impl Client {
    pub fn new(stream: TcpStream, config: InitiatorConfig) -> Self {
        Self {
            stream,
            ini: Initiator::new(config),
            buf: BytesMut::new(),
        }
    }

    /// Sends whatever the initiator has queued.
    pub async fn flush(&mut self) -> Res<()> {
        if let Some(out) = self.ini.poll_transmit() {
            self.stream.write_all(&out).await?;
        }
        Ok(())
    }

    /// The initiator's next event, reading from the target as needed.
    pub async fn next_event(&mut self) -> Res<Event> {
        loop {
            self.flush().await?;
            if let Some(ev) = self.ini.poll_event() {
                return Ok(ev);
            }
            self.buf.reserve(64 << 10);
            if timeout(LIMIT, self.stream.read_buf(&mut self.buf)).await?? == 0 {
                return Err("target closed the connection".into());
            }
            self.ini.handle_input(&mut self.buf)?;
        }
    }

    /// Runs one command to its end (NOP-In pings are answered on the way).
    pub async fn command(&mut self, cdb: &[u8], read_len: u32) -> Res<Outcome> {
        let want = self.ini.command(cdb, read_len, Bytes::new())?;
        loop {
            match self.next_event().await? {
                Event::CommandDone { itt, outcome } if itt == want => return Ok(outcome),
                Event::Pdu(Response::NopIn { .. }) => {}
                other => return Err(format!("unexpected {other:?}").into()),
            }
        }
    }

    /// True once the target closed the connection (within [`LIMIT`]).
    pub async fn closed(&mut self) -> bool {
        closed(&mut self.stream).await
    }
}

/// One login from the operational stage straight to full feature phase;
/// returns the connection and the login status (class, detail).
pub async fn login_as(
    stream: TcpStream,
    initiator: &str,
    target: Option<&str>,
    isid: [u8; 6],
) -> Res<(Client, (u8, u8))> {
    login_keys(stream, initiator, target, isid, &[]).await
}

/// [`login_as`] with more keys (e.g. MaxRecvDataSegmentLength).
pub async fn login_keys(
    stream: TcpStream,
    initiator: &str,
    target: Option<&str>,
    isid: [u8; 6],
    extra: &[(&str, &str)],
) -> Res<(Client, (u8, u8))> {
    let mut c = Client::new(
        stream,
        InitiatorConfig {
            isid,
            offer: extra
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..InitiatorConfig::new(initiator, target)
        },
    );
    c.ini.login();
    let status = match c.next_event().await? {
        Event::LoggedIn { .. } => (0, 0),
        Event::LoginFailed { class, detail } => (class, detail),
        other => return Err(format!("unexpected {other:?} during login").into()),
    };
    Ok((c, status))
}

/// Logs in to a normal session of [`IQN`] as [`INITIATOR`].
pub async fn login(addr: SocketAddr, isid: [u8; 6]) -> Res<Client> {
    let stream = TcpStream::connect(addr).await?;
    let (c, status) = login_as(stream, INITIATOR, Some(IQN), isid).await?;
    assert_eq!(status, (0, 0), "login status");
    Ok(c)
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
pub async fn tur(c: &mut Client) -> Res<u8> {
    Ok(c.command(&[op::TEST_UNIT_READY], 0).await?.status)
}

/// READ(10) of `blocks` 512-byte blocks at LBA 0; returns the bytes read.
pub async fn read10(c: &mut Client, blocks: u16) -> Res<usize> {
    let b = blocks.to_be_bytes();
    let o = c
        .command(
            &[op::READ_10, 0, 0, 0, 0, 0, 0, b[0], b[1], 0],
            u32::from(blocks) * 512,
        )
        .await?;
    assert_eq!(o.status, 0, "read status");
    Ok(o.data_len())
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
