//! [`Servers`] in PostgreSQL: heartbeats and registration are plain
//! statements (no generation bump, no NOTIFY); claims, releases and pins go
//! through the registry's write transaction, which moves the generation.

use super::{node_by_name, PgStore};
use crate::store::servers::{self as sv, NewServer, ServerInfo, Servers, POSTGRES_NOW_MS};
use crate::store::shared::not_found;
use crate::store::{Node, Result, StoreError};

fn count(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Servers for PgStore {
    fn register_server(&mut self, s: &NewServer) -> Result<()> {
        let port = i64::from(s.http_port);
        self.write_record(
            &sv::register_sql(POSTGRES_NOW_MS),
            &[&s.id, &s.iscsi, &port],
        )?;
        Ok(())
    }

    fn heartbeat(&mut self, id: &str, sessions: u64, bytes_served: u64) -> Result<bool> {
        let n = self.write_record(
            &sv::heartbeat_sql(POSTGRES_NOW_MS),
            &[&id, &count(sessions), &count(bytes_served)],
        )?;
        Ok(n > 0)
    }

    fn servers(&self) -> Result<Vec<ServerInfo>> {
        self.rows(&sv::list_sql(POSTGRES_NOW_MS), &[])?
            .iter()
            .map(sv::server_row)
            .collect()
    }

    fn claim_node(&mut self, node: &str, me: &str, dead_after_ms: i64) -> Result<Option<u64>> {
        let sql = sv::claim_sql(POSTGRES_NOW_MS);
        // A claim refused rolls back (an error out of `write`), so it moves
        // no generation: a refused claim changes nothing any view shows.
        let claimed = self.write(
            |tx| match tx.query_opt(&sql, &[&node, &me, &dead_after_ms])? {
                Some(r) => {
                    let e: i64 = r.try_get(0)?;
                    u64::try_from(e).map_err(|_| StoreError::Corrupt(format!("owner epoch {e}")))
                }
                None => Err(not_found("claim", node)),
            },
        );
        match claimed {
            Ok(e) => Ok(Some(e)),
            Err(StoreError::NotFound { kind: "claim", .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn release_node(&mut self, node: &str, me: &str) -> Result<bool> {
        let released = self.write(|tx| match tx.execute(sv::RELEASE_SQL, &[&node, &me])? {
            0 => Err(not_found("release", node)),
            _ => Ok(()),
        });
        match released {
            Ok(()) => Ok(true),
            Err(StoreError::NotFound {
                kind: "release", ..
            }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn retire_server(&mut self, id: &str, dead_after_ms: i64) -> Result<u64> {
        let sql = sv::retire_sql(POSTGRES_NOW_MS);
        self.write(|tx| {
            let n = tx.execute(sv::RELEASE_ALL_SQL, &[&id])?;
            tx.execute(&sql, &[&id, &dead_after_ms])?;
            Ok(n)
        })
    }

    fn set_draining(&mut self, id: &str, on: bool) -> Result<bool> {
        let flag = i64::from(on);
        Ok(self.write_record(sv::DRAIN_SQL, &[&id, &flag])? > 0)
    }

    fn set_portal(&mut self, id: &str, iscsi: &str) -> Result<bool> {
        Ok(self.write_record(sv::PORTAL_SQL, &[&id, &iscsi])? > 0)
    }

    fn pin_node(&mut self, node: &str, server: Option<&str>) -> Result<Node> {
        self.write(|tx| {
            if let Some(s) = server {
                if tx.query_opt(sv::SERVER_EXISTS_SQL, &[&s])?.is_none() {
                    return Err(not_found("server", s));
                }
            }
            if tx.execute(sv::PIN_SQL, &[&node, &server])? == 0 {
                return Err(not_found("node", node));
            }
            node_by_name(tx, node)
        })
    }
}
