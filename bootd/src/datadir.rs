//! The data directory: `bootd.db`, `images/<name>-v<version>.raw`,
//! `overlays/<node>.qcow2`, `pr/` (persistent reservation state).

use crate::store::rooted::Rooted;
use crate::store::sqlite::SqliteStore;
use crate::store::url::Registry;
use crate::store::Store;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
    /// Where the registry is: `bootd.db` here unless `--registry` says
    /// otherwise. Images, overlays and locks stay in the directory.
    registry: Registry,
}

impl DataDir {
    /// Creates the directory tree if needed. The root is made absolute so
    /// paths stored in the registry stay valid from any working directory.
    ///
    /// The registry holds every node's CHAP secret in plain text and the
    /// overlays are the nodes' disks: the tree is the owner's alone (0700
    /// directories, 0600 registry and overlays), also when an older bootd
    /// or a wider umask left it readable to others.
    pub fn open(root: &Path) -> Result<Self> {
        for sub in ["", "images", "overlays", "pr"] {
            let d = root.join(sub);
            std::fs::create_dir_all(&d)
                .with_context(|| format!("cannot create data directory {}", d.display()))?;
            restrict(&d, PRIVATE_DIR)?;
        }
        let root = std::fs::canonicalize(root)
            .with_context(|| format!("data directory {}", root.display()))?;
        for name in ["bootd.db", "bootd.db-wal", "bootd.db-shm", "dhcp-leases"] {
            restrict(&root.join(name), PRIVATE_FILE)?;
        }
        let overlays = std::fs::read_dir(root.join("overlays"))
            .with_context(|| format!("listing {}/overlays", root.display()))?;
        for entry in overlays.flatten() {
            restrict(&entry.path(), PRIVATE_FILE)?;
        }
        Ok(Self {
            root,
            registry: Registry::DataDir,
        })
    }

    /// The same directory with its registry elsewhere (`--registry`).
    pub fn with_registry(mut self, registry: Registry) -> Self {
        self.registry = registry;
        self
    }

    /// Where the registry is (`--registry`).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The registry. Callers see only the [`Store`] trait: SQLite and
    /// PostgreSQL answer alike.
    pub fn store(&self) -> Result<Box<dyn Store>> {
        let db: Box<dyn Store> = match &self.registry {
            Registry::DataDir => Box::new(SqliteStore::open(&self.root.join("bootd.db"))?),
            Registry::Sqlite(path) => Box::new(SqliteStore::open(path)?),
            Registry::Postgres(target) => crate::store::postgres::open(target)?,
        };
        Ok(Box::new(Rooted::new(db, self.root.clone())))
    }

    /// Taken by `serve` for its lifetime, one lock per server id
    /// (`servers/ID.lock`): two serves under one id would fight over every
    /// overlay it owns; servers with different ids share the directory
    /// (each node's overlay has its own lock, see `serve::targets`).
    pub fn lock_server(&self, id: &str) -> Result<std::fs::File> {
        use std::os::fd::AsRawFd;
        let dir = self.root.join("servers");
        std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
        restrict(&dir, PRIVATE_DIR)?;
        let path = dir.join(format!("{id}.lock"));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("{}", path.display()))?;
        // SAFETY: plain syscall on a descriptor `f` keeps open.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            anyhow::bail!(
                "another bootd serve is already running on {} as server {id:?}",
                self.root.display()
            );
        }
        Ok(f)
    }

    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }

    pub fn overlays(&self) -> PathBuf {
        self.root.join("overlays")
    }

    pub fn image_file(&self, name: &str, version: u32) -> PathBuf {
        self.images().join(image_file_name(name, version))
    }

    pub fn overlay_file(&self, node: &str) -> PathBuf {
        self.overlays().join(format!("{node}.qcow2"))
    }

    /// The lock held by whoever is releasing the node (see `lifecycle`).
    pub fn claim_file(&self, node: &str) -> PathBuf {
        self.root.join("claims").join(format!("{node}.lock"))
    }

    /// Locked by serve while the node has at least one logged-in iSCSI
    /// session (see `events::session_locks`); a command that must not run
    /// under a live session probes it.
    pub fn session_file(&self, node: &str) -> PathBuf {
        self.root.join("sessions").join(format!("{node}.lock"))
    }

    pub fn pr_file(&self, node: &str) -> PathBuf {
        self.root.join("pr").join(format!("node-{node}-lun0"))
    }
}

/// Modes of the data directory's directories and of the files holding
/// secrets or disks.
pub const PRIVATE_DIR: u32 = 0o700;
pub const PRIVATE_FILE: u32 = 0o600;

/// Takes the group and other bits off `path` (when it exists and has any),
/// capping it at `mode`. Symlinks are not followed: a link planted in the
/// tree must not make bootd chmod its target.
fn restrict(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
    };
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let current = meta.permissions().mode() & 0o7777;
    if current & 0o077 == 0 {
        return Ok(());
    }
    // A directory keeps its search bit whatever the files' cap.
    let cap = if meta.is_dir() { PRIVATE_DIR } else { mode };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(current & cap))
        .with_context(|| format!("cannot make {} private", path.display()))
}

pub fn image_file_name(name: &str, version: u32) -> String {
    format!("{name}-v{version}.raw")
}

/// What an overlay's header names as its backing file: relative to the
/// overlay, so qemu tools find the golden image and the data directory can
/// move. bootd itself never follows it.
pub fn backing_name(image_path: &Path) -> String {
    let file = image_path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("../images/{file}")
}

/// Bytes allocated on disk (st_blocks * 512); 0 when the file is missing.
pub fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).map_or(0, |m| m.permissions().mode() & 0o777)
    }

    #[test]
    fn an_open_tree_is_made_private() -> Result<()> {
        let tmp = tempfile::tempdir()?;
        let root = tmp.path().join("data");
        std::fs::create_dir_all(root.join("overlays"))?;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))?;
        let overlay = root.join("overlays").join("n1.qcow2");
        std::fs::write(&overlay, b"disk")?;
        std::fs::set_permissions(&overlay, std::fs::Permissions::from_mode(0o644))?;
        let db = root.join("bootd.db");
        std::fs::write(&db, b"")?;
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o664))?;
        let sub = root.join("overlays").join("n1.d");
        std::fs::create_dir(&sub)?;
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o755))?;
        DataDir::open(&root)?;
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&sub), 0o700, "a directory stays searchable");
        for sub in ["images", "overlays", "pr"] {
            assert_eq!(mode(&root.join(sub)) & 0o077, 0, "{sub}");
        }
        assert_eq!(mode(&overlay), 0o600);
        assert_eq!(mode(&db), 0o600);
        Ok(())
    }
}
