//! Which nodes this server may serve. A node's overlay is opened only
//! after two proofs: the registry names this server its owner (a
//! compare-and-set claim that moves the fencing epoch, see
//! `store::servers`), and the overlay's OFD lock is ours (`peers::fence`).
//! A server that cannot get both does not open the file.
//!
//! The owner a node should have is rendezvous hashing over the live
//! servers (`peers::rendezvous`), or its pinned server. A node moves only
//! while it has no session: its owner keeps serving it until the session
//! ends, then closes it and releases it, and the new owner claims it.
//!
//! Ownership is a lease: it lasts while the owner's heartbeats reach the
//! registry; the owner stops serving by itself before peers may claim
//! (`peers::lease`), and a node whose registry row names another live
//! server is dropped without a write.

use crate::events::sessions::Sessions;
use crate::fleet::Registry;
use crate::peers;
use crate::store::ServerInfo;
use bootd_plan::NodePlan;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum OwnError {
    #[error("owned by {owner}, a live server: not claimed")]
    Taken { owner: String },
    #[error("claiming ownership in the registry: {0}")]
    Registry(#[from] crate::store::StoreError),
    #[error(transparent)]
    Fence(#[from] peers::fence::FenceError),
    #[error("claim task: {0}")]
    Join(#[from] tokio::task::JoinError),
}

pub struct Ownership {
    pub me: String,
    pub registry: Registry,
    pub sessions: Arc<Sessions>,
    /// This server's ownership lease (renewed by its heartbeats).
    pub lease: Arc<peers::lease::Lease>,
    /// Holds the overlays' file locks; drops them when the lease lapses.
    pub keeper: Arc<peers::keeper::Keeper>,
    /// The floating addresses this host holds now (`serve --floating-ip`).
    pub held: Option<tokio::sync::watch::Receiver<std::net::SocketAddr>>,
    /// The floating addresses serve was given.
    pub floating: Vec<std::net::IpAddr>,
}

impl Ownership {
    /// The live servers' ids, sorted; this server is always among them (it
    /// knows it is alive, whatever its last heartbeat's age).
    ///
    /// A draining server (this one too) is left out: nodes should be
    /// elsewhere, and logins go elsewhere.
    pub fn live(&self, peers: &[ServerInfo]) -> Vec<String> {
        let mut v: Vec<String> = peers
            .iter()
            .filter(|s| peers::live(s.heartbeat_age_ms) && !s.draining)
            .map(|s| s.id.clone())
            .collect();
        if !v.contains(&self.me) && !self.draining(peers) {
            v.push(self.me.clone());
        }
        v.sort();
        v
    }

    /// Whether this server holds `ip` as a floating address now.
    fn holds(&self, ip: std::net::IpAddr) -> bool {
        self.floating.contains(&ip) && self.held.as_ref().is_some_and(|h| h.borrow().ip() == ip)
    }

    /// Whether `node` should be on this server: [`Ownership::mine`], or
    /// its owner is dead and published the floating address this server
    /// holds now (the node reconnects to that address, here).
    pub fn mine_now(&self, node: &NodePlan, live: &[String], peers: &[ServerInfo]) -> bool {
        if self.mine(node, live) {
            return true;
        }
        let Some(owner) = node.owner.as_deref().filter(|o| *o != self.me) else {
            return false;
        };
        peers.iter().any(|p| {
            p.id == owner
                && !peers::live(p.heartbeat_age_ms)
                && p.iscsi
                    .parse::<std::net::SocketAddr>()
                    .is_ok_and(|a| self.holds(a.ip()))
        })
    }

    /// Whether `node` should be on this server, given the `live` servers.
    pub fn mine(&self, node: &NodePlan, live: &[String]) -> bool {
        let ids: Vec<&str> = live.iter().map(String::as_str).collect();
        peers::rendezvous::owner(&node.name, node.pinned_server.as_deref(), &ids)
            == Some(self.me.as_str())
    }

    /// Where a login for `node`, which this server does not serve, should
    /// go: its registered owner if that is a live peer, else the live peer
    /// it should have (about to claim it). `None`: nowhere to send it (no
    /// such peer, or one listening on an unspecified address).
    pub fn redirect(
        &self,
        node: &NodePlan,
        live: &[String],
        peers: &[ServerInfo],
    ) -> Option<std::net::SocketAddr> {
        let ids: Vec<&str> = live.iter().map(String::as_str).collect();
        let owner = node
            .owner
            .as_deref()
            .filter(|o| ids.contains(o))
            .or_else(|| peers::rendezvous::owner(&node.name, node.pinned_server.as_deref(), &ids))
            .filter(|o| *o != self.me)?;
        peers
            .iter()
            .find(|p| p.id == owner)
            .and_then(|p| p.iscsi.parse::<std::net::SocketAddr>().ok())
            .filter(|a| !a.ip().is_unspecified() && a.port() != 0)
            // A dead owner's floating address that is here now: never
            // redirect a login to ourselves.
            .filter(|a| !self.holds(a.ip()))
    }

    /// Whether this server is being drained.
    pub fn draining(&self, peers: &[ServerInfo]) -> bool {
        peers.iter().any(|s| s.id == self.me && s.draining)
    }

    /// What moves redirects: the live servers and their addresses.
    pub fn peer_key(&self, peers: &[ServerInfo]) -> Vec<(String, String, bool)> {
        let mut v: Vec<(String, String, bool)> = peers
            .iter()
            .filter(|s| peers::live(s.heartbeat_age_ms))
            .map(|s| (s.id.clone(), s.iscsi.clone(), s.draining))
            .collect();
        // And the floating address held here: it decides which dead
        // server's nodes are ours.
        if let Some(h) = &self.held {
            v.push((String::new(), h.borrow().to_string(), false));
        }
        v.sort();
        v
    }

    pub fn in_use(&self, node: &NodePlan) -> bool {
        self.sessions.on_target(&node.target_iqn)
    }

    /// Claims `node` in the registry; the new fencing epoch.
    pub async fn claim(&self, node: &NodePlan) -> Result<u64, OwnError> {
        let (registry, name, me) = (self.registry.clone(), node.name.clone(), self.me.clone());
        let claimed = tokio::task::spawn_blocking(move || {
            registry.with(|s| s.claim_node(&name, &me, peers::dead_after_ms()))
        })
        .await??;
        claimed.ok_or_else(|| OwnError::Taken {
            owner: node
                .owner
                .clone()
                .unwrap_or_else(|| "another server".into()),
        })
    }

    /// Gives up ownership of `name` (its overlay is closed).
    pub async fn release(&self, name: &str) {
        let (registry, n, me) = (self.registry.clone(), name.to_string(), self.me.clone());
        let done =
            tokio::task::spawn_blocking(move || registry.with(|s| s.release_node(&n, &me))).await;
        match done {
            Ok(Ok(_)) => tracing::info!(node = %name, "released to its new owner"),
            Ok(Err(e)) => tracing::warn!(node = %name, "releasing ownership: {e}"),
            Err(e) => tracing::warn!(node = %name, "releasing ownership: {e}"),
        }
    }
}
