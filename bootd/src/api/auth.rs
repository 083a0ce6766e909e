//! Bearer tokens: minted by `bootd token add`, kept in the registry only as
//! their SHA-256, checked on every API request. A token is `bootd_` and 64
//! hex digits (256 random bits), so its hash needs no salt or stretching.
//! Tokens never reach a log line: failures say why, not what was sent.

use super::error::ApiError;
use super::{schema, Api};
use axum::extract::{Extension, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::Json;
use rand::RngCore;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

const PREFIX: &str = "bootd_";
/// `last_used` is written at most this often per token (seconds): a busy
/// dashboard must not turn every read into a registry write.
const TOUCH_EVERY: i64 = 60;

/// A fresh token: 256 bits from the OS's generator.
pub fn mint() -> String {
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    format!("{PREFIX}{}", hex::encode(raw))
}

/// What the registry keeps of a token.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Equal without an early exit: the time taken does not tell how much of a
/// guess matched.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Who a request comes from: for handlers that show secrets, and for
/// `GET /token` (a page learns what its token may do without trying).
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub read_only: bool,
    /// Unix seconds.
    pub created: i64,
}

pub fn routes() -> OpenApiRouter<Api> {
    OpenApiRouter::new().routes(routes!(whoami))
}

/// The token this request carries: its name and whether it may change
/// anything (never the token or its hash).
#[utoipa::path(get, path = "/token", tag = "meta",
    responses((status = 200, description = "The caller's token", body = schema::TokenSelf)))]
async fn whoami(Extension(caller): Extension<Caller>) -> Json<Value> {
    Json(json!({
        "name": caller.name,
        "read_only": caller.read_only,
        "created": caller.created,
    }))
}

/// The token a request carries, if any, in `Authorization: Bearer T`.
fn bearer(req: &Request) -> Option<&str> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Whether `method` changes nothing (a read-only token may use it).
fn reads_only(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Every `/api/v1` request but the OpenAPI document: no token or an
/// unknown one is 401, a read-only token on a change is 403.
pub async fn require(
    State(api): State<Api>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(token) = bearer(&req) else {
        return Err(ApiError::unauthorized(
            "this API needs a bearer token (bootd token add NAME)",
        ));
    };
    let digest = hash(token);
    let found = api
        .blocking(move |_, store| {
            let tokens = store.tokens()?;
            let mut hit = None;
            // Every stored hash is compared, whichever matches.
            for t in tokens {
                if same(t.sha256.as_bytes(), digest.as_bytes()) {
                    hit = Some(t);
                }
            }
            if let Some(t) = &hit {
                let now = crate::store::shared::now();
                if t.last_used.is_none_or(|u| now - u >= TOUCH_EVERY) {
                    store.token_used(&t.name, now)?;
                }
            }
            Ok(hit)
        })
        .await?;
    let Some(t) = found else {
        return Err(ApiError::unauthorized("unknown or revoked token"));
    };
    if t.read_only && !reads_only(req.method()) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "read_only_token",
            format!("token {:?} may only read", t.name),
        ));
    }
    if !reads_only(req.method()) {
        // Who changed what, for the operator's log: the token's name only.
        tracing::info!(token = %t.name, "api {} /api/v1{}", req.method(), req.uri().path());
    }
    req.extensions_mut().insert(Caller {
        name: t.name,
        read_only: t.read_only,
        created: t.created,
    });
    Ok(next.run(req).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_hashed() {
        let (a, b) = (mint(), mint());
        assert_ne!(a, b);
        assert_eq!(a.len(), PREFIX.len() + 64);
        assert_eq!(hash(&a).len(), 64);
        assert_ne!(hash(&a), hash(&b));
        assert!(same(hash(&a).as_bytes(), hash(&a).as_bytes()));
        assert!(!same(hash(&a).as_bytes(), hash(&b).as_bytes()));
        assert!(!same(b"ab", b"abc"));
    }

    #[test]
    fn the_bearer_header_is_read_strictly() {
        let with = |v: &[u8]| {
            let req = axum::http::Request::builder()
                .header(header::AUTHORIZATION, v)
                .body(axum::body::Body::empty())
                .ok()?;
            bearer(&req).map(str::to_string)
        };
        assert_eq!(with(b"Bearer abc").as_deref(), Some("abc"));
        assert_eq!(with(b"bearer  abc ").as_deref(), Some("abc"));
        assert_eq!(with(b"Basic abc"), None);
        assert_eq!(with(b"Bearer"), None);
        assert_eq!(with(b"Bearer \xff\xfe"), None);
        assert!(reads_only(&Method::GET) && !reads_only(&Method::POST));
        assert!(!reads_only(&Method::DELETE) && !reads_only(&Method::PUT));
    }
}
