//! DHCP leases in the shared registry (`--dhcp full` on several servers):
//! one row per address in `leases` (migration 6), whose primary key is what
//! keeps two servers from granting one address. Plain statements on a
//! connection of their own: no generation bump, no NOTIFY, never behind
//! serve's registry lock. Blocking: call from a plain thread (the DHCP
//! threads) or through [`super::off_runtime::run`].

use super::{connect, PgStore};
use crate::store::servers::POSTGRES_NOW_MS;
use crate::store::url::PgTarget;
use crate::store::{Result, StoreError};
use postgres::Client;
use std::net::Ipv4Addr;

/// What a lease row is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Held for the client's REQUEST after an OFFER.
    Offered,
    /// ACKed.
    Bound,
}

impl LeaseState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Offered => "offered",
            Self::Bound => "bound",
        }
    }
}

/// One live lease row, its expiry as milliseconds left on the registry's
/// clock (so the servers' clocks need not agree).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    pub address: Ipv4Addr,
    pub mac: String,
    pub server: String,
    pub state: LeaseState,
    pub left_ms: i64,
}

/// The outcome of [`PgLeases::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    Won,
    /// Another MAC holds the address unexpired: its row, to keep the
    /// address out of the loser's choices.
    Lost(Option<LeaseRow>),
}

/// The claim: a new row, or the row taken over when it is the same MAC's
/// or expired. `ON CONFLICT ... DO UPDATE ... WHERE` settles a race on one
/// address atomically: the second claimer waits for the first one's
/// commit, then sees its row, and its WHERE fails. An OFFER's hold never
/// shortens or downgrades the MAC's own running lease.
fn claim_sql() -> String {
    let now = POSTGRES_NOW_MS;
    format!(
        "INSERT INTO leases AS l (address, mac, server_id, state, expires_at)
         VALUES ($1, $2, $3, $4, {now} + $5)
         ON CONFLICT (address) DO UPDATE SET
             mac = EXCLUDED.mac,
             server_id = EXCLUDED.server_id,
             state = CASE WHEN EXCLUDED.state = 'offered' AND l.mac = EXCLUDED.mac
                               AND l.expires_at > {now}
                          THEN l.state ELSE EXCLUDED.state END,
             expires_at = CASE WHEN EXCLUDED.state = 'offered' AND l.mac = EXCLUDED.mac
                               THEN GREATEST(l.expires_at, EXCLUDED.expires_at)
                               ELSE EXCLUDED.expires_at END
         WHERE l.mac = EXCLUDED.mac OR l.expires_at <= {now}
         RETURNING address"
    )
}

fn row_sql(filter: &str) -> String {
    format!(
        "SELECT address, mac, server_id, state, expires_at - {POSTGRES_NOW_MS}
         FROM leases WHERE {filter} ORDER BY address"
    )
}

fn lease_row(r: &postgres::Row) -> Result<LeaseRow> {
    let address: String = r.try_get(0)?;
    let state: String = r.try_get(3)?;
    Ok(LeaseRow {
        address: address
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("lease address {address:?}")))?,
        mac: r.try_get(1)?,
        server: r.try_get(2)?,
        state: match state.as_str() {
            "offered" => LeaseState::Offered,
            "bound" => LeaseState::Bound,
            other => return Err(StoreError::Corrupt(format!("lease state {other:?}"))),
        },
        left_ms: r.try_get(4)?,
    })
}

/// One server's lease connection.
pub struct PgLeases {
    client: Client,
    target: PgTarget,
    /// The server id written into the rows it grants.
    me: String,
}

impl PgLeases {
    /// Connects (and migrates, as any registry connection does) for server `me`.
    pub fn open(target: &PgTarget, me: &str) -> Result<Self> {
        // Opening the registry once migrates it to a version with `leases`.
        drop(PgStore::open(target)?);
        Ok(Self {
            client: connect(target)?,
            target: target.clone(),
            me: me.to_string(),
        })
    }

    /// The server id this connection grants leases as.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// The connection, made again if the server closed it: a lease
    /// statement that failed on a lost connection is not retried here (the
    /// client retries its DHCP message).
    fn conn(&mut self) -> Result<&mut Client> {
        if self.client.is_closed() {
            tracing::warn!(registry = %self.target.shown, "lease connection lost; connecting again");
            self.client = connect(&self.target)?;
        }
        Ok(&mut self.client)
    }

    /// Claims `address` for `mac` for `hold_ms` from now (registry clock).
    /// A bound claim ends the MAC's other rows (the offers other servers
    /// made it): one address per MAC.
    pub fn claim(
        &mut self,
        address: Ipv4Addr,
        mac: &str,
        state: LeaseState,
        hold_ms: i64,
    ) -> Result<Claim> {
        let ip = address.to_string();
        let me = self.me.clone();
        let c = self.conn()?;
        let won = c
            .query_opt(&claim_sql(), &[&ip, &mac, &me, &state.as_str(), &hold_ms])?
            .is_some();
        if !won {
            let holder = c.query_opt(&row_sql("address = $1"), &[&ip])?;
            return Ok(Claim::Lost(holder.as_ref().map(lease_row).transpose()?));
        }
        if state == LeaseState::Bound {
            c.execute(
                "DELETE FROM leases WHERE mac = $1 AND address <> $2",
                &[&mac, &ip],
            )?;
        }
        Ok(Claim::Won)
    }

    /// RELEASE or DECLINE: `mac`'s lease on `address` ends now. The row
    /// stays (expired) so that the MAC gets the address again if nobody
    /// else needs it.
    pub fn release(&mut self, address: Ipv4Addr, mac: &str) -> Result<bool> {
        let ip = address.to_string();
        let sql = format!(
            "UPDATE leases SET expires_at = LEAST(expires_at, {POSTGRES_NOW_MS})
             WHERE address = $1 AND mac = $2"
        );
        Ok(self.conn()?.execute(&sql, &[&ip, &mac])? > 0)
    }

    /// Every unexpired lease, whichever server granted it, by address.
    pub fn live(&mut self) -> Result<Vec<LeaseRow>> {
        let sql = row_sql(&format!("expires_at > {POSTGRES_NOW_MS}"));
        self.conn()?
            .query(&sql, &[])?
            .iter()
            .map(lease_row)
            .collect()
    }
}
