//! The DHCP side's view of the registry: registered nodes by MAC, reloaded
//! only when the registry's generation moves, and what becomes of a MAC that
//! is not registered (`serve --unknown`): nothing, a record for the
//! operator to adopt, or a node made on the spot from a template.

use super::server::NodeLookup;
use super::Request;
use crate::datadir::DataDir;
use crate::lifecycle::{self, Source};
use crate::store::{Discovered, NodeState, Store};
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// A MAC is recorded (or an enrolment retried) at most this often: a PXE
/// ROM repeats its DISCOVER every few seconds.
const NOTE_EVERY: Duration = Duration::from_secs(60);
/// Throttle entries kept before old ones are swept.
const RECENT_MAX: usize = 4096;
/// Unregistered machines recorded or enrolled per minute at most, whatever
/// their MACs: forged DISCOVERs with fresh MACs must not turn into
/// unbounded registry writes on the DHCP thread.
const NEW_PER_MINUTE: u32 = 600;

pub enum Unknown {
    Ignore,
    Discover,
    /// Register from this template, in this data directory.
    Enrol {
        dd: DataDir,
        template: String,
    },
}

pub struct Registry {
    store: Box<dyn Store>,
    generation: Option<u64>,
    nodes: HashMap<String, NodeLookup>,
    /// Nodes in the registry in any state (the cap counts them all).
    registered: usize,
    unknown: Unknown,
    /// Discovered MACs kept, and registry size up to which unknown
    /// machines are registered, at most.
    cap: usize,
    /// When the cap was last reported: once a minute, not per request.
    cap_logged: Option<Instant>,
    recent: HashMap<String, Instant>,
    /// The current minute's start and how many MACs were handled in it.
    window: (Instant, u32),
}

impl Registry {
    pub fn new(store: Box<dyn Store>, unknown: Unknown, cap: u32) -> Self {
        Self {
            store,
            generation: None,
            nodes: HashMap::new(),
            registered: 0,
            unknown,
            cap: usize::try_from(cap).unwrap_or(usize::MAX),
            cap_logged: None,
            recent: HashMap::new(),
            window: (Instant::now(), 0),
        }
    }

    /// Reloads the nodes if the registry changed; returns the static
    /// addresses to keep out of the pool when it did.
    pub fn refresh(&mut self) -> Option<HashSet<Ipv4Addr>> {
        let generation = match self.store.generation() {
            Ok(g) => g,
            Err(e) => {
                // A busy registry: keep answering from what we know.
                tracing::warn!("registry: {e}");
                return None;
            }
        };
        if self.generation == Some(generation) {
            return None;
        }
        let nodes = match self.store.nodes() {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("registry: {e}");
                return None;
            }
        };
        self.registered = nodes.len();
        let reserved = nodes
            .iter()
            .filter_map(|n| n.ip.as_deref()?.parse().ok())
            .collect();
        self.nodes = nodes
            .into_iter()
            .filter(|n| n.state == NodeState::Ready)
            .map(|n| {
                let static_ip = n.ip.as_deref().and_then(|ip| ip.parse().ok());
                (n.mac, NodeLookup::Known { static_ip })
            })
            .collect();
        self.generation = Some(generation);
        Some(reserved)
    }

    /// The node `req` comes from; for an unregistered MAC that asks to
    /// boot, applies the `--unknown` policy first.
    pub fn lookup(&mut self, req: &Request, now_secs: u64) -> NodeLookup {
        let mac = req.mac().to_string();
        if let Some(n) = self.nodes.get(&mac) {
            return n.clone();
        }
        if matches!(self.unknown, Unknown::Ignore) || !wants_to_boot(req) || !self.due(&mac) {
            return NodeLookup::Unknown;
        }
        match &self.unknown {
            Unknown::Ignore => NodeLookup::Unknown,
            Unknown::Discover => {
                // A MAC already recorded is updated; a new one only below
                // the cap, or forged DISCOVERs fill the registry.
                let full = match self.store.discovered() {
                    Ok(d) => d.len() >= self.cap && !d.iter().any(|x| x.mac == mac),
                    Err(e) => {
                        tracing::warn!("reading discovered machines: {e}");
                        true
                    }
                };
                if full {
                    self.cap_reached("discovered machines recorded");
                    return NodeLookup::Unknown;
                }
                let now = i64::try_from(now_secs).unwrap_or(i64::MAX);
                let d = Discovered {
                    mac: mac.clone(),
                    arch: req.arch(),
                    vendor_class: printable(req.vendor_class()),
                    ipxe: req.is_ipxe(),
                    first_seen: now,
                    last_seen: now,
                    requests: 1,
                };
                match self.store.note_discovered(&d) {
                    Ok(()) => {
                        tracing::info!(%mac, arch = ?d.arch, class = %d.vendor_class, "discovered an unregistered machine")
                    }
                    Err(e) => tracing::warn!(%mac, "recording a discovered machine: {e}"),
                }
                NodeLookup::Unknown
            }
            Unknown::Enrol { .. } if self.registered >= self.cap => {
                self.cap_reached("nodes registered: no more unknown machines are registered");
                NodeLookup::Unknown
            }
            Unknown::Enrol { dd, template } => {
                let source = Source::Template(template.clone());
                match lifecycle::add(dd, self.store.as_mut(), &mac, &source, None, None) {
                    Ok(n) => {
                        tracing::info!(%mac, node = %n.name, %template, "registered an unknown machine from the default template");
                        let known = NodeLookup::Known { static_ip: None };
                        self.nodes.insert(mac, known.clone());
                        self.registered += 1;
                        known
                    }
                    Err(e) => {
                        tracing::warn!(%mac, %template, "registering an unknown machine: {e:#}");
                        NodeLookup::Unknown
                    }
                }
            }
        }
    }

    /// Logs, at most once a minute, that the cap stopped a newcomer.
    fn cap_reached(&mut self, what: &str) {
        let now = Instant::now();
        if self
            .cap_logged
            .is_some_and(|t| now.duration_since(t) < NOTE_EVERY)
        {
            return;
        }
        self.cap_logged = Some(now);
        tracing::warn!(
            cap = self.cap,
            "unknown machines: {} {what} (the cap, serve --unknown-cap)",
            self.cap
        );
    }

    /// Whether `mac` is due for another record or enrolment attempt: once a
    /// minute per MAC, [`NEW_PER_MINUTE`] in all.
    fn due(&mut self, mac: &str) -> bool {
        let now = Instant::now();
        if self
            .recent
            .get(mac)
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
        self.recent.insert(mac.to_string(), now);
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
mod tests {
    use super::*;
    use crate::store::NewImage;
    use dhcproto::v4::{DhcpOption, Message, MessageType};
    use dhcproto::{Encodable, Encoder};

    type R = std::result::Result<(), Box<dyn std::error::Error>>;

    fn request(
        mac: [u8; 6],
        pxe: bool,
    ) -> std::result::Result<Request, Box<dyn std::error::Error>> {
        let u = Ipv4Addr::UNSPECIFIED;
        let mut m = Message::new_with_id(7, u, u, u, u, &mac);
        m.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Discover));
        if pxe {
            m.opts_mut().insert(DhcpOption::ClassIdentifier(
                b"PXEClient:Arch:00007:UNDI:003016".to_vec(),
            ));
            m.opts_mut()
                .insert(DhcpOption::ClientSystemArchitecture(7u16.into()));
        }
        let mut buf = Vec::new();
        m.encode(&mut Encoder::new(&mut buf))?;
        Request::decode(&buf).ok_or_else(|| "did not decode".into())
    }

    /// A data directory with image `golden` and template `lab` on it.
    fn data_dir() -> std::result::Result<(tempfile::TempDir, DataDir), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let dd = DataDir::open(tmp.path())?;
        let path = dd.image_file("golden", 1);
        std::fs::write(&path, vec![0u8; 1 << 20])?;
        let mut s = dd.store()?;
        s.add_image(&NewImage {
            name: "golden".into(),
            version: 1,
            path,
            bytes: 1 << 20,
            sha256: "00".repeat(32),
        })?;
        s.add_template("lab", "golden", None)?;
        Ok((tmp, dd))
    }

    #[test]
    fn discover_records_booting_machines_once_a_minute() -> R {
        let (_tmp, dd) = data_dir()?;
        let mut reg = Registry::new(dd.store()?, Unknown::Discover, 256);
        reg.refresh();
        let pxe = request([2, 0, 0, 0, 0, 1], true)?;
        assert_eq!(reg.lookup(&pxe, 100), NodeLookup::Unknown);
        assert_eq!(reg.lookup(&pxe, 101), NodeLookup::Unknown);
        // A laptop asking for an address is not a machine to adopt.
        reg.lookup(&request([2, 0, 0, 0, 0, 2], false)?, 102);
        let found = dd.store()?.discovered()?;
        assert_eq!(found.len(), 1);
        assert_eq!(printable(b"PXE\x1b[2J\nx"), "PXE?[2J?x");
        // A flood of fresh MACs is cut off at the per-minute budget.
        reg.window.1 = NEW_PER_MINUTE;
        reg.lookup(&request([2, 0, 0, 0, 0, 9], true)?, 103);
        assert_eq!(dd.store()?.discovered()?.len(), 1);
        assert_eq!(found[0].mac, "02:00:00:00:00:01");
        assert_eq!((found[0].arch, found[0].requests), (Some(7), 1));
        Ok(())
    }

    #[test]
    fn default_template_registers_and_boots_unknown_machines() -> R {
        let (_tmp, dd) = data_dir()?;
        let unknown = Unknown::Enrol {
            dd: dd.clone(),
            template: "lab".into(),
        };
        let mut reg = Registry::new(dd.store()?, unknown, 256);
        reg.refresh();
        let pxe = request([2, 0, 0, 0, 0, 3], true)?;
        assert_eq!(reg.lookup(&pxe, 100), NodeLookup::Known { static_ip: None });
        let node = dd.store()?.node("02:00:00:00:00:03")?;
        assert_eq!(node.state, NodeState::Ready);
        assert_eq!(node.template.as_deref(), Some("lab"));
        assert!(node.overlay_path.is_file());
        // Still known after the registry reloads.
        assert!(reg.refresh().is_some());
        assert_eq!(reg.lookup(&pxe, 101), NodeLookup::Known { static_ip: None });
        // Plain DHCP clients are left alone.
        assert_eq!(
            reg.lookup(&request([2, 0, 0, 0, 0, 4], false)?, 102),
            NodeLookup::Unknown
        );
        assert_eq!(dd.store()?.nodes()?.len(), 1);
        Ok(())
    }

    #[test]
    fn the_cap_stops_discovery_and_registration() -> R {
        let (_tmp, dd) = data_dir()?;
        let mut reg = Registry::new(dd.store()?, Unknown::Discover, 2);
        reg.refresh();
        for i in 1..=5 {
            reg.lookup(&request([2, 0, 0, 0, 1, i], true)?, 100);
        }
        assert_eq!(dd.store()?.discovered()?.len(), 2);
        // A MAC already recorded is still updated (not a newcomer).
        reg.recent.clear();
        reg.lookup(&request([2, 0, 0, 0, 1, 1], true)?, 200);
        let d = dd.store()?.discovered()?;
        assert!(d
            .iter()
            .any(|x| x.mac == "02:00:00:00:01:01" && x.last_seen == 200));

        let unknown = Unknown::Enrol {
            dd: dd.clone(),
            template: "lab".into(),
        };
        let mut reg = Registry::new(dd.store()?, unknown, 3);
        reg.refresh();
        let mut known = 0;
        for i in 1..=6 {
            if reg.lookup(&request([2, 0, 0, 0, 2, i], true)?, 100) != NodeLookup::Unknown {
                known += 1;
            }
        }
        assert_eq!(known, 3);
        assert_eq!(dd.store()?.nodes()?.len(), 3);
        // Across a restart too: the registry's size counts, not this run's.
        let unknown = Unknown::Enrol {
            dd: dd.clone(),
            template: "lab".into(),
        };
        let mut reg = Registry::new(dd.store()?, unknown, 3);
        reg.refresh();
        assert_eq!(
            reg.lookup(&request([2, 0, 0, 0, 2, 9], true)?, 100),
            NodeLookup::Unknown
        );
        assert_eq!(dd.store()?.nodes()?.len(), 3);
        Ok(())
    }
}
