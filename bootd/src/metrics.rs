//! Counters for `GET /metrics` (Prometheus text format 0.0.4): a subscriber
//! to serve's boot events, updated with relaxed atomics in the emitting
//! thread, cheap enough to leave on during a boot storm. Per-node series are
//! keyed by the node's target and created on its first command.

use crate::events::{DhcpKind, Event, Subscriber};
use iscsi_proto::scsi::cdb::{block_io, BlockIo};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The exposition's media type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds of the command latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
];

#[derive(Default)]
pub struct Histogram {
    /// Counts per bucket (not cumulative), then the overflow.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_ns
            .fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cum = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in BUCKETS.iter().enumerate() {
            cum += self.counts[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cum}");
        }
        cum += self.counts[BUCKETS.len()].load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cum}");
        let sum = self.sum_ns.load(Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cum}");
    }
}

/// One node's iSCSI traffic.
#[derive(Default)]
pub struct NodeIo {
    reads: AtomicU64,
    writes: AtomicU64,
    other: AtomicU64,
    read_bytes: AtomicU64,
    write_bytes: AtomicU64,
    errors: AtomicU64,
}

#[derive(Default)]
pub struct Metrics {
    /// By mode (0 proxy, 1 full) and kind (offer, ack, nak).
    dhcp: [[AtomicU64; 3]; 2],
    dhcp_requests: AtomicU64,
    tftp_transfers: AtomicU64,
    tftp_failed: AtomicU64,
    tftp_bytes: AtomicU64,
    scripts: AtomicU64,
    /// Script fetches refused: not the node's address, no valid token.
    scripts_refused: AtomicU64,
    /// HTTP connections closed at once: over their source's share, or
    /// every slot busy answering.
    http_refused: AtomicU64,
    /// TFTP requests refused: over their source's share, or no slot.
    tftp_refused: AtomicU64,
    binaries: AtomicU64,
    /// NoCloud user-data served, and seed requests refused.
    metadata: AtomicU64,
    metadata_refused: AtomicU64,
    iscsi_logins: AtomicU64,
    iscsi_ends: AtomicU64,
    read_latency: Histogram,
    write_latency: Histogram,
    /// Free bytes on the overlays' filesystem.
    data_free_bytes: AtomicU64,
    /// 1 while free space is below serve's warning watermark.
    data_low_space: AtomicU64,
    /// Overlays failed by a write-back error.
    overlays_failed: AtomicU64,
    nodes: RwLock<HashMap<String, Arc<NodeIo>>>,
}

impl Subscriber for Metrics {
    fn on(&self, event: &Event<'_>) {
        let add = |c: &AtomicU64, n: u64| {
            c.fetch_add(n, Relaxed);
        };
        match event {
            Event::DhcpRequest => add(&self.dhcp_requests, 1),
            Event::DhcpReply { full, kind, .. } => self.dhcp_sent(*full, *kind),
            Event::TftpRefused => add(&self.tftp_refused, 1),
            Event::TftpSent { bytes, .. } => {
                add(&self.tftp_transfers, 1);
                add(&self.tftp_bytes, *bytes);
            }
            Event::TftpFailed => add(&self.tftp_failed, 1),
            Event::HttpRefused => add(&self.http_refused, 1),
            Event::BinaryServed => add(&self.binaries, 1),
            Event::ScriptRefused => add(&self.scripts_refused, 1),
            Event::MetadataServed { .. } => add(&self.metadata, 1),
            Event::MetadataRefused => add(&self.metadata_refused, 1),
            Event::ScriptServed { .. } => add(&self.scripts, 1),
            Event::IscsiLogin { .. } => add(&self.iscsi_logins, 1),
            Event::IscsiEnded { .. } => add(&self.iscsi_ends, 1),
            Event::Command(c) => {
                let node = self.node(c.target);
                match block_io(c.cdb) {
                    Some(BlockIo::Read { .. }) => {
                        add(&node.reads, 1);
                        self.read_latency.observe(c.elapsed);
                    }
                    Some(BlockIo::Write { .. }) => {
                        add(&node.writes, 1);
                        self.write_latency.observe(c.elapsed);
                    }
                    _ => add(&node.other, 1),
                }
                add(&node.read_bytes, c.data_in);
                add(&node.write_bytes, c.data_out);
                if !c.good {
                    add(&node.errors, 1);
                }
            }
            Event::Space { free, low } => {
                self.data_free_bytes.store(*free, Relaxed);
                self.data_low_space.store(u64::from(*low), Relaxed);
            }
            Event::OverlaysFailed(n) => self.overlays_failed.store(*n, Relaxed),
        }
    }
}

impl Metrics {
    /// Bytes every target has read and written since serve started.
    pub fn bytes_served(&self) -> u64 {
        let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
        nodes
            .values()
            .map(|n| n.read_bytes.load(Relaxed) + n.write_bytes.load(Relaxed))
            .sum()
    }

    fn dhcp_sent(&self, full: bool, kind: DhcpKind) {
        self.dhcp[usize::from(full)][kind as usize].fetch_add(1, Relaxed);
    }

    /// The counters of the node behind `target`.
    fn node(&self, target: &str) -> Arc<NodeIo> {
        if let Some(n) = self
            .nodes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(target)
        {
            return n.clone();
        }
        self.nodes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(target.to_string())
            .or_default()
            .clone()
    }

    /// The text exposition; `overlays` gives each node's (name, overlay
    /// bytes on disk), read by the caller from the registry.
    pub fn render(&self, overlays: &[(String, u64)]) -> String {
        let mut o = String::with_capacity(4096);
        let c = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        let _ = writeln!(
            o,
            "# HELP bootd_dhcp_replies_total DHCP replies sent, by mode and message type.\n# TYPE bootd_dhcp_replies_total counter"
        );
        for (m, mode) in ["proxy", "full"].iter().enumerate() {
            for (k, kind) in ["offer", "ack", "nak"].iter().enumerate() {
                let v = self.dhcp[m][k].load(Relaxed);
                let _ = writeln!(
                    o,
                    "bootd_dhcp_replies_total{{mode=\"{mode}\",type=\"{kind}\"}} {v}"
                );
            }
        }
        c(
            &mut o,
            "bootd_dhcp_requests_total",
            "DHCP requests decoded.",
            self.dhcp_requests.load(Relaxed),
        );
        c(
            &mut o,
            "bootd_tftp_transfers_total",
            "TFTP transfers completed.",
            self.tftp_transfers.load(Relaxed),
        );
        c(
            &mut o,
            "bootd_tftp_failed_total",
            "TFTP transfers that ended without completing.",
            self.tftp_failed.load(Relaxed),
        );
        c(
            &mut o,
            "bootd_tftp_bytes_total",
            "Bytes of completed TFTP transfers.",
            self.tftp_bytes.load(Relaxed),
        );
        c(
            &mut o,
            "bootd_http_scripts_total",
            "Node iPXE scripts served.",
            self.scripts.load(Relaxed),
        );
        c(
            &mut o,
            "bootd_http_scripts_refused_total",
            "Node script fetches refused (not the node's address, no valid token).",
            self.scripts_refused.load(Relaxed),
        );
        c(
            &mut o,
            "bootd_http_connections_refused_total",
            "HTTP connections closed unanswered (source over its share, or all slots busy).",
            self.http_refused.load(Relaxed),
        );
        c(
            &mut o,
            "bootd_tftp_refused_total",
            "TFTP requests refused (source over its share, or all slots busy).",
            self.tftp_refused.load(Relaxed),
        );
        c(
            &mut o,
            "bootd_nocloud_user_data_total",
            "cloud-init user-data served to nodes.",
            self.metadata.load(Relaxed),
        );
        c(
            &mut o,
            "bootd_nocloud_refused_total",
            "NoCloud seed requests from an address no node boots from.",
            self.metadata_refused.load(Relaxed),
        );
        c(
            &mut o,
            "bootd_http_binaries_total",
            "iPXE binaries served over HTTP.",
            self.binaries.load(Relaxed),
        );
        c(
            &mut o,
            "bootd_iscsi_logins_total",
            "iSCSI normal-session logins.",
            self.iscsi_logins.load(Relaxed),
        );
        let live = self
            .iscsi_logins
            .load(Relaxed)
            .saturating_sub(self.iscsi_ends.load(Relaxed));
        let _ = writeln!(
            o,
            "# HELP bootd_iscsi_sessions iSCSI normal sessions open.\n# TYPE bootd_iscsi_sessions gauge\nbootd_iscsi_sessions {live}"
        );
        for (name, help, v) in [
            (
                "bootd_data_free_bytes",
                "Free bytes on the overlays' filesystem.",
                &self.data_free_bytes,
            ),
            (
                "bootd_data_low_space",
                "1 while free space is below serve's --warn-free watermark.",
                &self.data_low_space,
            ),
            (
                "bootd_overlays_failed",
                "Overlays refusing I/O after a write-back error (until serve restarts).",
                &self.overlays_failed,
            ),
        ] {
            let v = v.load(Relaxed);
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let _ = writeln!(o, "# HELP bootd_iscsi_command_seconds SCSI read and write latency on the target.\n# TYPE bootd_iscsi_command_seconds histogram");
        self.read_latency
            .render(&mut o, "bootd_iscsi_command_seconds", "op=\"read\"");
        self.write_latency
            .render(&mut o, "bootd_iscsi_command_seconds", "op=\"write\"");
        let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
        let mut keys: Vec<&String> = nodes.keys().collect();
        keys.sort();
        for (metric, help, get) in [
            (
                "bootd_node_commands_total{op=\"read\",",
                "SCSI commands by node.",
                0,
            ),
            ("bootd_node_commands_total{op=\"write\",", "", 1),
            ("bootd_node_commands_total{op=\"other\",", "", 2),
            (
                "bootd_node_bytes_total{dir=\"read\",",
                "iSCSI data bytes by node.",
                3,
            ),
            ("bootd_node_bytes_total{dir=\"write\",", "", 4),
            (
                "bootd_node_command_errors_total{",
                "Commands that did not end GOOD, by node.",
                5,
            ),
        ] {
            let family = &metric[..metric.find('{').unwrap_or(metric.len())];
            if !help.is_empty() {
                let _ = writeln!(o, "# HELP {family} {help}\n# TYPE {family} counter");
            }
            for k in &keys {
                let n = &nodes[*k];
                let v = [
                    &n.reads,
                    &n.writes,
                    &n.other,
                    &n.read_bytes,
                    &n.write_bytes,
                    &n.errors,
                ][get]
                    .load(Relaxed);
                let _ = writeln!(o, "{metric}node=\"{}\"}} {v}", node_label(k));
            }
        }
        let _ = writeln!(
            o,
            "# HELP bootd_overlay_bytes Bytes each node's overlay takes on disk.\n# TYPE bootd_overlay_bytes gauge"
        );
        for (name, bytes) in overlays {
            let _ = writeln!(
                o,
                "bootd_overlay_bytes{{node=\"{}\"}} {bytes}",
                escape(name)
            );
        }
        o
    }
}

/// Targets are `...:node.NAME`; the node's name is the label.
fn node_label(target: &str) -> String {
    escape(target.rsplit_once(":node.").map_or(target, |(_, n)| n))
}

/// Label values escape backslash, quote and newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_counters_histograms_and_nodes() {
        let m = Metrics::default();
        m.on(&Event::DhcpReply {
            full: true,
            kind: DhcpKind::Ack,
            boot: None,
        });
        // READ(10) of 8 blocks; WRITE(10) counts apart.
        let read = [0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0];
        for (i, elapsed) in [
            Duration::from_micros(300),
            Duration::from_secs(1),
            Duration::from_micros(20),
        ]
        .into_iter()
        .enumerate()
        {
            m.on(&Event::Command(crate::events::Command {
                target: "iqn.2026-11.io.bootd:node.web1",
                cdb: &read,
                elapsed,
                data_in: 4096,
                data_out: 0,
                good: i != 2,
            }));
        }
        let text = m.render(&[("web\"1".into(), 4096)]);
        assert!(
            text.contains("bootd_dhcp_replies_total{mode=\"full\",type=\"ack\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("bootd_iscsi_command_seconds_bucket{op=\"read\",le=\"0.0005\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("bootd_iscsi_command_seconds_bucket{op=\"read\",le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("bootd_iscsi_command_seconds_count{op=\"read\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("bootd_node_commands_total{op=\"read\",node=\"web1\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("bootd_node_command_errors_total{node=\"web1\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("bootd_node_bytes_total{dir=\"read\",node=\"web1\"} 12288\n"),
            "{text}"
        );
        assert!(
            text.contains("bootd_overlay_bytes{node=\"web\\\"1\"} 4096\n"),
            "{text}"
        );
        // Every sample line is `name{labels} value` or `name value`.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let v = l.rsplit_once(' ').map(|(_, v)| v);
            assert!(v.is_some_and(|v| v.parse::<f64>().is_ok()), "{l}");
        }
    }
}
