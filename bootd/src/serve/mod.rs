//! `bootd serve`: every node's overlay as LUN 0 of the node's own iSCSI
//! target, following registry changes without a restart, and each node's
//! iPXE script over HTTP.
//!
//! TFTP serves the iPXE binaries to PXE firmware; with `--dhcp proxy|full`,
//! DHCP (crate::dhcp) points the firmware at them.

pub mod config;
mod fleet;

use crate::datadir::DataDir;
use anyhow::{Context, Result};
use clap::Args;
use config::{DhcpMode, FileConfig, Settings};
use iscsi_target::{Server, ServerConfig};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where iPXE scripts are served unless told otherwise.
const DEFAULT_HTTP_PORT: u16 = 8080;

/// How often the registry's generation is checked.
const POLL: Duration = Duration::from_secs(1);

#[derive(Args)]
#[command(after_help = "\
Changes made with `bootd node|image` take effect within a second. \
`node reset` and `node rm` end the node's live sessions first: serve drops the \
node's target (closing its sessions) and its overlay, the CLI waits until the \
overlay is released, then replaces or deletes it.")]
pub struct ServeArgs {
    /// TOML file with any of: listen_ip, iscsi_port, dhcp, interface, pool,
    /// http_port, tftp_port, tftp_dir. Flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Network interface DHCP answers on (SO_BINDTODEVICE); its IPv4
    /// address is the server address unless --listen-ip names one.
    #[arg(long)]
    interface: Option<String>,
    /// Address to serve on [default: 0.0.0.0].
    #[arg(long)]
    listen_ip: Option<IpAddr>,
    /// off, proxy (boot offers beside the site's DHCP server, ports 67 and
    /// 4011) or full (addresses from --pool too) [default: off].
    #[arg(long, value_enum)]
    dhcp: Option<DhcpMode>,
    /// Address pool for --dhcp full, FIRST-LAST.
    #[arg(long)]
    pool: Option<String>,
    /// HTTP port for iPXE scripts (/boot.ipxe, /boot/MAC.ipxe); 0 picks a
    /// free one [default: 8080]. When the default port is taken, serve warns
    /// and runs without HTTP; a port given explicitly must be free.
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
}

fn settings(args: &ServeArgs) -> Result<Settings> {
    let file = match &args.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let pool = args.pool.clone().or(file.pool);
    Ok(Settings {
        listen_ip: args
            .listen_ip
            .or(file.listen_ip)
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        iscsi_port: args.iscsi_port.or(file.iscsi_port).unwrap_or(3260),
        dhcp: args.dhcp.or(file.dhcp).unwrap_or(DhcpMode::Off),
        interface: args.interface.clone().or(file.interface),
        pool: pool.as_deref().map(config::parse_pool).transpose()?,
        http_port: args
            .http_port
            .or(file.http_port)
            .unwrap_or(DEFAULT_HTTP_PORT),
        tftp_port: args.tftp_port.or(file.tftp_port).unwrap_or(69),
        tftp_dir: args.tftp_dir.clone().or(file.tftp_dir),
    })
}

pub fn run(data_dir: &Path, args: ServeArgs) -> Result<()> {
    let s = settings(&args)?;
    if s.dhcp == DhcpMode::Off && (s.interface.is_some() || s.pool.is_some()) {
        tracing::warn!("--interface and --pool are not used with --dhcp off");
    }
    let dd = DataDir::open(data_dir)?;
    let _lock = dd.lock_serve()?;
    let store = dd.store()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(serve(s, dd, store))
}

async fn serve(s: Settings, dd: DataDir, store: Box<dyn crate::store::Store>) -> Result<()> {
    let server = Server::new(ServerConfig::default());
    let http_store = dd.store()?;
    let dhcp_store = dd.store()?;
    // Beside the registry in the data directory's root.
    let lease_file = dd.overlays().with_file_name("dhcp-leases");
    let mut fleet = fleet::Fleet::new(server.clone(), dd, store);
    fleet.tick().await?;
    let addr = SocketAddr::new(s.listen_ip, s.iscsi_port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    let http_listener = bind_http(&s).await?;
    let (tftp_socket, tftp) = crate::tftp::bind(
        SocketAddr::new(s.listen_ip, s.tftp_port),
        s.tftp_dir.as_deref(),
    )
    .await?;
    let tftp_local = tftp_socket.local_addr()?;
    let tftp_task = tokio::spawn(tftp.serve(tftp_socket));
    // Handlers go in before the ready line: a SIGTERM right after it must
    // still shut down cleanly.
    let signal = crate::export::shutdown_signal()?;
    // Ready lines on stdout so scripts can wait for them and learn the
    // ports; one write, so a reader that takes only the first line still gets
    // both in one read and never closes the pipe between them.
    let http_local = http_listener.local_addr()?;
    let dhcp = crate::dhcp::start(&s, dhcp_store, lease_file, http_local.port())?;
    let lines = format!("iscsi {local}\nhttp {http_local}\ntftp {tftp_local}\n");
    let http = crate::http::HttpServer::new(http_store, http_local.port(), local.port());
    let http_task = tokio::spawn(http.serve(http_listener));
    let mut out = std::io::stdout().lock();
    out.write_all(lines.as_bytes())?;
    out.flush()?;
    drop(out);
    tracing::info!(listen = %local, nodes = fleet.len(), "serving");

    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let watcher = tokio::spawn(async move {
        let mut timer = tokio::time::interval(POLL);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = timer.tick() => {
                    if let Err(e) = fleet.tick().await {
                        // The registry may be busy or briefly unreadable; the
                        // targets already served keep running.
                        tracing::warn!("registry: {e:#}");
                    }
                }
                _ = stop_rx.changed() => break,
            }
        }
        fleet
    });
    let srv = server.clone();
    tokio::spawn(async move {
        signal.await;
        tracing::info!("shutting down");
        srv.shutdown();
    });
    let served = server.serve(listener).await;
    http_task.abort();
    tftp_task.abort();
    if let Some(d) = dhcp {
        let _ = tokio::task::spawn_blocking(move || d.stop()).await;
    }
    let _ = stop_tx.send(true);
    let mut fleet = watcher.await.context("registry watcher")?;
    fleet.close_all().await;
    served?;
    tracing::info!("overlays flushed; bye");
    Ok(())
}

/// The HTTP listener for iPXE scripts. A port that is taken is an error,
/// as for iSCSI: a half-started server would boot nothing.
async fn bind_http(s: &Settings) -> Result<tokio::net::TcpListener> {
    let addr = SocketAddr::new(s.listen_ip, s.http_port);
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}
