//! [`Tokens`] in SQLite: plain statements, no generation bump.

use super::SqliteStore;
use crate::store::shared::{not_found, now};
use crate::store::tokens::{duplicate, TokenInfo, Tokens, SELECT};
use crate::store::Result;
use rusqlite::{params, OptionalExtension};

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenInfo> {
    Ok(TokenInfo {
        name: r.get(0)?,
        sha256: r.get(1)?,
        read_only: r.get(2)?,
        created: r.get(3)?,
        last_used: r.get(4)?,
    })
}

impl Tokens for SqliteStore {
    fn add_token(&mut self, name: &str, sha256: &str, read_only: bool) -> Result<TokenInfo> {
        let created = now();
        let tx = self.write()?;
        let taken = tx
            .query_row(
                "SELECT 1 FROM api_tokens WHERE name = ?1 OR sha256 = ?2",
                params![name, sha256],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if taken {
            return Err(duplicate(name));
        }
        tx.execute(
            "INSERT INTO api_tokens (name, sha256, read_only, created) VALUES (?1, ?2, ?3, ?4)",
            params![name, sha256, read_only, created],
        )?;
        tx.commit()?;
        Ok(TokenInfo {
            name: name.into(),
            sha256: sha256.into(),
            read_only,
            created,
            last_used: None,
        })
    }

    fn tokens(&self) -> Result<Vec<TokenInfo>> {
        let mut st = self.conn.prepare(&format!("{SELECT} ORDER BY name"))?;
        let rows = st.query_map([], row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn remove_token(&mut self, name: &str) -> Result<TokenInfo> {
        let tx = self.write()?;
        let t = tx
            .query_row(&format!("{SELECT} WHERE name = ?1"), [name], row)
            .optional()?
            .ok_or_else(|| not_found("token", name))?;
        tx.execute("DELETE FROM api_tokens WHERE name = ?1", [name])?;
        tx.commit()?;
        Ok(t)
    }

    fn token_used(&mut self, name: &str, at: i64) -> Result<()> {
        self.conn.execute(
            "UPDATE api_tokens SET last_used = ?2 WHERE name = ?1",
            params![name, at],
        )?;
        Ok(())
    }
}
