//! The shape every server in `serve` (and `export`) shares: a driver is
//! `run(socket(s), context, shutdown)`, runs in one JoinSet, and returns
//! when [`Shutdown`] fires. One signal handler starts the one graceful
//! shutdown.

use anyhow::{Context, Result};
use tokio::sync::watch;

/// Fires once for every holder; cheap to clone.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// The one place that starts a shutdown.
pub struct Trigger(watch::Sender<bool>);

pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    pub fn fire(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// Resolves once the shutdown has started (at once if it already has,
    /// or if the trigger is gone).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    pub fn started(&self) -> bool {
        *self.0.borrow()
    }
}

/// Resolves at the first SIGINT or SIGTERM. The handlers are installed when
/// this is called, not when it is first polled.
pub fn signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_holder_sees_the_one_shutdown() {
        let (trigger, a) = channel();
        let mut b = a.clone();
        assert!(!a.started());
        let waiter = tokio::spawn(async move { b.wait().await });
        trigger.fire();
        assert!(waiter.await.is_ok());
        assert!(a.started());
        // Late holders see it at once.
        let mut c = a.clone();
        c.wait().await;
    }
}
