//! Tells other processes (the CLI) whether a node has a live iSCSI session:
//! serve holds an exclusive `flock` on the node's session file
//! ([`DataDir::session_file`]) from its first login until its last session
//! ends. The kernel drops the lock when serve dies, so a crashed serve never
//! leaves a node looking busy, and a command that probes the lock needs no
//! cooperation from serve beyond this subscriber.

use super::{Event, Subscriber};
use crate::datadir::DataDir;
use crate::fleet::FleetView;
use anyhow::{Context, Result};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Mutex;

/// One connection of a session, as the login and end events name it.
type Key = ([u8; 6], SocketAddr);

/// A node's held lock and its live connections.
struct Held {
    _file: File,
    live: HashSet<Key>,
}

pub struct SessionLocks {
    dd: DataDir,
    view: FleetView,
    /// By target IQN.
    held: Mutex<HashMap<String, Held>>,
}

impl SessionLocks {
    pub fn new(dd: DataDir, view: FleetView) -> Self {
        Self {
            dd,
            view,
            held: Mutex::new(HashMap::new()),
        }
    }

    fn login(&self, target: &str, key: Key) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = held.get_mut(target) {
            h.live.insert(key);
            return;
        }
        // A session can only log in to a target serve made from the current
        // fleet view, so the view knows the node.
        let Some(node) = self
            .view
            .current()
            .by_target(target)
            .map(|n| n.name.clone())
        else {
            tracing::warn!(target, "login to a target the fleet view does not know");
            return;
        };
        match lock(&self.dd.session_file(&node)) {
            Ok(file) => {
                held.insert(
                    target.to_string(),
                    Held {
                        _file: file,
                        live: HashSet::from([key]),
                    },
                );
            }
            // The session itself is fine; only `image capture` loses its
            // guard, and it refuses nothing it should not.
            Err(e) => tracing::error!(node = %node, "session lock: {e:#}"),
        }
    }

    fn ended(&self, target: &str, key: Key) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let last = held.get_mut(target).is_some_and(|h| {
            h.live.remove(&key);
            h.live.is_empty()
        });
        if last {
            // Closing the file drops the lock. The file stays: deleting it
            // would race a prober that has it open.
            held.remove(target);
        }
    }
}

impl Subscriber for SessionLocks {
    fn on(&self, event: &Event<'_>) {
        match event {
            Event::IscsiLogin {
                target, isid, peer, ..
            } => self.login(target, (*isid, *peer)),
            Event::IscsiEnded {
                target, isid, peer, ..
            } => self.ended(target, (*isid, *peer)),
            _ => {}
        }
    }
}

fn open(path: &Path) -> Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("{}", path.display()))
}

/// Takes the exclusive lock, waiting a little: a prober holds its shared
/// lock only between two syscalls. Not for ever: another server that
/// owned the node before a takeover may hold it, frozen (it runs on the
/// login's thread, so waiting would stall the survivor's logins).
fn lock(path: &Path) -> Result<File> {
    let f = open(path)?;
    let mut tries = 0;
    loop {
        // SAFETY: plain syscall on a descriptor `f` keeps open.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(f);
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::Interrupted => {}
            std::io::ErrorKind::WouldBlock if tries < 20 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            _ => return Err(e).with_context(|| format!("locking {}", path.display())),
        }
    }
}

/// Whether serve holds node `name`'s session lock: the node has at least
/// one logged-in iSCSI session.
pub fn live(dd: &DataDir, name: &str) -> Result<bool> {
    let path = dd.session_file(name);
    let f = match File::open(&path) {
        Ok(f) => f,
        // Never locked: no serve ever saw a session of this node.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
    };
    loop {
        // SAFETY: plain syscall on a descriptor `f` keeps open. The shared
        // lock, if taken, goes when `f` closes at return.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
            return Ok(false);
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::WouldBlock => return Ok(true),
            std::io::ErrorKind::Interrupted => continue,
            _ => return Err(e).with_context(|| format!("probing {}", path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewImage;

    /// A data directory whose registry has node `n1`, and its target IQN.
    fn one_node(dir: &Path) -> Result<(DataDir, FleetView, String)> {
        let dd = DataDir::open(dir)?;
        let mut store = dd.store()?;
        let path = dd.image_file("base", 1);
        std::fs::write(&path, vec![0u8; 1 << 20])?;
        store.add_image(&NewImage {
            name: "base".into(),
            version: 1,
            path,
            bytes: 1 << 20,
            sha256: "0".repeat(64),
        })?;
        let n = crate::lifecycle::add(
            &dd,
            store.as_mut(),
            "52:54:00:00:00:01",
            &crate::lifecycle::Source::Image("base".into()),
            Some("n1".into()),
            None,
        )?;
        let view = FleetView::fixed(crate::fleet::load(store.as_ref())?);
        Ok((dd, view, n.target_iqn))
    }

    #[test]
    fn locked_from_the_first_login_to_the_last_end() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let (dd, view, target) = one_node(dir.path())?;
        let locks = SessionLocks::new(dd.clone(), view);
        assert!(!live(&dd, "n1")?, "no session yet");
        let a: SocketAddr = ([192, 0, 2, 100], 40000).into();
        let b: SocketAddr = ([192, 0, 2, 100], 40001).into();
        let login = |peer| Event::IscsiLogin {
            target: &target,
            initiator: "iqn.i:n1",
            isid: [1; 6],
            peer,
        };
        let end = |peer| Event::IscsiEnded {
            target: &target,
            isid: [1; 6],
            peer,
            reason: format_args!("logout"),
        };
        locks.on(&login(a));
        assert!(live(&dd, "n1")?);
        // A second connection (iscsid taking over the initramfs's session).
        locks.on(&login(b));
        locks.on(&end(a));
        assert!(live(&dd, "n1")?, "one connection is still logged in");
        locks.on(&end(b));
        assert!(!live(&dd, "n1")?);
        // An end without a login (a session from before a restart) is harmless.
        locks.on(&end(a));
        assert!(!live(&dd, "n1")?);
        // Unknown targets are ignored.
        locks.on(&Event::IscsiLogin {
            target: "iqn.x:other",
            initiator: "iqn.i:x",
            isid: [2; 6],
            peer: a,
        });
        assert!(!live(&dd, "other")?);
        Ok(())
    }
}
