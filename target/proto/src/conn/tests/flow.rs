//! Flow control: the CmdSN window, backpressure on unread replies, and the
//! bounded holding of commands ahead of ExpCmdSN.

use super::*;

fn nop(immediate: bool, itt: u32, cmd_sn: u32, len: usize) -> Request {
    Request::NopOut(NopOutPdu {
        immediate,
        lun: 0,
        itt,
        ttt: RESERVED_TAG,
        cmd_sn,
        exp_stat_sn: 0,
        data: Bytes::from(vec![7u8; len]),
    })
}

fn commands(h: &mut Harness) -> Vec<u32> {
    std::iter::from_fn(|| h.conn.poll_event())
        .filter_map(|e| match e {
            Event::Command(c) => Some(c.itt),
            _ => None,
        })
        .collect()
}

#[test]
fn in_order_commands_past_max_cmd_sn_are_dropped() -> Result<(), ConnError> {
    let mut h = Harness::new(None);
    let r = h.full_login(&[])?;
    // Window 16: MaxCmdSN = ExpCmdSN + 15.
    assert_eq!(r.seq().max_cmd_sn.wrapping_sub(r.seq().exp_cmd_sn), 15);
    h.conn.poll_event();
    // An initiator that never reads blindly sends 40 commands in order.
    for itt in 1..=40 {
        h.scsi(itt, &[0x00], false, false, 0, Bytes::new(), true)?;
    }
    assert_eq!(commands(&mut h), (1..=16).collect::<Vec<_>>());
    // Completing one reopens the window by one; the next command in
    // sequence (CmdSN 17) is taken, the ones sent past it before were lost.
    h.conn.complete_command(1, good(&[], 0));
    let out = h.drain();
    assert_eq!(out.last().map(|p| p.seq().max_cmd_sn), Some(17), "MaxCmdSN");
    h.cmd_sn = 17;
    h.scsi(41, &[0x00], false, false, 0, Bytes::new(), true)?;
    assert_eq!(commands(&mut h), vec![41]);
    Ok(())
}

#[test]
fn unread_replies_stop_input_and_hold_the_window() -> Result<(), ConnError> {
    let cap = 64 << 10;
    let mut h = Harness::with_config(
        None,
        ConnConfig {
            max_backlog: cap,
            ..config()
        },
    );
    h.full_login(&[("MaxRecvDataSegmentLength", "65536")])?;
    h.conn.poll_event();
    // 200 immediate NOP-Outs of 16 KiB in one go (3.2 MiB of echoes asked).
    let mut input = BytesMut::new();
    for i in 0..200 {
        nop(true, 100 + i, h.cmd_sn, 16 << 10).encode(&mut input, Digests::default());
    }
    let total = input.len();
    // The driver never gets anything onto the wire.
    let mut unsent = 0usize;
    h.conn.handle_input(&mut input, &h.dir, h.now)?;
    unsent += h.conn.poll_transmit().map_or(0, |b| b.len());
    h.conn.set_unsent(unsent, usize::MAX);
    assert!(!h.conn.wants_input(), "over the cap: no more input");
    assert!(unsent <= cap + (16 << 10) + 2 * BHS_LEN, "{unsent} queued");
    let left = input.len();
    assert!(left > total / 2, "input taken in: {}", total - left);
    // Nothing more is taken while the backlog stands.
    h.conn.handle_input(&mut input, &h.dir, h.now)?;
    assert_eq!(input.len(), left);

    // A reply sent while earlier ones are unsent keeps MaxCmdSN where it
    // was, although its command has left the window.
    let before = h.conn.max_cmd_sn;
    h.conn.set_unsent(0, usize::MAX);
    h.drain();
    h.scsi(1, &[0x00], false, false, 0, Bytes::new(), true)?;
    assert_eq!(commands(&mut h), vec![1]);
    h.conn.set_unsent(cap + 1, usize::MAX);
    h.conn.complete_command(1, good(&[], 0));
    let reply = h.conn.poll_transmit().map_or(0, |b| b.len());
    h.conn.set_unsent(cap + 1 + reply, usize::MAX);
    assert_eq!(h.conn.max_cmd_sn, before, "window held shut");
    let held = h.conn.max_cmd_sn;
    assert!(h.conn.waits_for_drain());
    // Once it is read, a NOP-In (no answer wanted) reopens the window.
    h.conn.set_unsent(0, usize::MAX);
    let out = h.drain();
    assert_eq!(out.len(), 1);
    let Response::NopIn { itt, ttt, seq, .. } = &out[0] else {
        panic!("expected a NOP-In, got {:?}", out[0]);
    };
    assert_eq!((*itt, *ttt), (RESERVED_TAG, RESERVED_TAG));
    assert_eq!(seq.max_cmd_sn, held.wrapping_add(1), "MaxCmdSN grew");
    assert!(h.conn.wants_input() && !h.conn.waits_for_drain());
    Ok(())
}

#[test]
fn the_servers_total_lowers_the_cap() -> Result<(), ConnError> {
    let mut h = Harness::new(None);
    h.full_login(&[])?;
    h.conn.poll_event();
    h.conn.set_unsent(100, 0);
    assert!(!h.conn.wants_input());
    h.conn.set_unsent(0, 0);
    assert!(h.conn.wants_input());
    Ok(())
}

#[test]
fn discovery_sessions_hold_nothing_ahead() -> Result<(), ConnError> {
    let mut h = Harness::new(None);
    let r = h.login(
        1,
        3,
        true,
        &[("InitiatorName", "iqn.i"), ("SessionType", "Discovery")],
    )?;
    assert_eq!(login_status(&r), (0, 0));
    for i in 0..8 {
        h.send(&nop(false, 10 + i, h.cmd_sn + 1 + i, 8192))?;
    }
    assert!(h.conn.ahead.is_empty());
    Ok(())
}

#[test]
fn commands_ahead_are_held_within_a_byte_budget() -> Result<(), ConnError> {
    let mut h = Harness::with_config(
        None,
        ConnConfig {
            cmd_window: 128,
            ..config()
        },
    );
    h.full_login(&[])?;
    h.conn.poll_event();
    // 127 NOP-Outs of 64 KiB each ahead of a gap at ExpCmdSN: 8 MiB asked.
    for i in 0..127 {
        h.send(&nop(false, 10 + i, h.cmd_sn + 1 + i, 65536))?;
    }
    let held: usize = h.conn.ahead.values().map(|(r, _)| r.data.len()).sum();
    assert!(held <= 1 << 20, "{held} bytes held");
    assert!(!h.conn.ahead.is_empty(), "some are still held");
    // Filling the gap runs those held, in order.
    h.send(&nop(false, 9, h.cmd_sn, 0))?;
    assert!(h.conn.ahead.is_empty());
    Ok(())
}

#[test]
fn immediate_commands_are_bounded_by_the_window() -> Result<(), ConnError> {
    let mut h = Harness::new(None);
    h.full_login(&[])?;
    h.conn.poll_event();
    let mut rejects = 0;
    for itt in 1..=40u32 {
        let out = h.send(&Request::ScsiCommand(ScsiCommandPdu {
            immediate: true,
            final_: true,
            read: true,
            write: false,
            attr: 1,
            lun: 0,
            itt,
            expected_len: 512,
            cmd_sn: h.cmd_sn,
            exp_stat_sn: 0,
            cdb: Bytes::from(vec![0x28; 16]),
            data: Bytes::new(),
        }))?;
        rejects += out.iter().filter(|p| p.opcode() == op::REJECT).count();
    }
    assert_eq!(commands(&mut h).len(), 16);
    assert_eq!(rejects, 24);
    Ok(())
}
