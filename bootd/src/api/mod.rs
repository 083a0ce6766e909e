//! The operator API (`serve --api-listen`): JSON under `/api/v1` on a
//! listener of its own (never the boot network's HTTP port), bearer tokens,
//! an OpenAPI document made from the handlers, and a server-sent-events
//! stream of boot events. Handlers call the same functions the CLI's
//! commands do, so the two cannot drift apart.

pub mod auth;
mod body;
mod dashboard;
mod doc;
pub mod error;
pub mod events;
mod fleet;
mod listen;
mod nodes;
mod paths;
mod pool;
mod schema;

use crate::datadir::DataDir;
use crate::store::Store;
use axum::http::StatusCode;
use error::{ApiError, ApiResult};
use std::time::Duration;
use utoipa_axum::router::OpenApiRouter;

pub use listen::{serve, Tls};

/// Largest request body taken (JSON; user-data is at most 64 KiB).
pub const MAX_BODY: usize = 1 << 20;
/// Requests handled at once; more wait (the registry is the bottleneck).
const CONCURRENT: usize = 64;
/// A request that takes longer is answered 503 (an import of a large image
/// has longer: see `IMPORT_TIMEOUT`).
const TIMEOUT: Duration = Duration::from_secs(30);
const IMPORT_TIMEOUT: Duration = Duration::from_secs(1800);

/// What every handler shares: the registry's connections (a small pool,
/// see [`pool`]) and the boot-event feed.
#[derive(Clone)]
pub struct Api {
    pool: std::sync::Arc<pool::Pool>,
    feed: events::Feed,
    /// The only directory images are imported from.
    import_dir: std::path::PathBuf,
}

impl Api {
    pub fn new(dd: DataDir, feed: events::Feed, import_dir: std::path::PathBuf) -> Self {
        Self {
            pool: std::sync::Arc::new(pool::Pool::new(dd, pool::SIZE)),
            feed,
            import_dir,
        }
    }

    /// Runs `f` with one of the pool's registry connections, off the
    /// runtime's workers: the store blocks, and PostgreSQL's client may not
    /// run inside a runtime.
    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&DataDir, &mut dyn Store) -> anyhow::Result<T> + Send + 'static,
    ) -> ApiResult<T> {
        let permit = self.pool.turn().await.map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "internal",
                format!("registry connections: {e}"),
            )
        })?;
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || {
            let mut lent = pool.take(permit)?;
            let r = f(pool.data_dir(), lent.store());
            pool.give_back(lent, &r);
            r
        })
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("request handler failed: {e}"),
            )
        })?
        .map_err(ApiError::from)
    }
}

impl Api {
    /// As [`Api::blocking`] with a connection of its own, outside the
    /// pool: an import may take minutes and must not hold one of the
    /// pool's few connections meanwhile.
    pub async fn blocking_long<T: Send + 'static>(
        &self,
        f: impl FnOnce(&DataDir, &mut dyn Store) -> anyhow::Result<T> + Send + 'static,
    ) -> ApiResult<T> {
        let dd = self.pool.data_dir().clone();
        tokio::task::spawn_blocking(move || {
            let mut store = dd.store()?;
            f(&dd, store.as_mut())
        })
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("request handler failed: {e}"),
            )
        })?
        .map_err(ApiError::from)
    }
}

/// The API's router and its OpenAPI document, made from the same routes.
pub fn router(api: Api) -> (axum::Router, utoipa::openapi::OpenApi) {
    use axum::error_handling::HandleErrorLayer;
    use tower::ServiceBuilder;
    let limit = |d: Duration| {
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "timeout",
                    "the request took too long",
                )
            }))
            .layer(tower::timeout::TimeoutLayer::new(d))
    };
    let auth = || axum::middleware::from_fn_with_state(api.clone(), auth::require);
    let guarded = nodes::routes()
        .merge(fleet::routes())
        .merge(events::routes())
        .merge(auth::routes())
        .layer(limit(TIMEOUT))
        .merge(fleet::import_routes().layer(limit(IMPORT_TIMEOUT)))
        .layer(auth());
    let (router, mut doc) = OpenApiRouter::with_openapi(doc::base())
        .nest("/api/v1", guarded.merge(doc::routes()))
        .split_for_parts();
    doc::finish(&mut doc);
    // The dashboard at `/`: static files, no token (the page signs in).
    let router = router
        .merge(dashboard::routes())
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "no_such_route", "no such API route")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "the route does not take this method",
            )
        })
        .layer(
            ServiceBuilder::new()
                .layer(tower::limit::ConcurrencyLimitLayer::new(CONCURRENT))
                .layer(axum::middleware::map_response(json_413))
                .layer(tower_http::limit::RequestBodyLimitLayer::new(MAX_BODY))
                .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY)),
        )
        .with_state(api);
    (router, doc)
}

/// The body-limit layer refuses a declared length over [`MAX_BODY`] with a
/// bare 413 before any handler runs: give it the API's error shape.
async fn json_413<B>(r: axum::http::Response<B>) -> axum::response::Response
where
    B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    use axum::response::IntoResponse;
    let json = r
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if r.status() != StatusCode::PAYLOAD_TOO_LARGE || json {
        return r.map(axum::body::Body::new);
    }
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("request bodies are at most {MAX_BODY} bytes"),
    )
    .into_response()
}
