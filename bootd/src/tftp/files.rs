//! Which file a request names: confined to the boot directory, read whole
//! (iPXE binaries are well under 2 MiB) off the runtime's worker threads.

use super::packet::ErrorCode;
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::SystemTime;

/// Files larger than this are refused: a boot directory holds loaders, and
/// each transfer keeps its file in memory.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// A refusal: the ERROR code and message sent to the client.
pub type Refusal = (ErrorCode, &'static str);

/// Distinct cached paths kept before dead entries are swept.
const CACHE_SWEEP: usize = 256;

/// A file's identity for the cache: unchanged size and mtime mean unchanged
/// content, as for make and rsync.
type Stamp = (u64, Option<SystemTime>);

/// Files being served, by real path: their stamp and a handle that lives
/// while any transfer holds the bytes.
type Live = HashMap<PathBuf, (Stamp, Weak<[u8]>)>;

/// The boot directory, canonicalised once at start, and the files being
/// served from it: concurrent transfers of one file share one copy, which
/// is dropped when the last of them ends.
#[derive(Debug)]
pub struct Root {
    dir: PathBuf,
    live: Mutex<Live>,
}

impl Root {
    pub fn new(dir: &Path) -> std::io::Result<Self> {
        Ok(Self::at(std::fs::canonicalize(dir)?))
    }

    /// A root at `dir` as given (a directory that does not exist yet:
    /// every request then gets "file not found").
    pub fn at(dir: PathBuf) -> Self {
        Self {
            dir,
            live: Mutex::new(HashMap::new()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Resolves `name` inside the root. Leading slashes are dropped (PXE
    /// ROMs often send `/undionly.kpxe`); `..`, NUL and backslashes are
    /// refused, and so is any directory on the way whose real location
    /// leaves the root. The file itself may be a symlink to a file anywhere:
    /// the operator put it there (Debian's `/usr/lib/ipxe/ipxe.efi` points to
    /// `/boot`), as tftpd-hpa and dnsmasq allow.
    pub fn resolve(&self, name: &str) -> Result<PathBuf, Refusal> {
        const DENIED: Refusal = (ErrorCode::AccessViolation, "access violation");
        if name.contains('\0') || name.contains('\\') || name.len() > super::packet::MAX_FILENAME {
            return Err(DENIED);
        }
        let rel = Path::new(name.trim_start_matches('/'));
        let mut clean = PathBuf::new();
        for c in rel.components() {
            match c {
                Component::Normal(p) => clean.push(p),
                Component::CurDir => {}
                Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                    return Err(DENIED)
                }
            }
        }
        if clean.as_os_str().is_empty() {
            return Err(DENIED);
        }
        let joined = self.dir.join(&clean);
        let parent = joined.parent().unwrap_or(&self.dir);
        let real_parent = std::fs::canonicalize(parent)
            .map_err(|_| (ErrorCode::FileNotFound, "file not found"))?;
        if !real_parent.starts_with(&self.dir) {
            return Err(DENIED);
        }
        // The real file is the cache key: two names of one file share a copy.
        std::fs::canonicalize(&joined).map_err(|_| (ErrorCode::FileNotFound, "file not found"))
    }

    /// Resolves and reads `name`. Blocking: call from `spawn_blocking`.
    pub fn load(&self, name: &str) -> Result<Arc<[u8]>, Refusal> {
        let path = self.resolve(name)?;
        let meta =
            std::fs::metadata(&path).map_err(|_| (ErrorCode::FileNotFound, "file not found"))?;
        if !meta.is_file() {
            return Err((ErrorCode::FileNotFound, "file not found"));
        }
        if meta.len() > MAX_FILE_BYTES {
            return Err((ErrorCode::AccessViolation, "file too large"));
        }
        let stamp = (meta.len(), meta.modified().ok());
        if let Some(hit) = self.cached(&path, stamp) {
            return Ok(hit);
        }
        let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => {
                (ErrorCode::AccessViolation, "access violation")
            }
            _ => (ErrorCode::FileNotFound, "file not found"),
        })?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err((ErrorCode::AccessViolation, "file too large"));
        }
        let bytes: Arc<[u8]> = bytes.into();
        if let Ok(mut live) = self.live.lock() {
            if live.len() >= CACHE_SWEEP {
                live.retain(|_, (_, w)| w.strong_count() > 0);
            }
            live.insert(path, (stamp, Arc::downgrade(&bytes)));
        }
        Ok(bytes)
    }

    fn cached(&self, path: &Path, stamp: Stamp) -> Option<Arc<[u8]>> {
        let live = self.live.lock().ok()?;
        let (s, w) = live.get(path)?;
        if *s != stamp {
            return None;
        }
        w.upgrade()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_root() -> Result<(), Box<dyn std::error::Error>> {
        let outer = tempfile::tempdir()?;
        let root_dir = outer.path().join("boot");
        std::fs::create_dir_all(root_dir.join("sub"))?;
        std::fs::write(root_dir.join("a.efi"), b"A")?;
        std::fs::write(root_dir.join("sub/b.kpxe"), b"B")?;
        std::fs::write(outer.path().join("secret"), b"S")?;
        std::os::unix::fs::symlink(outer.path().join("secret"), root_dir.join("out"))?;
        std::os::unix::fs::symlink("a.efi", root_dir.join("in"))?;
        std::fs::create_dir(outer.path().join("etc"))?;
        std::fs::write(outer.path().join("etc/shadow"), b"X")?;
        std::os::unix::fs::symlink(outer.path().join("etc"), root_dir.join("etc"))?;
        let root = Root::new(&root_dir)?;
        // A file symlink the operator placed is followed wherever it points.
        assert_eq!(&*root.load("out").map_err(|e| e.1)?, b"S");

        assert_eq!(&*root.load("a.efi").map_err(|e| e.1)?, b"A");
        assert_eq!(&*root.load("/a.efi").map_err(|e| e.1)?, b"A");
        assert_eq!(&*root.load("./sub/b.kpxe").map_err(|e| e.1)?, b"B");
        assert_eq!(&*root.load("in").map_err(|e| e.1)?, b"A");
        for bad in [
            "../secret",
            "sub/../../secret",
            "etc/shadow",
            "a\0b",
            "sub\\..\\..\\secret",
            "/",
            "",
        ] {
            assert_eq!(
                root.load(bad).map(|_| ()),
                Err((ErrorCode::AccessViolation, "access violation")),
                "{bad:?}"
            );
        }
        assert_eq!(
            root.load(&"a".repeat(300)).map(|_| ()).map_err(|e| e.0),
            Err(ErrorCode::AccessViolation)
        );
        assert_eq!(
            root.load("missing").map(|_| ()).map_err(|e| e.0),
            Err(ErrorCode::FileNotFound)
        );
        assert_eq!(
            root.load("sub").map(|_| ()).map_err(|e| e.0),
            Err(ErrorCode::FileNotFound)
        );
        Ok(())
    }
}
