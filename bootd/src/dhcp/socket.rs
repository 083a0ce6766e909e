//! The DHCP ports' sockets: bound to all addresses (broadcasts arrive at
//! 255.255.255.255) but only on one interface (SO_BINDTODEVICE), with
//! IP_PKTINFO so that every datagram says which interface it came in on and
//! every reply leaves by that interface with the server's address as source,
//! even when the host has several networks.

use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
    SockaddrIn,
};
use socket2::{Domain, Protocol, Socket, Type};
use std::io::{IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

/// How often a blocked receive looks at the stop flag.
pub const STOP_POLL: Duration = Duration::from_millis(500);

pub struct DhcpSocket {
    sock: UdpSocket,
    /// The interface answered on; 0 when any will do.
    ifindex: u32,
    /// Source address of replies.
    server: Ipv4Addr,
}

/// One datagram as it arrived.
pub struct Arrival {
    pub len: usize,
    pub from: SocketAddrV4,
    /// The interface it came in on (0 if the kernel did not say).
    pub ifindex: u32,
}

impl DhcpSocket {
    /// Binds `port` on `interface` (by name, or any when `None`).
    pub fn bind(port: u16, interface: Option<&str>, server: Ipv4Addr) -> std::io::Result<Self> {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_reuse_address(true)?;
        s.set_broadcast(true)?;
        let mut ifindex = 0;
        if let Some(ifname) = interface {
            s.bind_device(Some(ifname.as_bytes()))?;
            ifindex = nix::net::if_::if_nametoindex(ifname)?;
        }
        setsockopt(&s, sockopt::Ipv4PacketInfo, &true)?;
        // Room for a burst of requests while a batch is being committed.
        s.set_recv_buffer_size(1 << 20)?;
        s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
        let sock: UdpSocket = s.into();
        sock.set_read_timeout(Some(STOP_POLL))?;
        Ok(Self {
            sock,
            ifindex,
            server,
        })
    }

    pub fn local_port(&self) -> u16 {
        self.sock.local_addr().map_or(0, |a| a.port())
    }

    /// The next datagram into `buf`: waits up to [`STOP_POLL`] when `wait`,
    /// else returns at once. `Ok(None)`: nothing arrived, or it came in on
    /// another interface than the one served.
    pub fn recv(&self, buf: &mut [u8], wait: bool) -> std::io::Result<Option<Arrival>> {
        let mut iov = [IoSliceMut::new(buf)];
        let mut cmsg = nix::cmsg_space!(libc::in_pktinfo);
        let flags = if wait {
            MsgFlags::empty()
        } else {
            MsgFlags::MSG_DONTWAIT
        };
        let msg =
            match recvmsg::<SockaddrIn>(self.sock.as_raw_fd(), &mut iov, Some(&mut cmsg), flags) {
                Ok(m) => m,
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
        let mut ifindex = 0;
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::Ipv4PacketInfo(info) = c {
                    ifindex = u32::try_from(info.ipi_ifindex).unwrap_or(0);
                }
            }
        }
        let Some(from) = msg.address else {
            return Ok(None);
        };
        if self.ifindex != 0 && ifindex != 0 && ifindex != self.ifindex {
            return Ok(None);
        }
        Ok(Some(Arrival {
            len: msg.bytes,
            from: SocketAddrV4::new(from.ip(), from.port()),
            ifindex,
        }))
    }

    /// Sends `bytes` to `to` out of `ifindex` (the request's interface, or
    /// the served one), from the server's address.
    pub fn send(&self, bytes: &[u8], to: SocketAddrV4, ifindex: u32) -> std::io::Result<()> {
        let ifindex = if ifindex != 0 { ifindex } else { self.ifindex };
        let info = libc::in_pktinfo {
            ipi_ifindex: i32::try_from(ifindex).unwrap_or(0),
            ipi_spec_dst: libc::in_addr {
                s_addr: u32::from(self.server).to_be(),
            },
            ipi_addr: libc::in_addr { s_addr: 0 },
        };
        let cmsgs = [ControlMessage::Ipv4PacketInfo(&info)];
        let dest = SockaddrIn::from(to);
        sendmsg(
            self.sock.as_raw_fd(),
            &[IoSlice::new(bytes)],
            &cmsgs,
            MsgFlags::empty(),
            Some(&dest),
        )?;
        Ok(())
    }
}
