//! The DHCP drivers: the lease file, the boot directory, the interface
//! lookup and the UDP driver over real sockets. The decision itself is
//! tested in `bootd-dhcp`.

use super::binaries::BootDir;
use super::lease::{Lease, LeaseStore, Leases};
use super::lease_file::FileLeaseStore;
use super::reply::Reply;
use super::server::{handle, Mode, NodeLookup, Params};
use super::{Request, SERVER_PORT};
use bootd_plan::Mac;
use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};
use dhcproto::{Encodable, Encoder};
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
        binaries: None,
        relays: Vec::new(),
    }
}

fn msg(kind: MessageType, mac: [u8; 6]) -> Message {
    let u = Ipv4Addr::UNSPECIFIED;
    let mut m = Message::new_with_id(0x1234, u, u, u, u, &mac);
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    m
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

/// The boot directory is looked at per boot offer: a binary missing when
/// the first client asks is offered once the operator puts it there.
#[test]
fn a_binary_added_to_the_boot_directory_is_offered_at_the_next_request() -> R {
    let dir = tempfile::tempdir()?;
    let mut p = params(Mode::Proxy);
    p.binaries = Some(Arc::new(BootDir(dir.path().to_path_buf())));
    let mut d = msg(MessageType::Discover, MAC);
    d.opts_mut().insert(DhcpOption::ClassIdentifier(
        b"PXEClient:Arch:00007:UNDI:003016".to_vec(),
    ));
    d.opts_mut()
        .insert(DhcpOption::ClientSystemArchitecture(7.into()));
    let req = decode(&d)?;
    assert!(handle(&req, SERVER_PORT, src(), &p, None, &KNOWN, NOW).is_none());
    let name = bootd_ipxe::arch::binary_name(
        bootd_ipxe::arch::ClientArch::from_option93(7).ok_or("arch 7")?,
        p.efi,
    );
    std::fs::write(dir.path().join(name), b"ipxe")?;
    let r = handle(&req, SERVER_PORT, src(), &p, None, &KNOWN, NOW).ok_or("offer")?;
    let file = match r.msg.opts().get(OptionCode::BootfileName) {
        Some(DhcpOption::BootfileName(b)) => b.clone(),
        _ => return Err("no boot file".into()),
    };
    assert_eq!(file, name.as_bytes());
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
    // The file's text is each MAC's colon lower-case spelling, as before
    // leases were keyed by the Mac type.
    let (a, b) = (
        Mac::new([2, 0, 0, 0, 0, 0xa]),
        Mac::new([2, 0, 0, 0, 0, 0xb]),
    );
    let mut f = FileLeaseStore::new(path.clone());
    f.append(&[
        (a, Some(lease([192, 0, 2, 100], 5))),
        (b, Some(lease([192, 0, 2, 101], 6))),
    ])?;
    f.append(&[(a, Some(lease([192, 0, 2, 100], 9))), (b, None)])?;
    // A crash mid-append leaves half a line; cut inside the expiry, it
    // would still parse.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .and_then(|mut h| std::io::Write::write_all(&mut h, b"02:00:00:00:00:0a 192.0.2.100 1"))?;
    let mut again = FileLeaseStore::new(path.clone());
    let got = again.load()?;
    assert_eq!(got.len(), 1);
    assert_eq!(got.get(&a), Some(&lease([192, 0, 2, 100], 9)));
    assert_eq!(
        std::fs::read_to_string(&path)?,
        "02:00:00:00:00:0a 192.0.2.100 9\n"
    );
    Ok(())
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
    let dir = tempfile::tempdir()?;
    let server = super::socket::DhcpSocket::bind(0, None, Ipv4Addr::LOCALHOST)?;
    let port = server.local_port();
    let mut p = params(Mode::Full);
    p.server = Ipv4Addr::LOCALHOST;
    let shared = Arc::new(Shared {
        params: p,
        leases: Some(Mutex::new(Leases::open(
            (Ipv4Addr::new(192, 0, 2, 100), Ipv4Addr::new(192, 0, 2, 102)),
            Box::new(FileLeaseStore::new(dir.path().join("leases"))),
        )?)),
        ledger: None,
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
