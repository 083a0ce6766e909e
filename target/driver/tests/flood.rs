//! Memory floods by initiators that never read their replies, against the
//! server over loopback in this process, with its resident set size measured
//! before and after each flood while another session's I/O goes on. One test
//! in its own binary, so that nothing else moves the RSS.

mod common;

use bytes::{Bytes, BytesMut};
use common::*;
use iscsi_proto::pdu::{Digests, NopOutPdu, Request, RESERVED_TAG};
use iscsi_proto::scsi::opcode as op;
use iscsi_target::ServerConfig;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const MIB: u64 = 1 << 20;
/// How long each flooding connection keeps sending (a connection whose
/// socket the server stopped reading blocks; the old code took it all).
const FLOOD_TIME: Duration = Duration::from_secs(4);

/// The flooders' payload, static so that building their PDUs does not
/// move this process's RSS.
static PAYLOAD: [u8; 256 << 10] = [0x5a; 256 << 10];

fn nop(immediate: bool, itt: u32, cmd_sn: u32) -> Request {
    Request::NopOut(NopOutPdu {
        immediate,
        lun: 0,
        itt,
        ttt: RESERVED_TAG,
        cmd_sn,
        exp_stat_sn: 0,
        data: Bytes::from_static(&PAYLOAD),
    })
}

type Make = fn(u32) -> Request;

/// Logs in a flooding connection (normal or discovery) that accepts large
/// segments, so that echoes are as large as the target allows.
async fn attacker(addr: std::net::SocketAddr, n: u8, discovery: bool) -> Res<TcpStream> {
    let s = TcpStream::connect(addr).await?;
    let (c, status) = login_keys(
        s,
        &format!("iqn.2026-11.test:attacker-{n}"),
        (!discovery).then_some(IQN),
        [0x80, 0, 0, 0, 9, n],
        &[("MaxRecvDataSegmentLength", "16777215")],
    )
    .await?;
    assert_eq!(status, (0, 0));
    Ok(c.stream)
}

/// Sends `count` PDUs made by `make` until done or [`FLOOD_TIME`] is up;
/// never reads. Returns the bytes the kernel took.
async fn flood(mut s: TcpStream, count: u32, make: Make) -> (TcpStream, u64) {
    let mut sent = 0u64;
    let deadline = tokio::time::Instant::now() + FLOOD_TIME;
    let mut b = BytesMut::new();
    for i in 0..count {
        b.clear();
        make(i).encode(&mut b, Digests::default());
        match tokio::time::timeout_at(deadline, s.write_all(&b)).await {
            Ok(Ok(())) => sent += b.len() as u64,
            _ => break,
        }
    }
    (s, sent)
}

/// The victim keeps working while a flood runs: TURs and 32 KiB reads.
async fn victim_io(victim: &mut Client, rounds: u32) -> Res<Duration> {
    let t = Instant::now();
    for _ in 0..rounds {
        assert_eq!(tur(victim).await?, 0, "victim TUR");
        assert_eq!(read10(victim, 64).await?, 32 << 10, "victim read");
    }
    Ok(t.elapsed())
}

async fn phase(
    name: &str,
    victim: &mut Client,
    floods: Vec<(TcpStream, u32, Make)>,
    bound: u64,
    keep: &mut Vec<TcpStream>,
) -> Res<()> {
    let before = rss();
    let tasks: Vec<_> = floods
        .into_iter()
        .map(|(s, n, make)| tokio::spawn(flood(s, n, make)))
        .collect();
    // The victim works during the flood ...
    let during = victim_io(victim, 20).await?;
    let mut sent = 0;
    for t in tasks {
        let (s, n) = t.await?;
        sent += n;
        keep.push(s);
    }
    // ... and after it, with the flooders still connected and unread.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = rss();
    let after_io = victim_io(victim, 5).await?;
    let grew = after.saturating_sub(before);
    println!(
        "{name}: flooders sent {} KiB; RSS {} MiB -> {} MiB (+{} MiB, bound {} MiB); \
         victim 20 rounds during: {:.0} ms, 5 after: {:.0} ms",
        sent >> 10,
        before / MIB,
        after / MIB,
        grew / MIB,
        bound / MIB,
        during.as_secs_f64() * 1e3,
        after_io.as_secs_f64() * 1e3,
    );
    assert!(grew < bound, "{name}: RSS grew by {} MiB", grew / MIB);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_by_initiators_that_never_read_keep_memory_bounded() -> Res<()> {
    let config = ServerConfig::default();
    let per_conn = config.max_backlog as u64;
    // 16 MiB in memory: reads of 4 MiB.
    let (_server, addr, _task) = start_with(config, vec![target(IQN, 32768)?]).await?;
    let mut victim = login(addr, [0x80, 0, 0, 0, 0, 1]).await?;
    assert_eq!(tur(&mut victim).await?, 0x02, "power-on UA");
    let mut keep = Vec::new();

    // 1. Immediate NOP-Outs of 256 KiB, echoed in full: 4 connections, up
    //    to 64 MiB each (two of them discovery sessions).
    let mut floods: Vec<(TcpStream, u32, Make)> = Vec::new();
    for n in 0..4u8 {
        let s = attacker(addr, n, n % 2 == 1).await?;
        floods.push((s, 256, |i| nop(true, i + 1, 1)));
    }
    // Each connection may owe its backlog cap plus one echo.
    phase(
        "NOP-Out flood",
        &mut victim,
        floods,
        4 * per_conn + 32 * MIB,
        &mut keep,
    )
    .await?;

    // 2. READs of 1 MiB sent in CmdSN order past the window the target
    //    granted: 2 connections, 100 each (100 MiB each if all were run).
    let mut floods: Vec<(TcpStream, u32, Make)> = Vec::new();
    for n in 4..6u8 {
        let s = attacker(addr, n, false).await?;
        floods.push((s, 100, |i| {
            scsi(
                i + 1,
                i + 1,
                &[op::READ_10, 0, 0, 0, 0, 0, 0, 0x08, 0, 0],
                1 << 20,
                false,
            )
        }));
    }
    phase(
        "READ flood",
        &mut victim,
        floods,
        2 * (per_conn + MIB) + 16 * MIB,
        &mut keep,
    )
    .await?;

    // 3. NOP-Outs of 256 KiB ahead of a CmdSN gap, never filled: 4
    //    connections (two discovery), 127 each (32 MiB each if all held).
    let mut floods: Vec<(TcpStream, u32, Make)> = Vec::new();
    for n in 6..10u8 {
        let s = attacker(addr, n, n % 2 == 1).await?;
        floods.push((s, 127, |i| nop(false, i + 1, i + 2)));
    }
    phase(
        "ahead-of-window flood",
        &mut victim,
        floods,
        24 * MIB,
        &mut keep,
    )
    .await?;
    Ok(())
}
