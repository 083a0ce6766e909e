//! Full mode: addresses from the pool, boot files for registered nodes,
//! RFC 2131's destinations.

use super::*;

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
        let m = wire(&r)?;
        assert_eq!(
            boot_file(&m).as_deref(),
            Some("http://192.0.2.1:8080/boot.ipxe")
        );
        // no-pxedhcp: iPXE takes the offer without waiting for ProxyDHCP.
        assert_eq!(m.opts().get(175.into()), Some(&no_pxedhcp()));
    }
    // The firmware's own PXE ROM is told nothing of iPXE's options.
    let mut l = leases(Mem::default())?;
    let mut d = msg(MessageType::Discover, MAC);
    pxe(&mut d, 0);
    let r = run(&d, &params(Mode::Full), &mut l, &KNOWN)?.ok_or("no offer")?;
    assert_eq!(wire(&r)?.opts().get(175.into()), None);
    Ok(())
}

fn no_pxedhcp() -> DhcpOption {
    DhcpOption::Unknown(UnknownOption::new(175.into(), vec![176, 1, 1]))
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
        decode(&msg(MessageType::Discover, MAC))?.mac(),
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
