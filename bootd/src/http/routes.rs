//! What each boot path answers: the chain script, a node's own script (to
//! that node only), an iPXE binary streamed from the boot directory, the
//! NoCloud seed (nocloud.rs) and /metrics (to the operator only).

use super::target::{self, Target};
use super::{text, Conn, HttpServer};
use crate::events::Event;
use crate::serve::config::ScriptAccess;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, TRANSFER_ENCODING};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::Extension;
use bootd_ipxe::BootPlan;
use bootd_plan::urls::{self, Refusal, Route};
use bootd_plan::NodeState;
use std::net::IpAddr;
use std::sync::Arc;
use tower::ServiceExt;
use tower_http::services::ServeFile;

/// Every request of the boot network: GET and HEAD of a plain path.
pub(super) async fn answer(
    State(server): State<Arc<HttpServer>>,
    Extension(conn): Extension<Conn>,
    req: Request,
) -> Response {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return text(405, "method not allowed\n");
    }
    // Bodies of known length are refused by the body limit layer; a
    // chunked one is refused here, unread.
    if req.headers().contains_key(TRANSFER_ENCODING) {
        return text(413, "no request bodies here\n");
    }
    let uri = req.uri();
    let target = match target::check(uri.scheme().is_some(), uri.path(), uri.query()) {
        Ok(t) => t,
        Err(e) => return text(e.status(), format!("{e}\n")),
    };
    let r = server
        .route(&target, req, conn.local.ip(), conn.peer.ip())
        .await;
    // The path only: the query may hold a token.
    tracing::info!(peer = %conn.peer, path = %target.path, status = r.status().as_u16(), "http");
    r
}

impl HttpServer {
    async fn route(&self, target: &Target, req: Request, local: IpAddr, peer: IpAddr) -> Response {
        // A client reaching us over IPv4 on a dual-stack socket shows up as
        // ::ffff:a.b.c.d; iPXE wants the plain IPv4 address.
        let (local, peer) = (local.to_canonical(), peer.to_canonical());
        let host = bootd_ipxe::uri_host(local);
        match urls::route(&target.path) {
            Ok(Route::Chain) => {
                let http_base = urls::http_base(&host, self.http_port);
                text(200, bootd_ipxe::chain_script(&http_base))
            }
            Ok(Route::Node(mac)) => {
                let who = Caller {
                    peer,
                    token: target.token.clone(),
                };
                self.node_script(mac, &host, who).await
            }
            Ok(Route::Binary(name)) => self.binary(name, req).await,
            Ok(Route::NoCloud(file)) => self.nocloud(file, peer),
            // Node names (by default made from MACs) and load figures are
            // for the operator: the server itself and whom they named.
            // (A peer at the address we listen on is this host; another
            // loopback address counts as foreign, so tests can play one.)
            Ok(Route::Metrics) if peer == local || self.access.metrics_from.contains(&peer) => {
                self.metrics().await
            }
            Ok(Route::Metrics) => text(403, "metrics are not served to this address\n"),
            Err(Refusal::BadRequest) => text(400, "bad path\n"),
            Err(Refusal::NotFound) => text(404, "not found\n"),
        }
    }

    async fn metrics(&self) -> Response {
        let snap = self.view.current();
        // Overlay sizes come from the disk at scrape time: a stat per node.
        let overlays = tokio::task::spawn_blocking(move || {
            snap.nodes()
                .iter()
                .map(|n| (n.name.clone(), crate::datadir::allocated_bytes(&n.overlay)))
                .collect::<Vec<_>>()
        })
        .await;
        match overlays {
            Ok(o) => {
                let mut r = text(200, self.metrics.render(&o));
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
                );
                r
            }
            Err(e) => {
                tracing::error!("metrics: {e}");
                text(500, "metrics unavailable\n")
            }
        }
    }

    /// A file of the boot directory, confined as for TFTP, streamed from
    /// the file in chunks (kernels and initrds too: nothing is read whole),
    /// with HEAD, Range and Last-Modified from tower-http's `ServeFile`.
    async fn binary(&self, name: String, req: Request) -> Response {
        let files = self.files.clone();
        let found = tokio::task::spawn_blocking(move || {
            let path = files.resolve(&name)?;
            match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => Ok(path),
                _ => Err((
                    crate::tftp::packet::ErrorCode::FileNotFound,
                    "file not found",
                )),
            }
        })
        .await;
        let path = match found {
            Ok(Ok(path)) => path,
            Ok(Err((_, why))) => return text(404, format!("{why}\n")),
            Err(e) => {
                tracing::error!("http: file resolver: {e}");
                return text(500, "file unavailable\n");
            }
        };
        let file = ServeFile::new_with_mime(&path, &mime::APPLICATION_OCTET_STREAM);
        let mut r = match file.oneshot(req).await {
            Ok(r) => r.map(Body::new),
            Err(e) => {
                tracing::error!(path = %path.display(), "http: {e}");
                return text(500, "file unavailable\n");
            }
        };
        if r.status().is_success() {
            self.events.emit(Event::BinaryServed);
        } else if r.status() == StatusCode::NOT_FOUND {
            // Gone between the check and the open.
            return text(404, "file not found\n");
        }
        r.headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }

    async fn node_script(&self, mac: bootd_plan::Mac, host: &str, who: Caller) -> Response {
        let snap = self.view.current();
        let Some(node) = snap.by_mac(&mac) else {
            return text(404, "no node has this MAC\n");
        };
        if node.state != NodeState::Ready {
            return text(503, "the node's disk is being recreated\n");
        }
        if !self.is_the_node(node, &who) {
            self.events.emit(Event::ScriptRefused);
            tracing::warn!(peer = %who.peer, node = %node.name, token = who.token.is_some(), "http: script refused: not the node's address and no valid token");
            return text(403, "this script is served to its node only\n");
        }
        let mut plan = BootPlan::for_node(node, host, self.http_port, self.iscsi_port);
        // The disk is on its owner, wherever the script was asked for.
        if let Some(owner) = self.access.portals.as_ref().and_then(|p| p.of(node)) {
            plan = plan.on_portal(owner);
        }
        match self.renderer.render(node.script.as_deref(), &plan) {
            Ok(script) => {
                self.events.emit(Event::ScriptServed {
                    mac: node.mac,
                    template: node.template.as_deref().unwrap_or("sanboot"),
                });
                text(200, script)
            }
            Err(e) => {
                // Scripts are checked at `template add`; this is a template
                // stored by an older bootd, or a built-in changed since.
                tracing::error!(node = %node.name, "http: {e}");
                text(500, "the node's template does not render\n")
            }
        }
    }

    /// Whether `who` is `node`: its static address, the address bootd's
    /// DHCP leased its MAC, or a token issued for its MAC in a boot URL.
    fn is_the_node(&self, node: &bootd_plan::NodePlan, who: &Caller) -> bool {
        if self.access.scripts == ScriptAccess::Open {
            return true;
        }
        if node.ip.is_some_and(|ip| ip.to_canonical() == who.peer) {
            return true;
        }
        self.access
            .grants
            .admit(
                &node.mac,
                who.peer,
                who.token.as_deref(),
                std::time::Instant::now(),
            )
            .is_some()
    }
}

/// Who asks for a node's script.
struct Caller {
    peer: IpAddr,
    token: Option<String>,
}
