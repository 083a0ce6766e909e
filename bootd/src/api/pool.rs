//! The API's registry connections, kept between requests. Opening the
//! registry for each request cost a new PostgreSQL connection (TCP, maybe
//! TLS, authentication, the migration check) twice per request: once for
//! the token, once for the handler. A small pool keeps them: at most
//! [`SIZE`] in use at once (the rest of the requests wait their turn, so a
//! burst cannot exhaust the server's connection limit), idle ones reused.
//! A store whose call failed with a registry error (not a refusal such as
//! "not found") is dropped, and the next request opens a fresh one; a
//! PostgreSQL store also reconnects by itself when it finds its connection
//! closed (`PgStore::conn`).

use crate::datadir::DataDir;
use crate::store::{Store, StoreError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Registry connections the API holds at most.
pub const SIZE: usize = 8;

pub struct Pool {
    dd: DataDir,
    idle: Mutex<Vec<Box<dyn Store>>>,
    permits: Arc<Semaphore>,
    /// Stores opened so far (for the tests).
    opened: AtomicU64,
}

/// A store lent out; goes back to the pool through [`Pool::give_back`].
pub struct Lent {
    store: Box<dyn Store>,
    _permit: OwnedSemaphorePermit,
}

impl Lent {
    pub fn store(&mut self) -> &mut dyn Store {
        self.store.as_mut()
    }
}

impl Pool {
    pub fn new(dd: DataDir, size: usize) -> Self {
        Self {
            dd,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(size.max(1))),
            opened: AtomicU64::new(0),
        }
    }

    pub fn data_dir(&self) -> &DataDir {
        &self.dd
    }

    /// A turn to use the registry: waits (async) while [`SIZE`] are in use.
    pub async fn turn(&self) -> anyhow::Result<OwnedSemaphorePermit> {
        // Closed only if someone closes it; nothing does.
        Ok(self.permits.clone().acquire_owned().await?)
    }

    /// An idle store, or a new one. Blocks: call it off the runtime's workers.
    pub fn take(&self, permit: OwnedSemaphorePermit) -> anyhow::Result<Lent> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let store = match idle {
            Some(s) => s,
            None => {
                self.opened.fetch_add(1, Ordering::Relaxed);
                self.dd.store()?
            }
        };
        Ok(Lent {
            store,
            _permit: permit,
        })
    }

    /// Back to the pool, unless `outcome` says the store may be broken.
    pub fn give_back<T>(&self, lent: Lent, outcome: &anyhow::Result<T>) {
        if let Err(e) = outcome {
            if broken(e) {
                tracing::debug!("api: a registry connection dropped after an error");
                return;
            }
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.push(lent.store);
    }

    #[cfg(test)]
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }
}

/// Whether an error came from the registry itself (its connection, its
/// database) rather than from what was asked: such a store is not reused.
fn broken(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        if c.downcast_ref::<::postgres::Error>().is_some()
            || c.downcast_ref::<rusqlite::Error>().is_some()
        {
            return true;
        }
        matches!(
            c.downcast_ref::<StoreError>(),
            Some(
                StoreError::Pg(_)
                    | StoreError::Connect { .. }
                    | StoreError::Db(_)
                    | StoreError::Open { .. }
                    | StoreError::Corrupt(_)
                    | StoreError::Watch(_)
            )
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    async fn run<T: Send + 'static>(
        pool: &Arc<Pool>,
        f: impl FnOnce(&mut dyn Store) -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let permit = pool.turn().await?;
        let p = pool.clone();
        tokio::task::spawn_blocking(move || {
            let mut lent = p.take(permit)?;
            let r = f(lent.store());
            p.give_back(lent, &r);
            r
        })
        .await?
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stores_are_reused_bounded_and_dropped_when_broken() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let dd = DataDir::open(tmp.path())?;
        let pool = Arc::new(Pool::new(dd, 3));
        // One after another: one store for all.
        for _ in 0..50 {
            run(&pool, |s| Ok(s.nodes()?.len())).await?;
        }
        assert_eq!(pool.opened(), 1);
        // A refusal keeps the store; a registry error drops it.
        let r = run(&pool, |s| Ok(s.node("nope")?)).await;
        assert!(r.is_err());
        assert_eq!(pool.opened(), 1);
        let r: anyhow::Result<()> =
            run(&pool, |_| Err(StoreError::Corrupt("lost".into()).into())).await;
        assert!(r.is_err());
        run(&pool, |s| Ok(s.nodes()?.len())).await?;
        assert_eq!(pool.opened(), 2);
        // Twenty at once: never more than three stores in use, nor open.
        let (busy, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (pool, busy, most) = (pool.clone(), busy.clone(), most.clone());
                tokio::spawn(async move {
                    run(&pool, move |s| {
                        let now = busy.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        let n = s.nodes()?.len();
                        busy.fetch_sub(1, Ordering::SeqCst);
                        Ok(n)
                    })
                    .await
                })
            })
            .collect();
        for t in tasks {
            t.await??;
        }
        assert!(most.load(Ordering::SeqCst) <= 3, "{most:?} at once");
        assert!(pool.opened() <= 2 + 3, "{} opened", pool.opened());
        Ok(())
    }
}
