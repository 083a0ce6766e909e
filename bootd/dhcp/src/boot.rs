//! What a registered node's firmware is told to load next: an iPXE binary
//! over TFTP, its URL for UEFI HTTP boot, or, once iPXE runs, the script URL.

use super::Request;
use bootd_ipxe::arch::{binary_name, ClientArch, EfiFlavour};
use std::net::Ipv4Addr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootFile {
    /// A file name on the TFTP server.
    Tftp(String),
    /// A URL; `http_client` says the firmware asked with vendor class
    /// `HTTPClient`, which must be echoed.
    Http { url: String, http_client: bool },
}

use bootd_plan::urls;
pub use bootd_plan::urls::redact;

impl BootFile {
    /// The iPXE binary this names, if it names one (not the script URL).
    pub fn binary(&self) -> Option<&str> {
        match self {
            Self::Tftp(name) => Some(name),
            Self::Http { url, http_client } => {
                let name = urls::binary_of(url)?;
                http_client.then_some(name)
            }
        }
    }
}

/// `None` when the client's architecture has no iPXE build. `token`, when
/// given, goes into an iPXE client's script URL: the one-time proof that
/// the fetch comes from the machine this answer went to.
pub fn choose(
    req: &Request,
    server: Ipv4Addr,
    http_port: u16,
    efi: EfiFlavour,
    token: Option<&str>,
) -> Option<BootFile> {
    let base = urls::http_base(&server.to_string(), http_port);
    if req.is_ipxe() {
        // Already iPXE: hand it the script, not iPXE again (the chainload loop).
        let url = match token {
            // Straight to the MAC's own script: the token is for it alone.
            Some(t) => urls::node_url(&base, req.mac(), Some(t)),
            None => urls::chain_url(&base),
        };
        return Some(BootFile::Http {
            url,
            http_client: false,
        });
    }
    // A plain DHCP client (the OS of a registered node) is not booting.
    let class = req.vendor_class();
    let firmware = class.starts_with(b"PXEClient") || class.starts_with(b"HTTPClient");
    if !firmware && req.arch().is_none() {
        return None;
    }
    // PXE ROMs that omit option 93 are BIOS ones (RFC 4578 came later).
    let arch = ClientArch::from_option93(req.arch().unwrap_or(0))?;
    let name = binary_name(arch, efi);
    if req.vendor_class().starts_with(b"HTTPClient") || arch.is_http() {
        return Some(BootFile::Http {
            url: urls::binary_url(&base, name),
            http_client: true,
        });
    }
    Some(BootFile::Tftp(name.to_string()))
}
