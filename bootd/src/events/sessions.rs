//! Which client addresses hold iSCSI sessions, to which targets: built
//! from the login and end events. A live session is proof of who a client
//! is (it passed the node's CHAP to log in), so the NoCloud seed, which
//! may carry secrets, goes to the address holding the node's session.

use super::{Event, Subscriber};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

/// A session: its target, ISID and the connection's address.
type Key = (String, [u8; 6], SocketAddr);

#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<Key, ()>>,
}

impl Sessions {
    /// The target a session from `ip` is logged in to. Sessions are bounded
    /// by the target's connection limit, so a scan is cheap.
    pub fn target_of(&self, ip: IpAddr) -> Option<String> {
        let ip = ip.to_canonical();
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.keys()
            .find(|(_, _, peer)| peer.ip().to_canonical() == ip)
            .map(|(target, _, _)| target.clone())
    }
}

impl Sessions {
    /// Live sessions, all targets.
    pub fn count(&self) -> usize {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether target `iqn` has a live session.
    pub fn on_target(&self, iqn: &str) -> bool {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.keys().any(|(t, _, _)| t == iqn)
    }
}

impl Subscriber for Sessions {
    fn on(&self, event: &Event<'_>) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            Event::IscsiLogin {
                target, isid, peer, ..
            } => {
                live.insert((target.to_string(), *isid, *peer), ());
            }
            Event::IscsiEnded {
                target, isid, peer, ..
            } => {
                live.remove(&(target.to_string(), *isid, *peer));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_names_its_address_until_it_ends() {
        let s = Sessions::default();
        let peer: SocketAddr = ([192, 0, 2, 100], 40000).into();
        s.on(&Event::IscsiLogin {
            target: "iqn.t:n1",
            initiator: "iqn.i:n1",
            isid: [1; 6],
            peer,
        });
        assert_eq!(s.target_of(peer.ip()).as_deref(), Some("iqn.t:n1"));
        // The same address as a v4-mapped IPv6 peer of a dual-stack socket.
        let mapped: IpAddr = "::ffff:192.0.2.100".parse().unwrap_or(peer.ip());
        assert_eq!(s.target_of(mapped).as_deref(), Some("iqn.t:n1"));
        assert_eq!(s.target_of([192, 0, 2, 101].into()), None);
        s.on(&Event::IscsiEnded {
            target: "iqn.t:n1",
            isid: [1; 6],
            peer,
            reason: format_args!("logout"),
        });
        assert_eq!(s.target_of(peer.ip()), None);
    }
}
