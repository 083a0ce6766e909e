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
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What we accept per Data-In PDU.
const OUR_MAX_RECV: u32 = 262_144;
/// Any single PDU exchange.
pub const PDU_LIMIT: Duration = Duration::from_secs(30);

/// How long a dropped session's initiator keeps trying to log in again
/// before it fails the commands (open-iscsi's replacement_timeout).
pub const REPLACEMENT_TIMEOUT: Duration = Duration::from_secs(120);
/// One re-login attempt (connect, login, TEST UNIT READY).
const RELOGIN_ATTEMPT: Duration = Duration::from_secs(10);
/// The longest pause between re-login attempts.
const RELOGIN_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Who logs in where.
#[derive(Clone)]
pub struct Identity {
    /// The node's own address: every connection comes from it.
    pub local: Ipv4Addr,
    /// The portal the node's script (and so its iBFT) names: where every
    /// login, and every re-login after a drop, begins.
    pub portal: SocketAddr,
    pub initiator: String,
    pub target: String,
    pub user: String,
    pub secret: String,
    pub isid: [u8; 6],
}

/// The connection is gone (closed, reset, silent): a real initiator logs in
/// again and resends what did not complete.
#[derive(Debug)]
pub struct Lost(pub String);

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Lost {}

fn lost(what: impl std::fmt::Display) -> anyhow::Error {
    anyhow::Error::new(Lost(what.to_string()))
}

/// A dropped connection and the re-login that followed.
#[derive(Debug, Clone)]
pub struct Outage {
    /// Where the session was when it dropped.
    pub portal: SocketAddr,
    pub error: String,
    /// Login attempts it took (1: the first one came back).
    pub attempts: u32,
    /// The failed attempts' texts (the first few).
    pub failures: Vec<String>,
    /// Login redirects the re-login followed.
    pub hops: u32,
    /// When the first command after it completed, and where.
    pub back: Option<(Instant, SocketAddr)>,
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
    id: Identity,
    /// Every drop and re-login, in order.
    pub outages: Vec<Outage>,
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
    pub async fn login_following(id: &Identity) -> Result<(Self, u32)> {
        let mut portal = id.portal;
        for hops in 0..=MAX_REDIRECTS {
            match Self::login(id, portal).await? {
                Login::In(s) => return Ok((*s, hops)),
                // A server must never send a login back where it came in.
                Login::Moved(r) if r.to == portal => {
                    bail!("login redirected to {portal}, the address it logged in at")
                }
                Login::Moved(r) => portal = r.to,
            }
        }
        bail!("more than {MAX_REDIRECTS} login redirects (last to {portal})")
    }

    /// Connects to `portal` and logs in: security stage with CHAP, then
    /// the operational stage, then full feature phase.
    pub async fn login(id: &Identity, portal: SocketAddr) -> Result<Login> {
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
            ..InitiatorConfig::chap(&id.initiator, &id.target, &id.user, id.secret.as_bytes())
        };
        let mut s = Self {
            id: id.clone(),
            outages: Vec::new(),
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
                self.stream
                    .write_all(&out)
                    .await
                    .map_err(|e| lost(format!("sending to {}: {e}", self.portal)))?;
            }
            if let Some(ev) = self.ini.poll_event() {
                return Ok(ev);
            }
            self.buf.reserve(OUR_MAX_RECV as usize + 1024);
            let n = tokio::time::timeout(PDU_LIMIT, self.stream.read_buf(&mut self.buf))
                .await
                .map_err(|_| lost(format!("no PDU from {} within {PDU_LIMIT:?}", self.portal)))?
                .map_err(|e| lost(format!("reading from {}: {e}", self.portal)))?;
            if n == 0 {
                return Err(lost(format!("{} closed the connection", self.portal)));
            }
            // The initiator consumes the PDU and reports only its status:
            // a redirect's address is read first.
            if let Some(r) = redirect::parse(&self.buf) {
                self.redirect = Some(r);
            }
            self.ini.handle_input(&mut self.buf)?;
        }
    }

    /// Runs one command to completion; when the connection drops, logs in
    /// again (see [`Session::relogin`]) and sends the command again, as a
    /// real initiator does with the commands a dropped connection left
    /// without an answer (reads, writes of the same data and flushes may
    /// all run twice).
    pub async fn command(&mut self, cdb: [u8; 16], read_len: u32, write: &[u8]) -> Result<Outcome> {
        loop {
            match self.command_once(cdb, read_len, write).await {
                Ok(o) => {
                    if let Some(last) = self.outages.last_mut() {
                        if last.back.is_none() {
                            last.back = Some((Instant::now(), self.portal));
                        }
                    }
                    return Ok(o);
                }
                Err(e) if e.downcast_ref::<Lost>().is_some() => self.relogin(e).await?,
                Err(e) => return Err(e),
            }
        }
    }

    /// After a drop: log in again at the portal the node was given (not
    /// where a redirect took it: open-iscsi fails back to the original
    /// address too), with the same ISID (the target reinstates the
    /// session), until one attempt succeeds or [`REPLACEMENT_TIMEOUT`]
    /// has passed; then TEST UNIT READY consumes the new nexus's unit
    /// attention, as the SCSI layer's retry does.
    async fn relogin(&mut self, why: anyhow::Error) -> Result<()> {
        let start = Instant::now();
        let mut o = Outage {
            portal: self.portal,
            error: format!("{why:#}"),
            attempts: 0,
            failures: Vec::new(),
            hops: 0,
            back: None,
        };
        let mut pause = Duration::from_millis(250);
        loop {
            o.attempts += 1;
            let attempt = tokio::time::timeout(RELOGIN_ATTEMPT, async {
                let (mut s, hops) = Session::login_following(&self.id).await?;
                s.ready().await?;
                anyhow::Ok((s, hops))
            })
            .await
            .unwrap_or_else(|_| Err(anyhow!("re-login took over {RELOGIN_ATTEMPT:?}")));
            match attempt {
                Ok((s, hops)) => {
                    if s.blocks != self.blocks || s.block_size != self.block_size {
                        bail!(
                            "after the re-login the disk has {} blocks of {}, before {} of {}",
                            s.blocks,
                            s.block_size,
                            self.blocks,
                            self.block_size
                        );
                    }
                    o.hops = hops;
                    self.stream = s.stream;
                    self.buf = s.buf;
                    self.ini = s.ini;
                    self.portal = s.portal;
                    self.outages.push(o);
                    return Ok(());
                }
                Err(e) => {
                    if o.failures.len() < 4 {
                        o.failures.push(format!("{e:#}"));
                    }
                    if start.elapsed() + pause > REPLACEMENT_TIMEOUT {
                        let n = o.attempts;
                        self.outages.push(o);
                        bail!("connection lost ({why:#}); no re-login in {n} attempts within {REPLACEMENT_TIMEOUT:?}, the last: {e:#}");
                    }
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RELOGIN_BACKOFF_MAX);
        }
    }

    /// Runs one command on this connection.
    async fn command_once(
        &mut self,
        cdb: [u8; 16],
        read_len: u32,
        write: &[u8],
    ) -> Result<Outcome> {
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
            let o = self.command_once(tur, 0, &[]).await?;
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
        let o = self.command_once(cdb, 32, &[]).await?;
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

    /// Logout (close the session) and its response; a connection that
    /// drops first is logged in again and the logout sent again.
    pub async fn logout(&mut self) -> Result<()> {
        loop {
            match self.logout_once().await {
                Err(e) if e.downcast_ref::<Lost>().is_some() => self.relogin(e).await?,
                r => return r,
            }
        }
    }

    async fn logout_once(&mut self) -> Result<()> {
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
