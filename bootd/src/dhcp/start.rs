//! Starts DHCP for `serve`: works out the server's address and netmask,
//! opens the lease table and runs one driver thread per port.

use super::binaries::BootDir;
use super::driver::{self, Shared};
use super::lease::Leases;
use super::lease_file::FileLeaseStore;
use super::nodes::Nodes;
use super::server::{Mode, Params};
use super::socket::DhcpSocket;
use crate::events::Events;
use crate::fleet::enrol::Enroller;
use crate::fleet::FleetView;
use crate::serve::config::ServeConfig;
use crate::serve::grants::Grants;
use anyhow::{bail, Context, Result};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

pub struct Running {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops the driver threads (each within its receive timeout).
    pub fn stop(self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// `None` with `--dhcp off`. `http_port` is the port actually bound.
pub fn start(
    s: &ServeConfig,
    view: FleetView,
    enroller: Option<Enroller>,
    lease_file: PathBuf,
    http_port: u16,
    events: Events,
    grants: Arc<Grants>,
) -> Result<Option<Running>> {
    let Some(mode) = s.dhcp() else {
        return Ok(None);
    };
    let want = match s.listen_ip() {
        IpAddr::V4(a) if !a.is_unspecified() => Some(a),
        IpAddr::V4(_) => None,
        IpAddr::V6(_) => bail!("DHCP needs an IPv4 --listen-ip"),
    };
    if want.is_none() && s.interface.is_none() {
        bail!("DHCP needs --interface or --listen-ip to know which network to answer on");
    }
    let found = super::iface::find(s.interface.as_deref(), want)
        .context("listing interface addresses")?
        .with_context(|| {
            format!(
                "no IPv4 address {} on interface {}",
                want.map_or("at all".to_string(), |a| a.to_string()),
                s.interface.as_deref().unwrap_or("(any)")
            )
        })?;
    let leases = match (mode, s.pool.map(|p| (p.first, p.last))) {
        (Mode::Full, Some(pool)) => Some(Mutex::new(
            Leases::open(pool, Box::new(FileLeaseStore::new(lease_file.clone())))
                .with_context(|| format!("reading leases {}", lease_file.display()))?,
        )),
        (Mode::Full, None) => bail!("--dhcp full needs --pool FIRST-LAST"),
        (Mode::Proxy, _) => None,
    };
    if let Some(l) = &leases {
        seed_grants(l, &grants);
    }
    let server = found.ip;
    let boot_dir = s
        .tftp_dir
        .clone()
        .unwrap_or_else(|| bootd_ipxe::arch::DEFAULT_BINARY_DIR.into());
    let shared = Arc::new(Shared {
        params: Params {
            mode,
            server,
            subnet_mask: found.netmask,
            router: s.router,
            dns: s.dns.clone(),
            lease_secs: s.lease_secs(),
            http_port,
            tftp_server: server,
            efi: s.efi(),
            binaries: Some(Arc::new(BootDir(boot_dir))),
            relays: s.relays.clone(),
        },
        leases,
        nodes: Mutex::new(Nodes::new(view, enroller)),
        stop: Default::default(),
        events,
        grants,
    });
    // Without --interface, the interface holding --listen-ip is the one served.
    let ifname = s.interface.clone().unwrap_or(found.name);
    let mut threads = Vec::new();
    for &port in driver::ports(mode) {
        let sock = DhcpSocket::bind(port, Some(&ifname), server)
            .with_context(|| format!("cannot bind DHCP port {port} on {ifname}"))?;
        let sh = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("dhcp-{port}"))
                .spawn(move || driver::run(sock, sh))
                .context("starting DHCP")?,
        );
    }
    if s.ipv6_ra(mode) {
        let ra = super::ra::Responder::bind(&ifname)
            .with_context(|| format!("cannot answer IPv6 router solicitations on {ifname} (--ipv6-ra off turns this off)"))?;
        let sh = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("ipv6-ra".into())
                .spawn(move || ra.run(sh))
                .context("starting the router-advertisement responder")?,
        );
    }
    tracing::info!(?mode, %server, interface = %ifname, unknown = ?s.unknown(), "DHCP serving");
    Ok(Some(Running { shared, threads }))
}

/// Leases from before a restart still admit their nodes' script fetches.
fn seed_grants(leases: &Mutex<Leases>, grants: &Grants) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let instant = std::time::Instant::now();
    let l = leases.lock().unwrap_or_else(|e| e.into_inner());
    for (mac, ip, expires) in l.active(now) {
        let left = std::time::Duration::from_secs(expires.saturating_sub(now));
        grants.lease(&mac, IpAddr::V4(ip), instant + left, instant);
    }
}
