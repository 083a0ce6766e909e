//! Decisions on requests built as real clients send them.

use super::lease::{Change, FileLeaseStore, Lease, LeaseStore, Leases};
use super::reply::Destination;
use super::server::{handle, Mode, NodeLookup, Params};
use super::{reply::Reply, Request, PXE_PORT, SERVER_PORT};
use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, OptionCode, UnknownOption};
use dhcproto::{Encodable, Encoder};
use proptest::prelude::*;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex};

type R = Result<(), Box<dyn std::error::Error>>;

const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
const SERVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const NOW: u64 = 1_000_000;
const KNOWN: NodeLookup = NodeLookup::Known { static_ip: None };

fn params(mode: Mode) -> Params {
    Params {
        mode,
        server: SERVER,
        subnet_mask: Ipv4Addr::new(255, 255, 255, 0),
        router: Some(SERVER),
        dns: vec![SERVER],
        lease_secs: 3600,
        http_port: 8080,
        tftp_server: SERVER,
        efi: bootd_ipxe::arch::EfiFlavour::SnpOnly,
        boot_dir: None,
        relays: Vec::new(),
    }
}

/// Lease storage in memory, shared with the test so it can look inside.
#[derive(Clone, Default)]
struct Mem(Arc<Mutex<HashMap<String, Lease>>>);

impl Mem {
    fn load(&self) -> std::io::Result<HashMap<String, Lease>> {
        Ok(self
            .0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .clone())
    }
}

impl LeaseStore for Mem {
    fn load(&mut self) -> std::io::Result<HashMap<String, Lease>> {
        Mem::load(self)
    }
    fn append(&mut self, changes: &[Change]) -> std::io::Result<()> {
        let mut m = self
            .0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?;
        for (mac, lease) in changes {
            match lease {
                Some(l) => m.insert(mac.clone(), l.clone()),
                None => m.remove(mac),
            };
        }
        Ok(())
    }
    fn rewrite(&mut self, all: &HashMap<String, Lease>) -> std::io::Result<()> {
        *self
            .0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))? = all.clone();
        Ok(())
    }
}

fn leases(store: Mem) -> std::io::Result<Leases> {
    Leases::open(
        (Ipv4Addr::new(192, 0, 2, 100), Ipv4Addr::new(192, 0, 2, 102)),
        Box::new(store),
    )
}

fn msg(kind: MessageType, mac: [u8; 6]) -> Message {
    let u = Ipv4Addr::UNSPECIFIED;
    let mut m = Message::new_with_id(0x1234, u, u, u, u, &mac);
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    m
}

fn pxe(m: &mut Message, arch: u16) {
    m.opts_mut().insert(DhcpOption::ClassIdentifier(
        format!("PXEClient:Arch:{arch:05}:UNDI:002001").into_bytes(),
    ));
    m.opts_mut()
        .insert(DhcpOption::ClientSystemArchitecture(arch.into()));
}

fn decode(m: &Message) -> Result<Request, Box<dyn std::error::Error>> {
    let mut buf = Vec::new();
    m.encode(&mut Encoder::new(&mut buf))?;
    Request::decode(&buf).ok_or_else(|| "request did not decode".into())
}

fn src() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68)
}

fn run(
    m: &Message,
    p: &Params,
    l: &mut Leases,
    node: &NodeLookup,
) -> Result<Option<Reply>, Box<dyn std::error::Error>> {
    let r = handle(&decode(m)?, SERVER_PORT, src(), p, Some(&mut *l), node, NOW);
    // As the driver does before it sends anything.
    l.commit()?;
    Ok(r)
}

fn boot_file(m: &Message) -> Option<String> {
    match m.opts().get(OptionCode::BootfileName) {
        Some(DhcpOption::BootfileName(b)) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    }
}

/// The reply as a client decodes it off the wire.
fn wire(r: &Reply) -> Result<Message, Box<dyn std::error::Error>> {
    use dhcproto::{Decodable, Decoder};
    let b = r.to_bytes().ok_or("encode")?;
    Ok(Message::decode(&mut Decoder::new(&b))?)
}

#[test]
fn bios_discover_gets_address_and_undionly() -> R {
    let mut l = leases(Mem::default())?;
    let mut d = msg(MessageType::Discover, MAC);
    pxe(&mut d, 0);
    let r = run(&d, &params(Mode::Full), &mut l, &KNOWN)?.ok_or("no offer")?;
    let m = wire(&r)?;
    assert_eq!(m.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(m.yiaddr(), Ipv4Addr::new(192, 0, 2, 100));
    assert_eq!(m.siaddr(), SERVER);
    assert_eq!(boot_file(&m).as_deref(), Some("undionly.kpxe"));
    // dhcproto keeps the terminating NUL of the file field.
    assert_eq!(
        m.fname_str().ok_or("fname")??.trim_end_matches('\0'),
        "undionly.kpxe"
    );
    assert_eq!(
        m.opts().get(OptionCode::TFTPServerName),
        Some(&DhcpOption::TFTPServerName(b"192.0.2.1".to_vec()))
    );
    assert_eq!(
        m.opts().get(OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(SERVER))
    );
    assert_eq!(
        m.opts().get(OptionCode::AddressLeaseTime),
        Some(&DhcpOption::AddressLeaseTime(3600))
    );
    assert!(m.opts().get(OptionCode::SubnetMask).is_some());
    assert!(m.opts().get(OptionCode::Router).is_some());
    assert!(m.opts().get(OptionCode::DomainNameServer).is_some());
    // No broadcast bit, no ciaddr: unicast to the new address by MAC.
    assert_eq!(
        r.dest,
        Destination::UnicastHw {
            ip: m.yiaddr(),
            mac: MAC
        }
    );
    Ok(())
}

#[test]
fn uefi_x64_gets_snponly_and_arm64_its_binary() -> R {
    for (arch, file) in [
        (7, "snponly.efi"),
        (9, "snponly.efi"),
        (11, "snponly-arm64.efi"),
    ] {
        let mut l = leases(Mem::default())?;
        let mut d = msg(MessageType::Discover, MAC);
        pxe(&mut d, arch);
        d.set_flags(Flags::default().set_broadcast());
        let r = run(&d, &params(Mode::Full), &mut l, &KNOWN)?.ok_or("no offer")?;
        assert_eq!(boot_file(&r.msg).as_deref(), Some(file), "arch {arch}");
        assert_eq!(r.dest, Destination::Broadcast);
    }
    Ok(())
}

#[test]
fn http_client_gets_url_and_vendor_class_echoed() -> R {
    let mut l = leases(Mem::default())?;
    let mut d = msg(MessageType::Discover, MAC);
    d.opts_mut().insert(DhcpOption::ClassIdentifier(
        b"HTTPClient:Arch:00016:UNDI:003001".to_vec(),
    ));
    d.opts_mut()
        .insert(DhcpOption::ClientSystemArchitecture(16.into()));
    let r = run(&d, &params(Mode::Full), &mut l, &KNOWN)?.ok_or("no offer")?;
    let m = wire(&r)?;
    assert_eq!(
        boot_file(&m).as_deref(),
        Some("http://192.0.2.1:8080/ipxe/snponly.efi")
    );
    assert_eq!(
        m.opts().get(OptionCode::ClassIdentifier),
        Some(&DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()))
    );
    Ok(())
}

#[test]
fn ipxe_gets_script_url_by_user_class_or_option_175() -> R {
    for by_175 in [false, true] {
        let mut l = leases(Mem::default())?;
        let mut d = msg(MessageType::Discover, MAC);
        pxe(&mut d, 0);
        if by_175 {
            d.opts_mut().insert(DhcpOption::Unknown(UnknownOption::new(
                175.into(),
                vec![0xb1, 1, 1],
            )));
        } else {
            d.opts_mut().insert(DhcpOption::UserClass(b"iPXE".to_vec()));
        }
        let r = run(&d, &params(Mode::Full), &mut l, &KNOWN)?.ok_or("no offer")?;
        assert_eq!(
            boot_file(&wire(&r)?).as_deref(),
            Some("http://192.0.2.1:8080/boot.ipxe")
        );
    }
    Ok(())
}

#[test]
fn unknown_mac_gets_address_but_no_boot_file() -> R {
    let mut l = leases(Mem::default())?;
    let mut d = msg(MessageType::Discover, MAC);
    pxe(&mut d, 0);
    let r = run(&d, &params(Mode::Full), &mut l, &NodeLookup::Unknown)?.ok_or("no offer")?;
    assert_eq!(r.msg.yiaddr(), Ipv4Addr::new(192, 0, 2, 100));
    assert_eq!(boot_file(&r.msg), None);
    assert_eq!(r.msg.siaddr(), Ipv4Addr::UNSPECIFIED);
    assert!(r.msg.fname().is_none());
    Ok(())
}

#[test]
fn static_ip_and_same_mac_keeps_address() -> R {
    let store = Mem::default();
    let mut l = leases(store.clone())?;
    let p = params(Mode::Full);
    let fixed = Ipv4Addr::new(192, 0, 2, 50);
    let node = NodeLookup::Known {
        static_ip: Some(fixed),
    };
    let d = msg(MessageType::Discover, MAC);
    let r = run(&d, &p, &mut l, &node)?.ok_or("no offer")?;
    assert_eq!(r.msg.yiaddr(), fixed);
    let mut q = msg(MessageType::Request, MAC);
    q.opts_mut().insert(DhcpOption::RequestedIpAddress(fixed));
    q.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    let a = run(&q, &p, &mut l, &node)?.ok_or("no ack")?;
    assert_eq!(a.msg.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(a.msg.yiaddr(), fixed);

    // A pool client: offered, acknowledged, then the same address again.
    let other = [2, 0, 0, 0, 0, 9];
    let o = run(&msg(MessageType::Discover, other), &p, &mut l, &KNOWN)?.ok_or("offer")?;
    let ip = o.msg.yiaddr();
    let mut q = msg(MessageType::Request, other);
    q.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    q.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    run(&q, &p, &mut l, &KNOWN)?.ok_or("ack")?;
    let again = run(&msg(MessageType::Discover, other), &p, &mut l, &KNOWN)?.ok_or("offer")?;
    assert_eq!(again.msg.yiaddr(), ip);
    // A third MAC gets a different address.
    let third = run(
        &msg(MessageType::Discover, [2, 0, 0, 0, 0, 10]),
        &p,
        &mut l,
        &KNOWN,
    )?
    .ok_or("offer")?;
    assert_ne!(third.msg.yiaddr(), ip);
    Ok(())
}

#[test]
fn selecting_another_server_is_silent_and_wrong_address_is_naked() -> R {
    let mut l = leases(Mem::default())?;
    let p = params(Mode::Full);
    run(&msg(MessageType::Discover, MAC), &p, &mut l, &KNOWN)?.ok_or("offer")?;
    let mut q = msg(MessageType::Request, MAC);
    q.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(
            192, 0, 2, 100,
        )));
    q.opts_mut()
        .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(192, 0, 2, 9)));
    assert!(run(&q, &p, &mut l, &KNOWN)?.is_none());
    // INIT-REBOOT with an address from another network.
    let mut q = msg(MessageType::Request, MAC);
    q.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 5)));
    let n = run(&q, &p, &mut l, &KNOWN)?.ok_or("nak")?;
    assert_eq!(n.msg.opts().msg_type(), Some(MessageType::Nak));
    assert_eq!(n.msg.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(n.dest, Destination::Broadcast);
    Ok(())
}

#[test]
fn renew_is_unicast_to_ciaddr_and_extends_the_lease() -> R {
    let store = Mem::default();
    let mut l = leases(store.clone())?;
    let p = params(Mode::Full);
    let ip = Ipv4Addr::new(192, 0, 2, 100);
    l.bind(
        &decode(&msg(MessageType::Discover, MAC))?.mac(),
        ip,
        NOW + 10,
        true,
    );
    let mut q = msg(MessageType::Request, MAC);
    q.set_ciaddr(ip);
    let a = run(&q, &p, &mut l, &KNOWN)?.ok_or("ack")?;
    assert_eq!(a.msg.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(a.dest, Destination::Unicast(SocketAddrV4::new(ip, 68)));
    let saved = store.load()?;
    assert_eq!(saved.values().next().map(|l| l.expires), Some(NOW + 3600));
    // Renewing an address that is not the client's: NAK.
    let mut q = msg(MessageType::Request, MAC);
    q.set_ciaddr(Ipv4Addr::new(192, 0, 2, 101));
    let n = run(&q, &p, &mut l, &KNOWN)?.ok_or("nak")?;
    assert_eq!(n.msg.opts().msg_type(), Some(MessageType::Nak));
    Ok(())
}

#[test]
fn release_frees_the_address_for_others() -> R {
    let mut l = Leases::open(
        (Ipv4Addr::new(192, 0, 2, 100), Ipv4Addr::new(192, 0, 2, 100)),
        Box::new(Mem::default()),
    )?;
    let p = params(Mode::Full);
    let ip = Ipv4Addr::new(192, 0, 2, 100);
    let mut q = msg(MessageType::Request, MAC);
    q.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    run(&q, &p, &mut l, &KNOWN)?.ok_or("ack")?;
    let other = [2, 0, 0, 0, 0, 9];
    assert!(run(&msg(MessageType::Discover, other), &p, &mut l, &KNOWN)?.is_none());
    let mut rel = msg(MessageType::Release, MAC);
    rel.set_ciaddr(ip);
    rel.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    assert!(run(&rel, &p, &mut l, &KNOWN)?.is_none());
    let o = run(&msg(MessageType::Discover, other), &p, &mut l, &KNOWN)?.ok_or("offer")?;
    assert_eq!(o.msg.yiaddr(), ip);
    Ok(())
}

#[test]
fn decline_keeps_the_address_out_of_the_pool() -> R {
    let mut l = leases(Mem::default())?;
    let p = params(Mode::Full);
    let o = run(&msg(MessageType::Discover, MAC), &p, &mut l, &KNOWN)?.ok_or("offer")?;
    let bad = o.msg.yiaddr();
    let mut q = msg(MessageType::Request, MAC);
    q.opts_mut().insert(DhcpOption::RequestedIpAddress(bad));
    q.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    run(&q, &p, &mut l, &KNOWN)?.ok_or("ack")?;
    let mut dec = msg(MessageType::Decline, MAC);
    dec.opts_mut().insert(DhcpOption::RequestedIpAddress(bad));
    dec.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    assert!(run(&dec, &p, &mut l, &KNOWN)?.is_none());
    let o = run(&msg(MessageType::Discover, MAC), &p, &mut l, &KNOWN)?.ok_or("offer")?;
    assert_ne!(o.msg.yiaddr(), bad);
    Ok(())
}

#[test]
fn only_configured_relays_are_answered() -> R {
    let mut l = leases(Mem::default())?;
    let mut p = params(Mode::Full);
    p.relays = vec![Ipv4Addr::new(192, 0, 2, 254), SERVER];
    let mut d = msg(MessageType::Discover, MAC);
    // Our own address, even if configured: forged.
    d.set_giaddr(SERVER);
    assert!(run(&d, &p, &mut l, &KNOWN)?.is_none());
    d.set_giaddr(Ipv4Addr::new(192, 0, 2, 254));
    assert!(run(&d, &p, &mut l, &KNOWN)?.is_some());
    // Any other giaddr would make us send to an address of the sender's
    // choosing.
    d.set_giaddr(Ipv4Addr::new(198, 51, 100, 7));
    assert!(run(&d, &p, &mut l, &KNOWN)?.is_none());
    let mut proxy = params(Mode::Proxy);
    proxy.relays.clear();
    let mut pd = msg(MessageType::Discover, MAC);
    pxe(&mut pd, 0);
    assert!(handle(&decode(&pd)?, SERVER_PORT, src(), &proxy, None, &KNOWN, NOW).is_some());
    pd.set_giaddr(Ipv4Addr::new(192, 0, 2, 254));
    assert!(handle(&decode(&pd)?, SERVER_PORT, src(), &proxy, None, &KNOWN, NOW).is_none());
    Ok(())
}

#[test]
fn inform_gets_options_but_no_address_or_lease() -> R {
    let mut l = leases(Mem::default())?;
    let mut i = msg(MessageType::Inform, MAC);
    let ip = Ipv4Addr::new(192, 0, 2, 77);
    i.set_ciaddr(ip);
    let r = handle(
        &decode(&i)?,
        SERVER_PORT,
        SocketAddrV4::new(ip, 68),
        &params(Mode::Full),
        Some(&mut l),
        &KNOWN,
        NOW,
    )
    .ok_or("ack")?;
    assert_eq!(r.msg.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(r.msg.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert!(r.msg.opts().get(OptionCode::AddressLeaseTime).is_none());
    assert!(r.msg.opts().get(OptionCode::SubnetMask).is_some());
    assert_eq!(r.dest, Destination::Unicast(SocketAddrV4::new(ip, 68)));
    Ok(())
}

#[test]
fn relayed_request_goes_to_relay_with_option_82_echoed() -> R {
    use dhcproto::v4::relay::{RelayAgentInformation, RelayInfo};
    let mut l = leases(Mem::default())?;
    let mut d = msg(MessageType::Discover, MAC);
    let relay = Ipv4Addr::new(192, 0, 2, 254);
    d.set_giaddr(relay);
    let mut info = RelayAgentInformation::default();
    info.insert(RelayInfo::AgentCircuitId(b"port7".to_vec()));
    d.opts_mut()
        .insert(DhcpOption::RelayAgentInformation(info.clone()));
    let mut p = params(Mode::Full);
    p.relays = vec![relay];
    let r = run(&d, &p, &mut l, &KNOWN)?.ok_or("offer")?;
    assert_eq!(r.dest, Destination::Relay(SocketAddrV4::new(relay, 67)));
    let m = wire(&r)?;
    assert_eq!(m.giaddr(), relay);
    assert_eq!(
        m.opts().get(OptionCode::RelayAgentInformation),
        Some(&DhcpOption::RelayAgentInformation(info))
    );
    Ok(())
}

#[test]
fn proxy_answers_pxe_clients_only_without_address() -> R {
    let p = params(Mode::Proxy);
    let mut d = msg(MessageType::Discover, MAC);
    pxe(&mut d, 7);
    let r = handle(&decode(&d)?, SERVER_PORT, src(), &p, None, &KNOWN, NOW).ok_or("offer")?;
    let m = wire(&r)?;
    assert_eq!(m.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(m.siaddr(), SERVER);
    assert_eq!(boot_file(&m).as_deref(), Some("snponly.efi"));
    assert!(m.opts().get(OptionCode::AddressLeaseTime).is_none());
    assert_eq!(
        m.opts().get(OptionCode::ClassIdentifier),
        Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
    );
    assert_eq!(
        m.opts().get(OptionCode::VendorExtensions),
        Some(&DhcpOption::VendorExtensions(vec![6, 1, 8, 255]))
    );
    assert_eq!(r.dest, Destination::Broadcast);
    // The boot-server port: a REQUEST from the client's new address.
    let mut q = msg(MessageType::Request, MAC);
    pxe(&mut q, 7);
    let from = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 60), 68);
    q.set_ciaddr(*from.ip());
    let a = handle(&decode(&q)?, PXE_PORT, from, &p, None, &KNOWN, NOW).ok_or("ack")?;
    assert_eq!(a.msg.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(a.dest, Destination::Unicast(from));
    // Not PXE, or not registered: silence.
    let plain = msg(MessageType::Discover, MAC);
    assert!(handle(&decode(&plain)?, SERVER_PORT, src(), &p, None, &KNOWN, NOW).is_none());
    let unknown = NodeLookup::Unknown;
    assert!(handle(&decode(&d)?, SERVER_PORT, src(), &p, None, &unknown, NOW).is_none());
    Ok(())
}

#[test]
fn leases_survive_a_restart_in_the_file() -> R {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("dhcp-leases");
    let pool = (Ipv4Addr::new(192, 0, 2, 100), Ipv4Addr::new(192, 0, 2, 110));
    let p = params(Mode::Full);
    let mut ips = Vec::new();
    {
        let mut l = Leases::open(pool, Box::new(FileLeaseStore::new(path.clone())))?;
        for n in 0..3u8 {
            let mac = [2, 0, 0, 0, 0, n];
            let o = run(&msg(MessageType::Discover, mac), &p, &mut l, &KNOWN)?.ok_or("offer")?;
            let mut q = msg(MessageType::Request, mac);
            q.opts_mut()
                .insert(DhcpOption::RequestedIpAddress(o.msg.yiaddr()));
            run(&q, &p, &mut l, &KNOWN)?.ok_or("ack")?;
            ips.push(o.msg.yiaddr());
        }
    }
    let mut l = Leases::open(pool, Box::new(FileLeaseStore::new(path)))?;
    // What serve seeds the script grants with after a restart.
    let mut active: Vec<Ipv4Addr> = l.active(NOW).map(|(_, ip, _)| ip).collect();
    active.sort();
    assert_eq!(active, ips);
    assert_eq!(l.active(NOW + u64::from(p.lease_secs)).count(), 0);
    // Asked in reverse order, each MAC still gets its own address.
    for n in (0..3u8).rev() {
        let mac = [2, 0, 0, 0, 0, n];
        let o = run(&msg(MessageType::Discover, mac), &p, &mut l, &KNOWN)?.ok_or("offer")?;
        assert_eq!(o.msg.yiaddr(), ips[usize::from(n)]);
    }
    Ok(())
}

/// The log replays in order (a forgotten lease stays forgotten), survives a
/// torn last line, and is compacted when it is reopened.
#[test]
fn lease_log_replays_torn_tail_and_compacts() -> R {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("leases");
    let lease = |ip: [u8; 4], expires| Lease {
        ip: Ipv4Addr::from(ip),
        expires,
    };
    let mut f = FileLeaseStore::new(path.clone());
    f.append(&[
        ("a".into(), Some(lease([192, 0, 2, 100], 5))),
        ("b".into(), Some(lease([192, 0, 2, 101], 6))),
    ])?;
    f.append(&[
        ("a".into(), Some(lease([192, 0, 2, 100], 9))),
        ("b".into(), None),
    ])?;
    // A crash mid-append leaves half a line; cut inside the expiry, it
    // would still parse.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .and_then(|mut h| std::io::Write::write_all(&mut h, b"a 192.0.2.100 1"))?;
    let mut again = FileLeaseStore::new(path.clone());
    let got = again.load()?;
    assert_eq!(got.len(), 1);
    assert_eq!(got.get("a"), Some(&lease([192, 0, 2, 100], 9)));
    assert_eq!(std::fs::read_to_string(&path)?, "a 192.0.2.100 9\n");
    Ok(())
}

/// After a failed append (a fragment may be in the file), the next commit
/// rewrites the whole table instead of appending after the fragment.
#[test]
fn a_failed_append_is_repaired_by_a_rewrite() -> R {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
    #[derive(Clone, Default)]
    struct Flaky {
        mem: Mem,
        fail: Arc<AtomicBool>,
        rewrites: Arc<AtomicUsize>,
    }
    impl LeaseStore for Flaky {
        fn load(&mut self) -> std::io::Result<HashMap<String, Lease>> {
            Mem::load(&self.mem)
        }
        fn append(&mut self, changes: &[Change]) -> std::io::Result<()> {
            if self.fail.swap(false, Relaxed) {
                return Err(std::io::Error::other("disk full"));
            }
            self.mem.append(changes)
        }
        fn rewrite(&mut self, all: &HashMap<String, Lease>) -> std::io::Result<()> {
            self.rewrites.fetch_add(1, Relaxed);
            self.mem.rewrite(all)
        }
    }
    let store = Flaky::default();
    let mut l = Leases::open(
        (Ipv4Addr::new(192, 0, 2, 100), Ipv4Addr::new(192, 0, 2, 102)),
        Box::new(store.clone()),
    )?;
    let opened = store.rewrites.load(Relaxed);
    store.fail.store(true, Relaxed);
    l.bind("a", Ipv4Addr::new(192, 0, 2, 100), NOW + 60, true);
    assert!(l.commit().is_err(), "the failed append is reported");
    l.bind("b", Ipv4Addr::new(192, 0, 2, 101), NOW + 60, true);
    l.commit()?;
    assert_eq!(
        store.rewrites.load(Relaxed),
        opened + 1,
        "repaired by a rewrite"
    );
    let saved = Mem::load(&store.mem)?;
    assert_eq!(saved.len(), 2, "both leases durable: {saved:?}");
    // Then appends again.
    l.bind("c", Ipv4Addr::new(192, 0, 2, 102), NOW + 60, true);
    l.commit()?;
    assert_eq!(store.rewrites.load(Relaxed), opened + 1);
    assert_eq!(Mem::load(&store.mem)?.len(), 3);
    Ok(())
}

fn any_message() -> impl Strategy<Value = Vec<u8>> {
    (
        1u8..=8,
        any::<[u8; 6]>(),
        any::<u32>(),
        any::<u16>(),
        any::<[u8; 4]>(),
        any::<[u8; 4]>(),
        proptest::collection::vec(
            (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..8)),
            0..8,
        ),
    )
        .prop_map(|(kind, mac, ciaddr, arch, req, gi, extra)| {
            let mut m = msg(MessageType::from(kind), mac);
            m.set_ciaddr(Ipv4Addr::from(ciaddr));
            m.set_giaddr(Ipv4Addr::from(gi));
            pxe(&mut m, arch);
            m.opts_mut()
                .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::from(req)));
            let mut buf = Vec::new();
            let _ = m.encode(&mut Encoder::new(&mut buf));
            // Strip End and append raw options: arbitrary codes and lengths.
            buf.pop();
            for (code, data) in extra {
                buf.push(code);
                buf.push(data.len() as u8);
                buf.extend(data);
            }
            buf
        })
}

fn exercise(bytes: &[u8]) {
    let Some(req) = Request::decode(bytes) else {
        return;
    };
    let _ = req.mac();
    for mode in [Mode::Full, Mode::Proxy] {
        for port in [SERVER_PORT, PXE_PORT] {
            for node in [KNOWN, NodeLookup::Unknown] {
                let Ok(mut l) = leases(Mem::default()) else {
                    return;
                };
                if let Some(r) = handle(&req, port, src(), &params(mode), Some(&mut l), &node, NOW)
                {
                    assert!(r.to_bytes().is_some());
                }
            }
        }
    }
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        exercise(&bytes);
    }

    #[test]
    fn valid_ish_messages_never_panic(bytes in any_message()) {
        exercise(&bytes);
    }

    #[test]
    fn corrupted_messages_never_panic(
        bytes in any_message(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
    ) {
        let mut b = bytes;
        for (at, v) in flips {
            let n = b.len();
            if n > 0 {
                b[at % n] = v;
            }
        }
        exercise(&b);
    }
}

#[test]
fn loopback_address_and_mask_are_found() -> R {
    let found = super::iface::find(Some("lo"), None)?.ok_or("no lo")?;
    assert_eq!(
        (found.ip, found.netmask, found.name.as_str()),
        (Ipv4Addr::LOCALHOST, Ipv4Addr::new(255, 0, 0, 0), "lo")
    );
    assert_eq!(super::iface::find(Some("lo"), Some(SERVER))?, None);
    Ok(())
}

/// The driver over real sockets: an INFORM from 127.0.0.1 is answered at
/// the address and port it came from, and the thread stops on request.
#[test]
fn driver_answers_inform_over_udp() -> R {
    use super::driver::{run as drive, Shared};
    use super::nodes::Nodes;
    use std::sync::atomic::Ordering;
    let server = super::socket::DhcpSocket::bind(0, None, Ipv4Addr::LOCALHOST)?;
    let port = server.local_port();
    let mut p = params(Mode::Full);
    p.server = Ipv4Addr::LOCALHOST;
    let shared = Arc::new(Shared {
        params: p,
        leases: Some(Mutex::new(leases(Mem::default())?)),
        // An empty fleet.
        nodes: Mutex::new(Nodes::new(
            crate::fleet::FleetView::fixed(Default::default()),
            None,
        )),
        stop: Default::default(),
        events: Default::default(),
        grants: Default::default(),
    });
    let sh = shared.clone();
    let t = std::thread::spawn(move || drive(server, sh));
    let client = std::net::UdpSocket::bind("127.0.0.1:0")?;
    client.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let mut i = msg(MessageType::Inform, MAC);
    i.set_ciaddr(Ipv4Addr::LOCALHOST);
    let mut buf = Vec::new();
    i.encode(&mut Encoder::new(&mut buf))?;
    // Garbage first: it must be dropped without stopping the driver.
    client.send_to(&[1, 2, 3], ("127.0.0.1", port))?;
    client.send_to(&buf, ("127.0.0.1", port))?;
    let mut got = [0u8; 1500];
    let (n, _) = client.recv_from(&mut got)?;
    use dhcproto::{Decodable, Decoder};
    let m = Message::decode(&mut Decoder::new(&got[..n]))?;
    assert_eq!(m.xid(), 0x1234);
    assert_eq!(m.opts().msg_type(), Some(MessageType::Ack));
    // Unknown MAC (empty registry): no boot file.
    assert!(m.opts().get(OptionCode::BootfileName).is_none());
    shared.stop.store(true, Ordering::Relaxed);
    t.join().map_err(|_| "driver thread panicked")?;
    Ok(())
}

#[test]
fn proxy_ipxe_url_carries_the_token_and_full_mode_none() -> R {
    let p = params(Mode::Proxy);
    let mut d = msg(MessageType::Discover, MAC);
    pxe(&mut d, 7);
    d.opts_mut().insert(DhcpOption::UserClass(b"iPXE".to_vec()));
    let req = decode(&d)?;
    let r = super::server::handle_with_token(
        &req,
        SERVER_PORT,
        src(),
        &p,
        None,
        &KNOWN,
        NOW,
        Some("00ff"),
    )
    .ok_or("offer")?;
    let want = format!(
        "http://192.0.2.1:8080/boot/{}.ipxe?t=00ff",
        req.mac().replace(':', "-")
    );
    assert_eq!(boot_file(&wire(&r)?).as_deref(), Some(want.as_str()));
    assert_eq!(
        super::boot::redact(&want),
        format!(
            "http://192.0.2.1:8080/boot/{}.ipxe?t=…",
            req.mac().replace(':', "-")
        )
    );
    Ok(())
}

/// Found by `scripts/fuzz.sh` (bootd/fuzz, target dhcp): option 94 of length 3, later 94 of
/// length 0. dhcproto decodes each piece and asserted on the second (in
/// debug builds), which took the DHCP thread down with one datagram.
#[test]
fn a_repeated_option_of_a_bad_length_is_refused() {
    let d = include_bytes!("../../fuzz/seeds/dhcp/regress-option-94-twice");
    assert!(Request::decode(d).is_none());
}
