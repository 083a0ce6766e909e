//! Servers sharing one registry: each `serve` registers under its server id
//! and heartbeats from a thread of its own; every server works out which
//! peers are live from heartbeat ages (on the registry's clock) and which
//! server each node should be on ([`rendezvous`]).

pub mod addrs;
pub mod drain;
pub mod fence;
pub mod floating;
pub mod heartbeat;
pub mod keeper;
pub mod lease;
pub mod netlink;
pub mod rendezvous;

use std::time::Duration;

/// How often a server heartbeats.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// Heartbeats a server may miss and still count as live: one whose last
/// heartbeat is older than `MISSED_BEFORE_DEAD` periods (5 s) is dead.
pub const MISSED_BEFORE_DEAD: u32 = 5;

/// A heartbeat older than this (milliseconds) marks its server dead.
pub fn dead_after_ms() -> i64 {
    (HEARTBEAT_EVERY * MISSED_BEFORE_DEAD).as_millis() as i64
}

/// Whether a server whose last heartbeat is `age_ms` old is live.
pub fn live(age_ms: i64) -> bool {
    age_ms <= dead_after_ms()
}

/// Where each node's owner serves: what a node's script points at.
#[derive(Clone)]
pub struct Portals {
    pub peers: heartbeat::Peers,
}

impl Portals {
    /// The portal of `node`'s owner as it published it (a floating address
    /// while it holds one) when that is a live server with a usable
    /// address; `None`: this server's own portal.
    pub fn of(&self, node: &bootd_plan::NodePlan) -> Option<std::net::SocketAddr> {
        let owner = node.owner.as_deref()?;
        let peers = self.peers.borrow();
        peers
            .iter()
            .find(|p| p.id == owner && live(p.heartbeat_age_ms))
            .and_then(|p| p.iscsi.parse::<std::net::SocketAddr>().ok())
            .filter(|a| !a.ip().is_unspecified() && a.port() != 0)
    }
}

/// Longest server id: it names a lock file and shows in listings.
const MAX_ID: usize = 63;

#[derive(Debug, thiserror::Error)]
pub enum IdError {
    #[error("server id {0:?}: use 1 to {MAX_ID} letters, digits, '.', '_' or '-' (not starting with '.')")]
    Invalid(String),
    #[error("no --server-id and the host name is unusable: {0}")]
    HostName(String),
}

/// The server id: `given` (`--server-id` / `BOOTD_SERVER_ID`), or the host
/// name.
pub fn server_id(given: Option<&str>) -> Result<String, IdError> {
    let id = match given {
        Some(g) => g.to_string(),
        None => host_name().map_err(|e| IdError::HostName(e.to_string()))?,
    };
    check_id(&id)?;
    Ok(id)
}

pub fn check_id(id: &str) -> Result<(), IdError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(IdError::Invalid(id.to_string()))
    }
}

fn host_name() -> std::io::Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        for good in ["a", "srv-1", "node.example_2", &"x".repeat(63)] {
            assert!(check_id(good).is_ok(), "{good}");
        }
        for bad in ["", ".hidden", "a/b", "a b", "é", &"x".repeat(64), ".."] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_server_is_dead_after_the_documented_missed_heartbeats() {
        assert_eq!(dead_after_ms(), 5000);
        assert!(live(0));
        assert!(live(5000));
        assert!(!live(5001));
    }
}
