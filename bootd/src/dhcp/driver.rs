//! The UDP side: one blocking thread per port takes whatever datagrams are
//! waiting (up to a batch), asks [`super::handle`] about each, makes the
//! batch's lease changes durable with one disk flush, then sends the
//! replies. Under load many ACKs share one flush; alone, a request is
//! answered as soon as it is decided. The decision itself holds no sockets.

use super::lease::Leases;
use super::registry::Registry;
use super::reply::{Destination, Reply};
use super::server::{handle_with_token, Mode, NodeLookup, Params};
use super::socket::DhcpSocket;
use super::{Request, CLIENT_PORT};
use crate::bootlog::{BootLog, Stage, Who};
use crate::metrics::{DhcpKind, METRICS};
use crate::serve::grants::Grants;
use dhcproto::v4::{MessageType, OptionCode};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Datagrams decided before the lease changes are flushed and replies sent.
const BATCH: usize = 64;

/// Shared by the threads of one server.
pub struct Shared {
    pub params: Params,
    pub leases: Option<Mutex<Leases>>,
    pub registry: Mutex<Registry>,
    pub stop: AtomicBool,
    pub bootlog: Option<BootLog>,
    /// Who may fetch which node's script: tokens issued here, leases
    /// recorded here, checked by the HTTP server.
    pub grants: Arc<Grants>,
}

struct Pending {
    reply: Reply,
    ifindex: u32,
    mac: String,
    ipxe: bool,
}

/// Answers on `sock` until `shared.stop` is set.
pub fn run(sock: DhcpSocket, shared: Arc<Shared>) {
    let port = sock.local_port();
    let mut bufs = vec![[0u8; 1500]; BATCH];
    let mut out: Vec<Pending> = Vec::with_capacity(BATCH);
    while !shared.stop.load(Ordering::Relaxed) {
        let mut batch = Vec::with_capacity(BATCH);
        for (i, buf) in bufs.iter_mut().enumerate() {
            match sock.recv(buf, i == 0) {
                Ok(Some(a)) => batch.push((i, a)),
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(port, "dhcp receive: {e}");
                    std::thread::sleep(super::socket::STOP_POLL);
                    break;
                }
            }
        }
        if batch.is_empty() {
            continue;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        decide(&shared, port, &bufs, &batch, now, &mut out);
        if out.is_empty() {
            continue;
        }
        if let Some(leases) = &shared.leases {
            let mut l = leases.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = l.commit() {
                // No ACK for a lease that might not survive a crash (the
                // clients retry); offers, NAKs and INFORM answers promise
                // nothing and still go out.
                tracing::warn!("saving DHCP leases: {e}");
                out.retain(|p| {
                    let m = &p.reply.msg;
                    m.opts().msg_type() != Some(MessageType::Ack) || m.yiaddr().is_unspecified()
                });
            }
        }
        for p in out.drain(..) {
            grant_lease(&shared, &p);
            send(&sock, &p);
            count(&p.reply, shared.params.mode);
            if let Some(log) = &shared.bootlog {
                report(log, &p, shared.params.mode);
            }
        }
    }
}

fn decide(
    shared: &Shared,
    port: u16,
    bufs: &[[u8; 1500]],
    batch: &[(usize, super::socket::Arrival)],
    now: u64,
    out: &mut Vec<Pending>,
) {
    let mut registry = shared.registry.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(reserved) = registry.refresh() {
        if let Some(l) = &shared.leases {
            l.lock()
                .unwrap_or_else(|e| e.into_inner())
                .set_reserved(reserved);
        }
    }
    let mut leases = shared
        .leases
        .as_ref()
        .map(|l| l.lock().unwrap_or_else(|e| e.into_inner()));
    for (i, a) in batch {
        let Some(req) = bufs.get(*i).and_then(|b| Request::decode(b.get(..a.len)?)) else {
            continue;
        };
        METRICS.dhcp_requests.fetch_add(1, Relaxed);
        let node = registry.lookup(&req, now);
        if shared.params.mode == Mode::Full
            && matches!(req.msg_type, MessageType::Release | MessageType::Decline)
            && req.server_id().is_none_or(|id| id == shared.params.server)
        {
            // The address is no longer the node's: neither is the script
            // fetched from it.
            shared.grants.end_lease(&req.mac().to_string());
        }
        // In proxy mode bootd never learns the address a node will fetch
        // its script from: the boot URL carries a one-time token instead.
        let token = match (&node, shared.params.mode) {
            (NodeLookup::Known { .. }, Mode::Proxy) if req.is_ipxe() => {
                shared.grants.issue(&req.mac().to_string(), Instant::now())
            }
            _ => None,
        };
        let reply = handle_with_token(
            &req,
            port,
            a.from,
            &shared.params,
            leases.as_deref_mut(),
            &node,
            now,
            token.as_deref(),
        );
        tracing::debug!(mac = %req.mac(), kind = ?req.msg_type, ?node, mode = ?shared.params.mode, answered = reply.is_some(), "dhcp");
        if let Some(reply) = reply {
            out.push(Pending {
                reply,
                ifindex: a.ifindex,
                mac: req.mac().to_string(),
                ipxe: req.is_ipxe(),
            });
        }
    }
}

/// An ACK with an address (full mode, committed): the node may fetch its
/// script from that address for the lease's time.
fn grant_lease(shared: &Shared, p: &Pending) {
    let m = &p.reply.msg;
    if m.opts().msg_type() != Some(MessageType::Ack) || m.yiaddr().is_unspecified() {
        return;
    }
    let now = Instant::now();
    let until = now + Duration::from_secs(u64::from(shared.params.lease_secs));
    shared
        .grants
        .lease(&p.mac, std::net::IpAddr::V4(m.yiaddr()), until, now);
}

fn send(sock: &DhcpSocket, p: &Pending) {
    let Some(bytes) = p.reply.to_bytes() else {
        return;
    };
    let to = match p.reply.dest {
        Destination::Relay(a) | Destination::Unicast(a) => a,
        // Reaching a client without an address needs an ARP entry we do
        // not set; RFC 2131 4.1 allows broadcasting instead.
        Destination::Broadcast | Destination::UnicastHw { .. } => {
            SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)
        }
    };
    if let Err(e) = sock.send(&bytes, to, p.ifindex) {
        tracing::warn!(%to, mac = %p.mac, "dhcp send: {e}");
    }
}

fn count(r: &Reply, mode: Mode) {
    let kind = match r.msg.opts().msg_type() {
        Some(MessageType::Offer) => DhcpKind::Offer,
        Some(MessageType::Ack) => DhcpKind::Ack,
        Some(MessageType::Nak) => DhcpKind::Nak,
        _ => return,
    };
    METRICS.dhcp_sent(mode == Mode::Full, kind);
}

/// A boot offer the client will act on (the ACK in full mode, the proxy's
/// OFFER or ACK) is a boot stage of the node.
fn report(log: &BootLog, p: &Pending, mode: Mode) {
    let m = &p.reply.msg;
    let acted_on = matches!(
        (mode, m.opts().msg_type()),
        (_, Some(MessageType::Ack)) | (Mode::Proxy, Some(MessageType::Offer))
    );
    let Some(dhcproto::v4::DhcpOption::BootfileName(file)) = m.opts().get(OptionCode::BootfileName)
    else {
        return;
    };
    if !acted_on {
        return;
    }
    let stage = if p.ipxe { Stage::IpxeDhcp } else { Stage::Dhcp };
    // The token is a credential for one fetch: never in the boot log.
    let file = super::boot::redact(&String::from_utf8_lossy(file));
    let detail = if m.yiaddr().is_unspecified() {
        format!("{file} (proxy)")
    } else {
        format!("{file} to {}", m.yiaddr())
    };
    log.report(Who::Mac(p.mac.clone()), stage, detail);
}

/// Mode::Proxy listens on 4011 as well.
pub fn ports(mode: Mode) -> &'static [u16] {
    match mode {
        Mode::Proxy => &[super::SERVER_PORT, super::PXE_PORT],
        Mode::Full => &[super::SERVER_PORT],
    }
}
