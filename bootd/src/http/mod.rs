//! The boot-script HTTP server: `GET /boot.ipxe` (chain to the node's own
//! script), `GET /boot/{mac}.ipxe` (the node's script from its template),
//! `GET /ipxe/{name}` (a file of the boot directory, streamed: iPXE binaries
//! for UEFI HTTP boot firmware, kernels, initrds), the NoCloud seed and
//! /metrics. HTTP/1.1 with keep-alive on hyper, routed by axum, with tower
//! layers for what a hostile network needs: no request bodies, a bound on
//! each answer's time and on answers under way. hyper bounds the request
//! head (size and time, also between kept-alive requests); slots.rs bounds
//! connections per source and in total, evicting idle ones for newcomers;
//! io.rs cuts off a client that stops reading. Nodes come from the fleet
//! view's current snapshot, which follows the registry.

mod io;
mod nocloud;
mod routes;
mod slots;
pub mod target;
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
use axum::body::Body;
use axum::http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{Request, StatusCode};
use axum::response::Response;
use axum::Router;
use bootd_ipxe::Renderer;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::{ServiceBuilder, ServiceExt};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

/// A client has this long to send a request head (iPXE sends it at once),
/// the first one and each next one on a kept-alive connection ...
const READ_LIMIT: Duration = Duration::from_secs(10);
/// ... and a write may wait this long for the client to take bytes.
const WRITE_LIMIT: Duration = Duration::from_secs(10);
/// An answer (script, file open, metrics) is ready within this, else 408.
const ANSWER_LIMIT: Duration = Duration::from_secs(10);
/// The whole head (request line and headers) must fit in this (hyper's
/// read buffer; larger is 431).
pub const MAX_HEAD: usize = 8 * 1024;
/// Requests being answered at once, over all connections.
const MAX_ANSWERING: usize = 64;

/// After a refused head, unread input is discarded for at most this long
/// and this many bytes.
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

/// A plain-text answer; every refusal is one line of text.
pub(crate) fn text(status: u16, body: impl Into<String>) -> Response {
    let mut r = Response::new(Body::from(body.into()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The connection a request came on, for the handler.
#[derive(Clone)]
pub(crate) struct Conn {
    pub peer: SocketAddr,
    pub local: SocketAddr,
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

    /// The routes and the layers every request passes.
    fn router(self: Arc<Self>) -> Router {
        Router::new()
            .fallback(routes::answer)
            .with_state(self)
            // Nothing on the boot network sends a body: 413.
            .layer(RequestBodyLimitLayer::new(0))
            .layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                ANSWER_LIMIT,
            ))
    }

    /// Accepts until `shutdown`; connections under way finish within their
    /// own time limits. Accepting never waits for a slot: a connection over
    /// its source's share replaces that source's oldest idle one or is
    /// closed at once, and when all slots are taken an idle one of the
    /// busiest source is evicted (slots.rs).
    pub async fn serve(self: Arc<Self>, listener: TcpListener, mut shutdown: Shutdown) {
        let router = self.clone().router();
        let answering = Arc::new(Semaphore::new(MAX_ANSWERING));
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
                Ok(s) => Arc::new(s),
                Err(why) => {
                    self.events.emit(Event::HttpRefused);
                    tracing::debug!(%peer, ?why, "http: connection refused");
                    drop(stream);
                    continue;
                }
            };
            let (router, answering) = (router.clone(), answering.clone());
            tokio::spawn(async move {
                connection(router, answering, stream, peer, slot).await;
            });
        }
    }
}

/// Serves one connection's requests until the client closes, a limit
/// ends it, or it is evicted while idle.
async fn connection(
    router: Router,
    answering: Arc<Semaphore>,
    mut stream: TcpStream,
    peer: SocketAddr,
    slot: Arc<slots::Slot>,
) {
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let conn = Conn { peer, local };
    let (start, end) = (slot.clone(), slot.clone());
    let service = ServiceBuilder::new()
        .layer(GlobalConcurrencyLimitLayer::with_semaphore(answering))
        .service(router)
        .map_request(move |mut req: Request<hyper::body::Incoming>| {
            // A head is in: this connection is no longer idle.
            start.answering();
            req.extensions_mut().insert(conn.clone());
            req
        })
        .map_response(move |r: Response| r.map(|b| Body::new(io::Tracked::new(b, end.clone()))));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(READ_LIMIT)
        .max_buf_size(MAX_HEAD)
        // iPXE reads headers case-insensitively; some tools do not.
        .title_case_headers(true);
    let io = TokioIo::new(io::Stall::new(&mut stream, WRITE_LIMIT));
    let served = http.serve_connection(io, TowerToHyperService::new(service));
    let ended = tokio::select! {
        r = served => r,
        // Room for a newcomer: this one is idle.
        _ = slot.evicted.notified() => return,
    };
    let Err(e) = ended else {
        return;
    };
    tracing::debug!(%peer, "http: {e}");
    if e.is_parse() || e.is_parse_too_large() {
        // hyper has answered 400/414/431. Closing with unread input makes
        // the kernel send a reset, which can destroy that answer before the
        // client reads it: read and discard a bounded amount first.
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
        let _ = stream.shutdown().await;
    }
}
