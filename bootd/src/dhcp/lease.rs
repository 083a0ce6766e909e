//! The lease table: which MAC holds which address until when, which
//! addresses were declined, and allocation from the pool. Persisted through
//! [`LeaseStore`] so that a restarted server gives a MAC the same address.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;

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

/// Where leases survive a restart.
pub trait LeaseStore: Send {
    fn load(&self) -> std::io::Result<HashMap<String, Lease>>;
    fn save(&self, leases: &HashMap<String, Lease>) -> std::io::Result<()>;
}

/// One text line per lease (`MAC IP EXPIRES`), replaced atomically.
pub struct FileLeaseStore {
    path: PathBuf,
}

impl FileLeaseStore {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }
}

impl LeaseStore for FileLeaseStore {
    fn load(&self) -> std::io::Result<HashMap<String, Lease>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
            Err(e) => return Err(e),
        };
        let mut out = HashMap::new();
        for line in text.lines() {
            let mut f = line.split_whitespace();
            // A damaged line loses one lease, not the table.
            if let (Some(mac), Some(Ok(ip)), Some(Ok(expires))) =
                (f.next(), f.next().map(str::parse), f.next().map(str::parse))
            {
                out.insert(mac.to_string(), Lease { ip, expires });
            }
        }
        Ok(out)
    }

    fn save(&self, leases: &HashMap<String, Lease>) -> std::io::Result<()> {
        let mut rows: Vec<_> = leases.iter().collect();
        rows.sort_by_key(|(_, l)| l.ip);
        let mut text = String::new();
        for (mac, l) in rows {
            text.push_str(&format!("{mac} {} {}\n", l.ip, l.expires));
        }
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)
    }
}

pub struct Leases {
    first: u32,
    last: u32,
    by_mac: HashMap<String, Lease>,
    /// Who holds each address: keeps allocation linear in the pool size.
    by_ip: HashMap<Ipv4Addr, String>,
    declined: HashMap<Ipv4Addr, u64>,
    /// Static addresses of registered nodes: never handed to anyone else.
    reserved: HashSet<Ipv4Addr>,
    store: Box<dyn LeaseStore>,
}

impl Leases {
    pub fn open(pool: (Ipv4Addr, Ipv4Addr), store: Box<dyn LeaseStore>) -> std::io::Result<Self> {
        let mut by_mac = store.load()?;
        let mut by_ip = HashMap::new();
        for (mac, l) in &by_mac {
            by_ip.insert(l.ip, mac.clone());
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
        })
    }

    pub fn set_reserved(&mut self, reserved: HashSet<Ipv4Addr>) {
        self.reserved = reserved;
    }

    pub fn get(&self, mac: &str) -> Option<&Lease> {
        self.by_mac.get(mac)
    }

    fn in_pool(&self, ip: Ipv4Addr) -> bool {
        (self.first..=self.last).contains(&u32::from(ip))
    }

    /// Whether `mac` may have `ip` now: nobody else holds it unexpired, it
    /// is not declined and not another node's static address.
    fn free_for(&self, mac: &str, ip: Ipv4Addr, now: u64, take_expired: bool) -> bool {
        if self.reserved.contains(&ip) || self.declined.get(&ip).is_some_and(|&t| t > now) {
            return false;
        }
        match self.by_ip.get(&ip) {
            Some(m) if m != mac => {
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
        mac: &str,
        static_ip: Option<Ipv4Addr>,
        requested: Option<Ipv4Addr>,
        now: u64,
    ) -> Option<Ipv4Addr> {
        if static_ip.is_some() {
            return static_ip;
        }
        if let Some(l) = self.by_mac.get(mac) {
            if self.in_pool(l.ip) && self.free_for(mac, l.ip, now, true) {
                return Some(l.ip);
            }
        }
        if let Some(r) = requested {
            if self.in_pool(r) && self.free_for(mac, r, now, false) {
                return Some(r);
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

    /// Records that `mac` holds `ip` until `expires`; persisted when `save`.
    pub fn bind(
        &mut self,
        mac: &str,
        ip: Ipv4Addr,
        expires: u64,
        save: bool,
    ) -> std::io::Result<()> {
        // Another MAC's expired claim on the address ends here.
        if let Some(prev) = self.by_ip.insert(ip, mac.to_string()) {
            if prev != mac {
                self.by_mac.remove(&prev);
            }
        }
        if let Some(old) = self.by_mac.insert(mac.to_string(), Lease { ip, expires }) {
            if old.ip != ip {
                self.by_ip.remove(&old.ip);
            }
        }
        if save {
            self.store.save(&self.by_mac)?;
        }
        Ok(())
    }

    /// RELEASE: the lease ends now; the MAC keeps its claim for next time.
    pub fn release(&mut self, mac: &str, ip: Ipv4Addr, now: u64) -> std::io::Result<()> {
        match self.by_mac.get_mut(mac) {
            Some(l) if l.ip == ip => l.expires = l.expires.min(now),
            _ => return Ok(()),
        }
        self.store.save(&self.by_mac)
    }

    /// DECLINE: the address is in use by someone else; forget the lease and
    /// keep the address out of the pool for a while.
    pub fn decline(&mut self, mac: &str, ip: Ipv4Addr, now: u64) -> std::io::Result<()> {
        if self.by_mac.get(mac).is_some_and(|l| l.ip == ip) {
            self.by_mac.remove(mac);
            self.by_ip.remove(&ip);
            self.declined.insert(ip, now + DECLINE_HOLD_SECS);
            self.store.save(&self.by_mac)?;
        }
        Ok(())
    }
}
