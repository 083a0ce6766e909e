//! Hostile peers against `bootd export` (the iSCSI target as serve runs it), with
//! libiscsi's `iscsi-inq` as the victim node's initiator: floods by initiators that
//! never read keep bootd's resident memory bounded while the victim's logins and
//! commands go on, and a thousand idle sockets from one machine do not keep another
//! from logging in. The hostile side speaks raw iSCSI PDUs over loopback.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bootd_tests::env::Needs;
use bootd_tests::export::{Export, ExportOptions, Server};
use bootd_tests::process::run;

const IQN: &str = "iqn.2026-01.test.bootd:hostile";
const VICTIM: &str = "iqn.2026-01.test.bootd:victim";
const MIB: u64 = 1 << 20;
/// How long each flooding connection keeps writing; a socket the target stopped
/// reading blocks, which is the point.
const FLOOD_TIME: Duration = Duration::from_secs(4);
/// The target's default per-connection backlog cap (iscsi_target::ServerConfig).
const BACKLOG_CAP: u64 = 16 * MIB;

fn needs(test: &str) -> bool {
    Server::from_env() == Server::Bootd
        && Needs::new()
            .server()
            .tool("iscsi-inq", "libiscsi-bin")
            .tool("ss", "iproute2")
            .met(test)
}

fn export(dir: &tempfile::TempDir) -> Result<Export> {
    let file = dir.path().join("lun.img");
    std::fs::File::create(&file)?.set_len(64 * MIB)?;
    Export::start(&ExportOptions::new(&file, IQN))
}

/// The pid of the process listening on `port` (bootd export), from `ss`.
fn listener_pid(port: u16) -> Result<u32> {
    let out = run(
        Command::new("ss").args(["-ltnpH", &format!("sport = :{port}")]),
        Duration::from_secs(10),
    )?;
    let at = out
        .stdout
        .find("pid=")
        .with_context(|| format!("no pid in ss output: {}", out.stdout))?;
    let digits: String = out.stdout[at + 4..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Ok(digits.parse()?)
}

fn rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")?;
    Ok(kb * 1024)
}

/// The victim node's initiator: a login and INQUIRY by libiscsi; returns how long it
/// took.
fn victim_inquiry(export: &Export) -> Result<Duration> {
    let t = Instant::now();
    let out = run(
        Command::new("iscsi-inq")
            .args(["-i", VICTIM])
            .arg(export.url()),
        Duration::from_secs(20),
    )?;
    if !out.status.success() || !out.stdout.contains("BOOTD") {
        bail!("victim's iscsi-inq failed: {out}");
    }
    Ok(t.elapsed())
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// One PDU: 48-byte header with the data length filled in, data padded to 4.
fn pdu(mut bhs: [u8; 48], data: &[u8]) -> Vec<u8> {
    let len = data.len() as u32;
    bhs[5..8].copy_from_slice(&len.to_be_bytes()[1..]);
    let mut out = bhs.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(4), 0);
    out
}

/// Logs in (normal session, or discovery) straight to full feature phase, offering
/// to take 256 KiB segments so that echoes are as large as the target allows.
fn hostile_login(addr: SocketAddr, n: u8, discovery: bool) -> Result<TcpStream> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut keys = format!("InitiatorName=iqn.2026-01.test.bootd:flood-{n}\0");
    if discovery {
        keys.push_str("SessionType=Discovery\0");
    } else {
        keys.push_str(&format!("SessionType=Normal\0TargetName={IQN}\0"));
    }
    keys.push_str("MaxRecvDataSegmentLength=262144\0");
    let mut bhs = [0u8; 48];
    bhs[0] = 0x43; // immediate, Login
    bhs[1] = 0x87; // T, CSG 1, NSG 3
    bhs[8..14].copy_from_slice(&[0x80, 0, 0, 0, 7, n]);
    put32(&mut bhs, 24, 1); // CmdSN
    s.write_all(&pdu(bhs, keys.as_bytes()))?;
    let mut head = [0u8; 48];
    s.read_exact(&mut head)?;
    let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
    let mut rest = vec![0u8; len.next_multiple_of(4)];
    s.read_exact(&mut rest)?;
    if head[0] & 0x3f != 0x23 || (head[36], head[37]) != (0, 0) {
        bail!("hostile login refused: {:02x?}", &head[..]);
    }
    Ok(s)
}

/// A NOP-Out with 256 KiB of ping data: immediate (outside the window), or with a
/// CmdSN ahead of a gap that is never filled.
fn nop_out(immediate: bool, itt: u32, cmd_sn: u32) -> Vec<u8> {
    let mut bhs = [0u8; 48];
    bhs[0] = if immediate { 0x40 } else { 0 };
    bhs[1] = 0x80;
    put32(&mut bhs, 16, itt);
    put32(&mut bhs, 20, u32::MAX);
    put32(&mut bhs, 24, cmd_sn);
    pdu(bhs, &vec![0x5a; 256 << 10])
}

/// Writes PDUs without ever reading, for [`FLOOD_TIME`] or `count` PDUs; returns
/// the bytes the kernel took. The stream stays open (the caller keeps it).
fn flood(s: &mut TcpStream, count: u32, make: impl Fn(u32) -> Vec<u8>) -> u64 {
    let end = Instant::now() + FLOOD_TIME;
    let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
    let mut sent = 0;
    for i in 0..count {
        if Instant::now() >= end {
            break;
        }
        let p = make(i);
        let mut at = 0;
        while at < p.len() && Instant::now() < end {
            match s.write(&p[at..]) {
                Ok(n) => at += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return sent + at as u64,
            }
        }
        sent += at as u64;
    }
    sent
}

fn flood_phase(
    name: &str,
    export: &Export,
    pid: u32,
    streams: Vec<TcpStream>,
    make: fn(u32) -> Vec<u8>,
    bound: u64,
) -> Result<Vec<TcpStream>> {
    let before = rss(pid)?;
    let workers: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            std::thread::spawn(move || {
                let n = flood(&mut s, 256, make);
                (s, n)
            })
        })
        .collect();
    // The victim logs in and works while the flood runs ...
    let mut during = Vec::new();
    for _ in 0..3 {
        during.push(victim_inquiry(export)?);
    }
    let mut kept = Vec::new();
    let mut sent = 0;
    for w in workers {
        let (s, n) = w
            .join()
            .map_err(|_| anyhow::anyhow!("flood thread panicked"))?;
        sent += n;
        kept.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    // ... and after it, with the flooders connected and still not reading.
    let after_io = victim_inquiry(export)?;
    let after = rss(pid)?;
    let grew = after.saturating_sub(before);
    println!(
        "{name}: {} connections sent {} MiB unread; bootd RSS {} MiB -> {} MiB \
         (+{} MiB, bound {} MiB); victim iscsi-inq during: {:?}, after: {:?}",
        kept.len(),
        sent / MIB,
        before / MIB,
        after / MIB,
        grew / MIB,
        bound / MIB,
        during,
        after_io
    );
    if grew >= bound {
        bail!("{name}: bootd's RSS grew by {} MiB", grew / MIB);
    }
    Ok(kept)
}

#[test]
fn floods_that_never_read_keep_bootd_memory_bounded() -> Result<()> {
    if !needs("floods_that_never_read_keep_bootd_memory_bounded") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let export = export(&dir)?;
    let addr: SocketAddr = format!("127.0.0.1:{}", export.port()).parse()?;
    let pid = listener_pid(export.port())?;
    victim_inquiry(&export).with_context(|| export.log())?;

    // Immediate NOP-Outs of 256 KiB, echoed in full: 4 connections (2 discovery),
    // up to 64 MiB each. Each may owe its backlog cap plus one echo.
    let mut streams = Vec::new();
    for n in 0..4 {
        streams.push(hostile_login(addr, n, n % 2 == 1)?);
    }
    let _nop = flood_phase(
        "NOP-Out flood",
        &export,
        pid,
        streams,
        |i| nop_out(true, i + 1, 1),
        4 * BACKLOG_CAP + 32 * MIB,
    )
    .with_context(|| export.log())?;

    // NOP-Outs of 256 KiB ahead of a CmdSN gap: 4 connections (2 discovery),
    // 127 each (32 MiB each if held).
    let mut streams = Vec::new();
    for n in 4..8 {
        streams.push(hostile_login(addr, n, n % 2 == 1)?);
    }
    let _ahead = flood_phase(
        "ahead-of-window flood",
        &export,
        pid,
        streams,
        |i| nop_out(false, i + 1, i + 2),
        24 * MIB,
    )
    .with_context(|| export.log())?;
    export.shutdown()
}

#[test]
fn idle_sockets_from_one_source_do_not_stop_a_login() -> Result<()> {
    if !needs("idle_sockets_from_one_source_do_not_stop_a_login") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let export = export(&dir)?;
    let addr: SocketAddr = format!("127.0.0.1:{}", export.port()).parse()?;
    // 1024 sockets that never log in, all from 127.0.0.2 (another loopback
    // address stands for another machine).
    let mut idle = Vec::new();
    for _ in 0..1024 {
        idle.push(connect_from([127, 0, 0, 2], addr)?);
    }
    // The victim (from 127.0.0.1) logs in and reads its inquiry data.
    let took = victim_inquiry(&export).with_context(|| export.log())?;
    let open = idle
        .iter()
        .filter(|s| {
            let _ = s.set_nonblocking(true);
            let mut b = [0u8; 1];
            matches!(s.peek(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count();
    println!("1024 idle sockets from 127.0.0.2: {open} still open; victim login took {took:?}");
    if open > 64 {
        bail!("{open} idle sockets from one source were kept");
    }
    export.shutdown()
}

/// A TCP connection from a chosen local address (std has no bind-then-connect, so
/// via libc).
fn connect_from(local: [u8; 4], to: SocketAddr) -> Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(to) = to else {
        bail!("IPv4 only");
    };
    let sin = |ip: [u8; 4], port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor this function owns; the sockaddr
    // structs live across the calls.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            bail!("socket: {}", std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let me = sin(local, 0);
        if libc::bind(fd, (&me as *const libc::sockaddr_in).cast(), len) != 0 {
            bail!("bind: {}", std::io::Error::last_os_error());
        }
        let peer = sin(to.ip().octets(), to.port());
        if libc::connect(fd, (&peer as *const libc::sockaddr_in).cast(), len) != 0 {
            bail!("connect: {}", std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}
