//! The store test suite, run once per backend: every test in [`suite`]
//! takes a [`Fixture`] (a fresh, empty registry of one backend, plus a raw
//! connection for what the store's interface does not do) and runs as
//! `store::tests::sqlite::NAME` and `store::tests::postgres::NAME`.
//! PostgreSQL tests share one server per test binary, a fresh database each;
//! they skip with a printed reason when PostgreSQL is not installed and
//! `BOOTD_E2E` is unset, and fail when `BOOTD_E2E=1`.

mod leases;
mod suite;

use super::{Result, Store, StoreError};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

type Opener = Box<dyn Fn() -> Result<Box<dyn Store>> + Send + Sync>;
type Exec = Box<dyn Fn(&str) -> Result<()> + Send + Sync>;
type Scalar = Box<dyn Fn(&str) -> Result<i64> + Send + Sync>;

pub struct Fixture {
    pub dialect: Dialect,
    open: Opener,
    exec: Exec,
    scalar: Scalar,
    _dir: Option<tempfile::TempDir>,
}

impl Fixture {
    /// A store on the fixture's registry (migrating it if needed); call
    /// again for a second connection or a reopen.
    pub fn open(&self) -> Result<Box<dyn Store>> {
        (self.open)()
    }

    /// Runs `sql` (one or more statements) on a connection of its own.
    pub fn exec(&self, sql: &str) -> Result<()> {
        (self.exec)(sql)
    }

    /// The one integer `sql` selects.
    pub fn scalar(&self, sql: &str) -> Result<i64> {
        (self.scalar)(sql)
    }

    /// This backend's dialect of the schema history.
    pub fn migrations(&self) -> &'static [&'static str] {
        match self.dialect {
            Dialect::Sqlite => super::schema::MIGRATIONS,
            Dialect::Postgres => super::schema::POSTGRES_MIGRATIONS,
        }
    }
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// A registry in a fresh SQLite file.
fn sqlite(_test: &str) -> Result<Option<Fixture>> {
    let dir = tempfile::tempdir().map_err(io)?;
    let path: PathBuf = dir.path().join("bootd.db");
    let (p, q) = (path.clone(), path.clone());
    Ok(Some(Fixture {
        dialect: Dialect::Sqlite,
        open: Box::new(move || {
            Ok(Box::new(super::sqlite::SqliteStore::open(&p)?) as Box<dyn Store>)
        }),
        exec: Box::new(move |sql| {
            let c = rusqlite::Connection::open(&path)?;
            c.busy_timeout(std::time::Duration::from_secs(10))?;
            Ok(c.execute_batch(sql)?)
        }),
        scalar: Box::new(move |sql| {
            let c = rusqlite::Connection::open(&q)?;
            Ok(c.query_row(sql, [], |r| r.get(0))?)
        }),
        _dir: Some(dir),
    }))
}

/// A registry in a fresh database of the test binary's PostgreSQL server;
/// `None` when the test is skipped.
fn postgres(test: &str) -> Result<Option<Fixture>> {
    let Some(server) = bootd_tests::postgres::shared(test) else {
        return Ok(None);
    };
    let db = server.create_database().map_err(|e| io(format!("{e:#}")))?;
    let target = match super::url::Registry::parse(
        &server.url(&db),
        Some(bootd_tests::postgres::PASSWORD.into()),
    ) {
        Ok(super::url::Registry::Postgres(t)) => *t,
        other => return Err(io(format!("test URL: {other:?}"))),
    };
    Ok(Some(Fixture {
        dialect: Dialect::Postgres,
        open: Box::new(move || super::postgres::open(&target)),
        exec: Box::new({
            let db = db.clone();
            move |sql| {
                let mut c = server.connect(&db).map_err(|e| io(format!("{e:#}")))?;
                Ok(c.batch_execute(sql)?)
            }
        }),
        scalar: Box::new(move |sql| {
            let mut c = server.connect(&db).map_err(|e| io(format!("{e:#}")))?;
            Ok(c.query_one(sql, &[])?.try_get(0)?)
        }),
        _dir: None,
    }))
}

/// `#[test]`s calling `suite::NAME` with each backend's fixture.
macro_rules! for_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $name() -> $crate::store::Result<()> {
                    match super::sqlite(stringify!($name))? {
                        Some(f) => super::suite::$name(f),
                        None => Ok(()),
                    }
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                fn $name() -> $crate::store::Result<()> {
                    match super::postgres(concat!("store::", stringify!($name)))? {
                        Some(f) => super::suite::$name(f),
                        None => Ok(()),
                    }
                }
            )*
        }
    };
}

for_both_backends!(
    every_write_bumps_the_generation,
    versions_and_latest,
    duplicates_and_lookups,
    image_and_template_removal_is_refused_while_used,
    reopening_keeps_data_and_a_newer_schema_is_refused,
    node_revisions_move_with_state_and_image,
    migration_3_leaves_existing_nodes_without_mutual_chap,
    mutual_chap_moves_the_generation_and_half_credentials_are_refused,
    a_stored_value_that_does_not_parse_is_an_error,
    migration_4_keeps_rows_and_numbers_existing_overlays,
    user_data_is_stored_on_templates_and_nodes,
    every_fresh_overlay_moves_the_overlay_generation,
    discovered_and_stages,
    lists_sort_bytewise_whatever_the_locale,
    a_write_by_another_connection_wakes_the_feed_within_a_second,
    two_processes_migrating_at_once_both_succeed,
    racing_writers_get_the_same_errors,
    servers_heartbeat_and_claim_nodes,
    tokens_are_stored_by_hash_and_listed_by_name,
    reservations_are_kept_per_node_fenced_by_owner_and_end_with_the_overlay,
);

/// PostgreSQL only: SQLite has no connection to lose.
#[test]
fn postgres_a_lost_connection_is_made_again() -> Result<()> {
    match postgres("store::a_lost_connection_is_made_again")? {
        Some(f) => suite::a_lost_connection_is_made_again(f),
        None => Ok(()),
    }
}

/// SQLite only: many processes opening a data directory's fresh database at
/// once (serve starting while operators run commands). Until one of them has
/// switched the file to WAL it is in rollback mode, where two connections
/// that both hold SHARED and want more deadlock, and SQLite answers one of
/// them BUSY at once without waiting its busy timeout.
#[test]
fn sqlite_first_opens_at_once_all_succeed() -> Result<()> {
    for round in 0..50 {
        let dir = tempfile::tempdir().map_err(|e| io(e.to_string()))?;
        let path = dir.path().join("bootd.db");
        let opened = suite::at_once(8, || super::sqlite::SqliteStore::open(&path)?.generation());
        for r in opened {
            assert_eq!(r.map_err(|e| format!("round {round}: {e:?}")), Ok(0));
        }
    }
    Ok(())
}
