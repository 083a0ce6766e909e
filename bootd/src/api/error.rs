//! The API's one error shape: `{"error": {"code", "message"}}` with a
//! stable snake_case code and the HTTP status that goes with it. Command
//! failures carry the CLI's own one-line message.

use crate::store::StoreError;
use axum::extract::rejection::JsonRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn unauthorized(message: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// Well-formed JSON that asks for something impossible (both of two
    /// exclusive fields, say): 422 like a body of the wrong shape.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut r = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"bootd\""),
            );
        }
        r
    }
}

/// A failed command: the registry's errors by kind, anything else (a bad
/// MAC, a file that is not an image, a template that does not render) as
/// the request's fault with the CLI's message. Internal failures of the
/// registry itself are 500s with their message (it never holds secrets:
/// the registry URL is printed without its password).
impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        let message = format!("{e:#}");
        let store = e.chain().find_map(|c| c.downcast_ref::<StoreError>());
        let (status, code) = match store {
            Some(StoreError::NotFound { .. }) => (StatusCode::NOT_FOUND, "not_found"),
            Some(StoreError::Duplicate { .. }) => (StatusCode::CONFLICT, "already_exists"),
            Some(StoreError::InUse { .. }) => (StatusCode::CONFLICT, "in_use"),
            Some(_) => (StatusCode::INTERNAL_SERVER_ERROR, "registry_error"),
            None => (StatusCode::UNPROCESSABLE_ENTITY, "rejected"),
        };
        Self::new(status, code, message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        anyhow::Error::from(e).into()
    }
}

/// A body that is not the JSON a route takes: too large (413), not JSON
/// (415 without the content type, 400 when it does not parse), or JSON of
/// the wrong shape, unknown fields included (422).
impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let status = r.status();
        let code = match &r {
            JsonRejection::JsonDataError(_) => "invalid_body",
            JsonRejection::JsonSyntaxError(_) => "malformed_json",
            JsonRejection::MissingJsonContentType(_) => "unsupported_media_type",
            _ if status == StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
            _ => "bad_body",
        };
        Self::new(status, code, r.body_text())
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
