//! cloud-init's NoCloud seed over HTTP (`ds=nocloud;s=http://SERVER:PORT/nocloud/`):
//! meta-data (instance-id, hostname), user-data (the node's or its
//! template's cloud-config, rendered with the node's fields), vendor-data
//! and network-config. One URL for every node: the node is the one whose
//! iSCSI session (it passed the node's CHAP) or bootd DHCP lease the
//! requester's address holds. Anyone else gets a 404 and a log line: the
//! user-data may carry secrets.

use super::{text, HttpServer};
use crate::events::Event;
use axum::response::Response;
use bootd_ipxe::{render_user_data, UserDataVars};
use bootd_plan::urls::NoCloudFile;
use bootd_plan::NodePlan;
use std::net::IpAddr;
use std::sync::Arc;

/// What the seed says about the network: nothing. A diskless node's boot
/// NIC carries its root disk; cloud-init must leave it as the initramfs
/// set it up.
const NETWORK_CONFIG: &str = "network:\n  config: disabled\n";

impl HttpServer {
    pub(super) fn nocloud(&self, file: NoCloudFile, peer: IpAddr) -> Response {
        let Some(node) = self.booting_from(peer) else {
            self.events.emit(Event::MetadataRefused);
            tracing::warn!(%peer, ?file, "nocloud: refused: no node's iSCSI session or bootd lease is at this address");
            return text(404, "no node boots from this address\n");
        };
        match file {
            NoCloudFile::MetaData => text(200, meta_data(&node)),
            NoCloudFile::UserData => match user_data(&node) {
                Ok(data) => {
                    self.events.emit(Event::MetadataServed { mac: node.mac });
                    text(200, data)
                }
                Err(e) => {
                    // Checked at `template add`/`node add`; a stored text that
                    // no longer renders is the operator's to fix.
                    tracing::error!(node = %node.name, "nocloud: user-data: {e}");
                    text(500, "the node's user-data does not render\n")
                }
            },
            NoCloudFile::VendorData => text(200, ""),
            NoCloudFile::NetworkConfig => text(200, NETWORK_CONFIG),
        }
    }

    /// The ready node that `peer` is: the one whose target it holds a
    /// session to, else the one bootd's DHCP leased it to.
    fn booting_from(&self, peer: IpAddr) -> Option<Arc<NodePlan>> {
        let snap = self.view.current();
        let by_session = self
            .access
            .sessions
            .target_of(peer)
            .and_then(|t| snap.by_target(&t).cloned());
        let node = match by_session {
            Some(n) => Some(n),
            None => self
                .access
                .grants
                .leased_to(peer)
                .and_then(|mac| snap.by_mac(&mac).cloned()),
        };
        node.filter(|n| n.ready())
    }
}

/// A new instance for every new overlay (first creation, `node reset`,
/// `node move`, `image upgrade`): cloud-init's first boot runs again.
fn meta_data(node: &NodePlan) -> String {
    format!(
        "instance-id: bootd-{}-{}-{}\nlocal-hostname: {}\n",
        node.name, node.id, node.overlay_generation, node.name
    )
}

/// The node's own user-data, else its template's, else one that sets
/// the hostname.
fn user_data(node: &NodePlan) -> Result<String, bootd_ipxe::RenderError> {
    match &node.user_data {
        Some(text) => render_user_data(
            text.expose(),
            &UserDataVars {
                name: node.name.clone(),
                mac: node.mac.to_string(),
                ip: node.ip.map(|ip| ip.to_string()).unwrap_or_default(),
                image: node.image.name.clone(),
                version: node.image.version,
            },
        ),
        None => Ok(format!(
            "#cloud-config\nhostname: {}\npreserve_hostname: false\n",
            node.name
        )),
    }
}
