//! TFTP for PXE firmware: the sans-IO protocol core (crate `bootd-tftp`:
//! `packet`, `transfer`), file lookup confined to the boot directory
//! (`files`) and a tokio driver (`server`). Read-only; octet mode only.

pub mod files;
pub mod server;

pub use bootd_tftp::{packet, transfer};

pub use files::Root;
pub use server::{TftpServer, DEFAULT_MAX_TRANSFERS};
pub use transfer::Limits;

use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

/// The boot directory `dir` (`None`: Debian's iPXE directory), shared by
/// TFTP and HTTP. A missing default directory only warns: requests then
/// get "file not found"; a missing directory the operator named is an error.
pub fn open_root(dir: Option<&Path>) -> Result<Arc<Root>> {
    let root = match dir {
        Some(d) => Root::new(d).with_context(|| format!("TFTP directory {}", d.display()))?,
        None => {
            let d = Path::new(bootd_ipxe::arch::DEFAULT_BINARY_DIR);
            Root::new(d).unwrap_or_else(|e| {
                tracing::warn!(
                    "TFTP directory {}: {e}; install the ipxe package or set --tftp-dir",
                    d.display()
                );
                Root::at(d.to_path_buf())
            })
        }
    };
    Ok(Arc::new(root))
}

/// Binds the request socket on `addr` and prepares the server for `root`.
/// A port that cannot be bound is an error, as for HTTP and iSCSI: firmware
/// would find nothing to boot.
pub async fn bind(
    addr: SocketAddr,
    root: Arc<Root>,
    per_source: usize,
) -> Result<(tokio::net::UdpSocket, TftpServer)> {
    let socket = tokio::net::UdpSocket::bind(addr)
        .await
        .with_context(|| format!("cannot listen on udp {addr}"))?;
    tracing::debug!(dir = %root.path().display(), "serving TFTP");
    Ok((
        socket,
        TftpServer::new(root, Limits::default(), DEFAULT_MAX_TRANSFERS).per_source(per_source),
    ))
}
