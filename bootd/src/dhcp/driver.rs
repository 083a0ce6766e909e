//! The UDP side: one blocking thread per port takes whatever datagrams are
//! waiting (up to a batch), asks [`super::handle`] about each, makes the
//! batch's lease changes durable with one disk flush, then sends the
//! replies. Under load many ACKs share one flush; alone, a request is
//! answered as soon as it is decided. The decision itself holds no sockets.

use super::lease::Leases;
use super::ledger::{Ledger, Verdict};
use super::nodes::Nodes;
use super::reply::{Destination, Reply};
use super::server::{handle_with_token, Mode, NodeLookup, Params};
use super::socket::DhcpSocket;
use super::{Request, CLIENT_PORT};
use crate::events::{BootOffer, DhcpKind, Event, Events};
use crate::serve::grants::Grants;
use bootd_plan::Mac;
use dhcproto::v4::{MessageType, OptionCode};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Decisions per request when the registry keeps refusing the address chosen.
const CLAIM_TRIES: usize = 8;

/// Datagrams decided before the lease changes are flushed and replies sent.
const BATCH: usize = 64;

/// Shared by the threads of one server.
pub struct Shared {
    pub params: Params,
    pub leases: Option<Mutex<Leases>>,
    /// Leases in the PostgreSQL registry (several servers): every address
    /// offered or ACKed is claimed there first.
    pub ledger: Option<Mutex<Ledger>>,
    pub nodes: Mutex<Nodes>,
    pub stop: AtomicBool,
    /// Requests decoded and replies sent, as boot events.
    pub events: Events,
    /// Who may fetch which node's script: tokens issued here, leases
    /// recorded here, checked by the HTTP server.
    pub grants: Arc<Grants>,
}

struct Pending {
    reply: Reply,
    ifindex: u32,
    mac: Mac,
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
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // Idle or busy, a server follows the others' leases.
        sync(&shared, now);
        if batch.is_empty() {
            continue;
        }
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
            emit(&shared.events, &p, shared.params.mode);
        }
    }
}

/// With leases in the registry: every server's leases into this server's
/// table (at most once a second), and the bound ones new since the last
/// time into the grants, so that any server admits any node's script fetch.
fn sync(shared: &Shared, now: u64) {
    let (Some(leases), Some(ledger)) = (&shared.leases, &shared.ledger) else {
        return;
    };
    let mut l = leases.lock().unwrap_or_else(|e| e.into_inner());
    let mut lg = ledger.lock().unwrap_or_else(|e| e.into_inner());
    let at = Instant::now();
    for (mac, ip, expires) in lg.sync(&mut l, now) {
        let left = Duration::from_secs(expires.saturating_sub(now));
        shared
            .grants
            .lease(&mac, std::net::IpAddr::V4(ip), at + left, at);
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
    let mut nodes = shared.nodes.lock().unwrap_or_else(|e| e.into_inner());
    let (snap, reserved) = nodes.refresh();
    if let Some(reserved) = reserved {
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
    let mut ledger = shared
        .ledger
        .as_ref()
        .map(|l| l.lock().unwrap_or_else(|e| e.into_inner()));
    for (i, a) in batch {
        let Some(req) = bufs.get(*i).and_then(|b| Request::decode(b.get(..a.len)?)) else {
            continue;
        };
        shared.events.emit(Event::DhcpRequest);
        let mac = req.mac();
        let node = nodes.lookup(&snap, &req, now);
        if shared.params.mode == Mode::Full
            && matches!(req.msg_type, MessageType::Release | MessageType::Decline)
            && req.server_id().is_none_or(|id| id == shared.params.server)
        {
            // The address is no longer the node's: neither is the script
            // fetched from it.
            shared.grants.end_lease(&mac);
            let ip = match req.msg_type {
                MessageType::Release => Some(req.msg.ciaddr()),
                _ => req.requested_ip(),
            };
            if let (Some(lg), Some(ip)) = (ledger.as_deref_mut(), ip) {
                match req.msg_type {
                    MessageType::Release => lg.release(mac, ip),
                    _ => lg.decline(mac, ip),
                }
            }
        }
        // In proxy mode bootd never learns the address a node will fetch
        // its script from: the boot URL carries a one-time token instead.
        let token = match (&node, shared.params.mode) {
            (NodeLookup::Known { .. }, Mode::Proxy) if req.is_ipxe() => {
                shared.grants.issue(&mac, Instant::now())
            }
            _ => None,
        };
        let mut reply = None;
        // A lost claim teaches the table who holds the address: the next
        // decision picks another (bounded: a pool raced for by many
        // servers sends the client round again instead).
        let mut looked_again = false;
        for _ in 0..CLAIM_TRIES {
            let decided = handle_with_token(
                &req,
                port,
                a.from,
                &shared.params,
                leases.as_deref_mut(),
                &node,
                now,
                token.as_deref(),
            );
            if let (false, Some(lg), Some(l)) =
                (looked_again, ledger.as_deref(), leases.as_deref_mut())
            {
                if lg.second_look(&req, &decided, l, &shared.params, now) {
                    looked_again = true;
                    continue;
                }
            }
            match (ledger.as_deref_mut(), leases.as_deref_mut()) {
                (Some(lg), Some(l)) => match lg.confirm(&req, decided, l, &shared.params, now) {
                    Verdict::Send(r) => {
                        reply = r;
                        break;
                    }
                    Verdict::Again => {}
                },
                _ => {
                    reply = decided;
                    break;
                }
            }
        }
        tracing::debug!(%mac, kind = ?req.msg_type, ?node, mode = ?shared.params.mode, answered = reply.is_some(), "dhcp");
        if let Some(reply) = reply {
            out.push(Pending {
                reply,
                ifindex: a.ifindex,
                mac,
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

/// A reply sent, and the boot file in it when the client will act on it
/// (the ACK in full mode, the proxy's OFFER or ACK): a boot stage.
fn emit(events: &Events, p: &Pending, mode: Mode) {
    let m = &p.reply.msg;
    let kind = match m.opts().msg_type() {
        Some(MessageType::Offer) => DhcpKind::Offer,
        Some(MessageType::Ack) => DhcpKind::Ack,
        Some(MessageType::Nak) => DhcpKind::Nak,
        _ => return,
    };
    let acted_on = matches!(
        (mode, kind),
        (_, DhcpKind::Ack) | (Mode::Proxy, DhcpKind::Offer)
    );
    // The token is a credential for one fetch: never in a boot event.
    let file = match m.opts().get(OptionCode::BootfileName) {
        Some(dhcproto::v4::DhcpOption::BootfileName(f)) if acted_on => {
            Some(super::boot::redact(&String::from_utf8_lossy(f)))
        }
        _ => None,
    };
    let leased = Some(m.yiaddr()).filter(|ip| !ip.is_unspecified());
    events.emit(Event::DhcpReply {
        full: mode == Mode::Full,
        kind,
        boot: file.as_deref().map(|file| BootOffer {
            mac: p.mac,
            ipxe: p.ipxe,
            file,
            leased,
        }),
    });
}

/// Mode::Proxy listens on 4011 as well.
pub fn ports(mode: Mode) -> &'static [u16] {
    match mode {
        Mode::Proxy => &[super::SERVER_PORT, super::PXE_PORT],
        Mode::Full => &[super::SERVER_PORT],
    }
}
