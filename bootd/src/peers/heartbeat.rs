//! The heartbeat thread: registers the server, then every
//! [`HEARTBEAT_EVERY`] moves its heartbeat on (with its live sessions and
//! bytes served) and reads every server's row, which it publishes for the
//! reconciler (who is live decides which nodes this server should own).
//! It has its own registry connection, so a heartbeat never queues behind
//! the fleet view's reads, and its statements never move the generation.
//!
//! Each heartbeat that reaches the registry also renews this server's
//! ownership lease (`peers::lease`), first in the fence keeper (which drops
//! the overlays' locks when it lapses), then in serve's own copy (which
//! every I/O checks).

use super::HEARTBEAT_EVERY;
use crate::store::{NewServer, ServerInfo, Store};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// What the heartbeat reports besides being alive.
pub trait Counters: Send + Sync {
    fn sessions(&self) -> u64;
    fn bytes_served(&self) -> u64;
}

/// The servers as last read; empty until the first read.
pub type Peers = watch::Receiver<Arc<Vec<ServerInfo>>>;

/// serve's counters: sessions from the session table, bytes from the
/// metrics.
pub struct ServeCounters {
    pub sessions: Arc<crate::events::sessions::Sessions>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Counters for ServeCounters {
    fn sessions(&self) -> u64 {
        self.sessions.count() as u64
    }
    fn bytes_served(&self) -> u64 {
        self.metrics.bytes_served()
    }
}

/// The lease a shared registry's heartbeats renew, and the keeper that
/// enforces it.
pub struct Fencing {
    pub lease: Arc<super::lease::Lease>,
    pub keeper: Arc<super::keeper::Keeper>,
    /// Whether peers can take nodes (a shared registry): without, the
    /// lease never lapses.
    pub shared: bool,
}

impl Fencing {
    /// A heartbeat sent at `sent_ns` reached the registry.
    fn renew(&self, sent_ns: u64) {
        if !self.shared {
            return;
        }
        let until = sent_ns.saturating_add(super::lease::FENCE_AFTER.as_nanos() as u64);
        // The keeper first: serve never holds a lease its locks lack.
        match self.keeper.until(until) {
            Ok(()) => {
                if !self.lease.renewed(sent_ns) {
                    tracing::warn!("ownership lease had lapsed: renewed once every node is fenced");
                }
            }
            Err(e) => tracing::error!("fence keeper: {e}; the lease is not renewed"),
        }
    }
}

pub struct Heartbeat {
    thread: std::thread::JoinHandle<()>,
    stop: Arc<AtomicBool>,
}

impl Heartbeat {
    /// Registers `me` (an error here fails serve's start) and starts the
    /// thread.
    pub fn start(
        mut store: Box<dyn Store>,
        me: NewServer,
        counters: Arc<dyn Counters>,
        fencing: Fencing,
        portal: Option<watch::Receiver<std::net::SocketAddr>>,
    ) -> anyhow::Result<(Self, Peers)> {
        let mut me = me;
        if let Some(p) = &portal {
            me.iscsi = p.borrow().to_string();
        }
        let sent = super::lease::now_ns();
        store.register_server(&me)?;
        fencing.renew(sent);
        let first = store.servers()?;
        let (tx, rx) = watch::channel(Arc::new(first));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("heartbeat".into())
                .spawn(move || beat(store, me, counters, fencing, portal, tx, stop))?
        };
        Ok((Self { thread, stop }, rx))
    }

    /// Stops the thread and waits for it (at most one period).
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

fn beat(
    mut store: Box<dyn Store>,
    mut me: NewServer,
    counters: Arc<dyn Counters>,
    fencing: Fencing,
    mut portal: Option<watch::Receiver<std::net::SocketAddr>>,
    tx: watch::Sender<Arc<Vec<ServerInfo>>>,
    stop: Arc<AtomicBool>,
) {
    let mut failing = false;
    while !stop.load(Ordering::Relaxed) {
        sleep_until_stopped(HEARTBEAT_EVERY, &stop);
        if stop.load(Ordering::Relaxed) {
            break;
        }
        // Taken before the statement: the registry stamps the heartbeat
        // later, so its expiry comes after ours.
        // A floating address arrived or left: peers redirect, and scripts
        // point, to the portal published now.
        if let Some(p) = portal.as_mut().filter(|p| p.has_changed().unwrap_or(false)) {
            let now = p.borrow_and_update().to_string();
            match store.set_portal(&me.id, &now) {
                Ok(_) => {
                    tracing::info!(portal = %now, "portal published");
                    me.iscsi = now;
                }
                Err(e) => tracing::warn!("publishing the portal: {e}"),
            }
        }
        let sent = super::lease::now_ns();
        let beat = store
            .heartbeat(&me.id, counters.sessions(), counters.bytes_served())
            .and_then(|found| {
                if !found {
                    // Someone removed the row: register again.
                    tracing::warn!(server = %me.id, "server row gone from the registry; registering again");
                    store.register_server(&me)?;
                }
                fencing.renew(sent);
                store.servers()
            });
        match beat {
            Ok(servers) => {
                if failing {
                    tracing::info!("heartbeat written again");
                    failing = false;
                }
                tx.send_replace(Arc::new(servers));
            }
            Err(e) => {
                if !failing {
                    tracing::warn!("heartbeat: {e}");
                    failing = true;
                }
            }
        }
    }
}

/// Sleeps `d` in short steps, returning early once `stop` is set.
fn sleep_until_stopped(d: Duration, stop: &AtomicBool) {
    let step = Duration::from_millis(100);
    let mut left = d;
    while !left.is_zero() && !stop.load(Ordering::Relaxed) {
        let s = left.min(step);
        std::thread::sleep(s);
        left -= s;
    }
}
