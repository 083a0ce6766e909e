//! The DHCP side's view of the fleet: registered nodes by MAC from the
//! current snapshot, and unregistered machines asking to boot handed to the
//! enroller (`serve --unknown`), throttled so that forged DISCOVERs with
//! fresh MACs cannot turn into a flood of registry writes.

use super::server::NodeLookup;
use super::Request;
use crate::fleet::enrol::{Enroller, Newcomer};
use crate::fleet::FleetView;
use bootd_plan::{Mac, Snapshot};
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A MAC is handed over (recorded or enrolled) at most this often: a PXE
/// ROM repeats its DISCOVER every few seconds.
const NOTE_EVERY: Duration = Duration::from_secs(60);
/// Throttle entries kept before old ones are swept.
const RECENT_MAX: usize = 4096;
/// Unregistered machines handed over per minute at most, whatever their MACs.
const NEW_PER_MINUTE: u32 = 600;

pub struct Nodes {
    view: FleetView,
    /// The generation whose static addresses the lease table has.
    seen: Option<u64>,
    /// `None` with `--unknown ignore`.
    enroller: Option<Enroller>,
    recent: HashMap<Mac, Instant>,
    /// The current minute's start and how many MACs were handed over in it.
    window: (Instant, u32),
}

impl Nodes {
    pub fn new(view: FleetView, enroller: Option<Enroller>) -> Self {
        Self {
            view,
            seen: None,
            enroller,
            recent: HashMap::new(),
            window: (Instant::now(), 0),
        }
    }

    /// The current snapshot, and the static addresses to keep out of the
    /// pool when it is new to this server.
    pub fn refresh(&mut self) -> (Arc<Snapshot>, Option<HashSet<Ipv4Addr>>) {
        let snap = self.view.current();
        if self.seen == Some(snap.generation()) {
            return (snap, None);
        }
        self.seen = Some(snap.generation());
        let reserved = snap.static_v4().collect();
        (snap, Some(reserved))
    }

    /// The node `req` comes from; an unregistered MAC that asks to boot is
    /// handed to the enroller and gets no boot answer this time.
    pub fn lookup(&mut self, snap: &Snapshot, req: &Request, now_secs: u64) -> NodeLookup {
        let mac = req.mac();
        if let Some(n) = snap.by_mac(&mac).filter(|n| n.ready()) {
            return NodeLookup::Known {
                static_ip: n.static_v4(),
            };
        }
        // Registered but not ready (being reset): not a newcomer either.
        if snap.by_mac(&mac).is_some() || !wants_to_boot(req) {
            return NodeLookup::Unknown;
        }
        if self.enroller.is_some() && self.due(mac) {
            let n = Newcomer {
                mac,
                arch: req.arch(),
                vendor_class: printable(req.vendor_class()),
                ipxe: req.is_ipxe(),
                seen: i64::try_from(now_secs).unwrap_or(i64::MAX),
            };
            if let Some(e) = &self.enroller {
                if !e.notice(n) {
                    tracing::debug!(%mac, "enroller busy: the machine will ask again");
                }
            }
        }
        NodeLookup::Unknown
    }

    /// Whether `mac` is due to be handed over again: once a minute per MAC,
    /// [`NEW_PER_MINUTE`] in all.
    fn due(&mut self, mac: Mac) -> bool {
        let now = Instant::now();
        if self
            .recent
            .get(&mac)
            .is_some_and(|t| now.duration_since(*t) < NOTE_EVERY)
        {
            return false;
        }
        if now.duration_since(self.window.0) >= NOTE_EVERY {
            self.window = (now, 0);
        }
        if self.window.1 >= NEW_PER_MINUTE {
            return false;
        }
        if self.recent.len() >= RECENT_MAX {
            self.recent
                .retain(|_, t| now.duration_since(*t) < NOTE_EVERY);
            if self.recent.len() >= RECENT_MAX {
                return false;
            }
        }
        self.window.1 += 1;
        self.recent.insert(mac, now);
        true
    }
}

/// Option 60 as text for the operator's terminal: control characters from
/// the network become `?`.
fn printable(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// PXE and UEFI HTTP firmware, and iPXE: machines asking to boot, not
/// every laptop on the segment.
fn wants_to_boot(req: &Request) -> bool {
    let class = req.vendor_class();
    class.starts_with(b"PXEClient") || class.starts_with(b"HTTPClient") || req.is_ipxe()
}

#[cfg(test)]
mod tests;
