//! The data phase and task management: Data-Out out of sequence, aborts
//! after completion, and the R2T budget.

use super::*;

#[test]
fn data_out_out_of_sequence_fails_the_command_not_the_session() -> Result<(), ConnError> {
    let mut h = Harness::new(None);
    h.full_login(&[("ImmediateData", "No"), ("InitialR2T", "Yes")])?;
    h.conn.poll_event();
    let r2t = h.scsi(
        0x40,
        &[0x2A, 0, 0, 0, 0, 0, 0, 0, 2, 0],
        false,
        true,
        1024,
        Bytes::new(),
        true,
    )?;
    let ttt = r2t[0].ttt();
    let data_out = |sn: u32, offset: u32, final_: bool| {
        Request::DataOut(DataOutPdu {
            final_,
            lun: 0,
            itt: 0x40,
            ttt,
            exp_stat_sn: 0,
            data_sn: sn,
            buffer_offset: offset,
            data: Bytes::from(vec![0u8; 512]),
        })
    };
    assert!(h.send(&data_out(0, 0, false))?.is_empty());
    // DataSN 27 where 1 is due: CHECK CONDITION, ABORTED COMMAND 4B/00.
    let out = h.send(&data_out(27, 512, true))?;
    assert_eq!(out.len(), 1);
    let Response::ScsiResponse {
        status,
        sense: Some(sense),
        ..
    } = &out[0]
    else {
        panic!("expected a SCSI response with sense, got {:?}", out[0]);
    };
    assert_eq!(*status, ScsiStatus::CHECK_CONDITION.0);
    assert_eq!((sense[2] & 0x0f, sense[12]), (0x0b, 0x4b));
    // Late Data-Out for that task is dropped quietly; the session goes on.
    assert!(h.send(&data_out(2, 1024, true))?.is_empty());
    h.scsi(0x41, &[0x00], false, false, 0, Bytes::new(), true)?;
    assert!(matches!(h.conn.poll_event(), Some(Event::Command(c)) if c.itt == 0x41));
    Ok(())
}

#[test]
fn abort_task_after_completion_reports_task_does_not_exist() -> Result<(), ConnError> {
    let mut h = Harness::new(None);
    h.full_login(&[])?;
    h.conn.poll_event();
    h.scsi(0x50, &[0x00], false, false, 0, Bytes::new(), true)?;
    h.conn.poll_event();
    h.conn.complete_command(0x50, good(&[], 0));
    h.drain();
    let tmf = |h: &mut Harness, referenced_itt: u32, ref_cmd_sn: u32| {
        h.send(&Request::TaskMgmt(TaskMgmtPdu {
            immediate: true,
            function: 1,
            lun: 0,
            itt: 0x51,
            referenced_itt,
            cmd_sn: h.cmd_sn,
            exp_stat_sn: 0,
            ref_cmd_sn,
        }))
    };
    // CmdSN 1 was received and completed: outside the window now (case c).
    let out = tmf(&mut h, 0x50, 1)?;
    assert_eq!(tmf_response(&out[0]), 1);
    // A running task is aborted and its completion is never sent.
    h.scsi(0x52, &[0x00], false, false, 0, Bytes::new(), true)?;
    h.conn.poll_event();
    let out = tmf(&mut h, 0x52, 2)?;
    assert_eq!(tmf_response(&out[0]), 0, "function complete");
    h.conn.complete_command(0x52, good(&[], 0));
    assert!(h.drain().is_empty());
    Ok(())
}

#[test]
fn r2t_budget_bounds_solicited_data() -> Result<(), ConnError> {
    // Budget for two 1 KiB bursts: a third write waits for its R2T.
    let mut h = Harness::with_config(
        None,
        ConnConfig {
            r2t_budget: 2048,
            ..config()
        },
    );
    h.full_login(&[
        ("ImmediateData", "No"),
        ("InitialR2T", "Yes"),
        ("MaxBurstLength", "1024"),
    ])?;
    h.conn.poll_event();
    let mut ttts = Vec::new();
    for itt in 1..=3u32 {
        let out = h.scsi(
            itt,
            &[0x2A, 0, 0, 0, 0, 0, 0, 0, 2, 0],
            false,
            true,
            1024,
            Bytes::new(),
            true,
        )?;
        ttts.push(
            out.first()
                .filter(|p| p.opcode() == op::R2T)
                .map(|p| p.ttt()),
        );
    }
    assert!(ttts[0].is_some() && ttts[1].is_some());
    assert_eq!(ttts[2], None, "over budget: no R2T yet");
    // Data for the first write frees budget: the third gets its R2T.
    let out = h.send(&Request::DataOut(DataOutPdu {
        final_: true,
        lun: 0,
        itt: 1,
        ttt: ttts[0].unwrap_or_default(),
        exp_stat_sn: 0,
        data_sn: 0,
        buffer_offset: 0,
        data: Bytes::from(vec![1u8; 1024]),
    }))?;
    assert!(out.iter().any(|p| p.opcode() == op::R2T && p.itt() == 3));
    assert!(matches!(h.conn.poll_event(), Some(Event::Command(c)) if c.itt == 1));
    Ok(())
}
