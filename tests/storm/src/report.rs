//! The storm's result: one JSON object, or a table for people.

use crate::stats::{PhaseReport, ServerCounts};
use serde::Serialize;
use std::fmt::Write as _;

#[derive(Debug, Clone, Serialize)]
pub struct TraceInfo {
    /// `synthetic` or the trace file.
    pub source: String,
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub distinct_read_bytes: u64,
    pub passes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerInfo {
    /// `--server-id`.
    pub id: String,
    pub address: String,
    pub pid: u32,
    /// Nodes bootd's placement gave it before the storm.
    pub nodes_placed: u64,
    /// What it did for the nodes, as they saw it.
    pub counts: ServerCounts,
    /// VmHWM of bootd at the end of the storm (setup included).
    pub peak_rss_bytes: u64,
    /// VmHWM when the storm began: every node registered and served, none booted.
    pub peak_rss_before_bytes: u64,
    /// bootd's utime + stime over the storm alone.
    pub cpu_secs: f64,
    /// bootd's utime + stime since it started.
    pub cpu_secs_total: f64,
    /// Its floating portal address (`--floating`).
    pub floating_ip: Option<String>,
    /// The storm SIGKILLed it (its memory and CPU figures are from the
    /// storm's start).
    pub killed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub nodes: usize,
    pub concurrency: usize,
    pub completed: u64,
    pub failed: u64,
    /// Nodes the time limit cut off (or that never started).
    pub unfinished: u64,
    pub time_limit_hit: bool,
    /// Every error counted, recovered or not.
    pub errors: u64,
    pub setup_secs: f64,
    pub wall_secs: f64,
    /// Per node.
    pub trace: TraceInfo,
    pub phases: Vec<PhaseReport>,
    /// Per-command latencies during the io phase.
    pub commands: Vec<PhaseReport>,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub tftp_bytes: u64,
    pub read_mib_per_sec: f64,
    /// `sqlite` or `postgres`.
    pub registry: String,
    pub servers: Vec<ServerInfo>,
    /// iSCSI login redirects the nodes followed.
    pub redirects: u64,
    /// The storm process's own CPU time over the storm.
    pub storm_cpu_secs: f64,
    pub dhcp_pool: String,
    pub dhcp_pool_size: usize,
    /// Server 1's log (the others' beside it, `.sK`).
    pub bootd_log: String,
    /// `--kill-server`: what the kill cost.
    pub takeover: Option<crate::takeover::TakeoverReport>,
}

const MIB: f64 = 1024.0 * 1024.0;

fn row(out: &mut String, p: &PhaseReport) {
    let _ = writeln!(
        out,
        "  {:<13} {:>7} {:>7} {:>7} {:>10.1} {:>10.1} {:>10.1}",
        p.phase, p.count, p.errors, p.failed, p.p50_ms, p.p99_ms, p.max_ms
    );
}

impl Report {
    pub fn ok(&self) -> bool {
        self.errors == 0 && self.failed == 0 && self.unfinished == 0
    }

    pub fn text(&self) -> String {
        let mut o = String::new();
        let t = &self.trace;
        let _ = writeln!(
            o,
            "bootd-storm: {} nodes, {} at a time; trace {} per node: {} reads ({:.1} MiB, {:.1} MiB distinct), {} writes ({:.1} MiB), {} flushes",
            self.nodes,
            self.concurrency,
            t.source,
            t.reads,
            t.read_bytes as f64 / MIB,
            t.distinct_read_bytes as f64 / MIB,
            t.writes,
            t.write_bytes as f64 / MIB,
            t.flushes
        );
        let _ = writeln!(
            o,
            "  {:<13} {:>7} {:>7} {:>7} {:>10} {:>10} {:>10}",
            "phase", "count", "errors", "failed", "p50 ms", "p99 ms", "max ms"
        );
        for p in &self.phases {
            row(&mut o, p);
        }
        for p in &self.commands {
            row(&mut o, p);
        }
        let _ = writeln!(
            o,
            "nodes: {} completed, {} failed, {} unfinished{}; {} errors in all",
            self.completed,
            self.failed,
            self.unfinished,
            if self.time_limit_hit {
                " (time limit hit)"
            } else {
                ""
            },
            self.errors
        );
        let _ = writeln!(
            o,
            "wall time: {:.1} s (setup {:.1} s before it)",
            self.wall_secs, self.setup_secs
        );
        let _ = writeln!(
            o,
            "data: {:.2} GiB read ({:.0} MiB/s), {:.1} MiB written, {:.1} MiB over TFTP",
            self.bytes_read as f64 / MIB / 1024.0,
            self.read_mib_per_sec,
            self.bytes_written as f64 / MIB,
            self.tftp_bytes as f64 / MIB
        );
        let _ = writeln!(
            o,
            "{} server(s), registry {}; {} login redirects followed; storm client CPU {:.1} s",
            self.servers.len(),
            self.registry,
            self.redirects,
            self.storm_cpu_secs
        );
        let _ = writeln!(
            o,
            "  {:<6} {:<12} {:>7} {:>7} {:>7} {:>8} {:>7} {:>10} {:>10} {:>9}",
            "server",
            "address",
            "placed",
            "leases",
            "scripts",
            "sessions",
            "resumed",
            "peak MiB",
            "before MiB",
            "CPU s"
        );
        for s in &self.servers {
            let _ = writeln!(
                o,
                "  {:<6} {:<12} {:>7} {:>7} {:>7} {:>8} {:>7} {:>10.1} {:>10.1} {:>9.1}{}",
                s.id,
                s.address,
                s.nodes_placed,
                s.counts.dhcp_acks,
                s.counts.scripts,
                s.counts.sessions,
                s.counts.resumed,
                s.peak_rss_bytes as f64 / MIB,
                s.peak_rss_before_bytes as f64 / MIB,
                s.cpu_secs,
                match (&s.floating_ip, s.killed) {
                    (Some(f), true) => format!("  floating {f}, KILLED"),
                    (Some(f), false) => format!("  floating {f}"),
                    (None, true) => "  KILLED".to_string(),
                    (None, false) => String::new(),
                }
            );
        }
        if let Some(t) = &self.takeover {
            let _ = writeln!(
                o,
                "kill: {} ({}, floating {}) SIGKILLed {:.1} s into the storm after {} logins; its address on {} {} ms later",
                t.killed_server,
                t.killed_address,
                t.floating_ip,
                t.kill_at_secs,
                t.logins_before_kill,
                t.address_moved_to.as_deref().unwrap_or("no survivor"),
                t.address_moved_after_ms.map_or("-".to_string(), |m| format!("{m:.0}"))
            );
            let _ = writeln!(
                o,
                "  {} sessions dropped, {} served again: kill to first I/O served p50 {:.0} ms, max {:.0} ms",
                t.sessions_dropped, t.resumed, t.resume_p50_ms, t.resume_max_ms
            );
            let _ = writeln!(
                o,
                "  {} retries (not errors) {:?}; {} boots started over; {} logins redirected by the address's new holder",
                t.retries, t.retries_by_phase, t.boot_restarts, t.redirected_relogins
            );
            for (msg, n) in &t.retry_samples {
                let _ = writeln!(o, "  retried: {msg} (x{n})");
            }
        }
        let _ = writeln!(
            o,
            "DHCP pool: {} ({} addresses, one per node and some spare); every node's traffic from its leased address",
            self.dhcp_pool, self.dhcp_pool_size
        );
        for p in self.phases.iter().chain(&self.commands) {
            for (msg, n) in &p.error_samples {
                let _ = writeln!(o, "error in {}: {msg} (x{n})", p.phase);
            }
        }
        let _ = writeln!(o, "bootd log: {}", self.bootd_log);
        o
    }
}
