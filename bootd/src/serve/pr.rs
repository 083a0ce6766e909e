//! Persistent reservations of a served node kept in the registry: the
//! target's [`PrStore`] interface on `store::reservations`. Every change a
//! PERSISTENT RESERVE OUT makes is saved (one transaction, fenced by this
//! server's claim of the node) before the command completes, so an
//! acknowledged change survives a crash, a restart and a takeover.
//!
//! What counts as the logical unit's power loss (SPC-4 5.9.4: without
//! APTPL, registrations do not survive one): nothing serve goes through.
//! The logical unit is the node's disk as the registry describes it; a
//! serve restart, a crash, a takeover or a drain moves it between processes
//! and servers the way a path failover would, so its registrations and
//! reservation stay, with or without APTPL (guest clusters fence through
//! them across exactly those events). A fresh overlay (reset, move,
//! upgrade) is a new disk and starts without any. APTPL is kept and
//! reported (PTPL_A) as the initiator set it.

use crate::fleet::Registry;
use crate::store::reservations::Fence;
use iscsi_proto::scsi::pr::PrState;
use iscsi_target::lun::{PrFile, PrStore, PrStoreError};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
enum PrError {
    #[error("node {node}: {source}")]
    Registry {
        node: String,
        source: crate::store::StoreError,
    },
    #[error("node {node} is no longer this server's (owner or fencing epoch moved): not saved")]
    Fenced { node: String },
}

pub struct RegistryPr {
    pub registry: Registry,
    pub node: String,
    pub lun: u32,
    /// This server and the epoch of its claim (several servers); `None`:
    /// the only server.
    pub fence: Option<(String, u64)>,
    /// Where bootd kept the node's state before the registry did: read
    /// once, moved into the registry, removed.
    pub legacy: Option<PathBuf>,
}

impl std::fmt::Debug for RegistryPr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryPr")
            .field("node", &self.node)
            .field("lun", &self.lun)
            .field("fence", &self.fence)
            .finish()
    }
}

impl RegistryPr {
    fn err(&self, source: crate::store::StoreError) -> PrStoreError {
        PrStoreError::Backend(Box::new(PrError::Registry {
            node: self.node.clone(),
            source,
        }))
    }

    /// State an older bootd left in its file (APTPL only, as it kept it),
    /// if the registry has none yet.
    fn import_legacy(&self, st: PrState) -> Result<PrState, PrStoreError> {
        let Some(path) = self.legacy.as_ref().filter(|p| p.exists()) else {
            return Ok(st);
        };
        if st != PrState::default() {
            return Ok(st);
        }
        let old = PrFile::new(path).load()?;
        if old != PrState::default() {
            self.save(&old)?;
            tracing::info!(node = %self.node, "persistent reservations moved from {} into the registry", path.display());
        }
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(node = %self.node, "{}: {e}", path.display());
        }
        Ok(old)
    }
}

impl PrStore for RegistryPr {
    fn load(&self) -> Result<PrState, PrStoreError> {
        let st = self
            .registry
            .with(|s| s.pr_state(&self.node, self.lun))
            .map_err(|e| self.err(e))?;
        self.import_legacy(st)
    }

    fn save(&self, state: &PrState) -> Result<(), PrStoreError> {
        let fence = self.fence.as_ref().map(|(owner, epoch)| Fence {
            owner,
            epoch: *epoch,
        });
        let saved = self
            .registry
            .with(|s| s.save_pr_state(&self.node, self.lun, fence, state))
            .map_err(|e| self.err(e))?;
        if !saved {
            return Err(PrStoreError::Backend(Box::new(PrError::Fenced {
                node: self.node.clone(),
            })));
        }
        Ok(())
    }
}
