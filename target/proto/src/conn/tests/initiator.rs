//! The sans-IO initiator against the target's connection, byte for byte:
//! CHAP (one-way and mutual) login, a read, a write answered through R2Ts,
//! a target ping, logout; and a target that proves the wrong secret.

use super::login::creds;
use super::*;
use crate::initiator::InitiatorError;

/// Moves bytes both ways until neither side has anything to send; runs
/// commands against `disk`. Returns what the initiator reported.
fn pump(h: &mut Harness, disk: &mut [u8]) -> Result<Vec<InitiatorEvent>, InitiatorError> {
    let mut events = Vec::new();
    for _ in 0..64 {
        let mut moved = false;
        if let Some(mut tx) = h.ini.poll_transmit() {
            moved = true;
            // A refused login ends the connection; the initiator still
            // gets the answer below.
            let _ = h.conn.handle_input(&mut tx, &h.dir, h.now);
        }
        while let Some(ev) = h.conn.poll_event() {
            if let Event::Command(cmd) = ev {
                let lba = usize::from(cmd.cdb[5]) * 512;
                let len = usize::from(cmd.cdb[8]) * 512;
                if cmd.cdb[0] == 0x2a {
                    disk[lba..lba + len].copy_from_slice(&cmd.data_out);
                    h.conn.complete_command(cmd.itt, good(&[], len as u32));
                } else {
                    let data = disk[lba..lba + len].to_vec();
                    h.conn.complete_command(cmd.itt, good(&data, len as u32));
                }
            }
        }
        if let Some(mut rx) = h.conn.poll_transmit() {
            moved = true;
            h.ini.set_digests(h.conn.digests);
            h.ini.handle_input(&mut rx)?;
        }
        events.extend(std::iter::from_fn(|| h.ini.poll_event()));
        if !moved {
            break;
        }
    }
    Ok(events)
}

fn chap_config(mutual_secret: Option<&[u8]>) -> InitiatorConfig {
    InitiatorConfig {
        mutual_chap: mutual_secret.map(|s| ("target".to_string(), s.to_vec())),
        offer: vec![
            ("ImmediateData".into(), "No".into()),
            ("MaxRecvDataSegmentLength".into(), "1024".into()),
            ("MaxBurstLength".into(), "1024".into()),
        ],
        ..InitiatorConfig::chap("iqn.i", "iqn.t", "alice", b"secretsecret")
    }
}

#[test]
fn initiator_logs_in_with_mutual_chap_reads_writes_and_logs_out(
) -> Result<(), Box<dyn std::error::Error>> {
    let mut disk = vec![0u8; 64 * 512];
    for mutual in [None, Some(&b"targetsecret"[..])] {
        let mut h = Harness::new(Some(creds(mutual.is_some())));
        h.ini = Initiator::new(chap_config(mutual));
        h.ini.login();
        let ev = pump(&mut h, &mut disk)?;
        assert!(
            matches!(&ev[..], [InitiatorEvent::LoggedIn { tsih: 5, keys }]
                if keys.get("ImmediateData") == Some("No")),
            "{ev:?}"
        );
        // 3 KiB write in 1 KiB bursts: three R2Ts answered from the data.
        let data: Vec<u8> = (0..3072u32).map(|i| (i % 251) as u8).collect();
        let w = h.ini.command(
            &[0x2a, 0, 0, 0, 0, 4, 0, 0, 6, 0],
            0,
            Bytes::from(data.clone()),
        )?;
        let ev = pump(&mut h, &mut disk)?;
        assert!(
            matches!(&ev[..], [InitiatorEvent::CommandDone { itt, outcome }]
                if *itt == w && outcome.status == 0),
            "{ev:?}"
        );
        assert_eq!(&disk[2048..2048 + 3072], &data[..]);
        let r = h
            .ini
            .command(&[0x28, 0, 0, 0, 0, 4, 0, 0, 6, 0], 3072, Bytes::new())?;
        let ev = pump(&mut h, &mut disk)?;
        let [InitiatorEvent::CommandDone { itt, outcome }] = &ev[..] else {
            panic!("{ev:?}");
        };
        assert_eq!((*itt, outcome.status, outcome.data.len()), (r, 0, 3));
        assert_eq!(outcome.data_bytes(), data);
        // A target ping is answered (the target then sees the echo).
        h.conn.handle_timeout(h.now + Duration::from_secs(5))?;
        let ev = pump(&mut h, &mut disk)?;
        assert!(matches!(
            &ev[..],
            [InitiatorEvent::Pdu(Response::NopIn { .. })]
        ));
        let l = h.ini.logout();
        let ev = pump(&mut h, &mut disk)?;
        assert_eq!(
            ev,
            vec![InitiatorEvent::LoggedOut {
                itt: l,
                response: 0
            }]
        );
        assert!(h.conn.is_closed());
    }
    Ok(())
}

#[test]
fn initiator_refuses_a_target_with_the_wrong_mutual_secret() -> Result<(), InitiatorError> {
    let mut disk = vec![0u8; 512];
    let mut h = Harness::new(Some(creds(true)));
    h.ini = Initiator::new(chap_config(Some(b"not-the-target-secret")));
    h.ini.login();
    assert!(matches!(
        pump(&mut h, &mut disk),
        Err(InitiatorError::TargetNotAuthenticated)
    ));
    assert!(!h.ini.is_logged_in());
    // A wrong initiator secret: the target refuses, the initiator reports it.
    let mut h = Harness::new(Some(creds(false)));
    h.ini = Initiator::new(InitiatorConfig::chap(
        "iqn.i",
        "iqn.t",
        "alice",
        b"wrongwrongwr",
    ));
    h.ini.login();
    let ev = pump(&mut h, &mut disk)?;
    assert_eq!(
        ev,
        vec![InitiatorEvent::LoginFailed {
            class: 2,
            detail: 1
        }]
    );
    Ok(())
}
