//! The fleet as every server sees it: an immutable snapshot of node plans,
//! built from one read of the registry and swapped whole when it changes.
//! DHCP looks nodes up by MAC, TFTP and HTTP by client address, iSCSI by
//! initiator or target IQN, all in the same snapshot, so a node added,
//! moved or removed is seen by all four at once.

use crate::Mac;
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;

/// A secret that never reaches a log by accident: `Debug` prints a
/// placeholder; [`Secret::expose`] is the one way to read it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// A CHAP name and secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chap {
    pub user: String,
    pub secret: Secret,
}

/// Where a node is in its life: only `Ready` nodes are booted and served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Creating,
    Ready,
    Releasing,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Ready => "ready",
            Self::Releasing => "releasing",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "creating" => Some(Self::Creating),
            "ready" => Some(Self::Ready),
            "releasing" => Some(Self::Releasing),
            _ => None,
        }
    }
}

/// The golden image version a node's overlay sits on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub id: i64,
    pub name: String,
    pub version: u32,
    pub path: PathBuf,
    /// Hex SHA-256 of the image file, checked before it is served.
    pub sha256: String,
}

/// Everything the servers need to boot one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlan {
    pub id: i64,
    /// Bumped by every change to the node: a served target whose revision
    /// moved is rebuilt.
    pub revision: i64,
    pub name: String,
    pub mac: Mac,
    /// A static address, when the operator gave one.
    pub ip: Option<IpAddr>,
    pub state: NodeState,
    /// The template the node was made from, and its script (`None`: the
    /// built-in sanboot script).
    pub template: Option<String>,
    pub script: Option<String>,
    pub image: ImageRef,
    pub target_iqn: String,
    pub initiator_iqn: String,
    pub chap: Chap,
    /// The secret the target answers the node's challenge with.
    pub mutual_chap: Option<Chap>,
    pub overlay: PathBuf,
    /// Bumped each time the node's overlay is made anew (creation, reset,
    /// move, upgrade): a new cloud-init instance.
    pub overlay_generation: u64,
    /// cloud-init user-data (a template for the node's fields): the node's
    /// own, else its template's. It may hold secrets.
    pub user_data: Option<Secret>,
    /// The server that owns the node in the registry (serves its overlay),
    /// if any.
    pub owner: Option<String>,
    /// The server the operator pinned the node to, if any.
    pub pinned_server: Option<String>,
}

impl NodePlan {
    pub fn ready(&self) -> bool {
        self.state == NodeState::Ready
    }

    /// The static address DHCP hands out, when it is an IPv4 one.
    pub fn static_v4(&self) -> Option<Ipv4Addr> {
        match self.ip {
            Some(IpAddr::V4(v4)) => Some(v4),
            _ => None,
        }
    }
}

/// One generation of the registry, indexed every way a server asks.
#[derive(Debug, Default)]
pub struct Snapshot {
    generation: u64,
    nodes: Vec<Arc<NodePlan>>,
    by_mac: HashMap<Mac, usize>,
    by_ip: HashMap<IpAddr, usize>,
    by_initiator: HashMap<String, usize>,
    by_target: HashMap<String, usize>,
    by_name: HashMap<String, usize>,
}

impl Snapshot {
    /// Indexes `nodes`. Registry constraints make MACs, names and IQNs
    /// unique; should two rows still share a key, the first keeps it.
    pub fn new(generation: u64, nodes: Vec<NodePlan>) -> Self {
        let mut s = Self {
            generation,
            ..Self::default()
        };
        for (i, n) in nodes.into_iter().enumerate() {
            s.by_mac.entry(n.mac).or_insert(i);
            if let Some(ip) = n.ip {
                s.by_ip.entry(ip).or_insert(i);
            }
            s.by_initiator.entry(n.initiator_iqn.clone()).or_insert(i);
            s.by_target.entry(n.target_iqn.clone()).or_insert(i);
            s.by_name.entry(n.name.clone()).or_insert(i);
            s.nodes.push(Arc::new(n));
        }
        s
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Every registered node, in any state.
    pub fn nodes(&self) -> &[Arc<NodePlan>] {
        &self.nodes
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn by_mac(&self, mac: &Mac) -> Option<&Arc<NodePlan>> {
        self.by_mac.get(mac).map(|&i| &self.nodes[i])
    }

    /// The node whose static address is `ip`.
    pub fn by_ip(&self, ip: &IpAddr) -> Option<&Arc<NodePlan>> {
        self.by_ip.get(ip).map(|&i| &self.nodes[i])
    }

    pub fn by_initiator(&self, iqn: &str) -> Option<&Arc<NodePlan>> {
        self.by_initiator.get(iqn).map(|&i| &self.nodes[i])
    }

    pub fn by_target(&self, iqn: &str) -> Option<&Arc<NodePlan>> {
        self.by_target.get(iqn).map(|&i| &self.nodes[i])
    }

    pub fn by_name(&self, name: &str) -> Option<&Arc<NodePlan>> {
        self.by_name.get(name).map(|&i| &self.nodes[i])
    }

    /// Static IPv4 addresses of every node, whatever its state: DHCP keeps
    /// them out of its pool.
    pub fn static_v4(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.nodes.iter().filter_map(|n| n.static_v4())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn plan(i: u8) -> NodePlan {
        NodePlan {
            id: i64::from(i),
            revision: 1,
            name: format!("n{i}"),
            mac: Mac::new([2, 0, 0, 0, 0, i]),
            ip: i
                .is_multiple_of(2)
                .then(|| IpAddr::V4(Ipv4Addr::new(192, 0, 2, i))),
            state: NodeState::Ready,
            template: None,
            script: None,
            image: ImageRef {
                id: 1,
                name: "golden".into(),
                version: 1,
                path: "/var/lib/bootd/images/golden-1.raw".into(),
                sha256: "00".repeat(32),
            },
            target_iqn: format!("iqn.2026-11.io.bootd:n{i}"),
            initiator_iqn: format!("iqn.2026-11.io.bootd:n{i}:initiator"),
            chap: Chap {
                user: format!("n{i}"),
                secret: Secret::new("0123456789abcdef"),
            },
            mutual_chap: None,
            overlay: format!("/var/lib/bootd/overlays/n{i}.qcow2").into(),
            overlay_generation: 1,
            user_data: Some(Secret::new("#cloud-config\npassword: 0123456789abcdef\n")),
            owner: None,
            pinned_server: None,
        }
    }

    #[test]
    fn every_index_finds_the_same_node() {
        let s = Snapshot::new(7, (1..=4).map(plan).collect());
        assert_eq!(s.generation(), 7);
        let n2 = s.by_mac(&Mac::new([2, 0, 0, 0, 0, 2])).cloned();
        assert!(n2.is_some());
        let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
        assert_eq!(s.by_ip(&ip).cloned(), n2);
        assert_eq!(s.by_target("iqn.2026-11.io.bootd:n2").cloned(), n2);
        assert_eq!(
            s.by_initiator("iqn.2026-11.io.bootd:n2:initiator").cloned(),
            n2
        );
        assert_eq!(s.by_name("n2").cloned(), n2);
        assert!(s.by_ip(&IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))).is_none());
        let mut statics: Vec<_> = s.static_v4().collect();
        statics.sort();
        assert_eq!(
            statics,
            [Ipv4Addr::new(192, 0, 2, 2), Ipv4Addr::new(192, 0, 2, 4)]
        );
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let text = format!("{:?}", plan(1));
        assert!(!text.contains("0123456789abcdef"), "{text}");
        assert_eq!(plan(1).chap.secret.expose(), "0123456789abcdef");
    }
}
