//! The writing half of a connection: replies go to a task of their own so a
//! slow reader on the other side never stops us from taking in its commands,
//! and every byte queued and not yet written is counted, per connection and
//! for the server, so the connection can stop reading while too much waits.

use crate::server::Server;
use bytes::BytesMut;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

/// How long what is queued may take to leave once the connection ends (a
/// login failure or logout response still reaches a reading initiator; one
/// that never reads does not keep the task).
const LINGER: Duration = Duration::from_secs(5);

pub(crate) struct Outbox {
    tx: mpsc::UnboundedSender<BytesMut>,
    unsent: Arc<AtomicUsize>,
    drained: Arc<Notify>,
    server: Arc<Server>,
    task: JoinHandle<()>,
}

impl Outbox {
    pub(crate) fn spawn(mut wr: OwnedWriteHalf, server: Arc<Server>) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<BytesMut>();
        let unsent = Arc::new(AtomicUsize::new(0));
        let drained = Arc::new(Notify::new());
        let task = {
            let (unsent, drained, server) = (unsent.clone(), drained.clone(), server.clone());
            tokio::spawn(async move {
                while let Some(buf) = rx.recv().await {
                    if wr.write_all(&buf).await.is_err() {
                        break;
                    }
                    unsent.fetch_sub(buf.len(), Ordering::AcqRel);
                    server.unsent_total.fetch_sub(buf.len(), Ordering::AcqRel);
                    drained.notify_one();
                }
                let _ = wr.shutdown().await;
            })
        };
        Self {
            tx,
            unsent,
            drained,
            server,
            task,
        }
    }

    pub(crate) fn send(&self, buf: BytesMut) {
        let n = buf.len();
        self.unsent.fetch_add(n, Ordering::AcqRel);
        self.server.unsent_total.fetch_add(n, Ordering::AcqRel);
        if self.tx.send(buf).is_err() {
            // The writer is gone (socket error): nothing will leave.
            self.unsent.fetch_sub(n, Ordering::AcqRel);
            self.server.unsent_total.fetch_sub(n, Ordering::AcqRel);
        }
    }

    pub(crate) fn unsent(&self) -> usize {
        self.unsent.load(Ordering::Acquire)
    }

    /// The backlog this connection may have now: its own cap, or nothing
    /// beyond what is in flight while all connections together are over the
    /// server's total.
    pub(crate) fn cap(&self) -> usize {
        let total = self.server.unsent_total.load(Ordering::Acquire);
        if total > self.server.config.max_backlog_total {
            0
        } else {
            usize::MAX
        }
    }

    /// Resolves after the writer has written something.
    pub(crate) async fn drained(&self) {
        self.drained.notified().await
    }

    /// Lets what is queued go out for a bounded time, then ends the writer
    /// and takes its unsent bytes off the server's count.
    pub(crate) async fn finish(self) {
        let Self {
            tx,
            unsent,
            server,
            mut task,
            ..
        } = self;
        drop(tx);
        if tokio::time::timeout(LINGER, &mut task).await.is_err() {
            task.abort();
            let _ = task.await;
        }
        let left = unsent.swap(0, Ordering::AcqRel);
        server.unsent_total.fetch_sub(left, Ordering::AcqRel);
    }
}
