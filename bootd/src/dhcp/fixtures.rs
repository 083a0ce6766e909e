//! Requests captured from real firmware and busybox udhcpc
//! (`scripts/capture-dhcp-fixtures.sh`, bytes in `tests/fixtures/dhcp/`):
//! what they carry, what bootd decides for them, and the reply on the wire.

use super::boot::{self, BootFile};
use super::lease::{FileLeaseStore, Leases};
use super::reply::{Destination, Reply};
use super::server::{handle, Mode, NodeLookup, Params};
use super::{Request, PXE_PORT, SERVER_PORT};
use bootd_ipxe::arch::EfiFlavour;
use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

type R = Result<(), Box<dyn std::error::Error>>;
type E = Box<dyn std::error::Error>;

const SERVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// The capture script offered this address, so the REQUESTs ask for it.
const OFFERED: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
const HTTP_PORT: u16 = 8080;
const NOW: u64 = 1_000_000;
const KNOWN: NodeLookup = NodeLookup::Known { static_ip: None };
const SCRIPT_URL: &str = "http://192.0.2.1:8080/boot.ipxe";
/// PXE discovery control 8 (boot file from this reply), then End.
const OPTION_43: &[u8] = &[6, 1, 8, 255];

/// What bootd should tell the client to load.
#[derive(Debug, Clone, Copy)]
enum Boot {
    Tftp(&'static str),
    /// A URL, with vendor class `HTTPClient` echoed.
    HttpClient(&'static str),
    /// iPXE's script URL.
    Script,
    /// Nothing: a plain DHCP client (the node's OS) gets an address only.
    Nothing,
}

/// One captured datagram and what the client put in it.
struct Fixture {
    name: &'static str,
    text: &'static str,
    mac: [u8; 6],
    kind: MessageType,
    arch: Option<u16>,
    /// Option 60, exactly.
    vendor: &'static [u8],
    /// Option 77 is `iPXE`.
    user_class_ipxe: bool,
    /// iPXE's encapsulated option 175 is present.
    opt175: bool,
    /// Option 97: type 0, then the SMBIOS UUID as the firmware reads it.
    uuid: Option<[u8; 17]>,
    broadcast: bool,
    boot: Boot,
}

/// `-uuid b007d000-0000-4000-8000-00000000000N`: iPXE and EDK2 both send
/// SMBIOS byte order (first three fields little-endian).
const fn uuid(n: u8) -> [u8; 17] {
    [
        0, 0x00, 0xd0, 0x07, 0xb0, 0, 0, 0x00, 0x40, 0x80, 0, 0, 0, 0, 0, 0, n,
    ]
}

const IPXE_BIOS_MAC: [u8; 6] = [0x52, 0x54, 0, 0xb0, 0x07, 0x01];
const IPXE_EFI_MAC: [u8; 6] = [0x52, 0x54, 0, 0xb0, 0x07, 0x02];
const OVMF_MAC: [u8; 6] = [0x52, 0x54, 0, 0xb0, 0x07, 0x03];
const UDHCPC_MAC: [u8; 6] = [0x52, 0x54, 0, 0xb0, 0x07, 0x04];
const IPXE_BIOS_VC: &[u8] = b"PXEClient:Arch:00000:UNDI:002001";
const IPXE_EFI_VC: &[u8] = b"PXEClient:Arch:00007:UNDI:003010";
const UDHCP_VC: &[u8] = b"udhcp 1.35.0";

macro_rules! fixture {
    ($name:literal) => {
        (
            $name,
            include_str!(concat!("../../tests/fixtures/dhcp/", $name, ".hex")),
        )
    };
}

fn fixtures() -> Vec<Fixture> {
    use MessageType::{Discover, Request as Req};
    let f = |(name, text): (&'static str, &'static str),
             mac,
             kind,
             arch,
             vendor,
             ipxe: bool,
             uuid,
             broadcast,
             boot| Fixture {
        name,
        text,
        mac,
        kind,
        arch,
        vendor,
        user_class_ipxe: ipxe,
        // Only iPXE itself sends 175; udhcpc's iPXE imitation does not.
        opt175: ipxe && name.starts_with("ipxe-"),
        uuid,
        broadcast,
        boot,
    };
    let script = Boot::Script;
    vec![
        f(
            fixture!("ipxe-bios-discover"),
            IPXE_BIOS_MAC,
            Discover,
            Some(0),
            IPXE_BIOS_VC,
            true,
            Some(uuid(1)),
            false,
            script,
        ),
        f(
            fixture!("ipxe-bios-request"),
            IPXE_BIOS_MAC,
            Req,
            Some(0),
            IPXE_BIOS_VC,
            true,
            Some(uuid(1)),
            false,
            script,
        ),
        f(
            fixture!("ipxe-efi-discover"),
            IPXE_EFI_MAC,
            Discover,
            Some(7),
            IPXE_EFI_VC,
            true,
            Some(uuid(2)),
            false,
            script,
        ),
        f(
            fixture!("ipxe-efi-request"),
            IPXE_EFI_MAC,
            Req,
            Some(7),
            IPXE_EFI_VC,
            true,
            Some(uuid(2)),
            false,
            script,
        ),
        f(
            fixture!("ovmf-pxe-discover"),
            OVMF_MAC,
            Discover,
            Some(7),
            b"PXEClient:Arch:00007:UNDI:003000",
            false,
            Some(uuid(3)),
            true,
            Boot::Tftp("snponly.efi"),
        ),
        f(
            fixture!("ovmf-pxe-request"),
            OVMF_MAC,
            Req,
            Some(7),
            b"PXEClient:Arch:00007:UNDI:003000",
            false,
            Some(uuid(3)),
            true,
            Boot::Tftp("snponly.efi"),
        ),
        f(
            fixture!("ovmf-http-request"),
            OVMF_MAC,
            Req,
            Some(16),
            b"HTTPClient:Arch:00016:UNDI:003000",
            false,
            Some(uuid(3)),
            true,
            Boot::HttpClient("http://192.0.2.1:8080/ipxe/snponly.efi"),
        ),
        f(
            fixture!("ovmf-http-discover"),
            OVMF_MAC,
            Discover,
            Some(16),
            b"HTTPClient:Arch:00016:UNDI:003000",
            false,
            Some(uuid(3)),
            true,
            Boot::HttpClient("http://192.0.2.1:8080/ipxe/snponly.efi"),
        ),
        f(
            fixture!("udhcpc-pxe-discover"),
            UDHCPC_MAC,
            Discover,
            Some(0),
            b"PXEClient:Arch:00000",
            false,
            None,
            false,
            Boot::Tftp("undionly.kpxe"),
        ),
        f(
            fixture!("udhcpc-pxe-request"),
            UDHCPC_MAC,
            Req,
            Some(0),
            b"PXEClient:Arch:00000",
            false,
            None,
            false,
            Boot::Tftp("undionly.kpxe"),
        ),
        f(
            fixture!("udhcpc-ipxe-discover"),
            UDHCPC_MAC,
            Discover,
            None,
            UDHCP_VC,
            true,
            None,
            false,
            script,
        ),
        f(
            fixture!("udhcpc-ipxe-request"),
            UDHCPC_MAC,
            Req,
            None,
            UDHCP_VC,
            true,
            None,
            false,
            script,
        ),
        // No option 93 and no PXE vendor class: the node's OS, not its
        // firmware. It gets an address and no boot file.
        f(
            fixture!("udhcpc-plain-discover"),
            UDHCPC_MAC,
            Discover,
            None,
            UDHCP_VC,
            false,
            None,
            false,
            Boot::Nothing,
        ),
        f(
            fixture!("udhcpc-plain-request"),
            UDHCPC_MAC,
            Req,
            None,
            UDHCP_VC,
            false,
            None,
            false,
            Boot::Nothing,
        ),
    ]
}

/// The fixture file: a `# source:` header, then hex with any line breaks.
fn bytes(fx: &Fixture) -> Result<Vec<u8>, E> {
    let mut lines = fx.text.lines();
    let header = lines.next().ok_or("empty fixture")?;
    if !header.starts_with("# source: ")
        || !header.ends_with(", captured with scripts/capture-dhcp-fixtures.sh")
    {
        return Err(format!("{}: bad header {header:?}", fx.name).into());
    }
    let hex: String = lines
        .filter(|l| !l.starts_with('#'))
        .flat_map(|l| l.chars().filter(|c| !c.is_whitespace()))
        .collect();
    if !hex.len().is_multiple_of(2) {
        return Err(format!("{}: odd number of hex digits", fx.name).into());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| Ok(u8::from_str_radix(&hex[i..i + 2], 16)?))
        .collect()
}

fn decode(fx: &Fixture) -> Result<Request, E> {
    Request::decode(&bytes(fx)?).ok_or_else(|| format!("{} did not decode", fx.name).into())
}

/// Options of an encoded reply as they are on the wire, walked by hand
/// rather than by dhcproto; repeated codes concatenated.
fn wire_options(b: &[u8]) -> Result<BTreeMap<u8, Vec<u8>>, E> {
    if b.get(236..240) != Some(&[99, 130, 83, 99][..]) {
        return Err("no magic cookie".into());
    }
    let mut out: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
    let mut i = 240;
    loop {
        match b.get(i).copied() {
            Some(0) => i += 1,
            Some(255) => return Ok(out),
            Some(code) => {
                let len = usize::from(*b.get(i + 1).ok_or("truncated option")?);
                let data = b.get(i + 2..i + 2 + len).ok_or("truncated option")?;
                out.entry(code).or_default().extend_from_slice(data);
                i += 2 + len;
            }
            None => return Err("no End option".into()),
        }
    }
}

/// The pool the capture script offered from, in a lease file of its own.
fn leases(dir: &tempfile::TempDir) -> std::io::Result<Leases> {
    Leases::open(
        (OFFERED, Ipv4Addr::new(192, 0, 2, 102)),
        Box::new(FileLeaseStore::new(dir.path().join("leases"))),
    )
}

/// `handle`, then the lease commit the driver does before it sends.
fn ask(
    req: &Request,
    port: u16,
    source: SocketAddrV4,
    p: &Params,
    mut leases: Option<&mut Leases>,
    node: &NodeLookup,
) -> Result<Option<Reply>, E> {
    let r = handle(req, port, source, p, leases.as_deref_mut(), node, NOW);
    if let Some(l) = leases {
        l.commit()?;
    }
    Ok(r)
}

fn params(mode: Mode) -> Params {
    Params {
        mode,
        server: SERVER,
        subnet_mask: Ipv4Addr::new(255, 255, 255, 0),
        router: Some(SERVER),
        dns: vec![SERVER],
        lease_secs: 3600,
        http_port: HTTP_PORT,
        tftp_server: SERVER,
        efi: EfiFlavour::SnpOnly,
        boot_dir: None,
        relays: Vec::new(),
    }
}

fn from_client() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68)
}

/// The reply's bytes, checked for the fields every reply to `req` carries;
/// the options as on the wire, and as a client's dhcproto decodes them.
fn on_wire(r: &Reply, req: &Request) -> Result<(Message, BTreeMap<u8, Vec<u8>>), E> {
    let b = r.to_bytes().ok_or("reply did not encode")?;
    let m = Message::decode(&mut Decoder::new(&b))?;
    assert_eq!(b[0], 2, "BOOTREPLY");
    assert_eq!(m.xid(), req.msg.xid());
    assert_eq!(m.chaddr(), req.msg.chaddr());
    let o = wire_options(&b)?;
    assert_eq!(o.get(&54).map(Vec::as_slice), Some(&SERVER.octets()[..]));
    // Option 57 (udhcpc: 576) counts the IP and UDP headers too (28 bytes).
    if let Some(&[hi, lo]) = req.opt(57) {
        assert!(b.len() + 28 <= usize::from(u16::from_be_bytes([hi, lo])));
    }
    Ok((m, o))
}

/// Options 66/67, the file field and siaddr say what `boot` says, in the
/// raw bytes and through dhcproto alike.
fn assert_boot(name: &str, m: &Message, o: &BTreeMap<u8, Vec<u8>>, boot: Boot) {
    let (file, tftp) = match boot {
        Boot::Nothing => return assert_no_boot(name, m, o),
        Boot::Tftp(f) => (f.to_string(), true),
        Boot::HttpClient(u) => (u.to_string(), false),
        Boot::Script => (SCRIPT_URL.to_string(), false),
    };
    assert_eq!(o.get(&67), Some(&file.as_bytes().to_vec()), "{name}: 67");
    assert_eq!(
        m.opts().get(OptionCode::BootfileName),
        Some(&DhcpOption::BootfileName(file.as_bytes().to_vec())),
        "{name}"
    );
    let fname = m.fname().unwrap_or_default();
    let end = fname.iter().position(|&b| b == 0).unwrap_or(fname.len());
    assert_eq!(&fname[..end], file.as_bytes(), "{name}: file field");
    if tftp {
        assert_eq!(o.get(&66), Some(&b"192.0.2.1".to_vec()), "{name}: 66");
        assert_eq!(m.siaddr(), SERVER, "{name}: next-server");
    } else {
        assert_eq!(o.get(&66), None, "{name}: 66 for an HTTP boot");
        // iPXE takes a (proxy) offer only with next-server and a file name.
        assert_eq!(m.siaddr(), SERVER, "{name}: next-server with a URL");
    }
    if let Boot::HttpClient(_) = boot {
        assert_eq!(
            o.get(&60),
            Some(&b"HTTPClient".to_vec()),
            "{name}: 60 echoed"
        );
    }
}

fn assert_no_boot(name: &str, m: &Message, o: &BTreeMap<u8, Vec<u8>>) {
    assert_eq!(o.get(&67), None, "{name}: 67");
    assert_eq!(o.get(&66), None, "{name}: 66");
    assert_eq!(m.siaddr(), Ipv4Addr::UNSPECIFIED, "{name}: siaddr");
    assert!(
        m.fname().is_none_or(|f| f.iter().all(|&b| b == 0)),
        "{name}"
    );
}

#[test]
fn every_fixture_file_is_tested() -> R {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dhcp");
    let mut on_disk: Vec<String> = std::fs::read_dir(dir)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    on_disk.sort();
    let mut listed: Vec<String> = fixtures()
        .iter()
        .map(|f| format!("{}.hex", f.name))
        .collect();
    listed.sort();
    assert_eq!(on_disk, listed);
    Ok(())
}

#[test]
fn fixtures_decode_to_what_the_firmware_sent() -> R {
    for fx in fixtures() {
        let req = decode(&fx)?;
        let n = fx.name;
        assert_eq!(req.msg.chaddr(), &fx.mac[..], "{n}");
        assert_eq!(
            req.mac(),
            fx.mac
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":"),
            "{n}"
        );
        assert_eq!(req.msg_type, fx.kind, "{n}");
        assert_eq!(req.arch(), fx.arch, "{n}: option 93");
        assert_eq!(req.vendor_class(), fx.vendor, "{n}: option 60");
        assert_eq!(
            req.opt(77) == Some(&b"iPXE"[..]),
            fx.user_class_ipxe,
            "{n}: option 77"
        );
        assert_eq!(req.opt(175).is_some(), fx.opt175, "{n}: option 175");
        assert_eq!(req.is_ipxe(), fx.user_class_ipxe, "{n}");
        assert_eq!(req.opt(97), fx.uuid.as_ref().map(|u| &u[..]), "{n}: 97");
        assert_eq!(req.msg.flags().broadcast(), fx.broadcast, "{n}");
        assert_eq!(req.msg.ciaddr(), Ipv4Addr::UNSPECIFIED, "{n}");
        assert_eq!(req.msg.giaddr(), Ipv4Addr::UNSPECIFIED, "{n}");
        if fx.kind == MessageType::Request {
            // SELECTING: the offered address and the offering server.
            assert_eq!(req.requested_ip(), Some(OFFERED), "{n}");
            assert_eq!(req.server_id(), Some(SERVER), "{n}");
        } else {
            assert_eq!((req.requested_ip(), req.server_id()), (None, None), "{n}");
        }
        // What dhcproto makes of the same bytes agrees with the raw walk.
        assert_eq!(
            req.msg.opts().get(OptionCode::ClassIdentifier),
            Some(&DhcpOption::ClassIdentifier(fx.vendor.to_vec())),
            "{n}"
        );
    }
    Ok(())
}

/// iPXE's option 175 is encapsulated: sub-options of code, length, value.
#[test]
fn ipxe_option_175_is_well_formed_encapsulation() -> R {
    for fx in fixtures().iter().filter(|f| f.opt175) {
        let req = decode(fx)?;
        let mut enc = req.opt(175).ok_or("no 175")?;
        let mut codes = Vec::new();
        while let [code, len, rest @ ..] = enc {
            let len = usize::from(*len);
            assert!(rest.len() >= len, "{}: 175 sub-option {code} cut", fx.name);
            codes.push(*code);
            enc = &rest[len..];
        }
        assert!(enc.is_empty(), "{}: trailing bytes in 175", fx.name);
        // 177 (0xb1) is iPXE's bus id: PCI vendor 8086 device 100e (e1000).
        assert!(codes.contains(&177), "{}: {codes:?}", fx.name);
    }
    Ok(())
}

#[test]
fn boot_choice_per_fixture() -> R {
    for fx in fixtures() {
        let got = boot::choose(&decode(&fx)?, SERVER, HTTP_PORT, EfiFlavour::SnpOnly, None);
        let want = match fx.boot {
            Boot::Tftp(f) => Some(BootFile::Tftp(f.to_string())),
            Boot::HttpClient(u) => Some(BootFile::Http {
                url: u.to_string(),
                http_client: true,
            }),
            Boot::Script => Some(BootFile::Http {
                url: SCRIPT_URL.to_string(),
                http_client: false,
            }),
            Boot::Nothing => None,
        };
        assert_eq!(got, want, "{}", fx.name);
    }
    Ok(())
}

/// The captured exchanges replayed in full mode: a registered node gets the
/// offered address and its boot file in both OFFER and ACK; an unknown MAC
/// the address only.
#[test]
fn full_mode_offers_and_acks_the_captured_exchanges() -> R {
    let p = params(Mode::Full);
    for node in [KNOWN, NodeLookup::Unknown] {
        let all = fixtures();
        for disc in all.iter().filter(|f| f.kind == MessageType::Discover) {
            let dir = tempfile::tempdir()?;
            let mut l = leases(&dir)?;
            let n = disc.name;
            let req = decode(disc)?;
            let r = ask(&req, SERVER_PORT, from_client(), &p, Some(&mut l), &node)?
                .ok_or_else(|| format!("{n}: no offer"))?;
            let (m, o) = on_wire(&r, &req)?;
            assert_eq!(o.get(&53), Some(&vec![2]), "{n}: OFFER");
            assert_eq!(m.yiaddr(), OFFERED, "{n}");
            assert_eq!(o.get(&51), Some(&3600u32.to_be_bytes().to_vec()), "{n}");
            assert_eq!(o.get(&1), Some(&vec![255, 255, 255, 0]), "{n}");
            // OVMF asks for broadcast; iPXE and udhcpc take unicast to the MAC.
            let dest = if disc.broadcast {
                Destination::Broadcast
            } else {
                Destination::UnicastHw {
                    ip: OFFERED,
                    mac: disc.mac,
                }
            };
            assert_eq!(r.dest, dest, "{n}");
            // Full mode leaves out the proxyDHCP options; vendor class only
            // for HTTP boot.
            assert_eq!(o.get(&43), None, "{n}");
            if node == NodeLookup::Unknown || !matches!(disc.boot, Boot::HttpClient(_)) {
                assert_eq!(o.get(&60), None, "{n}");
            }
            match node {
                NodeLookup::Known { .. } => assert_boot(n, &m, &o, disc.boot),
                NodeLookup::Unknown => assert_no_boot(n, &m, &o),
            }
            // The client's own REQUEST for the offer, where captured.
            let rname = n.replace("-discover", "-request");
            let Some(rq) = all.iter().find(|f| f.name == rname) else {
                continue;
            };
            let req = decode(rq)?;
            let a = ask(&req, SERVER_PORT, from_client(), &p, Some(&mut l), &node)?
                .ok_or_else(|| format!("{rname}: no ack"))?;
            let (m, o) = on_wire(&a, &req)?;
            assert_eq!(o.get(&53), Some(&vec![5]), "{rname}: ACK");
            assert_eq!(m.yiaddr(), OFFERED, "{rname}");
            assert_eq!(a.dest, dest, "{rname}");
            assert_eq!(l.get(&req.mac()).map(|l| l.ip), Some(OFFERED), "{rname}");
            match node {
                NodeLookup::Known { .. } => assert_boot(&rname, &m, &o, rq.boot),
                NodeLookup::Unknown => assert_no_boot(&rname, &m, &o),
            }
        }
    }
    Ok(())
}

/// Proxy mode: PXEClient DISCOVERs of registered nodes get an OFFER without
/// an address, with vendor class PXEClient, option 43 and their UUID; the
/// REQUEST is answered on the boot-server port only. HTTPClient DISCOVERs
/// get an OFFER with the URL.
#[test]
fn proxy_mode_answers_registered_pxe_clients() -> R {
    let p = params(Mode::Proxy);
    for fx in fixtures() {
        let n = fx.name;
        let req = decode(&fx)?;
        let unknown = ask(
            &req,
            SERVER_PORT,
            from_client(),
            &p,
            None,
            &NodeLookup::Unknown,
        )?;
        assert!(unknown.is_none(), "{n}: unknown MAC answered");
        let on_67 = ask(&req, SERVER_PORT, from_client(), &p, None, &KNOWN)?;
        let pxe = fx.vendor.starts_with(b"PXEClient");
        if fx.vendor.starts_with(b"HTTPClient") {
            // UEFI HTTP boot takes the proxy's OFFER (URL, HTTPClient echoed,
            // no address, no option 43) and never asks port 4011.
            if fx.kind != MessageType::Discover {
                assert!(on_67.is_none(), "{n}: proxy answered a REQUEST on 67");
                continue;
            }
            let r = on_67.ok_or_else(|| format!("{n}: no offer"))?;
            let (m, o) = on_wire(&r, &req)?;
            assert_eq!(o.get(&53), Some(&vec![2]), "{n}: message type");
            assert_eq!(
                m.yiaddr(),
                Ipv4Addr::UNSPECIFIED,
                "{n}: proxy gave an address"
            );
            assert_eq!(o.get(&43), None, "{n}: 43 for HTTP boot");
            assert_boot(n, &m, &o, fx.boot);
            continue;
        }
        // Clients that are not PXE firmware get nothing here.
        if !pxe {
            assert!(on_67.is_none(), "{n}: not PXEClient, answered");
            continue;
        }
        let (r, kind) = match fx.kind {
            MessageType::Discover => (on_67.ok_or_else(|| format!("{n}: no offer"))?, 2),
            _ => {
                // The site's server acknowledges the REQUEST on port 67.
                assert!(on_67.is_none(), "{n}: proxy answered a REQUEST on 67");
                let from = SocketAddrV4::new(OFFERED, 68);
                let a = ask(&req, PXE_PORT, from, &p, None, &KNOWN)?
                    .ok_or_else(|| format!("{n}: no ack on {PXE_PORT}"))?;
                assert_eq!(a.dest, Destination::Unicast(from), "{n}");
                (a, 5)
            }
        };
        let (m, o) = on_wire(&r, &req)?;
        assert_eq!(o.get(&53), Some(&vec![kind]), "{n}: message type");
        assert_eq!(
            m.yiaddr(),
            Ipv4Addr::UNSPECIFIED,
            "{n}: proxy gave an address"
        );
        assert_eq!(o.get(&51), None, "{n}: proxy gave a lease");
        assert_eq!(o.get(&60), Some(&b"PXEClient".to_vec()), "{n}: 60");
        assert_eq!(o.get(&43).map(Vec::as_slice), Some(OPTION_43), "{n}: 43");
        assert_eq!(
            m.opts().get(OptionCode::VendorExtensions),
            Some(&DhcpOption::VendorExtensions(OPTION_43.to_vec())),
            "{n}"
        );
        assert_eq!(
            o.get(&97).map(Vec::as_slice),
            fx.uuid.as_ref().map(|u| &u[..]),
            "{n}: 97"
        );
        assert_boot(n, &m, &o, fx.boot);
    }
    Ok(())
}
