//! The decision: which reply (if any) a request gets, in full or proxy mode.

use super::boot::{self, BootFile};
use super::lease::{Leases, OFFER_HOLD_SECS};
use super::reply::{self, Destination, Reply};
use super::{Request, PXE_PORT, SERVER_PORT};
use bootd_ipxe::arch::EfiFlavour;
use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode, UnknownOption};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// proxyDHCP: boot information only, beside the site's DHCP server.
    Proxy,
    /// Addresses from the pool, and boot information for registered nodes.
    Full,
}

/// What the server tells clients about itself and the network.
#[derive(Debug, Clone)]
pub struct Params {
    pub mode: Mode,
    /// The interface's address: server identifier, and the host in URLs.
    pub server: Ipv4Addr,
    pub subnet_mask: Ipv4Addr,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub lease_secs: u32,
    pub http_port: u16,
    pub tftp_server: Ipv4Addr,
    /// Which iPXE build x64 UEFI clients get.
    pub efi: EfiFlavour,
    /// When set, a binary it does not have is not offered (an arm64
    /// client gets nothing until the operator provides its build).
    pub binaries: Option<Arc<dyn Binaries>>,
    /// Relay agents (giaddr) answered; other relayed requests are dropped.
    pub relays: Vec<Ipv4Addr>,
}

/// Which iPXE binaries the boot directory holds, asked once per boot offer
/// (bootd's answer is one `stat`): a binary added while the server runs is
/// offered at the next request. The core itself touches no files.
pub trait Binaries: std::fmt::Debug + Send + Sync {
    fn has(&self, name: &str) -> bool;
}

/// The registry's answer for the request's MAC, looked up by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeLookup {
    /// Not registered: an address (full mode), never a boot file.
    Unknown,
    Known {
        static_ip: Option<Ipv4Addr>,
    },
}

/// PXE discovery control = 8 (boot file from this reply, no boot-server
/// discovery), then End: lets PXE ROMs accept a proxyDHCP offer.
const PXE_OPTION_43: [u8; 4] = [6, 1, 8, 255];

/// The reply to `req`, which arrived on `local_port` from `source`. Lease
/// changes are recorded in `leases`; the caller commits them before it
/// sends any reply.
pub fn handle(
    req: &Request,
    local_port: u16,
    source: SocketAddrV4,
    p: &Params,
    leases: Option<&mut Leases>,
    node: &NodeLookup,
    now: u64,
) -> Option<Reply> {
    handle_with_token(req, local_port, source, p, leases, node, now, None)
}

/// [`handle`], with a one-time script token for an iPXE client's boot URL
/// (proxy mode: the script's only proof of who fetches it).
#[allow(clippy::too_many_arguments)]
pub fn handle_with_token(
    req: &Request,
    local_port: u16,
    source: SocketAddrV4,
    p: &Params,
    leases: Option<&mut Leases>,
    node: &NodeLookup,
    now: u64,
    token: Option<&str>,
) -> Option<Reply> {
    let giaddr = req.msg.giaddr();
    // "Relayed" by our own address: forged, and the answer would go to
    // ourselves.
    if giaddr == p.server {
        return None;
    }
    // Only relays the operator named get answers: otherwise any host
    // could have us send replies to any address it writes into giaddr.
    if !giaddr.is_unspecified() && !p.relays.contains(&giaddr) {
        tracing::debug!(mac = %req.mac(), %giaddr, "relayed request from an unconfigured relay: dropped");
        return None;
    }
    match (p.mode, leases) {
        (Mode::Proxy, _) => proxy(req, local_port, source, p, node, token),
        // Full mode listens on the server port only, so any port will do.
        (Mode::Full, Some(leases)) => full(req, source, p, leases, node, now),
        (Mode::Full, None) => None,
    }
}

fn static_ip(node: &NodeLookup) -> Option<Ipv4Addr> {
    match node {
        NodeLookup::Known { static_ip } => *static_ip,
        NodeLookup::Unknown => None,
    }
}

fn full(
    req: &Request,
    source: SocketAddrV4,
    p: &Params,
    leases: &mut Leases,
    node: &NodeLookup,
    now: u64,
) -> Option<Reply> {
    let mac = req.mac();
    let ours = |id: Option<Ipv4Addr>| id.is_none_or(|id| id == p.server);
    match req.msg_type {
        MessageType::Discover => {
            let Some(ip) = leases.choose(mac, static_ip(node), req.requested_ip(), now) else {
                tracing::warn!(%mac, "DHCP pool exhausted");
                return None;
            };
            // Hold the address for the REQUEST without cutting a live lease short.
            let held = leases
                .get(mac)
                .filter(|l| l.ip == ip)
                .map_or(0, |l| l.expires);
            leases.bind(mac, ip, held.max(now + OFFER_HOLD_SECS), false);
            let mut m = reply::skeleton(req, MessageType::Offer, p.server);
            m.set_yiaddr(ip);
            network_options(&mut m, p, true);
            boot_options(&mut m, req, p, node, None);
            if req.is_ipxe() {
                no_proxy_wait(&mut m);
            }
            let dest = reply::destination(req, &m, false);
            Some(Reply { msg: m, dest })
        }
        MessageType::Request => {
            let ciaddr = req.msg.ciaddr();
            let want = match (req.server_id(), req.requested_ip()) {
                // The client took another server's offer.
                (Some(id), _) if id != p.server => return None,
                // SELECTING or INIT-REBOOT.
                (_, Some(r)) => r,
                // RENEWING or REBINDING.
                (None, None) if !ciaddr.is_unspecified() => ciaddr,
                (Some(_), None) if !ciaddr.is_unspecified() => ciaddr,
                _ => return None,
            };
            if leases.choose(mac, static_ip(node), Some(want), now) != Some(want) {
                return Some(reply::nak(req, p.server));
            }
            leases.bind(mac, want, now + u64::from(p.lease_secs), true);
            let mut m = reply::skeleton(req, MessageType::Ack, p.server);
            m.set_yiaddr(want);
            network_options(&mut m, p, true);
            boot_options(&mut m, req, p, node, None);
            let dest = reply::destination(req, &m, false);
            Some(Reply { msg: m, dest })
        }
        MessageType::Release if ours(req.server_id()) => {
            leases.release(mac, req.msg.ciaddr(), now);
            None
        }
        MessageType::Decline if ours(req.server_id()) => {
            if let Some(ip) = req.requested_ip() {
                tracing::warn!(%mac, %ip, "address declined: in use by another host");
                leases.decline(mac, ip, now);
            }
            None
        }
        MessageType::Inform => {
            let mut m = reply::skeleton(req, MessageType::Ack, p.server);
            network_options(&mut m, p, false);
            boot_options(&mut m, req, p, node, None);
            Some(Reply {
                dest: inform_destination(req, source),
                msg: m,
            })
        }
        _ => None,
    }
}

/// iPXE's encapsulated options (175) with `no-pxedhcp` (176) = 1: iPXE
/// otherwise holds an offer for up to three seconds waiting for a
/// ProxyDHCP offer that, with bootd as the network's DHCP server, never
/// comes (measured: the REQUEST went out 3.0 s after the OFFER).
fn no_proxy_wait(m: &mut Message) {
    const IPXE_ENCAP: u8 = 175;
    const NO_PXEDHCP: u8 = 176;
    m.opts_mut().insert(DhcpOption::Unknown(UnknownOption::new(
        OptionCode::from(IPXE_ENCAP),
        vec![NO_PXEDHCP, 1, 1],
    )));
}

/// INFORM and port-4011 answers go to the address the client already uses.
fn inform_destination(req: &Request, source: SocketAddrV4) -> Destination {
    let r = &req.msg;
    if !r.giaddr().is_unspecified() {
        Destination::Relay(SocketAddrV4::new(r.giaddr(), SERVER_PORT))
    } else if !r.ciaddr().is_unspecified() {
        Destination::Unicast(SocketAddrV4::new(r.ciaddr(), source.port()))
    } else if !source.ip().is_unspecified() {
        Destination::Unicast(source)
    } else {
        Destination::Broadcast
    }
}

fn proxy(
    req: &Request,
    local_port: u16,
    source: SocketAddrV4,
    p: &Params,
    node: &NodeLookup,
    token: Option<&str>,
) -> Option<Reply> {
    let pxe = req.vendor_class().starts_with(b"PXEClient");
    // UEFI HTTP boot takes a proxy offer too (the URL in option 67, vendor
    // class HTTPClient echoed); it never asks the boot-server port.
    let http = req.vendor_class().starts_with(b"HTTPClient");
    if !(pxe || http) || *node == NodeLookup::Unknown {
        return None;
    }
    let (kind, dest) = match (local_port, req.msg_type) {
        (SERVER_PORT, MessageType::Discover) => (MessageType::Offer, None),
        (PXE_PORT, MessageType::Request | MessageType::Inform) if pxe => {
            (MessageType::Ack, Some(inform_destination(req, source)))
        }
        _ => return None,
    };
    let mut m = reply::skeleton(req, kind, p.server);
    if !boot_options(&mut m, req, p, node, token) {
        return None;
    }
    let o = m.opts_mut();
    if pxe {
        o.insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
        o.insert(DhcpOption::VendorExtensions(PXE_OPTION_43.to_vec()));
    }
    // PXE clients look for their machine UUID (option 97) in the answer.
    if let Some(uuid) = req.opt(97) {
        o.insert(DhcpOption::ClientMachineIdentifier(uuid.to_vec()));
    }
    let dest = dest.unwrap_or_else(|| reply::destination(req, &m, false));
    Some(Reply { msg: m, dest })
}

fn network_options(m: &mut Message, p: &Params, lease: bool) {
    let o = m.opts_mut();
    o.insert(DhcpOption::SubnetMask(p.subnet_mask));
    if let Some(r) = p.router {
        o.insert(DhcpOption::Router(vec![r]));
    }
    if !p.dns.is_empty() {
        o.insert(DhcpOption::DomainNameServer(p.dns.clone()));
    }
    if lease {
        o.insert(DhcpOption::AddressLeaseTime(p.lease_secs));
        o.insert(DhcpOption::Renewal(p.lease_secs / 2));
        o.insert(DhcpOption::Rebinding(p.lease_secs / 8 * 7));
    }
}

/// Adds next-server, file and options 66/67 for a registered node; false
/// when there is nothing to boot (unknown MAC or unsupported arch).
fn boot_options(
    m: &mut Message,
    req: &Request,
    p: &Params,
    node: &NodeLookup,
    token: Option<&str>,
) -> bool {
    if *node == NodeLookup::Unknown {
        return false;
    }
    let Some(file) = boot::choose(req, p.server, p.http_port, p.efi, token) else {
        return false;
    };
    if let (Some(binaries), Some(name)) = (&p.binaries, file.binary()) {
        if !binaries.has(name) {
            tracing::debug!(mac = %req.mac(), name, "no such iPXE binary: no boot offer");
            return false;
        }
    }
    let name = match file {
        BootFile::Tftp(name) => {
            m.set_siaddr(p.tftp_server);
            m.opts_mut().insert(DhcpOption::TFTPServerName(
                p.tftp_server.to_string().into_bytes(),
            ));
            name
        }
        BootFile::Http { url, http_client } => {
            m.set_siaddr(p.server);
            if http_client {
                m.opts_mut()
                    .insert(DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()));
            }
            url
        }
    };
    // The file field holds 128 bytes; option 67 carries longer names alone.
    if name.len() < 128 {
        m.set_fname_str(&name);
    }
    m.opts_mut()
        .insert(DhcpOption::BootfileName(name.into_bytes()));
    true
}
