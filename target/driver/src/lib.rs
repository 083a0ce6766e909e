//! Tokio driver for bootd's iSCSI target.
//!
//! Runs [`iscsi_proto::conn::Connection`]s over TCP, one task per connection,
//! and executes their SCSI commands against [`blockdev::BlockDevice`]s through
//! [`lun::Lun`]. The caller binds the listener and passes it in.

mod admission;
pub mod events;
pub mod lun;
mod outbox;
pub mod server;
mod session;

pub use events::{CommandDone, CommandObserver, EndReason, SessionEvent, SessionObserver};
pub use server::{Elsewhere, Server, ServerConfig, ServerError, Target};
pub use session::SessionError;
