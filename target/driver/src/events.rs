//! What the server reports about sessions as they start and end, for the
//! embedding program's logs and records (bootd records each node's boot
//! stages from them). Observers run on the connection's task: keep them cheap.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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

/// A SCSI command that completed on a target's LUN.
#[derive(Debug, Clone, Copy)]
pub struct CommandDone<'a> {
    pub target: &'a str,
    pub cdb: &'a [u8],
    /// Bytes the initiator sent (Data-Out) and was sent (Data-In).
    pub data_out: u64,
    pub data_in: u64,
    /// GOOD status.
    pub good: bool,
    /// From the command's arrival to its completion.
    pub elapsed: Duration,
}

/// Told of every completed command; runs on the I/O path, so it must be
/// cheap (counters, a buffered write).
pub type CommandObserver = Arc<dyn Fn(&CommandDone<'_>) + Send + Sync>;
