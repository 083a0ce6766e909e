//! The registry watcher: one thread that waits on the store's change feed
//! (or a periodic check, in case a notification is missed), reads the
//! generation, and publishes a new snapshot when it moved.

use super::{load, FleetView, Registry};
use bootd_plan::Snapshot;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch as channel;

/// The generation is read at least this often even without a notification:
/// `node` commands promise effect within a second.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Owns the snapshot's sender; [`Watcher::reload`] may be called from
/// anywhere that just changed the registry (the enroller).
#[derive(Clone)]
pub struct Watcher {
    registry: Registry,
    tx: Arc<channel::Sender<Arc<Snapshot>>>,
}

impl Watcher {
    /// Reads the registry once (an error here is serve's start-up error)
    /// and returns the watcher and the first view.
    pub fn start(registry: Registry) -> anyhow::Result<(Self, FleetView)> {
        let first = registry.with(|s| load(s))?;
        let (tx, rx) = channel::channel(Arc::new(first));
        Ok((
            Self {
                registry,
                tx: Arc::new(tx),
            },
            FleetView { rx },
        ))
    }

    /// Nodes in the current snapshot, in any state.
    pub fn registered(&self) -> usize {
        self.tx.borrow().len()
    }

    /// Publishes a new snapshot if the generation moved. A registry that is
    /// busy or unreadable keeps the last snapshot: nodes being served keep
    /// being served.
    pub fn reload(&self) {
        let seen = self.tx.borrow().generation();
        let fresh = self.registry.with(|s| match s.generation() {
            Ok(g) if g == seen => Ok(None),
            Ok(_) => load(s).map(Some),
            Err(e) => Err(e),
        });
        match fresh {
            Ok(Some(snap)) => {
                tracing::debug!(
                    generation = snap.generation(),
                    nodes = snap.len(),
                    "registry changed"
                );
                self.tx.send_replace(Arc::new(snap));
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("registry: {e}"),
        }
    }

    /// Runs until `stop` is set: waits for a change notification or the
    /// periodic check, then reloads.
    pub fn run(self, stop: Arc<AtomicBool>) {
        let mut feed = match self.registry.with(|s| s.changes()) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(
                    "registry change notification unavailable, checking every second: {e}"
                );
                None
            }
        };
        while !stop.load(Ordering::Relaxed) {
            match feed.as_mut() {
                Some(f) => {
                    if f.wait(CHECK_EVERY) {
                        // One commit touches the database and its log a few
                        // times: let it finish, then read once.
                        std::thread::sleep(Duration::from_millis(20));
                        for _ in 0..64 {
                            if !f.wait(Duration::ZERO) {
                                break;
                            }
                        }
                    }
                }
                None => std::thread::sleep(CHECK_EVERY),
            }
            self.reload();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datadir::DataDir;
    use crate::store::NewImage;

    /// Another process (the CLI) changes the registry: the running
    /// watcher publishes a snapshot that has the change.
    #[tokio::test]
    async fn a_change_by_another_connection_reaches_the_view() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let dd = DataDir::open(tmp.path())?;
        let (watcher, mut view) = Watcher::start(Registry::new(dd.store()?))?;
        let before = view.current().generation();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || watcher.run(stop))
        };
        let mut cli = dd.store()?;
        let path = dd.image_file("golden", 1);
        std::fs::write(&path, vec![0u8; 4096])?;
        cli.add_image(&NewImage {
            name: "golden".into(),
            version: 1,
            path,
            bytes: 4096,
            sha256: "00".repeat(32),
        })?;
        cli.add_template("lab", "golden", Some("#!ipxe\nsanboot\n"), None)?;
        let mac = "02:00:00:00:00:07";
        crate::lifecycle::add(
            &dd,
            cli.as_mut(),
            mac,
            &crate::lifecycle::Source::Template("lab".into()),
            None,
            None,
        )?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let node = loop {
            let snap = view.current();
            if let Some(n) = snap.by_mac(&mac.parse()?).filter(|n| n.ready()) {
                break n.clone();
            }
            tokio::time::timeout_at(deadline, view.changed()).await?;
        };
        assert!(view.current().generation() > before);
        assert_eq!(node.script.as_deref(), Some("#!ipxe\nsanboot\n"));
        assert_eq!(node.template.as_deref(), Some("lab"));
        stop.store(true, Ordering::Relaxed);
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("watcher panicked"))?;
        Ok(())
    }
}
