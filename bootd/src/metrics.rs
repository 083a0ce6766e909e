//! `GET /metrics` in the Prometheus text format 0.0.4, encoded by
//! prometheus-client (the Prometheus project's Rust client). A subscriber to
//! serve's boot events: plain counters and gauges are the crate's (relaxed
//! atomics); the command latency histograms and per-node series are bootd's
//! own atomics, encoded through the crate's `Collector` at scrape time, so a
//! SCSI command never takes a lock or allocates (the crate's histogram locks
//! per observation, its families allocate a label set per lookup). Cheap
//! enough to leave on during a boot storm. Per-node series are keyed by the
//! node's target and created on its first command.

use crate::events::{DhcpKind, Event, Subscriber};
use iscsi_proto::scsi::cdb::{block_io, BlockIo};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The exposition's media type.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds of the command latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
];

#[derive(Default, Debug)]
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
}

impl EncodeMetric for Histogram {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        let mut buckets = [(0.0, 0); BUCKETS.len() + 1];
        for (i, b) in buckets.iter_mut().enumerate() {
            *b = (
                BUCKETS.get(i).copied().unwrap_or(f64::INFINITY),
                self.counts[i].load(Relaxed),
            );
        }
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.sum_ns.load(Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// One node's iSCSI traffic.
#[derive(Default, Debug)]
pub struct NodeIo {
    reads: AtomicU64,
    writes: AtomicU64,
    other: AtomicU64,
    read_bytes: AtomicU64,
    write_bytes: AtomicU64,
    errors: AtomicU64,
}

/// Node I/O by target.
type Nodes = RwLock<HashMap<String, Arc<NodeIo>>>;

/// DHCP replies: mode and message type.
type DhcpLabels = [(&'static str, &'static str); 2];

/// A gauge of the registry that the events set.
type Level = Gauge<u64, AtomicU64>;

/// The server's counters; `registry` holds every family in the order of
/// the exposition and shares the values with the fields below.
pub struct Metrics {
    registry: Registry,
    dhcp: Family<DhcpLabels, Counter>,
    dhcp_requests: Counter,
    tftp_transfers: Counter,
    tftp_failed: Counter,
    tftp_bytes: Counter,
    scripts: Counter,
    /// Script fetches refused: not the node's address, no valid token.
    scripts_refused: Counter,
    /// HTTP connections closed at once: over their source's share, or
    /// every slot busy answering.
    http_refused: Counter,
    /// TFTP requests refused: over their source's share, or no slot.
    tftp_refused: Counter,
    binaries: Counter,
    /// NoCloud user-data served, and seed requests refused.
    metadata: Counter,
    metadata_refused: Counter,
    iscsi_logins: Counter,
    iscsi_ends: Counter,
    /// Free bytes on the overlays' filesystem.
    data_free_bytes: Level,
    /// 1 while free space is below serve's warning watermark.
    data_low_space: Level,
    /// Overlays failed by a write-back error.
    overlays_failed: Level,
    latency: Arc<Latency>,
    nodes: Arc<Nodes>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registry::default();
        let dhcp = Family::<DhcpLabels, Counter>::default();
        // Every mode and type from the start, zero until used.
        for mode in ["proxy", "full"] {
            for kind in ["offer", "ack", "nak"] {
                let _ = dhcp.get_or_create(&[("mode", mode), ("type", kind)]);
            }
        }
        // The crate adds "_total" to counters and a full stop to help texts.
        r.register(
            "bootd_dhcp_replies",
            "DHCP replies sent, by mode and message type",
            dhcp.clone(),
        );
        let mut counter = |name: &str, help: &str| {
            let c = Counter::default();
            r.register(name, help, c.clone());
            c
        };
        let dhcp_requests = counter("bootd_dhcp_requests", "DHCP requests decoded");
        let tftp_transfers = counter("bootd_tftp_transfers", "TFTP transfers completed");
        let tftp_failed = counter(
            "bootd_tftp_failed",
            "TFTP transfers that ended without completing",
        );
        let tftp_bytes = counter("bootd_tftp_bytes", "Bytes of completed TFTP transfers");
        let scripts = counter("bootd_http_scripts", "Node iPXE scripts served");
        let scripts_refused = counter(
            "bootd_http_scripts_refused",
            "Node script fetches refused (not the node's address, no valid token)",
        );
        let http_refused = counter(
            "bootd_http_connections_refused",
            "HTTP connections closed unanswered (source over its share, or all slots busy)",
        );
        let tftp_refused = counter(
            "bootd_tftp_refused",
            "TFTP requests refused (source over its share, or all slots busy)",
        );
        let metadata = counter(
            "bootd_nocloud_user_data",
            "cloud-init user-data served to nodes",
        );
        let metadata_refused = counter(
            "bootd_nocloud_refused",
            "NoCloud seed requests from an address no node boots from",
        );
        let binaries = counter("bootd_http_binaries", "iPXE binaries served over HTTP");
        let iscsi_logins = counter("bootd_iscsi_logins", "iSCSI normal-session logins");
        let iscsi_ends = Counter::default();
        r.register_collector(Box::new(Sessions {
            logins: iscsi_logins.clone(),
            ends: iscsi_ends.clone(),
        }));
        let mut level = |name: &str, help: &str| {
            let g = Level::default();
            r.register(name, help, g.clone());
            g
        };
        let data_free_bytes = level(
            "bootd_data_free_bytes",
            "Free bytes on the overlays' filesystem",
        );
        let data_low_space = level(
            "bootd_data_low_space",
            "1 while free space is below serve's --warn-free watermark",
        );
        let overlays_failed = level(
            "bootd_overlays_failed",
            "Overlays refusing I/O after a write-back error (until serve restarts)",
        );
        let latency = Arc::new(Latency::default());
        r.register_collector(Box::new(latency.clone()));
        let nodes = Arc::new(Nodes::default());
        r.register_collector(Box::new(NodeSeries(nodes.clone())));
        Self {
            registry: r,
            dhcp,
            dhcp_requests,
            tftp_transfers,
            tftp_failed,
            tftp_bytes,
            scripts,
            scripts_refused,
            http_refused,
            tftp_refused,
            binaries,
            metadata,
            metadata_refused,
            iscsi_logins,
            iscsi_ends,
            data_free_bytes,
            data_low_space,
            overlays_failed,
            latency,
            nodes,
        }
    }
}

impl Subscriber for Metrics {
    fn on(&self, event: &Event<'_>) {
        let add = |c: &Counter, n: u64| {
            c.inc_by(n);
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
                let bump = |a: &AtomicU64, n: u64| {
                    a.fetch_add(n, Relaxed);
                };
                match block_io(c.cdb) {
                    Some(BlockIo::Read { .. }) => {
                        bump(&node.reads, 1);
                        self.latency.read.observe(c.elapsed);
                    }
                    Some(BlockIo::Write { .. }) => {
                        bump(&node.writes, 1);
                        self.latency.write.observe(c.elapsed);
                    }
                    _ => bump(&node.other, 1),
                }
                bump(&node.read_bytes, c.data_in);
                bump(&node.write_bytes, c.data_out);
                if !c.good {
                    bump(&node.errors, 1);
                }
            }
            Event::Space { free, low } => {
                self.data_free_bytes.set(*free);
                self.data_low_space.set(u64::from(*low));
            }
            Event::OverlaysFailed(n) => {
                self.overlays_failed.set(*n);
            }
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
        let mode = if full { "full" } else { "proxy" };
        let kind = match kind {
            DhcpKind::Offer => "offer",
            DhcpKind::Ack => "ack",
            DhcpKind::Nak => "nak",
        };
        self.dhcp
            .get_or_create(&[("mode", mode), ("type", kind)])
            .inc();
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
        let mut scrape = Registry::default();
        scrape.register_collector(Box::new(Overlays(overlays.to_vec())));
        let encoded = prometheus_client::encoding::prometheus_text::encode(&mut o, &self.registry)
            .and_then(|()| prometheus_client::encoding::prometheus_text::encode(&mut o, &scrape));
        if let Err(e) = encoded {
            // Writing to a String fails only on a collector's own error.
            tracing::error!("metrics: encoding: {e}");
        }
        o
    }
}

/// Open sessions: logins less ends, at scrape time.
#[derive(Debug)]
struct Sessions {
    logins: Counter,
    ends: Counter,
}

impl Collector for Sessions {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let live = self.logins.get().saturating_sub(self.ends.get());
        let g = ConstGauge::new(live);
        g.encode(encoder.encode_descriptor(
            "bootd_iscsi_sessions",
            "iSCSI normal sessions open.",
            None,
            g.metric_type(),
        )?)
    }
}

/// SCSI read and write latency on the target.
#[derive(Default, Debug)]
struct Latency {
    read: Histogram,
    write: Histogram,
}

impl Collector for Latency {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "bootd_iscsi_command_seconds",
            "SCSI read and write latency on the target.",
            None,
            MetricType::Histogram,
        )?;
        for (op, h) in [("read", &self.read), ("write", &self.write)] {
            h.encode(family.encode_family(&[("op", op)])?)?;
        }
        Ok(())
    }
}

/// Per-node commands, bytes and errors, by node name.
#[derive(Debug)]
struct NodeSeries(Arc<Nodes>);

impl Collector for NodeSeries {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let nodes = self.0.read().unwrap_or_else(|e| e.into_inner());
        let mut keys: Vec<&String> = nodes.keys().collect();
        keys.sort();
        let value = |n: &NodeIo, i: usize| {
            [
                &n.reads,
                &n.writes,
                &n.other,
                &n.read_bytes,
                &n.write_bytes,
                &n.errors,
            ][i]
                .load(Relaxed)
        };
        for (name, help, key, series) in [
            (
                "bootd_node_commands",
                "SCSI commands by node.",
                "op",
                &[("read", 0), ("write", 1), ("other", 2)][..],
            ),
            (
                "bootd_node_bytes",
                "iSCSI data bytes by node.",
                "dir",
                &[("read", 3), ("write", 4)][..],
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (label, i) in series {
                for k in &keys {
                    let labels = [(key, *label), ("node", node_label(k))];
                    ConstCounter::new(value(&nodes[*k], *i))
                        .encode(family.encode_family(&labels)?)?;
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "bootd_node_command_errors",
            "Commands that did not end GOOD, by node.",
            None,
            MetricType::Counter,
        )?;
        for k in &keys {
            ConstCounter::new(value(&nodes[*k], 5))
                .encode(family.encode_family(&[("node", node_label(k))])?)?;
        }
        Ok(())
    }
}

/// Each node's overlay bytes on disk, read at scrape time.
#[derive(Debug)]
struct Overlays(Vec<(String, u64)>);

impl Collector for Overlays {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "bootd_overlay_bytes",
            "Bytes each node's overlay takes on disk.",
            None,
            MetricType::Gauge,
        )?;
        for (name, bytes) in &self.0 {
            ConstGauge::new(*bytes).encode(family.encode_family(&[("node", name.as_str())])?)?;
        }
        Ok(())
    }
}

/// Targets are `...:node.NAME`; the node's name is the label (the encoder
/// escapes it).
fn node_label(target: &str) -> &str {
    target.rsplit_once(":node.").map_or(target, |(_, n)| n)
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
        // The families and types of the hand-written exposition, unchanged.
        for (family, kind) in [
            ("bootd_dhcp_replies_total", "counter"),
            ("bootd_dhcp_requests_total", "counter"),
            ("bootd_tftp_transfers_total", "counter"),
            ("bootd_tftp_failed_total", "counter"),
            ("bootd_tftp_bytes_total", "counter"),
            ("bootd_http_scripts_total", "counter"),
            ("bootd_http_scripts_refused_total", "counter"),
            ("bootd_http_connections_refused_total", "counter"),
            ("bootd_tftp_refused_total", "counter"),
            ("bootd_nocloud_user_data_total", "counter"),
            ("bootd_nocloud_refused_total", "counter"),
            ("bootd_http_binaries_total", "counter"),
            ("bootd_iscsi_logins_total", "counter"),
            ("bootd_iscsi_sessions", "gauge"),
            ("bootd_data_free_bytes", "gauge"),
            ("bootd_data_low_space", "gauge"),
            ("bootd_overlays_failed", "gauge"),
            ("bootd_iscsi_command_seconds", "histogram"),
            ("bootd_node_commands_total", "counter"),
            ("bootd_node_bytes_total", "counter"),
            ("bootd_node_command_errors_total", "counter"),
            ("bootd_overlay_bytes", "gauge"),
        ] {
            assert!(
                text.contains(&format!("\n# TYPE {family} {kind}\n"))
                    || text.starts_with(&format!("# HELP {family} ")),
                "{family}: {text}"
            );
        }
        // Every mode and type is there from the start.
        assert!(
            text.contains("bootd_dhcp_replies_total{mode=\"proxy\",type=\"nak\"} 0\n"),
            "{text}"
        );
        // Every sample line is `name{labels} value` or `name value`.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let v = l.rsplit_once(' ').map(|(_, v)| v);
            assert!(v.is_some_and(|v| v.parse::<f64>().is_ok()), "{l}");
        }
    }
}
