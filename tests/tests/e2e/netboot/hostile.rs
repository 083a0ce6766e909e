//! Hostile traffic for the DHCP and TFTP ports: random datagrams, a share of them
//! dressed as BOOTP/DHCP or TFTP so that they get past the first byte of the
//! decoders. Sent from a thread inside the machine's namespace, since spawning a
//! process per datagram would take minutes.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bootd_tests::netns::NetNs;

/// Whole bursts must be sent within this; a send that blocks this long is a hang.
const SEND_LIMIT: Duration = Duration::from_secs(20);
/// Largest payload: an Ethernet MTU's worth.
const MAX_LEN: usize = 1500;

/// xorshift64: reproducible from the seed printed on failure.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// What the server's namespace counted while a flood arrived (`/proc/net/snmp`).
#[derive(Debug)]
pub struct Arrived {
    pub sent: u64,
    /// Handed to a socket.
    pub delivered: u64,
    /// Dropped for a full socket buffer or a bad checksum.
    pub errors: u64,
    /// Arrived at a port nobody listens on (if 67 or 69 were closed, half of them).
    pub no_ports: u64,
    /// TFTP ERRORs that came back (refused names, modes, writes).
    pub tftp_errors: u64,
}

/// The sender stops listening for answers after this much quiet.
const DRAIN_IDLE: Duration = Duration::from_millis(300);
/// How long the counters may take to account for every datagram sent.
const COUNT_LIMIT: Duration = Duration::from_secs(5);

/// Sends `per_port` datagrams to each of `server`:67 and `server`:69 from `ns`
/// (which needs an address), and waits until `server_ns` has counted them in.
/// `real_file` is a name the TFTP server has, so some requests start transfers
/// that the sender then abandons.
pub fn flood(
    ns: &NetNs,
    server_ns: &NetNs,
    server: Ipv4Addr,
    per_port: usize,
    seed: u64,
    real_file: &str,
) -> Result<Arrived> {
    let before = udp_counters(server_ns)?;
    let (sent, tftp_errors) = send(ns, server, per_port, seed, real_file)?;
    let sent = sent as u64;
    let end = Instant::now() + COUNT_LIMIT;
    loop {
        let now = udp_counters(server_ns)?;
        let delta = |k: &str| {
            let at = |m: &BTreeMap<String, u64>| m.get(k).copied().unwrap_or(0);
            at(&now).saturating_sub(at(&before))
        };
        let arrived = Arrived {
            sent,
            delivered: delta("InDatagrams"),
            errors: delta("InErrors"),
            no_ports: delta("NoPorts"),
            tftp_errors,
        };
        if arrived.delivered + arrived.errors + arrived.no_ports >= sent || Instant::now() >= end {
            return Ok(arrived);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `Udp:` counters of `ns`, by name.
fn udp_counters(ns: &NetNs) -> Result<BTreeMap<String, u64>> {
    // /proc/self/net follows the process's namespace; thread-self, this thread's.
    let text = ns.run_inside(|| Ok(std::fs::read_to_string("/proc/thread-self/net/snmp")?))?;
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        anyhow::bail!("no Udp: lines in /proc/net/snmp:\n{text}");
    };
    Ok(names
        .split_whitespace()
        .zip(values.split_whitespace())
        .skip(1)
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect())
}

fn send(
    ns: &NetNs,
    server: Ipv4Addr,
    per_port: usize,
    seed: u64,
    real_file: &str,
) -> Result<(usize, u64)> {
    ns.run_inside(|| {
        let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).context("binding the sender")?;
        sock.set_write_timeout(Some(SEND_LIMIT))?;
        let mut rng = Rng(seed | 1);
        let start = Instant::now();
        let mut sent = 0;
        for i in 0..per_port * 2 {
            ensure!(
                start.elapsed() < SEND_LIMIT,
                "sending {} datagrams took over {}s",
                per_port * 2,
                SEND_LIMIT.as_secs()
            );
            let (port, datagram) = if i % 2 == 0 {
                (67, dhcp_like(&mut rng))
            } else {
                (69, tftp_like(&mut rng, real_file))
            };
            sock.send_to(&datagram, SocketAddrV4::new(server, port))
                .with_context(|| {
                    format!("datagram {i} ({} bytes) to port {port}", datagram.len())
                })?;
            sent += 1;
            // A short pause now and then, so the burst tests the decoders rather
            // than only the socket buffer.
            if i % 16 == 15 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        // TFTP answers with an ERROR to requests it refuses: count them, to see it
        // kept answering through the burst.
        let mut errors = 0;
        let mut buf = [0u8; 2048];
        sock.set_read_timeout(Some(DRAIN_IDLE))?;
        let end = Instant::now() + COUNT_LIMIT;
        while Instant::now() < end {
            match sock.recv_from(&mut buf) {
                Ok((n, from)) if from.ip() == server && n >= 2 && buf[..2] == [0, 5] => errors += 1,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        Ok((sent, errors))
    })
}

/// A datagram for port 67: pure noise, a BOOTP header with noise behind it, or a
/// DHCP message (magic cookie, option 53) whose options are noise or broken.
fn dhcp_like(rng: &mut Rng) -> Vec<u8> {
    let len = rng.below(MAX_LEN + 1);
    let mut d = rng.bytes(len);
    match rng.below(4) {
        0 => {}
        1 => {
            // op BOOTREQUEST, Ethernet, a 6-byte or hostile hardware length.
            let hlen = [6, 0, 16, 17, 255][rng.below(5)];
            d.splice(..d.len().min(3), [1, 1, hlen]);
        }
        2 => d = well_formed_dhcp(rng),
        _ => {
            d.resize(d.len().max(244), 0);
            d[0] = 1;
            d[1] = 1;
            d[2] = if rng.below(8) == 0 { 255 } else { 6 };
            d[236..240].copy_from_slice(&[99, 130, 83, 99]);
            // Message type 1..=8 (or none), then options that lie about their lengths.
            let mut opts = vec![53, 1, 1 + rng.below(9) as u8];
            for _ in 0..rng.below(12) {
                let code =
                    [43, 50, 54, 60, 61, 77, 80, 81, 82, 93, 94, 97, 175, 255][rng.below(14)];
                let claimed = rng.below(256);
                opts.push(code);
                opts.push(claimed as u8);
                let real = if rng.below(3) == 0 {
                    rng.below(claimed + 1)
                } else {
                    claimed
                };
                opts.extend(rng.bytes(real));
            }
            d.truncate(240);
            d.extend(opts);
            d.truncate(MAX_LEN);
        }
    }
    d
}

/// A DHCP request that decodes: any message type from a random MAC, with the
/// options bootd reads (vendor class, architecture, user class, relay information,
/// requested address, server id) holding odd but well-formed values. Sometimes
/// relayed (giaddr set), sometimes from a "configured" client (ciaddr set).
fn well_formed_dhcp(rng: &mut Rng) -> Vec<u8> {
    let mut d = vec![0u8; 240];
    d[0] = 1;
    d[1] = 1;
    d[2] = rng.below(17) as u8;
    d[4..8].copy_from_slice(&rng.bytes(4));
    d[10] = if rng.below(2) == 0 { 0x80 } else { 0 };
    let host = |rng: &mut Rng| [192, 0, 2, rng.below(256) as u8];
    if rng.below(4) == 0 {
        d[12..16].copy_from_slice(&host(rng)); // ciaddr
    }
    if rng.below(8) == 0 {
        d[24..28].copy_from_slice(&host(rng)); // giaddr
    }
    d[28..44].copy_from_slice(&rng.bytes(16));
    d[236..240].copy_from_slice(&[99, 130, 83, 99]);
    let opt = |d: &mut Vec<u8>, code: u8, data: &[u8]| {
        d.push(code);
        d.push(data.len() as u8);
        d.extend_from_slice(data);
    };
    opt(&mut d, 53, &[1 + rng.below(8) as u8]);
    for _ in 0..rng.below(8) {
        match rng.below(9) {
            0 => opt(&mut d, 50, &host(rng)),
            1 => opt(&mut d, 54, &[192, 0, 2, [1, 2, 99][rng.below(3)]]),
            2 => {
                let class = [
                    &b"PXEClient"[..],
                    b"PXEClient:Arch:00007",
                    b"HTTPClient",
                    b"",
                    b"PXE",
                ];
                opt(&mut d, 60, class[rng.below(class.len())]);
            }
            3 => {
                let n = rng.below(5);
                opt(&mut d, 93, &rng.bytes(n));
            }
            4 => opt(
                &mut d,
                77,
                if rng.below(2) == 0 {
                    &b"iPXE"[..]
                } else {
                    b"\x04iPXE"
                },
            ),
            5 => {
                let n = rng.below(40);
                opt(&mut d, 82, &rng.bytes(n));
            }
            6 => {
                let n = rng.below(20);
                opt(&mut d, 175, &rng.bytes(n));
            }
            7 => {
                let n = 1 + rng.below(30);
                opt(&mut d, 55, &rng.bytes(n));
            }
            _ => {
                let n = rng.below(17);
                opt(&mut d, 97, &rng.bytes(n));
            }
        }
    }
    d.push(255);
    d
}

/// A datagram for port 69: noise, a TFTP opcode with noise behind it, a read of a
/// missing or escaping name, or a read of `real_file` with odd options.
fn tftp_like(rng: &mut Rng, real_file: &str) -> Vec<u8> {
    let len = rng.below(MAX_LEN + 1);
    match rng.below(8) {
        0 | 1 => rng.bytes(len),
        2 | 3 => {
            let mut d = rng.bytes(len.max(2));
            d[0] = 0;
            d[1] = 1 + rng.below(7) as u8;
            d
        }
        4 | 5 => {
            let names = [
                "../../etc/passwd",
                "/etc/shadow",
                "a/../../b",
                "nope.efi",
                "",
            ];
            let mut d = vec![0, 1];
            d.extend(names[rng.below(names.len())].as_bytes());
            d.push(0);
            d.extend([&b"octet"[..], b"netascii", b"mail", b"OcTeT"][rng.below(4)]);
            match rng.below(4) {
                // No terminating NUL.
                0 => {}
                1 => d.push(0),
                // Options of noise.
                2 => {
                    d.push(0);
                    let n = rng.below(64);
                    d.extend(rng.bytes(n));
                }
                _ => {
                    d.push(0);
                    for (k, v) in [("blksize", "1468"), ("tsize", "0"), ("windowsize", "8")] {
                        d.extend(k.as_bytes());
                        d.push(0);
                        d.extend(v.as_bytes());
                        d.push(0);
                    }
                }
            }
            d
        }
        6 => {
            // A request for a real file, then silence: the transfer must give up.
            let mut d = vec![0, 1];
            d.extend(real_file.as_bytes());
            d.extend(b"\0octet\0");
            let opts = [
                (
                    "blksize",
                    ["0", "7", "8", "65464", "65535", "x"][rng.below(6)],
                ),
                ("windowsize", ["0", "1", "64", "65535"][rng.below(4)]),
                ("timeout", ["0", "1", "255", "-1"][rng.below(4)]),
                ("tsize", "0"),
            ];
            for (k, v) in opts {
                if rng.below(2) == 0 {
                    d.extend(k.as_bytes());
                    d.push(0);
                    d.extend(v.as_bytes());
                    d.push(0);
                }
            }
            d
        }
        _ => {
            // ACK, DATA and ERROR to the well-known port, where no transfer lives.
            let mut d = vec![0, [3, 4, 5][rng.below(3)] as u8];
            d.extend(rng.bytes(len.min(600)));
            d
        }
    }
}
