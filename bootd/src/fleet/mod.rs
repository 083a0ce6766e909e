//! The one fleet view of a running serve: one registry connection, one
//! watcher that wakes on the store's change notification, and an immutable
//! [`Snapshot`] of node plans swapped whole when the registry's generation
//! moves. DHCP, TFTP, HTTP and iSCSI all read the current snapshot, so they
//! agree on which nodes exist; writes serve itself makes (enrolling an
//! unknown machine, boot stages) go through the same connection.

pub mod enrol;
mod watch;

use crate::store::{Node, Store, StoreError, Template};
use bootd_plan::fleet::{Chap, ImageRef, Secret};
use bootd_plan::{NodePlan, Snapshot};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch as channel;

pub use watch::Watcher;

/// The registry connection serve holds, shared by the watcher, the
/// enroller and the boot timeline. Calls block: run them off the runtime's
/// workers (a blocking task or a thread of their own).
#[derive(Clone)]
pub struct Registry(Arc<Mutex<Box<dyn Store>>>);

impl Registry {
    pub fn new(store: Box<dyn Store>) -> Self {
        Self(Arc::new(Mutex::new(store)))
    }

    /// Runs `f` with the store; a panic elsewhere while it was held does
    /// not poison it for everyone else (each call is its own transaction).
    pub fn with<T>(&self, f: impl FnOnce(&mut dyn Store) -> T) -> T {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(s.as_mut())
    }
}

/// A reader's handle on the current snapshot; cheap to clone.
#[derive(Clone)]
pub struct FleetView {
    rx: channel::Receiver<Arc<Snapshot>>,
}

impl FleetView {
    /// The snapshot now; holding it keeps it alive, never blocks writers.
    pub fn current(&self) -> Arc<Snapshot> {
        self.rx.borrow().clone()
    }

    /// Waits for the next snapshot; `false` once the watcher is gone.
    pub async fn changed(&mut self) -> bool {
        self.rx.changed().await.is_ok()
    }

    /// A view that never changes, for tests of one server.
    #[cfg(test)]
    pub fn fixed(s: Snapshot) -> Self {
        let (tx, rx) = channel::channel(Arc::new(s));
        // The sender may go: `current` keeps answering the last value.
        drop(tx);
        Self { rx }
    }
}

/// Reads the registry into a snapshot: every node, with its template's
/// script. A row that does not parse fails the whole read (and the watcher
/// keeps the previous snapshot and says why) rather than losing a node.
pub fn load(store: &dyn Store) -> Result<Snapshot, StoreError> {
    let generation = store.generation()?;
    let templates: HashMap<String, Template> = store
        .templates()?
        .into_iter()
        .map(|t| (t.name.clone(), t))
        .collect();
    let nodes = store.nodes()?;
    let plans = nodes
        .into_iter()
        .map(|n| {
            let template = n.template.as_ref().and_then(|t| templates.get(t));
            let script = template.and_then(|t| t.script.clone());
            // The node's own user-data wins over its template's.
            let user_data = n
                .user_data
                .clone()
                .or_else(|| template.and_then(|t| t.user_data.clone()));
            plan(n, script, user_data)
        })
        .collect();
    Ok(Snapshot::new(generation, plans))
}

fn plan(n: Node, script: Option<String>, user_data: Option<String>) -> NodePlan {
    NodePlan {
        id: n.id,
        revision: n.revision,
        name: n.name,
        mac: n.mac,
        ip: n.ip,
        state: n.state,
        template: n.template,
        script,
        image: ImageRef {
            id: n.image.id,
            name: n.image.name,
            version: n.image.version,
            path: n.image.path,
            sha256: n.image.sha256,
        },
        target_iqn: n.target_iqn,
        initiator_iqn: n.initiator_iqn,
        chap: Chap {
            user: n.chap_user,
            secret: Secret::new(n.chap_secret),
        },
        mutual_chap: n.mutual_chap.map(|m| Chap {
            user: m.user,
            secret: Secret::new(m.secret),
        }),
        overlay: n.overlay_path,
        overlay_generation: n.overlay_generation,
        user_data: user_data.map(Secret::new),
        owner: n.owner,
        pinned_server: n.pinned_server,
    }
}
