//! What the registry remembers about boots rather than about nodes: MACs
//! that asked to boot while unregistered, and the stages of each MAC's last
//! boot. Written by serve's components as they answer, read by `node list
//! --discovered` and `node show`.

use super::Result;

/// An unregistered machine that asked to boot (`serve --unknown discover`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    pub mac: String,
    /// DHCP option 93, when sent.
    pub arch: Option<u16>,
    /// DHCP option 60 as text (`PXEClient:Arch:00000:...`).
    pub vendor_class: String,
    /// The request came from iPXE rather than the NIC's own ROM.
    pub ipxe: bool,
    /// Unix seconds.
    pub first_seen: i64,
    pub last_seen: i64,
    /// Requests counted (at most one a minute is recorded).
    pub requests: u64,
}

/// One stage of a boot, as `node show` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootStage {
    /// `dhcp`, `tftp`, `script`, `iscsi-login`, `iscsi-logout`.
    pub stage: String,
    /// Unix milliseconds.
    pub at_ms: i64,
    pub detail: String,
}

/// Where a MAC's last boot got to: its newest stage (`node list`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastStage {
    pub mac: String,
    pub stage: String,
    /// Unix milliseconds.
    pub at_ms: i64,
    /// When the boot's first stage was seen (Unix milliseconds).
    pub boot_started_ms: i64,
}

pub trait Records {
    /// Adds `d.mac` or updates its `last_seen`, `requests`, arch and class.
    fn note_discovered(&mut self, d: &Discovered) -> Result<()>;
    /// Every discovered MAC, oldest first.
    fn discovered(&self) -> Result<Vec<Discovered>>;
    /// Records a stage; `new_boot` first clears the MAC's earlier stages.
    fn record_stage(&mut self, mac: &str, stage: &BootStage, new_boot: bool) -> Result<()>;
    /// The stages of the MAC's last boot, in time order.
    fn boot_stages(&self, mac: &str) -> Result<Vec<BootStage>>;
    /// Every MAC's newest stage, in one query: a listing of thousands of
    /// nodes must not ask once per node.
    fn last_stages(&self) -> Result<Vec<LastStage>>;
}
