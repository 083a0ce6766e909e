//! Store tests of what several connections see: order, change
//! notification, concurrent migrations and writers, lost connections.

use super::super::{Dialect, Fixture};
use super::{assert_version, image, node};
use crate::store::{Result, StoreError};
use std::time::{Duration, Instant};

/// Names sort by their bytes (upper case before lower case), as SQLite's
/// BINARY collation does, also in a PostgreSQL database whose locale sorts
/// otherwise (the test databases use ICU's en-US).
pub fn lists_sort_bytewise_whatever_the_locale(f: Fixture) -> Result<()> {
    let mut s = f.open()?;
    let mut ids = Vec::new();
    for name in ["b", "B", "a", "_x"] {
        ids.push(s.add_image(&image(name, 1))?.id);
        s.add_template(name, name, None, None)?;
    }
    for (i, name) in ["b", "B", "a", "_x"].into_iter().enumerate() {
        let mac = format!("02:00:00:00:00:1{i}");
        s.add_node(&node(name, &mac, ids[i]))?;
    }
    if f.dialect == Dialect::Postgres {
        // The database's own collation puts "a" before "B": the order
        // below comes from the schema's COLLATE "C", not from the locale.
        assert_eq!(
            f.scalar("SELECT CAST(CASE WHEN 'a' < 'B' THEN 1 ELSE 0 END AS BIGINT)")?,
            1,
            "the test database sorts bytewise; this test would prove nothing"
        );
    }
    let want = ["B", "_x", "a", "b"];
    let images: Vec<String> = s.images()?.into_iter().map(|i| i.name).collect();
    assert_eq!(images, want);
    let templates: Vec<String> = s.templates()?.into_iter().map(|t| t.name).collect();
    assert_eq!(templates, want);
    let nodes: Vec<String> = s.nodes()?.into_iter().map(|n| n.name).collect();
    assert_eq!(nodes, want);
    Ok(())
}

/// A change made through another connection (the CLI, another server)
/// wakes the change feed at once: well within the watcher's 1 s check.
pub fn a_write_by_another_connection_wakes_the_feed_within_a_second(f: Fixture) -> Result<()> {
    let watcher = f.open()?;
    let mut feed = watcher.changes()?;
    let mut cli = f.open()?;
    // Whatever opening did is not a change to wait for.
    while feed.wait(Duration::from_millis(200)) {}
    assert!(
        !feed.wait(Duration::from_millis(200)),
        "woken without a change"
    );
    let mut worst = Duration::ZERO;
    for v in 1..=3 {
        let t = Instant::now();
        cli.add_image(&image("deb", v))?;
        assert!(feed.wait(Duration::from_secs(5)), "no notification");
        worst = worst.max(t.elapsed());
        while feed.wait(Duration::from_millis(50)) {}
    }
    assert!(worst < Duration::from_millis(500), "{worst:?}");
    println!(
        "{:?}: a change reached the feed in at most {worst:?}",
        f.dialect
    );
    // A read is no change.
    cli.images()?;
    watcher.nodes()?;
    if f.dialect == Dialect::Postgres {
        assert!(!feed.wait(Duration::from_millis(300)), "woken by a read");
        // Nor is a write that failed (rolled back).
        assert!(cli.add_image(&image("deb", 1)).is_err());
        assert!(
            !feed.wait(Duration::from_millis(300)),
            "woken by a rollback"
        );
    }
    Ok(())
}

/// `n` threads run `work` at the same moment (released by one barrier);
/// their results in order, a panic as an error.
pub(in crate::store) fn at_once<T: Send>(
    n: usize,
    work: impl Fn() -> Result<T> + Sync,
) -> Vec<Result<T>> {
    let barrier = std::sync::Barrier::new(n);
    std::thread::scope(|sc| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let (work, barrier) = (&work, &barrier);
                sc.spawn(move || {
                    barrier.wait();
                    work()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(StoreError::Corrupt("panic".into())))
            })
            .collect()
    })
}

/// Two bootd processes starting at once on an empty registry: one
/// migrates, the other waits and finds the schema in place.
pub fn two_processes_migrating_at_once_both_succeed(f: Fixture) -> Result<()> {
    let opened = at_once(4, || f.open()?.generation());
    for r in opened {
        assert_eq!(r?, 0);
    }
    assert_version(&f, crate::store::schema::latest())
}

/// Two writers adding the same node at the same moment: one succeeds, the
/// other gets `Duplicate`, as it would one after the other.
pub fn racing_writers_get_the_same_errors(f: Fixture) -> Result<()> {
    let mut first = f.open()?;
    let img = first.add_image(&image("deb", 1))?;
    let stores: Vec<Box<dyn crate::store::Store>> =
        (0..4).map(|_| f.open()).collect::<Result<_>>()?;
    let barrier = std::sync::Barrier::new(stores.len());
    let results: Vec<Result<crate::store::Node>> = std::thread::scope(|sc| {
        let handles: Vec<_> = stores
            .into_iter()
            .enumerate()
            .map(|(i, mut s)| {
                let barrier = &barrier;
                sc.spawn(move || {
                    barrier.wait();
                    // Same name, different everything else.
                    let mut n = node("same", &format!("02:00:00:00:01:0{i}"), img.id);
                    n.target_iqn = format!("iqn.t:{i}");
                    n.initiator_iqn = format!("iqn.i:{i}");
                    n.overlay_path = format!("/data/overlays/{i}.qcow2").into();
                    s.add_node(&n)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(StoreError::Corrupt("panic".into())))
            })
            .collect()
    });
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1, "{results:?}");
    for r in &results {
        if let Err(e) = r {
            assert!(
                matches!(e, StoreError::Duplicate { field: "name", .. }),
                "{e:?}"
            );
        }
    }
    assert_eq!(first.nodes()?.len(), 1);
    Ok(())
}

/// PostgreSQL: connections the server drops while idle (a restart, a
/// failover, an administrator) are made again: reads and writes go on, and
/// the change feed listens again and reports a possible change.
pub fn a_lost_connection_is_made_again(f: Fixture) -> Result<()> {
    // Ends every other session on the database and waits until they are
    // gone (pg_terminate_backend only signals).
    let drop_all = || -> Result<()> {
        let others = "FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()";
        f.exec(&format!("SELECT pg_terminate_backend(pid) {others}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while f.scalar(&format!("SELECT COUNT(*) {others}"))? > 0 {
            assert!(Instant::now() < deadline, "sessions still there");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    };
    let mut s = f.open()?;
    let watcher = f.open()?;
    let mut feed = watcher.changes()?;
    s.add_image(&image("deb", 1))?;
    while feed.wait(Duration::from_millis(200)) {}
    drop_all()?;
    assert_eq!(s.images()?.len(), 1);
    drop_all()?;
    s.add_image(&image("deb", 2))?;
    assert_eq!(s.max_image_version("deb")?, 2);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !feed.wait(Duration::from_millis(500)) {
        assert!(Instant::now() < deadline, "the feed never noticed");
    }
    while feed.wait(Duration::from_millis(200)) {}
    s.add_image(&image("deb", 3))?;
    assert!(
        feed.wait(Duration::from_secs(5)),
        "no notification after listening again"
    );
    Ok(())
}
