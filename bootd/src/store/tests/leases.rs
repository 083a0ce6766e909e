//! DHCP leases in PostgreSQL: servers racing for a small pool each on a
//! connection of their own; every address goes to one MAC only.

use crate::store::postgres::leases::{Claim, LeaseState, PgLeases};
use crate::store::url::{PgTarget, Registry};
use crate::store::{Result, StoreError};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// A fresh database of the test binary's PostgreSQL; `None` when skipped.
fn target(test: &str) -> Result<Option<PgTarget>> {
    let Some(server) = bootd_tests::postgres::shared(test) else {
        return Ok(None);
    };
    let db = server.create_database().map_err(|e| io(format!("{e:#}")))?;
    match Registry::parse(
        &server.url(&db),
        Some(bootd_tests::postgres::PASSWORD.into()),
    ) {
        Ok(Registry::Postgres(t)) => Ok(Some(*t)),
        other => Err(io(format!("test URL: {other:?}"))),
    }
}

const POOL: u8 = 16;
const SERVERS: usize = 4;
const MACS_EACH: usize = 12;

#[test]
fn servers_racing_for_a_small_pool_grant_each_address_once() -> Result<()> {
    let Some(t) = target("store::leases_race")? else {
        return Ok(());
    };
    // Every server walks the pool in the same order, so they collide on
    // every address; 48 MACs for 16 addresses: most must lose.
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = (0..SERVERS)
            .map(|n| {
                let t = t.clone();
                s.spawn(move || -> Result<Vec<(Ipv4Addr, String)>> {
                    let mut l = PgLeases::open(&t, &format!("s{n}"))?;
                    let mut won = Vec::new();
                    for m in 0..MACS_EACH {
                        let mac = format!("02:00:00:00:{n:02x}:{m:02x}");
                        for last in 1..=POOL {
                            let ip = Ipv4Addr::new(192, 0, 2, 100 + last);
                            match l.claim(ip, &mac, LeaseState::Offered, 30_000)? {
                                Claim::Won => {
                                    match l.claim(ip, &mac, LeaseState::Bound, 60_000)? {
                                        Claim::Won => won.push((ip, mac.clone())),
                                        lost => {
                                            return Err(io(format!(
                                                "{mac} lost its own offer {ip}: {lost:?}"
                                            )))
                                        }
                                    }
                                    break;
                                }
                                Claim::Lost(holder) => {
                                    let h = holder.ok_or_else(|| io("lost without a holder"))?;
                                    assert_ne!(h.mac, mac);
                                    assert!(h.left_ms > 0, "{h:?}");
                                }
                            }
                        }
                    }
                    Ok(won)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| io("a racer panicked"))?)
            .collect::<Result<Vec<_>>>()
    })?;
    let mut by_ip: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
    for (ip, mac) in results.into_iter().flatten() {
        if let Some(other) = by_ip.insert(ip, mac.clone()) {
            return Err(io(format!("{ip} granted to {other} and {mac}")));
        }
    }
    assert_eq!(by_ip.len(), usize::from(POOL), "every address granted once");
    // Every server's connection sees every lease.
    let mut view = PgLeases::open(&t, "viewer")?;
    let live = view.live()?;
    let seen: BTreeMap<_, _> = live.iter().map(|r| (r.address, r.mac.clone())).collect();
    assert_eq!(seen, by_ip);
    assert!(live.iter().all(|r| r.state == LeaseState::Bound));
    let servers: BTreeSet<_> = live.iter().map(|r| r.server.as_str()).collect();
    assert!(servers.len() > 1, "one server won everything: {servers:?}");
    Ok(())
}

#[test]
fn offers_expire_bound_leases_end_other_offers_and_release_frees() -> Result<()> {
    let Some(t) = target("store::leases_lifecycle")? else {
        return Ok(());
    };
    let (mut a, mut b) = (PgLeases::open(&t, "a")?, PgLeases::open(&t, "b")?);
    let (x, y) = (Ipv4Addr::new(192, 0, 2, 10), Ipv4Addr::new(192, 0, 2, 11));
    let (m1, m2) = ("02:00:00:00:00:01", "02:00:00:00:00:02");
    // Two servers offer m1 two addresses; an offer's short hold expires.
    assert_eq!(a.claim(x, m1, LeaseState::Offered, 300)?, Claim::Won);
    assert_eq!(b.claim(y, m1, LeaseState::Offered, 60_000)?, Claim::Won);
    assert!(
        matches!(b.claim(x, m2, LeaseState::Offered, 1000)?, Claim::Lost(Some(r)) if r.mac == m1)
    );
    std::thread::sleep(std::time::Duration::from_millis(400));
    assert_eq!(b.claim(x, m2, LeaseState::Offered, 60_000)?, Claim::Won);
    // m1 takes b's offer: its other rows go; m2's offer of x is untouched.
    assert_eq!(b.claim(y, m1, LeaseState::Bound, 60_000)?, Claim::Won);
    let live = a.live()?;
    assert_eq!(live.len(), 2, "{live:?}");
    assert!(live
        .iter()
        .any(|r| r.address == y && r.mac == m1 && r.state == LeaseState::Bound));
    // An offer to the holder itself keeps its bound lease bound.
    assert_eq!(a.claim(y, m1, LeaseState::Offered, 1000)?, Claim::Won);
    let r = a
        .live()?
        .into_iter()
        .find(|r| r.address == y)
        .ok_or_else(|| io("y gone"))?;
    assert_eq!(r.state, LeaseState::Bound);
    assert!(r.left_ms > 30_000, "{r:?}");
    // Release ends it now; another MAC may then take the address.
    assert!(!a.release(y, m2)?, "only the holder releases");
    assert!(a.release(y, m1)?);
    assert!(a.live()?.iter().all(|r| r.address != y));
    assert_eq!(a.claim(y, m2, LeaseState::Bound, 60_000)?, Claim::Won);
    Ok(())
}

#[test]
fn a_declined_address_is_offered_by_no_server_until_its_hold_ends() -> Result<()> {
    let Some(t) = target("store::leases_decline")? else {
        return Ok(());
    };
    let (mut a, mut b) = (PgLeases::open(&t, "a")?, PgLeases::open(&t, "b")?);
    let x = Ipv4Addr::new(192, 0, 2, 20);
    let (m1, m2) = ("02:00:00:00:00:01", "02:00:00:00:00:02");
    assert_eq!(a.claim(x, m1, LeaseState::Bound, 60_000)?, Claim::Won);
    // Only the holder declines.
    assert!(!b.decline(x, m2, 60_000)?, "a stranger's DECLINE counts");
    assert!(a.decline(x, m1, 500)?);
    // No server may offer it now: not another MAC, not the decliner, and a
    // RELEASE from the decliner does not end the hold.
    for (s, m) in [(&mut b, m2), (&mut a, m1)] {
        match s.claim(x, m, LeaseState::Offered, 60_000)? {
            Claim::Lost(Some(r)) => assert_eq!(r.state, LeaseState::Declined),
            other => panic!("a declined address was claimed: {other:?}"),
        }
    }
    assert!(!a.release(x, m1)?);
    assert!(matches!(
        b.claim(x, m2, LeaseState::Bound, 60_000)?,
        Claim::Lost(Some(_))
    ));
    // The hold ends: the address is free again.
    std::thread::sleep(std::time::Duration::from_millis(600));
    assert_eq!(b.claim(x, m2, LeaseState::Offered, 60_000)?, Claim::Won);
    Ok(())
}

#[test]
fn changes_read_only_rows_written_since_the_last_read_and_miss_none() -> Result<()> {
    let Some(t) = target("store::leases_changes")? else {
        return Ok(());
    };
    let (mut a, mut b) = (PgLeases::open(&t, "a")?, PgLeases::open(&t, "b")?);
    let ip = |n: u8| Ipv4Addr::new(192, 0, 2, n);
    let (m1, m2, m3) = (
        "02:00:00:00:00:01",
        "02:00:00:00:00:02",
        "02:00:00:00:00:03",
    );
    let (all, mut since) = b.changes(0)?;
    assert!(all.is_empty());
    // Nothing written: nothing read.
    let (none, next) = b.changes(since)?;
    assert!(none.is_empty(), "{none:?}");
    since = next;
    assert_eq!(a.claim(ip(1), m1, LeaseState::Offered, 60_000)?, Claim::Won);
    assert_eq!(a.claim(ip(2), m2, LeaseState::Bound, 60_000)?, Claim::Won);
    let (got, next) = b.changes(since)?;
    let addrs: Vec<_> = got.iter().map(|r| r.address).collect();
    assert_eq!(addrs, vec![ip(1), ip(2)]);
    since = next;
    // m1 binds elsewhere: its offer ends (expired, not deleted), and both
    // rows come back changed; the untouched ip(2) does not.
    assert_eq!(b.claim(ip(3), m1, LeaseState::Bound, 60_000)?, Claim::Won);
    let (got, next) = b.changes(since)?;
    let ended = got.iter().find(|r| r.address == ip(1));
    assert!(ended.is_some_and(|r| r.left_ms <= 0), "{got:?}");
    assert!(got.iter().any(|r| r.address == ip(3) && r.mac == m1));
    assert!(got.iter().all(|r| r.address != ip(2)), "{got:?}");
    since = next;
    // A write whose transaction began before a read and commits after it
    // is read next time, although later writes committed first.
    let server =
        bootd_tests::postgres::shared("store::leases_changes").ok_or_else(|| io("no server"))?;
    let db = t
        .config
        .get_dbname()
        .ok_or_else(|| io("no database name"))?;
    let mut slow = server.connect(db).map_err(|e| io(format!("{e:#}")))?;
    let mut tx = slow.transaction()?;
    tx.execute(
        "INSERT INTO leases (address, mac, server_id, state, expires_at, changed_xid)
         VALUES ('192.0.2.9', $1, 'slow', 'bound',
                 CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT) + 60000,
                 CAST(CAST(pg_current_xact_id() AS TEXT) AS BIGINT))",
        &[&m3],
    )?;
    // (An offer of another address to a MAC with a running bound lease
    // loses to that lease.)
    assert!(matches!(
        a.claim(ip(4), m2, LeaseState::Offered, 60_000)?,
        Claim::Lost(Some(r)) if r.address == ip(2) && r.state == LeaseState::Bound
    ));
    let m4 = "02:00:00:00:00:04";
    assert_eq!(a.claim(ip(5), m4, LeaseState::Bound, 60_000)?, Claim::Won);
    let (got, next) = b.changes(since)?;
    assert!(got.iter().any(|r| r.address == ip(5)), "{got:?}");
    assert!(
        got.iter().all(|r| r.address != ip(9)),
        "uncommitted row read"
    );
    since = next;
    tx.commit()?;
    let (got, _) = b.changes(since)?;
    assert!(
        got.iter().any(|r| r.address == ip(9) && r.mac == m3),
        "a late commit was missed: {got:?}"
    );
    Ok(())
}
