//! The servers sharing a registry and which of them owns each node.
//!
//! Heartbeats are plain statements: they do not move the generation (a bump
//! reloads every server's fleet view and queues behind the generation
//! row's lock). Each server computes liveness itself from heartbeat ages,
//! measured on the registry's clock so the servers' clocks need not agree.
//! Ownership changes do move the generation: the fleet view carries each
//! node's owner (its script points at the owner).

use super::{Node, Result};

/// What `serve` registers itself with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewServer {
    pub id: String,
    /// Where its iSCSI portal is, `IP:PORT`.
    pub iscsi: String,
    pub http_port: u16,
}

/// A registered server as `server list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    pub id: String,
    pub iscsi: String,
    pub http_port: u16,
    /// Unix milliseconds (registry clock).
    pub started_at: i64,
    /// Milliseconds since its last heartbeat, on the registry's clock.
    pub heartbeat_age_ms: i64,
    /// Live iSCSI sessions at its last heartbeat.
    pub sessions: u64,
    /// Bytes its iSCSI targets moved (read and written) since it started.
    pub bytes_served: u64,
    /// Nodes whose owner it is.
    pub nodes_owned: u64,
    /// Being drained: it hands its nodes to its peers and takes none.
    pub draining: bool,
}

pub trait Servers {
    /// Adds the server or starts it afresh (same id: a restart).
    fn register_server(&mut self, s: &NewServer) -> Result<()>;
    /// Moves the server's heartbeat to now, with its counters; `false` if
    /// its row is gone.
    fn heartbeat(&mut self, id: &str, sessions: u64, bytes_served: u64) -> Result<bool>;
    /// Every registered server, by id.
    fn servers(&self) -> Result<Vec<ServerInfo>>;
    /// Compare-and-set: makes `me` the node's owner and moves its epoch on,
    /// if the node has no owner, is `me`'s already, or its owner has not
    /// heartbeaten for `dead_after_ms` (or is not registered). Returns the
    /// new epoch, or `None` when another live server owns it (or the node
    /// does not exist). Moves the generation when it succeeds.
    fn claim_node(&mut self, node: &str, me: &str, dead_after_ms: i64) -> Result<Option<u64>>;
    /// Clears the node's owner if it is `me` (its overlay closed); whether
    /// it was. Moves the generation when it does.
    fn release_node(&mut self, node: &str, me: &str) -> Result<bool>;
    /// A server stopping cleanly: its nodes lose their owner (their
    /// overlays are closed) and it is listed dead at once, its heartbeat
    /// set `dead_after_ms` in the past, so peers take its nodes without
    /// waiting for it to expire. How many nodes it gave up. Moves the
    /// generation.
    fn retire_server(&mut self, id: &str, dead_after_ms: i64) -> Result<u64>;
    /// Starts (or, `false`, stops) draining the server; `false` if it is
    /// not registered. A restart of the server stops it too.
    fn set_draining(&mut self, id: &str, on: bool) -> Result<bool>;
    /// The portal (`IP:PORT`) peers redirect to and scripts point at now
    /// (a floating address arrived or left); `false` if not registered.
    fn set_portal(&mut self, id: &str, iscsi: &str) -> Result<bool>;
    /// Pins the node to `server` (`None`: unpins). `NotFound` for a node or
    /// server that does not exist. Moves the generation.
    fn pin_node(&mut self, node: &str, server: Option<&str>) -> Result<Node>;
}

/// The registry's clock in Unix milliseconds, per dialect.
pub const SQLITE_NOW_MS: &str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";
pub const POSTGRES_NOW_MS: &str = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)";

/// `$1` id, `$2` iSCSI address, `$3` HTTP port.
pub fn register_sql(now: &str) -> String {
    format!(
        "INSERT INTO servers (id, iscsi, http_port, started_at, heartbeat_at, sessions, bytes_served)
         VALUES ($1, $2, $3, {now}, {now}, 0, 0)
         ON CONFLICT (id) DO UPDATE SET
            iscsi = excluded.iscsi, http_port = excluded.http_port,
            started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at,
            sessions = 0, bytes_served = 0, draining = 0"
    )
}

/// `$1` id, `$2` sessions, `$3` bytes served.
pub fn heartbeat_sql(now: &str) -> String {
    format!(
        "UPDATE servers SET heartbeat_at = {now}, sessions = $2, bytes_served = $3 WHERE id = $1"
    )
}

/// The columns [`ServerInfo`] is read from, in its order.
pub fn list_sql(now: &str) -> String {
    format!(
        "SELECT s.id, s.iscsi, s.http_port, s.started_at, {now} - s.heartbeat_at,
                s.sessions, s.bytes_served,
                (SELECT COUNT(*) FROM nodes n WHERE n.owner = s.id), s.draining
         FROM servers s ORDER BY s.id"
    )
}

/// `$1` node, `$2` me, `$3` dead after (ms); returns the new epoch.
pub fn claim_sql(now: &str) -> String {
    format!(
        "UPDATE nodes SET owner = $2, owner_epoch = owner_epoch + 1
         WHERE name = $1 AND (owner IS NULL OR owner = $2
            OR owner NOT IN (SELECT id FROM servers WHERE {now} - heartbeat_at <= $3))
         RETURNING owner_epoch"
    )
}

/// `$1` server: every node it owns loses its owner.
pub const RELEASE_ALL_SQL: &str = "UPDATE nodes SET owner = NULL WHERE owner = $1";

/// `$1` server, `$2` dead after (ms): listed dead from now on.
pub fn retire_sql(now: &str) -> String {
    format!("UPDATE servers SET heartbeat_at = {now} - $2 - 1, sessions = 0 WHERE id = $1")
}

/// `$1` server, `$2` 1 or 0.
pub const DRAIN_SQL: &str = "UPDATE servers SET draining = $2 WHERE id = $1";

/// `$1` server, `$2` its portal.
pub const PORTAL_SQL: &str = "UPDATE servers SET iscsi = $2 WHERE id = $1";

pub const RELEASE_SQL: &str = "UPDATE nodes SET owner = NULL WHERE name = $1 AND owner = $2";
pub const PIN_SQL: &str = "UPDATE nodes SET pinned_server = $2 WHERE name = $1";
pub const SERVER_EXISTS_SQL: &str = "SELECT 1 FROM servers WHERE id = $1";

/// A server row read through the shared typing.
pub fn server_row<R: super::rows::Columns>(row: &R) -> std::result::Result<ServerInfo, R::Error> {
    let count = |i| -> std::result::Result<u64, R::Error> {
        let v = row.int(i)?;
        u64::try_from(v).map_err(|_| row.invalid(i, format!("negative count {v}")))
    };
    let port = row.int(2)?;
    Ok(ServerInfo {
        id: row.text(0)?,
        iscsi: row.text(1)?,
        http_port: u16::try_from(port).map_err(|_| row.invalid(2, format!("port {port}")))?,
        started_at: row.int(3)?,
        heartbeat_age_ms: row.int(4)?,
        sessions: count(5)?,
        bytes_served: count(6)?,
        nodes_owned: count(7)?,
        draining: row.int(8)? != 0,
    })
}
