//! One read transfer as a state machine: fed the client's datagrams and the
//! clock, it returns the datagrams to send and when it next wants to be
//! woken. No sockets, no files: the driver moves bytes.
//!
//! Options (RFC 2347): blksize (RFC 2348), tsize and timeout (RFC 2349),
//! windowsize (RFC 7440). Block numbers roll over from 65535 to 0, as
//! tftpd-hpa, curl and iPXE expect for files beyond 65535 blocks.

use crate::packet::{self, ErrorCode, Packet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// RFC 1350's block size when no option is negotiated.
pub const DEFAULT_BLKSIZE: usize = 512;

/// Server-side limits for negotiation and retransmission.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest block offered: 1468 fits a 1500-byte Ethernet MTU
    /// (1500 - 20 IP - 8 UDP - 4 TFTP) so no block is ever fragmented.
    pub max_blksize: usize,
    /// Largest window granted (RFC 7440).
    pub max_window: u16,
    /// Timeout before the first retransmission unless the client asks for one.
    pub timeout: Duration,
    /// Retransmissions of one window before the transfer is abandoned.
    pub max_retries: u32,
    /// Longest retransmission timeout a client may ask for (RFC 2349); a
    /// larger request is not acknowledged and the default applies. A
    /// client asking for 255 s would otherwise hold a transfer slot for
    /// many minutes without answering.
    pub max_client_timeout: Duration,
    /// A transfer ends after this long, however it is going: an iPXE
    /// binary takes well under a second on a LAN.
    pub lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_blksize: 1468,
            max_window: 64,
            timeout: Duration::from_secs(1),
            max_retries: 5,
            max_client_timeout: Duration::from_secs(5),
            lifetime: Duration::from_secs(120),
        }
    }
}

/// Retransmissions of the first answer (OACK or first window) while the
/// client has not said anything since its request: the request's source
/// may be forged, and every resend would go to a victim who never asked.
const UNHEARD_RETRIES: u32 = 1;

/// How a transfer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every block acknowledged.
    Complete,
    /// The client sent an ERROR (for instance after a tsize probe).
    ClientAborted(u16, String),
    /// Retries exhausted, or the transfer's lifetime is over.
    TimedOut,
    /// The client broke the protocol; an ERROR was sent.
    Protocol,
}

pub struct Transfer {
    file: Arc<[u8]>,
    blksize: usize,
    window: u64,
    timeout: Duration,
    max_retries: u32,
    /// Options acknowledged; while `Some` and unacked, the OACK is what gets
    /// retransmitted.
    oack: Option<Vec<u8>>,
    /// Blocks the client has acknowledged (absolute, from 1).
    acked: u64,
    /// Highest block sent so far (absolute).
    sent: u64,
    /// Blocks in the file, counting the final short (possibly empty) one.
    total: u64,
    retries: u32,
    deadline: Instant,
    /// When the transfer is abandoned whatever its state.
    ends: Instant,
    /// Whether the client has answered at all (a valid ACK).
    heard: bool,
    outcome: Option<Outcome>,
}

impl Transfer {
    /// Starts a read of `file` for a request with `options`; returns the
    /// transfer and the first datagrams (an OACK, or the first window).
    pub fn start(
        options: &[(String, String)],
        file: Arc<[u8]>,
        limits: &Limits,
        now: Instant,
    ) -> (Self, Vec<Vec<u8>>) {
        let mut blksize = DEFAULT_BLKSIZE;
        let mut window = 1u64;
        let mut timeout = limits.timeout;
        let mut accepted: Vec<(String, String)> = Vec::new();
        for (name, value) in options {
            // The first occurrence of an option wins; invalid values are
            // ignored (the option is then simply not acknowledged).
            if accepted.iter().any(|(n, _)| n == name) {
                continue;
            }
            match name.as_str() {
                "blksize" => {
                    if let Ok(v) = value.parse::<u32>() {
                        if (8..=65464).contains(&v) {
                            blksize = (v as usize).min(limits.max_blksize);
                            accepted.push((name.clone(), blksize.to_string()));
                        }
                    }
                }
                "tsize" => accepted.push((name.clone(), file.len().to_string())),
                "timeout" => {
                    if let Ok(v) = value.parse::<u8>() {
                        if v >= 1 && Duration::from_secs(v.into()) <= limits.max_client_timeout {
                            timeout = Duration::from_secs(v.into());
                            accepted.push((name.clone(), v.to_string()));
                        }
                    }
                }
                "windowsize" => {
                    if let Ok(v) = value.parse::<u16>() {
                        if v >= 1 {
                            let w = v.min(limits.max_window.max(1));
                            window = w.into();
                            accepted.push((name.clone(), w.to_string()));
                        }
                    }
                }
                _ => {}
            }
        }
        let total = (file.len() / blksize) as u64 + 1;
        let mut t = Self {
            file,
            blksize,
            window,
            timeout,
            max_retries: limits.max_retries,
            oack: None,
            acked: 0,
            sent: 0,
            total,
            retries: 0,
            deadline: now + timeout,
            ends: now + limits.lifetime,
            heard: false,
            outcome: None,
        };
        let out = if accepted.is_empty() {
            t.send_window(now)
        } else {
            let mut oack = Vec::new();
            packet::encode_oack(&mut oack, &accepted);
            t.oack = Some(oack.clone());
            vec![oack]
        };
        (t, out)
    }

    pub fn blksize(&self) -> usize {
        self.blksize
    }

    pub fn window(&self) -> u64 {
        self.window
    }

    /// `Some` once the transfer is over; the driver then drops it.
    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    /// When [`Transfer::on_timeout`] is due.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// A datagram from the client's TID.
    pub fn on_datagram(&mut self, buf: &[u8], now: Instant) -> Vec<Vec<u8>> {
        if self.outcome.is_some() {
            return Vec::new();
        }
        match Packet::decode(buf) {
            // Noise is ignored: the retransmission timer covers real loss.
            Err(_) => Vec::new(),
            Ok(Packet::Ack(n)) => self.on_ack(n, now),
            Ok(Packet::Error { code, message }) => {
                self.outcome = Some(Outcome::ClientAborted(code, message));
                Vec::new()
            }
            Ok(_) => {
                self.outcome = Some(Outcome::Protocol);
                vec![packet::error(
                    ErrorCode::IllegalOperation,
                    "only ACK or ERROR expected",
                )]
            }
        }
    }

    fn on_ack(&mut self, n: u16, now: Instant) -> Vec<Vec<u8>> {
        // The absolute block this ACK names: one in acked..=sent whose low
        // 16 bits match. Anything else is stale or bogus and ignored, which
        // also avoids the Sorcerer's Apprentice bug (no resend on duplicates).
        let lo = self.acked;
        let Some(abs) = (lo..=self.sent)
            .rev()
            .find(|&b| b as u16 == n)
            .filter(|&b| b > lo || (b == 0 && self.oack.is_some() && self.sent == 0))
        else {
            return Vec::new();
        };
        self.oack = None;
        self.acked = abs;
        self.retries = 0;
        self.heard = true;
        if self.acked >= self.total {
            self.outcome = Some(Outcome::Complete);
            return Vec::new();
        }
        // RFC 7440: an ACK inside the window means the client lost what
        // followed it; resume from the block after it either way.
        self.sent = self.acked;
        self.send_window(now)
    }

    /// The deadline passed: retransmit with backoff, or give up.
    pub fn on_timeout(&mut self, now: Instant) -> Vec<Vec<u8>> {
        if self.outcome.is_some() || now < self.deadline {
            return Vec::new();
        }
        if !self.heard && self.retries >= UNHEARD_RETRIES {
            // Nothing from the client since its request: end quietly, no
            // ERROR either (the source may be a forged victim).
            self.outcome = Some(Outcome::TimedOut);
            return Vec::new();
        }
        if self.retries >= self.max_retries || now >= self.ends {
            self.outcome = Some(Outcome::TimedOut);
            return vec![packet::error(ErrorCode::NotDefined, "timed out")];
        }
        self.retries += 1;
        if let Some(oack) = &self.oack {
            let out = vec![oack.clone()];
            self.arm(now);
            return out;
        }
        self.sent = self.acked;
        self.send_window(now)
    }

    /// Doubling backoff from the negotiated timeout, capped at 8 times it
    /// and at the transfer's end.
    fn arm(&mut self, now: Instant) {
        self.deadline = (now + self.timeout * (1u32 << self.retries.min(3))).min(self.ends);
    }

    fn send_window(&mut self, now: Instant) -> Vec<Vec<u8>> {
        let last = (self.acked + self.window).min(self.total);
        let mut out = Vec::with_capacity((last - self.sent) as usize);
        while self.sent < last {
            self.sent += 1;
            let start = ((self.sent - 1) as usize).saturating_mul(self.blksize);
            let start = start.min(self.file.len());
            let end = (start + self.blksize).min(self.file.len());
            let mut d = Vec::new();
            packet::encode_data(&mut d, self.sent as u16, &self.file[start..end]);
            out.push(d);
        }
        self.arm(now);
        out
    }
}

#[cfg(test)]
mod tests;
