//! [`Reservations`] in SQLite: a save is one `BEGIN IMMEDIATE`
//! transaction (no generation bump); a read is one snapshot.

use super::SqliteStore;
use crate::store::reservations::{self as pr, Fence, NodeRef, RegRow, Reservations, StateRow};
use crate::store::shared::not_found;
use crate::store::Result;
use iscsi_proto::scsi::pr::PrState;
use rusqlite::{params, Connection, OptionalExtension};

fn node_ref(c: &Connection, node: &str) -> Result<NodeRef> {
    c.query_row(pr::NODE_SQL, [node], |r| {
        Ok(NodeRef {
            id: r.get(0)?,
            owner: r.get(1)?,
            epoch: r.get(2)?,
            overlay_generation: r.get(3)?,
        })
    })
    .optional()?
    .ok_or_else(|| not_found("node", node))
}

impl Reservations for SqliteStore {
    fn pr_state(&self, node: &str, lun: u32) -> Result<PrState> {
        let any = self
            .conn
            .query_row(pr::ANY_SQL, params![node, lun], |r| r.get::<_, bool>(0))
            .optional()?
            .ok_or_else(|| not_found("node", node))?;
        if !any {
            return Ok(PrState::default());
        }
        // One read transaction: the state and its registrations agree.
        let tx = self.conn.unchecked_transaction()?;
        let n = node_ref(&tx, node)?;
        let state = tx
            .query_row(
                pr::STATE_SQL,
                params![n.id, lun, n.overlay_generation],
                |r| {
                    Ok(StateRow {
                        generation: r.get(0)?,
                        aptpl: r.get(1)?,
                        kind: r.get(2)?,
                        holder: (r.get(3)?, r.get(4)?),
                    })
                },
            )
            .optional()?;
        let regs = match state {
            None => Vec::new(),
            Some(_) => {
                let mut st = tx.prepare(pr::REGS_SQL)?;
                let rows = st.query_map(params![n.id, lun], |r| {
                    Ok(RegRow {
                        key: r.get(0)?,
                        initiator_port: r.get(1)?,
                        target_port: r.get(2)?,
                        relative_port: r.get(3)?,
                    })
                })?;
                rows.collect::<rusqlite::Result<_>>()?
            }
        };
        tx.finish()?;
        pr::assemble(state, regs)
    }

    fn save_pr_state(
        &mut self,
        node: &str,
        lun: u32,
        fence: Option<Fence<'_>>,
        state: &PrState,
    ) -> Result<bool> {
        let tx = self.write()?;
        let n = node_ref(&tx, node)?;
        if !n.admits(fence) {
            return Ok(false);
        }
        tx.execute(pr::DELETE_REGS_SQL, params![n.id, lun])?;
        tx.execute(pr::DELETE_STATE_SQL, params![n.id, lun])?;
        let res = state.reservation.as_ref();
        tx.execute(
            pr::INSERT_STATE_SQL,
            params![
                n.id,
                lun,
                n.overlay_generation,
                i64::from(state.generation),
                state.aptpl,
                res.map(|r| i64::from(r.kind)),
                res.map(|_| pr::LU_SCOPE),
                res.map(|r| r.holder.0.as_str()),
                res.map(|r| r.holder.1.as_str()),
            ],
        )?;
        for (i, r) in state.regs.iter().enumerate() {
            tx.execute(
                pr::INSERT_REG_SQL,
                params![
                    n.id,
                    lun,
                    i as i64,
                    r.initiator_port,
                    r.target_port,
                    i64::from(r.relative_port),
                    pr::key_to_db(r.key),
                ],
            )?;
        }
        tx.commit()?;
        Ok(true)
    }
}
