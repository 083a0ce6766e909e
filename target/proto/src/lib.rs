//! Sans-IO core of bootd's iSCSI target.
//!
//! Everything here works on bytes and time: no sockets, no files, no async.
//! The driver crate (`iscsi-target`) feeds received bytes into a
//! [`conn::Connection`], takes the events it yields (logins, SCSI commands,
//! task management), runs the SCSI commands through [`scsi`] against a block
//! device, and hands the results back to be encoded and sent.

pub mod task;

pub mod conn;
pub mod digest;
pub mod initiator;
pub mod login;
pub mod negotiate;
pub mod pdu;
pub mod text;

pub mod scsi;
