//! A grace-period barrier: requests enter before they plan I/O on overlay
//! clusters and leave when that I/O is done; [`Gate::barrier`] waits for
//! every request that entered before it was called, while new requests go
//! on. Costs a few atomic operations per request (a tokio `RwLock` would
//! take its waiter mutex on every release).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct Gate {
    epoch: AtomicU64,
    /// Requests inside, per epoch parity.
    active: [AtomicUsize; 2],
    drained: Notify,
}

/// Proof of being inside the gate; leaving is dropping it.
#[derive(Debug)]
pub struct Pass<'a> {
    gate: &'a Gate,
    slot: usize,
}

impl Gate {
    pub fn enter(&self) -> Pass<'_> {
        loop {
            let e = self.epoch.load(SeqCst);
            let slot = (e & 1) as usize;
            self.active[slot].fetch_add(1, SeqCst);
            // If a barrier flipped the epoch meanwhile it may already have
            // seen this slot empty: count in the new slot instead.
            if self.epoch.load(SeqCst) == e {
                return Pass { gate: self, slot };
            }
            drop(Pass { gate: self, slot });
        }
    }

    /// Waits until every request that entered before this call has left.
    /// Callers must not hold a [`Pass`], and barriers must not overlap.
    pub async fn barrier(&self) {
        let slot = (self.epoch.fetch_add(1, SeqCst) & 1) as usize;
        loop {
            let drained = self.drained.notified();
            if self.active[slot].load(SeqCst) == 0 {
                return;
            }
            drained.await;
        }
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        if self.gate.active[self.slot].fetch_sub(1, SeqCst) == 1 {
            self.gate.drained.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn barrier_waits_for_earlier_passes_only() {
        let gate = Arc::new(Gate::default());
        let early = gate.enter();
        let g = Arc::clone(&gate);
        let barrier = tokio::spawn(async move { g.barrier().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        // A pass taken after the barrier started does not hold it up...
        let late = gate.enter();
        assert!(!barrier.is_finished());
        // ...the early one does.
        drop(early);
        tokio::time::timeout(Duration::from_secs(5), barrier)
            .await
            .expect("barrier finished")
            .expect("task");
        drop(late);
        tokio::time::timeout(Duration::from_secs(5), gate.barrier())
            .await
            .expect("empty gate");
    }
}
