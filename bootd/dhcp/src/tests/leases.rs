//! The lease table against a store that fails.

use super::*;

/// After a failed append (a fragment may be in the file), the next commit
/// rewrites the whole table instead of appending after the fragment.
#[test]
fn a_failed_append_is_repaired_by_a_rewrite() -> R {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
    #[derive(Clone, Default)]
    struct Flaky {
        mem: Mem,
        fail: Arc<AtomicBool>,
        rewrites: Arc<AtomicUsize>,
    }
    impl LeaseStore for Flaky {
        fn load(&mut self) -> std::io::Result<HashMap<Mac, Lease>> {
            Mem::load(&self.mem)
        }
        fn append(&mut self, changes: &[Change]) -> std::io::Result<()> {
            if self.fail.swap(false, Relaxed) {
                return Err(std::io::Error::other("disk full"));
            }
            self.mem.append(changes)
        }
        fn rewrite(&mut self, all: &HashMap<Mac, Lease>) -> std::io::Result<()> {
            self.rewrites.fetch_add(1, Relaxed);
            self.mem.rewrite(all)
        }
    }
    let store = Flaky::default();
    let mut l = Leases::open(
        (Ipv4Addr::new(192, 0, 2, 100), Ipv4Addr::new(192, 0, 2, 102)),
        Box::new(store.clone()),
    )?;
    let opened = store.rewrites.load(Relaxed);
    store.fail.store(true, Relaxed);
    l.bind(
        Mac::new([2, 0, 0, 0, 0, 0xa]),
        Ipv4Addr::new(192, 0, 2, 100),
        NOW + 60,
        true,
    );
    assert!(l.commit().is_err(), "the failed append is reported");
    l.bind(
        Mac::new([2, 0, 0, 0, 0, 0xb]),
        Ipv4Addr::new(192, 0, 2, 101),
        NOW + 60,
        true,
    );
    l.commit()?;
    assert_eq!(
        store.rewrites.load(Relaxed),
        opened + 1,
        "repaired by a rewrite"
    );
    let saved = Mem::load(&store.mem)?;
    assert_eq!(saved.len(), 2, "both leases durable: {saved:?}");
    // Then appends again.
    l.bind(
        Mac::new([2, 0, 0, 0, 0, 0xc]),
        Ipv4Addr::new(192, 0, 2, 102),
        NOW + 60,
        true,
    );
    l.commit()?;
    assert_eq!(store.rewrites.load(Relaxed), opened + 1);
    assert_eq!(Mem::load(&store.mem)?.len(), 3);
    Ok(())
}

/// A server sharing the pool starts its search where `search_from` says,
/// and still wraps round to the addresses below once those above are gone.
#[test]
fn the_search_starts_where_told_and_wraps() -> R {
    let mut l = Leases::open(
        (Ipv4Addr::new(192, 0, 2, 100), Ipv4Addr::new(192, 0, 2, 103)),
        Box::new(Mem::default()),
    )?;
    l.search_from(Ipv4Addr::new(192, 0, 2, 102));
    let mut got = Vec::new();
    for i in 0..4u8 {
        let mac = Mac::new([2, 0, 0, 0, 0, i]);
        let ip = l.choose(mac, None, None, 10).ok_or("pool exhausted")?;
        l.bind(mac, ip, 100, true);
        got.push(ip.octets()[3]);
    }
    assert_eq!(got, [102, 103, 100, 101]);
    // Out of the pool: clamped.
    l.search_from(Ipv4Addr::new(10, 0, 0, 1));
    assert_eq!(l.choose(Mac::new([2, 0, 0, 0, 1, 0]), None, None, 10), None);
    Ok(())
}

/// An address another server's client declined is offered to nobody (not
/// even as a requested address) until the hold ends, then it is free.
#[test]
fn a_held_declined_address_is_skipped_until_its_hold_ends() -> R {
    let mut l = Leases::open(
        (Ipv4Addr::new(192, 0, 2, 100), Ipv4Addr::new(192, 0, 2, 101)),
        Box::new(Mem::default()),
    )?;
    let x = Ipv4Addr::new(192, 0, 2, 100);
    l.hold_declined(x, 50);
    // A shorter hold learnt later does not shorten it.
    l.hold_declined(x, 20);
    let mac = Mac::new([2, 0, 0, 0, 2, 1]);
    assert_eq!(
        l.choose(mac, None, Some(x), 10),
        Some(Ipv4Addr::new(192, 0, 2, 101))
    );
    l.bind(
        Mac::new([2, 0, 0, 0, 2, 2]),
        Ipv4Addr::new(192, 0, 2, 101),
        100,
        true,
    );
    assert_eq!(
        l.choose(mac, None, Some(x), 30),
        None,
        "pool exhausted but for x"
    );
    assert_eq!(l.choose(mac, None, Some(x), 50), Some(x));
    Ok(())
}

/// A server whose table mirrors a shared registry may have learnt another
/// address for a client than the one it offered: the REQUEST's address is
/// taken when nobody else holds it, and the registry's claim decides.
#[test]
fn a_requested_address_is_taken_only_when_nobody_else_holds_it() -> R {
    let mut l = Leases::open(
        (Ipv4Addr::new(192, 0, 2, 100), Ipv4Addr::new(192, 0, 2, 103)),
        Box::new(Mem::default()),
    )?;
    let (m, other) = (Mac::new([2, 0, 0, 0, 3, 1]), Mac::new([2, 0, 0, 0, 3, 2]));
    let (w, x, y) = (
        Ipv4Addr::new(192, 0, 2, 100),
        Ipv4Addr::new(192, 0, 2, 101),
        Ipv4Addr::new(192, 0, 2, 102),
    );
    // The table remembers w for m (another server's offer it mirrored);
    // m asks for x, which the registry gave it.
    l.bind(m, w, 100, false);
    assert_eq!(l.choose(m, None, Some(x), 10), Some(w));
    assert!(l.take_requested(m, x, 10));
    assert_eq!(l.choose(m, None, Some(x), 10), Some(x));
    // Never an address another MAC holds, a declined one, or one outside
    // the pool.
    l.bind(other, y, 100, true);
    assert!(!l.take_requested(m, y, 10));
    assert_eq!(l.get(other).map(|l| l.ip), Some(y));
    l.hold_declined(Ipv4Addr::new(192, 0, 2, 103), 50);
    assert!(!l.take_requested(m, Ipv4Addr::new(192, 0, 2, 103), 10));
    assert!(!l.take_requested(m, Ipv4Addr::new(192, 0, 2, 99), 10));
    Ok(())
}
