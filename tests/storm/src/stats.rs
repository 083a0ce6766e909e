//! Per-phase latencies and errors, collected by every node and summed up
//! into the report.

use serde::Serialize;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    DhcpPxe,
    Tftp,
    DhcpIpxe,
    Http,
    IscsiLogin,
    Io,
    Logout,
    Release,
    /// One READ command (not a boot phase: its latency only).
    ReadCmd,
    /// One WRITE command.
    WriteCmd,
    /// One SYNCHRONIZE CACHE.
    FlushCmd,
}

impl Phase {
    /// The phases every node goes through, in order.
    pub const BOOT: [Phase; 8] = [
        Phase::DhcpPxe,
        Phase::Tftp,
        Phase::DhcpIpxe,
        Phase::Http,
        Phase::IscsiLogin,
        Phase::Io,
        Phase::Logout,
        Phase::Release,
    ];
    pub const COMMANDS: [Phase; 3] = [Phase::ReadCmd, Phase::WriteCmd, Phase::FlushCmd];

    pub fn name(self) -> &'static str {
        match self {
            Phase::DhcpPxe => "dhcp-pxe",
            Phase::Tftp => "tftp",
            Phase::DhcpIpxe => "dhcp-ipxe",
            Phase::Http => "http",
            Phase::IscsiLogin => "iscsi-login",
            Phase::Io => "io",
            Phase::Logout => "logout",
            Phase::Release => "dhcp-release",
            Phase::ReadCmd => "read-cmd",
            Phase::WriteCmd => "write-cmd",
            Phase::FlushCmd => "flush-cmd",
        }
    }
}

/// Distinct error messages kept per phase (with their counts).
const MAX_MESSAGES: usize = 10;

#[derive(Default)]
struct PhaseData {
    micros: Vec<u32>,
    errors: u64,
    failed: u64,
    messages: BTreeMap<String, u64>,
}

#[derive(Default)]
pub struct Stats {
    phases: Mutex<BTreeMap<Phase, PhaseData>>,
    totals: Mutex<Totals>,
    servers: Mutex<BTreeMap<Ipv4Addr, ServerCounts>>,
    takeover: Mutex<Takeover>,
}

/// What the kill of a server (`--kill-server`) cost the nodes: failures
/// talking to the dead server, each retried as real firmware or a real
/// initiator would (counted here, not as errors), and how long the nodes
/// whose session it held waited for their I/O.
#[derive(Default, Debug, Clone, Serialize)]
pub struct Takeover {
    /// Retries per phase (a DHCP retransmission, a phase started over, a
    /// re-login attempt).
    pub retries: BTreeMap<&'static str, u64>,
    /// Up to ten distinct retry texts with their counts.
    pub retry_samples: BTreeMap<String, u64>,
    /// Nodes that started their boot over from DHCP (the firmware's retry).
    pub boot_restarts: u64,
    /// Nodes whose iSCSI connection the kill dropped.
    pub sessions_dropped: u64,
    /// Of those, how long from the kill to their first command served
    /// again, in ms.
    pub resumed_ms: Vec<f64>,
    /// Re-logins after a drop that the server reached sent elsewhere.
    pub redirected_relogins: u64,
}

impl Takeover {
    pub fn retry(&mut self, phase: Phase, msg: String) {
        *self.retries.entry(phase.name()).or_default() += 1;
        // One text for every node: without the node's own address.
        let msg = match msg.find(" from 198.19.") {
            Some(at) => {
                let rest = &msg[at + 6..];
                let end = rest.find(|c: char| c != '.' && !c.is_ascii_digit());
                format!(
                    "{} from a node{}",
                    &msg[..at],
                    end.map_or("", |e| &rest[e..])
                )
            }
            None => msg,
        };
        if let Some(n) = self.retry_samples.get_mut(&msg) {
            *n += 1;
        } else if self.retry_samples.len() < MAX_MESSAGES {
            self.retry_samples.insert(msg, 1);
        }
    }
}

/// What one server did for the nodes, as the nodes saw it.
#[derive(Default, Debug, Clone, Copy, Serialize)]
pub struct ServerCounts {
    /// PXE leases it ACKed.
    pub dhcp_acks: u64,
    /// Node scripts fetched from it.
    pub scripts: u64,
    /// iSCSI sessions that ran on it (after any redirect).
    pub sessions: u64,
    /// Sessions of the killed server's nodes that came back on it (at the
    /// floating address it took over, or redirected to it).
    pub resumed: u64,
}

#[derive(Default, Clone, Copy, Serialize)]
pub struct Totals {
    pub nodes_done: u64,
    pub nodes_failed: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub tftp_bytes: u64,
    /// iSCSI login redirects followed.
    pub redirects: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    pub phase: &'static str,
    /// Successful completions.
    pub count: u64,
    /// Every error, including those a retry recovered from.
    pub errors: u64,
    /// Nodes that gave up in this phase.
    pub failed: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Up to ten distinct error texts with their counts.
    pub error_samples: BTreeMap<String, u64>,
}

impl Stats {
    fn with<R>(&self, phase: Phase, f: impl FnOnce(&mut PhaseData) -> R) -> R {
        let mut p = self.phases.lock().unwrap_or_else(|e| e.into_inner());
        f(p.entry(phase).or_default())
    }

    pub fn ok(&self, phase: Phase, took: Duration) {
        let us = u32::try_from(took.as_micros()).unwrap_or(u32::MAX);
        self.with(phase, |p| p.micros.push(us));
    }

    /// Many command latencies at once (one lock per node, not per command).
    pub fn ok_many(&self, phase: Phase, micros: &[u32]) {
        self.with(phase, |p| p.micros.extend_from_slice(micros));
    }

    fn note(p: &mut PhaseData, msg: String) {
        if let Some(n) = p.messages.get_mut(&msg) {
            *n += 1;
        } else if p.messages.len() < MAX_MESSAGES {
            p.messages.insert(msg, 1);
        }
    }

    /// An error the node recovered from (a retransmission, a retry).
    pub fn error(&self, phase: Phase, msg: String) {
        self.with(phase, |p| {
            p.errors += 1;
            Self::note(p, msg);
        });
    }

    /// The error the node gave up on.
    pub fn fail(&self, phase: Phase, msg: String) {
        self.with(phase, |p| {
            p.errors += 1;
            p.failed += 1;
            Self::note(p, msg);
        });
        self.totals(|t| t.nodes_failed += 1);
    }

    pub fn server<R>(&self, at: Ipv4Addr, f: impl FnOnce(&mut ServerCounts) -> R) -> R {
        let mut s = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        f(s.entry(at).or_default())
    }

    pub fn takeover<R>(&self, f: impl FnOnce(&mut Takeover) -> R) -> R {
        f(&mut self.takeover.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn totals<R>(&self, f: impl FnOnce(&mut Totals) -> R) -> R {
        f(&mut self.totals.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn report(&self, phases: &[Phase]) -> Vec<PhaseReport> {
        let mut all = self.phases.lock().unwrap_or_else(|e| e.into_inner());
        phases
            .iter()
            .map(|&ph| {
                let p = all.entry(ph).or_default();
                p.micros.sort_unstable();
                PhaseReport {
                    phase: ph.name(),
                    count: p.micros.len() as u64,
                    errors: p.errors,
                    failed: p.failed,
                    p50_ms: percentile(&p.micros, 50.0),
                    p99_ms: percentile(&p.micros, 99.0),
                    max_ms: p.micros.last().map_or(0.0, |&us| f64::from(us) / 1000.0),
                    error_samples: p.messages.clone(),
                }
            })
            .collect()
    }
}

/// Nearest-rank percentile of sorted microseconds, in milliseconds.
fn percentile(sorted: &[u32], pct: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    let i = rank.clamp(1, sorted.len()) - 1;
    f64::from(sorted[i]) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_counts() {
        let s = Stats::default();
        for ms in 1..=100u64 {
            s.ok(Phase::Http, Duration::from_millis(ms));
        }
        s.error(Phase::Http, "retry".into());
        s.fail(Phase::Http, "gave up".into());
        let r = &s.report(&[Phase::Http])[0];
        assert_eq!((r.count, r.errors, r.failed), (100, 2, 1));
        assert_eq!((r.p50_ms, r.p99_ms, r.max_ms), (50.0, 99.0, 100.0));
        assert_eq!(s.totals(|t| t.nodes_failed), 1);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }
}
