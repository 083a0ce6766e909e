//! [`Tokens`] in PostgreSQL: plain statements outside the registry's write
//! transaction (no generation bump, no NOTIFY); a unique violation is the
//! same `Duplicate` SQLite answers.

use super::PgStore;
use crate::store::shared::{not_found, now};
use crate::store::tokens::{duplicate, TokenInfo, Tokens, SELECT};
use crate::store::Result;

fn row(r: &postgres::Row) -> Result<TokenInfo> {
    Ok(TokenInfo {
        name: r.try_get(0)?,
        sha256: r.try_get(1)?,
        read_only: r.try_get(2)?,
        created: r.try_get(3)?,
        last_used: r.try_get(4)?,
    })
}

impl Tokens for PgStore {
    fn add_token(&mut self, name: &str, sha256: &str, read_only: bool) -> Result<TokenInfo> {
        let created = now();
        let added = self.write_record(
            "INSERT INTO api_tokens (name, sha256, read_only, created) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
            &[&name, &sha256, &read_only, &created],
        )?;
        if added == 0 {
            return Err(duplicate(name));
        }
        Ok(TokenInfo {
            name: name.into(),
            sha256: sha256.into(),
            read_only,
            created,
            last_used: None,
        })
    }

    fn tokens(&self) -> Result<Vec<TokenInfo>> {
        self.rows(&format!("{SELECT} ORDER BY name"), &[])?
            .iter()
            .map(row)
            .collect()
    }

    fn remove_token(&mut self, name: &str) -> Result<TokenInfo> {
        let gone = self.live()?.query(
            "DELETE FROM api_tokens WHERE name = $1
             RETURNING name, sha256, read_only, created, last_used",
            &[&name],
        )?;
        match gone.first() {
            Some(r) => row(r),
            None => Err(not_found("token", name)),
        }
    }

    fn token_used(&mut self, name: &str, at: i64) -> Result<()> {
        self.write_record(
            "UPDATE api_tokens SET last_used = $2 WHERE name = $1",
            &[&name, &at],
        )
        .map(|_| ())
    }
}
