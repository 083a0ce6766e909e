//! `bootd serve`: every node's overlay as LUN 0 of the node's own iSCSI
//! target, following registry changes without a restart, and each node's
//! iPXE script over HTTP.
//!
//! TFTP serves the iPXE binaries to PXE firmware; with `--dhcp proxy|full`,
//! DHCP (crate::dhcp) points the firmware at them.

pub mod config;
pub mod durability;
pub mod grants;
mod owned;
mod pr;
mod targets;
mod values;

use crate::datadir::DataDir;
use crate::fleet::{Registry, Watcher};
use anyhow::{Context, Result};
use config::{ServeConfig, UnknownPolicy};
use iscsi_target::{Server, ServerConfig};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

use crate::events::session_locks::SessionLocks;
use crate::events::sessions::Sessions;
use crate::events::{Command, Event, Events, Subscriber};
use crate::iotrace::IoRecorder;
use crate::metrics::Metrics;

/// How often free space is checked, failed targets retried and the I/O
/// trace flushed (registry changes arrive from the fleet view at once).
pub(crate) const TICK: Duration = Duration::from_secs(1);

/// How long `--drain` waits for the peers to take every node at SIGTERM.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// How long a drained server stays to redirect re-logins before it stops
/// (libiscsi logs in again within about 1.5 s of losing its session).
const REDIRECT_LINGER: Duration = Duration::from_secs(3);

/// `dd` is the opened data directory, with the registry `--registry` named.
pub fn run(dd: DataDir, args: ServeConfig) -> Result<()> {
    let s = ServeConfig::load(args)?;
    if s.dhcp().is_none() && (s.interface.is_some() || s.pool.is_some()) {
        tracing::warn!("--interface and --pool are not used with --dhcp off");
    }
    let id = crate::peers::server_id(s.server_id.as_deref())?;
    let _lock = dd.lock_server(&id)?;
    raise_open_file_limit();
    let mut store = dd.store()?;
    for name in crate::lifecycle::recover_releasing(&dd, store.as_mut())? {
        tracing::warn!(node = %name, "an interrupted command had left the node releasing; ready again");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(serve(s, dd, store, id))
}

async fn serve(
    s: ServeConfig,
    dd: DataDir,
    store: Box<dyn crate::store::Store>,
    id: String,
) -> Result<()> {
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
    // Metrics, the boot timeline and the I/O recorder follow the servers
    // through one stream of boot events.
    let metrics = Arc::new(Metrics::default());
    let sessions = Arc::new(Sessions::default());
    // Session locks tell `image capture` (another process) which nodes are
    // logged in.
    let session_locks = Arc::new(SessionLocks::new(dd.clone(), view.clone()));
    let (trigger, shutdown) = crate::service::channel();
    // The API's live feed: stages from the boot log, I/O from the events.
    let (feed, io_rates) = crate::api::events::Feed::new(bootlog.feed(), shutdown.clone());
    let mut subscribers: Vec<Arc<dyn Subscriber>> = vec![
        metrics.clone(),
        Arc::new(bootlog),
        sessions.clone(),
        session_locks,
    ];
    if s.api_listen().0.is_some() {
        subscribers.push(io_rates.subscriber());
    }
    if let Some(r) = &recorder {
        subscribers.push(r.clone());
    }
    let events = Events::new(subscribers);
    server.observe(session_events(events.clone()));
    server.observe_commands(command_events(events.clone()));
    let tick_recorder = recorder.clone();
    // Beside the registry in the data directory's root, or in a shared
    // PostgreSQL registry's `leases` table, where every server sees them.
    let lease_home = match dd.registry() {
        crate::store::url::Registry::Postgres(target) => crate::dhcp::ledger::LeaseHome::Registry {
            target: target.clone(),
            me: id.clone(),
        },
        _ => crate::dhcp::ledger::LeaseHome::File(dd.overlays().with_file_name("dhcp-leases")),
    };
    // With a shared registry, ownership is a lease the heartbeats renew
    // (nothing is served before the first); the overlays' locks live in
    // the fence keeper, which drops them when it lapses (`peers::lease`).
    let shared = matches!(dd.registry(), crate::store::url::Registry::Postgres(_));
    let lease = if shared {
        crate::peers::lease::Lease::lapsed()
    } else {
        crate::peers::lease::Lease::forever()
    };
    let root = dd.overlays().parent().map(std::path::Path::to_path_buf);
    let keeper = Arc::new(crate::peers::keeper::Keeper::spawn(
        &root.unwrap_or_default(),
    )?);
    if !shared {
        keeper.until(u64::MAX)?;
    }
    // The portal this server publishes: its own address, or a floating
    // one while the host holds it (`peers::floating`).
    let floating = s.floating_ip.clone();
    let (portal_tx, portal_rx) =
        tokio::sync::watch::channel(SocketAddr::new(s.listen_ip(), s.iscsi_port()));
    let mut targets =
        targets::Targets::new(server.clone(), dd.clone(), registry.clone(), events.clone())
            .with_space(s.node_quota, s.reserve_free, s.warn_free)?
            .with_sync_writes(durability::SyncSetting::resolve(s.sync_writes, shared))
            .with_ownership(owned::Ownership {
                me: id.clone(),
                registry: registry.clone(),
                sessions: sessions.clone(),
                lease: lease.clone(),
                keeper: keeper.clone(),
                held: (!floating.is_empty()).then(|| portal_rx.clone()),
                floating: floating.clone(),
            });
    let addr = SocketAddr::new(s.listen_ip(), s.iscsi_port());
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    let http_listener = bind_http(&s).await?;
    let (api_listener, api_skipped) = bind_api(&s).await?;
    let api_tls = match (&s.api_cert, &s.api_key) {
        (Some(cert), Some(key)) => Some(crate::api::Tls::load(cert, key)?),
        _ => None,
    };
    let boot_files = crate::tftp::open_root(s.tftp_dir.as_deref())?;
    let (tftp_socket, tftp) = crate::tftp::bind(
        SocketAddr::new(s.listen_ip(), s.tftp_port()),
        boot_files.clone(),
        s.per_source(),
    )
    .await?;
    let tftp_local = tftp_socket.local_addr()?;
    let tftp = tftp.with_events(events.clone());
    // Handlers go in before the ready line: a SIGTERM right after it must
    // still shut down cleanly.
    let signal = crate::service::signal()?;
    let trigger = Arc::new(trigger);
    // Ready lines on stdout so scripts can wait for them and learn the
    // ports; one write, so a reader that takes only the first line still gets
    // both in one read and never closes the pipe between them.
    let http_local = http_listener.local_addr()?;
    if !floating.is_empty() {
        let addrs = crate::peers::addrs::follow().context("following the host's addresses")?;
        portal_tx.send_replace(crate::peers::floating::portal(
            &floating,
            &addrs.borrow(),
            local.port(),
            local,
        ));
        tokio::spawn(crate::peers::floating::run(
            server.clone(),
            floating.clone(),
            local,
            addrs,
            portal_tx,
            shutdown.clone(),
        ));
    }
    // Registered once the ports are known: peers redirect to this address.
    let (heartbeat, peers) = crate::peers::heartbeat::Heartbeat::start(
        dd.store()?,
        crate::store::NewServer {
            id: id.clone(),
            iscsi: local.to_string(),
            http_port: http_local.port(),
        },
        Arc::new(crate::peers::heartbeat::ServeCounters {
            sessions: sessions.clone(),
            metrics: metrics.clone(),
        }),
        crate::peers::heartbeat::Fencing {
            lease: lease.clone(),
            keeper: keeper.clone(),
            shared,
        },
        (!floating.is_empty()).then(|| portal_rx.clone()),
    )?;
    let enroller = match (s.dhcp(), s.unknown()) {
        (None, _) | (_, UnknownPolicy::Ignore) => None,
        (_, policy) => {
            if let UnknownPolicy::Default(template) = &policy {
                // Refuse a template that does not exist now, not at the first boot.
                registry.with(|r| r.template(template))?;
            }
            Some(crate::fleet::enrol::start(
                policy,
                s.unknown_cap(),
                dd.clone(),
                registry.clone(),
                watcher.clone(),
            )?)
        }
    };
    let dhcp = crate::dhcp::start::bind(&s, lease_home, http_local.port())?;
    let dhcp_context = crate::dhcp::start::DhcpContext {
        view: view.clone(),
        enroller,
        events: events.clone(),
        grants: grants.clone(),
    };
    let mut lines = format!("iscsi {local}\nhttp {http_local}\ntftp {tftp_local}\n");
    if let Some(l) = &api_listener {
        lines.push_str(&format!("api {}\n", l.local_addr()?));
    }
    let http = crate::http::HttpServer::new(
        view.clone(),
        boot_files,
        http_local.port(),
        local.port(),
        events,
        metrics,
        crate::http::Access {
            scripts: s.script_access(),
            grants,
            metrics_from: s.metrics_from.clone(),
            per_source: s.per_source(),
            sessions,
            portals: Some(crate::peers::Portals {
                peers: peers.clone(),
            }),
        },
    );
    // Who is live decides which nodes are this server's from the first
    // tick, which comes after the first heartbeat (the lease) and before
    // the ready lines.
    let first_peers = peers.borrow().clone();
    targets.tick(&view.current(), &first_peers).await;
    let mut out = std::io::stdout().lock();
    out.write_all(lines.as_bytes())?;
    out.flush()?;
    drop(out);
    tracing::info!(server = %id, listen = %local, nodes = targets.len(), "serving");
    // Said once serving: a serve that fails to start says one line, its error.
    if let Some(why) = api_skipped {
        tracing::warn!("{why}");
    }

    let api_view = view.clone();
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
            let servers = peers.borrow().clone();
            targets.tick(&view.current(), &servers).await;
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
    if let Some(listener) = api_listener {
        let import_dir = s
            .api_import_dir
            .clone()
            .unwrap_or_else(|| dd.images().with_file_name("import"));
        let api = crate::api::Api::new(dd.clone(), feed, import_dir);
        let (router, _) = crate::api::router(api);
        let sd = shutdown.clone();
        drivers.spawn(async move {
            crate::api::serve(listener, router, api_tls, sd).await;
            ("api", Ok(()))
        });
        tokio::spawn(io_rates.run(api_view, shutdown.clone()));
    }
    if let Some(bound) = dhcp {
        let sd = shutdown.clone();
        drivers.spawn(async move {
            (
                "dhcp",
                crate::dhcp::start::run(bound, dhcp_context, sd).await,
            )
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
    let drain_first = s.drain.then(|| (dd.clone(), id.clone()));
    tokio::spawn(async move {
        signal.await;
        if let Some((dd, me)) = drain_first {
            // Its own connection: the wait must not hold the fleet view's.
            tracing::info!("draining: handing every node to the peers");
            let drained = tokio::task::spawn_blocking(move || -> Result<_> {
                let mut store = dd.store()?;
                Ok(crate::peers::drain::drain(
                    store.as_mut(),
                    &me,
                    DRAIN_LIMIT,
                )?)
            })
            .await;
            match drained {
                Ok(Ok((took, n))) => {
                    tracing::info!(nodes = n, secs = took.as_secs_f64(), "drained");
                    // Initiators log in again at the portal they know, this
                    // one: it stays a little to redirect them.
                    if n > 0 {
                        tokio::time::sleep(REDIRECT_LINGER).await;
                    }
                }
                Ok(Err(e)) => tracing::warn!("drain: {e:#}"),
                Err(e) => tracing::warn!("drain: {e}"),
            }
        }
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
    // Heartbeats go on while the overlays are committed (the lease must
    // hold), then stop, and the server gives its nodes up and is listed
    // dead at once: peers take them on their next look, not 5 s later.
    let unflushed = targets.close_all().await;
    let _ = tokio::task::spawn_blocking(move || heartbeat.stop()).await;
    lease.end();
    drop(targets);
    let retire = {
        let (r, me) = (registry.clone(), id.clone());
        tokio::task::spawn_blocking(move || {
            r.with(|s| s.retire_server(&me, crate::peers::dead_after_ms()))
        })
        .await
    };
    match retire {
        Ok(Ok(n)) => tracing::info!(nodes = n, "nodes released; listed dead"),
        Ok(Err(e)) => tracing::warn!("releasing nodes at shutdown: {e}"),
        Err(e) => tracing::warn!("releasing nodes at shutdown: {e}"),
    }
    watch_stop.store(true, Relaxed);
    let _ = tokio::task::spawn_blocking(move || watch_thread.join()).await;
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

/// iSCSI logins and logouts as boot events.
fn session_events(events: Events) -> iscsi_target::SessionObserver {
    use iscsi_target::SessionEvent;
    Arc::new(move |ev: &SessionEvent| match ev {
        SessionEvent::LoggedIn {
            initiator,
            target,
            isid,
            peer,
        } => events.emit(Event::IscsiLogin {
            target,
            initiator,
            isid: *isid,
            peer: *peer,
        }),
        SessionEvent::Ended {
            target,
            isid,
            peer,
            reason,
            ..
        } => events.emit(Event::IscsiEnded {
            target,
            isid: *isid,
            peer: *peer,
            reason: format_args!("{reason}"),
        }),
    })
}

/// Every SCSI command, for per-node counters, latency and the I/O trace.
fn command_events(events: Events) -> iscsi_target::CommandObserver {
    Arc::new(move |c: &iscsi_target::CommandDone<'_>| {
        events.emit(Event::Command(Command {
            target: c.target,
            cdb: c.cdb,
            elapsed: c.elapsed,
            data_in: c.data_in,
            data_out: c.data_out,
            good: c.good,
        }))
    })
}

/// The HTTP listener for iPXE scripts. A port that is taken is an error,
/// as for iSCSI: a half-started server would boot nothing.
async fn bind_http(s: &ServeConfig) -> Result<tokio::net::TcpListener> {
    let addr = SocketAddr::new(s.listen_ip(), s.http_port());
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

/// The operator API's listener, unless `--api-listen off`. The default
/// port being taken only costs the API (the warning returned, said once
/// serve is up), never the boot network; a port asked for must be had.
async fn bind_api(s: &ServeConfig) -> Result<(Option<tokio::net::TcpListener>, Option<String>)> {
    let (Some(addr), default) = s.api_listen() else {
        return Ok((None, None));
    };
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => Ok((Some(l), None)),
        Err(e) if default => Ok((
            None,
            Some(format!(
                "api: cannot listen on {addr} ({e}); serving without the API (see --api-listen)"
            )),
        )),
        Err(e) => Err(e).with_context(|| format!("--api-listen: cannot listen on {addr}")),
    }
}
