//! The persistent-reservation state file: loaded at start, written (tmp +
//! fsync + rename) after every change.

use super::LunError;
use iscsi_proto::scsi::pr::PrState;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Loads PR state; a missing file is an empty state. State saved without
/// APTPL does not survive a restart (SPC-4 5.9.4).
pub(super) fn load_pr(path: &Path) -> Result<PrState, LunError> {
    match std::fs::read(path) {
        Ok(b) => {
            let st = PrState::decode(&b).ok_or_else(|| LunError::PrStateMalformed {
                path: path.to_path_buf(),
            })?;
            Ok(if st.aptpl { st } else { PrState::default() })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PrState::default()),
        Err(source) => Err(LunError::PrState {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Why the PR state file could not be written.
#[derive(Debug, thiserror::Error)]
pub(super) enum SaveError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The blocking write task panicked or was cancelled.
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
}

pub(super) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
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
