//! `bootd serve`: every node's overlay as LUN 0 of the node's own iSCSI
//! target, following registry changes without a restart, and each node's
//! iPXE script over HTTP.
//!
//! TFTP serves the iPXE binaries to PXE firmware; with `--dhcp proxy|full`,
//! DHCP (crate::dhcp) points the firmware at them.

pub mod config;
pub mod grants;
mod targets;

use crate::datadir::DataDir;
use crate::fleet::{Registry, Watcher};
use anyhow::{Context, Result};
use clap::Args;
use config::{DhcpMode, EfiBinary, FileConfig, ScriptAccess, Settings, UnknownPolicy};
use iscsi_target::{Server, ServerConfig};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

use crate::iotrace::IoRecorder;
use crate::metrics::METRICS;

/// Where iPXE scripts are served unless told otherwise.
const DEFAULT_HTTP_PORT: u16 = 8080;

/// Discovered MACs kept, and the registry size auto-registration stops at.
const DEFAULT_UNKNOWN_CAP: u32 = 256;

/// HTTP connections and TFTP transfers per client address.
const DEFAULT_PER_SOURCE: u32 = 16;

/// How often free space is checked, failed targets retried and the I/O
/// trace flushed (registry changes arrive from the fleet view at once).
const TICK: Duration = Duration::from_secs(1);

#[derive(Args)]
#[command(after_help = "\
Changes made with `bootd node|image` take effect within a second. \
`node reset` and `node rm` end the node's live sessions first: serve drops the \
node's target (closing its sessions) and its overlay, the CLI waits until the \
overlay is released, then replaces or deletes it.")]
pub struct ServeArgs {
    /// TOML file with any of: listen_ip, iscsi_port, dhcp, interface, pool,
    /// router, dns, lease_secs, http_port, tftp_port, tftp_dir, efi_binary,
    /// unknown, unknown_cap, record_io, relays, script_access, metrics_from,
    /// per_source, node_quota, reserve_free, warn_free (sizes as strings,
    /// e.g. "20G"). Unknown keys are an error. Flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Network interface DHCP answers on (SO_BINDTODEVICE); its IPv4
    /// address is the server address unless --listen-ip names one.
    #[arg(long)]
    interface: Option<String>,
    /// Address iSCSI, HTTP and TFTP listen on [default: the address of
    /// --interface]. One of the two is needed; 0.0.0.0 serves on every
    /// address of the machine.
    #[arg(long)]
    listen_ip: Option<IpAddr>,
    /// off, proxy (boot offers beside the site's DHCP server, ports 67 and
    /// 4011) or full (addresses from --pool too) [default: off].
    #[arg(long, value_enum)]
    dhcp: Option<DhcpMode>,
    /// Address pool for --dhcp full, FIRST-LAST.
    #[arg(long)]
    pool: Option<String>,
    /// Default gateway handed out with --dhcp full (option 3) [default: none].
    #[arg(long)]
    router: Option<Ipv4Addr>,
    /// DNS server handed out with --dhcp full (option 6); repeat for more.
    #[arg(long)]
    dns: Vec<Ipv4Addr>,
    /// Lease time in seconds for --dhcp full, at least 60 [default: 3600].
    #[arg(long)]
    lease_secs: Option<u32>,
    /// iPXE build for x64 UEFI clients: snponly (snponly.efi, the firmware's
    /// NIC driver) or ipxe (ipxe.efi, iPXE's own drivers) [default: snponly].
    #[arg(long, value_enum)]
    efi_binary: Option<EfiBinary>,
    /// PXE clients whose MAC is not registered: ignore (no boot offer),
    /// discover (recorded for `node list --discovered`, then `node adopt`)
    /// or default=TEMPLATE (registered from TEMPLATE and booted)
    /// [default: ignore].
    #[arg(long, value_name = "POLICY")]
    unknown: Option<String>,
    /// At most this many discovered MACs are recorded, and --unknown
    /// default=TEMPLATE registers no more nodes once the registry holds
    /// this many [default: 256].
    #[arg(long, value_name = "N")]
    unknown_cap: Option<u32>,
    /// A DHCP relay agent (giaddr) to answer; repeat for more. Relayed
    /// requests from any other giaddr are dropped [default: none].
    #[arg(long = "relay", value_name = "IP")]
    relays: Vec<Ipv4Addr>,
    /// Who gets a node's boot script, which carries its CHAP secret:
    /// bound (only the node: its leased or static address, or the one-time
    /// token in the boot URL bootd's DHCP gave it) or open (anyone)
    /// [default: bound].
    #[arg(long, value_enum)]
    script_access: Option<ScriptAccess>,
    /// HTTP connections and TFTP transfers one client address may hold at
    /// once [default: 16]. A machine needs one; raise it for load tests
    /// that play many machines from one address.
    #[arg(long, value_name = "N")]
    per_source: Option<u32>,
    /// An address that may read /metrics besides the server itself;
    /// repeat for more [default: none].
    #[arg(long, value_name = "IP")]
    metrics_from: Vec<IpAddr>,
    /// Record every node's reads, writes and flushes to DIR/NODE.trace
    /// (for bootd-storm to replay); off by default.
    #[arg(long, value_name = "DIR")]
    record_io: Option<PathBuf>,
    /// HTTP port for iPXE scripts (/boot.ipxe, /boot/MAC.ipxe) and, for
    /// UEFI HTTP boot, the iPXE binaries (/ipxe/NAME); 0 picks a free one
    /// [default: 8080]. A port that cannot be bound is an error.
    #[arg(long)]
    http_port: Option<u16>,
    /// TFTP port for PXE firmware; 0 picks a free one [default: 69].
    /// Port 69 needs root (or CAP_NET_BIND_SERVICE); failing to bind is an error.
    #[arg(long)]
    tftp_port: Option<u16>,
    /// Directory served over TFTP (read-only, octet mode; names cannot
    /// leave it) [default: /usr/lib/ipxe].
    #[arg(long)]
    tftp_dir: Option<PathBuf>,
    /// iSCSI port; 0 picks a free one [default: 3260].
    #[arg(long)]
    iscsi_port: Option<u16>,
    /// Most space one node's overlay may take (e.g. 20G); writes that
    /// need more fail with SPACE ALLOCATION FAILED [default: no limit].
    #[arg(long, value_name = "SIZE", value_parser = crate::space::parse_size)]
    node_quota: Option<u64>,
    /// Free space kept on the overlays' filesystem: writes that need new
    /// space fail below it, before the disk itself is full
    /// [default: 1% of the filesystem, at most 256M].
    #[arg(long, value_name = "SIZE", value_parser = crate::space::parse_size)]
    reserve_free: Option<u64>,
    /// Free space below which serve logs a warning and
    /// bootd_data_low_space is 1 [default: 10% of the filesystem, at most 10G].
    #[arg(long, value_name = "SIZE", value_parser = crate::space::parse_size)]
    warn_free: Option<u64>,
}

fn settings(args: &ServeArgs) -> Result<Settings> {
    let file = match &args.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let pool = args.pool.clone().or(file.pool);
    let unknown = match args.unknown.as_deref().or(file.unknown.as_deref()) {
        Some(p) => p.parse()?,
        None => UnknownPolicy::Ignore,
    };
    let lease_secs = args.lease_secs.or(file.lease_secs).unwrap_or(3600);
    let per_source = args
        .per_source
        .or(file.per_source)
        .unwrap_or(DEFAULT_PER_SOURCE);
    if per_source == 0 {
        return Err(config::ConfigError::PerSource(per_source).into());
    }
    if lease_secs < 60 {
        return Err(config::ConfigError::LeaseTime(lease_secs).into());
    }
    let interface = args.interface.clone().or(file.interface);
    let listen_ip = match (args.listen_ip.or(file.listen_ip), &interface) {
        (Some(ip), _) => ip,
        // The boot network's address, not every address of the machine:
        // the site's other networks never see bootd's ports.
        (None, Some(name)) => crate::dhcp::iface::find(Some(name), None)
            .with_context(|| format!("reading the address of {name}"))?
            .map(|f| IpAddr::V4(f.ip))
            .ok_or_else(|| config::ConfigError::NoAddress(name.clone()))?,
        (None, None) => return Err(config::ConfigError::NoNetwork.into()),
    };
    Ok(Settings {
        listen_ip,
        iscsi_port: args.iscsi_port.or(file.iscsi_port).unwrap_or(3260),
        dhcp: args.dhcp.or(file.dhcp).unwrap_or(DhcpMode::Off),
        interface,
        pool: pool.as_deref().map(config::parse_pool).transpose()?,
        http_port: args
            .http_port
            .or(file.http_port)
            .unwrap_or(DEFAULT_HTTP_PORT),
        tftp_port: args.tftp_port.or(file.tftp_port).unwrap_or(69),
        tftp_dir: args.tftp_dir.clone().or(file.tftp_dir),
        router: args.router.or(file.router),
        dns: if args.dns.is_empty() {
            file.dns.unwrap_or_default()
        } else {
            args.dns.clone()
        },
        lease_secs,
        efi: args
            .efi_binary
            .or(file.efi_binary)
            .unwrap_or(EfiBinary::Snponly)
            .into(),
        unknown,
        record_io: args.record_io.clone().or(file.record_io),
        relays: if args.relays.is_empty() {
            file.relays.unwrap_or_default()
        } else {
            args.relays.clone()
        },
        script_access: args
            .script_access
            .or(file.script_access)
            .unwrap_or(ScriptAccess::Bound),
        metrics_from: if args.metrics_from.is_empty() {
            file.metrics_from.unwrap_or_default()
        } else {
            args.metrics_from.clone()
        },
        unknown_cap: args
            .unknown_cap
            .or(file.unknown_cap)
            .unwrap_or(DEFAULT_UNKNOWN_CAP),
        per_source: usize::try_from(per_source).unwrap_or(usize::MAX),
        node_quota: size(args.node_quota, file.node_quota.as_deref())?,
        reserve_free: size(args.reserve_free, file.reserve_free.as_deref())?,
        warn_free: size(args.warn_free, file.warn_free.as_deref())?,
    })
}

/// A size from the command line, else from the config file.
fn size(flag: Option<u64>, file: Option<&str>) -> Result<Option<u64>> {
    match (flag, file) {
        (Some(n), _) => Ok(Some(n)),
        (None, Some(s)) => Ok(Some(crate::space::parse_size(s)?)),
        (None, None) => Ok(None),
    }
}

pub fn run(data_dir: &Path, args: ServeArgs) -> Result<()> {
    let s = settings(&args)?;
    if s.dhcp == DhcpMode::Off && (s.interface.is_some() || s.pool.is_some()) {
        tracing::warn!("--interface and --pool are not used with --dhcp off");
    }
    let dd = DataDir::open(data_dir)?;
    let _lock = dd.lock_serve()?;
    raise_open_file_limit();
    let mut store = dd.store()?;
    for name in crate::lifecycle::recover_releasing(&dd, store.as_mut())? {
        tracing::warn!(node = %name, "an interrupted command had left the node releasing; ready again");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(serve(s, dd, store))
}

async fn serve(s: Settings, dd: DataDir, store: Box<dyn crate::store::Store>) -> Result<()> {
    let server = Server::new(ServerConfig::default());
    // The one registry connection and the one fleet view every server reads.
    let registry = Registry::new(store);
    let (watcher, mut view) = Watcher::start(registry.clone())?;
    let watch_stop = Arc::new(AtomicBool::new(false));
    let watch_thread = {
        let (w, stop) = (watcher.clone(), watch_stop.clone());
        std::thread::Builder::new()
            .name("registry".into())
            .spawn(move || w.run(stop))
            .context("starting the registry watcher")?
    };
    let grants = Arc::new(grants::Grants::new());
    let bootlog = crate::bootlog::BootLog::start(registry.clone(), view.clone(), grants.clone())
        .context("starting the boot log")?;
    let recorder = match &s.record_io {
        Some(dir) => Some(Arc::new(
            IoRecorder::new(dir, 512).with_context(|| format!("--record-io {}", dir.display()))?,
        )),
        None => None,
    };
    server.observe(session_reporter(bootlog.clone(), recorder.clone()));
    server.observe_commands(command_counter(recorder.clone()));
    let tick_recorder = recorder.clone();
    // Beside the registry in the data directory's root.
    let lease_file = dd.overlays().with_file_name("dhcp-leases");
    let mut targets = targets::Targets::new(server.clone(), dd.clone()).with_space(
        s.node_quota,
        s.reserve_free,
        s.warn_free,
    )?;
    targets.tick(&view.current()).await;
    let addr = SocketAddr::new(s.listen_ip, s.iscsi_port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    let http_listener = bind_http(&s).await?;
    let boot_files = crate::tftp::open_root(s.tftp_dir.as_deref())?;
    let (tftp_socket, tftp) = crate::tftp::bind(
        SocketAddr::new(s.listen_ip, s.tftp_port),
        boot_files.clone(),
        s.per_source,
    )
    .await?;
    let tftp_local = tftp_socket.local_addr()?;
    let tftp = tftp.with_bootlog(bootlog.clone());
    // Handlers go in before the ready line: a SIGTERM right after it must
    // still shut down cleanly.
    let signal = crate::service::signal()?;
    let (trigger, shutdown) = crate::service::channel();
    let trigger = Arc::new(trigger);
    // Ready lines on stdout so scripts can wait for them and learn the
    // ports; one write, so a reader that takes only the first line still gets
    // both in one read and never closes the pipe between them.
    let http_local = http_listener.local_addr()?;
    let enroller = match (&s.dhcp, &s.unknown) {
        (DhcpMode::Off, _) | (_, UnknownPolicy::Ignore) => None,
        (_, policy) => {
            if let UnknownPolicy::Default(template) = policy {
                // Refuse a template that does not exist now, not at the first boot.
                registry.with(|r| r.template(template))?;
            }
            Some(crate::fleet::enrol::start(
                policy.clone(),
                s.unknown_cap,
                dd.clone(),
                registry.clone(),
                watcher.clone(),
            )?)
        }
    };
    let dhcp = crate::dhcp::start(
        &s,
        view.clone(),
        enroller,
        lease_file,
        http_local.port(),
        bootlog.clone(),
        grants.clone(),
    )?;
    let lines = format!("iscsi {local}\nhttp {http_local}\ntftp {tftp_local}\n");
    let http = crate::http::HttpServer::new(
        view.clone(),
        boot_files,
        http_local.port(),
        local.port(),
        Some(bootlog),
        crate::http::Access {
            scripts: s.script_access,
            grants,
            metrics_from: s.metrics_from.clone(),
            per_source: s.per_source,
        },
    );
    let mut out = std::io::stdout().lock();
    out.write_all(lines.as_bytes())?;
    out.flush()?;
    drop(out);
    tracing::info!(listen = %local, nodes = targets.len(), "serving");

    // Registry changes reach the targets as they come; the timer checks
    // free space, retries failed targets and flushes the I/O trace.
    let mut stop = shutdown.clone();
    let reconciler = tokio::spawn(async move {
        let mut timer = tokio::time::interval(TICK);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = timer.tick() => {
                    if let Some(r) = &tick_recorder {
                        r.flush(false);
                    }
                }
                alive = view.changed() => {
                    if !alive {
                        break;
                    }
                }
                _ = stop.wait() => break,
            }
            targets.tick(&view.current()).await;
        }
        targets
    });

    // Every server is a driver in one set with the one shutdown; the first
    // to fail stops the others.
    let mut drivers: JoinSet<(&'static str, Result<()>)> = JoinSet::new();
    let sd = shutdown.clone();
    drivers.spawn(async move {
        tftp.serve(tftp_socket, sd).await;
        ("tftp", Ok(()))
    });
    let sd = shutdown.clone();
    drivers.spawn(async move {
        http.serve(http_listener, sd).await;
        ("http", Ok(()))
    });
    if let Some(d) = dhcp {
        let mut sd = shutdown.clone();
        drivers.spawn(async move {
            sd.wait().await;
            let stopped = tokio::task::spawn_blocking(move || d.stop()).await;
            ("dhcp", stopped.context("DHCP threads"))
        });
    }
    let (srv, mut sd) = (server.clone(), shutdown.clone());
    drivers.spawn(async move {
        // The iSCSI server drains its sessions and flushes its LUNs on its
        // own shutdown, which follows the one shutdown.
        let stopper = tokio::spawn(async move {
            sd.wait().await;
            srv.shutdown();
        });
        let served = server.serve(listener).await;
        stopper.abort();
        ("iscsi", served.map_err(Into::into))
    });
    let on_signal = trigger.clone();
    tokio::spawn(async move {
        signal.await;
        tracing::info!("shutting down");
        on_signal.fire();
    });
    let mut failed = None;
    while let Some(done) = drivers.join_next().await {
        let (name, result) = done.context("a server task panicked")?;
        if let Err(e) = result {
            tracing::error!("{name}: {e:#}");
            failed.get_or_insert(e.context(name));
        }
        if !shutdown.started() {
            // A server ended on its own: nothing should run half a server.
            tracing::warn!("{name} stopped; shutting down");
            trigger.fire();
        }
    }
    let mut targets = reconciler.await.context("target reconciler")?;
    watch_stop.store(true, Relaxed);
    let _ = tokio::task::spawn_blocking(move || watch_thread.join()).await;
    let unflushed = targets.close_all().await;
    if let Some(r) = &recorder {
        r.flush(true);
    }
    if let Some(e) = failed {
        return Err(e);
    }
    if unflushed > 0 {
        // Logged per node above; the exit status tells scripts too.
        anyhow::bail!("{unflushed} overlay(s) could not be flushed at shutdown");
    }
    tracing::info!("overlays flushed; bye");
    Ok(())
}

/// Every node holds an overlay, a golden image and sessions open, and
/// every client a socket: the soft limit on descriptors (often 1024) goes
/// up to the hard one, so a busy fleet is not refused for want of them.
fn raise_open_file_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into `lim`, which lives through the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        tracing::warn!(
            "reading the open-file limit: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    if lim.rlim_cur >= lim.rlim_max {
        return;
    }
    let was = lim.rlim_cur;
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: setrlimit reads `lim`; raising the soft limit up to the hard
    // one needs no privilege.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        tracing::warn!(
            "raising the open-file limit: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    tracing::debug!(from = was, to = lim.rlim_max, "open-file limit raised");
}

/// iSCSI logins and logouts as boot stages; the ISID comes first in the
/// detail so that a logout is matched with its login.
fn session_reporter(
    log: crate::bootlog::BootLog,
    recorder: Option<Arc<IoRecorder>>,
) -> iscsi_target::SessionObserver {
    use crate::bootlog::{Stage, Who};
    use iscsi_target::SessionEvent;
    Arc::new(move |ev: &SessionEvent| {
        let (target, stage, detail) = match ev {
            SessionEvent::LoggedIn {
                initiator,
                target,
                isid,
                peer,
            } => {
                METRICS.iscsi_logins.fetch_add(1, Relaxed);
                let d = format!("{} {initiator} from {peer}", hex::encode(isid));
                (target, Stage::IscsiLogin, d)
            }
            SessionEvent::Ended {
                target,
                isid,
                reason,
                ..
            } => {
                METRICS.iscsi_ends.fetch_add(1, Relaxed);
                (
                    target,
                    Stage::IscsiLogout,
                    format!("{} {reason}", hex::encode(isid)),
                )
            }
        };
        if let Some(r) = &recorder {
            let what = if stage == Stage::IscsiLogin {
                "login"
            } else {
                "logout"
            };
            r.note(target, &format!("{what} {detail}"));
        }
        log.report(Who::Target(target.clone()), stage, detail);
    })
}

/// Per-node counters and latency for /metrics, and the I/O trace when asked.
fn command_counter(recorder: Option<Arc<IoRecorder>>) -> iscsi_target::CommandObserver {
    use iscsi_proto::scsi::cdb::{block_io, BlockIo};
    Arc::new(move |c: &iscsi_target::CommandDone<'_>| {
        let node = METRICS.node(c.target);
        let io = block_io(c.cdb);
        match io {
            Some(BlockIo::Read { .. }) => {
                node.reads.fetch_add(1, Relaxed);
                METRICS.read_latency.observe(c.elapsed);
            }
            Some(BlockIo::Write { .. }) => {
                node.writes.fetch_add(1, Relaxed);
                METRICS.write_latency.observe(c.elapsed);
            }
            _ => {
                node.other.fetch_add(1, Relaxed);
            }
        }
        node.read_bytes.fetch_add(c.data_in, Relaxed);
        node.write_bytes.fetch_add(c.data_out, Relaxed);
        if !c.good {
            node.errors.fetch_add(1, Relaxed);
        }
        if let (Some(r), Some(io)) = (&recorder, io) {
            r.command(c.target, io);
        }
    })
}

/// The HTTP listener for iPXE scripts. A port that is taken is an error,
/// as for iSCSI: a half-started server would boot nothing.
async fn bind_http(s: &Settings) -> Result<tokio::net::TcpListener> {
    let addr = SocketAddr::new(s.listen_ip, s.http_port);
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}
