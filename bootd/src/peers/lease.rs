//! Ownership leases and self-fencing.
//!
//! A server's ownership of its nodes lasts as long as its heartbeat: a peer
//! may claim a node only once the owner's heartbeat is older than
//! [`super::dead_after_ms`] on the registry's clock (`store::servers`'s
//! claim). The owner must therefore stop writing its nodes' overlays
//! *before* that: each heartbeat that reaches the registry extends the
//! lease to [`FENCE_AFTER`] past the moment the heartbeat was *sent* (the
//! registry stamps it later, so the registry's expiry is at least
//! `dead_after` past that moment), measured on `CLOCK_BOOTTIME` (monotonic,
//! and it runs on through a suspend and a SIGSTOP). The gap between
//! `FENCE_AFTER` and `dead_after` is the margin for clock-rate drift and
//! the time fencing itself takes.
//!
//! What enforces the lease:
//! * every I/O through a node's LUN checks it first ([`Fenced`]), so a
//!   process that resumes after a pause cannot write before its reconciler
//!   has noticed;
//! * the reconciler drops every node (sessions, overlays, without
//!   committing) once it has lapsed (`serve::targets`);
//! * the overlays' file locks are held by a separate process that lets go
//!   of them at the deadline by itself (`peers::keeper`), so a survivor can
//!   take the node while this process is still frozen.
//!
//! Not covered: a write already inside the kernel when the process froze
//! completes when it thaws. Only fencing by the storage (or the machine's
//! power) closes that window; see the README.

use async_trait::async_trait;
use blockdev::{BlockDevice, BlockError, Capabilities, Extent};
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long after a heartbeat was sent the owner may still write: well
/// under the 5 s after which peers may claim its nodes.
pub const FENCE_AFTER: Duration = Duration::from_millis(3500);

/// `CLOCK_BOOTTIME` in nanoseconds.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into `ts`, which lives through the call;
    // CLOCK_BOOTTIME exists on every Linux bootd runs on.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    (ts.tv_sec.max(0) as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec.max(0) as u64)
}

/// This server's ownership lease: until when (on [`now_ns`]) it may serve
/// the nodes it owns.
///
/// A lapsed lease is not renewed by the next heartbeat on its own: the
/// process may have been frozen across the lapse, with sessions that would
/// carry on writing. It must be fenced first ([`Lease::rearm`], once every
/// node is dropped); until then it stays lapsed.
#[derive(Debug)]
pub struct Lease {
    until_ns: AtomicU64,
    /// Set when a renewal found the lease lapsed; cleared by `rearm`.
    must_fence: AtomicBool,
}

impl Lease {
    /// A lease that never lapses: one server alone on its registry (SQLite
    /// in its data directory), where no peer can take a node.
    pub fn forever() -> Arc<Self> {
        Arc::new(Self {
            until_ns: AtomicU64::new(u64::MAX),
            must_fence: AtomicBool::new(false),
        })
    }

    /// A lease not held yet: nothing may be served until the first
    /// heartbeat reaches the registry.
    pub fn lapsed() -> Arc<Self> {
        Arc::new(Self {
            until_ns: AtomicU64::new(0),
            must_fence: AtomicBool::new(false),
        })
    }

    /// A heartbeat sent at `sent_ns` reached the registry: the lease runs to
    /// [`FENCE_AFTER`] past it (never backwards), unless it had lapsed
    /// (see [`Lease::rearm`]). Whether it was renewed.
    pub fn renewed(&self, sent_ns: u64) -> bool {
        let was = self.until_ns.load(Ordering::SeqCst);
        if was != 0 && now_ns() >= was {
            self.must_fence.store(true, Ordering::SeqCst);
        }
        if self.must_fence.load(Ordering::SeqCst) {
            return false;
        }
        let until = sent_ns.saturating_add(FENCE_AFTER.as_nanos() as u64);
        self.until_ns.fetch_max(until, Ordering::SeqCst);
        true
    }

    /// Every node has been dropped after a lapse: the next heartbeat may
    /// start a new lease.
    pub fn rearm(&self) {
        if self.until_ns.load(Ordering::SeqCst) != u64::MAX {
            self.until_ns.store(0, Ordering::SeqCst);
        }
        self.must_fence.store(false, Ordering::SeqCst);
    }

    /// Whether the lease holds now.
    pub fn valid(&self) -> bool {
        !self.must_fence.load(Ordering::SeqCst) && now_ns() < self.until_ns.load(Ordering::SeqCst)
    }

    /// Ends the lease at once (shutdown, drain): nothing more is written.
    pub fn end(&self) {
        self.must_fence.store(true, Ordering::SeqCst);
        self.until_ns.store(0, Ordering::SeqCst);
    }
}

/// How long a request refused by a lapsed lease is held before its error
/// is answered. The reconciler drops a fenced node's target within a tick
/// (a second), which ends its sessions: a held request is then answered
/// nowhere, and the initiator sends it again once it has logged in anew
/// (here, when the registry is back, or at the node's new owner) instead
/// of handing a write error to the node's file system. Nothing held is
/// ever carried out.
pub const HOLD_REFUSED: Duration = Duration::from_secs(5);

/// A node's disk behind the lease: every request is refused once the
/// lease has lapsed, before it touches the device.
pub struct Fenced {
    pub inner: Arc<dyn BlockDevice>,
    pub lease: Arc<Lease>,
    /// How long a refusal is held ([`HOLD_REFUSED`]).
    pub hold: Duration,
}

impl Fenced {
    async fn check(&self) -> Result<(), BlockError> {
        if self.lease.valid() {
            return Ok(());
        }
        tokio::time::sleep(self.hold).await;
        Err(BlockError::Io(std::io::Error::other(
            "ownership lease lapsed: this server has fenced itself off the node",
        )))
    }
}

#[async_trait]
impl BlockDevice for Fenced {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn read(&self, offset: u64, len: usize) -> Result<Bytes, BlockError> {
        // Reads too: another server may be changing the disk under us.
        self.check().await?;
        self.inner.read(offset, len).await
    }

    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), BlockError> {
        self.check().await?;
        self.inner.write(offset, data, fua).await
    }

    async fn flush(&self) -> Result<(), BlockError> {
        self.check().await?;
        self.inner.flush().await
    }

    async fn discard(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.check().await?;
        self.inner.discard(offset, len).await
    }

    async fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<(), BlockError> {
        self.check().await?;
        self.inner.write_zeroes(offset, len, unmap).await
    }

    async fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, BlockError> {
        self.check().await?;
        self.inner.block_status(offset, len).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_runs_from_the_heartbeat_sent_not_received() {
        let l = Lease::lapsed();
        assert!(!l.valid());
        let sent = now_ns();
        assert!(l.renewed(sent));
        let until = l.until_ns.load(Ordering::SeqCst);
        assert_eq!(until, sent + FENCE_AFTER.as_nanos() as u64);
        assert!(l.valid());
        // An older heartbeat answered late never shortens it.
        assert!(l.renewed(sent - 1_000_000_000));
        assert_eq!(l.until_ns.load(Ordering::SeqCst), until);
        // Lapsed (as after a pause): a heartbeat does not bring it back
        // until every node has been fenced.
        l.until_ns.store(now_ns() - 1, Ordering::SeqCst);
        assert!(!l.renewed(now_ns()));
        assert!(!l.valid());
        assert!(!l.renewed(now_ns()));
        l.rearm();
        assert!(!l.valid());
        assert!(l.renewed(now_ns()));
        assert!(l.valid());
        l.end();
        assert!(!l.valid());
        assert!(Lease::forever().valid());
        // Well inside the time after which peers may claim.
        assert!(FENCE_AFTER.as_millis() as i64 + 1000 <= super::super::dead_after_ms());
    }

    #[tokio::test]
    async fn a_lapsed_lease_stops_every_request_before_the_device() -> anyhow::Result<()> {
        let mem: Arc<dyn BlockDevice> = Arc::new(blockdev::MemDevice::new(512, 2048, false));
        let lease = Lease::lapsed();
        lease.renewed(now_ns());
        let d = Fenced {
            inner: mem.clone(),
            lease: lease.clone(),
            hold: Duration::ZERO,
        };
        d.write(0, Bytes::from(vec![7u8; 512]), false).await?;
        assert_eq!(d.read(0, 512).await?[0], 7);
        lease.end();
        assert!(d.write(0, Bytes::from(vec![9u8; 512]), true).await.is_err());
        assert!(d.flush().await.is_err());
        assert!(d.discard(0, 512).await.is_err());
        assert!(d.write_zeroes(0, 512, false).await.is_err());
        assert!(d.read(0, 512).await.is_err());
        assert!(d.block_status(0, 512).await.is_err());
        // The device never saw the refused write.
        assert_eq!(mem.read(0, 512).await?[0], 7);
        Ok(())
    }

    #[tokio::test]
    async fn a_refusal_is_held_long_enough_for_the_session_to_end_first() -> anyhow::Result<()> {
        let mem: Arc<dyn BlockDevice> = Arc::new(blockdev::MemDevice::new(512, 2048, false));
        let d = Fenced {
            inner: mem.clone(),
            lease: Lease::lapsed(),
            hold: Duration::from_millis(300),
        };
        let t = std::time::Instant::now();
        assert!(d.write(0, Bytes::from(vec![9u8; 512]), true).await.is_err());
        assert!(t.elapsed() >= Duration::from_millis(300));
        // Held, then refused: never carried out.
        assert_eq!(mem.read(0, 512).await?[0], 0);
        // Well above the reconciler's tick, which drops the target.
        assert!(HOLD_REFUSED >= 3 * crate::serve::TICK);
        Ok(())
    }
}
