//! What the server reports about sessions as they start and end, for the
//! embedding program's logs and records (bootd records each node's boot
//! stages from them). Observers run on the connection's task: keep them cheap.

use crate::session::SessionError;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub enum SessionEvent {
    /// A normal session logged in to `target`.
    LoggedIn {
        initiator: String,
        target: String,
        isid: [u8; 6],
        peer: SocketAddr,
    },
    /// A normal session's connection ended, and why.
    Ended {
        initiator: String,
        target: String,
        isid: [u8; 6],
        peer: SocketAddr,
        reason: EndReason,
    },
}

/// Why a session's connection ended. Its text ("logout", "closed", or the
/// error's) is what boot records show.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EndReason {
    /// The initiator logged out.
    #[error("logout")]
    Logout,
    /// The connection closed without a Logout and without an error.
    #[error("closed")]
    Closed,
    /// The connection failed. Shared, because every observer gets the event
    /// and the error (an I/O error) cannot be cloned.
    #[error(transparent)]
    Error(Arc<SessionError>),
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

#[cfg(test)]
mod tests {
    use super::*;
    use iscsi_proto::conn::{ConnError, Deadline};
    use iscsi_proto::login::LoginError;

    /// bootd writes `{reason}` into boot records: the texts stay these.
    #[test]
    fn end_reason_texts() {
        assert_eq!(EndReason::Logout.to_string(), "logout");
        assert_eq!(EndReason::Closed.to_string(), "closed");
        let e = SessionError::Conn(ConnError::Login(LoginError::NoTargetName));
        assert_eq!(
            EndReason::Error(Arc::new(e)).to_string(),
            "login failed: no TargetName"
        );
        let e = SessionError::Conn(ConnError::Timeout(Deadline::Idle));
        assert_eq!(EndReason::Error(Arc::new(e)).to_string(), "timed out: idle");
        let e = SessionError::Conn(ConnError::Timeout(Deadline::Login));
        assert_eq!(
            EndReason::Error(Arc::new(e)).to_string(),
            "timed out: login"
        );
    }
}
