//! Draining a server: it hands every node to its peers, sessions and all
//! (`bootd server drain NAME`, `serve --drain` on SIGTERM). The flag is a
//! column of the server's row; every server reads it with the heartbeats
//! (at most a period late): the drained server leaves itself out of the
//! servers nodes are spread over, drops each node's target (its sessions
//! end), commits and releases it, and redirects the initiator's next login
//! to the new owner, which claims the node as soon as it is released.

use crate::store::Store;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("server {0:?} is not registered")]
    NoServer(String),
    #[error("server {id:?} still owns {left} node(s) after {waited:?}")]
    Slow {
        id: String,
        left: u64,
        waited: Duration,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Marks `id` draining and waits (at most `limit`) until it owns no node;
/// how long that took and how many nodes it had.
pub fn drain(
    store: &mut dyn Store,
    id: &str,
    limit: Duration,
) -> Result<(Duration, u64), DrainError> {
    let owned = |store: &dyn Store| -> Result<u64, DrainError> {
        store
            .servers()?
            .into_iter()
            .find(|s| s.id == id)
            .map(|s| s.nodes_owned)
            .ok_or_else(|| DrainError::NoServer(id.to_string()))
    };
    let had = owned(store)?;
    if !store.set_draining(id, true)? {
        return Err(DrainError::NoServer(id.to_string()));
    }
    let t = Instant::now();
    loop {
        let left = owned(store)?;
        if left == 0 {
            return Ok((t.elapsed(), had));
        }
        if t.elapsed() > limit {
            return Err(DrainError::Slow {
                id: id.to_string(),
                left,
                waited: t.elapsed(),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
