//! Which iPXE binaries the boot directory holds, for the DHCP core's
//! decision: asked per boot offer, so a binary the operator adds while
//! serve runs is offered at the next request.

use bootd_dhcp::server::Binaries;
use std::path::PathBuf;

/// The boot directory TFTP and HTTP serve from.
#[derive(Debug)]
pub struct BootDir(pub PathBuf);

impl Binaries for BootDir {
    /// One `stat` per boot offer.
    fn has(&self, name: &str) -> bool {
        self.0.join(name).is_file()
    }
}
