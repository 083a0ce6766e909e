//! Change notification for the PostgreSQL registry: LISTEN/NOTIFY. Every
//! write bumps the generation row, and a trigger on that row NOTIFYs
//! `bootd_registry` in the same transaction, so the notification is sent
//! exactly when the change commits, to every server listening, whichever
//! process (a server, the CLI) made it. The feed holds a connection of its
//! own that LISTENs; `wait` returns as soon as a notification arrives.

use super::connect;
use crate::store::url::PgTarget;
use crate::store::{ChangeFeed, Result};
use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;
use std::time::Duration;

/// The channel the schema's trigger notifies.
pub const CHANNEL: &str = "bootd_registry";

pub struct PgChanges {
    client: Option<Client>,
    target: PgTarget,
}

impl PgChanges {
    pub fn new(target: &PgTarget) -> Result<Self> {
        Ok(Self {
            client: Some(listen(target)?),
            target: target.clone(),
        })
    }
}

fn listen(target: &PgTarget) -> Result<Client> {
    let mut c = connect(target)?;
    c.batch_execute(&format!("LISTEN {CHANNEL}"))?;
    Ok(c)
}

impl ChangeFeed for PgChanges {
    fn wait(&mut self, timeout: Duration) -> bool {
        let Some(client) = self.client.as_mut().filter(|c| !c.is_closed()) else {
            // Lost (PostgreSQL restarted): listen again. Whatever changed
            // meanwhile went unheard, so report a possible change.
            std::thread::sleep(timeout);
            return match listen(&self.target) {
                Ok(c) => {
                    tracing::info!(registry = %self.target.shown, "listening for registry changes again");
                    self.client = Some(c);
                    true
                }
                Err(e) => {
                    tracing::debug!("registry change feed: {e}");
                    false
                }
            };
        };
        let got = {
            let mut n = client.notifications();
            let got = n.timeout_iter(timeout).next().map(|g| g.is_some());
            if let Ok(true) = got {
                // Several commits in a burst: one wake-up for all of them.
                while let Ok(Some(_)) = n.iter().next() {}
            }
            got
        };
        match got {
            Ok(woken) => woken,
            Err(e) => {
                tracing::warn!(registry = %self.target.shown, "registry change feed: {e}");
                self.client = None;
                true
            }
        }
    }
}
