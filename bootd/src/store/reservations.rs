//! Persistent reservations (SPC-4 5.9) per node and LUN, kept in the
//! registry so that an acknowledged PERSISTENT RESERVE OUT survives a
//! crash and restart of serve and moves with the node to the server that
//! takes it over. serve saves the whole state of a LUN in one transaction
//! before the command completes (`serve::pr`). Saves are fenced: with
//! several servers only the node's owner at the epoch of its claim may
//! write, so a server that lost the node can never overwrite what its new
//! owner saved. Neither a save nor a read moves the generation: nothing
//! serve serves changes.
//!
//! The state belongs to the node's current overlay: a fresh overlay
//! (reset, move, upgrade) is a new disk, and reads find none for it.

use super::Result;
use iscsi_proto::scsi::pr::{PrState, Registration, Reservation};

/// Only this owner, at this fencing epoch, may save (several servers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence<'a> {
    pub owner: &'a str,
    pub epoch: u64,
}

pub trait Reservations {
    /// The PR state of `node`'s LUN `lun` on its current overlay; empty
    /// when none was saved for it. `NotFound` for a node that does not
    /// exist.
    fn pr_state(&self, node: &str, lun: u32) -> Result<PrState>;
    /// Replaces that state in one transaction; `false` (nothing written)
    /// when `fence` names an owner or epoch the node no longer has.
    /// `NotFound` for a node that does not exist.
    fn save_pr_state(
        &mut self,
        node: &str,
        lun: u32,
        fence: Option<Fence<'_>>,
        state: &PrState,
    ) -> Result<bool>;
}

/// `$1` node name: id, owner, owner epoch, overlay generation.
pub const NODE_SQL: &str =
    "SELECT id, owner, owner_epoch, overlay_generation FROM nodes WHERE name = $1";

/// `$1` node name, `$2` LUN: whether the node has saved state for its
/// current overlay (one statement: most nodes have none, and serve reads
/// this for every node it opens). `$1` comes first in the text: SQLite
/// numbers `$N` parameters in the order they appear.
pub const ANY_SQL: &str = "SELECT s.pr_generation IS NOT NULL
     FROM (SELECT id, overlay_generation FROM nodes WHERE name = $1) n
     LEFT JOIN pr_state s ON s.node_id = n.id AND s.lun = $2
        AND s.overlay_generation = n.overlay_generation";

/// `$1` node id, `$2` LUN, `$3` overlay generation.
pub const STATE_SQL: &str = "SELECT pr_generation, aptpl, res_type, holder_initiator, holder_target
     FROM pr_state WHERE node_id = $1 AND lun = $2 AND overlay_generation = $3";

/// `$1` node id, `$2` LUN.
pub const REGS_SQL: &str = "SELECT reg_key, initiator_port, target_port, relative_port
     FROM pr_registrations WHERE node_id = $1 AND lun = $2 ORDER BY position";

/// `$1` node id, `$2` LUN: the registrations go first (they reference the state).
pub const DELETE_REGS_SQL: &str = "DELETE FROM pr_registrations WHERE node_id = $1 AND lun = $2";
pub const DELETE_STATE_SQL: &str = "DELETE FROM pr_state WHERE node_id = $1 AND lun = $2";

/// `$1` node id, `$2` LUN, `$3` overlay generation, `$4` PRgeneration,
/// `$5` APTPL, `$6` type, `$7` scope, `$8`/`$9` the holder's ports.
pub const INSERT_STATE_SQL: &str = "INSERT INTO pr_state (node_id, lun, overlay_generation,
        pr_generation, aptpl, res_type, res_scope, holder_initiator, holder_target)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

/// `$1` node id, `$2` LUN, `$3` position, `$4`/`$5` ports, `$6` relative
/// port, `$7` key.
pub const INSERT_REG_SQL: &str = "INSERT INTO pr_registrations (node_id, lun, position,
        initiator_port, target_port, relative_port, reg_key)
     VALUES ($1, $2, $3, $4, $5, $6, $7)";

/// A reservation key's 64 bits as the signed integer both dialects store.
pub fn key_to_db(key: u64) -> i64 {
    i64::from_be_bytes(key.to_be_bytes())
}

pub fn key_from_db(v: i64) -> u64 {
    u64::from_be_bytes(v.to_be_bytes())
}

/// The node row's fields a save and a read need.
pub struct NodeRef {
    pub id: i64,
    pub owner: Option<String>,
    pub epoch: i64,
    pub overlay_generation: i64,
}

impl NodeRef {
    /// Whether a save fenced by `fence` may write.
    pub fn admits(&self, fence: Option<Fence<'_>>) -> bool {
        fence.is_none_or(|f| {
            self.owner.as_deref() == Some(f.owner) && u64::try_from(self.epoch) == Ok(f.epoch)
        })
    }
}

/// The state row as read: PRgeneration, APTPL, type, holder's ports.
pub struct StateRow {
    pub generation: i64,
    pub aptpl: bool,
    pub kind: Option<i64>,
    pub holder: (Option<String>, Option<String>),
}

/// One registration row as read.
pub struct RegRow {
    pub key: i64,
    pub initiator_port: String,
    pub target_port: String,
    pub relative_port: i64,
}

/// Builds the state from its rows; `Corrupt` for values out of range.
pub fn assemble(state: Option<StateRow>, regs: Vec<RegRow>) -> Result<PrState> {
    let corrupt = |what: String| super::StoreError::Corrupt(what);
    let Some(st) = state else {
        return Ok(PrState::default());
    };
    let generation = u32::try_from(st.generation)
        .map_err(|_| corrupt(format!("PRgeneration {}", st.generation)))?;
    let reservation = match (st.kind, st.holder) {
        (None, _) => None,
        (Some(k), (Some(i), Some(t))) => Some(Reservation {
            kind: u8::try_from(k).map_err(|_| corrupt(format!("reservation type {k}")))?,
            holder: (i, t),
        }),
        (Some(k), _) => return Err(corrupt(format!("reservation type {k} without a holder"))),
    };
    let regs = regs
        .into_iter()
        .map(|r| {
            Ok(Registration {
                key: key_from_db(r.key),
                relative_port: u16::try_from(r.relative_port)
                    .map_err(|_| corrupt(format!("relative port {}", r.relative_port)))?,
                initiator_port: r.initiator_port,
                target_port: r.target_port,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(PrState {
        generation,
        regs,
        reservation,
        aptpl: st.aptpl,
    })
}

/// LU scope: the only scope SPC-4 leaves (element scope is obsolete).
pub const LU_SCOPE: i64 = 0;
