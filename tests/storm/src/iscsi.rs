//! The protocol crate's sans-IO initiator on a TCP stream: login with CHAP
//! (MD5), one command at a time as iPXE and an early boot do; the initiator
//! answers R2Ts and NOP-In pings itself. This file only moves bytes and
//! turns events into results.

use crate::redirect::{self, Redirect};
use anyhow::{anyhow, bail, Context, Result};
use bytes::{Bytes, BytesMut};
use iscsi_proto::initiator::{Event, Initiator, InitiatorConfig, Outcome};
use iscsi_proto::pdu::Response;
use iscsi_proto::scsi::opcode::{self as op, sai};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What we accept per Data-In PDU.
const OUR_MAX_RECV: u32 = 262_144;
/// Any single PDU exchange.
pub const PDU_LIMIT: Duration = Duration::from_secs(30);

/// Who logs in where.
pub struct Identity<'a> {
    /// The node's own address: every connection comes from it.
    pub local: Ipv4Addr,
    pub portal: SocketAddr,
    pub initiator: &'a str,
    pub target: &'a str,
    pub user: &'a str,
    pub secret: &'a str,
    pub isid: [u8; 6],
}

/// Login redirects followed before giving up (a loop between servers).
pub const MAX_REDIRECTS: u32 = 4;

/// How a login ended.
pub enum Login {
    In(Box<Session>),
    /// The target sent the initiator elsewhere (status class 1).
    Moved(Redirect),
}

/// A logged-in session with one connection.
pub struct Session {
    stream: TcpStream,
    /// Where the session is (after any redirects).
    pub portal: SocketAddr,
    /// A redirect seen in the login's last response, if any.
    redirect: Option<Redirect>,
    buf: BytesMut,
    ini: Initiator,
    pub block_size: u32,
    pub blocks: u64,
}

fn describe(o: &Outcome) -> String {
    match o.sense_triplet() {
        Some((k, a, q)) => format!(
            "status 0x{:02x}, sense key 0x{k:x} ASC 0x{a:02x} ASCQ 0x{q:02x}",
            o.status
        ),
        None => format!("status 0x{:02x}", o.status),
    }
}

fn cdb16(opcode: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = opcode;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// Operational parameters as Linux's initiator offers them.
const OFFER: [(&str, &str); 14] = [
    ("HeaderDigest", "None"),
    ("DataDigest", "None"),
    ("MaxRecvDataSegmentLength", "262144"),
    ("InitialR2T", "Yes"),
    ("ImmediateData", "Yes"),
    ("FirstBurstLength", "65536"),
    ("MaxBurstLength", "262144"),
    ("MaxConnections", "1"),
    ("DefaultTime2Wait", "0"),
    ("DefaultTime2Retain", "0"),
    ("MaxOutstandingR2T", "1"),
    ("DataPDUInOrder", "Yes"),
    ("DataSequenceInOrder", "Yes"),
    ("ErrorRecoveryLevel", "0"),
];

impl Session {
    /// Logs in at `id.portal`, following up to [`MAX_REDIRECTS`] login
    /// redirects; the session and how many redirects it took.
    pub async fn login_following(id: &Identity<'_>) -> Result<(Self, u32)> {
        let mut portal = id.portal;
        for hops in 0..=MAX_REDIRECTS {
            match Self::login(id, portal).await? {
                Login::In(s) => return Ok((*s, hops)),
                Login::Moved(r) => portal = r.to,
            }
        }
        bail!("more than {MAX_REDIRECTS} login redirects (last to {portal})")
    }

    /// Connects to `portal` and logs in: security stage with CHAP, then
    /// the operational stage, then full feature phase.
    pub async fn login(id: &Identity<'_>, portal: SocketAddr) -> Result<Login> {
        let stream = tokio::time::timeout(PDU_LIMIT, crate::http::connect_from(id.local, portal))
            .await
            .map_err(|_| anyhow!("connect to {portal} timed out"))??;
        stream.set_nodelay(true)?;
        let config = InitiatorConfig {
            isid: id.isid,
            offer: OFFER
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..InitiatorConfig::chap(id.initiator, id.target, id.user, id.secret.as_bytes())
        };
        let mut s = Self {
            stream,
            portal,
            redirect: None,
            buf: BytesMut::with_capacity(OUR_MAX_RECV as usize * 2),
            ini: Initiator::new(config),
            block_size: 512,
            blocks: 0,
        };
        s.ini.login();
        match s.next_event().await? {
            Event::LoggedIn { .. } => Ok(Login::In(Box::new(s))),
            Event::LoginFailed { class: 1, detail } => match s.redirect {
                Some(r) => Ok(Login::Moved(r)),
                None => bail!("login redirect (detail {detail}) without a usable TargetAddress"),
            },
            Event::LoginFailed { class, detail } => {
                let why = match (class, detail) {
                    (2, 1) => " (authentication failed)",
                    (2, 2) => " (authorization failure)",
                    (2, 3) => " (target not found)",
                    (3, _) => " (target error)",
                    _ => "",
                };
                bail!("login rejected: status class {class} detail {detail}{why}");
            }
            other => bail!("unexpected {other:?} during login"),
        }
    }

    /// The initiator's next event, sending what it queued and reading from
    /// the target as needed, each read within [`PDU_LIMIT`].
    async fn next_event(&mut self) -> Result<Event> {
        loop {
            if let Some(out) = self.ini.poll_transmit() {
                self.stream.write_all(&out).await?;
            }
            if let Some(ev) = self.ini.poll_event() {
                return Ok(ev);
            }
            self.buf.reserve(OUR_MAX_RECV as usize + 1024);
            let n = tokio::time::timeout(PDU_LIMIT, self.stream.read_buf(&mut self.buf))
                .await
                .map_err(|_| anyhow!("no PDU from the target within {PDU_LIMIT:?}"))??;
            if n == 0 {
                bail!("target closed the connection");
            }
            // The initiator consumes the PDU and reports only its status:
            // a redirect's address is read first.
            if let Some(r) = redirect::parse(&self.buf) {
                self.redirect = Some(r);
            }
            self.ini.handle_input(&mut self.buf)?;
        }
    }

    /// Runs one command to completion.
    pub async fn command(&mut self, cdb: [u8; 16], read_len: u32, write: &[u8]) -> Result<Outcome> {
        let want = self
            .ini
            .command(&cdb, read_len, Bytes::copy_from_slice(write))?;
        loop {
            match self.next_event().await? {
                Event::CommandDone { itt, outcome } if itt == want => {
                    if outcome.response != 0 {
                        bail!(
                            "SCSI response code 0x{:02x} (target failure)",
                            outcome.response
                        );
                    }
                    return Ok(outcome);
                }
                // Pings are answered by the initiator.
                Event::Pdu(Response::NopIn { .. }) => {}
                Event::Pdu(Response::Async { event, .. }) => {
                    bail!("target sent an Async Message (event {event})")
                }
                Event::Pdu(Response::Reject { reason, .. }) => {
                    bail!("target rejected a PDU (reason 0x{reason:02x})")
                }
                other => bail!("unexpected {other:?} for ITT {want}"),
            }
        }
    }

    /// TEST UNIT READY until the unit attention of a new nexus is
    /// consumed, then READ CAPACITY (16): what iPXE does before booting.
    pub async fn ready(&mut self) -> Result<()> {
        let mut ok = false;
        let mut tur = [0u8; 16];
        tur[0] = op::TEST_UNIT_READY;
        for _ in 0..5 {
            let o = self.command(tur, 0, &[]).await?;
            if o.status == 0 {
                ok = true;
                break;
            }
            if o.status != 2 || o.sense_triplet().map(|t| t.0) != Some(6) {
                bail!("TEST UNIT READY: {}", describe(&o));
            }
        }
        if !ok {
            bail!("TEST UNIT READY: unit attention after 5 tries");
        }
        let mut cdb = [0u8; 16];
        cdb[0] = op::SERVICE_ACTION_IN_16;
        cdb[1] = sai::READ_CAPACITY_16;
        cdb[13] = 32;
        let o = self.command(cdb, 32, &[]).await?;
        if o.status != 0 {
            bail!("READ CAPACITY (16): {}", describe(&o));
        }
        let d = o.data_bytes();
        if d.len() < 12 {
            bail!("READ CAPACITY (16): {} bytes of data", d.len());
        }
        let last = u64::from_be_bytes(d[0..8].try_into().context("short capacity")?);
        self.blocks = last + 1;
        self.block_size = u32::from_be_bytes(d[8..12].try_into().context("short capacity")?);
        if self.block_size == 0 {
            bail!("READ CAPACITY (16): block size 0");
        }
        Ok(())
    }

    /// READ (16) of `blocks` at `lba`: the data segments by offset.
    pub async fn read(&mut self, lba: u64, blocks: u32) -> Result<Vec<(u32, Bytes)>> {
        let len = blocks
            .checked_mul(self.block_size)
            .context("read too long")?;
        let o = self
            .command(cdb16(op::READ_16, lba, blocks), len, &[])
            .await?;
        if o.status != 0 {
            bail!("READ (16) lba {lba} blocks {blocks}: {}", describe(&o));
        }
        let got = o.data_len();
        if o.residual_under != 0 || got != len as usize {
            bail!(
                "READ (16) lba {lba} blocks {blocks}: {got} of {len} bytes (residual {})",
                o.residual_under
            );
        }
        Ok(o.data)
    }

    /// WRITE (16) of `data` at `lba`.
    pub async fn write(&mut self, lba: u64, data: &[u8]) -> Result<()> {
        let blocks =
            u32::try_from(data.len() / self.block_size as usize).context("write too long")?;
        let o = self
            .command(cdb16(op::WRITE_16, lba, blocks), 0, data)
            .await?;
        if o.status != 0 {
            bail!("WRITE (16) lba {lba} blocks {blocks}: {}", describe(&o));
        }
        Ok(())
    }

    /// SYNCHRONIZE CACHE (10) of the whole LUN.
    pub async fn flush(&mut self) -> Result<()> {
        let mut cdb = [0u8; 16];
        cdb[0] = op::SYNCHRONIZE_CACHE_10;
        let o = self.command(cdb, 0, &[]).await?;
        if o.status != 0 {
            bail!("SYNCHRONIZE CACHE: {}", describe(&o));
        }
        Ok(())
    }

    /// Logout (close the session) and its response.
    pub async fn logout(mut self) -> Result<()> {
        let want = self.ini.logout();
        loop {
            match self.next_event().await? {
                Event::LoggedOut { itt, response } if itt == want => {
                    if response != 0 {
                        bail!("logout response 0x{response:02x}");
                    }
                    return Ok(());
                }
                Event::Pdu(Response::NopIn { .. }) => {}
                other => bail!("unexpected {other:?} during logout"),
            }
        }
    }
}
