//! Who may fetch a node's boot script. The script carries the node's CHAP
//! secret, so it goes only to the node: to the address bootd's DHCP leased
//! that MAC (full mode), or to whoever presents a one-time token that
//! bootd's DHCP put in the boot URL it gave that MAC (proxy mode, where
//! bootd never learns the address). The node's static address, set by the
//! operator, is checked by the HTTP side from the registry.
//!
//! Shared by the DHCP threads (which grant) and the HTTP tasks (which
//! admit); a plain mutex, held for a map lookup at a time.

use bootd_plan::Mac;
use rand::RngCore;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token is good for this long after the DHCP answer carrying it: iPXE
/// fetches the script right after its DHCP exchange.
pub const TOKEN_TTL: Duration = Duration::from_secs(120);
/// Tokens kept per MAC (a proxy OFFER and its 4011 ACK each carry one; a
/// retrying client asks again); the oldest goes first.
const TOKENS_PER_MAC: usize = 8;
/// MACs with grants kept; expired ones are swept before a new MAC is
/// refused, so forged requests cannot grow the table without bound.
const MAX_MACS: usize = 8192;
/// Random bytes per token (hex in the URL).
const TOKEN_BYTES: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    /// From the address leased to the MAC.
    Lease,
    /// With a token issued for the MAC (now spent).
    Token,
}

#[derive(Default)]
struct Entry {
    tokens: VecDeque<(String, Instant)>,
    lease: Option<(IpAddr, Instant)>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.tokens.iter().any(|(_, t)| *t > now) || self.lease.is_some_and(|(_, t)| t > now)
    }
}

#[derive(Default)]
pub struct Grants {
    macs: Mutex<HashMap<Mac, Entry>>,
}

impl Grants {
    pub fn new() -> Self {
        Self::default()
    }

    /// A fresh token for `mac`, good for
    /// [`TOKEN_TTL`] and one fetch; `None` when the table is full of live
    /// grants (the client then gets no script URL and retries).
    pub fn issue(&self, mac: &Mac, now: Instant) -> Option<String> {
        let mut bytes = [0u8; TOKEN_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let token = hex::encode(bytes);
        let mut macs = self.macs.lock().unwrap_or_else(|e| e.into_inner());
        let entry = entry(&mut macs, mac, now)?;
        entry.tokens.retain(|(_, t)| *t > now);
        while entry.tokens.len() >= TOKENS_PER_MAC {
            entry.tokens.pop_front();
        }
        entry.tokens.push_back((token.clone(), now + TOKEN_TTL));
        Some(token)
    }

    /// `mac` holds `ip` until `until`; no other MAC does any more.
    pub fn lease(&self, mac: &Mac, ip: IpAddr, until: Instant, now: Instant) {
        let mut macs = self.macs.lock().unwrap_or_else(|e| e.into_inner());
        for e in macs.values_mut() {
            if e.lease.is_some_and(|(held, _)| held == ip) {
                e.lease = None;
            }
        }
        if let Some(e) = entry(&mut macs, mac, now) {
            e.lease = Some((ip, until));
        }
    }

    /// `mac` no longer holds an address (RELEASE, DECLINE).
    pub fn end_lease(&self, mac: &Mac) {
        let mut macs = self.macs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = macs.get_mut(mac) {
            e.lease = None;
        }
    }

    /// Whether a fetch of `mac`'s script from `peer`, with `token` if the
    /// URL had one, is the node's. A token admits once: all of the MAC's
    /// tokens are spent with it (the node has its script; a second fetch
    /// with a token from the same DHCP exchange is someone else's).
    pub fn admit(
        &self,
        mac: &Mac,
        peer: IpAddr,
        token: Option<&str>,
        now: Instant,
    ) -> Option<Admitted> {
        let mut macs = self.macs.lock().unwrap_or_else(|e| e.into_inner());
        let entry = macs.get_mut(mac)?;
        if let Some(token) = token {
            let mut found = false;
            for (t, until) in &entry.tokens {
                // Every live token is compared in full: timing says nothing
                // about how much of a guess was right.
                found |= *until > now && same(t.as_bytes(), token.as_bytes());
            }
            if found {
                entry.tokens.clear();
                return Some(Admitted::Token);
            }
        }
        let peer = peer.to_canonical();
        entry
            .lease
            .filter(|(ip, until)| *ip == peer && *until > now)
            .map(|_| Admitted::Lease)
    }
}

impl Grants {
    /// The MAC holding a live lease on `ip`: who a TFTP client is, as
    /// bootd's DHCP knows it.
    pub fn leased_to(&self, ip: IpAddr) -> Option<Mac> {
        let now = Instant::now();
        let macs = self.macs.lock().unwrap_or_else(|e| e.into_inner());
        macs.iter()
            .find(|(_, e)| {
                e.lease
                    .is_some_and(|(held, until)| held == ip && until > now)
            })
            .map(|(mac, _)| *mac)
    }
}

/// The entry for `mac`, made if needed; `None` when the table is full.
fn entry<'a>(macs: &'a mut HashMap<Mac, Entry>, mac: &Mac, now: Instant) -> Option<&'a mut Entry> {
    if !macs.contains_key(mac) && macs.len() >= MAX_MACS {
        macs.retain(|_, e| e.live(now));
        if macs.len() >= MAX_MACS {
            tracing::warn!("script grants: {MAX_MACS} MACs hold live grants; no more granted");
            return None;
        }
    }
    Some(macs.entry(*mac).or_default())
}

/// Constant-time equality of two byte strings of the same length.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: &Mac = &Mac::new([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    const OTHER: &Mac = &Mac::new([0x52, 0x54, 0, 0x12, 0x34, 0x57]);

    fn ip(s: &str) -> IpAddr {
        s.parse()
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
    }

    #[test]
    fn a_token_admits_once_and_only_its_mac() {
        let g = Grants::new();
        let now = Instant::now();
        let t = g.issue(MAC, now).unwrap_or_default();
        assert_eq!(t.len(), 2 * TOKEN_BYTES);
        let other = OTHER;
        g.issue(other, now);
        assert_eq!(g.admit(other, ip("192.0.2.9"), Some(&t), now), None);
        assert_eq!(g.admit(MAC, ip("192.0.2.9"), Some("00"), now), None);
        assert_eq!(g.admit(MAC, ip("192.0.2.9"), None, now), None);
        assert_eq!(
            g.admit(MAC, ip("192.0.2.9"), Some(&t), now),
            Some(Admitted::Token)
        );
        assert_eq!(g.admit(MAC, ip("192.0.2.9"), Some(&t), now), None);
    }

    #[test]
    fn tokens_expire() {
        let g = Grants::new();
        let now = Instant::now();
        let t = g.issue(MAC, now).unwrap_or_default();
        let later = now + TOKEN_TTL + Duration::from_secs(1);
        assert_eq!(g.admit(MAC, ip("192.0.2.9"), Some(&t), later), None);
    }

    #[test]
    fn a_lease_admits_its_address_until_it_moves() {
        let g = Grants::new();
        let now = Instant::now();
        let until = now + Duration::from_secs(600);
        g.lease(MAC, ip("192.0.2.10"), until, now);
        assert_eq!(
            g.admit(MAC, ip("192.0.2.10"), None, now),
            Some(Admitted::Lease)
        );
        // The same address as a v4-mapped IPv6 peer of a dual-stack socket.
        assert_eq!(
            g.admit(MAC, ip("::ffff:192.0.2.10"), None, now),
            Some(Admitted::Lease)
        );
        assert_eq!(g.admit(MAC, ip("192.0.2.11"), None, now), None);
        g.end_lease(MAC);
        assert_eq!(g.admit(MAC, ip("192.0.2.10"), None, now), None);
        g.lease(MAC, ip("192.0.2.10"), until, now);
        // The address goes to another MAC: the first loses it.
        g.lease(OTHER, ip("192.0.2.10"), until, now);
        assert_eq!(g.admit(MAC, ip("192.0.2.10"), None, now), None);
        assert_eq!(g.leased_to(ip("192.0.2.10")), Some(*OTHER));
        assert_eq!(g.leased_to(ip("192.0.2.11")), None);
        assert_eq!(g.admit(MAC, ip("192.0.2.10"), None, until), None);
    }

    #[test]
    fn the_table_is_bounded() {
        let g = Grants::new();
        let now = Instant::now();
        let mac = |i: usize| Mac::new([2, 0, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
        for i in 0..MAX_MACS {
            assert!(g.issue(&mac(i), now).is_some());
        }
        let one_more = mac(MAX_MACS);
        assert!(g.issue(&one_more, now).is_none());
        // Once the old grants expire, there is room again.
        assert!(g.issue(&one_more, now + TOKEN_TTL * 2).is_some());
        let macs = g.macs.lock().map(|m| m.len()).unwrap_or(0);
        assert_eq!(macs, 1);
    }
}
