//! DHCP leases in the shared registry (`--dhcp full` on several servers):
//! one row per address in `leases` (migrations 6 and 7), whose primary key
//! is what keeps two servers from granting one address. Plain statements
//! on a connection of their own: no generation bump, no NOTIFY, never
//! behind serve's registry lock. Blocking: call from a plain thread (the
//! DHCP threads) or through [`super::off_runtime::run`].
//!
//! Rows are never deleted, only expired (at most one per pool address), and
//! every write stamps the row with its transaction's id, so that a server
//! follows the others by reading only what changed since its last read
//! ([`PgLeases::changes`]), not every live row each second.

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
    /// A client found the address in use by another host (DHCPDECLINE):
    /// no server offers it until the row expires.
    Declined,
}

impl LeaseState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Offered => "offered",
            Self::Bound => "bound",
            Self::Declined => "declined",
        }
    }
}

/// The writing transaction's id, as a plain number.
const XID: &str = "CAST(CAST(pg_current_xact_id() AS TEXT) AS BIGINT)";
/// The oldest transaction still running when the statement's snapshot was
/// taken: every transaction below it has committed (or aborted) and is
/// visible to this statement; every one at or above it may commit later.
const SNAPSHOT_XMIN: &str = "CAST(CAST(pg_snapshot_xmin(pg_current_snapshot()) AS TEXT) AS BIGINT)";

/// One lease row, its expiry as milliseconds left on the registry's clock
/// (so the servers' clocks need not agree; zero or less once it ended).
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
/// (and not declined) or expired. `ON CONFLICT ... DO UPDATE ... WHERE`
/// settles a race on one address atomically: the second claimer waits for
/// the first one's commit, then sees its row, and its WHERE fails. An
/// OFFER's hold never shortens or downgrades the MAC's own running lease.
fn claim_sql() -> String {
    let now = POSTGRES_NOW_MS;
    format!(
        "INSERT INTO leases AS l (address, mac, server_id, state, expires_at, changed_xid)
         VALUES ($1, $2, $3, $4, {now} + $5, {XID})
         ON CONFLICT (address) DO UPDATE SET
             mac = EXCLUDED.mac,
             server_id = EXCLUDED.server_id,
             changed_xid = EXCLUDED.changed_xid,
             state = CASE WHEN EXCLUDED.state = 'offered' AND l.mac = EXCLUDED.mac
                               AND l.expires_at > {now}
                          THEN l.state ELSE EXCLUDED.state END,
             expires_at = CASE WHEN EXCLUDED.state = 'offered' AND l.mac = EXCLUDED.mac
                               THEN GREATEST(l.expires_at, EXCLUDED.expires_at)
                               ELSE EXCLUDED.expires_at END
         WHERE (l.mac = EXCLUDED.mac AND l.state <> 'declined') OR l.expires_at <= {now}
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
            "declined" => LeaseState::Declined,
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
    /// made it): one address per MAC. An offer of another address to a MAC
    /// with a running bound lease loses to that lease (its row is
    /// returned): a node that asks another server (iPXE after the PXE ROM)
    /// keeps its address, even before that server has read the lease.
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
        if state == LeaseState::Offered {
            let sql = row_sql(&format!(
                "mac = $1 AND address <> $2 AND state = 'bound' AND expires_at > {POSTGRES_NOW_MS}"
            ));
            if let Some(r) = c.query(&sql, &[&mac, &ip])?.first() {
                return Ok(Claim::Lost(Some(lease_row(r)?)));
            }
        }
        let won = c
            .query_opt(&claim_sql(), &[&ip, &mac, &me, &state.as_str(), &hold_ms])?
            .is_some();
        if !won {
            let holder = c.query_opt(&row_sql("address = $1"), &[&ip])?;
            return Ok(Claim::Lost(holder.as_ref().map(lease_row).transpose()?));
        }
        if state == LeaseState::Bound {
            // Ended, not deleted: the other servers read the change.
            let sql = format!(
                "UPDATE leases SET expires_at = {POSTGRES_NOW_MS}, changed_xid = {XID}
                 WHERE mac = $1 AND address <> $2 AND state <> 'declined'
                     AND expires_at > {POSTGRES_NOW_MS}"
            );
            c.execute(&sql, &[&mac, &ip])?;
        }
        Ok(Claim::Won)
    }

    /// RELEASE: `mac`'s lease on `address` ends now. The row stays
    /// (expired) so that the MAC gets the address again if nobody else
    /// needs it.
    pub fn release(&mut self, address: Ipv4Addr, mac: &str) -> Result<bool> {
        let ip = address.to_string();
        let sql = format!(
            "UPDATE leases SET expires_at = LEAST(expires_at, {POSTGRES_NOW_MS}),
                 changed_xid = {XID}
             WHERE address = $1 AND mac = $2 AND state <> 'declined'"
        );
        Ok(self.conn()?.execute(&sql, &[&ip, &mac])? > 0)
    }

    /// DECLINE: `mac`, which holds `address`, found another host using it.
    /// The row becomes `declined` for `hold_ms`: no server offers the
    /// address (to anyone, that MAC included) until then. Only the
    /// holder's DECLINE counts, so a client cannot fence off addresses it
    /// was never given.
    pub fn decline(&mut self, address: Ipv4Addr, mac: &str, hold_ms: i64) -> Result<bool> {
        let ip = address.to_string();
        let sql = format!(
            "UPDATE leases SET state = 'declined', expires_at = {POSTGRES_NOW_MS} + $3,
                 changed_xid = {XID}
             WHERE address = $1 AND mac = $2 AND state <> 'declined'
                 AND expires_at > {POSTGRES_NOW_MS}"
        );
        Ok(self.conn()?.execute(&sql, &[&ip, &mac, &hold_ms])? > 0)
    }

    /// Every row written since `since` (a value this returned before; 0
    /// for all), ended ones included, and the value for the next call. A
    /// row may come again in a later call (harmless: rows are states, not
    /// events); none written after the previous call is missed, however
    /// late its transaction commits, because the next read starts at the
    /// oldest transaction still running when this one read.
    pub fn changes(&mut self, since: i64) -> Result<(Vec<LeaseRow>, i64)> {
        let sql = format!(
            "WITH s AS (SELECT {SNAPSHOT_XMIN} AS xmin)
             SELECT l.address, l.mac, l.server_id, l.state,
                    l.expires_at - {POSTGRES_NOW_MS}, s.xmin
             FROM s LEFT JOIN leases l ON l.changed_xid >= $1
             ORDER BY l.address"
        );
        let rows = self.conn()?.query(&sql, &[&since])?;
        let mut next = since;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            next = r.try_get(5)?;
            // The LEFT JOIN's one row with no lease when nothing changed.
            if r.try_get::<_, Option<String>>(0)?.is_some() {
                out.push(lease_row(r)?);
            }
        }
        Ok((out, next))
    }

    /// Every unexpired row, whichever server wrote it, by address.
    #[cfg(test)]
    pub fn live(&mut self) -> Result<Vec<LeaseRow>> {
        let sql = row_sql(&format!("expires_at > {POSTGRES_NOW_MS}"));
        self.conn()?
            .query(&sql, &[])?
            .iter()
            .map(lease_row)
            .collect()
    }
}
