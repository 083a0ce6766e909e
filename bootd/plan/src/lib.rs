//! What bootd knows about a node's boot, in types every server shares:
//! the MAC that keys a node, every URL path, and (in `fleet`) the
//! immutable snapshot of node plans that DHCP, TFTP, HTTP and iSCSI read.
//! No I/O here: the registry and the servers live in `bootd`.

pub mod fleet;
pub mod mac;
pub mod urls;

pub use fleet::{NodePlan, NodeState, Snapshot};
pub use mac::{Mac, MacError};
