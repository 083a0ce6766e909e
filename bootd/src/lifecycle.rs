//! A node's overlay over its life: create, recreate (reset, move to a newer
//! image version) and delete, coordinated with a running `serve`.
//!
//! Reset and removal end the node's sessions *before* the overlay changes:
//! the CLI marks the node `releasing`; `serve` (polling the registry's
//! generation every second) removes the node's target, which ends its
//! sessions, and closes the overlay. The overlay's exclusive `flock` is held
//! by whoever has it open for writing, so the CLI waits until it can take
//! that lock itself: then no one writes to the old overlay any more. Only
//! then is the overlay replaced (or deleted) and the node marked `ready`.
//! Without a running `serve` the lock is free at once.

use crate::datadir::{backing_name, DataDir};
use crate::names;
use crate::store::{Image, NewNode, Node, NodeState, Store};
use anyhow::{bail, Context, Result};
use imagestore::qcow2::Overlay;
use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long reset and rm wait for `serve` to let go of an overlay: one poll
/// interval plus the time sessions take to end, with a wide margin.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(30);

/// Writes a fresh overlay for `node` over `image` at the node's overlay path,
/// replacing whatever is there in one rename.
pub fn write_overlay(path: &Path, image: &Image) -> Result<()> {
    let tmp = temp_beside(path);
    let _ = std::fs::remove_file(&tmp);
    Overlay::create(&tmp, image.bytes, &backing_name(&image.path))
        .with_context(|| format!("creating overlay {}", path.display()))?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("{}", path.display()));
    }
    Ok(())
}

fn temp_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.new-{}", std::process::id()))
}

/// Waits until nobody has the overlay open for writing; returns the lock,
/// held until dropped.
fn wait_released(path: &Path, timeout: Duration) -> Result<Option<File>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
    };
    let deadline = Instant::now() + timeout;
    loop {
        // SAFETY: plain syscall on a descriptor `file` keeps open.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Some(file));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::Interrupted
        {
            return Err(e).with_context(|| format!("locking {}", path.display()));
        }
        if Instant::now() >= deadline {
            bail!(
                "{} is still in use {}s after asking serve to release it \
                 (is another program writing it?)",
                path.display(),
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Marks the node releasing and waits for `serve` to let go; on failure the
/// node goes back to its previous state.
fn release(store: &mut dyn Store, node: &Node) -> Result<Option<File>> {
    store.set_node_state(&node.name, NodeState::Releasing)?;
    match wait_released(&node.overlay_path, RELEASE_TIMEOUT) {
        Ok(lock) => Ok(lock),
        Err(e) => {
            if node.state != NodeState::Releasing {
                store.set_node_state(&node.name, node.state)?;
            }
            Err(e.context(format!("node {}", node.name)))
        }
    }
}

/// Discards the node's writes: a new empty overlay over `image` (the node's
/// own version, or a newer one when moving).
pub fn recreate(store: &mut dyn Store, node: &Node, image: &Image) -> Result<Node> {
    let mut done = recreate_all(store, std::slice::from_ref(node), image)?;
    done.pop().context("node vanished")
}

/// [`recreate`] for many nodes at once: all are released together, so a
/// running serve lets go of them in one poll rather than one per node.
pub fn recreate_all(store: &mut dyn Store, nodes: &[Node], image: &Image) -> Result<Vec<Node>> {
    for n in nodes {
        store.set_node_state(&n.name, NodeState::Releasing)?;
    }
    let mut locks = Vec::with_capacity(nodes.len());
    for n in nodes {
        match wait_released(&n.overlay_path, RELEASE_TIMEOUT) {
            Ok(lock) => locks.push(lock),
            Err(e) => {
                for m in nodes.iter().filter(|m| m.state != NodeState::Releasing) {
                    store.set_node_state(&m.name, m.state)?;
                }
                return Err(e.context(format!("node {}", n.name)));
            }
        }
    }
    let mut done = Vec::with_capacity(nodes.len());
    for n in nodes {
        write_overlay(&n.overlay_path, image)?;
        done.push(store.node_overlay_ready(&n.name, image.id)?);
    }
    drop(locks);
    Ok(done)
}

/// Deletes the node, its overlay and its reservation state.
pub fn remove(dd: &DataDir, store: &mut dyn Store, node: &Node) -> Result<()> {
    let lock = release(store, node)?;
    store.remove_node(&node.name)?;
    for p in [node.overlay_path.clone(), dd.pr_file(&node.name)] {
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                eprintln!("bootd: warning: {}: {e}", p.display());
            }
        }
    }
    drop(lock);
    Ok(())
}

/// Where a new node's overlay comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The newest version of this image.
    Image(String),
    /// This template's image (newest version); the node keeps the template's script.
    Template(String),
}

/// Registers `mac` with its own fresh overlay: derived IQNs, a random CHAP
/// secret, name `node-<mac>` unless given. Used by `node add`/`node adopt`
/// and by serve's `--unknown default=TEMPLATE`.
pub fn add(
    dd: &DataDir,
    store: &mut dyn Store,
    mac: &str,
    source: &Source,
    name: Option<String>,
    ip: Option<IpAddr>,
) -> Result<Node> {
    let mac = names::normalize_mac(mac)?;
    let name = name.unwrap_or_else(|| names::default_node_name(&mac));
    names::check_node_name(&name)?;
    let (image_name, template) = match source {
        Source::Image(i) => (i.clone(), None),
        Source::Template(t) => (store.template(t)?.image, Some(t.clone())),
    };
    let img = store.latest_image(&image_name)?;
    let overlay_path = dd.overlay_file(&name);
    let node = store.add_node(&NewNode {
        name: name.clone(),
        mac,
        image_id: img.id,
        template,
        ip: ip.map(|i| i.to_string()),
        target_iqn: names::target_iqn(&name),
        initiator_iqn: names::initiator_iqn(&name),
        chap_user: name.clone(),
        chap_secret: names::chap_secret(),
        overlay_path: overlay_path.clone(),
    })?;
    // The row (state `creating`) claims the name and MAC; serve ignores the
    // node until the overlay exists.
    if let Err(e) = write_overlay(&overlay_path, &img) {
        if let Err(e2) = store.remove_node(&name) {
            tracing::warn!("could not undo node {name}: {e2}");
        }
        return Err(e);
    }
    store
        .node_overlay_ready(&node.name, img.id)
        .context("marking the node ready")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_waits_for_the_writer_lock() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("n.qcow2");
        assert!(
            wait_released(&path, Duration::ZERO)?.is_none(),
            "no file, nothing to wait for"
        );
        std::fs::write(&path, b"x")?;
        // What Overlay::open does for a writer.
        let writer = File::open(&path)?;
        // SAFETY: plain syscall on an open descriptor.
        assert_eq!(
            unsafe { libc::flock(writer.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
            0
        );
        let err = wait_released(&path, Duration::from_millis(300));
        assert!(err.is_err(), "a held overlay is not released");
        let closer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(writer);
        });
        assert!(wait_released(&path, Duration::from_secs(5))?.is_some());
        closer
            .join()
            .map_err(|_| anyhow::anyhow!("closer panicked"))?;
        Ok(())
    }
}
