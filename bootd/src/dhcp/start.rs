//! DHCP for `serve`, in the shape of every driver: `bind` works out the
//! server's address and netmask, opens the lease table and binds the
//! sockets; `run(sockets, context, shutdown)` answers until the shutdown.

use super::binaries::BootDir;
use super::driver::{self, Shared};
use super::lease::Leases;
use super::ledger::{LeaseHome, Ledger};
use super::nodes::Nodes;
use super::server::{Mode, Params};
use super::socket::DhcpSocket;
use crate::events::Events;
use crate::fleet::enrol::Enroller;
use crate::fleet::FleetView;
use crate::serve::config::ServeConfig;
use crate::serve::grants::Grants;
use crate::service::Shutdown;
use anyhow::{bail, Context, Result};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// DHCP's sockets, lease table and settings: bound before serve says it
/// is ready, so a port that cannot be bound fails the start.
pub struct Bound {
    params: Params,
    leases: Option<Mutex<Leases>>,
    /// With leases in the PostgreSQL registry: its side of them.
    ledger: Option<Mutex<Ledger>>,
    sockets: Vec<DhcpSocket>,
    ra: Option<super::ra::Responder>,
    interface: String,
}

/// What the DHCP threads share besides their sockets.
pub struct DhcpContext {
    pub view: FleetView,
    pub enroller: Option<Enroller>,
    pub events: Events,
    pub grants: Arc<Grants>,
}

/// `None` with `--dhcp off`. `http_port` is the port actually bound.
pub fn bind(s: &ServeConfig, lease_home: LeaseHome, http_port: u16) -> Result<Option<Bound>> {
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
    let (leases, ledger) = match (mode, s.pool.map(|p| (p.first, p.last))) {
        (Mode::Full, Some(pool)) => {
            let (l, ledger) = super::ledger::open(&lease_home, pool)?;
            (Some(Mutex::new(l)), ledger.map(Mutex::new))
        }
        (Mode::Full, None) => bail!("--dhcp full needs --pool FIRST-LAST"),
        (Mode::Proxy, _) => (None, None),
    };
    let server = found.ip;
    let boot_dir = s
        .tftp_dir
        .clone()
        .unwrap_or_else(|| bootd_ipxe::arch::DEFAULT_BINARY_DIR.into());
    // Without --interface, the interface holding --listen-ip is the one served.
    let interface = s.interface.clone().unwrap_or(found.name);
    let mut sockets = Vec::new();
    for &port in driver::ports(mode) {
        sockets.push(
            DhcpSocket::bind(port, Some(&interface), server)
                .with_context(|| format!("cannot bind DHCP port {port} on {interface}"))?,
        );
    }
    let ra = match s.ipv6_ra(mode) {
        true => Some(super::ra::Responder::bind(&interface).with_context(|| {
            format!(
                "cannot answer IPv6 router solicitations on {interface} \
                 (--ipv6-ra off turns this off)"
            )
        })?),
        false => None,
    };
    tracing::info!(?mode, %server, %interface, unknown = ?s.unknown(), "DHCP serving");
    Ok(Some(Bound {
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
        ledger,
        sockets,
        ra,
        interface,
    }))
}

/// Answers on `bound`'s sockets (one blocking thread per socket: a batch
/// of datagrams shares one lease flush) until `shutdown`.
pub async fn run(bound: Bound, ctx: DhcpContext, mut shutdown: Shutdown) -> Result<()> {
    if let Some(l) = &bound.leases {
        seed_grants(l, &ctx.grants);
    }
    let shared = Arc::new(Shared {
        params: bound.params,
        leases: bound.leases,
        ledger: bound.ledger,
        nodes: Mutex::new(Nodes::new(ctx.view, ctx.enroller)),
        stop: Default::default(),
        events: ctx.events,
        grants: ctx.grants,
    });
    let mut threads = Vec::new();
    for sock in bound.sockets {
        let sh = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("dhcp-{}", sock.local_port()))
                .spawn(move || driver::run(sock, sh))
                .context("starting DHCP")?,
        );
    }
    if let Some(ra) = bound.ra {
        let sh = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("ipv6-ra".into())
                .spawn(move || ra.run(sh))
                .context("starting the router-advertisement responder")?,
        );
    }
    tracing::debug!(interface = %bound.interface, threads = threads.len(), "DHCP threads running");
    shutdown.wait().await;
    // Each thread sees the flag within its receive timeout.
    shared.stop.store(true, Ordering::Relaxed);
    tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    })
    .await
    .context("stopping the DHCP threads")
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
