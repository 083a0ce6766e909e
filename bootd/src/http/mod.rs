//! The boot-script HTTP server: `GET /boot.ipxe` (chain to the node's own
//! script), `GET /boot/{mac}.ipxe` (the node's script from its template)
//! and `GET /ipxe/{name}` (an iPXE binary, for UEFI HTTP boot firmware).
//! One request per connection, bounded in size, time and number; nodes
//! come from the fleet view's current snapshot, which follows the registry.

mod nocloud;
pub mod request;
mod slots;
#[cfg(test)]
mod tests;

use crate::events::sessions::Sessions;
use crate::events::{Event, Events};
use crate::fleet::FleetView;
use crate::metrics::Metrics;
use crate::serve::config::ScriptAccess;
use crate::serve::grants::Grants;
use crate::service::Shutdown;
use crate::tftp::Root;
use bootd_ipxe::{BootPlan, Renderer};
use bootd_plan::urls::{self, Refusal, Route};
use bootd_plan::NodeState;
use request::{Method, ParseError};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A client has this long to send its request head (iPXE sends it at
/// once) ...
const READ_LIMIT: Duration = Duration::from_secs(10);
/// ... and to take the answer.
const WRITE_LIMIT: Duration = Duration::from_secs(10);

/// After refusing a request, unread input is discarded for at most this
/// long and this many bytes.
const DRAIN_LIMIT: Duration = Duration::from_secs(1);
const DRAIN_BYTES: usize = 64 * 1024;

pub struct HttpServer {
    /// The fleet: scripts come from the current snapshot, never a
    /// registry read per request.
    view: FleetView,
    /// The boot directory, shared with TFTP (same confinement, same cache).
    files: Arc<Root>,
    renderer: Renderer,
    /// Where this HTTP server listens (for URLs in scripts).
    http_port: u16,
    /// Where the iSCSI portal listens.
    iscsi_port: u16,
    slots: Arc<slots::Slots>,
    /// Scripts served are reported as boot stages.
    /// Served and refused requests go out as boot events.
    events: Events,
    /// What `/metrics` renders.
    metrics: Arc<Metrics>,
    access: Access,
}

/// Who gets what: node scripts (they carry CHAP secrets) and /metrics.
pub struct Access {
    pub scripts: ScriptAccess,
    /// Leases and one-time tokens from bootd's DHCP.
    pub grants: Arc<Grants>,
    /// Who may read /metrics besides the server's own addresses.
    pub metrics_from: Vec<IpAddr>,
    /// Connections one client address may hold.
    pub per_source: usize,
    /// Live iSCSI sessions by address: who may have a node's NoCloud seed.
    pub sessions: Arc<Sessions>,
    /// With peers on one registry: where each node's owner serves its
    /// disk, so its script points there (`None`: this server's portal).
    pub portals: Option<crate::peers::Portals>,
}

impl Default for Access {
    /// Scripts bound to their nodes, /metrics for the server itself.
    fn default() -> Self {
        Self {
            scripts: ScriptAccess::Bound,
            grants: Arc::new(Grants::new()),
            metrics_from: Vec::new(),
            per_source: slots::PER_SOURCE,
            sessions: Arc::default(),
            portals: None,
        }
    }
}

/// An answer: status and body (plain text, or a binary).
struct Response {
    status: u16,
    body: Body,
}

enum Body {
    Text(String),
    Binary(Arc<[u8]>),
    Metrics(String),
}

impl Response {
    fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            body: Body::Text(body.into()),
        }
    }

    fn body(&self) -> &[u8] {
        match &self.body {
            Body::Text(t) | Body::Metrics(t) => t.as_bytes(),
            Body::Binary(b) => b,
        }
    }

    /// The status line and headers; the body goes out after them as it is
    /// (an iPXE binary is not copied per request).
    fn head(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            414 => "URI Too Long",
            431 => "Request Header Fields Too Large",
            500 => "Internal Server Error",
            503 => "Service Unavailable",
            505 => "HTTP Version Not Supported",
            _ => "",
        };
        let kind = match &self.body {
            Body::Text(_) => "text/plain; charset=utf-8",
            Body::Binary(_) => "application/octet-stream",
            Body::Metrics(_) => "text/plain; version=0.0.4; charset=utf-8",
        };
        format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {kind}\r\n\
             Content-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
            self.status,
            self.body().len()
        )
        .into_bytes()
    }
}

impl HttpServer {
    pub fn new(
        view: FleetView,
        files: Arc<Root>,
        http_port: u16,
        iscsi_port: u16,
        events: Events,
        metrics: Arc<Metrics>,
        access: Access,
    ) -> Arc<Self> {
        Arc::new(Self {
            view,
            files,
            renderer: Renderer::new(),
            http_port,
            iscsi_port,
            slots: slots::Slots::new(slots::MAX_CONNECTIONS, access.per_source.max(1)),
            events,
            metrics,
            access,
        })
    }

    /// Accepts until `shutdown`; connections under way finish within their
    /// own time limits. Accepting never waits for a slot: a connection over
    /// its source's share is closed at once, and when all slots are taken
    /// an unfinished one is evicted (slots.rs).
    pub async fn serve(self: Arc<Self>, listener: TcpListener, mut shutdown: Shutdown) {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.wait() => return,
            };
            let (stream, peer) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors and the like: back off, keep serving.
                    tracing::warn!("http accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let slot = match self.slots.take(peer.ip()) {
                Ok(s) => s,
                Err(why) => {
                    self.events.emit(Event::HttpRefused);
                    tracing::debug!(%peer, ?why, "http: connection refused");
                    drop(stream);
                    continue;
                }
            };
            let this = self.clone();
            tokio::spawn(async move {
                if let Err(e) = this.connection(stream, peer, &slot).await {
                    tracing::debug!(%peer, "http: {e}");
                }
                drop(slot);
            });
        }
    }

    async fn connection(
        &self,
        mut stream: TcpStream,
        peer: SocketAddr,
        slot: &slots::Slot,
    ) -> std::io::Result<()> {
        let local = stream.local_addr()?;
        let parsed = tokio::select! {
            r = tokio::time::timeout(READ_LIMIT, read_head(&mut stream)) => match r {
                Ok(r) => r?,
                Err(_) => Err(None),
            },
            // Room for a newcomer: this one has not sent its head yet.
            _ = slot.evicted.notified() => return Ok(()),
        };
        slot.answering();
        let refused = parsed.is_err();
        let (response, head_only) = match parsed {
            Ok(req) => {
                let r = self.answer(&req, local.ip(), peer.ip()).await;
                // The path only: the query may hold a token.
                tracing::info!(%peer, path = %req.path, status = r.status, "http");
                (r, req.method == Method::Head)
            }
            Err(Some(e)) => (Response::text(e.status(), format!("{e}\n")), false),
            Err(None) => (Response::text(408, "request head took too long\n"), false),
        };
        tokio::time::timeout(WRITE_LIMIT, async {
            stream.write_all(&response.head()).await?;
            if !head_only {
                stream.write_all(response.body()).await?;
            }
            stream.shutdown().await
        })
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))?;
        if refused {
            // Closing with unread input makes the kernel send a reset, which
            // can destroy the error answer before the client reads it: read
            // and discard a bounded amount first.
            let _ = tokio::time::timeout(DRAIN_LIMIT, async {
                let mut sink = [0u8; 4096];
                let mut left = DRAIN_BYTES;
                while left > 0 {
                    match stream.read(&mut sink).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => left = left.saturating_sub(n),
                    }
                }
            })
            .await;
        }
        Ok(())
    }

    async fn answer(&self, req: &request::Request, local: IpAddr, peer: IpAddr) -> Response {
        // A client reaching us over IPv4 on a dual-stack socket shows up as
        // ::ffff:a.b.c.d; iPXE wants the plain IPv4 address.
        let (local, peer) = (local.to_canonical(), peer.to_canonical());
        let host = bootd_ipxe::uri_host(local);
        match urls::route(&req.path) {
            Ok(Route::Chain) => {
                let http_base = urls::http_base(&host, self.http_port);
                Response::text(200, bootd_ipxe::chain_script(&http_base))
            }
            Ok(Route::Node(mac)) => {
                let who = Caller {
                    peer,
                    token: req.token.clone(),
                };
                self.node_script(mac, &host, who).await
            }
            Ok(Route::Binary(name)) => self.binary(name).await,
            Ok(Route::NoCloud(file)) => self.nocloud(file, peer),
            // Node names (by default made from MACs) and load figures are
            // for the operator: the server itself and whom they named.
            // (A peer at the address we listen on is this host; another
            // loopback address counts as foreign, so tests can play one.)
            Ok(Route::Metrics) if peer == local || self.access.metrics_from.contains(&peer) => {
                self.metrics().await
            }
            Ok(Route::Metrics) => Response::text(403, "metrics are not served to this address\n"),
            Err(Refusal::BadRequest) => Response::text(400, "bad path\n"),
            Err(Refusal::NotFound) => Response::text(404, "not found\n"),
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
            Ok(o) => Response {
                status: 200,
                body: Body::Metrics(self.metrics.render(&o)),
            },
            Err(e) => {
                tracing::error!("metrics: {e}");
                Response::text(500, "metrics unavailable\n")
            }
        }
    }

    async fn binary(&self, name: String) -> Response {
        let files = self.files.clone();
        match tokio::task::spawn_blocking(move || files.load(&name)).await {
            Ok(Ok(bytes)) => {
                self.events.emit(Event::BinaryServed);
                Response {
                    status: 200,
                    body: Body::Binary(bytes),
                }
            }
            Ok(Err((_, why))) => Response::text(404, format!("{why}\n")),
            Err(e) => {
                tracing::error!("http: file reader: {e}");
                Response::text(500, "file unavailable\n")
            }
        }
    }

    async fn node_script(&self, mac: bootd_plan::Mac, host: &str, who: Caller) -> Response {
        let snap = self.view.current();
        let Some(node) = snap.by_mac(&mac) else {
            return Response::text(404, "no node has this MAC\n");
        };
        if node.state != NodeState::Ready {
            return Response::text(503, "the node's disk is being recreated\n");
        }
        if !self.is_the_node(node, &who) {
            self.events.emit(Event::ScriptRefused);
            tracing::warn!(peer = %who.peer, node = %node.name, token = who.token.is_some(), "http: script refused: not the node's address and no valid token");
            return Response::text(403, "this script is served to its node only\n");
        }
        let mut plan = BootPlan::for_node(node, host, self.http_port, self.iscsi_port);
        // The disk is on its owner, wherever the script was asked for.
        if let Some(owner) = self.access.portals.as_ref().and_then(|p| p.of(node)) {
            plan = plan.on_portal(owner);
        }
        match self.renderer.render(node.script.as_deref(), &plan) {
            Ok(text) => {
                self.events.emit(Event::ScriptServed {
                    mac: node.mac,
                    template: node.template.as_deref().unwrap_or("sanboot"),
                });
                Response::text(200, text)
            }
            Err(e) => {
                // Scripts are checked at `template add`; this is a template
                // stored by an older bootd, or a built-in changed since.
                tracing::error!(node = %node.name, "http: {e}");
                Response::text(500, "the node's template does not render\n")
            }
        }
    }
}

/// Who asks for a node's script.
struct Caller {
    peer: IpAddr,
    token: Option<String>,
}

impl HttpServer {
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

/// Reads until the head is complete; `Err(Some)` for a bad head, `Err(None)`
/// for a client that closed early.
async fn read_head(
    stream: &mut TcpStream,
) -> std::io::Result<Result<request::Request, Option<ParseError>>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        match request::parse(&buf) {
            Ok(Some(req)) => return Ok(Ok(req)),
            Ok(None) if buf.len() <= request::MAX_HEAD => {}
            Ok(None) => return Ok(Err(Some(ParseError::TooLarge))),
            Err(e) => return Ok(Err(Some(e))),
        }
    }
}
