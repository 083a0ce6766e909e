//! DHCP for network boot, sans-IO: a decoded request plus what the server
//! knows (mode, pool, leases, the node registry's answer, which boot
//! binaries exist) in, the reply and where to send it out. No sockets,
//! files or async runtime: bootd's driver moves datagrams and stores the
//! leases, so the compiler keeps this core pure.

pub mod boot;
pub mod decode;
pub mod lease;
pub mod ra;
pub mod reply;
pub mod server;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod tests;

pub use decode::Request;

/// Where servers listen (RFC 2131) and where PXE clients ask a boot server
/// (PXE 2.1, proxyDHCP on the boot-server port).
pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;
pub const PXE_PORT: u16 = 4011;
