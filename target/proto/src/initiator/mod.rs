//! A sans-IO iSCSI initiator: the other end of [`crate::conn::Connection`],
//! for the tests of this crate and of the driver, and for the load
//! generator. It builds login, text, SCSI command, Data-Out, NOP-Out and
//! logout PDUs, consumes the target's bytes and yields typed events.
//!
//! One command at a time or many: each tracked task collects its Data-In
//! and answers its R2Ts from the write data it was given. PDUs for tasks it
//! does not track (sent with [`Initiator::send_raw`]) come out as
//! [`Event::Pdu`], so tests can build exact, even hostile, requests and
//! still read typed answers.
//!
//! Like the target side, it has no sockets: the caller moves
//! [`Initiator::poll_transmit`] to the wire and received bytes into
//! [`Initiator::handle_input`].

mod login;
mod task;

use crate::pdu::{self, Digests, PduError, RawPdu, Request, Response, RESERVED_TAG};
use crate::text::{Pairs, TextError};
use bytes::BytesMut;
use std::collections::{BTreeMap, VecDeque};

pub use task::Outcome;

/// Who logs in where, and what is offered.
#[derive(Debug, Clone)]
pub struct InitiatorConfig {
    pub initiator_name: String,
    /// `None`: a discovery session.
    pub target_name: Option<String>,
    pub isid: [u8; 6],
    /// CHAP user and secret: with them, login starts in the security stage.
    pub chap: Option<(String, Vec<u8>)>,
    /// Mutual CHAP: the name and secret the target must prove it knows.
    pub mutual_chap: Option<(String, Vec<u8>)>,
    /// Operational keys offered in the operational stage, in order.
    pub offer: Vec<(String, String)>,
    /// Largest data segment taken from the target; longer ones end the
    /// connection before they are buffered.
    pub max_segment: u32,
}

impl InitiatorConfig {
    /// A login without authentication, straight to the operational stage.
    pub fn new(initiator: &str, target: Option<&str>) -> Self {
        Self {
            initiator_name: initiator.into(),
            target_name: target.map(Into::into),
            isid: [0x80, 0, 0, 0, 0, 1],
            chap: None,
            mutual_chap: None,
            offer: Vec::new(),
            max_segment: 1 << 24,
        }
    }

    /// A login to `target` with one-way CHAP as `user`.
    pub fn chap(initiator: &str, target: &str, user: &str, secret: &[u8]) -> Self {
        Self {
            chap: Some((user.into(), secret.to_vec())),
            ..Self::new(initiator, Some(target))
        }
    }
}

/// What the initiator reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Full feature phase reached; `keys` are the target's answers in the
    /// operational stage.
    LoggedIn { tsih: u16, keys: Pairs },
    /// The target refused the login (RFC 7143 11.13.5); it closes the
    /// connection.
    LoginFailed { class: u8, detail: u8 },
    /// A command started with [`Initiator::command`] finished.
    CommandDone { itt: u32, outcome: Outcome },
    /// The answer to [`Initiator::text`] (one PDU; `final_` clear means
    /// the target has more, asked for with another `text` call).
    Text { itt: u32, final_: bool, keys: Pairs },
    /// The answer to [`Initiator::logout`].
    LoggedOut { itt: u32, response: u8 },
    /// Any other PDU: answers to untracked tasks, NOP-Ins (pings are
    /// answered already), task management responses, rejects, async
    /// messages.
    Pdu(Response),
}

/// Why the initiator gave up on the connection.
#[derive(Debug, thiserror::Error)]
pub enum InitiatorError {
    #[error("PDU from the target: {0}")]
    Pdu(#[from] PduError),
    #[error("text from the target: {0}")]
    Text(#[from] TextError),
    #[error("login: continued login responses")]
    ContinuedLogin,
    #[error("login: target stayed in the security stage")]
    StayedInSecurity,
    #[error("login: target did not move to full feature phase")]
    NoFullFeature,
    #[error("login: target did not agree to CHAP with MD5")]
    NoChapMd5,
    #[error("login: no CHAP_C from the target")]
    NoChapChallenge,
    #[error("login: CHAP without credentials")]
    NoCredentials,
    #[error("login: target chose AuthMethod {0:?}, not CHAP")]
    AuthMethod(Option<String>),
    #[error("login: the target did not prove the mutual CHAP secret")]
    TargetNotAuthenticated,
    #[error("login: bad value for {key}: {value:?}")]
    BadValue { key: &'static str, value: String },
    #[error("R2T for bytes {offset}..+{len} beyond the {have} bytes of write data")]
    R2tBeyondData { offset: u32, len: u32, have: usize },
    #[error("command issued before full feature phase")]
    NotLoggedIn,
    #[error("write of {0} bytes does not fit an iSCSI length")]
    TooLong(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Login(login::Step),
    FullFeature,
}

/// One connection's initiator state.
pub struct Initiator {
    config: InitiatorConfig,
    phase: Phase,
    digests: Digests,
    tsih: u16,
    itt: u32,
    cmd_sn: u32,
    exp_stat_sn: u32,
    /// Mutual CHAP: the identifier and challenge we sent.
    our_challenge: Option<(u8, Vec<u8>)>,
    /// Negotiated: the target's MaxRecvDataSegmentLength (our Data-Out
    /// size), ImmediateData, InitialR2T, FirstBurstLength.
    target_max_recv: u32,
    immediate_data: bool,
    initial_r2t: bool,
    first_burst: u32,
    tasks: BTreeMap<u32, task::Task>,
    text_itts: Vec<u32>,
    logout_itt: Option<u32>,
    tx: BytesMut,
    events: VecDeque<Event>,
}

impl Initiator {
    pub fn new(config: InitiatorConfig) -> Self {
        Self {
            config,
            phase: Phase::Idle,
            digests: Digests::default(),
            tsih: 0,
            itt: 0,
            cmd_sn: 1,
            exp_stat_sn: 0,
            our_challenge: None,
            // RFC 7143 defaults until the target answers.
            target_max_recv: 8192,
            immediate_data: true,
            initial_r2t: true,
            first_burst: 65536,
            tasks: BTreeMap::new(),
            text_itts: Vec::new(),
            logout_itt: None,
            tx: BytesMut::new(),
            events: VecDeque::new(),
        }
    }

    /// Digests in force (set by the caller when it negotiated them by
    /// hand with [`Self::send_raw`]).
    pub fn set_digests(&mut self, digests: Digests) {
        self.digests = digests;
    }

    pub fn is_logged_in(&self) -> bool {
        self.phase == Phase::FullFeature
    }

    /// The CmdSN the next non-immediate command takes.
    pub fn cmd_sn(&self) -> u32 {
        self.cmd_sn
    }

    pub fn exp_stat_sn(&self) -> u32 {
        self.exp_stat_sn
    }

    /// Everything encoded and ready to send, if anything.
    pub fn poll_transmit(&mut self) -> Option<BytesMut> {
        (!self.tx.is_empty()).then(|| self.tx.split())
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Queues any PDU exactly as given; answers to it come out as
    /// [`Event::Pdu`] unless they belong to a tracked task.
    pub fn send_raw(&mut self, req: &Request) {
        req.encode(&mut self.tx, self.digests);
    }

    fn next_itt(&mut self) -> u32 {
        self.itt = self.itt.wrapping_add(1);
        if self.itt == RESERVED_TAG {
            self.itt = 1;
        }
        self.itt
    }

    fn take_cmd_sn(&mut self, immediate: bool) -> u32 {
        let sn = self.cmd_sn;
        if !immediate {
            self.cmd_sn = self.cmd_sn.wrapping_add(1);
        }
        sn
    }

    /// A text request (e.g. `SendTargets=All`); the answer comes as
    /// [`Event::Text`]. Returns its ITT.
    pub fn text(&mut self, keys: &Pairs) -> u32 {
        let itt = self.next_itt();
        let cmd_sn = self.take_cmd_sn(true);
        self.text_itts.push(itt);
        self.send_raw(&Request::Text(pdu::TextPdu {
            immediate: true,
            final_: true,
            cont: false,
            itt,
            ttt: RESERVED_TAG,
            cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            data: keys.encode(),
        }));
        itt
    }

    /// Logout (close the session); the answer comes as [`Event::LoggedOut`].
    pub fn logout(&mut self) -> u32 {
        let itt = self.next_itt();
        let cmd_sn = self.take_cmd_sn(true);
        self.logout_itt = Some(itt);
        self.send_raw(&Request::Logout(pdu::LogoutPdu {
            immediate: true,
            reason: 0,
            itt,
            cid: 0,
            cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        }));
        itt
    }

    /// Consumes complete PDUs from `buf` (leaving a partial one in place).
    pub fn handle_input(&mut self, buf: &mut BytesMut) -> Result<(), InitiatorError> {
        while let Some(len) = pdu::frame_len(buf, self.digests, self.config.max_segment)? {
            let raw = RawPdu::parse(buf.split_to(len).freeze(), self.digests)?;
            let resp = Response::decode(&raw)?;
            self.on_response(resp)?;
        }
        Ok(())
    }

    fn on_response(&mut self, resp: Response) -> Result<(), InitiatorError> {
        // StatSN advances with every response that carries a status.
        let advances = match &resp {
            Response::DataIn { status, .. } => status.is_some(),
            Response::R2t { .. } | Response::NopIn { .. } | Response::Async { .. } => false,
            _ => true,
        };
        if advances {
            self.exp_stat_sn = resp.seq().stat_sn.wrapping_add(1);
        }
        match resp {
            Response::Login { .. } if matches!(self.phase, Phase::Login(_)) => {
                self.on_login_response(resp)
            }
            Response::DataIn { itt, .. }
            | Response::R2t { itt, .. }
            | Response::ScsiResponse { itt, .. }
                if self.tasks.contains_key(&itt) =>
            {
                self.on_task_response(resp)
            }
            Response::Text {
                itt, final_, data, ..
            } if self.text_itts.contains(&itt) => {
                self.text_itts.retain(|&i| i != itt);
                let keys = crate::text::parse(&data)?;
                self.events.push_back(Event::Text { itt, final_, keys });
                Ok(())
            }
            Response::Logout { itt, response, .. } if self.logout_itt == Some(itt) => {
                self.logout_itt = None;
                self.events.push_back(Event::LoggedOut { itt, response });
                Ok(())
            }
            Response::NopIn { ttt, ref data, .. } => {
                // A ping from the target (TTT set) wants its data back; it
                // takes no CmdSN.
                if ttt != RESERVED_TAG {
                    let echo = Request::NopOut(pdu::NopOutPdu {
                        immediate: true,
                        lun: 0,
                        itt: RESERVED_TAG,
                        ttt,
                        cmd_sn: self.cmd_sn,
                        exp_stat_sn: self.exp_stat_sn,
                        data: data.clone(),
                    });
                    self.send_raw(&echo);
                }
                self.events.push_back(Event::Pdu(resp));
                Ok(())
            }
            other => {
                self.events.push_back(Event::Pdu(other));
                Ok(())
            }
        }
    }
}
