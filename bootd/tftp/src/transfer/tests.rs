//! The read transfer's tests: negotiation, windows, retransmission, hostile input.

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
