//! The router-advertisement responder (`serve --ipv6-ra`): answers IPv6
//! router solicitations on the boot interface with the advertisement that
//! configures nothing (bootd-dhcp's `ra`), so iPXE stops waiting for an
//! IPv6 router that the network does not have and boots at once.

use bootd_dhcp::ra::{is_router_solicitation, QUIET_ADVERTISEMENT};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io::Read;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// All-routers (solicitations arrive here) and all-nodes (the answer goes
/// here: one multicast answer serves every machine soliciting at once).
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// At most one advertisement this often, however many solicitations come:
/// the multicast one already reached everyone.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

pub struct Responder {
    sock: Socket,
    ifindex: u32,
}

impl Responder {
    /// Opens a raw ICMPv6 socket on `interface`, member of all-routers.
    pub fn bind(interface: &str) -> std::io::Result<Self> {
        let ifindex = nix::net::if_::if_nametoindex(interface)?;
        let sock = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
        sock.bind_device(Some(interface.as_bytes()))?;
        sock.join_multicast_v6(&ALL_ROUTERS, ifindex)?;
        sock.set_multicast_if_v6(ifindex)?;
        // RFC 4861: neighbour discovery messages leave with hop limit 255,
        // so receivers know they were not forwarded.
        sock.set_multicast_hops_v6(255)?;
        sock.set_multicast_loop_v6(false)?;
        sock.set_read_timeout(Some(super::socket::STOP_POLL))?;
        Ok(Self { sock, ifindex })
    }

    /// Answers until the DHCP threads' stop flag is set.
    pub fn run(mut self, shared: Arc<super::driver::Shared>) {
        let to = SockAddr::from(SocketAddrV6::new(ALL_NODES, 0, 0, self.ifindex));
        let mut buf = [0u8; 1500];
        let mut last: Option<Instant> = None;
        let mut warned = false;
        while !shared.stop.load(Ordering::Relaxed) {
            let n = match self.sock.read(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) => {
                    tracing::debug!("router solicitation receive: {e}");
                    std::thread::sleep(super::socket::STOP_POLL);
                    continue;
                }
            };
            if !buf.get(..n).is_some_and(is_router_solicitation) {
                continue;
            }
            if last.is_some_and(|t| t.elapsed() < MIN_INTERVAL) {
                continue;
            }
            last = Some(Instant::now());
            match self.sock.send_to(&QUIET_ADVERTISEMENT, &to) {
                Ok(_) => tracing::debug!("router solicitation answered"),
                Err(e) if !warned => {
                    // No IPv6 link-local address on the interface, say:
                    // iPXE then waits out its IPv6 timeout as before.
                    warned = true;
                    tracing::warn!("cannot answer IPv6 router solicitations: {e}");
                }
                Err(_) => {}
            }
        }
    }
}
