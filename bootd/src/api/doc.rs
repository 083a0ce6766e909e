//! The OpenAPI 3 document: the paths come from the handlers' own
//! `#[utoipa::path]` attributes as they are routed (utoipa-axum), so the
//! document lists exactly the routes the router has; this adds what is
//! common to all of them (the bearer scheme, the error shape).

use super::Api;
use std::sync::{Arc, OnceLock};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{InfoBuilder, OpenApi, OpenApiBuilder};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The document as served; set once when the router is made.
static TEXT: OnceLock<Arc<String>> = OnceLock::new();

pub fn base() -> OpenApi {
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("bootd API")
                .version("1")
                .description(Some(
                    "The operator API of `bootd serve --api-listen`. Every route but this \
                     document needs `Authorization: Bearer TOKEN` (`bootd token add NAME \
                     [--read-only]`); a read-only token may only GET. Errors are \
                     `{\"error\": {\"code\": \"snake_case\", \"message\": \"...\"}}`.",
                ))
                .build(),
        )
        .build()
}

/// The bearer scheme, required by every operation unless it says otherwise.
pub fn finish(doc: &mut OpenApi) {
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("A token from `bootd token add`"))
                .build(),
        ),
    );
    doc.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
        "bearer",
        Vec::<String>::new(),
    )]);
    let text = doc.to_pretty_json().unwrap_or_default();
    let _ = TEXT.set(Arc::new(text));
}

pub fn routes() -> OpenApiRouter<Api> {
    OpenApiRouter::new().routes(routes!(openapi))
}

/// This document (no token needed).
#[utoipa::path(get, path = "/openapi.json", tag = "meta", security(()),
    responses((status = 200, description = "The OpenAPI 3 document", content_type = "application/json", body = Object)))]
async fn openapi() -> impl axum::response::IntoResponse {
    let text = TEXT
        .get()
        .map(|t| t.as_str().to_owned())
        .unwrap_or_default();
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        text,
    )
}
