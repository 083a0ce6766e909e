//! Floating addresses (`serve --floating-ip`): while the host has one
//! (keepalived, pacemaker's IPaddr2 or an operator put it there; see
//! `peers::addrs`), serve answers iSCSI on it and publishes it as its
//! portal, so node scripts (and so the iBFT a node boots with) name the
//! address, not the machine. A bind that fails before the address arrives
//! is tried again when it does. When the address leaves, serve publishes
//! its own address again; connections through the floating one end by
//! themselves (its packets now reach another host), and its listener stays
//! bound for the address's return.

use super::addrs::Addrs;
use std::collections::{BTreeSet, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio::sync::watch;

/// The portal to publish: the first of `ips` the host has, on `port`;
/// else `own`.
pub fn portal(ips: &[IpAddr], host: &BTreeSet<IpAddr>, port: u16, own: SocketAddr) -> SocketAddr {
    ips.iter()
        .find(|ip| host.contains(ip))
        .map_or(own, |ip| SocketAddr::new(*ip, port))
}

/// Follows `addrs` until shutdown: listens on each of `ips` once it
/// arrives, publishes the portal on `tx`.
pub async fn run(
    server: Arc<iscsi_target::Server>,
    ips: Vec<IpAddr>,
    own: SocketAddr,
    mut addrs: Addrs,
    tx: watch::Sender<SocketAddr>,
    mut shutdown: crate::service::Shutdown,
) {
    let mut bound: HashSet<IpAddr> = HashSet::new();
    let mut held: HashSet<IpAddr> = HashSet::new();
    loop {
        let host = addrs.borrow_and_update().clone();
        for ip in &ips {
            let here = host.contains(ip);
            if here && !bound.contains(ip) {
                match tokio::net::TcpListener::bind(SocketAddr::new(*ip, own.port())).await {
                    Ok(l) => {
                        let s = server.clone();
                        tokio::spawn(async move {
                            if let Err(e) = s.serve(l).await {
                                tracing::error!("iSCSI on a floating address: {e}");
                            }
                        });
                        bound.insert(*ip);
                    }
                    // Tried again at the next change of the host's addresses.
                    Err(e) => {
                        tracing::warn!(address = %ip, "listening on the floating address: {e}")
                    }
                }
            }
            match (here, held.contains(ip)) {
                (true, false) => {
                    tracing::info!(address = %ip, "floating address arrived: answering iSCSI on it");
                    held.insert(*ip);
                }
                (false, true) => {
                    tracing::info!(address = %ip, "floating address left");
                    held.remove(ip);
                }
                _ => {}
            }
        }
        let now = portal(&ips, &host, own.port(), own);
        tx.send_if_modified(|p| {
            let changed = *p != now;
            *p = now;
            changed
        });
        tokio::select! {
            r = addrs.changed() => if r.is_err() { break },
            _ = shutdown.wait() => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_floating_address_held_is_the_portal() {
        let own: SocketAddr = "192.0.2.1:3260"
            .parse()
            .unwrap_or(SocketAddr::from(([0; 4], 0)));
        let a: IpAddr = [192, 0, 2, 50].into();
        let b: IpAddr = [192, 0, 2, 51].into();
        let mut host = BTreeSet::from([own.ip()]);
        assert_eq!(portal(&[a, b], &host, 3260, own), own);
        host.insert(b);
        assert_eq!(portal(&[a, b], &host, 3260, own), SocketAddr::new(b, 3260));
        host.insert(a);
        assert_eq!(portal(&[a, b], &host, 3260, own), SocketAddr::new(a, 3260));
    }
}
