//! What the server reports about sessions as they start and end, for the
//! embedding program's logs and records (bootd records each node's boot
//! stages from them). Observers run on the connection's task: keep them cheap.

use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// A normal session logged in to `target`.
    LoggedIn {
        initiator: String,
        target: String,
        isid: [u8; 6],
        peer: SocketAddr,
    },
    /// A normal session's connection ended: `reason` is `logout` after a
    /// Logout, else why the connection closed.
    Ended {
        initiator: String,
        target: String,
        isid: [u8; 6],
        peer: SocketAddr,
        reason: String,
    },
}

pub type SessionObserver = Arc<dyn Fn(&SessionEvent) + Send + Sync>;
