//! A node's [`BootPlan`] (what its template sees) from its plan in the
//! fleet snapshot: the one place the template variables are filled in.

use crate::BootPlan;
use bootd_plan::{urls, NodePlan};

impl BootPlan {
    /// `node`'s boot as served from `host` (the address the client reached
    /// this server at, already in URI form), scripts and files over HTTP on
    /// `http_port`, disks from the iSCSI portal on `iscsi_port`.
    pub fn for_node(node: &NodePlan, host: &str, http_port: u16, iscsi_port: u16) -> Self {
        let mutual = node.mutual_chap.as_ref();
        Self {
            node_name: node.name.clone(),
            mac: node.mac.to_string(),
            ip: node.ip.map(|ip| ip.to_string()).unwrap_or_default(),
            server: host.to_string(),
            http_base: urls::http_base(host, http_port),
            portal: format!("{host}:{iscsi_port}"),
            iscsi_host: host.to_string(),
            iscsi_port,
            target_iqn: node.target_iqn.clone(),
            initiator_iqn: node.initiator_iqn.clone(),
            chap_user: node.chap.user.clone(),
            chap_secret: node.chap.secret.expose().to_string(),
            mutual_chap_user: mutual.map(|m| m.user.clone()).unwrap_or_default(),
            mutual_chap_secret: mutual
                .map(|m| m.secret.expose().to_string())
                .unwrap_or_default(),
            image_name: node.image.name.clone(),
            image_version: node.image.version,
        }
    }

    /// The same boot with its disk on another server's portal (the node's
    /// owner when several servers share a registry); a typed address, so
    /// the port is always explicit.
    pub fn on_portal(mut self, portal: std::net::SocketAddr) -> Self {
        self.portal = portal.to_string();
        self.iscsi_host = match portal {
            std::net::SocketAddr::V4(a) => a.ip().to_string(),
            std::net::SocketAddr::V6(a) => format!("[{}]", a.ip()),
        };
        self.iscsi_port = portal.port();
        self
    }
}
