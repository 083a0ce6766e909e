//! The byte encoding of persistent reservation state, kept in a file so
//! that reservations with APTPL survive a restart. The file is ours, but it
//! is read back after crashes and upgrades: decoding checks every length.

use super::{PrState, Registration, Reservation};

impl PrState {
    /// Encodes the state for persistence (only meaningful with APTPL).
    pub fn encode(&self) -> Vec<u8> {
        let mut d = b"BOOTDPR1".to_vec();
        d.extend_from_slice(&self.generation.to_be_bytes());
        d.push(u8::from(self.aptpl));
        match &self.reservation {
            Some(r) => {
                d.push(r.kind);
                put_str(&mut d, &r.holder.0);
                put_str(&mut d, &r.holder.1);
            }
            None => d.push(0),
        }
        d.extend_from_slice(&(self.regs.len() as u32).to_be_bytes());
        for r in &self.regs {
            d.extend_from_slice(&r.key.to_be_bytes());
            d.extend_from_slice(&r.relative_port.to_be_bytes());
            put_str(&mut d, &r.initiator_port);
            put_str(&mut d, &r.target_port);
        }
        d
    }

    /// Decodes [`PrState::encode`] output; `None` when malformed.
    pub fn decode(b: &[u8]) -> Option<Self> {
        let mut r = Reader(b);
        if r.take(8)? != b"BOOTDPR1" {
            return None;
        }
        let generation = u32::from_be_bytes(r.take(4)?.try_into().ok()?);
        let aptpl = r.take(1)?[0] != 0;
        let kind = r.take(1)?[0];
        let reservation = if kind == 0 {
            None
        } else {
            Some(Reservation {
                kind,
                holder: (r.string()?, r.string()?),
            })
        };
        let n = u32::from_be_bytes(r.take(4)?.try_into().ok()?);
        let mut regs = Vec::new();
        for _ in 0..n {
            let key = u64::from_be_bytes(r.take(8)?.try_into().ok()?);
            let relative_port = u16::from_be_bytes(r.take(2)?.try_into().ok()?);
            regs.push(Registration {
                key,
                relative_port,
                initiator_port: r.string()?,
                target_port: r.string()?,
            });
        }
        if !r.0.is_empty() {
            return None;
        }
        Some(Self {
            generation,
            regs,
            reservation,
            aptpl,
        })
    }
}

fn put_str(d: &mut Vec<u8>, s: &str) {
    d.extend_from_slice(&(s.len() as u32).to_be_bytes());
    d.extend_from_slice(s.as_bytes());
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }

    fn string(&mut self) -> Option<String> {
        let n = u32::from_be_bytes(self.take(4)?.try_into().ok()?) as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}
