//! Time (login timeout, NOP-In pings, idle limit) and the connection's end
//! (logout requests, closing).

use super::*;

impl Connection {
    /// A new Target Transfer Tag.
    pub(super) fn alloc_ttt(&mut self) -> u32 {
        next_tag(&mut self.next_ttt)
    }

    /// Ends the connection after what is queued has been sent (target cold
    /// reset, shutdown).
    pub fn close_after_flush(&mut self) {
        self.closing = true;
    }

    /// When [`Connection::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closing {
            return None;
        }
        match self.phase {
            Phase::Login => Some(self.login_deadline),
            Phase::FullFeature => {
                let idle = self.last_rx + self.config.idle_timeout;
                let ping = (!self.config.nop_interval.is_zero() && self.ping.is_none())
                    .then(|| self.last_rx + self.config.nop_interval);
                Some(ping.map_or(idle, |p| p.min(idle)))
            }
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), ConnError> {
        if self.closing {
            return Ok(());
        }
        match self.phase {
            Phase::Login if now >= self.login_deadline => Err(ConnError::Timeout(Deadline::Login)),
            Phase::Login => Ok(()),
            Phase::FullFeature => {
                if now >= self.last_rx + self.config.idle_timeout {
                    return Err(ConnError::Timeout(Deadline::Idle));
                }
                if !self.config.nop_interval.is_zero()
                    && self.ping.is_none()
                    && now >= self.last_rx + self.config.nop_interval
                {
                    let ttt = self.alloc_ttt();
                    let seq = self.seq(false);
                    self.send(&Response::NopIn {
                        lun: 0,
                        itt: RESERVED_TAG,
                        ttt,
                        seq,
                        data: Bytes::new(),
                    });
                    self.ping = Some((ttt, now));
                }
                Ok(())
            }
        }
    }

    /// Asks the initiator to log out (Async Message event 1) within `wait`
    /// seconds; used on orderly shutdown.
    pub fn request_logout(&mut self, wait: u16) {
        if self.phase != Phase::FullFeature || self.closing {
            return;
        }
        let seq = self.seq(true);
        self.send(&Response::Async {
            event: 1,
            param1: 0,
            param2: 0,
            param3: wait,
            seq,
        });
    }

    /// Ends the connection at once (its session was reinstated elsewhere, or
    /// the target shuts down): nothing more is sent.
    pub fn close(&mut self) {
        self.closing = true;
        self.tx.clear();
    }

    /// True once nothing more will be sent and the socket can be closed.
    pub fn is_closed(&self) -> bool {
        self.closing && self.tx.is_empty()
    }

    /// Commands handed out and not yet completed.
    pub fn tasks_in_flight(&self) -> usize {
        self.tasks.values().filter(|t| t.dispatched).count()
    }
}
