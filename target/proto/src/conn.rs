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

use crate::login::{self, Login, LoginError, Step};
use crate::negotiate::{self, Answer, Limits, Params};
use crate::pdu::{
    self, reject, DataOutPdu, Digests, NopOutPdu, PduError, RawPdu, Request, Response,
    ScsiCommandPdu, SeqNums, TaskMgmtPdu, TextPdu, RESERVED_TAG,
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
    /// Most write data solicited by R2Ts and not yet received: bounds what
    /// one initiator can make us buffer (unsolicited data is bounded by
    /// FirstBurstLength times the CmdSN window).
    pub r2t_budget: u64,
    /// Reply bytes a connection may have queued, unsent or owed (reads
    /// still running) before it stops taking PDUs from the initiator and
    /// stops opening the CmdSN window: what an initiator that never reads
    /// can make us hold is this plus one command's reply.
    pub max_backlog: usize,
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
    /// Served by another portal now: the login is answered with a
    /// redirect there (status 0x0101, "target moved temporarily"). An
    /// address, so the TargetAddress always carries an explicit port (iPXE
    /// mishandles one without).
    Moved(std::net::SocketAddr),
    /// About to be served here (a peer's target that this portal takes
    /// over once the peer's ownership has lapsed): the login is answered
    /// "service unavailable" (0x0301), a target error that initiators retry
    /// (open-iscsi also on a first login), not an initiator error such as an
    /// unknown target or failed authentication, which they need not retry.
    Unavailable,
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
    /// with `target` (a login with a non-zero TSIH continues that session;
    /// `None`: discovery, which never continues anything).
    fn session_exists(
        &self,
        initiator: &str,
        isid: &[u8; 6],
        target: Option<&str>,
        tsih: u16,
    ) -> bool;
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
    /// session of the same initiator name and ISID *with the same target*
    /// (session reinstatement). A discovery session never ends another: it
    /// needs no credentials, so it must not be able to cut anyone off.
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
    /// A PDU that cannot be framed or decoded (the cause is kept).
    #[error("protocol error: {0}")]
    Protocol(#[from] PduError),
    #[error("login failed: {0}")]
    Login(#[from] LoginError),
    #[error("timed out: {0}")]
    Timeout(Deadline),
}

/// Which of the connection's deadlines passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Deadline {
    /// Login did not complete in time.
    #[error("login")]
    Login,
    /// Full feature phase: nothing received from the initiator for the
    /// idle limit.
    #[error("idle")]
    Idle,
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
    /// Bytes solicited by R2Ts and not yet received.
    r2t_outstanding: u64,
    /// Some task holds back R2Ts until budget frees up.
    r2t_waiting: bool,
    /// Reply bytes handed to the driver and not yet on the wire.
    unsent: usize,
    /// The driver asks for less backlog than `max_backlog` (every
    /// connection together is over the server's total).
    backlog_cap: usize,
    /// Data-In owed by commands handed out and not yet completed.
    read_owed: u64,
    /// A reply went out with MaxCmdSN held back by the backlog; the window
    /// must be reopened by a NOP-In once it drains.
    window_held: bool,
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
            r2t_outstanding: 0,
            r2t_waiting: false,
            unsent: 0,
            backlog_cap: usize::MAX,
            read_owed: 0,
            window_held: false,
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
            // Backpressure: an initiator that does not read its replies
            // gets no more of its PDUs taken in (they stay in `buf` and in
            // the socket) until the backlog drains.
            if !self.wants_input() {
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
                Err(e) => return Err(e.into()),
            };
            let frame = buf.split_to(len).freeze();
            let raw = RawPdu::parse(frame, self.digests)?;
            let req = Request::decode(&raw)?;
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
        // cannot queue more than `cmd_window` tasks, and stays shut while
        // replies are queued but unsent: it reopens (by the next reply or a
        // NOP-In) only once the initiator has read them.
        let free = if self.over_backlog() {
            self.window_held = true;
            0
        } else {
            self.window_held = false;
            self.config
                .cmd_window
                .max(1)
                .saturating_sub(self.window_used)
        };
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
        // Past MaxCmdSN: outside the window we granted (an initiator that
        // does not read never learns of a new one).
        let in_window = !sn_lt(self.max_cmd_sn, cmd_sn);
        if cmd_sn == self.exp_cmd_sn && in_window {
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
        // but ahead: held until the gap fills, within a byte budget, and
        // never in a discovery session (nothing there needs ordering, and
        // it needs no credentials).
        if sn_lt(self.exp_cmd_sn, cmd_sn) && in_window && self.may_hold_ahead(&raw) {
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
        // The echo is bounded by both sides' segment lengths; what it queues
        // counts against the backlog like any reply.
        let n = p
            .data
            .len()
            .min(self.params.initiator_mrdsl as usize)
            .min(self.params.target_mrdsl as usize);
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

/// Takes the next tag from `counter`: never 0 and never the reserved value.
fn next_tag(counter: &mut u32) -> u32 {
    let tag = *counter;
    *counter = counter.wrapping_add(1);
    if *counter == RESERVED_TAG || *counter == 0 {
        *counter = 1;
    }
    tag
}

mod data;
mod flow;
mod lifecycle;
mod login_phase;
mod text_reply;
mod tmf;

#[cfg(test)]
mod tests;
