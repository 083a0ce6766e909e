//! Flow control towards the initiator: how many reply bytes a connection
//! may owe before it stops taking PDUs and holds its CmdSN window shut, and
//! the bounded holding of commands that arrive ahead of ExpCmdSN.

use super::*;

/// Bytes of PDUs held ahead of ExpCmdSN (an initiator on one connection
/// never needs this; it covers immediate reordering only).
const AHEAD_BYTES: usize = 1 << 20;

impl Connection {
    /// Reply bytes the connection owes the initiator: encoded and not yet
    /// taken by the driver, handed to the driver and unsent, and Data-In of
    /// reads still running.
    pub fn backlog(&self) -> usize {
        let owed = usize::try_from(self.read_owed).unwrap_or(usize::MAX);
        self.tx
            .len()
            .saturating_add(self.unsent)
            .saturating_add(owed)
    }

    fn cap(&self) -> usize {
        self.config.max_backlog.min(self.backlog_cap)
    }

    pub(super) fn over_backlog(&self) -> bool {
        self.backlog() > self.cap()
    }

    /// Whether the driver should read from the socket and feed input: false
    /// while the backlog is over the cap.
    pub fn wants_input(&self) -> bool {
        self.closing || !self.over_backlog()
    }

    /// Whether the driver should tell the connection when bytes leave (by
    /// calling [`Connection::set_unsent`]): input or the window is held.
    pub fn waits_for_drain(&self) -> bool {
        !self.closing && (self.over_backlog() || self.window_held)
    }

    /// The driver reports what it has not yet written to the socket, and
    /// the cap it wants (lower than `max_backlog` while every connection
    /// together is over the server's total; `usize::MAX` otherwise).
    pub fn set_unsent(&mut self, unsent: usize, cap: usize) {
        self.unsent = unsent;
        self.backlog_cap = cap;
        self.reopen_window();
    }

    /// A reply went out with the window held shut and the backlog has since
    /// drained: a NOP-In (no answer wanted) carries the new MaxCmdSN, or an
    /// initiator waiting for window would wait forever.
    pub(super) fn reopen_window(&mut self) {
        if !self.window_held
            || self.closing
            || self.phase != Phase::FullFeature
            || self.over_backlog()
        {
            return;
        }
        let before = self.max_cmd_sn;
        let seq = self.seq(false);
        if seq.max_cmd_sn == before {
            return;
        }
        self.send(&Response::NopIn {
            lun: 0,
            itt: RESERVED_TAG,
            ttt: RESERVED_TAG,
            seq,
            data: Bytes::new(),
        });
    }

    pub(super) fn may_hold_ahead(&self, raw: &RawPdu) -> bool {
        let discovery = self
            .session
            .as_ref()
            .is_none_or(|s| s.session_type == SessionType::Discovery);
        if discovery || self.ahead.len() >= self.config.cmd_window as usize {
            return false;
        }
        let held: usize = self
            .ahead
            .values()
            .map(|(r, _)| pdu::BHS_LEN + r.data.len())
            .sum();
        held + pdu::BHS_LEN + raw.data.len() <= AHEAD_BYTES
    }
}
