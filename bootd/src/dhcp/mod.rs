//! DHCP for network boot, sans-IO: a decoded request plus what the server
//! knows (mode, pool, leases, the node registry's answer) in, the reply and
//! where to send it out. The UDP driver only moves datagrams.

pub mod boot;
pub mod decode;
pub mod driver;
pub mod iface;
pub mod lease;
pub mod nodes;
pub mod reply;
pub mod server;
pub mod socket;
pub mod start;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod tests;

pub use decode::Request;
pub use start::start;

/// Where servers listen (RFC 2131) and where PXE clients ask a boot server
/// (PXE 2.1, proxyDHCP on the boot-server port).
pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;
pub const PXE_PORT: u16 = 4011;
