//! A minimal iSCSI initiator on the protocol crate's PDU codec: login with
//! CHAP (MD5), one command at a time as iPXE and an early boot do, R2T
//! answers, NOP-In answers, logout.

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Bytes, BytesMut};
use iscsi_proto::login::{chap_response, decode_binary};
use iscsi_proto::pdu::{
    self, op, DataOutPdu, Digests, LoginRequest, LogoutPdu, NopOutPdu, RawPdu, Request,
    ScsiCommandPdu, RESERVED_TAG,
};
use iscsi_proto::text::{self, Pairs};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One PDU may not be longer than this (we offer 256 KiB segments).
const MAX_SEGMENT: u32 = 1 << 24;
/// What we accept per Data-In PDU.
const OUR_MAX_RECV: u32 = 262_144;
/// Any single PDU exchange.
pub const PDU_LIMIT: Duration = Duration::from_secs(30);

/// Who logs in where.
pub struct Identity<'a> {
    pub portal: SocketAddr,
    pub initiator: &'a str,
    pub target: &'a str,
    pub user: &'a str,
    pub secret: &'a str,
    pub isid: [u8; 6],
}

/// A logged-in session with one connection.
pub struct Session {
    stream: TcpStream,
    buf: BytesMut,
    itt: u32,
    cmd_sn: u32,
    exp_stat_sn: u32,
    /// The target's MaxRecvDataSegmentLength: our Data-Out PDU size.
    target_max_recv: u32,
    immediate_data: bool,
    first_burst: u32,
    pub block_size: u32,
    pub blocks: u64,
}

/// A finished SCSI command.
pub struct Outcome {
    pub status: u8,
    pub sense: Bytes,
    /// Data-In segments with their buffer offsets.
    pub data: Vec<(u32, Bytes)>,
    pub residual_under: u32,
}

impl Outcome {
    /// Sense key, ASC, ASCQ of fixed or descriptor sense data.
    pub fn sense_triplet(&self) -> Option<(u8, u8, u8)> {
        let s = &self.sense;
        match s.first()? & 0x7f {
            0x70 | 0x71 => Some((s.get(2)? & 0x0f, *s.get(12)?, *s.get(13)?)),
            0x72 | 0x73 => Some((s.get(1)? & 0x0f, *s.get(2)?, *s.get(3)?)),
            _ => None,
        }
    }

    fn describe(&self) -> String {
        match self.sense_triplet() {
            Some((k, a, q)) => format!(
                "status 0x{:02x}, sense key 0x{k:x} ASC 0x{a:02x} ASCQ 0x{q:02x}",
                self.status
            ),
            None => format!("status 0x{:02x}", self.status),
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn cdb16(opcode: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = opcode;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

impl Session {
    /// Connects and logs in: security stage with CHAP, then the
    /// operational stage, then full feature phase.
    pub async fn login(id: &Identity<'_>) -> Result<Self> {
        let stream = tokio::time::timeout(PDU_LIMIT, TcpStream::connect(id.portal))
            .await
            .map_err(|_| anyhow!("connect to {} timed out", id.portal))?
            .with_context(|| format!("connecting to {}", id.portal))?;
        stream.set_nodelay(true)?;
        let mut s = Self {
            stream,
            buf: BytesMut::with_capacity(OUR_MAX_RECV as usize * 2),
            itt: 1,
            cmd_sn: 1,
            exp_stat_sn: 0,
            target_max_recv: 8192,
            immediate_data: false,
            first_burst: 65536,
            block_size: 512,
            blocks: 0,
        };
        let mut keys = Pairs::default();
        keys.push("InitiatorName", id.initiator);
        keys.push("TargetName", id.target);
        keys.push("SessionType", "Normal");
        keys.push("AuthMethod", "CHAP,None");
        let r = s.login_step(id, 0, 1, true, keys).await?;
        if r.get("AuthMethod") != Some("CHAP") {
            bail!(
                "target chose AuthMethod {:?}, not CHAP",
                r.get("AuthMethod")
            );
        }
        let mut keys = Pairs::default();
        keys.push("CHAP_A", "5");
        let r = s.login_step(id, 0, 1, true, keys).await?;
        let cid: u8 = r
            .get("CHAP_I")
            .and_then(|v| v.parse().ok())
            .context("no CHAP_I from the target")?;
        let challenge = r
            .get("CHAP_C")
            .and_then(decode_binary)
            .context("no CHAP_C from the target")?;
        let resp = chap_response(cid, id.secret.as_bytes(), &challenge);
        let mut keys = Pairs::default();
        keys.push("CHAP_N", id.user);
        keys.push("CHAP_R", format!("0x{}", hex::encode(resp)));
        s.login_step(id, 0, 1, true, keys).await?;
        // Operational parameters as Linux's initiator offers them.
        let mut keys = Pairs::default();
        for (k, v) in [
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
        ] {
            keys.push(k, v);
        }
        let r = s.login_step(id, 1, 3, true, keys).await?;
        if let Some(v) = r.get("MaxRecvDataSegmentLength") {
            s.target_max_recv = v.parse().context("bad MaxRecvDataSegmentLength")?;
        }
        s.immediate_data = r.get("ImmediateData") == Some("Yes");
        if let Some(v) = r.get("FirstBurstLength") {
            s.first_burst = v.parse().context("bad FirstBurstLength")?;
        }
        if s.target_max_recv == 0 {
            bail!("target MaxRecvDataSegmentLength 0");
        }
        Ok(s)
    }

    /// One login request and its response; the response's keys.
    async fn login_step(
        &mut self,
        id: &Identity<'_>,
        csg: u8,
        nsg: u8,
        transit: bool,
        keys: Pairs,
    ) -> Result<Pairs> {
        let req = Request::Login(LoginRequest {
            transit,
            cont: false,
            csg,
            nsg,
            version_max: 0,
            version_min: 0,
            isid: id.isid,
            tsih: 0,
            itt: 0,
            cid: 0,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            data: keys.encode(),
        });
        self.send(&req).await?;
        let r = self.read_pdu().await?;
        if r.opcode() != op::LOGIN_RESPONSE {
            bail!("expected a login response, got opcode 0x{:02x}", r.opcode());
        }
        let (class, detail) = (r.bhs[36], r.bhs[37]);
        if (class, detail) != (0, 0) {
            let why = match (class, detail) {
                (2, 1) => " (authentication failed)",
                (2, 2) => " (authorization failure)",
                (2, 3) => " (target not found)",
                (3, _) => " (target error)",
                _ => "",
            };
            bail!("login rejected: status class {class} detail {detail}{why}");
        }
        self.exp_stat_sn = u32_at(&r.bhs, 24).wrapping_add(1);
        text::parse(&r.data).map_err(|e| anyhow!("login response text: {e}"))
    }

    async fn send(&mut self, req: &Request) -> Result<()> {
        let mut out = BytesMut::new();
        req.encode(&mut out, Digests::default());
        self.stream.write_all(&out).await?;
        Ok(())
    }

    /// The next PDU from the target, within [`PDU_LIMIT`].
    async fn read_pdu(&mut self) -> Result<RawPdu> {
        loop {
            if let Some(len) = pdu::frame_len(&self.buf, Digests::default(), MAX_SEGMENT)? {
                return Ok(RawPdu::parse(
                    self.buf.split_to(len).freeze(),
                    Digests::default(),
                )?);
            }
            self.buf.reserve(OUR_MAX_RECV as usize + 1024);
            let n = tokio::time::timeout(PDU_LIMIT, self.stream.read_buf(&mut self.buf))
                .await
                .map_err(|_| anyhow!("no PDU from the target within {PDU_LIMIT:?}"))??;
            if n == 0 {
                bail!("target closed the connection");
            }
        }
    }

    fn next_itt(&mut self) -> u32 {
        self.itt = self.itt.wrapping_add(1);
        if self.itt == RESERVED_TAG {
            self.itt = 1;
        }
        self.itt
    }

    /// Runs one command to completion: sends immediate data, answers R2Ts
    /// from `write`, collects Data-In, answers NOP-In pings.
    pub async fn command(&mut self, cdb: [u8; 16], read_len: u32, write: &[u8]) -> Result<Outcome> {
        let itt = self.next_itt();
        let write_len = u32::try_from(write.len()).context("write too long")?;
        let immediate = if self.immediate_data {
            write_len.min(self.first_burst).min(self.target_max_recv)
        } else {
            0
        } as usize;
        let cmd = Request::ScsiCommand(ScsiCommandPdu {
            immediate: false,
            final_: true,
            read: read_len > 0,
            write: write_len > 0,
            attr: 1,
            lun: 0,
            itt,
            expected_len: read_len.max(write_len),
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            cdb: Bytes::copy_from_slice(&cdb),
            data: Bytes::copy_from_slice(&write[..immediate]),
        });
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        self.send(&cmd).await?;
        let mut data = Vec::new();
        loop {
            let r = self.read_pdu().await?;
            match r.opcode() {
                op::DATA_IN if r.itt() == itt => {
                    let offset = u32_at(&r.bhs, 40);
                    let flags = r.flags();
                    if !r.data.is_empty() {
                        data.push((offset, r.data.clone()));
                    }
                    if flags & 0x01 != 0 {
                        self.exp_stat_sn = u32_at(&r.bhs, 24).wrapping_add(1);
                        let under = if flags & 0x02 != 0 {
                            u32_at(&r.bhs, 44)
                        } else {
                            0
                        };
                        return Ok(Outcome {
                            status: r.bhs[3],
                            sense: Bytes::new(),
                            data,
                            residual_under: under,
                        });
                    }
                }
                op::SCSI_RESPONSE if r.itt() == itt => {
                    self.exp_stat_sn = u32_at(&r.bhs, 24).wrapping_add(1);
                    if r.bhs[2] != 0 {
                        bail!("SCSI response code 0x{:02x} (target failure)", r.bhs[2]);
                    }
                    // Sense data: a 2-byte length, then the sense bytes.
                    let sense = match r.data.get(..2) {
                        Some(l) => {
                            let n = usize::from(u16::from_be_bytes([l[0], l[1]]));
                            r.data.slice(2..(2 + n).min(r.data.len()))
                        }
                        None => Bytes::new(),
                    };
                    let under = if r.flags() & 0x02 != 0 {
                        u32_at(&r.bhs, 44)
                    } else {
                        0
                    };
                    return Ok(Outcome {
                        status: r.bhs[3],
                        sense,
                        data,
                        residual_under: under,
                    });
                }
                op::R2T if r.itt() == itt => {
                    let ttt = u32_at(&r.bhs, 20);
                    let offset = u32_at(&r.bhs, 40) as usize;
                    let want = u32_at(&r.bhs, 44) as usize;
                    let end = offset
                        .checked_add(want)
                        .filter(|&e| e <= write.len())
                        .context("R2T beyond the write's data")?;
                    let mut at = offset;
                    let mut data_sn = 0;
                    while at < end {
                        let n = (end - at).min(self.target_max_recv as usize);
                        let out = Request::DataOut(DataOutPdu {
                            final_: at + n == end,
                            lun: 0,
                            itt,
                            ttt,
                            exp_stat_sn: self.exp_stat_sn,
                            data_sn,
                            buffer_offset: at as u32,
                            data: Bytes::copy_from_slice(&write[at..at + n]),
                        });
                        self.send(&out).await?;
                        at += n;
                        data_sn += 1;
                    }
                }
                op::NOP_IN => self.answer_nop(&r).await?,
                op::ASYNC => bail!("target sent an Async Message (event {})", r.bhs[36]),
                op::REJECT => bail!("target rejected a PDU (reason 0x{:02x})", r.bhs[2]),
                other => bail!("unexpected PDU opcode 0x{other:02x} for ITT {}", r.itt()),
            }
        }
    }

    /// A ping (TTT not reserved) gets a NOP-Out back; it does not advance CmdSN.
    async fn answer_nop(&mut self, r: &RawPdu) -> Result<()> {
        let ttt = u32_at(&r.bhs, 20);
        if ttt == RESERVED_TAG {
            return Ok(());
        }
        let out = Request::NopOut(NopOutPdu {
            immediate: true,
            lun: 0,
            itt: RESERVED_TAG,
            ttt,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            data: r.data.clone(),
        });
        self.send(&out).await
    }

    /// TEST UNIT READY until the unit attention of a new nexus is
    /// consumed, then READ CAPACITY (16): what iPXE does before booting.
    pub async fn ready(&mut self) -> Result<()> {
        let mut ok = false;
        for _ in 0..5 {
            let o = self.command([0u8; 16], 0, &[]).await?;
            if o.status == 0 {
                ok = true;
                break;
            }
            if o.status != 2 || o.sense_triplet().map(|t| t.0) != Some(6) {
                bail!("TEST UNIT READY: {}", o.describe());
            }
        }
        if !ok {
            bail!("TEST UNIT READY: unit attention after 5 tries");
        }
        let mut cdb = [0u8; 16];
        cdb[0] = 0x9e;
        cdb[1] = 0x10;
        cdb[13] = 32;
        let o = self.command(cdb, 32, &[]).await?;
        if o.status != 0 {
            bail!("READ CAPACITY (16): {}", o.describe());
        }
        let mut d = Vec::new();
        for (_, seg) in &o.data {
            d.extend_from_slice(seg);
        }
        if d.len() < 12 {
            bail!("READ CAPACITY (16): {} bytes of data", d.len());
        }
        let last = u64::from_be_bytes(d[0..8].try_into().context("short capacity")?);
        self.blocks = last + 1;
        self.block_size = u32_at(&d, 8);
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
        let o = self.command(cdb16(0x88, lba, blocks), len, &[]).await?;
        if o.status != 0 {
            bail!("READ (16) lba {lba} blocks {blocks}: {}", o.describe());
        }
        let got: usize = o.data.iter().map(|(_, d)| d.len()).sum();
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
        let o = self.command(cdb16(0x8a, lba, blocks), 0, data).await?;
        if o.status != 0 {
            bail!("WRITE (16) lba {lba} blocks {blocks}: {}", o.describe());
        }
        Ok(())
    }

    /// SYNCHRONIZE CACHE (10) of the whole LUN.
    pub async fn flush(&mut self) -> Result<()> {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x35;
        let o = self.command(cdb, 0, &[]).await?;
        if o.status != 0 {
            bail!("SYNCHRONIZE CACHE: {}", o.describe());
        }
        Ok(())
    }

    /// Logout (close the session) and its response.
    pub async fn logout(mut self) -> Result<()> {
        let itt = self.next_itt();
        let req = Request::Logout(LogoutPdu {
            immediate: true,
            reason: 0,
            itt,
            cid: 0,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        });
        self.send(&req).await?;
        loop {
            let r = self.read_pdu().await?;
            match r.opcode() {
                op::LOGOUT_RESPONSE if r.itt() == itt => {
                    if r.bhs[2] != 0 {
                        bail!("logout response 0x{:02x}", r.bhs[2]);
                    }
                    return Ok(());
                }
                op::NOP_IN => self.answer_nop(&r).await?,
                other => bail!("unexpected PDU opcode 0x{other:02x} during logout"),
            }
        }
    }
}
