//! [`Records`] in PostgreSQL: plain upserts, no generation bump (nothing
//! served changes), so no notification either.

use super::PgStore;
use crate::store::rows::{
    discovered_row, last_stage_row, stage_row, DISCOVERED_SELECT, LAST_STAGE_SELECT, STAGE_SELECT,
};
use crate::store::{BootStage, Discovered, LastStage, Records, Result};

/// Discovered machines kept at most (as in SQLite).
const MAX_DISCOVERED: i64 = 10_000;

impl Records for PgStore {
    fn note_discovered(&mut self, d: &Discovered) -> Result<()> {
        let arch = d.arch.map(i64::from);
        // A full table takes updates of the MACs it has, no new ones.
        self.write_record(
            "INSERT INTO discovered (mac, arch, vendor_class, ipxe, first_seen, last_seen, requests)
             SELECT $1, $2, $3, $4, $5, $6, 1
             WHERE (SELECT COUNT(*) FROM discovered) < $7
                OR EXISTS (SELECT 1 FROM discovered WHERE mac = $1)
             ON CONFLICT (mac) DO UPDATE SET
                arch = excluded.arch, vendor_class = excluded.vendor_class,
                ipxe = excluded.ipxe, last_seen = excluded.last_seen,
                requests = discovered.requests + 1",
            &[
                &d.mac,
                &arch,
                &d.vendor_class,
                &d.ipxe,
                &d.first_seen,
                &d.last_seen,
                &MAX_DISCOVERED,
            ],
        )?;
        Ok(())
    }

    fn discovered(&self) -> Result<Vec<Discovered>> {
        let rows = self.rows(
            &format!("{DISCOVERED_SELECT} ORDER BY first_seen, mac"),
            &[],
        )?;
        rows.iter().map(discovered_row).collect()
    }

    fn record_stage(&mut self, mac: &str, stage: &BootStage, new_boot: bool) -> Result<()> {
        let mut conn = self.live()?;
        let mut tx = conn.transaction()?;
        if new_boot {
            tx.execute("DELETE FROM boot_stages WHERE mac = $1", &[&mac])?;
        }
        tx.execute(
            "INSERT INTO boot_stages (mac, stage, at_ms, detail) VALUES ($1, $2, $3, $4)
             ON CONFLICT (mac, stage) DO UPDATE SET at_ms = excluded.at_ms, detail = excluded.detail",
            &[&mac, &stage.stage, &stage.at_ms, &stage.detail],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn boot_stages(&self, mac: &str) -> Result<Vec<BootStage>> {
        let rows = self.rows(
            &format!("{STAGE_SELECT} WHERE mac = $1 ORDER BY at_ms, stage"),
            &[&mac],
        )?;
        rows.iter().map(stage_row).collect()
    }

    fn last_stages(&self) -> Result<Vec<LastStage>> {
        let rows = self.rows(LAST_STAGE_SELECT, &[])?;
        rows.iter().map(last_stage_row).collect()
    }
}
