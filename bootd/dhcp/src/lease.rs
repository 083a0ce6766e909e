//! The lease table: which MAC holds which address until when, which
//! addresses were declined, and allocation from the pool. Persisted through
//! [`LeaseStore`] (bootd's is a file) so that a restarted server gives a
//! MAC the same address.

use bootd_plan::Mac;
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

/// How long an offered address is held for the client's REQUEST.
pub const OFFER_HOLD_SECS: u64 = 60;
/// How long a declined address (someone else uses it) is left alone.
pub const DECLINE_HOLD_SECS: u64 = 600;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub ip: Ipv4Addr,
    /// Unix seconds; in the past once released or expired, but the MAC keeps
    /// its claim until another client needs the address.
    pub expires: u64,
}

/// A change to one MAC's lease: the new lease, or `None` once forgotten.
pub type Change = (Mac, Option<Lease>);

/// Where leases survive a restart.
pub trait LeaseStore: Send {
    fn load(&mut self) -> std::io::Result<HashMap<Mac, Lease>>;
    /// Makes `changes` durable (they are replayed in order by `load`).
    fn append(&mut self, changes: &[Change]) -> std::io::Result<()>;
    /// Replaces everything with `all`: compacts the history `append` grew.
    fn rewrite(&mut self, all: &HashMap<Mac, Lease>) -> std::io::Result<()>;
}

/// Compaction starts when the log holds this many lines beyond twice the leases.
const COMPACT_SLACK: usize = 4096;

pub struct Leases {
    first: u32,
    last: u32,
    by_mac: HashMap<Mac, Lease>,
    /// Who holds each address: keeps allocation linear in the pool size.
    by_ip: HashMap<Ipv4Addr, Mac>,
    declined: HashMap<Ipv4Addr, u64>,
    /// Static addresses of registered nodes: never handed to anyone else.
    reserved: HashSet<Ipv4Addr>,
    store: Box<dyn LeaseStore>,
    /// Changes not yet durable: [`Leases::commit`] writes them.
    pending: Vec<Change>,
    /// Changes committed since the last compaction.
    since_compaction: usize,
    /// An append failed: the log may end in a fragment, so the next commit
    /// rewrites the whole table (which holds every pending change).
    broken: bool,
    /// Where the search for a never-used address starts: addresses below it
    /// were all taken when it moved, so a fleet's allocation stays linear.
    cursor: u32,
}

impl Leases {
    pub fn open(
        pool: (Ipv4Addr, Ipv4Addr),
        mut store: Box<dyn LeaseStore>,
    ) -> std::io::Result<Self> {
        let mut by_mac = store.load()?;
        let mut by_ip = HashMap::new();
        for (mac, l) in &by_mac {
            by_ip.insert(l.ip, *mac);
        }
        // A file naming one address twice keeps one holder.
        by_mac.retain(|mac, l| by_ip.get(&l.ip) == Some(mac));
        Ok(Self {
            first: pool.0.into(),
            last: pool.1.into(),
            by_mac,
            by_ip,
            declined: HashMap::new(),
            reserved: HashSet::new(),
            store,
            pending: Vec::new(),
            since_compaction: 0,
            broken: false,
            cursor: pool.0.into(),
        })
    }

    /// Makes every change since the last commit durable: one disk flush for
    /// a whole batch of answers. Until it succeeds, no ACK may be sent. A
    /// failure keeps the changes for the next try.
    pub fn commit(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        if self.broken {
            self.store.rewrite(&self.by_mac)?;
            self.broken = false;
            self.since_compaction = 0;
            self.pending.clear();
            return Ok(());
        }
        if let Err(e) = self.store.append(&self.pending) {
            self.broken = true;
            return Err(e);
        }
        self.since_compaction += self.pending.len();
        self.pending.clear();
        if self.since_compaction > 2 * self.by_mac.len() + COMPACT_SLACK {
            // The changes are durable already: a failed compaction is retried
            // later and never holds back an answer.
            if let Err(e) = self.store.rewrite(&self.by_mac) {
                tracing::warn!("compacting the DHCP lease log: {e}");
            }
            self.since_compaction = 0;
        }
        Ok(())
    }

    /// Where the search for a never-used address starts (clamped to the
    /// pool). Servers sharing one pool start at different points, so that
    /// they do not all race for the same first free address; the search
    /// still wraps to the pool's start.
    pub fn search_from(&mut self, ip: Ipv4Addr) {
        self.cursor = u32::from(ip).clamp(self.first, self.last);
    }

    pub fn set_reserved(&mut self, reserved: HashSet<Ipv4Addr>) {
        self.reserved = reserved;
    }

    pub fn get(&self, mac: Mac) -> Option<&Lease> {
        self.by_mac.get(&mac)
    }

    /// A client REQUESTs `ip`, which this table would not give it (it
    /// remembers another address for the MAC): when `ip` is in the pool
    /// and nobody else holds it unexpired here, `mac` holds it for an
    /// offer's time and `true` is returned. For servers whose table only
    /// mirrors a shared registry: the registry's claim, not this table,
    /// then decides between ACK and NAK.
    pub fn take_requested(&mut self, mac: Mac, ip: Ipv4Addr, now: u64) -> bool {
        if !self.in_pool(ip) || !self.free_for(mac, ip, now, false) {
            return false;
        }
        self.bind(mac, ip, now + OFFER_HOLD_SECS, false);
        true
    }

    fn in_pool(&self, ip: Ipv4Addr) -> bool {
        (self.first..=self.last).contains(&u32::from(ip))
    }

    /// Whether `mac` may have `ip` now: nobody else holds it unexpired, it
    /// is not declined and not another node's static address.
    fn free_for(&self, mac: Mac, ip: Ipv4Addr, now: u64, take_expired: bool) -> bool {
        if self.reserved.contains(&ip) || self.declined.get(&ip).is_some_and(|&t| t > now) {
            return false;
        }
        match self.by_ip.get(&ip) {
            Some(m) if *m != mac => {
                let live = self.by_mac.get(m).is_some_and(|l| l.expires > now);
                take_expired && !live
            }
            _ => true,
        }
    }

    /// The address `mac` should get: `static_ip` when it has one, else its
    /// previous lease, else the requested address, else the first free one
    /// (never-used before expired ones). `None` when the pool is exhausted.
    pub fn choose(
        &self,
        mac: Mac,
        static_ip: Option<Ipv4Addr>,
        requested: Option<Ipv4Addr>,
        now: u64,
    ) -> Option<Ipv4Addr> {
        if static_ip.is_some() {
            return static_ip;
        }
        if let Some(l) = self.by_mac.get(&mac) {
            if self.in_pool(l.ip) && self.free_for(mac, l.ip, now, true) {
                return Some(l.ip);
            }
        }
        if let Some(r) = requested {
            if self.in_pool(r) && self.free_for(mac, r, now, false) {
                return Some(r);
            }
        }
        let start = self.cursor.clamp(self.first, self.last);
        for n in start..=self.last {
            let ip = Ipv4Addr::from(n);
            if !self.by_ip.contains_key(&ip) && self.free_for(mac, ip, now, false) {
                return Some(ip);
            }
        }
        for take_expired in [false, true] {
            for n in self.first..=self.last {
                let ip = Ipv4Addr::from(n);
                if self.free_for(mac, ip, now, take_expired) {
                    return Some(ip);
                }
            }
        }
        None
    }

    /// Records that `mac` holds `ip` until `expires`; made durable by the
    /// next [`Leases::commit`] when `durable` (an ACK), kept in memory only
    /// otherwise (an OFFER's hold).
    pub fn bind(&mut self, mac: Mac, ip: Ipv4Addr, expires: u64, durable: bool) {
        let n = u32::from(ip);
        if n == self.cursor {
            self.cursor = n.saturating_add(1);
        }
        // Another MAC's expired claim on the address ends here.
        if let Some(prev) = self.by_ip.insert(ip, mac) {
            if prev != mac {
                self.by_mac.remove(&prev);
            }
        }
        if let Some(old) = self.by_mac.insert(mac, Lease { ip, expires }) {
            if old.ip != ip {
                self.by_ip.remove(&old.ip);
            }
        }
        if durable {
            self.pending.push((mac, Some(Lease { ip, expires })));
        }
    }

    /// Leases running at `now` (Unix seconds): MAC, address, expiry.
    pub fn active(&self, now: u64) -> impl Iterator<Item = (Mac, Ipv4Addr, u64)> + '_ {
        self.by_mac
            .iter()
            .filter(move |(_, l)| l.expires > now)
            .map(|(mac, l)| (*mac, l.ip, l.expires))
    }

    /// RELEASE: the lease ends now; the MAC keeps its claim for next time.
    pub fn release(&mut self, mac: Mac, ip: Ipv4Addr, now: u64) {
        if let Some(l) = self.by_mac.get_mut(&mac).filter(|l| l.ip == ip) {
            l.expires = l.expires.min(now);
            let l = l.clone();
            self.pending.push((mac, Some(l)));
        }
    }

    /// Keeps `ip` out of every offer until `until` (Unix seconds): another
    /// server's client declined it.
    pub fn hold_declined(&mut self, ip: Ipv4Addr, until: u64) {
        let t = self.declined.entry(ip).or_insert(until);
        *t = (*t).max(until);
    }

    /// DECLINE: the address is in use by someone else; forget the lease and
    /// keep the address out of the pool for a while.
    pub fn decline(&mut self, mac: Mac, ip: Ipv4Addr, now: u64) {
        if self.by_mac.get(&mac).is_some_and(|l| l.ip == ip) {
            self.by_mac.remove(&mac);
            self.by_ip.remove(&ip);
            self.declined.insert(ip, now + DECLINE_HOLD_SECS);
            self.pending.push((mac, None));
        }
    }
}
