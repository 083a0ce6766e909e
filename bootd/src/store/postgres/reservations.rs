//! [`Reservations`] in PostgreSQL: a save is one transaction that locks
//! the node's row first, so it and a peer's claim of the node (an UPDATE
//! of that row) go one after the other: a save either commits before the
//! claim (and the new owner reads it) or finds the new epoch and writes
//! nothing. No generation bump, no NOTIFY. A read is one snapshot.

use super::PgStore;
use crate::store::reservations::{self as pr, Fence, NodeRef, RegRow, Reservations, StateRow};
use crate::store::shared::not_found;
use crate::store::Result;
use iscsi_proto::scsi::pr::PrState;
use postgres::{GenericClient, IsolationLevel};

fn node_ref(c: &mut impl GenericClient, node: &str, lock: bool) -> Result<NodeRef> {
    let sql = if lock {
        format!("{} FOR UPDATE", pr::NODE_SQL)
    } else {
        pr::NODE_SQL.to_string()
    };
    let r = c
        .query_opt(&sql, &[&node])?
        .ok_or_else(|| not_found("node", node))?;
    Ok(NodeRef {
        id: r.try_get(0)?,
        owner: r.try_get(1)?,
        epoch: r.try_get(2)?,
        overlay_generation: r.try_get(3)?,
    })
}

impl Reservations for PgStore {
    fn pr_state(&self, node: &str, lun: u32) -> Result<PrState> {
        let lun = i64::from(lun);
        let any: bool = self
            .row_opt(pr::ANY_SQL, &[&node, &lun])?
            .ok_or_else(|| not_found("node", node))?
            .try_get(0)?;
        if !any {
            return Ok(PrState::default());
        }
        self.read(|c| {
            let mut tx = c
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            let n = node_ref(&mut tx, node, false)?;
            let state = tx
                .query_opt(pr::STATE_SQL, &[&n.id, &lun, &n.overlay_generation])?
                .map(|r| -> Result<StateRow> {
                    Ok(StateRow {
                        generation: r.try_get(0)?,
                        aptpl: r.try_get(1)?,
                        kind: r.try_get(2)?,
                        holder: (r.try_get(3)?, r.try_get(4)?),
                    })
                })
                .transpose()?;
            let regs = match state {
                None => Vec::new(),
                Some(_) => tx
                    .query(pr::REGS_SQL, &[&n.id, &lun])?
                    .iter()
                    .map(|r| -> Result<RegRow> {
                        Ok(RegRow {
                            key: r.try_get(0)?,
                            initiator_port: r.try_get(1)?,
                            target_port: r.try_get(2)?,
                            relative_port: r.try_get(3)?,
                        })
                    })
                    .collect::<Result<_>>()?,
            };
            tx.commit()?;
            pr::assemble(state, regs)
        })
    }

    fn save_pr_state(
        &mut self,
        node: &str,
        lun: u32,
        fence: Option<Fence<'_>>,
        state: &PrState,
    ) -> Result<bool> {
        let lun = i64::from(lun);
        let mut conn = self.live()?;
        let mut tx = conn.transaction()?;
        let n = node_ref(&mut tx, node, true)?;
        if !n.admits(fence) {
            return Ok(false);
        }
        tx.execute(pr::DELETE_REGS_SQL, &[&n.id, &lun])?;
        tx.execute(pr::DELETE_STATE_SQL, &[&n.id, &lun])?;
        let res = state.reservation.as_ref();
        let kind = res.map(|r| i64::from(r.kind));
        let scope = res.map(|_| pr::LU_SCOPE);
        let holder = (
            res.map(|r| r.holder.0.as_str()),
            res.map(|r| r.holder.1.as_str()),
        );
        tx.execute(
            pr::INSERT_STATE_SQL,
            &[
                &n.id,
                &lun,
                &n.overlay_generation,
                &i64::from(state.generation),
                &state.aptpl,
                &kind,
                &scope,
                &holder.0,
                &holder.1,
            ],
        )?;
        for (i, r) in state.regs.iter().enumerate() {
            tx.execute(
                pr::INSERT_REG_SQL,
                &[
                    &n.id,
                    &lun,
                    &(i as i64),
                    &r.initiator_port,
                    &r.target_port,
                    &i64::from(r.relative_port),
                    &pr::key_to_db(r.key),
                ],
            )?;
        }
        tx.commit()?;
        Ok(true)
    }
}
