//! [`Records`] in SQLite: plain upserts, no generation bump (nothing served
//! changes).

use super::SqliteStore;
use crate::store::rows::{
    discovered_row, last_stage_row, stage_row, DISCOVERED_SELECT, LAST_STAGE_SELECT, STAGE_SELECT,
};
use crate::store::{BootStage, Discovered, LastStage, Records, Result};
use rusqlite::params;

/// Discovered machines kept at most.
const MAX_DISCOVERED: i64 = 10_000;

impl Records for SqliteStore {
    fn note_discovered(&mut self, d: &Discovered) -> Result<()> {
        // A full table takes updates of the MACs it has, no new ones.
        self.conn.execute(
            "INSERT INTO discovered (mac, arch, vendor_class, ipxe, first_seen, last_seen, requests)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, 1
             WHERE (SELECT COUNT(*) FROM discovered) < ?7
                OR EXISTS (SELECT 1 FROM discovered WHERE mac = ?1)
             ON CONFLICT (mac) DO UPDATE SET
                arch = excluded.arch, vendor_class = excluded.vendor_class,
                ipxe = excluded.ipxe, last_seen = excluded.last_seen,
                requests = requests + 1",
            params![
                d.mac,
                d.arch,
                d.vendor_class,
                d.ipxe,
                d.first_seen,
                d.last_seen,
                MAX_DISCOVERED
            ],
        )?;
        Ok(())
    }

    fn discovered(&self) -> Result<Vec<Discovered>> {
        let mut st = self
            .conn
            .prepare(&format!("{DISCOVERED_SELECT} ORDER BY first_seen, mac"))?;
        let rows = st.query_map([], |r| discovered_row(r))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn record_stage(&mut self, mac: &str, stage: &BootStage, new_boot: bool) -> Result<()> {
        let tx = self.conn.transaction()?;
        if new_boot {
            tx.execute("DELETE FROM boot_stages WHERE mac = ?1", [mac])?;
        }
        tx.execute(
            "INSERT INTO boot_stages (mac, stage, at_ms, detail) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (mac, stage) DO UPDATE SET at_ms = excluded.at_ms, detail = excluded.detail",
            params![mac, stage.stage, stage.at_ms, stage.detail],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn boot_stages(&self, mac: &str) -> Result<Vec<BootStage>> {
        let mut st = self.conn.prepare(&format!(
            "{STAGE_SELECT} WHERE mac = ?1 ORDER BY at_ms, stage"
        ))?;
        let rows = st.query_map([mac], |r| stage_row(r))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn last_stages(&self) -> Result<Vec<LastStage>> {
        let mut st = self.conn.prepare(LAST_STAGE_SELECT)?;
        let rows = st.query_map([], |r| last_stage_row(r))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}
