//! What becomes of a MAC that is not registered (`serve --unknown`):
//! nothing, a record for the operator to adopt, or a node made on the spot
//! from a template. DHCP only notices a newcomer and hands it over as an
//! event; the registry writes (and, for a template, creating the overlay)
//! happen here, on a thread of their own, never on the DHCP path. A node
//! made here reaches DHCP through the next snapshot, in time for the
//! firmware's next DISCOVER.

use super::{Registry, Watcher};
use crate::datadir::DataDir;
use crate::lifecycle::{self, Source};
use crate::store::Discovered;
use bootd_plan::Mac;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

/// Newcomers waiting for the enroller before DHCP stops handing them over.
const QUEUE: usize = 256;
/// The cap is reported at most this often.
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// `serve --unknown`: what becomes of an unregistered machine that asks
/// to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    /// No boot offer (full mode still gives an address).
    Ignore,
    /// No boot offer; the MAC is recorded for `node list --discovered`.
    Discover,
    /// Registered on the spot from this template, then booted like any node.
    Default(String),
}

/// An unregistered machine that asked to boot.
#[derive(Debug, Clone)]
pub struct Newcomer {
    pub mac: Mac,
    pub arch: Option<u16>,
    /// Option 60, made printable.
    pub vendor_class: String,
    pub ipxe: bool,
    /// Unix seconds.
    pub seen: i64,
}

/// DHCP's handle: hands a newcomer over without waiting.
#[derive(Clone)]
pub struct Enroller {
    tx: SyncSender<Newcomer>,
}

impl Enroller {
    /// False when the queue is full (the machine asks again anyway).
    pub fn notice(&self, n: Newcomer) -> bool {
        match self.tx.try_send(n) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

/// Starts the enroller thread; it ends when every [`Enroller`] is dropped.
pub fn start(
    policy: Policy,
    cap: u32,
    dd: DataDir,
    registry: Registry,
    watcher: Watcher,
) -> std::io::Result<Enroller> {
    let (tx, rx) = sync_channel(QUEUE);
    let worker = Worker {
        policy,
        cap: usize::try_from(cap).unwrap_or(usize::MAX),
        dd,
        registry,
        watcher,
        reported: None,
    };
    std::thread::Builder::new()
        .name("enroller".into())
        .spawn(move || worker.run(rx))?;
    Ok(Enroller { tx })
}

struct Worker {
    policy: Policy,
    cap: usize,
    dd: DataDir,
    registry: Registry,
    watcher: Watcher,
    reported: Option<Instant>,
}

impl Worker {
    fn run(mut self, rx: Receiver<Newcomer>) {
        while let Ok(n) = rx.recv() {
            self.handle(n);
        }
    }

    fn handle(&mut self, n: Newcomer) {
        match &self.policy {
            Policy::Ignore => {}
            Policy::Discover => self.discover(n),
            Policy::Default(template) => {
                let template = template.clone();
                self.enrol(n, &template);
            }
        }
    }

    fn discover(&mut self, n: Newcomer) {
        let cap = self.cap;
        let mac = n.mac;
        // The registry keeps MACs as text.
        let text = mac.to_string();
        // A MAC already recorded is updated; a new one only below the cap,
        // or forged DISCOVERs fill the registry.
        let full = self.registry.with(|s| match s.discovered() {
            Ok(d) => d.len() >= cap && !d.iter().any(|x| x.mac == text),
            Err(e) => {
                tracing::warn!("reading discovered machines: {e}");
                true
            }
        });
        if full {
            self.cap_reached("discovered machines recorded");
            return;
        }
        let d = Discovered {
            mac: mac.to_string(),
            arch: n.arch,
            vendor_class: n.vendor_class,
            ipxe: n.ipxe,
            first_seen: n.seen,
            last_seen: n.seen,
            requests: 1,
        };
        match self.registry.with(|s| s.note_discovered(&d)) {
            Ok(()) => {
                tracing::info!(%mac, arch = ?d.arch, class = %d.vendor_class, "discovered an unregistered machine")
            }
            Err(e) => tracing::warn!(%mac, "recording a discovered machine: {e}"),
        }
    }

    fn enrol(&mut self, n: Newcomer, template: &str) {
        let mac = n.mac;
        // The snapshot counts every node in any state; this thread reloads
        // it after each node it makes, so its own additions are never missed.
        if self.watcher.registered() >= self.cap {
            self.cap_reached("nodes registered: no more unknown machines are registered");
            return;
        }
        let source = Source::Template(template.to_string());
        let dd = &self.dd;
        let made = self.registry.with(|s| {
            // Someone may have registered it since DHCP noticed it.
            if s.node(&mac.to_string()).is_ok() {
                return Ok(None);
            }
            lifecycle::add(dd, s, &mac.to_string(), &source, None, None).map(Some)
        });
        match made {
            Ok(Some(node)) => {
                tracing::info!(%mac, node = %node.name, %template, "registered an unknown machine from the default template");
                // Straight into the snapshot: the firmware asks again in
                // seconds and should find its node.
                self.watcher.reload();
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(%mac, %template, "registering an unknown machine: {e:#}"),
        }
    }

    /// Logs, at most once a minute, that the cap stopped a newcomer.
    fn cap_reached(&mut self, what: &str) {
        let now = Instant::now();
        if self
            .reported
            .is_some_and(|t| now.duration_since(t) < REPORT_EVERY)
        {
            return;
        }
        self.reported = Some(now);
        tracing::warn!(
            cap = self.cap,
            "unknown machines: {} {what} (the cap, serve --unknown-cap)",
            self.cap
        );
    }
}
