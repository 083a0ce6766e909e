//! The one stream of what serve's servers did: typed boot events. DHCP,
//! TFTP, HTTP, the iSCSI target and the target reconciler emit them;
//! the metrics, the boot timeline and the I/O recorder subscribe, instead of
//! every server being wired to each of them by hand.
//!
//! Delivery is a synchronous call to each subscriber, in the emitter's
//! thread: no queue or allocation per event, so the iSCSI command path can
//! emit one per command. A subscriber that must do slow work (the timeline
//! writes to the registry) hands it to a thread of its own.

pub mod session_locks;
pub mod sessions;

use bootd_plan::Mac;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// A DHCP reply's message type, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DhcpKind {
    Offer,
    Ack,
    Nak,
}

/// A boot file a client will act on (the ACK in full mode, the proxy's
/// OFFER or ACK).
#[derive(Debug, Clone, Copy)]
pub struct BootOffer<'a> {
    pub mac: Mac,
    /// From iPXE rather than the firmware's PXE ROM.
    pub ipxe: bool,
    /// The boot file or URL, token already redacted.
    pub file: &'a str,
    /// The address leased with it; `None` for a proxy answer.
    pub leased: Option<std::net::Ipv4Addr>,
}

/// One SCSI command the target finished.
#[derive(Debug, Clone, Copy)]
pub struct Command<'a> {
    pub target: &'a str,
    pub cdb: &'a [u8],
    pub elapsed: Duration,
    pub data_in: u64,
    pub data_out: u64,
    pub good: bool,
}

#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// A DHCP request decoded.
    DhcpRequest,
    /// A DHCP reply sent (`full`: by the full server, else the proxy).
    DhcpReply {
        full: bool,
        kind: DhcpKind,
        boot: Option<BootOffer<'a>>,
    },
    /// A TFTP request refused: its source over its share, or no slot.
    TftpRefused,
    /// A TFTP transfer finished.
    TftpSent {
        peer: IpAddr,
        file: &'a str,
        bytes: u64,
        secs: f64,
        blksize: usize,
    },
    /// A TFTP transfer that ended without completing.
    TftpFailed,
    /// An HTTP connection closed unanswered.
    HttpRefused,
    /// An iPXE binary served over HTTP.
    BinaryServed,
    /// A node script refused: not the node's address, no valid token.
    ScriptRefused,
    /// A node's script served, from `template` (or the built-in).
    ScriptServed {
        mac: Mac,
        template: &'a str,
    },
    /// A node's cloud-init user-data served (its first boot is under way).
    MetadataServed {
        mac: Mac,
    },
    /// A NoCloud seed request from an address no node boots from.
    MetadataRefused,
    IscsiLogin {
        target: &'a str,
        initiator: &'a str,
        isid: [u8; 6],
        peer: SocketAddr,
    },
    IscsiEnded {
        target: &'a str,
        isid: [u8; 6],
        peer: SocketAddr,
        reason: std::fmt::Arguments<'a>,
    },
    Command(Command<'a>),
    /// Free space on the overlays' filesystem, and whether it is below the
    /// warning watermark.
    Space {
        free: u64,
        low: bool,
    },
    /// Overlays failed by a write-back error, now.
    OverlaysFailed(u64),
}

/// Something that wants to know. Called in the emitter's thread: return at
/// once.
pub trait Subscriber: Send + Sync {
    fn on(&self, event: &Event<'_>);
}

/// The emitting side: every server holds one; cheap to clone.
#[derive(Clone, Default)]
pub struct Events {
    subscribers: Arc<[Arc<dyn Subscriber>]>,
}

impl Events {
    pub fn new(subscribers: Vec<Arc<dyn Subscriber>>) -> Self {
        Self {
            subscribers: subscribers.into(),
        }
    }

    pub fn emit(&self, event: Event<'_>) {
        for s in self.subscribers.iter() {
            s.on(&event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Seen(Mutex<Vec<String>>);

    impl Subscriber for Seen {
        fn on(&self, event: &Event<'_>) {
            if let Ok(mut v) = self.0.lock() {
                v.push(format!("{event:?}"));
            }
        }
    }

    #[test]
    fn every_subscriber_sees_every_event_in_order() {
        let a = Arc::new(Seen(Mutex::new(Vec::new())));
        let b = Arc::new(Seen(Mutex::new(Vec::new())));
        let events = Events::new(vec![a.clone(), b.clone()]);
        events.emit(Event::DhcpRequest);
        events.emit(Event::TftpFailed);
        for s in [a, b] {
            let seen = s.0.lock().map(|v| v.clone()).unwrap_or_default();
            assert_eq!(seen, ["DhcpRequest", "TftpFailed"]);
        }
        // No subscribers: emitting is a no-op.
        Events::default().emit(Event::HttpRefused);
    }
}
