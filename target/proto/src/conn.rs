//! One iSCSI connection as a state machine: bytes in, events and bytes out.
//!
//! The driver owns the socket. It feeds received bytes to
//! [`Connection::handle_input`], drains [`Connection::poll_event`] (login
//! done, SCSI commands, task management, logout), executes commands and
//! reports them with [`Connection::complete_command`], and writes whatever
//! [`Connection::poll_transmit`] produces. Time comes in through
//! [`Connection::handle_timeout`] (login timeout, NOP-In pings, idle limit).
//!
//! A connection carries exactly one session (MaxConnections=1), so session
//! state (CmdSN window, StatSN, negotiated parameters) lives here too.

use crate::login::{self, Login, Step};
use crate::negotiate::{self, Answer, Limits, Params};
use crate::pdu::{
    self, reject, DataOutPdu, Digests, NopOutPdu, RawPdu, Request, Response, ScsiCommandPdu,
    SeqNums, TaskMgmtPdu, TextPdu, RESERVED_TAG,
};
use crate::scsi::sense::Sense;
use crate::task::{ScsiCommand, ScsiResult, ScsiStatus, TaskAttr, TmfFunction, TmfResponse};
use crate::text::{self, Pairs};
use bytes::{Bytes, BytesMut};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Fixed settings for one connection, chosen by the driver.
#[derive(Debug, Clone)]
pub struct ConnConfig {
    /// TSIH this connection's session gets if its login succeeds (non-zero, unique).
    pub tsih: u16,
    /// Target portal group tag of the portal the connection arrived on.
    pub portal_group_tag: u16,
    /// Our MaxRecvDataSegmentLength declaration (bytes we accept per PDU).
    pub max_recv_data_segment: u32,
    /// Upper bound for MaxOutstandingR2T.
    pub max_outstanding_r2t: u32,
    /// Upper bound we accept for MaxBurstLength / FirstBurstLength.
    pub max_burst: u32,
    pub first_burst: u32,
    /// Commands the initiator may have outstanding (CmdSN window size).
    pub cmd_window: u32,
    /// Largest Expected Data Transfer Length accepted for one command.
    pub max_transfer: u32,
    /// The login must complete within this time.
    pub login_timeout: Duration,
    /// Send a NOP-In ping after this long without any PDU from the initiator.
    pub nop_interval: Duration,
    /// Close the connection after this long without any PDU from the initiator
    /// (iPXE never answers pings, but it sends commands while it uses the disk).
    pub idle_timeout: Duration,
    /// Alias reported as TargetAlias, if any.
    pub target_alias: Option<String>,
}

/// CHAP secrets for one target/initiator pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChapCredentials {
    /// Name and secret the initiator must prove (one-way CHAP).
    pub user: String,
    pub secret: Vec<u8>,
    /// Name and secret the target proves back (mutual CHAP), if configured.
    pub mutual: Option<(String, Vec<u8>)>,
}

/// The answer to "may this initiator log into this target?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorization {
    /// No such target (login status 0x0203).
    NotFound,
    /// The target exists but this initiator may not use it (status 0x0202).
    Denied,
    /// Allowed; with `Some`, only after CHAP succeeds.
    Allowed(Option<ChapCredentials>),
}

/// One target as SendTargets reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredTarget {
    pub name: String,
    /// `ip:port,tpgt` strings (IPv6 addresses in brackets).
    pub addresses: Vec<String>,
}

/// The driver's view of targets, ACLs and secrets, consulted during login and
/// discovery. Implementations answer from memory; they must not block.
pub trait TargetDirectory {
    /// Whether `initiator` may log into `target` (`None`: a discovery session).
    fn authorize(&self, initiator: &str, target: Option<&str>) -> Authorization;
    /// Targets `initiator` may see through SendTargets (only those it may log into).
    fn discover(&self, initiator: &str) -> Vec<DiscoveredTarget>;
    /// Whether a session with this TSIH exists for the initiator and ISID
    /// (a login with a non-zero TSIH continues that session).
    fn session_exists(&self, initiator: &str, isid: &[u8; 6], tsih: u16) -> bool;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionType {
    Normal,
    Discovery,
}

/// A session that finished login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub session_type: SessionType,
    pub initiator_name: String,
    pub initiator_alias: Option<String>,
    pub isid: [u8; 6],
    pub tsih: u16,
    /// `None` for discovery sessions.
    pub target_name: Option<String>,
}

/// A task management request as the driver must carry it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TmfRequest {
    pub itt: u32,
    pub function: TmfFunction,
    pub lun: u64,
    /// For ABORT TASK: the task to abort.
    pub referenced_itt: u32,
    /// Commands already handed out as [`Event::Command`] that this request
    /// aborts: the driver cancels them; their completions will be ignored.
    pub aborted: Vec<u32>,
}

/// What the connection asks of the driver.
#[derive(Debug, Clone)]
pub enum Event {
    /// Login finished; the driver registers the session and ends any older
    /// session of the same initiator name and ISID (session reinstatement).
    LoggedIn(SessionInfo),
    /// A command to execute; answer with [`Connection::complete_command`].
    Command(ScsiCommand),
    /// Answer with [`Connection::complete_task_management`].
    TaskManagement(TmfRequest),
    /// The initiator logged out; the response is queued and the connection
    /// closes once it is sent.
    Logout,
}

/// Why a connection must be dropped. The driver logs it and closes the socket.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("login failed: {0}")]
    Login(String),
    #[error("timed out: {0}")]
    Timeout(&'static str),
}

/// How many early-ended tasks we remember, to drop their late Data-Out.
const ENDED_ITTS: usize = 64;

/// RFC 1982 serial number comparison on 32-bit sequence numbers.
fn sn_lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < 0x8000_0000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Login,
    FullFeature,
}

/// One outstanding R2T.
#[derive(Debug)]
struct R2t {
    ttt: u32,
    offset: u32,
    len: u32,
    received: u32,
    next_data_sn: u32,
}

/// A SCSI task from arrival to completion.
#[derive(Debug)]
struct Task {
    cmd: ScsiCommandPdu,
    /// Write data expected (Expected Data Transfer Length of a write).
    write_len: u32,
    data: BytesMut,
    /// Unsolicited Data-Out still expected (the command had F=0).
    unsolicited_open: bool,
    next_unsolicited_sn: u32,
    r2ts: Vec<R2t>,
    next_r2t_offset: u32,
    r2t_sn: u32,
    dispatched: bool,
    /// Counted in the CmdSN window (not an immediate command).
    windowed: bool,
}

/// A Text response too long for one PDU, sent in parts.
#[derive(Debug)]
struct TextReply {
    itt: u32,
    ttt: u32,
    rest: Bytes,
}

/// One connection (and its session).
pub struct Connection {
    config: ConnConfig,
    phase: Phase,
    login: Option<Login>,
    params: Params,
    digests: Digests,
    session: Option<SessionInfo>,
    stat_sn: u32,
    exp_cmd_sn: u32,
    max_cmd_sn: u32,
    window_used: u32,
    tasks: HashMap<u32, Task>,
    /// Non-immediate PDUs that arrived ahead of ExpCmdSN, by CmdSN.
    ahead: BTreeMap<u32, (RawPdu, Request)>,
    events: VecDeque<Event>,
    tx: BytesMut,
    next_ttt: u32,
    text_in: BytesMut,
    text_reply: Option<TextReply>,
    last_rx: Instant,
    login_deadline: Instant,
    /// TTT and send time of our unanswered NOP-In ping.
    ping: Option<(u32, Instant)>,
    closing: bool,
    /// CID of this connection (from its login).
    cid: u16,
    /// Tasks ended early (data phase errors) whose Data-Out may still come.
    ended_itts: VecDeque<u32>,
}

impl Connection {
    pub fn new(config: ConnConfig, now: Instant) -> Self {
        let limits = Self::limits_of(&config);
        let login = Login::new(limits, config.portal_group_tag, config.target_alias.clone());
        Self {
            login_deadline: now + config.login_timeout,
            params: Params::new(&limits),
            config,
            phase: Phase::Login,
            login: Some(login),
            digests: Digests::default(),
            session: None,
            stat_sn: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
            window_used: 0,
            tasks: HashMap::new(),
            ahead: BTreeMap::new(),
            events: VecDeque::new(),
            tx: BytesMut::new(),
            next_ttt: 1,
            text_in: BytesMut::new(),
            text_reply: None,
            last_rx: now,
            ping: None,
            closing: false,
            cid: 0,
            ended_itts: VecDeque::new(),
        }
    }

    fn limits_of(config: &ConnConfig) -> Limits {
        Limits {
            max_recv_data_segment: config.max_recv_data_segment,
            max_burst: config.max_burst,
            first_burst: config.first_burst,
            max_outstanding_r2t: config.max_outstanding_r2t.max(1),
        }
    }

    /// The session, once login has finished.
    pub fn session(&self) -> Option<&SessionInfo> {
        self.session.as_ref()
    }

    /// Negotiated parameters (meaningful after login).
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Consumes complete PDUs from `buf` (leaving a partial one in place).
    pub fn handle_input(
        &mut self,
        buf: &mut BytesMut,
        dir: &dyn TargetDirectory,
        now: Instant,
    ) -> Result<(), ConnError> {
        loop {
            if self.closing {
                buf.clear();
                return Ok(());
            }
            // During login the initiator may send at most 8192 bytes per PDU
            // (RFC 7143 13.12); afterwards our declaration applies.
            let max = match self.phase {
                Phase::Login => 8192,
                Phase::FullFeature => self.params.target_mrdsl,
            };
            let len = match pdu::frame_len(buf, self.digests, max) {
                Ok(Some(len)) => len,
                Ok(None) => return Ok(()),
                Err(e) => return Err(ConnError::Protocol(e.to_string())),
            };
            let frame = buf.split_to(len).freeze();
            let raw = RawPdu::parse(frame, self.digests)
                .map_err(|e| ConnError::Protocol(e.to_string()))?;
            let req = Request::decode(&raw).map_err(|e| ConnError::Protocol(e.to_string()))?;
            self.last_rx = now;
            match self.phase {
                Phase::Login => self.on_login_pdu(req, dir, now)?,
                Phase::FullFeature => self.on_ffp_pdu(raw, req, dir)?,
            }
        }
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Everything encoded and ready to send, if anything.
    pub fn poll_transmit(&mut self) -> Option<BytesMut> {
        (!self.tx.is_empty()).then(|| self.tx.split())
    }

    fn seq(&mut self, advance: bool) -> SeqNums {
        let stat_sn = self.stat_sn;
        if advance {
            self.stat_sn = self.stat_sn.wrapping_add(1);
        }
        // The window shrinks by the commands still running, so an initiator
        // cannot queue more than `cmd_window` tasks.
        let free = self
            .config
            .cmd_window
            .max(1)
            .saturating_sub(self.window_used);
        let max = self.exp_cmd_sn.wrapping_add(free).wrapping_sub(1);
        if sn_lt(self.max_cmd_sn, max) {
            self.max_cmd_sn = max;
        }
        SeqNums {
            stat_sn,
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn,
        }
    }

    fn send(&mut self, r: &Response) {
        r.encode(&mut self.tx, self.digests);
    }

    fn send_reject(&mut self, reason: u8, raw: &RawPdu) {
        let seq = self.seq(true);
        self.send(&Response::Reject {
            reason,
            seq,
            header: raw.bhs,
        });
    }

    // ---- login ---------------------------------------------------------

    fn on_login_pdu(
        &mut self,
        req: Request,
        dir: &dyn TargetDirectory,
        now: Instant,
    ) -> Result<(), ConnError> {
        let Request::Login(req) = req else {
            return Err(ConnError::Login("non-login PDU during login".into()));
        };
        let Some(login) = self.login.as_mut() else {
            return Err(ConnError::Login("login state missing".into()));
        };
        let first = login.initiator_name.is_empty();
        if first {
            self.stat_sn = req.exp_stat_sn;
            self.exp_cmd_sn = req.cmd_sn;
            self.max_cmd_sn = req.cmd_sn;
        }
        let step = login.handle(&req, dir);
        let isid = req.isid;
        let seq = self.seq(true);
        match step {
            Step::Continue {
                transit,
                csg,
                nsg,
                data,
            } => {
                self.send(&Response::Login {
                    transit,
                    cont: false,
                    csg,
                    nsg,
                    isid,
                    tsih: 0,
                    itt: req.itt,
                    status_class: 0,
                    status_detail: 0,
                    seq,
                    data,
                });
                Ok(())
            }
            Step::Fail { status, reason } => {
                self.send(&Response::Login {
                    transit: false,
                    cont: false,
                    csg: req.csg,
                    nsg: 0,
                    isid,
                    tsih: 0,
                    itt: req.itt,
                    status_class: status.0,
                    status_detail: status.1,
                    seq,
                    data: Bytes::new(),
                });
                self.closing = true;
                Err(ConnError::Login(reason))
            }
            Step::Done { csg, data } => {
                let Some(login) = self.login.take() else {
                    return Err(ConnError::Login("login state missing".into()));
                };
                let tsih = if login.tsih != 0 {
                    login.tsih
                } else {
                    self.config.tsih
                };
                self.send(&Response::Login {
                    transit: true,
                    cont: false,
                    csg,
                    nsg: 3,
                    isid,
                    tsih,
                    itt: req.itt,
                    status_class: login::status::SUCCESS.0,
                    status_detail: login::status::SUCCESS.1,
                    seq,
                    data,
                });
                self.params = login.params.clone();
                self.digests = Digests {
                    header: self.params.header_digest,
                    data: self.params.data_digest,
                };
                let info = SessionInfo {
                    session_type: login.session_type,
                    initiator_name: login.initiator_name.clone(),
                    initiator_alias: login.initiator_alias.clone(),
                    isid: login.isid,
                    tsih,
                    target_name: login.target_name.clone(),
                };
                self.session = Some(info.clone());
                self.cid = login.cid;
                self.phase = Phase::FullFeature;
                self.last_rx = now;
                self.events.push_back(Event::LoggedIn(info));
                Ok(())
            }
        }
    }

    // ---- full feature phase ----------------------------------------------

    fn on_ffp_pdu(
        &mut self,
        raw: RawPdu,
        req: Request,
        dir: &dyn TargetDirectory,
    ) -> Result<(), ConnError> {
        let (cmd_sn, immediate) = match &req {
            Request::NopOut(p) => (p.cmd_sn, p.immediate),
            Request::ScsiCommand(p) => (p.cmd_sn, p.immediate),
            Request::TaskMgmt(p) => (p.cmd_sn, p.immediate),
            Request::Text(p) => (p.cmd_sn, p.immediate),
            Request::Logout(p) => (p.cmd_sn, p.immediate),
            Request::DataOut(_)
            | Request::Login(_)
            | Request::Snack { .. }
            | Request::Unknown { .. } => {
                return self.dispatch(raw, req, dir);
            }
        };
        if immediate {
            return self.dispatch(raw, req, dir);
        }
        if cmd_sn == self.exp_cmd_sn {
            self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
            self.dispatch(raw, req, dir)?;
            // Commands that were waiting for this one.
            while let Some((raw, req)) = self.ahead.remove(&self.exp_cmd_sn) {
                self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
                self.dispatch(raw, req, dir)?;
            }
            return Ok(());
        }
        // Outside the window: silently ignored (RFC 7143 4.2.2.1). Inside
        // but ahead: held until the gap fills.
        if sn_lt(self.exp_cmd_sn, cmd_sn)
            && !sn_lt(self.max_cmd_sn, cmd_sn)
            && self.ahead.len() < self.config.cmd_window as usize
        {
            self.ahead.insert(cmd_sn, (raw, req));
        }
        Ok(())
    }

    fn dispatch(
        &mut self,
        raw: RawPdu,
        req: Request,
        dir: &dyn TargetDirectory,
    ) -> Result<(), ConnError> {
        let discovery = self
            .session
            .as_ref()
            .is_some_and(|s| s.session_type == SessionType::Discovery);
        match req {
            Request::NopOut(p) => self.on_nop_out(p),
            Request::ScsiCommand(_) | Request::TaskMgmt(_) | Request::DataOut(_) if discovery => {
                self.send_reject(reject::PROTOCOL_ERROR, &raw);
            }
            Request::ScsiCommand(p) => self.on_scsi_command(p, &raw),
            Request::DataOut(p) => self.on_data_out(p, &raw)?,
            Request::TaskMgmt(p) => self.on_task_mgmt(p),
            Request::Text(p) => self.on_text(p, &raw, dir),
            Request::Logout(p) => {
                let response = match p.reason {
                    0 => 0,
                    1 if p.cid == self.cid => 0,
                    1 => 1,
                    // Connection recovery needs ErrorRecoveryLevel 2.
                    _ => 2,
                };
                let seq = self.seq(true);
                self.send(&Response::Logout {
                    itt: p.itt,
                    response,
                    time2wait: self.params.default_time2wait,
                    time2retain: self.params.default_time2retain,
                    seq,
                });
                if response == 0 {
                    self.closing = true;
                    self.events.push_back(Event::Logout);
                }
            }
            // RFC 7143 11.16: no SNACK at ErrorRecoveryLevel 0.
            Request::Snack { .. } => self.send_reject(reject::PROTOCOL_ERROR, &raw),
            Request::Login(_) => self.send_reject(reject::PROTOCOL_ERROR, &raw),
            Request::Unknown { .. } => self.send_reject(reject::COMMAND_NOT_SUPPORTED, &raw),
        }
        Ok(())
    }

    fn on_nop_out(&mut self, p: NopOutPdu) {
        if p.itt == RESERVED_TAG {
            // A reply to our ping (or a bare ExpStatSN update).
            if self.ping.is_some_and(|(ttt, _)| ttt == p.ttt) {
                self.ping = None;
            }
            return;
        }
        let n = p.data.len().min(self.params.initiator_mrdsl as usize);
        let seq = self.seq(true);
        self.send(&Response::NopIn {
            lun: p.lun,
            itt: p.itt,
            ttt: RESERVED_TAG,
            seq,
            data: p.data.slice(..n),
        });
    }
}

impl Connection {
    fn on_scsi_command(&mut self, p: ScsiCommandPdu, raw: &RawPdu) {
        if self.tasks.contains_key(&p.itt) {
            self.send_reject(reject::TASK_IN_PROGRESS, raw);
            return;
        }
        let write_len = if p.write { p.expected_len } else { 0 };
        let immediate_len = p.data.len() as u32;
        // Immediate data needs ImmediateData=Yes and may not exceed the
        // first burst or the write itself (RFC 7143 13.13, 13.14).
        if immediate_len > 0
            && (!self.params.immediate_data
                || !p.write
                || immediate_len > write_len
                || immediate_len > self.params.first_burst)
        {
            self.send_reject(reject::PROTOCOL_ERROR, raw);
            return;
        }
        if write_len > self.config.max_transfer {
            // Too large to buffer: fail the command without taking its data.
            let itt = p.itt;
            self.window_used += u32::from(!p.immediate);
            self.tasks.insert(itt, self.new_task(p, 0));
            self.finish_task(itt, too_large());
            return;
        }
        let windowed = !p.immediate;
        let mut task = self.new_task(p, write_len);
        task.windowed = windowed;
        self.window_used += u32::from(windowed);
        let itt = task.cmd.itt;
        task.data.extend_from_slice(&task.cmd.data);
        task.cmd.data = Bytes::new();
        // F=0 announces unsolicited Data-Out up to FirstBurstLength.
        task.unsolicited_open = !task.cmd.final_ && write_len > immediate_len;
        task.next_r2t_offset = if task.unsolicited_open {
            self.params.first_burst.min(write_len)
        } else {
            immediate_len
        };
        self.tasks.insert(itt, task);
        self.advance_task(itt);
    }

    fn new_task(&self, cmd: ScsiCommandPdu, write_len: u32) -> Task {
        Task {
            data: BytesMut::with_capacity(write_len as usize),
            cmd,
            write_len,
            unsolicited_open: false,
            next_unsolicited_sn: 0,
            r2ts: Vec::new(),
            next_r2t_offset: 0,
            r2t_sn: 0,
            dispatched: false,
            windowed: false,
        }
    }

    /// Sends R2Ts a task needs, or hands it out once all its data is here.
    fn advance_task(&mut self, itt: u32) {
        let max_r2t = self.params.max_outstanding_r2t.max(1) as usize;
        let max_burst = self.params.max_burst.max(512);
        let seq = self.seq(false);
        let mut r2ts = Vec::new();
        let Some(task) = self.tasks.get_mut(&itt) else {
            return;
        };
        if task.dispatched {
            return;
        }
        let received = task.data.len() as u32;
        if received >= task.write_len && !task.unsolicited_open {
            task.dispatched = true;
            let cmd = &task.cmd;
            let ev = Event::Command(ScsiCommand {
                itt,
                lun: cmd.lun,
                cdb: cmd.cdb.clone(),
                expected_len: cmd.expected_len,
                read: cmd.read,
                write: cmd.write,
                attr: match cmd.attr {
                    0 => TaskAttr::Untagged,
                    2 => TaskAttr::Ordered,
                    3 => TaskAttr::HeadOfQueue,
                    4 => TaskAttr::Aca,
                    _ => TaskAttr::Simple,
                },
                data_out: std::mem::take(&mut task.data).freeze(),
            });
            self.events.push_back(ev);
            return;
        }
        if task.unsolicited_open {
            return;
        }
        while task.r2ts.len() < max_r2t && task.next_r2t_offset < task.write_len {
            let len = (task.write_len - task.next_r2t_offset).min(max_burst);
            let ttt = self.next_ttt;
            self.next_ttt = self.next_ttt.wrapping_add(1).max(1);
            if self.next_ttt == RESERVED_TAG {
                self.next_ttt = 1;
            }
            task.r2ts.push(R2t {
                ttt,
                offset: task.next_r2t_offset,
                len,
                received: 0,
                next_data_sn: 0,
            });
            r2ts.push(Response::R2t {
                lun: task.cmd.lun,
                itt,
                ttt,
                r2t_sn: task.r2t_sn,
                buffer_offset: task.next_r2t_offset,
                desired_len: len,
                seq,
            });
            task.r2t_sn = task.r2t_sn.wrapping_add(1);
            task.next_r2t_offset += len;
        }
        for r in &r2ts {
            self.send(r);
        }
    }

    fn on_data_out(&mut self, p: DataOutPdu, raw: &RawPdu) -> Result<(), ConnError> {
        let Some(task) = self.tasks.get_mut(&p.itt) else {
            // The rest of a burst for a task we already ended is dropped;
            // data for a task that never existed is rejected.
            if !self.ended_itts.contains(&p.itt) {
                self.send_reject(reject::INVALID_PDU_FIELD, raw);
            }
            return Ok(());
        };
        let len = p.data.len() as u32;
        let at = task.data.len() as u32;
        if p.ttt == RESERVED_TAG {
            let limit = self.params.first_burst.min(task.write_len);
            if !task.unsolicited_open
                || p.buffer_offset != at
                || at.saturating_add(len) > limit
                || p.data_sn != task.next_unsolicited_sn
            {
                self.data_phase_error(p.itt);
                return Ok(());
            }
            task.next_unsolicited_sn = task.next_unsolicited_sn.wrapping_add(1);
            task.data.extend_from_slice(&p.data);
            if p.final_ || at + len >= limit {
                task.unsolicited_open = false;
                if task.next_r2t_offset < at + len {
                    task.next_r2t_offset = at + len;
                }
            }
        } else {
            let Some(i) = task.r2ts.iter().position(|r| r.ttt == p.ttt) else {
                self.send_reject(reject::INVALID_PDU_FIELD, raw);
                return Ok(());
            };
            let r = &mut task.r2ts[i];
            // DataPDUInOrder=Yes: each PDU continues where the last ended.
            if p.buffer_offset != r.offset + r.received
                || p.buffer_offset != at
                || r.received + len > r.len
                || p.data_sn != r.next_data_sn
            {
                self.data_phase_error(p.itt);
                return Ok(());
            }
            r.received += len;
            r.next_data_sn = r.next_data_sn.wrapping_add(1);
            task.data.extend_from_slice(&p.data);
            if p.final_ || r.received == r.len {
                if r.received < r.len {
                    self.data_phase_error(p.itt);
                    return Ok(());
                }
                task.r2ts.remove(i);
            }
        }
        self.advance_task(p.itt);
        Ok(())
    }

    /// Reports a command's result (ignored if the task was aborted).
    pub fn complete_command(&mut self, itt: u32, result: ScsiResult) {
        if self.tasks.get(&itt).is_some_and(|t| t.dispatched) {
            self.finish_task(itt, result);
        }
    }

    fn finish_task(&mut self, itt: u32, result: ScsiResult) {
        let Some(task) = self.tasks.remove(&itt) else {
            return;
        };
        if task.windowed {
            self.window_used = self.window_used.saturating_sub(1);
        }
        if self.closing {
            return;
        }
        let cmd = &task.cmd;
        let expected = cmd.expected_len;
        let good = result.status == ScsiStatus::GOOD;
        // Residuals describe the data transfer; a failed command moved none
        // that counts, so only successful commands report them.
        let (overflow, underflow, residual) = if !good || (!cmd.read && !cmd.write) {
            (false, false, 0)
        } else if result.transfer_len > expected {
            (true, false, result.transfer_len - expected)
        } else if result.transfer_len < expected {
            (false, true, expected - result.transfer_len)
        } else {
            (false, false, 0)
        };
        let data = if cmd.read {
            let n = result.data_in.len().min(expected as usize);
            result.data_in.slice(..n)
        } else {
            Bytes::new()
        };
        let mrdsl = self.params.initiator_mrdsl.max(512) as usize;
        let collapse = good && result.sense.is_none() && !data.is_empty();
        let mut data_sn = 0u32;
        let mut offset = 0usize;
        while offset < data.len() {
            let n = (data.len() - offset).min(mrdsl);
            let last = offset + n == data.len();
            let status =
                (last && collapse).then_some((result.status.0, overflow, underflow, residual));
            let seq = self.seq(status.is_some());
            self.send(&Response::DataIn {
                final_: last,
                lun: cmd.lun,
                itt,
                data_sn,
                buffer_offset: offset as u32,
                status,
                seq,
                data: data.slice(offset..offset + n),
            });
            data_sn = data_sn.wrapping_add(1);
            offset += n;
        }
        if !collapse {
            let seq = self.seq(true);
            self.send(&Response::ScsiResponse {
                itt,
                status: result.status.0,
                overflow,
                underflow,
                residual,
                exp_data_sn: data_sn,
                seq,
                sense: result.sense,
            });
        }
    }

    fn on_task_mgmt(&mut self, p: TaskMgmtPdu) {
        let function = match p.function {
            1 => TmfFunction::AbortTask,
            2 => TmfFunction::AbortTaskSet,
            3 => TmfFunction::ClearAca,
            4 => TmfFunction::ClearTaskSet,
            5 => TmfFunction::LogicalUnitReset,
            6 => TmfFunction::TargetWarmReset,
            7 => TmfFunction::TargetColdReset,
            8 => TmfFunction::TaskReassign,
            other => TmfFunction::Other(other),
        };
        let answer_now = match function {
            TmfFunction::AbortTask => {
                if let Some(task) = self.tasks.get(&p.referenced_itt) {
                    if task.cmd.lun != p.lun {
                        Some(TmfResponse::TaskDoesNotExist)
                    } else {
                        self.abort(&[p.referenced_itt]);
                        Some(TmfResponse::Complete)
                    }
                } else if let Some(sn) = self.ahead_sn(p.referenced_itt) {
                    // Not started yet: drop it; its CmdSN counts as received.
                    self.ahead.remove(&sn);
                    Some(TmfResponse::Complete)
                } else if !sn_lt(p.ref_cmd_sn, self.exp_cmd_sn)
                    && !sn_lt(self.max_cmd_sn, p.ref_cmd_sn)
                    && sn_lt(p.ref_cmd_sn, p.cmd_sn)
                {
                    // Never received but inside the window: it counts as
                    // received and aborted (RFC 7143 11.5.1, case b).
                    Some(TmfResponse::Complete)
                } else {
                    // Already completed, or never sent (case c).
                    Some(TmfResponse::TaskDoesNotExist)
                }
            }
            TmfFunction::ClearAca => Some(TmfResponse::NotSupported),
            TmfFunction::TaskReassign => Some(TmfResponse::ReassignmentNotSupported),
            TmfFunction::Other(_) => Some(TmfResponse::Rejected),
            _ => None,
        };
        if let Some(response) = answer_now {
            self.complete_task_management(p.itt, response);
            return;
        }
        let all_luns = matches!(
            function,
            TmfFunction::TargetWarmReset | TmfFunction::TargetColdReset
        );
        let victims: Vec<u32> = self
            .tasks
            .iter()
            .filter(|(_, t)| all_luns || t.cmd.lun == p.lun)
            .map(|(itt, _)| *itt)
            .collect();
        let aborted: Vec<u32> = victims
            .iter()
            .copied()
            .filter(|itt| self.tasks.get(itt).is_some_and(|t| t.dispatched))
            .collect();
        self.abort(&victims);
        self.ahead.retain(
            |_, (_, r)| !matches!(r, Request::ScsiCommand(c) if all_luns || c.lun == p.lun),
        );
        self.events.push_back(Event::TaskManagement(TmfRequest {
            itt: p.itt,
            function,
            lun: p.lun,
            referenced_itt: p.referenced_itt,
            aborted,
        }));
    }

    fn ahead_sn(&self, itt: u32) -> Option<u32> {
        self.ahead.iter().find_map(|(sn, (_, r))| match r {
            Request::ScsiCommand(c) if c.itt == itt => Some(*sn),
            _ => None,
        })
    }

    fn abort(&mut self, itts: &[u32]) {
        for itt in itts {
            if let Some(t) = self.tasks.remove(itt) {
                if t.windowed {
                    self.window_used = self.window_used.saturating_sub(1);
                }
            }
        }
    }

    /// Data-Out out of sequence. ErrorRecoveryLevel 0 has no recovery
    /// within a command, so the command ends with CHECK CONDITION and the
    /// session carries on; the rest of its burst is dropped.
    fn data_phase_error(&mut self, itt: u32) {
        if self.ended_itts.len() >= ENDED_ITTS {
            self.ended_itts.pop_front();
        }
        self.ended_itts.push_back(itt);
        self.finish_task(itt, Sense::DATA_PHASE_ERROR.into_result());
    }

    pub fn complete_task_management(&mut self, itt: u32, response: TmfResponse) {
        let seq = self.seq(true);
        self.send(&Response::TaskMgmt {
            itt,
            response: response as u8,
            seq,
        });
    }

    /// Ends the connection after what is queued has been sent (target cold
    /// reset, shutdown).
    pub fn close_after_flush(&mut self) {
        self.closing = true;
    }

    fn on_text(&mut self, p: TextPdu, raw: &RawPdu, dir: &dyn TargetDirectory) {
        // A continuation of our long response.
        if p.ttt != RESERVED_TAG {
            match self.text_reply.take() {
                Some(reply) if reply.itt == p.itt && reply.ttt == p.ttt => {
                    self.send_text_part(reply.itt, reply.rest);
                }
                _ => self.send_reject(reject::PROTOCOL_ERROR, raw),
            }
            return;
        }
        if self.text_in.len() + p.data.len() > text::MAX_TEXT_LEN {
            self.text_in.clear();
            self.send_reject(reject::PROTOCOL_ERROR, raw);
            return;
        }
        self.text_in.extend_from_slice(&p.data);
        if p.cont {
            let seq = self.seq(true);
            let ttt = self.alloc_ttt();
            self.send(&Response::Text {
                final_: false,
                cont: false,
                itt: p.itt,
                ttt,
                seq,
                data: Bytes::new(),
            });
            return;
        }
        let raw_text = std::mem::take(&mut self.text_in);
        let keys = match text::parse(&raw_text) {
            Ok(k) => k,
            Err(_) => {
                self.send_reject(reject::PROTOCOL_ERROR, raw);
                return;
            }
        };
        let mut out = Pairs::default();
        let limits = Self::limits_of(&self.config);
        let initiator = self
            .session
            .as_ref()
            .map(|s| s.initiator_name.clone())
            .unwrap_or_default();
        let own_target = self.session.as_ref().and_then(|s| s.target_name.clone());
        for (k, v) in &keys.0 {
            if k == "SendTargets" {
                let named = ["iqn.", "eui.", "naa."].iter().any(|p| v.starts_with(p));
                if !(v == "All" || v.is_empty() || named) {
                    out.push(k.clone(), "Reject");
                    continue;
                }
                for t in dir.discover(&initiator) {
                    // A normal session only learns about its own target.
                    let wanted = match (v.as_str(), own_target.as_deref()) {
                        ("All", None) => true,
                        ("All" | "", Some(own)) => own == t.name,
                        ("", None) => false,
                        (name, own) => name == t.name && own.is_none_or(|o| o == name),
                    };
                    if wanted {
                        out.push("TargetName", t.name.clone());
                        for a in &t.addresses {
                            out.push("TargetAddress", a.clone());
                        }
                    }
                }
                continue;
            }
            match negotiate::answer(&mut self.params, &limits, k, v, false) {
                Answer::Value(a) => out.push(k.clone(), a),
                Answer::NotMine => out.push(k.clone(), "Reject"),
            }
        }
        self.send_text_part(p.itt, out.encode());
    }

    fn alloc_ttt(&mut self) -> u32 {
        let ttt = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == RESERVED_TAG || self.next_ttt == 0 {
            self.next_ttt = 1;
        }
        ttt
    }

    fn send_text_part(&mut self, itt: u32, data: Bytes) {
        let max = self.params.initiator_mrdsl.max(512) as usize;
        let (now, rest) = if data.len() > max {
            // Split at a key boundary where possible.
            let cut = data[..max]
                .iter()
                .rposition(|&b| b == 0)
                .map_or(max, |i| i + 1);
            (data.slice(..cut), data.slice(cut..))
        } else {
            (data, Bytes::new())
        };
        let more = !rest.is_empty();
        let ttt = if more { self.alloc_ttt() } else { RESERVED_TAG };
        let seq = self.seq(true);
        self.send(&Response::Text {
            final_: !more,
            cont: more,
            itt,
            ttt,
            seq,
            data: now,
        });
        self.text_reply = more.then_some(TextReply { itt, ttt, rest });
    }

    // ---- time ------------------------------------------------------------

    /// When [`Connection::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closing {
            return None;
        }
        match self.phase {
            Phase::Login => Some(self.login_deadline),
            Phase::FullFeature => {
                let idle = self.last_rx + self.config.idle_timeout;
                let ping = (!self.config.nop_interval.is_zero() && self.ping.is_none())
                    .then(|| self.last_rx + self.config.nop_interval);
                Some(ping.map_or(idle, |p| p.min(idle)))
            }
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), ConnError> {
        if self.closing {
            return Ok(());
        }
        match self.phase {
            Phase::Login if now >= self.login_deadline => Err(ConnError::Timeout("login")),
            Phase::Login => Ok(()),
            Phase::FullFeature => {
                if now >= self.last_rx + self.config.idle_timeout {
                    return Err(ConnError::Timeout("idle"));
                }
                if !self.config.nop_interval.is_zero()
                    && self.ping.is_none()
                    && now >= self.last_rx + self.config.nop_interval
                {
                    let ttt = self.alloc_ttt();
                    let seq = self.seq(false);
                    self.send(&Response::NopIn {
                        lun: 0,
                        itt: RESERVED_TAG,
                        ttt,
                        seq,
                        data: Bytes::new(),
                    });
                    self.ping = Some((ttt, now));
                }
                Ok(())
            }
        }
    }

    /// Asks the initiator to log out (Async Message event 1) within `wait`
    /// seconds; used on orderly shutdown.
    pub fn request_logout(&mut self, wait: u16) {
        if self.phase != Phase::FullFeature || self.closing {
            return;
        }
        let seq = self.seq(true);
        self.send(&Response::Async {
            event: 1,
            param1: 0,
            param2: 0,
            param3: wait,
            seq,
        });
    }

    /// Ends the connection at once (its session was reinstated elsewhere, or
    /// the target shuts down): nothing more is sent.
    pub fn close(&mut self) {
        self.closing = true;
        self.tx.clear();
    }

    /// True once nothing more will be sent and the socket can be closed.
    pub fn is_closed(&self) -> bool {
        self.closing && self.tx.is_empty()
    }

    /// Commands handed out and not yet completed.
    pub fn tasks_in_flight(&self) -> usize {
        self.tasks.values().filter(|t| t.dispatched).count()
    }
}

/// CHECK CONDITION for a transfer larger than the target buffers.
fn too_large() -> ScsiResult {
    Sense::INVALID_FIELD_IN_CDB.into_result()
}

#[cfg(test)]
mod tests;
