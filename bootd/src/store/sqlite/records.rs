//! [`Records`] in SQLite: plain upserts, no generation bump (nothing served
//! changes).

use super::SqliteStore;
use crate::store::{BootStage, Discovered, Records, Result};
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
        let mut st = self.conn.prepare(
            "SELECT mac, arch, vendor_class, ipxe, first_seen, last_seen, requests
             FROM discovered ORDER BY first_seen, mac",
        )?;
        let rows = st.query_map([], |r| {
            Ok(Discovered {
                mac: r.get(0)?,
                arch: r.get(1)?,
                vendor_class: r.get(2)?,
                ipxe: r.get(3)?,
                first_seen: r.get(4)?,
                last_seen: r.get(5)?,
                requests: u64::try_from(r.get::<_, i64>(6)?).unwrap_or(0),
            })
        })?;
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
        let mut st = self.conn.prepare(
            "SELECT stage, at_ms, detail FROM boot_stages WHERE mac = ?1 ORDER BY at_ms, stage",
        )?;
        let rows = st.query_map([mac], |r| {
            Ok(BootStage {
                stage: r.get(0)?,
                at_ms: r.get(1)?,
                detail: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovered_and_stages() -> Result<()> {
        let mut s = SqliteStore::open_in_memory()?;
        let g = crate::store::Store::generation(&s)?;
        let mut d = Discovered {
            mac: "52:54:00:00:00:01".into(),
            arch: Some(7),
            vendor_class: "PXEClient:Arch:00007".into(),
            ipxe: false,
            first_seen: 100,
            last_seen: 100,
            requests: 1,
        };
        s.note_discovered(&d)?;
        d.last_seen = 200;
        d.first_seen = 200;
        s.note_discovered(&d)?;
        let got = s.discovered()?;
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].first_seen, got[0].last_seen, got[0].requests),
            (100, 200, 2)
        );
        let st = |stage: &str, at_ms| BootStage {
            stage: stage.into(),
            at_ms,
            detail: String::new(),
        };
        s.record_stage(&d.mac, &st("dhcp", 1), true)?;
        s.record_stage(&d.mac, &st("tftp", 2), false)?;
        assert_eq!(s.boot_stages(&d.mac)?.len(), 2);
        s.record_stage(&d.mac, &st("dhcp", 3), true)?;
        assert_eq!(s.boot_stages(&d.mac)?, vec![st("dhcp", 3)]);
        // Neither moves what serve watches.
        assert_eq!(crate::store::Store::generation(&s)?, g);
        Ok(())
    }
}
