//! `bootd serve --dhcp proxy` beside dnsmasq, the site's DHCP server, on one bridge.
//! A registered PXE machine's DISCOVER draws two offers: the site's with an address
//! and nothing to boot, bootd's with no address and the boot file (vendor class
//! `PXEClient`, option 43); its REQUEST to port 4011 is ACKed with the boot file,
//! which TFTP then serves. An unregistered machine hears nothing from bootd, and
//! udhcpc still gets its address from dnsmasq.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bootd_tests::dhcp_client::{self, Client, Message, ACK, DISCOVER, OFFER, REQUEST};
use bootd_tests::disk::noise;
use bootd_tests::dnsmasq::Dnsmasq;
use bootd_tests::netns::NetNs;
use bootd_tests::serve::ServeOptions;

use super::lab::{self, Lab, NIC, SERVER, SERVER_IP};

/// The site's DHCP server and the addresses it hands out.
const SITE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const SITE_RANGE: (Ipv4Addr, Ipv4Addr) =
    (Ipv4Addr::new(192, 0, 2, 50), Ipv4Addr::new(192, 0, 2, 60));
const SITE_MAC: &str = "52:54:00:e2:0c:fe";
const NODE_MAC: &str = "52:54:00:e2:0c:01";
const STRANGER_MAC: &str = "52:54:00:e2:0c:02";
const EFI_FILE: &str = "snponly.efi";
const BIOS_FILE: &str = "undionly.kpxe";
const PXE_PORT: u16 = 4011;
/// How long a client listens for every offer to one DISCOVER; firmware waits
/// seconds, and both servers here answer within milliseconds.
const OFFER_WINDOW: Duration = Duration::from_secs(2);
/// DISCOVERs sent while dnsmasq may still be starting.
const DISCOVER_TRIES: usize = 5;
/// The machine identity a PXE ROM sends (option 97: type 0, then a UUID).
const UUID: [u8; 17] = [
    0, 0x5e, 0xc0, 0x1d, 0xba, 0xd0, 0x4b, 0x1d, 0x9e, 0x2d, 0, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66,
];

#[test]
fn proxy_dhcp_beside_dnsmasq() -> Result<()> {
    let test = "proxy_dhcp_beside_dnsmasq";
    if !lab::can_run(test, &[("curl", "curl"), ("dnsmasq", "dnsmasq-base")]) {
        return Ok(());
    }
    let start = Instant::now();
    let lab = Lab::new()?;
    lab.data.add_node(NODE_MAC, "golden", "proxy1")?;
    let efi = noise(150_001, lab::fresh_seed()?);
    let tftp_dir = lab.dir.path().join("tftp");
    std::fs::create_dir(&tftp_dir)?;
    std::fs::write(tftp_dir.join(EFI_FILE), &efi)?;
    std::fs::write(tftp_dir.join(BIOS_FILE), b"not used here")?;

    let site_ns = lab.machine(SITE_MAC)?;
    site_ns.ip(&["addr", "add", &format!("{SITE}/24"), "dev", NIC])?;
    let range = (SITE_RANGE.0.to_string(), SITE_RANGE.1.to_string());
    let site = Dnsmasq::start(
        &site_ns,
        NIC,
        (&range.0, &range.1),
        lab.dir.path(),
        "dnsmasq",
    )?;
    let tftp_dir = tftp_dir.to_str().context("temp dir is not UTF-8")?;
    let opts = ServeOptions {
        netns: Some(&lab.server_ns),
        listen_ip: SERVER_IP.to_string(),
        extra: [
            "--dhcp",
            "proxy",
            "--interface",
            lab::BRIDGE,
            "--tftp-dir",
            tftp_dir,
            "--tftp-port",
            "69",
        ]
        .map(String::from)
        .to_vec(),
    };
    let serve = lab.data.serve_with(&opts)?;
    let logs = || format!("{}\n{}", serve.log(), site.log());
    let machine = lab.machine(NODE_MAC)?;

    // UEFI x64 PXE ROM of a registered node.
    let (site_offer, boot_offer) = both_offers(&machine, NODE_MAC, 7).with_context(logs)?;
    ensure!(
        (SITE_RANGE.0..=SITE_RANGE.1).contains(&site_offer.yiaddr)
            && site_offer.file.is_empty()
            && site_offer.opt(67).is_none(),
        "the site's offer should carry an address and no boot file: {site_offer:?}"
    );
    check_boot_reply(&boot_offer, OFFER, EFI_FILE).with_context(logs)?;
    let ip = take_site_lease(&machine, NODE_MAC, site_offer.yiaddr).with_context(logs)?;
    let ack = pxe_request(&machine, NODE_MAC, ip, 7).with_context(logs)?;
    check_boot_reply(&ack, ACK, EFI_FILE).with_context(logs)?;
    // What the firmware does next: load the file from next-server.
    let url = format!("tftp://{}/{EFI_FILE}", ack.siaddr);
    let (done, got) = lab.tftp_get(&machine, &url, &["--tftp-blksize", "1428"])?;
    ensure!(
        done.success() && got == efi,
        "{url}: {} bytes, {} served\n{done}\n{}",
        got.len(),
        efi.len(),
        logs()
    );
    println!(
        "proxy: {NODE_MAC} got {ip} from dnsmasq, {EFI_FILE} from bootd (offer, 4011 ACK, TFTP)"
    );

    // The same node's BIOS ROM gets the BIOS binary.
    lab::set_mac(&machine, NODE_MAC)?;
    let (_, bios) = both_offers(&machine, NODE_MAC, 0).with_context(logs)?;
    check_boot_reply(&bios, OFFER, BIOS_FILE).with_context(logs)?;

    // An unregistered PXE machine: the site's offer, nothing from bootd.
    lab::set_mac(&machine, STRANGER_MAC)?;
    let replies = discover(&machine, STRANGER_MAC, 0, 3)?;
    ensure!(
        replies.len() == 1 && replies[0].1.opt_ip(54) == Some(SITE),
        "an unregistered MAC should hear from dnsmasq only: {replies:?}\n{}",
        logs()
    );

    // A machine that is not PXE at all still gets its lease from the site.
    lab::set_mac(&machine, NODE_MAC)?;
    let lease = lab
        .udhcpc(&machine, "beside-proxy", &[])
        .with_context(logs)?;
    ensure!(
        lease.addr("serverid")? == SITE
            && (SITE_RANGE.0..=SITE_RANGE.1).contains(&lease.ip()?)
            && lease.boot_file()?.is_empty(),
        "udhcpc beside bootd's proxy: {lease:?}\n{}",
        logs()
    );
    let mut site = site;
    ensure!(site.running()?, "dnsmasq exited\n{}", site.log());
    serve.stop()?;
    println!(
        "proxy_dhcp_beside_dnsmasq: passed in {:.1}s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A fresh transaction id: replies to an earlier exchange cannot be mistaken for ours.
fn xid() -> u32 {
    lab::fresh_seed().map_or(0x2e2e_0000, |s| s as u32)
}

/// A PXE ROM's DISCOVER: vendor class and option 93 for `arch`, its NIC (94) and
/// machine identity (97), asking for the boot options.
fn pxe_discover(mac: [u8; 6], xid: u32, arch: u16) -> Message {
    Message::client(DISCOVER, mac, xid)
        .with(55, &[1, 3, 43, 60, 66, 67, 97])
        .with(
            60,
            format!("PXEClient:Arch:{arch:05}:UNDI:003016").as_bytes(),
        )
        .with(93, &arch.to_be_bytes())
        .with(94, &[1, 3, 16])
        .with(97, &UUID)
}

/// Broadcasts one PXE DISCOVER from `ns` and collects replies for the offer
/// window (at most `max`).
fn discover(ns: &NetNs, mac: &str, arch: u16, max: usize) -> Result<Vec<(SocketAddr, Message)>> {
    let mac = dhcp_client::parse_mac(mac)?;
    ns.run_inside(|| {
        let c = Client::bind(NIC)?;
        let xid = xid();
        c.broadcast(&pxe_discover(mac, xid, arch))?;
        c.replies(xid, OFFER_WINDOW, max)
    })
}

/// The site's offer and bootd's, told apart by server identifier.
fn both_offers(ns: &NetNs, mac: &str, arch: u16) -> Result<(Message, Message)> {
    let mut seen = Vec::new();
    for _ in 0..DISCOVER_TRIES {
        seen = discover(ns, mac, arch, 2)?;
        let from = |id| seen.iter().find(|(_, m)| m.opt_ip(54) == Some(id));
        if let (Some(site), Some(boot)) = (from(SITE), from(SERVER)) {
            ensure!(
                site.1.kind() == Some(OFFER),
                "dnsmasq answered a DISCOVER with {site:?}"
            );
            return Ok((site.1.clone(), boot.1.clone()));
        }
    }
    anyhow::bail!(
        "{DISCOVER_TRIES} DISCOVERs from {mac} (arch {arch}) did not draw offers from both \
         {SITE} (dnsmasq) and {SERVER} (bootd); the last drew {seen:?}"
    )
}

/// REQUESTs `offered` from the site (SELECTING) and puts the ACKed address on the
/// machine's interface, as the firmware's stack does.
fn take_site_lease(ns: &NetNs, mac: &str, offered: Ipv4Addr) -> Result<Ipv4Addr> {
    let mac = dhcp_client::parse_mac(mac)?;
    let ack = ns.run_inside(|| {
        let c = Client::bind(NIC)?;
        let xid = xid();
        c.broadcast(
            &Message::client(REQUEST, mac, xid)
                .with(50, &offered.octets())
                .with(54, &SITE.octets())
                .with(60, b"PXEClient:Arch:00007:UNDI:003016")
                .with(93, &[0, 7]),
        )?;
        c.replies(xid, OFFER_WINDOW, 1)
    })?;
    let ack = match ack.as_slice() {
        [(from, m)] if m.kind() == Some(ACK) && from.ip() == IpAddr::V4(SITE) => m,
        other => anyhow::bail!("REQUEST for {offered} to dnsmasq: {other:?}"),
    };
    ensure!(
        ack.yiaddr == offered,
        "dnsmasq ACKed {ack:?}, asked {offered}"
    );
    ns.ip(&["addr", "add", &format!("{offered}/24"), "dev", NIC])?;
    Ok(offered)
}

/// The PXE ROM's next step with a proxyDHCP offer: a REQUEST to the boot server's
/// port 4011 from its new address; bootd's answer.
fn pxe_request(ns: &NetNs, mac: &str, ip: Ipv4Addr, arch: u16) -> Result<Message> {
    let mac = dhcp_client::parse_mac(mac)?;
    let replies = ns.run_inside(|| {
        let c = Client::bind(NIC)?;
        let xid = xid();
        let mut req = pxe_discover(mac, xid, arch).with(53, &[REQUEST]);
        req.flags = 0;
        req.ciaddr = ip;
        c.send(&req, SocketAddrV4::new(SERVER, PXE_PORT))?;
        c.replies(xid, OFFER_WINDOW, 1)
    })?;
    match replies.as_slice() {
        [(from, m)] if from.ip() == IpAddr::V4(SERVER) => Ok(m.clone()),
        other => anyhow::bail!("REQUEST to {SERVER}:{PXE_PORT} from {ip}: {other:?}"),
    }
}

/// What a PXE ROM needs from a proxyDHCP reply to accept it: no address, vendor
/// class `PXEClient`, option 43 with discovery control (6) saying "boot file from
/// here", next-server and the boot file, its own UUID echoed.
fn check_boot_reply(m: &Message, kind: u8, file: &str) -> Result<()> {
    ensure!(
        m.kind() == Some(kind),
        "expected message type {kind}: {m:?}"
    );
    ensure!(
        m.yiaddr.is_unspecified(),
        "a proxy must not hand out addresses: {m:?}"
    );
    ensure!(
        m.opt_str(60) == "PXEClient",
        "option 60 is not PXEClient: {m:?}"
    );
    let o43 = m.opt(43).with_context(|| format!("no option 43: {m:?}"))?;
    ensure!(
        o43.windows(3).any(|w| w == [6, 1, 8]),
        "option 43 {o43:?} lacks PXE_DISCOVERY_CONTROL = 8 (boot file in this reply)"
    );
    ensure!(
        m.siaddr == SERVER,
        "next-server is {}, not {SERVER}: {m:?}",
        m.siaddr
    );
    ensure!(
        m.file_str() == file || m.opt_str(67) == file,
        "boot file is {:?} / option 67 {:?}, not {file}: {m:?}",
        m.file_str(),
        m.opt_str(67)
    );
    ensure!(
        m.opt(97) == Some(&UUID[..]),
        "the machine UUID (97) was not echoed: {m:?}"
    );
    Ok(())
}
