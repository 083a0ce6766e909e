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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{NewImage, NewNode, Store};
    use iscsi_proto::scsi::pr::Registration;

    fn registry_with_node() -> anyhow::Result<Registry> {
        let mut s = SqliteStore::open_in_memory()?;
        let img = s.add_image(&NewImage {
            name: "deb".into(),
            version: 1,
            path: "/data/images/deb-v1.raw".into(),
            bytes: 1 << 20,
            sha256: "00".repeat(32),
        })?;
        s.add_node(&NewNode {
            name: "n1".into(),
            mac: "02:00:00:00:00:01".parse()?,
            image_id: img.id,
            template: None,
            ip: None,
            target_iqn: "iqn.t:n1".into(),
            initiator_iqn: "iqn.i:n1".into(),
            chap_user: "n1".into(),
            chap_secret: "0123456789abcdef".into(),
            overlay_path: "/data/overlays/n1.qcow2".into(),
            user_data: None,
        })?;
        Ok(Registry::new(Box::new(s) as Box<dyn Store>))
    }

    fn state(aptpl: bool) -> PrState {
        PrState {
            generation: 3,
            regs: vec![Registration {
                key: 0x1234,
                initiator_port: "iqn.i:n1,i,0x23d000000001".into(),
                target_port: "iqn.t:n1,t,0x1".into(),
                relative_port: 1,
            }],
            reservation: None,
            aptpl,
        }
    }

    #[test]
    fn an_older_serves_state_file_moves_into_the_registry_once() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let legacy = dir.path().join("node-n1-lun0");
        PrFile::new(&legacy).save(&state(true))?;
        let registry = registry_with_node()?;
        let pr = RegistryPr {
            registry: registry.clone(),
            node: "n1".into(),
            lun: 0,
            fence: None,
            legacy: Some(legacy.clone()),
        };
        assert_eq!(pr.load()?, state(true));
        assert!(!legacy.exists(), "the file stays after the move");
        assert_eq!(registry.with(|s| s.pr_state("n1", 0))?, state(true));
        // Without APTPL the old serve dropped it at start: so does the move.
        PrFile::new(&legacy).save(&state(false))?;
        let fresh = registry_with_node()?;
        let pr = RegistryPr {
            registry: fresh.clone(),
            ..pr
        };
        assert_eq!(pr.load()?, PrState::default());
        assert!(!legacy.exists());
        Ok(())
    }

    #[test]
    fn a_save_by_a_server_that_lost_the_node_is_refused() -> anyhow::Result<()> {
        let registry = registry_with_node()?;
        let epoch = registry
            .with(|s| s.claim_node("n1", "s1", 5000))?
            .unwrap_or(0);
        let pr = |epoch| RegistryPr {
            registry: registry.clone(),
            node: "n1".into(),
            lun: 0,
            fence: Some(("s1".into(), epoch)),
            legacy: None,
        };
        pr(epoch).save(&state(false))?;
        let stale = pr(epoch + 1).save(&state(true));
        assert!(
            matches!(&stale, Err(PrStoreError::Backend(e)) if e.to_string().contains("no longer this server's")),
            "{stale:?}"
        );
        assert_eq!(pr(epoch).load()?, state(false));
        Ok(())
    }
}
