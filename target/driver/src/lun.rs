//! A logical unit: SCSI commands executed against a block device.
//!
//! The SCSI state machine (unit attentions, reservations, mode pages, SPC
//! answers) lives in `iscsi_proto::scsi::lu`; this file holds it in a mutex
//! for the moment a decision takes, hands block commands to `block`, and
//! persists persistent-reservation state through a [`PrStore`].

use blockdev::{BlockDevice, BlockError};
use iscsi_proto::scsi::cdb;
use iscsi_proto::scsi::inquiry::{Identity, Limits};
use iscsi_proto::scsi::lu::{LogicalUnit, Spc};
use iscsi_proto::scsi::pr::PrState;
use iscsi_proto::scsi::removable;
use iscsi_proto::scsi::sbc::{self, BlockOp, Geometry};
use iscsi_proto::scsi::sense::Sense;
use iscsi_proto::task::{Nexus, ScsiCommand, ScsiResult, TmfFunction, TmfResponse};
use std::sync::{Arc, Mutex, MutexGuard};

mod block;
mod pr_file;
mod sanitize;
mod xcopy;

use block::block_error;
pub use pr_file::{PrFile, PrStore, PrStoreError};

/// Identity and persistence settings of one LUN.
#[derive(Debug, Clone)]
pub struct LunConfig {
    /// Unit serial number (VPD 0x80); stable for the LUN's life.
    pub serial: String,
    /// 64-bit identifier for the NAA designator (VPD 0x83); stable per LUN.
    pub naa_id: u64,
    pub vendor: String,
    pub product: String,
    /// Where persistent reservations are kept across restarts (`None`:
    /// memory only, as for a conformance run).
    pub pr_store: Option<Arc<dyn PrStore>>,
    /// A removable medium (INQUIRY RMB): initiators can eject and load it
    /// with START STOP UNIT and prevent that per I_T nexus. The medium is
    /// loaded at start.
    pub removable: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LunError {
    #[error(transparent)]
    PrState(#[from] PrStoreError),
    #[error("block size {0} is not a multiple of 512")]
    BlockSize(u32),
}

use iscsi_proto::scsi::opcode::{
    EXTENDED_COPY, PERSISTENT_RESERVE_OUT as PR_OUT, SANITIZE, START_STOP_UNIT,
};

pub struct Lun {
    device: Arc<dyn BlockDevice>,
    geo: Geometry,
    limits: Limits,
    volatile_cache: bool,
    removable: bool,
    /// Shared with a running SANITIZE, which outlives its command.
    state: Arc<Mutex<LogicalUnit>>,
    /// Reads and writes hold it shared, COMPARE AND WRITE, WRITE ATOMIC and
    /// read-modify-writes exclusively: nothing else touches the medium in
    /// between.
    /// A running SANITIZE holds it exclusively (owned) until it ends.
    write_gate: Arc<tokio::sync::RwLock<()>>,
    pr_store: Option<Arc<dyn PrStore>>,
    /// Serialises PR state saves so the newest state lands last.
    pr_persist: tokio::sync::Mutex<()>,
}

impl Lun {
    pub fn new(device: Arc<dyn BlockDevice>, config: LunConfig) -> Result<Self, LunError> {
        let caps = device.capabilities();
        if caps.block_size == 0 || !caps.block_size.is_multiple_of(512) {
            return Err(LunError::BlockSize(caps.block_size));
        }
        let geo = Geometry {
            block_size: caps.block_size,
            num_blocks: caps.num_blocks,
            read_only: caps.read_only,
            thin: caps.thin,
            max_transfer_blocks: 0,
        };
        let pr = match &config.pr_store {
            Some(store) => store.load()?,
            None => PrState::default(),
        };
        let id = Identity {
            vendor: config.vendor,
            product: config.product,
            revision: env!("CARGO_PKG_VERSION").chars().take(4).collect(),
            serial: config.serial,
            naa_id: config.naa_id,
            removable: config.removable,
        };
        let lu = LogicalUnit::new(id, geo, caps.volatile_cache, pr);
        Ok(Self {
            device,
            geo: lu.geo,
            limits: lu.limits,
            volatile_cache: caps.volatile_cache,
            removable: config.removable,
            state: Arc::new(Mutex::new(lu)),
            write_gate: Arc::new(tokio::sync::RwLock::new(())),
            pr_store: config.pr_store,
            pr_persist: tokio::sync::Mutex::new(()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, LogicalUnit> {
        lock_state(&self.state)
    }

    /// Runs one command; never fails: errors become CHECK CONDITION results.
    pub async fn execute(&self, nexus: &Nexus, cmd: &ScsiCommand) -> ScsiResult {
        let mut r = self.run(nexus, cmd).await;
        // Data-In: what is actually returned (the residual tells the
        // initiator how much less than it asked for); Data-Out: what the CDB
        // asks the initiator to send.
        r.transfer_len = if cdb::data_out(&cmd.cdb) {
            cdb::transfer_len(&cmd.cdb, self.geo.block_size)
        } else {
            u32::try_from(r.data_in.len()).unwrap_or(u32::MAX)
        };
        r
    }

    async fn run(&self, nexus: &Nexus, cmd: &ScsiCommand) -> ScsiResult {
        // Ejecting writes cached data first (NO_FLUSH 0), before the medium
        // is gone.
        if self.removable
            && cdb::Cdb(&cmd.cdb).opcode() == START_STOP_UNIT
            && removable::eject_flushes(&cmd.cdb)
        {
            if let Err(e) = self.device.flush().await {
                return block_error(&e, true);
            }
        }
        // PERSISTENT RESERVE OUT with a store runs alone from its change to
        // its save, so a failed save rolls back exactly its change.
        let saving = self.pr_store.is_some() && cdb::Cdb(&cmd.cdb).opcode() == PR_OUT;
        let _saving = match saving {
            true => Some(self.pr_persist.lock().await),
            false => None,
        };
        let (spc, write_through, geo, pr_before) = {
            let mut lu = self.lock();
            let before = saving.then(|| lu.pr.clone());
            let spc = lu.spc(nexus, cmd.lun, &cmd.cdb, &cmd.data_out);
            (
                spc,
                lu.write_through() && self.volatile_cache,
                lu.current_geo(),
                before,
            )
        };
        match spc {
            Spc::Done { result, pr_changed } => {
                if pr_changed {
                    if let Err(e) = self.save_pr().await {
                        // Memory and store must agree: what could not be
                        // saved did not happen, and the initiator is told.
                        tracing::error!("persistent reservation state not saved: {e}");
                        if let Some(before) = pr_before {
                            self.lock().pr = before;
                        }
                        return Sense::INTERNAL_TARGET_FAILURE.into_result();
                    }
                }
                return result;
            }
            Spc::Block => {}
        }
        match cdb::Cdb(&cmd.cdb).opcode() {
            SANITIZE => return self.sanitize(&cmd.cdb, &cmd.data_out, &geo).await,
            EXTENDED_COPY => {
                return self
                    .extended_copy(nexus, &cmd.cdb, &cmd.data_out, &geo, write_through)
                    .await
            }
            _ => {}
        }
        let op = match sbc::decode(&geo, &self.limits, &cmd.cdb, &cmd.data_out) {
            Ok(Some(op)) => op,
            Ok(None) => return Sense::INVALID_OPCODE.into_result(),
            Err(r) => return r,
        };
        let write = matches!(
            op,
            BlockOp::Write { .. }
                | BlockOp::WriteSame { .. }
                | BlockOp::CompareAndWrite { .. }
                | BlockOp::OrWrite { .. }
                | BlockOp::AtomicWrite { .. }
                | BlockOp::Discard(_)
                | BlockOp::Flush
        );
        match self.block(op, write_through).await {
            Ok(r) => r,
            Err(e) => block_error(&e, write),
        }
    }

    /// Saves the PR state through the store, on a blocking thread; the
    /// caller holds `pr_persist`.
    async fn save_pr(&self) -> Result<(), PrStoreError> {
        let Some(store) = self.pr_store.clone() else {
            return Ok(());
        };
        let state = self.lock().pr.clone();
        tokio::task::spawn_blocking(move || store.save(&state)).await??;
        Ok(())
    }

    /// Carries out a task management function's effect on this LU.
    pub fn task_management(&self, nexus: &Nexus, function: TmfFunction) -> TmfResponse {
        match function {
            TmfFunction::TaskReassign => TmfResponse::ReassignmentNotSupported,
            TmfFunction::Other(_) => TmfResponse::NotSupported,
            f => {
                self.lock().task_management(nexus, f);
                TmfResponse::Complete
            }
        }
    }

    /// The I_T nexus is gone: its SPC-2 reservation is released;
    /// persistent reservation registrations stay.
    pub fn nexus_lost(&self, nexus: &Nexus) {
        self.lock().nexus_lost(nexus);
    }

    /// Flushes the device (shutdown).
    pub async fn flush(&self) -> Result<(), BlockError> {
        self.device.flush().await
    }
}

fn lock_state(state: &Mutex<LogicalUnit>) -> MutexGuard<'_, LogicalUnit> {
    // Every update of the state completes under the lock without panicking
    // paths, so a poisoned lock still holds consistent state.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;
