//! Tokio driver for bootd's iSCSI target.
//!
//! Runs [`iscsi_proto::conn::Connection`]s over TCP, one task per connection,
//! and executes their SCSI commands against [`block::BlockDevice`]s through
//! [`lun::Lun`]. The caller binds the listener and passes it in.

mod admission;
pub mod block;
pub mod events;
pub mod fileio;
pub mod lun;
pub mod mem;
mod outbox;
pub mod raw;
pub mod server;
mod session;

pub use events::{CommandDone, CommandObserver, SessionEvent, SessionObserver};
pub use server::{Server, ServerConfig, ServerError, Target};
pub use session::SessionError;
