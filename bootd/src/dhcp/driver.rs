//! The UDP side: binds the DHCP ports on one interface, looks the client's
//! MAC up in the registry, asks [`super::handle`] and sends what it returns.
//! One blocking thread per port; the decision itself holds no sockets.

use super::lease::Leases;
use super::reply::Destination;
use super::server::{handle, Mode, NodeLookup, Params};
use super::{Request, CLIENT_PORT};
use crate::store::{NodeState, Store, StoreError};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often a blocked receive looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(500);

/// A DHCP port bound to all addresses (broadcasts arrive at 255.255.255.255)
/// but only on `interface`, so bootd never answers on another network.
pub fn bind(port: u16, interface: Option<&str>) -> std::io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    if let Some(ifname) = interface {
        s.bind_device(Some(ifname.as_bytes()))?;
    }
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
    let u: UdpSocket = s.into();
    u.set_read_timeout(Some(STOP_POLL))?;
    Ok(u)
}

/// Shared by the threads of one server.
pub struct Shared {
    pub params: Params,
    pub leases: Option<Mutex<Leases>>,
    pub store: Mutex<Box<dyn Store>>,
    pub stop: AtomicBool,
}

fn lookup(shared: &Shared, mac: &str) -> NodeLookup {
    let store = shared.store.lock().unwrap_or_else(|e| e.into_inner());
    match store.node(mac) {
        Ok(n) if n.state == NodeState::Ready => NodeLookup::Known {
            static_ip: n.ip.as_deref().and_then(|ip| ip.parse().ok()),
        },
        Ok(_) | Err(StoreError::NotFound { .. }) => NodeLookup::Unknown,
        Err(e) => {
            // A busy registry: the client retries, and gets an address anyway.
            tracing::warn!(%mac, "registry: {e}");
            NodeLookup::Unknown
        }
    }
}

/// Static addresses of registered nodes, kept out of the pool.
fn refresh_reserved(shared: &Shared, seen: &mut Option<u64>) {
    let Some(leases) = &shared.leases else { return };
    let store = shared.store.lock().unwrap_or_else(|e| e.into_inner());
    let Ok(generation) = store.generation() else {
        return;
    };
    if *seen == Some(generation) {
        return;
    }
    if let Ok(nodes) = store.nodes() {
        let reserved = nodes
            .iter()
            .filter_map(|n| n.ip.as_deref()?.parse().ok())
            .collect();
        leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_reserved(reserved);
        *seen = Some(generation);
    }
}

/// Answers on `sock` until `shared.stop` is set.
pub fn run(sock: UdpSocket, shared: Arc<Shared>) {
    let port = sock.local_addr().map_or(0, |a| a.port());
    let mut buf = [0u8; 1500];
    let mut seen = None;
    while !shared.stop.load(Ordering::Relaxed) {
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => {
                tracing::warn!(port, "dhcp receive: {e}");
                std::thread::sleep(STOP_POLL);
                continue;
            }
        };
        let SocketAddr::V4(from) = from else { continue };
        let Some(req) = Request::decode(&buf[..n]) else {
            continue;
        };
        refresh_reserved(&shared, &mut seen);
        let node = lookup(&shared, &req.mac());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut guard = shared
            .leases
            .as_ref()
            .map(|l| l.lock().unwrap_or_else(|e| e.into_inner()));
        let reply = handle(
            &req,
            port,
            from,
            &shared.params,
            guard.as_deref_mut(),
            &node,
            now,
        );
        drop(guard);
        let reply = match reply {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!("saving DHCP leases: {e}");
                continue;
            }
        };
        let Some(bytes) = reply.to_bytes() else {
            continue;
        };
        let to = match reply.dest {
            Destination::Relay(a) | Destination::Unicast(a) => a,
            // Reaching a client without an address needs an ARP entry we do
            // not set; RFC 2131 4.1 allows broadcasting instead.
            Destination::Broadcast | Destination::UnicastHw { .. } => {
                SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)
            }
        };
        if let Err(e) = sock.send_to(&bytes, to) {
            tracing::warn!(%to, "dhcp send: {e}");
        }
        tracing::debug!(mac = %req.mac(), kind = ?req.msg_type, ?node, mode = ?shared.params.mode, "dhcp answered");
    }
}

/// Mode::Proxy listens on 4011 as well.
pub fn ports(mode: Mode) -> &'static [u16] {
    match mode {
        Mode::Proxy => &[super::SERVER_PORT, super::PXE_PORT],
        Mode::Full => &[super::SERVER_PORT],
    }
}
