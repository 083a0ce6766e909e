//! When a write becomes durable, and the group commit that keeps the cost
//! of "durable before acknowledged" low.
//!
//! By default a write is durable at the next FLUSH or FUA (and survives a
//! crash of the process through the write-ahead log, which another machine
//! does not replay). With [`SyncWrites::Always`] every write, zeroing and
//! discard is committed (data and tables `fdatasync`ed) before it completes,
//! so a whole machine may die and another one that opens the file from
//! shared storage finds every completed write.
//!
//! Group commit: commits run one at a time under the commit lock. A request
//! that needs one notes how many commits had *started* when its own I/O was
//! done; any commit that starts after that covers it. While one commit runs,
//! every request that finishes queues on the lock; the first to get it
//! commits for all of them and the others find themselves covered and
//! return without a sync of their own. So N concurrent writers pay about
//! one commit per round, not N.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// When a completed write must be durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncWrites {
    /// At the next FLUSH or FUA (a volatile write cache).
    #[default]
    Flush,
    /// Before the write completes, sharing commits among concurrent
    /// requests (group commit).
    Always,
    /// Before the write completes, one commit per request and no sharing:
    /// the naive way, kept to measure what group commit saves.
    Each,
}

impl SyncWrites {
    fn code(self) -> u8 {
        match self {
            Self::Flush => 0,
            Self::Always => 1,
            Self::Each => 2,
        }
    }

    fn from_code(c: u8) -> Self {
        match c {
            1 => Self::Always,
            2 => Self::Each,
            _ => Self::Flush,
        }
    }
}

/// The mode and the commit counters of one overlay.
#[derive(Debug, Default)]
pub struct Group {
    mode: AtomicU8,
    /// Commits started (their sequence numbers are 1, 2, ...).
    started: AtomicU64,
    /// The sequence number of the last commit whose tables are durable.
    done: AtomicU64,
}

impl Group {
    pub fn mode(&self) -> SyncWrites {
        SyncWrites::from_code(self.mode.load(Ordering::Relaxed))
    }

    pub fn set_mode(&self, m: SyncWrites) {
        self.mode.store(m.code(), Ordering::Relaxed);
    }

    /// Call once the request's own I/O is done (its data written, its table
    /// changes in memory): the first commit sequence number that covers it.
    pub fn ticket(&self) -> u64 {
        self.started.load(Ordering::SeqCst) + 1
    }

    /// Under the commit lock: whether a commit with a number of at least
    /// `ticket` has made its tables durable.
    pub fn covered(&self, ticket: u64) -> bool {
        self.done.load(Ordering::SeqCst) >= ticket
    }

    /// Under the commit lock, before the commit takes the dirty set: its
    /// sequence number.
    pub fn start(&self) -> u64 {
        self.started.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// The commit numbered `seq` made everything before it durable.
    pub fn finish(&self, seq: u64) {
        self.done.fetch_max(seq, Ordering::SeqCst);
    }

    /// Commits started so far (each is one or two `fdatasync`s).
    pub fn commits(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_is_covered_only_by_a_commit_started_after_it() {
        let g = Group::default();
        let seq = g.start();
        // Taken while commit 1 runs: commit 1 may have planned before it.
        let t = g.ticket();
        g.finish(seq);
        assert!(!g.covered(t));
        let seq2 = g.start();
        g.finish(seq2);
        assert!(g.covered(t));
    }

    #[test]
    fn modes_round_trip() {
        let g = Group::default();
        assert_eq!(g.mode(), SyncWrites::Flush);
        for m in [SyncWrites::Always, SyncWrites::Each, SyncWrites::Flush] {
            g.set_mode(m);
            assert_eq!(g.mode(), m);
        }
    }
}
