//! DHCP for network boot. The protocol core (crate `bootd-dhcp`: decoding,
//! leases, the decision, replies) is sans-IO; here are its drivers: the
//! UDP sockets, the lease file, the boot directory and the registry.

pub mod binaries;
pub mod driver;
pub mod iface;
pub mod lease_file;
pub mod ledger;
pub mod nodes;
pub mod ra;
pub mod socket;
pub mod start;

#[cfg(test)]
mod tests;

pub use bootd_dhcp::{boot, lease, reply, server};
pub use bootd_dhcp::{Request, CLIENT_PORT, PXE_PORT, SERVER_PORT};
