//! A minimal blocking iSCSI initiator for persistent-reservation checks:
//! the protocol crate's sans-IO initiator on a std TCP stream, one command
//! at a time, with CHAP. Each ISID is an I_T nexus of its own, so one node
//! identity gives the two initiator ports a reservation test needs.
//! (sg_persist needs the kernel initiator; libiscsi has no PR tool.)

use crate::common::Result;
use bytes::{Bytes, BytesMut};
use iscsi_proto::initiator::{Event, Initiator, InitiatorConfig, Outcome};
use iscsi_proto::pdu::Response;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

pub const GOOD: u8 = 0x00;
pub const CHECK_CONDITION: u8 = 0x02;
pub const RESERVATION_CONFLICT: u8 = 0x18;
/// Write Exclusive.
pub const WE: u8 = 1;

pub struct Session {
    stream: TcpStream,
    buf: BytesMut,
    ini: Initiator,
}

impl Session {
    /// Logs in to the node at `portal` as the initiator port with `isid`
    /// and consumes the unit attentions a new nexus gets.
    pub fn login(portal: &str, node: &serde_json::Value, isid: u8) -> Result<Self> {
        let s = |k: &str| node[k].as_str().unwrap_or_default().to_string();
        let stream = TcpStream::connect(portal)?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        stream.set_nodelay(true)?;
        let config = InitiatorConfig {
            isid: [0x80, 0, 0, 0, 0x5e, isid],
            offer: [
                ("HeaderDigest", "None"),
                ("DataDigest", "None"),
                ("InitialR2T", "Yes"),
                ("ImmediateData", "Yes"),
                ("MaxConnections", "1"),
                ("ErrorRecoveryLevel", "0"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            ..InitiatorConfig::chap(
                &s("initiator_iqn"),
                &s("target_iqn"),
                &s("chap_user"),
                s("chap_secret").as_bytes(),
            )
        };
        let mut me = Self {
            stream,
            buf: BytesMut::with_capacity(1 << 20),
            ini: Initiator::new(config),
        };
        me.ini.login();
        match me.next_event()? {
            Event::LoggedIn { .. } => {}
            other => return Err(format!("login to {portal}: {other:?}").into()),
        }
        for _ in 0..5 {
            let o = me.command(&[0x00, 0, 0, 0, 0, 0], 0, &[])?;
            if o.status == GOOD {
                return Ok(me);
            }
        }
        Err("TEST UNIT READY: still not ready after 5 tries".into())
    }

    fn next_event(&mut self) -> Result<Event> {
        loop {
            if let Some(out) = self.ini.poll_transmit() {
                self.stream.write_all(&out)?;
            }
            if let Some(ev) = self.ini.poll_event() {
                return Ok(ev);
            }
            let mut chunk = vec![0u8; 65536];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err("target closed the connection".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
            self.ini.handle_input(&mut self.buf)?;
        }
    }

    pub fn command(&mut self, cdb: &[u8], read_len: u32, write: &[u8]) -> Result<Outcome> {
        let want = self
            .ini
            .command(cdb, read_len, Bytes::copy_from_slice(write))?;
        loop {
            match self.next_event()? {
                Event::CommandDone { itt, outcome } if itt == want => return Ok(outcome),
                Event::Pdu(Response::NopIn { .. }) => {}
                other => return Err(format!("unexpected {other:?}").into()),
            }
        }
    }

    /// PERSISTENT RESERVE OUT: service action `sa`, `kind`, reservation
    /// key and service action key; the SCSI status.
    pub fn prout(&mut self, sa: u8, kind: u8, key: u64, sa_key: u64) -> Result<u8> {
        let cdb = [0x5F, sa, kind, 0, 0, 0, 0, 0, 24, 0];
        let mut p = key.to_be_bytes().to_vec();
        p.extend_from_slice(&sa_key.to_be_bytes());
        p.extend_from_slice(&[0; 8]);
        Ok(self.command(&cdb, 0, &p)?.status)
    }

    pub fn register(&mut self, key: u64) -> Result<u8> {
        self.prout(0, 0, 0, key)
    }

    pub fn reserve(&mut self, key: u64, kind: u8) -> Result<u8> {
        self.prout(1, kind, key, 0)
    }

    fn prin(&mut self, sa: u8) -> Result<Vec<u8>> {
        let o = self.command(&[0x5E, sa, 0, 0, 0, 0, 0, 0x10, 0, 0], 4096, &[])?;
        if o.status != GOOD {
            return Err(format!("PERSISTENT RESERVE IN {sa}: status 0x{:02x}", o.status).into());
        }
        Ok(o.data_bytes())
    }

    /// READ KEYS: PRgeneration and the registered keys.
    pub fn read_keys(&mut self) -> Result<(u32, Vec<u64>)> {
        let d = self.prin(0)?;
        let be = |b: &[u8]| b.iter().fold(0u64, |a, x| (a << 8) | u64::from(*x));
        if d.len() < 8 {
            return Err(format!("READ KEYS: {} bytes", d.len()).into());
        }
        let len = be(&d[4..8]) as usize;
        let keys = d[8..(8 + len).min(d.len())].chunks(8).map(be).collect();
        Ok((be(&d[0..4]) as u32, keys))
    }

    /// READ RESERVATION: the holder's key and the type, if one is held.
    pub fn read_reservation(&mut self) -> Result<Option<(u64, u8)>> {
        let d = self.prin(1)?;
        if d.len() < 8 || d[7] == 0 {
            return Ok(None);
        }
        if d.len() < 22 {
            return Err(format!("READ RESERVATION: {} bytes", d.len()).into());
        }
        let key = d[8..16].iter().fold(0u64, |a, x| (a << 8) | u64::from(*x));
        Ok(Some((key, d[21] & 0x0F)))
    }

    /// WRITE (10) of one 512-byte block at `lba`; the SCSI status.
    pub fn write_block(&mut self, lba: u32, byte: u8) -> Result<u8> {
        let mut cdb = [0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        cdb[2..6].copy_from_slice(&lba.to_be_bytes());
        Ok(self.command(&cdb, 0, &[byte; 512])?.status)
    }
}
