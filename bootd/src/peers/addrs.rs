//! Follows the host's IP addresses through NETLINK_ROUTE: one dump at the
//! start, then the kernel's address notifications (RTMGRP_IPV4_IFADDR and
//! _IPV6_IFADDR), whoever adds or removes them (keepalived, pacemaker's
//! IPaddr2, `ip addr`). The set is published on a watch channel; the thread
//! ends once every receiver is gone. Decoding is `peers::netlink`'s.
//!
//! The socket is opened by the calling thread, so it follows that thread's
//! network namespace.

use super::netlink::{self, Event};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;
use tokio::sync::watch;

const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV6_IFADDR: u32 = 0x100;
/// How often the thread looks whether anyone still listens.
const POLL: Duration = Duration::from_millis(500);

pub type Addrs = watch::Receiver<BTreeSet<IpAddr>>;

fn socket() -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscalls; the descriptor is owned at once, and the
    // addresses passed live through the calls.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        );
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let mut sa: libc::sockaddr_nl = std::mem::zeroed();
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        sa.nl_groups = RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR;
        if libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: POLL.as_micros() as libc::suseconds_t,
        };
        if libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(fd)
    }
}

fn send_dump(fd: &OwnedFd, seq: u32) -> std::io::Result<()> {
    let req = netlink::dump_request(seq);
    // SAFETY: the kernel's address (all zero: pid 0) and the request live
    // through the call.
    let n = unsafe {
        let mut sa: libc::sockaddr_nl = std::mem::zeroed();
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        libc::sendto(
            fd.as_raw_fd(),
            req.as_ptr().cast(),
            req.len(),
            0,
            (&sa as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The host's addresses as the kernel reports them: address → the
/// interfaces carrying it.
#[derive(Default)]
struct Table(BTreeMap<IpAddr, BTreeSet<u32>>);

impl Table {
    fn apply(&mut self, ev: &Event) {
        match ev {
            Event::Added { addr, index } => {
                self.0.entry(*addr).or_default().insert(*index);
            }
            Event::Removed { addr, index } => {
                if let Some(s) = self.0.get_mut(addr) {
                    s.remove(index);
                    if s.is_empty() {
                        self.0.remove(addr);
                    }
                }
            }
            Event::Done | Event::Error(_) => {}
        }
    }

    fn set(&self) -> BTreeSet<IpAddr> {
        self.0.keys().copied().collect()
    }
}

/// Starts following; the first set (the dump) is in the receiver when
/// this returns.
pub fn follow() -> std::io::Result<Addrs> {
    let fd = socket()?;
    send_dump(&fd, 1)?;
    let mut table = Table::default();
    let mut buf = vec![0u8; 64 * 1024];
    // The dump, to its end (bounded: a host has finitely many addresses,
    // and a silent kernel times out).
    let started = std::time::Instant::now();
    'dump: loop {
        let n = recv(&fd, &mut buf)?;
        for ev in netlink::parse(&buf[..n.unwrap_or(0)]) {
            table.apply(&ev);
            if ev == Event::Done {
                break 'dump;
            }
        }
        if started.elapsed() > Duration::from_secs(5) {
            return Err(std::io::Error::other("no end to the address dump"));
        }
    }
    let (tx, rx) = watch::channel(table.set());
    std::thread::Builder::new()
        .name("addrs".into())
        .spawn(move || run(fd, table, buf, tx))?;
    Ok(rx)
}

/// One datagram's length, or `None` after the poll timeout.
fn recv(fd: &OwnedFd, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
    // SAFETY: recv writes at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n >= 0 {
        return Ok(Some(n as usize));
    }
    let e = std::io::Error::last_os_error();
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => Ok(None),
        _ => Err(e),
    }
}

fn run(fd: OwnedFd, mut table: Table, mut buf: Vec<u8>, tx: watch::Sender<BTreeSet<IpAddr>>) {
    let mut seq = 1u32;
    while !tx.is_closed() {
        match recv(&fd, &mut buf) {
            Ok(Some(n)) => {
                for ev in netlink::parse(&buf[..n]) {
                    table.apply(&ev);
                }
                let now = table.set();
                tx.send_if_modified(|s| {
                    let changed = *s != now;
                    *s = now;
                    changed
                });
            }
            Ok(None) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                // Notifications were lost: read the whole table again.
                tracing::warn!("address notifications overran; reading every address again");
                table = Table::default();
                seq = seq.wrapping_add(1);
                if let Err(e) = send_dump(&fd, seq) {
                    tracing::error!("address dump: {e}");
                    return;
                }
            }
            Err(e) => {
                tracing::error!("following the host's addresses: {e}");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(cmd: &[&str]) -> bool {
        std::process::Command::new("ip")
            .args(cmd)
            .status()
            .is_ok_and(|s| s.success())
    }

    /// In a network namespace of its own (root only): addresses added and
    /// removed with `ip` reach the set.
    #[test]
    fn addresses_added_and_removed_on_the_host_are_followed() -> anyhow::Result<()> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root for a network namespace");
            return Ok(());
        }
        // A thread of its own moves into the new namespace, and so do the
        // socket and `ip` commands it starts.
        let t = std::thread::spawn(|| -> anyhow::Result<()> {
            // SAFETY: unshare changes only this thread's namespace.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error().into());
            }
            assert!(ip(&["link", "set", "lo", "up"]));
            let mut rx = follow()?;
            let a: IpAddr = "192.0.2.77".parse()?;
            assert!(!rx.borrow().contains(&a));
            let wait = |rx: &mut Addrs, present: bool| -> anyhow::Result<()> {
                let t = std::time::Instant::now();
                while rx.borrow_and_update().contains(&a) != present {
                    anyhow::ensure!(t.elapsed() < Duration::from_secs(5), "not seen");
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(())
            };
            assert!(ip(&["addr", "add", "192.0.2.77/24", "dev", "lo"]));
            wait(&mut rx, true)?;
            assert!(ip(&["addr", "del", "192.0.2.77/24", "dev", "lo"]));
            wait(&mut rx, false)?;
            Ok(())
        });
        t.join().map_err(|_| anyhow::anyhow!("thread panicked"))?
    }
}
