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
//!
//! Whoever releases a node holds the node's claim lock (an `flock` the
//! kernel drops if the process dies) until the node is `ready` again, so a
//! node left `releasing` by an interrupted command is recognised and put
//! back by the next command or serve start ([`recover_releasing`]).

use crate::datadir::{backing_name, DataDir};
use crate::names;
use crate::store::{Image, MutualChap, NewNode, Node, NodeState, Store};
use anyhow::{bail, Context, Result};
use imagestore::qcow2::{wal, Overlay};
use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long reset and rm wait for `serve` to let go of an overlay: one poll
/// interval plus the time sessions take to end, with a wide margin.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(30);

/// Writes a fresh overlay for `node` over `image` at the node's overlay path,
/// replacing whatever is there in one rename, durably. The old overlay's
/// write-ahead log goes with it (its records never apply to a new file).
pub fn write_overlay(path: &Path, image: &Image) -> Result<()> {
    let tmp = temp_beside(path);
    let _ = std::fs::remove_file(&tmp);
    Overlay::create(&tmp, image.bytes, &backing_name(&image.path))
        .with_context(|| format!("creating overlay {}", path.display()))?;
    wal::remove(path).with_context(|| format!("write-ahead log of {}", path.display()))?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("{}", path.display()));
    }
    sync_dir(path)
}

/// Makes renames and deletions in `path`'s directory durable: without it a
/// power cut can bring back the old overlay after the registry moved on.
fn sync_dir(path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

/// Deletes a file that may be missing.
fn remove_file(p: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The claim lock of node `name`: held by whoever releases the node.
fn claim(dd: &DataDir, name: &str, wait: bool) -> Result<Option<File>> {
    let path = dd.claim_file(name);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("{}", path.display()))?;
    let op = if wait {
        libc::LOCK_EX
    } else {
        libc::LOCK_EX | libc::LOCK_NB
    };
    loop {
        // SAFETY: plain syscall on a descriptor `f` keeps open.
        if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
            return Ok(Some(f));
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::Interrupted => continue,
            std::io::ErrorKind::WouldBlock => return Ok(None),
            _ => return Err(e).with_context(|| format!("locking {}", path.display())),
        }
    }
}

/// Puts back nodes that an interrupted `node reset`, `node rm` or `image
/// upgrade` left `releasing`: no one holds their claim, so no one will
/// finish. The overlay is whatever the command got to: the old one
/// (nothing happened), or a fresh one (the reset happened). A fresh
/// overlay made for another image version than the registry names is made
/// again for the registered one, so a node never boots the wrong image,
/// and counts as a fresh overlay (its generation moves). A fresh overlay on
/// the same version cannot be told from the old one: its generation stays,
/// which is harmless (a fresh disk has no cloud-init state, so first boot
/// runs anyway), where moving it for an old disk would re-run first boot on
/// a system that had already booted. Returns the names put back.
pub fn recover_releasing(dd: &DataDir, store: &mut dyn Store) -> Result<Vec<String>> {
    let mut done = Vec::new();
    for n in store.nodes()? {
        if n.state != NodeState::Releasing {
            continue;
        }
        let Some(_claim) = claim(dd, &n.name, false)? else {
            continue;
        };
        let backing = std::fs::read(&n.overlay_path)
            .ok()
            .and_then(|b| imagestore::qcow2::header::Header::decode(&b).ok())
            .and_then(|h| h.backing_file);
        if backing.as_deref() != Some(backing_name(&n.image.path).as_str()) {
            write_overlay(&n.overlay_path, &n.image)?;
            remove_file(&dd.pr_file(&n.name))
                .with_context(|| format!("{}", dd.pr_file(&n.name).display()))?;
            store.node_overlay_ready(&n.name, n.image.id)?;
        } else {
            store.set_node_state(&n.name, NodeState::Ready)?;
        }
        done.push(n.name);
    }
    Ok(done)
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
/// node goes back to its previous state. Returns the overlay lock and the
/// node's claim.
fn release(dd: &DataDir, store: &mut dyn Store, node: &Node) -> Result<(Option<File>, File)> {
    let claim = claim(dd, &node.name, true)?.context("claim lock")?;
    store.set_node_state(&node.name, NodeState::Releasing)?;
    match wait_released(&node.overlay_path, RELEASE_TIMEOUT) {
        Ok(lock) => Ok((lock, claim)),
        Err(e) => {
            if node.state != NodeState::Releasing {
                store.set_node_state(&node.name, node.state)?;
            }
            Err(e.context(format!("node {}", node.name)))
        }
    }
}

/// A node taken away from `serve` for reading its disk (`image capture`):
/// state `releasing`, the claim held and a shared lock on the overlay, so
/// no writer (serve, or another command) can open it until
/// [`Held::restore`] puts the node back as it was.
pub struct Held {
    name: String,
    state: NodeState,
    _overlay: Option<File>,
    _claim: File,
}

impl Held {
    /// Gives the node back to serve in the state it had. The overlay is
    /// the same file, so its generation does not move. If this process
    /// dies instead, [`recover_releasing`] puts it back as `ready`.
    pub fn restore(self, store: &mut dyn Store) -> Result<()> {
        store
            .set_node_state(&self.name, self.state)
            .map(drop)
            .with_context(|| format!("node {}: putting its state back", self.name))
    }
}

/// Releases `node` like a reset does (serve ends its sessions and closes
/// the overlay) but keeps the overlay: for reading it with
/// `Overlay::open(.., read_only)`, which takes a shared `flock`. The
/// writer's exclusive lock is turned into a shared one on the same file:
/// Linux does not convert atomically, but nothing can take it in between:
/// serve opens no overlay of a `releasing` node and other commands wait
/// for the claim.
pub fn hold_for_reading(dd: &DataDir, store: &mut dyn Store, node: &Node) -> Result<Held> {
    if node.state != NodeState::Ready {
        bail!(
            "node {} is {}: another command is working on it",
            node.name,
            node.state.as_str()
        );
    }
    let (lock, claim) = release(dd, store, node)?;
    if let Some(f) = &lock {
        // SAFETY: plain syscall on a descriptor `f` keeps open.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH) } != 0 {
            let e = std::io::Error::last_os_error();
            store.set_node_state(&node.name, node.state)?;
            return Err(e).with_context(|| format!("locking {}", node.overlay_path.display()));
        }
    }
    Ok(Held {
        name: node.name.clone(),
        state: node.state,
        _overlay: lock,
        _claim: claim,
    })
}

/// Discards the node's writes: a new empty overlay over `image` (the node's
/// own version, or a newer one when moving).
pub fn recreate(dd: &DataDir, store: &mut dyn Store, node: &Node, image: &Image) -> Result<Node> {
    let mut done = recreate_all(dd, store, std::slice::from_ref(node), image)?;
    done.pop().context("node vanished")
}

/// [`recreate`] for many nodes at once: all are released together, so a
/// running serve lets go of them in one poll rather than one per node. The
/// nodes' persistent reservations go with their old disks.
pub fn recreate_all(
    dd: &DataDir,
    store: &mut dyn Store,
    nodes: &[Node],
    image: &Image,
) -> Result<Vec<Node>> {
    let mut claims = Vec::with_capacity(nodes.len());
    for n in nodes {
        claims.push(claim(dd, &n.name, true)?.context("claim lock")?);
    }
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
        let pr = dd.pr_file(&n.name);
        remove_file(&pr).with_context(|| format!("{}", pr.display()))?;
        write_overlay(&n.overlay_path, image)?;
        done.push(store.node_overlay_ready(&n.name, image.id)?);
    }
    drop(locks);
    drop(claims);
    Ok(done)
}

/// Deletes the node, its overlay and its reservation state.
pub fn remove(dd: &DataDir, store: &mut dyn Store, node: &Node) -> Result<()> {
    let (lock, claim) = release(dd, store, node)?;
    store.remove_node(&node.name)?;
    let [w0, w1] = wal::paths(&node.overlay_path);
    for p in [node.overlay_path.clone(), w0, w1, dd.pr_file(&node.name)] {
        if let Err(e) = remove_file(&p) {
            eprintln!("bootd: warning: {}: {e}", p.display());
        }
    }
    if let Err(e) = sync_dir(&node.overlay_path) {
        eprintln!("bootd: warning: {e:#}");
    }
    drop(lock);
    drop(claim);
    let _ = std::fs::remove_file(dd.claim_file(&node.name));
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
    add_with(dd, store, mac, source, name, ip, &AddOptions::default())
}

/// What `node add` and `node adopt` may set beyond [`add`]'s arguments.
#[derive(Debug, Clone, Default)]
pub struct AddOptions {
    /// Mutual CHAP on: set while the node is still `creating`, so serve's
    /// first target for it already has it.
    pub mutual_chap: bool,
    /// The node's own cloud-init user-data, already checked by the caller.
    pub user_data: Option<String>,
}

/// [`add`] with [`AddOptions`].
pub fn add_with(
    dd: &DataDir,
    store: &mut dyn Store,
    mac: &str,
    source: &Source,
    name: Option<String>,
    ip: Option<IpAddr>,
    opts: &AddOptions,
) -> Result<Node> {
    let mac: bootd_plan::Mac = mac.parse()?;
    let name = name.unwrap_or_else(|| names::default_node_name(&mac.to_string()));
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
        ip,
        target_iqn: names::target_iqn(&name),
        initiator_iqn: names::initiator_iqn(&name),
        chap_user: name.clone(),
        chap_secret: names::chap_secret(),
        overlay_path: overlay_path.clone(),
        user_data: opts.user_data.clone(),
    })?;
    // The row (state `creating`) claims the name and MAC; serve ignores the
    // node until the overlay exists.
    let mutual = opts
        .mutual_chap
        .then(|| MutualChap::generate(&node.chap_secret));
    let prepared = match mutual {
        Some(m) => store
            .set_mutual_chap(&node.name, Some(&m))
            .map(drop)
            .context("turning mutual CHAP on"),
        None => Ok(()),
    };
    if let Err(e) = prepared.and_then(|()| write_overlay(&overlay_path, &img)) {
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
    use crate::store::NewImage;

    /// A data directory with image `base` v1 and v2 and node `n1` on v1.
    fn fleet(dir: &Path) -> Result<(DataDir, Box<dyn Store>, Node, Image)> {
        let dd = DataDir::open(dir)?;
        let mut store = dd.store()?;
        let mut imgs = Vec::new();
        for v in 1..=2 {
            let path = dd.image_file("base", v);
            std::fs::create_dir_all(path.parent().context("images dir")?)?;
            std::fs::write(&path, vec![0u8; 1 << 20])?;
            imgs.push(store.add_image(&NewImage {
                name: "base".into(),
                version: v,
                path,
                bytes: 1 << 20,
                sha256: "0".repeat(64),
            })?);
        }
        std::fs::create_dir_all(dd.overlays())?;
        let n = add(
            &dd,
            store.as_mut(),
            "52:54:00:00:00:01",
            &Source::Image("base".into()),
            Some("n1".into()),
            None,
        )?;
        assert_eq!(n.overlay_generation, 1, "the first overlay is the first");
        // `add` took the newest version; put the node on v1 as if older.
        let n = store.node_overlay_ready(&n.name, imgs[0].id)?;
        write_overlay(&n.overlay_path, &imgs[0])?;
        Ok((dd, store, n, imgs[1].clone()))
    }

    fn backing(path: &Path) -> Option<String> {
        let b = std::fs::read(path).ok()?;
        imagestore::qcow2::header::Header::decode(&b)
            .ok()?
            .backing_file
    }

    #[test]
    fn an_interrupted_release_is_recovered() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let (dd, mut store, n, v2) = fleet(dir.path())?;
        // A `node rm` or `reset` that died while waiting for serve.
        store.set_node_state(&n.name, NodeState::Releasing)?;
        {
            // While someone holds the claim, the node is theirs.
            let _held = claim(&dd, &n.name, false)?.context("claim")?;
            let other = std::thread::spawn({
                let dd = dd.clone();
                move || -> Result<Vec<String>> {
                    let mut store = dd.store()?;
                    recover_releasing(&dd, store.as_mut())
                }
            });
            let got = other.join().map_err(|_| anyhow::anyhow!("thread"))??;
            assert!(got.is_empty(), "a held claim is left alone");
        }
        assert_eq!(
            recover_releasing(&dd, store.as_mut())?,
            vec!["n1".to_string()]
        );
        let kept = store.node("n1")?;
        assert_eq!(kept.state, NodeState::Ready);
        // The overlay may be the old one: no new first boot.
        assert_eq!(kept.overlay_generation, n.overlay_generation);

        // A move to v2 that died after writing the new overlay but before
        // the registry said so: the overlay is made again on v1.
        write_overlay(&n.overlay_path, &v2)?;
        store.set_node_state(&n.name, NodeState::Releasing)?;
        assert_eq!(recover_releasing(&dd, store.as_mut())?.len(), 1);
        let now = store.node("n1")?;
        assert_eq!(now.state, NodeState::Ready);
        assert_eq!(now.overlay_generation, n.overlay_generation + 1);
        assert_eq!(
            backing(&now.overlay_path),
            Some(backing_name(&now.image.path))
        );
        Ok(())
    }

    #[test]
    fn reset_clears_reservations_and_the_old_log() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let (dd, mut store, n, v2) = fleet(dir.path())?;
        let pr = dd.pr_file(&n.name);
        std::fs::create_dir_all(pr.parent().context("pr dir")?)?;
        std::fs::write(&pr, b"key")?;
        let [w0, w1] = wal::paths(&n.overlay_path);
        std::fs::write(&w0, b"old log")?;
        std::fs::write(&w1, b"old log")?;
        let moved = recreate(&dd, store.as_mut(), &n, &v2)?;
        assert_eq!(moved.image.id, v2.id);
        assert_eq!(moved.overlay_generation, n.overlay_generation + 1);
        assert!(!pr.exists(), "the old disk's reservations went with it");
        assert!(
            !w0.exists() && !w1.exists(),
            "the old overlay's log went with it"
        );
        remove(&dd, store.as_mut(), &moved)?;
        assert!(!moved.overlay_path.exists());
        Ok(())
    }

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
