//! Where persistent reservation state lives between commands: the
//! [`PrStore`] interface the LUN saves every change through before the
//! PERSISTENT RESERVE OUT completes, and its file implementation
//! ([`PrFile`]: loaded at start, written tmp + fsync + rename after every
//! change). bootd's serve keeps the state in its registry instead (an
//! implementation of its own); without a store it stays in memory.

use iscsi_proto::scsi::pr::PrState;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Why persistent reservation state could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum PrStoreError {
    #[error("persistent reservation state {path}: {source}", path = path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("persistent reservation state {path}: malformed persistent reservation state", path = path.display())]
    Malformed { path: PathBuf },
    /// The store refused or failed (a registry's own error inside).
    #[error("persistent reservation state: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The blocking save task panicked or was cancelled.
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
}

/// Keeps one LUN's persistent reservation state. Both calls block (a file
/// or a database): `load` runs once in [`super::Lun::new`], `save` on a
/// blocking thread while the PERSISTENT RESERVE OUT that made the change
/// waits; a failed save fails the command and rolls the change back.
pub trait PrStore: Send + Sync + std::fmt::Debug {
    /// The state the LUN starts with.
    fn load(&self) -> Result<PrState, PrStoreError>;
    /// Makes `state` durable; returns only once it is.
    fn save(&self, state: &PrState) -> Result<(), PrStoreError>;
}

/// Persistent reservation state in a file of its own (`bootd export`).
#[derive(Debug, Clone)]
pub struct PrFile {
    path: PathBuf,
}

impl PrFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }
}

impl PrStore for PrFile {
    /// A missing file is an empty state. State saved without APTPL does
    /// not survive a restart (SPC-4 5.9.4): a restart of `export` is the
    /// logical unit's power cycle.
    fn load(&self) -> Result<PrState, PrStoreError> {
        let path = &self.path;
        match std::fs::read(path) {
            Ok(b) => {
                let st = PrState::decode(&b).ok_or_else(|| PrStoreError::Malformed {
                    path: path.to_path_buf(),
                })?;
                Ok(if st.aptpl { st } else { PrState::default() })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PrState::default()),
            Err(source) => Err(PrStoreError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    fn save(&self, state: &PrState) -> Result<(), PrStoreError> {
        write_atomic(&self.path, &state.encode()).map_err(|source| PrStoreError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
