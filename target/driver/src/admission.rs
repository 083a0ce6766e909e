//! Who gets a connection slot: at most `max_connections` in total and
//! `max_connections_per_source` from one address. When a cap is reached, the
//! oldest connection that has not logged in yet (from the same source, or
//! for the total cap from the source holding most) is evicted first; only
//! when every slot holds a logged-in session is the newcomer refused. So
//! idle sockets from one machine cannot keep another from booting.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

#[derive(Default)]
struct Inner {
    /// Connections holding a slot, by connection id.
    counted: HashMap<u64, IpAddr>,
    per_source: HashMap<IpAddr, usize>,
    /// Those not logged in yet, oldest first, with what ends them.
    waiting: BTreeMap<u64, (IpAddr, Arc<Notify>)>,
}

impl Inner {
    fn release(&mut self, id: u64) {
        self.waiting.remove(&id);
        if let Some(ip) = self.counted.remove(&id) {
            if let Some(n) = self.per_source.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    self.per_source.remove(&ip);
                }
            }
        }
    }

    /// Ends the oldest waiting connection that `pick` accepts; false if none.
    fn evict(&mut self, pick: impl Fn(IpAddr) -> bool) -> bool {
        let Some((&id, (_, kill))) = self.waiting.iter().find(|(_, (ip, _))| pick(*ip)) else {
            return false;
        };
        kill.notify_one();
        self.release(id);
        true
    }
}

pub(crate) struct Admission {
    inner: Mutex<Inner>,
    max_total: usize,
    max_per_source: usize,
}

/// A connection's slot; dropping it frees the slot.
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    pub id: u64,
    /// Notified when the connection must end (evicted, reinstated, removed).
    pub kill: Arc<Notify>,
}

impl Admission {
    pub(crate) fn new(max_total: usize, max_per_source: usize) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner::default()),
            max_total: max_total.max(1),
            max_per_source: max_per_source.max(1),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a new connection `id` from `ip`, or `None`: refused.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr, id: u64) -> Option<Ticket> {
        let mut g = self.lock();
        if g.per_source.get(&ip).copied().unwrap_or(0) >= self.max_per_source
            && !g.evict(|w| w == ip)
        {
            return None;
        }
        if g.counted.len() >= self.max_total {
            // From the source that holds most slots: a flood's own sockets
            // go before a lone machine's login in progress.
            let top = g
                .waiting
                .values()
                .map(|(w, _)| *w)
                .max_by_key(|w| g.per_source.get(w).copied().unwrap_or(0));
            if !top.is_some_and(|top| g.evict(|w| w == top)) {
                return None;
            }
        }
        let kill = Arc::new(Notify::new());
        g.counted.insert(id, ip);
        *g.per_source.entry(ip).or_insert(0) += 1;
        g.waiting.insert(id, (ip, kill.clone()));
        Some(Ticket {
            admission: self.clone(),
            id,
            kill,
        })
    }

    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        let g = self.lock();
        (g.counted.len(), g.waiting.len())
    }
}

impl Ticket {
    /// The connection logged in: it is no longer evicted for newcomers.
    pub(crate) fn logged_in(&self) {
        self.admission.lock().waiting.remove(&self.id);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.lock().release(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    #[test]
    fn per_source_cap_evicts_the_sources_oldest_waiting() {
        let a = Admission::new(8, 2);
        let t1 = a.admit(ip("192.0.2.1"), 1);
        let t2 = a.admit(ip("192.0.2.1"), 2);
        assert!(t1.is_some() && t2.is_some());
        let t3 = a.admit(ip("192.0.2.1"), 3);
        assert!(t3.is_some(), "the oldest waiting one makes room");
        assert_eq!(a.counts(), (2, 2));
        drop(t1); // its slot was already taken back
        assert_eq!(a.counts(), (2, 2));
        // Both logged in: nothing to evict, refused.
        for t in [&t2, &t3].into_iter().flatten() {
            t.logged_in();
        }
        assert!(a.admit(ip("192.0.2.1"), 4).is_none());
        assert!(a.admit(ip("192.0.2.2"), 5).is_some());
    }

    #[test]
    fn total_cap_evicts_from_the_largest_source() {
        let a = Admission::new(3, 8);
        let lone = a.admit(ip("192.0.2.9"), 1);
        let f1 = a.admit(ip("192.0.2.1"), 2);
        let f2 = a.admit(ip("192.0.2.1"), 3);
        assert!(lone.is_some() && f1.is_some() && f2.is_some());
        // Full: a newcomer evicts the flood's oldest, not the lone login.
        let n = a.admit(ip("192.0.2.5"), 4);
        assert!(n.is_some());
        let g = a.lock();
        assert!(g.counted.contains_key(&1) && !g.counted.contains_key(&2));
    }
}
