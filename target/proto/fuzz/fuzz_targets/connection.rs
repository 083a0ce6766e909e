//! A whole connection fed hostile bytes: login, then anything.
#![no_main]

use bytes::BytesMut;
use iscsi_proto::conn::{Authorization, ConnConfig, Connection, DiscoveredTarget, TargetDirectory};
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};

struct Open;

impl TargetDirectory for Open {
    fn authorize(&self, _i: &str, t: Option<&str>) -> Authorization {
        // Names starting with 'm' are served elsewhere, with 'u' about to be
        // served here: the redirect and come-back paths get hostile input too.
        match t {
            Some(name) if name.starts_with('m') => Authorization::Moved(([192, 0, 2, 7], 3261).into()),
            Some(name) if name.starts_with('u') => Authorization::Unavailable,
            _ => Authorization::Allowed(None),
        }
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

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mut conn = Connection::new(
        ConnConfig {
            tsih: 1,
            portal_group_tag: 1,
            max_recv_data_segment: 65536,
            max_outstanding_r2t: 4,
            max_burst: 262_144,
            first_burst: 65536,
            cmd_window: 32,
            max_transfer: 1 << 20,
            r2t_budget: 32 << 20,
            max_backlog: 1 << 20,
            login_timeout: Duration::from_secs(5),
            nop_interval: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            target_alias: None,
        },
        now,
    );
    // Feed in small chunks so partial PDUs are exercised too; what one
    // chunk leaves unconsumed stays in the buffer for the next (a fresh
    // buffer per chunk never got past a PDU longer than a chunk).
    let mut buf = BytesMut::new();
    for chunk in data.chunks(61) {
        buf.extend_from_slice(chunk);
        if conn.handle_input(&mut buf, &Open, now).is_err() {
            break;
        }
        while let Some(ev) = conn.poll_event() {
            if let iscsi_proto::conn::Event::Command(c) = ev {
                conn.complete_command(
                    c.itt,
                    iscsi_proto::scsi::sense::Sense::INVALID_OPCODE.into_result(),
                );
            }
        }
        let _ = conn.poll_transmit();
    }
});
