//! Connection slots of the HTTP server, shared fairly between sources: at
//! most [`PER_SOURCE`] connections per client address, and when every slot
//! is taken a connection that has not finished its request head (an idle
//! or trickling one) is evicted to make room, the longest-waiting one of
//! the busiest source first. One machine opening sockets and sending
//! nothing can no longer keep every other machine from its script.
//! With keep-alive a connection waiting for its next request head is as
//! idle as a new one: it is evictable again between requests, and a source
//! at its share that opens another connection gives up its own oldest idle
//! one instead of being refused.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Connections handled at once.
pub const MAX_CONNECTIONS: usize = 256;
/// Connections one client address may hold unless told otherwise (`serve
/// --per-source`); iPXE needs one at a time.
pub const PER_SOURCE: usize = 16;

/// A connection's place; dropping it frees the slot.
pub struct Slot {
    slots: Arc<Slots>,
    /// Its key among the connections reading a head: a fresh one each time
    /// it goes idle, so the longest-idle connection is evicted first.
    id: AtomicU64,
    source: IpAddr,
    /// Notified when the connection is evicted while reading its head.
    pub evicted: Arc<Notify>,
}

impl Slot {
    /// The head is in: the connection is being answered and is no longer
    /// evicted for newcomers (the answer is bounded by its write limit).
    pub fn answering(&self) {
        let mut s = self.slots.lock();
        s.reading.remove(&self.id.load(Ordering::Relaxed));
    }

    /// The answer is out and the connection waits for its next request
    /// head (keep-alive): evictable again, as the newest idle one.
    pub fn idle(&self) {
        let mut s = self.slots.lock();
        let id = s.next;
        s.next += 1;
        let old = self.id.swap(id, Ordering::Relaxed);
        s.reading.remove(&old);
        s.reading.insert(id, (self.source, self.evicted.clone()));
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.slots.lock();
        s.reading.remove(&self.id.load(Ordering::Relaxed));
        s.total = s.total.saturating_sub(1);
        if let Some(n) = s.by_source.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                s.by_source.remove(&self.source);
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The source already holds [`PER_SOURCE`] connections.
    Source,
    /// Every slot is answering a request; nothing to evict.
    Full,
}

#[derive(Default)]
struct Inner {
    next: u64,
    total: usize,
    by_source: HashMap<IpAddr, usize>,
    /// Connections still reading their head, oldest first (ids grow).
    reading: BTreeMap<u64, (IpAddr, Arc<Notify>)>,
}

pub struct Slots {
    inner: Mutex<Inner>,
    max: usize,
    per_source: usize,
}

/// Tells an idle connection to end. The evicted task frees its slot when it
/// ends, moments later; until then the count runs over by one.
fn evict(s: &mut Inner, id: u64) {
    if let Some((_, notify)) = s.reading.remove(&id) {
        notify.notify_one();
    }
}

impl Slots {
    pub fn new(max: usize, per_source: usize) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner::default()),
            max,
            per_source,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a connection from `source`, evicting a connection still
    /// reading its head when all are taken.
    pub fn take(self: &Arc<Self>, source: IpAddr) -> Result<Slot, Refused> {
        let source = source.to_canonical();
        let mut s = self.lock();
        if s.by_source.get(&source).copied().unwrap_or(0) >= self.per_source {
            // At its share, a source makes room only from its own idle
            // connections (kept alive and unused, or closed by the client
            // and still being freed): the oldest goes; it never takes more.
            let own = s
                .reading
                .iter()
                .find(|(_, (ip, _))| *ip == source)
                .map(|(id, _)| *id);
            let Some(own) = own else {
                return Err(Refused::Source);
            };
            evict(&mut s, own);
        } else if s.total >= self.max {
            // The busiest source's oldest unfinished connection goes.
            let busiest = s
                .reading
                .values()
                .map(|(ip, _)| *ip)
                .max_by_key(|ip| s.by_source.get(ip).copied().unwrap_or(0));
            let victim = busiest.and_then(|b| {
                s.reading
                    .iter()
                    .find(|(_, (ip, _))| *ip == b)
                    .map(|(id, _)| *id)
            });
            let Some(victim) = victim else {
                return Err(Refused::Full);
            };
            evict(&mut s, victim);
        }
        let id = s.next;
        s.next += 1;
        s.total += 1;
        *s.by_source.entry(source).or_default() += 1;
        let evicted = Arc::new(Notify::new());
        s.reading.insert(id, (source, evicted.clone()));
        drop(s);
        Ok(Slot {
            slots: self.clone(),
            id: AtomicU64::new(id),
            source,
            evicted,
        })
    }

    /// Connections held now.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.lock().total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn one_source_gets_its_share_only() {
        let slots = Slots::new(8, 3);
        let held: Vec<_> = (0..3).filter_map(|_| slots.take(ip(1)).ok()).collect();
        assert_eq!(held.len(), 3);
        // Busy with requests: nothing of its own to give up.
        for s in &held {
            s.answering();
        }
        assert_eq!(slots.take(ip(1)).err(), Some(Refused::Source));
        assert!(slots.take(ip(2)).is_ok());
        drop(held);
        assert!(slots.take(ip(1)).is_ok());
    }

    #[test]
    fn idle_connections_of_the_busiest_source_are_evicted() {
        let slots = Slots::new(4, 3);
        let flood: Vec<_> = (0..3).filter_map(|_| slots.take(ip(1)).ok()).collect();
        let other = slots.take(ip(2)).ok();
        assert_eq!(slots.held(), 4);
        // Full: the flood's oldest idle connection makes room.
        let newcomer = slots.take(ip(3));
        assert!(newcomer.is_ok());
        // The evicted one was told (a stored permit: notified() is ready).
        let told = flood
            .iter()
            .filter(|s| {
                let fut = s.evicted.notified();
                tokio::pin!(fut);
                fut.as_mut().enable()
            })
            .count();
        assert_eq!(told, 1);
        drop(other);
        drop(newcomer);
        drop(flood);
        assert_eq!(slots.held(), 0, "counts freed exactly once");
    }

    #[test]
    fn connections_being_answered_are_not_evicted() {
        let slots = Slots::new(2, 2);
        let a = slots.take(ip(1));
        let b = slots.take(ip(2));
        for s in [&a, &b].into_iter().flatten() {
            s.answering();
        }
        assert_eq!(slots.take(ip(3)).err(), Some(Refused::Full));
    }

    /// A source at its share that opens another connection gives up its own
    /// oldest idle one (kept alive, or closed and not yet freed), never
    /// another source's.
    #[test]
    fn a_source_at_its_share_replaces_its_own_idle_connection() {
        let slots = Slots::new(8, 2);
        let other = slots.take(ip(2)).ok();
        let mine: Vec<_> = (0..2).filter_map(|_| slots.take(ip(1)).ok()).collect();
        if let Some(m) = mine.last() {
            m.answering();
        }
        assert!(slots.take(ip(1)).is_ok(), "its idle one made room");
        let told = |s: &Slot| {
            let fut = s.evicted.notified();
            tokio::pin!(fut);
            fut.as_mut().enable()
        };
        assert!(mine.first().is_some_and(told), "its own idle one was told");
        assert!(
            !other.as_ref().is_some_and(told),
            "another source's was not"
        );
        // Both left of its own are busy or already told: no more.
        assert_eq!(slots.take(ip(1)).err(), Some(Refused::Source));
    }

    #[test]
    fn a_kept_alive_connection_is_evictable_between_requests() {
        let slots = Slots::new(2, 2);
        let a = slots.take(ip(1)).ok();
        let b = slots.take(ip(2)).ok();
        for s in [&a, &b].into_iter().flatten() {
            s.answering();
        }
        // `a` has sent its answer and waits for another request.
        if let Some(a) = &a {
            a.idle();
        }
        assert!(slots.take(ip(3)).is_ok());
        let told = a.iter().any(|s| {
            let fut = s.evicted.notified();
            tokio::pin!(fut);
            fut.as_mut().enable()
        });
        assert!(told, "the idle keep-alive connection was evicted");
        drop((a, b));
    }
}
