//! Starts DHCP for `serve`: works out the server's address and netmask,
//! opens the lease table and runs one driver thread per port.

use super::driver::{self, Shared};
use super::lease::{FileLeaseStore, Leases};
use super::server::{Mode, Params};
use crate::serve::config::{DhcpMode, Settings};
use crate::store::Store;
use anyhow::{bail, Context, Result};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Lease time handed out in full mode.
const LEASE_SECS: u32 = 3600;

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
    s: &Settings,
    store: Box<dyn Store>,
    lease_file: PathBuf,
    http_port: u16,
) -> Result<Option<Running>> {
    let mode = match s.dhcp {
        DhcpMode::Off => return Ok(None),
        DhcpMode::Proxy => Mode::Proxy,
        DhcpMode::Full => Mode::Full,
    };
    let want = match s.listen_ip {
        IpAddr::V4(a) if !a.is_unspecified() => Some(a),
        IpAddr::V4(_) => None,
        IpAddr::V6(_) => bail!("DHCP needs an IPv4 --listen-ip"),
    };
    if want.is_none() && s.interface.is_none() {
        bail!("DHCP needs --interface or --listen-ip to know which network to answer on");
    }
    let (server, subnet_mask) = super::iface::find(s.interface.as_deref(), want)
        .context("listing interface addresses")?
        .with_context(|| {
            format!(
                "no IPv4 address {} on interface {}",
                want.map_or("at all".to_string(), |a| a.to_string()),
                s.interface.as_deref().unwrap_or("(any)")
            )
        })?;
    let leases = match (mode, s.pool) {
        (Mode::Full, Some(pool)) => Some(Mutex::new(
            Leases::open(pool, Box::new(FileLeaseStore::new(lease_file.clone())))
                .with_context(|| format!("reading leases {}", lease_file.display()))?,
        )),
        (Mode::Full, None) => bail!("--dhcp full needs --pool FIRST-LAST"),
        (Mode::Proxy, _) => None,
    };
    let shared = Arc::new(Shared {
        params: Params {
            mode,
            server,
            subnet_mask,
            // The boot network's gateway and resolver, when there are any,
            // are not known to bootd yet: clients get none.
            router: None,
            dns: Vec::new(),
            lease_secs: LEASE_SECS,
            http_port,
            tftp_server: server,
        },
        leases,
        store: Mutex::new(store),
        stop: Default::default(),
    });
    let mut threads = Vec::new();
    for &port in driver::ports(mode) {
        let sock = driver::bind(port, s.interface.as_deref())
            .with_context(|| format!("cannot bind DHCP port {port}"))?;
        let sh = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("dhcp-{port}"))
                .spawn(move || driver::run(sock, sh))
                .context("starting DHCP")?,
        );
    }
    tracing::info!(?mode, %server, %subnet_mask, "DHCP serving");
    Ok(Some(Running { shared, threads }))
}
