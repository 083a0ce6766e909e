//! The target server: targets and their LUNs, access control, the session
//! registry, and the accept loop. The caller binds the listener.

use crate::lun::Lun;
use crate::session;
use iscsi_proto::conn::{
    Authorization, ChapCredentials, ConnConfig, DiscoveredTarget, TargetDirectory,
};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

/// Limits and timers for every connection of a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Connections served at once. At the cap, the oldest connection not yet
    /// logged in (from the source holding most) is evicted; if every slot
    /// holds a session, the newcomer is closed right after accept.
    pub max_connections: usize,
    /// The same for one source address (evicting that source's oldest
    /// connection not logged in), so one machine cannot take every slot.
    pub max_connections_per_source: usize,
    pub login_timeout: Duration,
    pub nop_interval: Duration,
    pub idle_timeout: Duration,
    pub max_recv_data_segment: u32,
    pub max_burst: u32,
    pub first_burst: u32,
    pub max_outstanding_r2t: u32,
    pub cmd_window: u32,
    pub max_transfer: u32,
    /// Write data solicited and not yet received, per connection.
    pub r2t_budget: u64,
    /// Reply bytes one connection may owe (queued, unsent, or of reads
    /// still running) before it stops reading from its socket and holds its
    /// CmdSN window shut.
    pub max_backlog: usize,
    /// The same for all connections together: over it, every connection
    /// with replies unsent stops reading until they are sent.
    pub max_backlog_total: usize,
    pub portal_group_tag: u16,
    /// How long shutdown waits for initiators to log out.
    pub shutdown_grace: Duration,
    /// How long a login for a target about to be served here
    /// ([`Elsewhere::Coming`]) is held before it is answered "service
    /// unavailable": it goes on at once when the target arrives. Below the
    /// initiators' login timeouts (open-iscsi 15 s) and our own.
    pub coming_hold: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_connections_per_source: 64,
            login_timeout: Duration::from_secs(15),
            nop_interval: Duration::from_secs(10),
            // iPXE never answers pings and its session is abandoned at the
            // OS handoff; this reaps it while leaving live initiators alone.
            idle_timeout: Duration::from_secs(120),
            max_recv_data_segment: 262_144,
            max_burst: 1 << 20,
            first_burst: 262_144,
            max_outstanding_r2t: 8,
            cmd_window: 128,
            max_transfer: 8 << 20,
            r2t_budget: 32 << 20,
            max_backlog: 16 << 20,
            max_backlog_total: 256 << 20,
            portal_group_tag: 1,
            shutdown_grace: Duration::from_secs(2),
            coming_hold: Duration::from_secs(8),
        }
    }
}

/// One target: a name, its LUNs and who may use it.
pub struct Target {
    pub iqn: String,
    pub alias: Option<String>,
    pub luns: BTreeMap<u64, Arc<Lun>>,
    /// With `Some`, only these initiator names may log in.
    pub allowed_initiators: Option<Vec<String>>,
    /// With `Some`, login needs CHAP with these credentials.
    pub chap: Option<ChapCredentials>,
}

impl Target {
    fn authorization(&self, initiator: &str) -> Authorization {
        match &self.allowed_initiators {
            Some(list) if !list.iter().any(|i| i == initiator) => Authorization::Denied,
            _ => Authorization::Allowed(self.chap.clone()),
        }
    }
}

/// What identifies a session for reinstatement: the I_T nexus (RFC 7143
/// 4.4.3: initiator name and ISID *to one target*). A login can end only the
/// session it would replace, at the target it passed authentication for.
/// Discovery sessions are kept apart, one key per connection: an
/// unauthenticated discovery login must never end a session.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum SessionKey {
    Normal {
        initiator: String,
        isid: [u8; 6],
        target: String,
    },
    Discovery(u64),
}

impl SessionKey {
    pub(crate) fn of(info: &iscsi_proto::conn::SessionInfo, conn_id: u64) -> Self {
        match (&info.session_type, &info.target_name) {
            (iscsi_proto::conn::SessionType::Normal, Some(t)) => Self::Normal {
                initiator: info.initiator_name.clone(),
                isid: info.isid,
                target: t.clone(),
            },
            _ => Self::Discovery(conn_id),
        }
    }
}

/// A live session as the registry knows it.
pub(crate) struct SessionEntry {
    pub tsih: u16,
    pub conn_id: u64,
    /// Tells the session's connection to close (reinstatement, removal).
    pub kill: Arc<Notify>,
    pub target: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("accept failed: {0}")]
    Accept(#[from] std::io::Error),
    #[error("target {0} already exists")]
    TargetExists(String),
}

/// Where a target that is not here is, for its initiator's logins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elsewhere {
    /// Served by the portal at this address: logins are redirected there.
    Moved(SocketAddr),
    /// About to be served here (a takeover under way): logins are answered
    /// "service unavailable", which initiators retry.
    Coming,
}

pub struct Server {
    pub(crate) config: ServerConfig,
    targets: RwLock<HashMap<String, Arc<Target>>>,
    /// Targets not here, by name: the initiator that may know, and where
    /// the target is. That initiator's login is redirected, or told to come
    /// back; anyone else gets the answer an unknown target gets.
    moved: RwLock<HashMap<String, (String, Elsewhere)>>,
    /// Live sessions by I_T nexus (discovery sessions by connection).
    pub(crate) sessions: Mutex<HashMap<SessionKey, SessionEntry>>,
    next_tsih: AtomicU16,
    /// Reply bytes handed to connection writers and not yet written.
    pub(crate) unsent_total: std::sync::atomic::AtomicUsize,
    next_conn: AtomicU64,
    shutdown: watch::Sender<bool>,
    observer: std::sync::OnceLock<crate::events::SessionObserver>,
    commands: std::sync::OnceLock<crate::events::CommandObserver>,
}

impl Server {
    pub fn new(config: ServerConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            targets: RwLock::new(HashMap::new()),
            moved: RwLock::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            next_tsih: AtomicU16::new(1),
            unsent_total: std::sync::atomic::AtomicUsize::new(0),
            next_conn: AtomicU64::new(1),
            shutdown: watch::channel(false).0,
            observer: std::sync::OnceLock::new(),
            commands: std::sync::OnceLock::new(),
        })
    }

    /// Sets the one observer told of sessions starting and ending; `false`
    /// if one was already set.
    pub fn observe(&self, f: crate::events::SessionObserver) -> bool {
        self.observer.set(f).is_ok()
    }

    /// Sets the one observer told of every completed SCSI command; `false`
    /// if one was already set.
    pub fn observe_commands(&self, f: crate::events::CommandObserver) -> bool {
        self.commands.set(f).is_ok()
    }

    pub(crate) fn command_observer(&self) -> Option<crate::events::CommandObserver> {
        self.commands.get().cloned()
    }

    pub(crate) fn notify(&self, ev: &crate::events::SessionEvent) {
        if let Some(f) = self.observer.get() {
            f(ev);
        }
    }

    pub fn add_target(&self, target: Target) -> Result<(), ServerError> {
        let mut t = self.targets.write().unwrap_or_else(|e| e.into_inner());
        if t.contains_key(&target.iqn) {
            return Err(ServerError::TargetExists(target.iqn));
        }
        t.insert(target.iqn.clone(), Arc::new(target));
        Ok(())
    }

    /// Logins by `initiator` to target `iqn`, while no target of that name
    /// is here, are redirected to `to` (replacing an earlier redirect).
    pub fn set_moved(&self, iqn: &str, initiator: &str, to: SocketAddr) {
        self.set_elsewhere(iqn, initiator, Elsewhere::Moved(to));
    }

    /// Logins by `initiator` to target `iqn`, while no target of that name
    /// is here, are answered as `at` says (replacing an earlier answer).
    pub fn set_elsewhere(&self, iqn: &str, initiator: &str, at: Elsewhere) {
        self.moved
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(iqn.to_string(), (initiator.to_string(), at));
    }

    /// Stops redirecting logins to target `iqn` (or telling them to come
    /// back).
    pub fn clear_moved(&self, iqn: &str) {
        self.moved
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(iqn);
    }

    /// Whether target `iqn` is about to be served here, for a login that
    /// came in at `local`: coming, or "moved" to that very portal.
    pub(crate) fn is_coming(&self, iqn: &str, local: SocketAddr) -> bool {
        self.moved
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(iqn)
            .is_some_and(|(_, at)| {
                matches!(at, Elsewhere::Coming) || *at == Elsewhere::Moved(local)
            })
    }

    /// Where target `iqn` is for `initiator`'s logins, if it is known.
    fn elsewhere(&self, iqn: &str, initiator: &str) -> Option<Elsewhere> {
        let moved = self.moved.read().unwrap_or_else(|e| e.into_inner());
        moved
            .get(iqn)
            .filter(|(who, _)| who == initiator)
            .map(|(_, to)| *to)
    }

    /// Removes a target and ends its sessions.
    pub fn remove_target(&self, iqn: &str) -> Option<Arc<Target>> {
        let removed = self
            .targets
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(iqn);
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        for s in sessions
            .values()
            .filter(|s| s.target.as_deref() == Some(iqn))
        {
            s.kill.notify_one();
        }
        removed
    }

    pub fn target(&self, iqn: &str) -> Option<Arc<Target>> {
        self.targets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(iqn)
            .cloned()
    }

    /// Live sessions (normal and discovery).
    pub fn session_count(&self) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    pub(crate) fn conn_config(&self) -> ConnConfig {
        let c = &self.config;
        ConnConfig {
            tsih: self.alloc_tsih(),
            portal_group_tag: c.portal_group_tag,
            max_recv_data_segment: c.max_recv_data_segment,
            max_outstanding_r2t: c.max_outstanding_r2t,
            max_burst: c.max_burst,
            first_burst: c.first_burst,
            cmd_window: c.cmd_window,
            max_transfer: c.max_transfer,
            r2t_budget: c.r2t_budget,
            max_backlog: c.max_backlog,
            login_timeout: c.login_timeout,
            nop_interval: c.nop_interval,
            idle_timeout: c.idle_timeout,
            target_alias: None,
        }
    }

    fn alloc_tsih(&self) -> u16 {
        loop {
            let t = self.next_tsih.fetch_add(1, Ordering::Relaxed);
            if t != 0 {
                return t;
            }
        }
    }

    pub(crate) fn alloc_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Starts an orderly shutdown: no new connections; sessions are asked
    /// to log out, then closed. [`Server::serve`] returns when all are gone.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Accepts connections until [`Server::shutdown`], then waits for every
    /// connection to end and flushes every LUN.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> Result<(), ServerError> {
        let admission = crate::admission::Admission::new(
            self.config.max_connections,
            self.config.max_connections_per_source,
        );
        let mut stop = self.shutdown_signal();
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of descriptors and the like: wait a moment
                            // rather than spin or give up.
                            tracing::warn!("accept: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let Some(ticket) = admission.admit(peer.ip(), self.alloc_conn_id()) else {
                        tracing::warn!(%peer, "connection limit reached; closing");
                        continue;
                    };
                    let server = self.clone();
                    conns.spawn(session::run(server, stream, peer, ticket));
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                // wait_for also sees a shutdown requested before serve started.
                _ = async { stop.wait_for(|stopping| *stopping).await.map(|_| ()) } => break,
            }
        }
        drop(listener);
        while conns.join_next().await.is_some() {}
        self.flush_all().await;
        Ok(())
    }

    async fn flush_all(&self) {
        let targets: Vec<Arc<Target>> = self
            .targets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for t in targets {
            for (n, lun) in &t.luns {
                if let Err(e) = lun.flush().await {
                    tracing::error!(target = %t.iqn, lun = n, "flush on shutdown failed: {e}");
                }
            }
        }
    }
}

/// The server as one connection's login and discovery see it.
pub(crate) struct Directory<'a> {
    pub server: &'a Server,
    /// The portal this connection arrived on, for SendTargets.
    pub local: SocketAddr,
}

impl TargetDirectory for Directory<'_> {
    fn authorize(&self, initiator: &str, target: Option<&str>) -> Authorization {
        match target {
            // Discovery: open to anyone; SendTargets filters what they see.
            None => Authorization::Allowed(None),
            Some(name) => match self.server.target(name) {
                None => match self.server.elsewhere(name, initiator) {
                    // Never back to the portal the login came in at: a
                    // floating address that just arrived here may still be
                    // the moved-to address of a dead peer's target until
                    // the next reconcile (the initiator would loop through
                    // redirects to itself). The target is on its way here.
                    Some(Elsewhere::Moved(to)) if to == self.local => Authorization::Unavailable,
                    Some(Elsewhere::Moved(to)) => Authorization::Moved(to),
                    Some(Elsewhere::Coming) => Authorization::Unavailable,
                    None => Authorization::NotFound,
                },
                Some(t) => t.authorization(initiator),
            },
        }
    }

    fn discover(&self, initiator: &str) -> Vec<DiscoveredTarget> {
        let address = match self.local {
            SocketAddr::V4(a) => format!(
                "{}:{},{}",
                a.ip(),
                a.port(),
                self.server.config.portal_group_tag
            ),
            SocketAddr::V6(a) => format!(
                "[{}]:{},{}",
                a.ip(),
                a.port(),
                self.server.config.portal_group_tag
            ),
        };
        let targets = self
            .server
            .targets
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<DiscoveredTarget> = targets
            .values()
            .filter(|t| matches!(t.authorization(initiator), Authorization::Allowed(_)))
            .map(|t| DiscoveredTarget {
                name: t.iqn.clone(),
                addresses: vec![address.clone()],
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn session_exists(
        &self,
        initiator: &str,
        isid: &[u8; 6],
        target: Option<&str>,
        tsih: u16,
    ) -> bool {
        let Some(target) = target else {
            return false;
        };
        let key = SessionKey::Normal {
            initiator: initiator.to_string(),
            isid: *isid,
            target: target.to_string(),
        };
        self.server
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .is_some_and(|s| s.tsih == tsih)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_is_never_redirected_to_the_portal_it_came_in_at() {
        let server = Server::new(ServerConfig::default());
        let here: SocketAddr = SocketAddr::from(([192, 0, 2, 100], 3260));
        let there: SocketAddr = SocketAddr::from(([192, 0, 2, 101], 3260));
        let (iqn, ini) = ("iqn.2026-01.test:t", "iqn.2026-01.test:i");
        server.set_moved(iqn, ini, here);
        let at = |local| Directory {
            server: &server,
            local,
        };
        assert!(matches!(
            at(here).authorize(ini, Some(iqn)),
            Authorization::Unavailable
        ));
        assert!(matches!(
            at(there).authorize(ini, Some(iqn)),
            Authorization::Moved(to) if to == here
        ));
    }
}
