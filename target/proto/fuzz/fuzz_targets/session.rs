//! A logged-in session fed fuzzer-chosen PDUs. The `connection` target
//! rarely gets past login with raw bytes; this one performs a valid login
//! (normal or discovery, digests on or off) and then decodes the input into
//! well-framed initiator PDUs (SCSI commands with arbitrary CDBs, Data-Out,
//! NOP-Out, task management, text, logout, raw bytes) interleaved with
//! driver actions (completing commands, the writer draining or not, time
//! passing). It asserts no panic and that what the connection holds for the
//! initiator stays bounded.
#![no_main]

use bytes::{Bytes, BytesMut};
use iscsi_proto::conn::{
    Authorization, ConnConfig, Connection, DiscoveredTarget, Event, TargetDirectory,
};
use iscsi_proto::pdu::{
    DataOutPdu, Digests, LoginRequest, LogoutPdu, NopOutPdu, Request, ScsiCommandPdu,
    TaskMgmtPdu, TextPdu,
};
use iscsi_proto::scsi::sense::Sense;
use iscsi_proto::task::{ScsiResult, ScsiStatus};
use iscsi_proto::text::Pairs;
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};

struct Open;

impl TargetDirectory for Open {
    fn authorize(&self, _i: &str, _t: Option<&str>) -> Authorization {
        Authorization::Allowed(None)
    }
    fn discover(&self, _i: &str) -> Vec<DiscoveredTarget> {
        vec![DiscoveredTarget {
            name: "iqn.t".into(),
            addresses: vec!["192.0.2.1:3260,1".into()],
        }]
    }
    fn session_exists(&self, _i: &str, _isid: &[u8; 6], _t: Option<&str>, _tsih: u16) -> bool {
        false
    }
}

const MAX_BACKLOG: usize = 1 << 20;
const MAX_TRANSFER: u32 = 1 << 20;
const CMD_WINDOW: u32 = 32;

/// Reads the fuzz input as a stream of small values.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes([self.u8()?, self.u8()?]))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes([self.u8()?, self.u8()?, self.u8()?, self.u8()?]))
    }
    fn bytes(&mut self, n: usize) -> Bytes {
        let n = n.min(self.0.len());
        let (a, rest) = self.0.split_at(n);
        self.0 = rest;
        Bytes::copy_from_slice(a)
    }
    /// A length that is usually small, sometimes large.
    fn len(&mut self) -> Option<u32> {
        Some(match self.u8()? {
            0..=200 => u32::from(self.u8()?) * 16,
            201..=250 => u32::from(self.u16()?) * 8,
            _ => self.u32()?,
        })
    }
}

struct Harness {
    conn: Connection,
    now: Instant,
    digests: Digests,
    cmd_sn: u32,
    /// Commands handed out and not yet completed: (itt, expected length).
    pending: Vec<(u32, u32)>,
    /// Bytes the fake writer has not sent yet.
    unsent: usize,
}

impl Harness {
    fn feed(&mut self, mut buf: BytesMut) -> bool {
        let ok = self.conn.handle_input(&mut buf, &Open, self.now).is_ok();
        self.after();
        ok
    }

    fn send(&mut self, req: &Request) -> bool {
        let mut buf = BytesMut::new();
        req.encode(&mut buf, self.digests);
        self.feed(buf)
    }

    fn after(&mut self) {
        while let Some(ev) = self.conn.poll_event() {
            if let Event::Command(c) = ev {
                self.pending.push((c.itt, c.expected_len));
            }
        }
        if let Some(tx) = self.conn.poll_transmit() {
            self.unsent += tx.len();
        }
        self.conn.set_unsent(self.unsent, usize::MAX);
        // Commands run and replies owed stay within the window and the cap
        // (plus the reply that crossed it).
        assert!(self.conn.tasks_in_flight() <= CMD_WINDOW as usize);
        assert!(
            self.conn.backlog() <= self.unsent + MAX_BACKLOG + MAX_TRANSFER as usize + (1 << 20),
            "backlog {} unsent {}",
            self.conn.backlog(),
            self.unsent
        );
    }

    fn complete(&mut self, pick: u8, status: u8, len: u32) {
        if self.pending.is_empty() {
            return;
        }
        let (itt, expected) = self.pending.remove(usize::from(pick) % self.pending.len());
        let result = if status & 1 == 0 {
            let n = len.min(expected).min(MAX_TRANSFER) as usize;
            ScsiResult {
                status: ScsiStatus::GOOD,
                sense: None,
                data_in: Bytes::from(vec![0xa5; n]),
                transfer_len: len,
            }
        } else {
            Sense::INVALID_FIELD_IN_CDB.into_result()
        };
        self.conn.complete_command(itt, result);
        self.after();
    }
}

fn login(h: &mut Harness, discovery: bool, digests: bool, mrdsl: u32) -> bool {
    let mut keys = Pairs::default();
    keys.push("InitiatorName", "iqn.fuzz:i");
    if discovery {
        keys.push("SessionType", "Discovery");
    } else {
        keys.push("SessionType", "Normal");
        keys.push("TargetName", "iqn.t");
    }
    let d = if digests { "CRC32C" } else { "None" };
    keys.push("HeaderDigest", d);
    keys.push("DataDigest", d);
    keys.push("MaxRecvDataSegmentLength", mrdsl.to_string());
    keys.push("ImmediateData", "Yes");
    keys.push("InitialR2T", "No");
    let ok = h.send(&Request::Login(LoginRequest {
        transit: true,
        cont: false,
        csg: 1,
        nsg: 3,
        version_max: 0,
        version_min: 0,
        isid: [0x80, 0, 0, 0, 0, 1],
        tsih: 0,
        itt: 0,
        cid: 0,
        cmd_sn: 1,
        exp_stat_sn: 0,
        data: keys.encode(),
    }));
    h.digests = Digests {
        header: digests,
        data: digests,
    };
    ok && h.conn.session().is_some()
}

fn step(h: &mut Harness, inp: &mut Input) -> Option<bool> {
    let op = inp.u8()?;
    let immediate = op & 0x80 != 0;
    // CmdSN: usually the next one, sometimes ahead or stale.
    let sn_choice = inp.u8()?;
    let cmd_sn = match sn_choice % 8 {
        0 => h.cmd_sn.wrapping_add(u32::from(sn_choice)),
        1 => h.cmd_sn.wrapping_sub(1),
        _ => h.cmd_sn,
    };
    if !immediate && sn_choice % 8 > 1 {
        h.cmd_sn = h.cmd_sn.wrapping_add(1);
    }
    let ok = match op & 0x0f {
        0 => {
            let n = inp.len()? as usize;
            let data = inp.bytes(n);
            h.send(&Request::NopOut(NopOutPdu {
                immediate,
                lun: 0,
                itt: inp.u32()?,
                ttt: if inp.u8()? & 1 == 0 { u32::MAX } else { inp.u32()? },
                cmd_sn,
                exp_stat_sn: 0,
                data,
            }))
        }
        1..=4 => {
            let flags = inp.u8()?;
            let cdb_len = usize::from(inp.u8()? % 33).max(6);
            let cdb = inp.bytes(cdb_len);
            let imm = inp.len()? as usize;
            let data = inp.bytes(imm);
            h.send(&Request::ScsiCommand(ScsiCommandPdu {
                immediate,
                final_: flags & 1 != 0,
                read: flags & 2 != 0,
                write: flags & 4 != 0,
                attr: (flags >> 3) & 7,
                lun: u64::from(flags >> 6),
                itt: u32::from(inp.u16()?),
                expected_len: inp.len()?,
                cmd_sn,
                exp_stat_sn: 0,
                cdb,
                data,
            }))
        }
        5 | 6 => {
            let n = inp.len()? as usize;
            let data = inp.bytes(n);
            h.send(&Request::DataOut(DataOutPdu {
                final_: op & 0x10 != 0,
                lun: 0,
                itt: u32::from(inp.u16()?),
                ttt: if op & 0x20 != 0 { u32::MAX } else { u32::from(inp.u16()?) },
                exp_stat_sn: 0,
                data_sn: u32::from(inp.u8()?),
                buffer_offset: inp.len()?,
                data,
            }))
        }
        7 => h.send(&Request::TaskMgmt(TaskMgmtPdu {
            immediate,
            function: inp.u8()? % 10,
            lun: 0,
            itt: u32::from(inp.u16()?),
            referenced_itt: u32::from(inp.u16()?),
            cmd_sn,
            exp_stat_sn: 0,
            ref_cmd_sn: inp.u32()?,
        })),
        8 => {
            let n = usize::from(inp.u8()?);
            let data = inp.bytes(n);
            h.send(&Request::Text(TextPdu {
                immediate,
                final_: op & 0x10 == 0,
                cont: op & 0x20 != 0,
                itt: u32::from(inp.u16()?),
                ttt: if op & 0x40 != 0 { u32::from(inp.u16()?) } else { u32::MAX },
                cmd_sn,
                exp_stat_sn: 0,
                data,
            }))
        }
        9 => h.send(&Request::Logout(LogoutPdu {
            immediate,
            reason: inp.u8()? % 4,
            itt: u32::from(inp.u16()?),
            cid: u16::from(inp.u8()? % 2),
            cmd_sn,
            exp_stat_sn: 0,
        })),
        10 => {
            // Raw bytes: partial or malformed PDUs.
            let n = usize::from(inp.u8()?);
            let raw = inp.bytes(n);
            h.feed(BytesMut::from(&raw[..]))
        }
        11 | 12 => {
            let (pick, status, len) = (inp.u8()?, inp.u8()?, inp.len()?);
            h.complete(pick, status, len);
            true
        }
        13 => {
            // The writer sends some or all of what waits.
            let part = usize::from(inp.u8()?);
            h.unsent -= h.unsent * part / 255;
            h.after();
            true
        }
        14 => {
            h.now += Duration::from_secs(u64::from(inp.u8()?));
            let ok = h.conn.handle_timeout(h.now).is_ok();
            h.after();
            ok
        }
        _ => {
            h.conn.request_logout(2);
            h.after();
            true
        }
    };
    Some(ok)
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    let Some(setup) = inp.u8() else {
        return;
    };
    let now = Instant::now();
    let mut h = Harness {
        conn: Connection::new(
            ConnConfig {
                tsih: 1,
                portal_group_tag: 1,
                max_recv_data_segment: 65536,
                max_outstanding_r2t: 4,
                max_burst: 262_144,
                first_burst: 65536,
                cmd_window: CMD_WINDOW,
                max_transfer: MAX_TRANSFER,
                r2t_budget: 4 << 20,
                max_backlog: MAX_BACKLOG,
                login_timeout: Duration::from_secs(5),
                nop_interval: Duration::from_secs(5),
                idle_timeout: Duration::from_secs(30),
                target_alias: None,
            },
            now,
        ),
        now,
        digests: Digests::default(),
        cmd_sn: 1,
        pending: Vec::new(),
        unsent: 0,
    };
    let mrdsl = 512 << (setup >> 4 & 7);
    if !login(&mut h, setup & 1 != 0, setup & 2 != 0, mrdsl) {
        panic!("the scripted login failed");
    }
    for _ in 0..256 {
        match step(&mut h, &mut inp) {
            Some(true) => {}
            Some(false) | None => break,
        }
    }
});
