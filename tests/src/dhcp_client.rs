//! A DHCP client for tests that need to see every answer to one request (a
//! proxyDHCP offer beside the site server's, say), which busybox udhcpc hides.
//! Packets are laid out from RFC 2131/2132 here rather than with bootd's DHCP
//! library, so an encoding bug on the server's side cannot cancel out in the test.
//!
//! Sockets belong to the network namespace of the thread that opens them: open a
//! [`Client`] inside [`crate::netns::NetNs::run_inside`].

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;

/// Option 53 values (RFC 2132 9.6).
pub const DISCOVER: u8 = 1;
pub const OFFER: u8 = 2;
pub const REQUEST: u8 = 3;
pub const ACK: u8 = 5;
pub const NAK: u8 = 6;

const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// op .. file: the fixed BOOTP part before the magic cookie.
const FIXED_LEN: usize = 236;
/// Old BOOTP relays and servers drop shorter messages (RFC 1542 2.1).
const MIN_LEN: usize = 300;
const BROADCAST_FLAG: u16 = 0x8000;

/// One DHCP message, as much of it as the tests look at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// 1 request, 2 reply.
    pub op: u8,
    pub xid: u32,
    pub flags: u16,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: [u8; 6],
    /// The `file` field up to its first NUL.
    pub file: Vec<u8>,
    /// Option data by code; a repeated code's parts concatenated (RFC 3396).
    pub options: BTreeMap<u8, Vec<u8>>,
}

impl Message {
    /// A client message of type `kind` (option 53) from `mac`, asking for broadcast
    /// replies: a client without an address cannot take unicast ones.
    pub fn client(kind: u8, mac: [u8; 6], xid: u32) -> Self {
        Self {
            op: 1,
            xid,
            flags: BROADCAST_FLAG,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            chaddr: mac,
            file: Vec::new(),
            options: BTreeMap::from([(53, vec![kind])]),
        }
    }

    /// Adds (or replaces) option `code`.
    pub fn with(mut self, code: u8, data: &[u8]) -> Self {
        self.options.insert(code, data.to_vec());
        self
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(MIN_LEN);
        b.extend_from_slice(&[self.op, 1, 6, 0]);
        b.extend_from_slice(&self.xid.to_be_bytes());
        b.extend_from_slice(&[0, 0]); // secs
        b.extend_from_slice(&self.flags.to_be_bytes());
        for a in [self.ciaddr, self.yiaddr, self.siaddr, self.giaddr] {
            b.extend_from_slice(&a.octets());
        }
        let mut chaddr = [0u8; 16];
        chaddr[..6].copy_from_slice(&self.chaddr);
        b.extend_from_slice(&chaddr);
        b.extend_from_slice(&[0u8; 64]); // sname
        let mut file = [0u8; 128];
        let n = self.file.len().min(127);
        file[..n].copy_from_slice(&self.file[..n]);
        b.extend_from_slice(&file);
        b.extend_from_slice(&MAGIC);
        for (&code, data) in &self.options {
            // Long values split into several options (RFC 3396).
            for part in data.chunks(255) {
                b.push(code);
                b.push(part.len() as u8);
                b.extend_from_slice(part);
            }
        }
        b.push(255);
        b.resize(b.len().max(MIN_LEN), 0);
        b
    }

    /// `None` for anything that is not a DHCP message with well-formed options.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < FIXED_LEN + MAGIC.len() || b[FIXED_LEN..FIXED_LEN + 4] != MAGIC {
            return None;
        }
        let ip = |at: usize| Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]);
        let file = &b[108..236];
        let file = &file[..file.iter().position(|&c| c == 0).unwrap_or(file.len())];
        let mut options: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
        let mut rest = &b[FIXED_LEN + 4..];
        while let Some((&code, tail)) = rest.split_first() {
            match code {
                0 => rest = tail,
                255 => break,
                _ => {
                    let (&len, tail) = tail.split_first()?;
                    let data = tail.get(..usize::from(len))?;
                    options.entry(code).or_default().extend_from_slice(data);
                    rest = &tail[usize::from(len)..];
                }
            }
        }
        Some(Self {
            op: b[0],
            xid: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            flags: u16::from_be_bytes([b[10], b[11]]),
            ciaddr: ip(12),
            yiaddr: ip(16),
            siaddr: ip(20),
            giaddr: ip(24),
            chaddr: b[28..34].try_into().ok()?,
            file: file.to_vec(),
            options,
        })
    }

    /// Option 53.
    pub fn kind(&self) -> Option<u8> {
        match self.opt(53)? {
            [k] => Some(*k),
            _ => None,
        }
    }

    pub fn opt(&self, code: u8) -> Option<&[u8]> {
        self.options.get(&code).map(Vec::as_slice)
    }

    /// Option `code` as text ("" when absent).
    pub fn opt_str(&self, code: u8) -> String {
        String::from_utf8_lossy(self.opt(code).unwrap_or_default()).into_owned()
    }

    pub fn opt_ip(&self, code: u8) -> Option<Ipv4Addr> {
        let d: [u8; 4] = self.opt(code)?.try_into().ok()?;
        Some(Ipv4Addr::from(d))
    }

    pub fn file_str(&self) -> String {
        String::from_utf8_lossy(&self.file).into_owned()
    }
}

/// A DHCP client socket: port 68 on one interface, which works before the
/// interface has an address (broadcasts leave from 0.0.0.0, as RFC 2131 says).
pub struct Client {
    sock: UdpSocket,
}

impl Client {
    /// Binds 0.0.0.0:68 on `dev` of the calling thread's namespace.
    pub fn bind(dev: &str) -> Result<Self> {
        let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, CLIENT_PORT))
            .context("binding the DHCP client port 68")?;
        // SAFETY: setsockopt(2) on a socket we own, with a buffer of the given length.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_BINDTODEVICE,
                dev.as_ptr().cast(),
                dev.len() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("SO_BINDTODEVICE {dev}"));
        }
        sock.set_broadcast(true)?;
        Ok(Self { sock })
    }

    /// Broadcasts `msg` to the servers' port.
    pub fn broadcast(&self, msg: &Message) -> Result<()> {
        self.send(msg, SocketAddrV4::new(Ipv4Addr::BROADCAST, SERVER_PORT))
    }

    pub fn send(&self, msg: &Message, to: SocketAddrV4) -> Result<()> {
        self.sock
            .send_to(&msg.encode(), to)
            .with_context(|| format!("sending DHCP to {to}"))?;
        Ok(())
    }

    /// The next reply to any transaction within `window` (a client driving
    /// many transactions at once); `None` when none came.
    pub fn next_reply(&self, window: Duration) -> Result<Option<Message>> {
        let end = Instant::now() + window;
        let mut buf = [0u8; 1500];
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.sock.set_read_timeout(Some(left))?;
            let n = match self.sock.recv_from(&mut buf) {
                Ok((n, _)) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) => bail!("receiving DHCP: {e}"),
            };
            if let Some(m) = Message::decode(&buf[..n]).filter(|m| m.op == 2) {
                return Ok(Some(m));
            }
        }
    }

    /// The replies to `xid` that arrive within `window`, at most `max`; others
    /// (other transactions, requests, noise) are skipped.
    pub fn replies(
        &self,
        xid: u32,
        window: Duration,
        max: usize,
    ) -> Result<Vec<(SocketAddr, Message)>> {
        let end = Instant::now() + window;
        let mut got = Vec::new();
        let mut buf = [0u8; 1500];
        while got.len() < max {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            self.sock.set_read_timeout(Some(left))?;
            let (n, from) = match self.sock.recv_from(&mut buf) {
                Ok(r) => r,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(e) => bail!("receiving DHCP: {e}"),
            };
            if let Some(m) = Message::decode(&buf[..n]) {
                if m.op == 2 && m.xid == xid {
                    got.push((from, m));
                }
            }
        }
        Ok(got)
    }
}

/// `aa:bb:cc:dd:ee:ff` as bytes.
pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let bytes = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<Vec<u8>, _>>()
        .with_context(|| format!("bad MAC {s:?}"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("bad MAC {s:?}: not six bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let m = Message::client(DISCOVER, [2, 0, 0, 0, 0, 1], 0xdead_beef)
            .with(60, b"PXEClient:Arch:00007")
            .with(93, &[0, 7])
            .with(200, &[7; 300]);
        let b = m.encode();
        assert!(b.len() >= MIN_LEN);
        assert_eq!(Message::decode(&b), Some(m.clone()));
        assert_eq!(m.kind(), Some(DISCOVER));
        assert_eq!(m.opt_str(60), "PXEClient:Arch:00007");
        // A truncated option is refused, not read past the end.
        let mut short = b[..FIXED_LEN + 4].to_vec();
        short.extend_from_slice(&[60, 10, b'P']);
        assert_eq!(Message::decode(&short), None);
        assert_eq!(
            parse_mac("52:54:00:e2:0b:01").ok(),
            Some([0x52, 0x54, 0, 0xe2, 0x0b, 1])
        );
        assert!(parse_mac("52:54:00:e2:0b").is_err());
    }
}
