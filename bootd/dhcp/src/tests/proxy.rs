//! Proxy mode: boot information only, for registered PXE clients.

use super::*;

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
fn proxy_ipxe_url_carries_the_token_and_full_mode_none() -> R {
    let p = params(Mode::Proxy);
    let mut d = msg(MessageType::Discover, MAC);
    pxe(&mut d, 7);
    d.opts_mut().insert(DhcpOption::UserClass(b"iPXE".to_vec()));
    let req = decode(&d)?;
    let r = crate::server::handle_with_token(
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
        req.mac().hyphenated()
    );
    assert_eq!(boot_file(&wire(&r)?).as_deref(), Some(want.as_str()));
    assert_eq!(
        crate::boot::redact(&want),
        format!(
            "http://192.0.2.1:8080/boot/{}.ipxe?t=…",
            req.mac().hyphenated()
        )
    );
    Ok(())
}

/// Which binaries exist is the caller's answer, asked once per boot offer
/// (the core touches no files): a binary the boot directory lacks is not
/// offered, one added later is offered at the next request, and iPXE's
/// script URL asks nothing.
#[test]
fn a_missing_binary_is_offered_once_it_appears() -> R {
    use crate::server::Binaries;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    #[derive(Debug, Default)]
    struct Dir {
        present: Mutex<Vec<String>>,
        asked: Mutex<Vec<String>>,
        count: AtomicUsize,
    }
    impl Binaries for Dir {
        fn has(&self, name: &str) -> bool {
            self.count.fetch_add(1, Relaxed);
            if let Ok(mut a) = self.asked.lock() {
                a.push(name.to_string());
            }
            self.present
                .lock()
                .is_ok_and(|p| p.iter().any(|n| n == name))
        }
    }
    let dir = Arc::new(Dir::default());
    let mut p = params(Mode::Proxy);
    p.binaries = Some(dir.clone());
    // arm64 UEFI: its iPXE build is missing.
    let mut d = msg(MessageType::Discover, MAC);
    pxe(&mut d, 11);
    let req = decode(&d)?;
    assert!(handle(&req, SERVER_PORT, src(), &p, None, &KNOWN, NOW).is_none());
    assert_eq!(dir.count.load(Relaxed), 1, "one question per boot offer");
    let name = dir.asked.lock().map_err(|_| "poisoned")?.clone();
    assert_eq!(name.len(), 1);
    dir.present
        .lock()
        .map_err(|_| "poisoned")?
        .push(name[0].clone());
    let r = handle(&req, SERVER_PORT, src(), &p, None, &KNOWN, NOW).ok_or("offer")?;
    assert_eq!(boot_file(&wire(&r)?), Some(name[0].clone()));
    assert_eq!(dir.count.load(Relaxed), 2);
    // Already iPXE: the script URL names no binary; nothing is asked.
    d.opts_mut().insert(DhcpOption::UserClass(b"iPXE".to_vec()));
    assert!(handle(&decode(&d)?, SERVER_PORT, src(), &p, None, &KNOWN, NOW).is_some());
    assert_eq!(dir.count.load(Relaxed), 2);
    Ok(())
}
