//! The OpenAPI 3 document: the paths come from the handlers' own
//! `#[utoipa::path]` attributes as they are routed (utoipa-axum), so the
//! document lists exactly the routes the router has; this adds what is
//! common to all of them (the bearer scheme, the error shape).

use super::{schema, Api};
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
    errors(doc);
    let text = doc.to_pretty_json().unwrap_or_default();
    let _ = TEXT.set(Arc::new(text));
}

/// The error answers every operation may give, in the one error shape;
/// and the event stream's payloads, which no response body names.
fn errors(doc: &mut OpenApi) {
    use utoipa::openapi::path::HttpMethod;
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let components = doc.components.get_or_insert_with(Default::default);
    let mut schemas = Vec::new();
    <schema::ErrorBody as utoipa::ToSchema>::schemas(&mut schemas);
    for (name, s) in [
        (
            "ErrorBody",
            <schema::ErrorBody as utoipa::PartialSchema>::schema(),
        ),
        (
            "StageEvent",
            <schema::StageEvent as utoipa::PartialSchema>::schema(),
        ),
        (
            "IoEvent",
            <schema::IoEvent as utoipa::PartialSchema>::schema(),
        ),
        (
            "Lagged",
            <schema::Lagged as utoipa::PartialSchema>::schema(),
        ),
    ] {
        components.schemas.insert(name.into(), s);
    }
    let mut io = Vec::new();
    <schema::IoEvent as utoipa::ToSchema>::schemas(&mut io);
    components.schemas.extend(schemas.into_iter().chain(io));
    let error = |what: &str| {
        ResponseBuilder::new()
            .description(what)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build()
    };
    for (path, item) in doc.paths.paths.iter_mut() {
        let public = path.ends_with("/openapi.json");
        for (method, op) in [
            (HttpMethod::Get, item.get.as_mut()),
            (HttpMethod::Post, item.post.as_mut()),
            (HttpMethod::Delete, item.delete.as_mut()),
        ] {
            let Some(op) = op else { continue };
            let r = &mut op.responses.responses;
            if !public {
                r.insert("401".into(), error("No token, or an unknown one").into());
            }
            if method != HttpMethod::Get {
                r.insert("403".into(), error("A read-only token").into());
            }
            r.insert(
                "4XX".into(),
                error("Refused: see the error's code and message").into(),
            );
            r.insert(
                "5XX".into(),
                error("The registry failed, or took too long").into(),
            );
        }
    }
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
