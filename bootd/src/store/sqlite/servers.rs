//! [`Servers`] in SQLite: the same statements as PostgreSQL's (see
//! `store::servers`), with SQLite's clock. One server per SQLite registry
//! in practice, but the same code path as several.

use super::{bump, node_by_name, SqliteStore};
use crate::store::servers::{self as sv, NewServer, ServerInfo, Servers, SQLITE_NOW_MS};
use crate::store::shared::not_found;
use crate::store::{Node, Result};
use rusqlite::{params, OptionalExtension};

/// SQLite numbers `$N` parameters by first appearance, not by N; `?N` is
/// N. (The shared statements use `$` only for parameters.)
fn numbered(sql: &str) -> String {
    sql.replace('$', "?")
}

fn count(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Servers for SqliteStore {
    fn register_server(&mut self, s: &NewServer) -> Result<()> {
        self.conn.execute(
            &numbered(&sv::register_sql(SQLITE_NOW_MS)),
            params![s.id, s.iscsi, s.http_port],
        )?;
        Ok(())
    }

    fn heartbeat(&mut self, id: &str, sessions: u64, bytes_served: u64) -> Result<bool> {
        let n = self.conn.execute(
            &numbered(&sv::heartbeat_sql(SQLITE_NOW_MS)),
            params![id, count(sessions), count(bytes_served)],
        )?;
        Ok(n > 0)
    }

    fn servers(&self) -> Result<Vec<ServerInfo>> {
        let mut st = self.conn.prepare(&sv::list_sql(SQLITE_NOW_MS))?;
        let rows = st.query_map([], |r| sv::server_row(r))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn claim_node(&mut self, node: &str, me: &str, dead_after_ms: i64) -> Result<Option<u64>> {
        let tx = self.write()?;
        let epoch: Option<i64> = tx
            .query_row(
                &numbered(&sv::claim_sql(SQLITE_NOW_MS)),
                params![node, me, dead_after_ms],
                |r| r.get(0),
            )
            .optional()?;
        if epoch.is_some() {
            bump(&tx)?;
            tx.commit()?;
        }
        Ok(epoch.map(|e| u64::try_from(e).unwrap_or(0)))
    }

    fn release_node(&mut self, node: &str, me: &str) -> Result<bool> {
        let tx = self.write()?;
        let changed = tx.execute(&numbered(sv::RELEASE_SQL), params![node, me])? > 0;
        if changed {
            bump(&tx)?;
            tx.commit()?;
        }
        Ok(changed)
    }

    fn retire_server(&mut self, id: &str, dead_after_ms: i64) -> Result<u64> {
        let tx = self.write()?;
        let n = tx.execute(&numbered(sv::RELEASE_ALL_SQL), params![id])?;
        tx.execute(
            &numbered(&sv::retire_sql(SQLITE_NOW_MS)),
            params![id, dead_after_ms],
        )?;
        bump(&tx)?;
        tx.commit()?;
        Ok(n as u64)
    }

    fn set_draining(&mut self, id: &str, on: bool) -> Result<bool> {
        let n = self
            .conn
            .execute(&numbered(sv::DRAIN_SQL), params![id, i64::from(on)])?;
        Ok(n > 0)
    }

    fn set_portal(&mut self, id: &str, iscsi: &str) -> Result<bool> {
        let n = self
            .conn
            .execute(&numbered(sv::PORTAL_SQL), params![id, iscsi])?;
        Ok(n > 0)
    }

    fn pin_node(&mut self, node: &str, server: Option<&str>) -> Result<Node> {
        let tx = self.write()?;
        if let Some(s) = server {
            if tx
                .query_row(&numbered(sv::SERVER_EXISTS_SQL), [s], |_| Ok(()))
                .optional()?
                .is_none()
            {
                return Err(not_found("server", s));
            }
        }
        if tx.execute(&numbered(sv::PIN_SQL), params![node, server])? == 0 {
            return Err(not_found("node", node));
        }
        let n = node_by_name(&tx, node)?;
        bump(&tx)?;
        tx.commit()?;
        Ok(n)
    }
}
