//! Connection tests: an in-memory initiator drives the state machine with
//! bytes; no sockets.

use super::*;
use crate::initiator::{Event as InitiatorEvent, Initiator, InitiatorConfig};
use crate::login::chap_response;
use crate::pdu::{op, LoginRequest, LogoutPdu, PduError, Response, BHS_LEN};

struct Dir {
    chap: Option<ChapCredentials>,
}

impl TargetDirectory for Dir {
    fn authorize(&self, initiator: &str, target: Option<&str>) -> Authorization {
        match target {
            None => Authorization::Allowed(None),
            Some("iqn.t") if initiator == "iqn.bad" => Authorization::Denied,
            Some("iqn.t") => Authorization::Allowed(self.chap.clone()),
            Some("iqn.moved") => Authorization::Moved(([192, 0, 2, 7], 3261).into()),
            Some("iqn.moved6") => Authorization::Moved(
                "[2001:db8::7]:3262"
                    .parse()
                    .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0))),
            ),
            Some("iqn.coming") => Authorization::Unavailable,
            Some(_) => Authorization::NotFound,
        }
    }
    fn discover(&self, _initiator: &str) -> Vec<DiscoveredTarget> {
        vec![DiscoveredTarget {
            name: "iqn.t".into(),
            addresses: vec!["192.0.2.1:3260,1".into()],
        }]
    }
    fn session_exists(&self, _i: &str, _isid: &[u8; 6], _t: Option<&str>, _tsih: u16) -> bool {
        false
    }
}

fn config() -> ConnConfig {
    ConnConfig {
        tsih: 5,
        portal_group_tag: 1,
        max_recv_data_segment: 65536,
        max_outstanding_r2t: 4,
        max_burst: 262_144,
        first_burst: 65536,
        cmd_window: 16,
        max_transfer: 1 << 20,
        r2t_budget: 32 << 20,
        max_backlog: 16 << 20,
        login_timeout: Duration::from_secs(10),
        nop_interval: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(30),
        target_alias: None,
    }
}

/// The status of a login response.
fn login_status(r: &Response) -> (u8, u8) {
    match r {
        Response::Login {
            status_class,
            status_detail,
            ..
        } => (*status_class, *status_detail),
        other => panic!("not a login response: {other:?}"),
    }
}

/// The text keys of a login or text response.
fn keys(r: &Response) -> Pairs {
    match r {
        Response::Login { data, .. } | Response::Text { data, .. } => {
            text::parse(data).unwrap_or_default()
        }
        other => panic!("no keys in {other:?}"),
    }
}

/// The flags byte of a login response: T, C, CSG, NSG as on the wire.
fn login_flags(r: &Response) -> u8 {
    match r {
        Response::Login {
            transit,
            cont,
            csg,
            nsg,
            ..
        } => (u8::from(*transit) << 7) | (u8::from(*cont) << 6) | (csg << 2) | nsg,
        other => panic!("not a login response: {other:?}"),
    }
}

/// Buffer offset and desired length of an R2T.
fn r2t(r: &Response) -> (u32, u32) {
    match r {
        Response::R2t {
            buffer_offset,
            desired_len,
            ..
        } => (*buffer_offset, *desired_len),
        other => panic!("expected an R2T, got {other:?}"),
    }
}

/// The response code of a task management response.
fn tmf_response(r: &Response) -> u8 {
    match r {
        Response::TaskMgmt { response, .. } => *response,
        other => panic!("expected a task management response, got {other:?}"),
    }
}

struct Harness {
    conn: Connection,
    /// The initiator side: encodes the tests' requests as given and
    /// decodes what the target sends.
    ini: Initiator,
    dir: Dir,
    now: Instant,
    cmd_sn: u32,
    last_r2t_ttt: u32,
}

impl Harness {
    fn new(chap: Option<ChapCredentials>) -> Self {
        Self::with_config(chap, config())
    }

    fn with_config(chap: Option<ChapCredentials>, config: ConnConfig) -> Self {
        let now = Instant::now();
        Self {
            conn: Connection::new(config, now),
            ini: Initiator::new(InitiatorConfig::new("iqn.i", Some("iqn.t"))),
            dir: Dir { chap },
            now,
            cmd_sn: 1,
            last_r2t_ttt: 0,
        }
    }

    fn send(&mut self, req: &Request) -> Result<Vec<Response>, ConnError> {
        self.ini.set_digests(self.conn.digests);
        self.ini.send_raw(req);
        let buf = self.ini.poll_transmit().unwrap_or_default();
        self.send_bytes(buf)
    }

    fn send_bytes(&mut self, mut buf: BytesMut) -> Result<Vec<Response>, ConnError> {
        self.conn.handle_input(&mut buf, &self.dir, self.now)?;
        Ok(self.drain())
    }

    /// Everything the target sent, decoded by the initiator. The tests
    /// send raw requests only, so every answer comes as a plain PDU.
    fn drain(&mut self) -> Vec<Response> {
        let Some(mut tx) = self.conn.poll_transmit() else {
            return Vec::new();
        };
        self.ini.set_digests(self.conn.digests);
        if let Err(e) = self.ini.handle_input(&mut tx) {
            panic!("target sent an undecodable PDU: {e}");
        }
        assert!(tx.is_empty(), "target sent a partial PDU");
        std::iter::from_fn(|| self.ini.poll_event())
            .map(|e| match e {
                InitiatorEvent::Pdu(r) => r,
                other => panic!("unexpected initiator event {other:?}"),
            })
            .collect()
    }

    fn login(
        &mut self,
        csg: u8,
        nsg: u8,
        transit: bool,
        keys: &[(&str, &str)],
    ) -> Result<Response, ConnError> {
        let mut p = Pairs::default();
        for (k, v) in keys {
            p.push(*k, *v);
        }
        let req = Request::Login(LoginRequest {
            transit,
            cont: false,
            csg,
            nsg,
            version_max: 0,
            version_min: 0,
            isid: [0x80, 0, 0, 0, 0, 1],
            tsih: 0,
            itt: 1,
            cid: 0,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: 0,
            data: p.encode(),
        });
        let mut pdus = self.send(&req)?;
        assert_eq!(pdus.len(), 1);
        Ok(pdus.remove(0))
    }

    fn full_login(&mut self, extra: &[(&str, &str)]) -> Result<Response, ConnError> {
        let mut keys = vec![
            ("InitiatorName", "iqn.i"),
            ("TargetName", "iqn.t"),
            ("SessionType", "Normal"),
        ];
        keys.extend_from_slice(extra);
        let r = self.login(1, 3, true, &keys)?;
        assert_eq!(login_status(&r), (0, 0), "login failed");
        Ok(r)
    }

    #[allow(clippy::too_many_arguments)]
    fn scsi(
        &mut self,
        itt: u32,
        cdb: &[u8],
        read: bool,
        write: bool,
        len: u32,
        data: Bytes,
        final_: bool,
    ) -> Result<Vec<Response>, ConnError> {
        let mut c = cdb.to_vec();
        c.resize(16, 0);
        let sn = self.cmd_sn;
        self.cmd_sn += 1;
        self.send(&Request::ScsiCommand(ScsiCommandPdu {
            immediate: false,
            final_,
            read,
            write,
            attr: 1,
            lun: 0,
            itt,
            expected_len: len,
            cmd_sn: sn,
            exp_stat_sn: 0,
            cdb: Bytes::from(c),
            data,
        }))
    }
}

fn good(data: &[u8], transfer_len: u32) -> ScsiResult {
    ScsiResult {
        status: ScsiStatus::GOOD,
        sense: None,
        data_in: Bytes::copy_from_slice(data),
        transfer_len,
    }
}

#[test]
fn read_collapses_status_and_reports_underflow() -> Result<(), ConnError> {
    let mut h = Harness::new(None);
    h.full_login(&[("MaxRecvDataSegmentLength", "1024")])?;
    h.conn.poll_event();
    assert!(h
        .scsi(
            0x10,
            &[0x28, 0, 0, 0, 0, 0, 0, 0, 4, 0],
            true,
            false,
            4096,
            Bytes::new(),
            true
        )?
        .is_empty());
    let Some(Event::Command(cmd)) = h.conn.poll_event() else {
        panic!("no command event");
    };
    assert_eq!(cmd.itt, 0x10);
    // The CDB asked for 2048 bytes only: 2048 underflow.
    h.conn.complete_command(0x10, good(&[7u8; 2048], 2048));
    let pdus = h.drain();
    assert_eq!(pdus.len(), 2, "two 1024-byte Data-In PDUs");
    assert!(pdus.iter().all(|p| p.opcode() == op::DATA_IN));
    let Response::DataIn {
        final_,
        status,
        buffer_offset,
        data_sn,
        ..
    } = &pdus[1]
    else {
        panic!("expected Data-In, got {:?}", pdus[1]);
    };
    // F and S (status 0, no overflow, 2048 bytes underflow).
    assert!(*final_);
    assert_eq!(*status, Some((0, false, true, 2048)), "S and U");
    assert_eq!(*buffer_offset, 1024, "buffer offset");
    assert_eq!(*data_sn, 1, "DataSN");
    Ok(())
}

#[test]
fn write_with_r2ts_like_ipxe() -> Result<(), ConnError> {
    let mut h = Harness::new(None);
    h.full_login(&[
        ("ImmediateData", "No"),
        ("InitialR2T", "Yes"),
        ("MaxOutstandingR2T", "1"),
        ("MaxBurstLength", "1024"),
    ])?;
    h.conn.poll_event();
    let pdus = h.scsi(
        0x20,
        &[0x2A, 0, 0, 0, 0, 0, 0, 0, 4, 0],
        false,
        true,
        2048,
        Bytes::new(),
        true,
    )?;
    assert_eq!(pdus.len(), 1);
    assert_eq!(r2t(&pdus[0]), (0, 1024));
    let mut offset = 0;
    for r2t in 0..2u32 {
        let ttt = if r2t == 0 { pdus[0].ttt() } else { 0 };
        let ttt = if r2t == 1 { h.last_r2t_ttt } else { ttt };
        for sn in 0..2u32 {
            let out = h.send(&Request::DataOut(DataOutPdu {
                final_: sn == 1,
                lun: 0,
                itt: 0x20,
                ttt,
                exp_stat_sn: 0,
                data_sn: sn,
                buffer_offset: offset,
                data: Bytes::from(vec![offset as u8; 512]),
            }))?;
            offset += 512;
            if let Some(Response::R2t {
                buffer_offset,
                r2t_sn,
                ttt,
                ..
            }) = out.iter().find(|p| p.opcode() == op::R2T)
            {
                assert_eq!(*buffer_offset, 1024);
                assert_eq!(*r2t_sn, 1, "R2TSN");
                h.last_r2t_ttt = *ttt;
            }
        }
    }
    let Some(Event::Command(cmd)) = h.conn.poll_event() else {
        panic!("no command event");
    };
    assert_eq!(cmd.data_out.len(), 2048);
    assert_eq!(cmd.data_out[1536], 1536u32 as u8);
    h.conn.complete_command(0x20, good(&[], 2048));
    let pdus = h.drain();
    assert!(
        matches!(
            pdus[0],
            Response::ScsiResponse {
                overflow: false,
                underflow: false,
                ..
            }
        ),
        "no residual: {:?}",
        pdus[0]
    );
    Ok(())
}

#[test]
fn immediate_and_unsolicited_data() -> Result<(), ConnError> {
    let mut h = Harness::new(None);
    h.full_login(&[
        ("ImmediateData", "Yes"),
        ("InitialR2T", "No"),
        ("FirstBurstLength", "1024"),
    ])?;
    h.conn.poll_event();
    let out = h.scsi(
        0x30,
        &[0x2A],
        false,
        true,
        3072,
        Bytes::from(vec![1u8; 512]),
        false,
    )?;
    assert!(out.is_empty(), "unsolicited data expected first");
    let out = h.send(&Request::DataOut(DataOutPdu {
        final_: true,
        lun: 0,
        itt: 0x30,
        ttt: RESERVED_TAG,
        exp_stat_sn: 0,
        data_sn: 0,
        buffer_offset: 512,
        data: Bytes::from(vec![2u8; 512]),
    }))?;
    assert_eq!(out.len(), 1);
    assert_eq!(r2t(&out[0]), (1024, 2048));
    Ok(())
}

#[test]
fn cmdsn_window_orders_and_drops() -> Result<(), ConnError> {
    let mut h = Harness::new(None);
    h.full_login(&[])?;
    h.conn.poll_event();
    // CmdSN 2 arrives before 1: held.
    h.cmd_sn = 2;
    h.scsi(2, &[0x00], false, false, 0, Bytes::new(), true)?;
    assert!(h.conn.poll_event().is_none());
    // Far outside the window: ignored.
    h.cmd_sn = 1000;
    h.scsi(3, &[0x00], false, false, 0, Bytes::new(), true)?;
    assert!(h.conn.poll_event().is_none());
    h.cmd_sn = 1;
    h.scsi(1, &[0x00], false, false, 0, Bytes::new(), true)?;
    let order: Vec<u32> = std::iter::from_fn(|| h.conn.poll_event())
        .filter_map(|e| match e {
            Event::Command(c) => Some(c.itt),
            _ => None,
        })
        .collect();
    assert_eq!(order, vec![1, 2]);
    Ok(())
}

#[test]
fn rejects_unknown_opcodes_and_snack() -> Result<(), ConnError> {
    let mut h = Harness::new(None);
    h.full_login(&[])?;
    for req in [Request::Unknown { opcode: 0x1c }, Request::Snack { itt: 1 }] {
        let out = h.send(&req)?;
        assert_eq!(out.len(), 1);
        // The rejected PDU's header comes back (the decoder checks its length).
        assert_eq!(out[0].opcode(), op::REJECT);
    }
    // Oversized data segment: the connection is dropped.
    let mut buf = BytesMut::new();
    let mut bhs = [0u8; BHS_LEN];
    bhs[0] = op::NOP_OUT;
    bhs[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    buf.extend_from_slice(&bhs);
    // The cause stays typed, and the log line's text is unchanged.
    let err = h.send_bytes(buf).err();
    assert!(matches!(
        err,
        Some(ConnError::Protocol(PduError::SegmentTooLong { .. }))
    ));
    assert_eq!(
        err.map(|e| e.to_string()).as_deref(),
        Some("protocol error: data segment of 16777215 bytes exceeds the limit of 65536")
    );
    Ok(())
}

#[test]
fn nop_ping_and_idle_timeout() -> Result<(), ConnError> {
    let mut h = Harness::new(None);
    h.full_login(&[])?;
    let out = h.send(&Request::NopOut(NopOutPdu {
        immediate: true,
        lun: 0,
        itt: 9,
        ttt: RESERVED_TAG,
        cmd_sn: h.cmd_sn,
        exp_stat_sn: 0,
        data: Bytes::from_static(b"hello"),
    }))?;
    assert!(matches!(&out[0], Response::NopIn { data, .. } if &data[..] == b"hello"));
    let t = h.conn.poll_timeout().unwrap_or(h.now);
    assert_eq!(t, h.now + Duration::from_secs(5));
    h.conn.handle_timeout(t)?;
    let ping = h.drain();
    assert_eq!(ping[0].opcode(), op::NOP_IN);
    assert_eq!(ping[0].itt(), RESERVED_TAG);
    assert!(h
        .conn
        .handle_timeout(h.now + Duration::from_secs(31))
        .is_err());
    Ok(())
}

#[test]
fn discovery_and_logout() -> Result<(), ConnError> {
    let mut h = Harness::new(None);
    let r = h.login(
        1,
        3,
        true,
        &[("InitiatorName", "iqn.i"), ("SessionType", "Discovery")],
    )?;
    assert_eq!(login_status(&r), (0, 0));
    let out = h.send(&Request::Text(TextPdu {
        immediate: true,
        final_: true,
        cont: false,
        itt: 3,
        ttt: RESERVED_TAG,
        cmd_sn: 1,
        exp_stat_sn: 0,
        data: Bytes::from_static(b"SendTargets=All\0"),
    }))?;
    let k = keys(&out[0]);
    assert_eq!(k.get("TargetName"), Some("iqn.t"));
    assert_eq!(k.get("TargetAddress"), Some("192.0.2.1:3260,1"));
    let out = h.send(&Request::Logout(LogoutPdu {
        immediate: true,
        reason: 0,
        itt: 4,
        cid: 0,
        cmd_sn: 1,
        exp_stat_sn: 0,
    }))?;
    assert_eq!(out[0].opcode(), op::LOGOUT_RESPONSE);
    assert!(h.conn.is_closed());
    Ok(())
}

#[test]
fn hostile_streams_never_panic() {
    use proptest::prelude::*;
    let mut runner = proptest::test_runner::TestRunner::default();
    let strat = proptest::collection::vec(any::<u8>(), 0..2000);
    let res = runner.run(&strat, |bytes| {
        let mut h = Harness::new(None);
        let _ = h.full_login(&[]);
        let mut buf = BytesMut::from(&bytes[..]);
        let _ = h.conn.handle_input(&mut buf, &h.dir, h.now);
        let _ = h.drain();
        Ok(())
    });
    assert!(res.is_ok(), "{res:?}");
}

mod data;
mod flow;
mod initiator;
mod login;
