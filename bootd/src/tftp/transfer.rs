//! One read transfer as a state machine: fed the client's datagrams and the
//! clock, it returns the datagrams to send and when it next wants to be
//! woken. No sockets, no files: the driver moves bytes.
//!
//! Options (RFC 2347): blksize (RFC 2348), tsize and timeout (RFC 2349),
//! windowsize (RFC 7440). Block numbers roll over from 65535 to 0, as
//! tftpd-hpa, curl and iPXE expect for files beyond 65535 blocks.

use super::packet::{self, ErrorCode, Packet};
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
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn opts(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn file(n: usize) -> Arc<[u8]> {
        (0..n)
            .map(|i| (i * 7 % 251) as u8)
            .collect::<Vec<_>>()
            .into()
    }

    fn ack(n: u16) -> Vec<u8> {
        let mut v = Vec::new();
        packet::encode_ack(&mut v, n);
        v
    }

    /// (block, payload) of a DATA datagram.
    fn data(buf: &[u8]) -> (u16, Vec<u8>) {
        match Packet::decode(buf) {
            Ok(Packet::Data { block, data }) => (block, data.to_vec()),
            other => panic!("expected DATA, got {other:?}"),
        }
    }

    /// Runs a lossless client to the end; returns what it received.
    fn drain(t: &mut Transfer, mut pending: Vec<Vec<u8>>, now: Instant) -> Vec<u8> {
        let mut got = Vec::new();
        let mut rounds = 0;
        while t.outcome().is_none() {
            rounds += 1;
            assert!(rounds < 1_000_000, "no progress");
            let mut last = None;
            for d in &pending {
                let (b, p) = data(d);
                got.extend_from_slice(&p);
                last = Some(b);
            }
            let b = last.expect("something to acknowledge");
            pending = t.on_datagram(&ack(b), now);
        }
        got
    }

    #[test]
    fn plain_rfc1350_read() {
        let now = Instant::now();
        let f = file(1300);
        let (mut t, out) = Transfer::start(&[], f.clone(), &Limits::default(), now);
        assert_eq!(out.len(), 1);
        assert_eq!(data(&out[0]), (1, f[..512].to_vec()));
        assert_eq!(drain(&mut t, out, now), f.to_vec());
        assert_eq!(t.outcome(), Some(&Outcome::Complete));
    }

    #[test]
    fn exact_multiple_ends_with_an_empty_block() {
        let now = Instant::now();
        let (mut t, _) = Transfer::start(&[], file(1024), &Limits::default(), now);
        let out = t.on_datagram(&ack(1), now);
        assert_eq!(data(&out[0]).0, 2);
        let out = t.on_datagram(&ack(2), now);
        assert_eq!(data(&out[0]), (3, vec![]));
        assert!(t.on_datagram(&ack(3), now).is_empty());
        assert_eq!(t.outcome(), Some(&Outcome::Complete));
    }

    #[test]
    fn options_are_negotiated_and_capped() {
        let now = Instant::now();
        let f = file(5000);
        let (t, out) = Transfer::start(
            &opts(&[
                ("blksize", "9000"),
                ("tsize", "0"),
                ("timeout", "3"),
                ("windowsize", "1000"),
                ("bogus", "1"),
            ]),
            f,
            &Limits::default(),
            now,
        );
        assert_eq!(
            Packet::decode(&out[0]),
            Ok(Packet::Oack(opts(&[
                ("blksize", "1468"),
                ("tsize", "5000"),
                ("timeout", "3"),
                ("windowsize", "64"),
            ])))
        );
        assert_eq!(t.blksize(), 1468);
        assert_eq!(t.deadline(), now + Duration::from_secs(3));
    }

    #[test]
    fn invalid_option_values_are_not_acknowledged() {
        let now = Instant::now();
        let (t, out) = Transfer::start(
            &opts(&[("blksize", "7"), ("timeout", "0"), ("windowsize", "x")]),
            file(10),
            &Limits::default(),
            now,
        );
        // Nothing accepted: plain DATA at 512 bytes, no OACK.
        assert_eq!(data(&out[0]).0, 1);
        assert_eq!(t.blksize(), 512);
    }

    #[test]
    fn window_of_n_and_resume_after_a_gap() {
        let now = Instant::now();
        let f = file(100 * 10 + 5);
        let (mut t, out) = Transfer::start(
            &opts(&[("blksize", "100"), ("windowsize", "4")]),
            f.clone(),
            &Limits::default(),
            now,
        );
        assert!(matches!(Packet::decode(&out[0]), Ok(Packet::Oack(_))));
        let out = t.on_datagram(&ack(0), now);
        let blocks: Vec<u16> = out.iter().map(|d| data(d).0).collect();
        assert_eq!(blocks, [1, 2, 3, 4]);
        // The client lost block 3: it acknowledges 2, we resume at 3.
        let out = t.on_datagram(&ack(2), now);
        let blocks: Vec<u16> = out.iter().map(|d| data(d).0).collect();
        assert_eq!(blocks, [3, 4, 5, 6]);
        // A stale duplicate ACK changes nothing.
        assert!(t.on_datagram(&ack(2), now).is_empty());
        let got = drain(&mut t, out, now);
        assert_eq!(got, f[200..].to_vec());
        assert_eq!(t.outcome(), Some(&Outcome::Complete));
    }

    #[test]
    fn retransmits_with_backoff_then_gives_up() {
        let t0 = Instant::now();
        let limits = Limits::default();
        let (mut t, out) = Transfer::start(&[], file(2000), &limits, t0);
        assert_eq!(data(&out[0]).0, 1);
        // The client answers once, then goes quiet.
        let out = t.on_datagram(&ack(1), t0);
        assert_eq!(data(&out[0]).0, 2);
        // Not due yet: nothing.
        assert!(t.on_timeout(t0 + Duration::from_millis(500)).is_empty());
        let mut now = t0 + limits.timeout;
        let mut gaps = Vec::new();
        for _ in 0..limits.max_retries {
            let out = t.on_timeout(now);
            assert_eq!(out.len(), 1);
            assert_eq!(data(&out[0]).0, 2);
            gaps.push(t.deadline() - now);
            now = t.deadline();
        }
        assert_eq!(gaps, [2, 4, 8, 8, 8].map(Duration::from_secs).to_vec());
        let out = t.on_timeout(now);
        assert!(matches!(
            Packet::decode(&out[0]),
            Ok(Packet::Error { code: 0, .. })
        ));
        assert_eq!(t.outcome(), Some(&Outcome::TimedOut));
    }

    /// An option-less request from a forged source: one block and one
    /// resend, then silence. Before, six blocks (and an ERROR) went to a
    /// victim that never asked.
    #[test]
    fn a_client_that_never_answers_gets_one_resend() {
        let t0 = Instant::now();
        let (mut t, first) = Transfer::start(&[], file(100_000), &Limits::default(), t0);
        let mut sent: usize = first.iter().map(Vec::len).sum();
        let mut now = t0;
        for _ in 0..100 {
            now = t.deadline().max(now + Duration::from_millis(1));
            sent += t.on_timeout(now).iter().map(Vec::len).sum::<usize>();
            if t.outcome().is_some() {
                break;
            }
        }
        assert_eq!(t.outcome(), Some(&Outcome::TimedOut));
        assert_eq!(sent, 2 * (4 + 512), "one block and one resend");
        // A windowed request: the OACK (small) twice, never a window.
        let o = opts(&[("windowsize", "64"), ("blksize", "1468")]);
        let (mut t, first) = Transfer::start(&o, file(1 << 20), &Limits::default(), t0);
        let mut sent: usize = first.iter().map(Vec::len).sum();
        for _ in 0..100 {
            sent += t
                .on_timeout(t.deadline())
                .iter()
                .map(Vec::len)
                .sum::<usize>();
            if t.outcome().is_some() {
                break;
            }
        }
        assert!(sent < 100, "{sent} bytes to a client that never answered");
    }

    #[test]
    fn long_timeouts_are_refused_and_transfers_end() {
        let t0 = Instant::now();
        let limits = Limits::default();
        let (t, out) = Transfer::start(&opts(&[("timeout", "255")]), file(10), &limits, t0);
        // Not acknowledged: plain DATA, the default timeout.
        assert_eq!(data(&out[0]).0, 1);
        assert_eq!(t.deadline(), t0 + limits.timeout);
        let (t, out) = Transfer::start(&opts(&[("timeout", "5")]), file(10), &limits, t0);
        assert!(matches!(Packet::decode(&out[0]), Ok(Packet::Oack(_))));
        assert_eq!(t.deadline(), t0 + Duration::from_secs(5));
        // A client that acknowledges one block in each retry window keeps
        // the transfer going, but not beyond its lifetime.
        let big = file(512 * 10_000);
        let (mut t, _) = Transfer::start(&[], big, &limits, t0);
        let mut now = t0;
        let mut block = 0u16;
        while t.outcome().is_none() {
            now += Duration::from_secs(4);
            block = block.wrapping_add(1);
            let _ = t.on_datagram(&ack(block), now);
            let _ = t.on_timeout(now);
            let _ = t.on_timeout(t.deadline());
            assert!(
                now <= t0 + limits.lifetime + Duration::from_secs(60),
                "still going"
            );
        }
        assert_eq!(t.outcome(), Some(&Outcome::TimedOut));
    }

    #[test]
    fn oack_is_retransmitted_until_acknowledged() {
        let t0 = Instant::now();
        let (mut t, first) =
            Transfer::start(&opts(&[("tsize", "0")]), file(10), &Limits::default(), t0);
        let again = t.on_timeout(t.deadline());
        assert_eq!(again, first);
        let out = t.on_datagram(&ack(0), t0);
        assert_eq!(data(&out[0]), (1, file(10).to_vec()));
    }

    #[test]
    fn tsize_probe_then_client_error_ends_at_once() {
        let now = Instant::now();
        let (mut t, out) = Transfer::start(
            &opts(&[("tsize", "0"), ("blksize", "1432")]),
            file(123_456),
            &Limits::default(),
            now,
        );
        assert_eq!(
            Packet::decode(&out[0]),
            Ok(Packet::Oack(opts(&[
                ("tsize", "123456"),
                ("blksize", "1432")
            ])))
        );
        let err = packet::error(ErrorCode::OptionRefused, "tsize probe");
        assert!(t.on_datagram(&err, now).is_empty());
        assert_eq!(
            t.outcome(),
            Some(&Outcome::ClientAborted(8, "tsize probe".into()))
        );
        // Nothing more, not even on a timeout.
        assert!(t.on_timeout(now + Duration::from_secs(100)).is_empty());
    }

    #[test]
    fn illegal_packet_gets_error_4() {
        let now = Instant::now();
        let (mut t, _) = Transfer::start(&[], file(10), &Limits::default(), now);
        let mut d = Vec::new();
        packet::encode_data(&mut d, 1, b"x");
        let out = t.on_datagram(&d, now);
        assert!(matches!(
            Packet::decode(&out[0]),
            Ok(Packet::Error { code: 4, .. })
        ));
        assert_eq!(t.outcome(), Some(&Outcome::Protocol));
    }

    #[test]
    fn block_numbers_roll_over() {
        let now = Instant::now();
        // 70000 blocks of 8 bytes, plus a short tail.
        let f = file(8 * 70_000 + 3);
        let (mut t, out) = Transfer::start(
            &opts(&[("blksize", "8"), ("windowsize", "16")]),
            f.clone(),
            &Limits::default(),
            now,
        );
        let first = t.on_datagram(&ack(0), now);
        drop(out);
        let got = drain(&mut t, first, now);
        assert_eq!(got, f.to_vec());
        assert_eq!(t.outcome(), Some(&Outcome::Complete));
    }

    proptest! {
        #[test]
        fn hostile_datagrams_never_panic_a_transfer(
            options in proptest::collection::vec(
                (prop_oneof![Just("blksize".to_string()), Just("windowsize".to_string()),
                             Just("timeout".to_string()), Just("tsize".to_string()), "[a-z]{1,8}"],
                 "[0-9]{0,6}|[a-z]{0,3}"), 0..6),
            len in 0usize..5000,
            inputs in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..8), any::<u16>(), 0u64..20_000), 0..60),
        ) {
            let t0 = Instant::now();
            let (mut t, _) = Transfer::start(&options, file(len), &Limits::default(), t0);
            for (noise, block, ms) in inputs {
                let now = t0 + Duration::from_millis(ms);
                let _ = t.on_datagram(&noise, now);
                let _ = t.on_datagram(&ack(block), now);
                let _ = t.on_timeout(now);
            }
        }
    }
}
