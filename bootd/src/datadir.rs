//! The data directory: `bootd.db`, `images/<name>-v<version>.raw`,
//! `overlays/<node>.qcow2`, `pr/` (persistent reservation state).

use crate::store::rooted::Rooted;
use crate::store::sqlite::SqliteStore;
use crate::store::Store;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Creates the directory tree if needed. The root is made absolute so
    /// paths stored in the registry stay valid from any working directory.
    pub fn open(root: &Path) -> Result<Self> {
        for sub in ["", "images", "overlays", "pr"] {
            let d = root.join(sub);
            std::fs::create_dir_all(&d)
                .with_context(|| format!("cannot create data directory {}", d.display()))?;
        }
        let root = std::fs::canonicalize(root)
            .with_context(|| format!("data directory {}", root.display()))?;
        Ok(Self { root })
    }

    /// The registry. Callers see only the [`Store`] trait, so another
    /// backend can take SQLite's place.
    pub fn store(&self) -> Result<Box<dyn Store>> {
        let db = SqliteStore::open(&self.root.join("bootd.db"))?;
        Ok(Box::new(Rooted::new(Box::new(db), self.root.clone())))
    }

    /// Taken by `serve` for its lifetime: two servers on one data directory
    /// would fight over every overlay's write lock.
    pub fn lock_serve(&self) -> Result<std::fs::File> {
        use std::os::fd::AsRawFd;
        let path = self.root.join("serve.lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("{}", path.display()))?;
        // SAFETY: plain syscall on a descriptor `f` keeps open.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            anyhow::bail!(
                "another bootd serve is already running on {}",
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

    pub fn pr_file(&self, node: &str) -> PathBuf {
        self.root.join("pr").join(format!("node-{node}-lun0"))
    }
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
