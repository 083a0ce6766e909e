//! `/api/v1/images`, `/templates`, `/servers` and `/df`: what `bootd image`,
//! `template`, `server list` and `df` do, through the same functions.

use super::body::Body;
use super::error::ApiResult;
use super::{schema, Api};
use crate::{cmd_df, cmd_image, cmd_server, cmd_template};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::PathBuf;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<Api> {
    OpenApiRouter::new()
        .routes(routes!(list_images))
        .routes(routes!(remove_image))
        .routes(routes!(list_templates, add_template))
        .routes(routes!(show_template, remove_template))
        .routes(routes!(servers))
        .routes(routes!(df))
}

/// Importing may copy and hash gigabytes: a route of its own, with a
/// longer time limit.
pub fn import_routes() -> OpenApiRouter<Api> {
    OpenApiRouter::new().routes(routes!(import_image))
}

/// `image import NAME FILE`: FILE is a path on the server, in the import
/// directory (`serve --api-import-dir`) or relative to it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportBody {
    name: String,
    /// Raw, qcow2 (VHD/VHDX/VMDK/VDI through qemu-img), on the server.
    #[schema(value_type = String)]
    path: PathBuf,
}

/// `template add`: the texts themselves, not files.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateBody {
    name: String,
    image: String,
    /// iPXE script template (minijinja); default: the built-in sanboot.
    script: Option<String>,
    /// cloud-init user-data template (at most 64 KiB).
    user_data: Option<String>,
}

/// Every stored image version (`image list --json`).
#[utoipa::path(get, path = "/images", tag = "images",
    responses((status = 200, description = "Image versions", body = Vec<schema::ImageVersion>)))]
async fn list_images(State(api): State<Api>) -> ApiResult<Json<Value>> {
    Ok(Json(api.blocking(|_, s| cmd_image::list_json(s)).await?))
}

/// Stores a file on the server as the next version of `name` (`image import`).
#[utoipa::path(post, path = "/images", tag = "images", request_body = ImportBody,
    responses((status = 201, description = "The stored version", body = schema::StoredImage)))]
async fn import_image(
    State(api): State<Api>,
    Body(b): Body<ImportBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let file = super::paths::importable(&api.import_dir, &b.path)?;
    let v = api
        .blocking_long(move |dd, s| {
            let img = crate::import::import(dd, s, &b.name, &file)?;
            let allocated = crate::datadir::allocated_bytes(&img.path);
            Ok(cmd_image::stored_json(&img, allocated, json!({})))
        })
        .await?;
    Ok((StatusCode::CREATED, Json(v)))
}

/// Deletes every version of an image (`image rm`; refused while used).
#[utoipa::path(delete, path = "/images/{name}", tag = "images",
    params(("name" = String, Path, description = "Image name")),
    responses((status = 200, description = "The versions removed", body = schema::RemovedImage)))]
async fn remove_image(State(api): State<Api>, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    let v = api
        .blocking(move |_, s| {
            let removed = cmd_image::remove(s, &name)?;
            Ok(json!({
                "removed": name,
                "versions": removed.iter().map(|i| i.version).collect::<Vec<_>>(),
            }))
        })
        .await?;
    Ok(Json(v))
}

/// Every template (`template list --json`; user-data only as a flag).
#[utoipa::path(get, path = "/templates", tag = "templates",
    responses((status = 200, description = "Templates", body = Vec<schema::Template>)))]
async fn list_templates(State(api): State<Api>) -> ApiResult<Json<Value>> {
    let v = api
        .blocking(|_, s| {
            Ok(json!(s
                .templates()?
                .iter()
                .map(cmd_template::template_json)
                .collect::<Vec<_>>()))
        })
        .await?;
    Ok(Json(v))
}

/// Adds a template (`template add`), its script and user-data checked by a
/// trial render first.
#[utoipa::path(post, path = "/templates", tag = "templates", request_body = TemplateBody,
    responses((status = 201, description = "The template", body = schema::Template)))]
async fn add_template(
    State(api): State<Api>,
    Body(b): Body<TemplateBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    if let Some(t) = &b.script {
        cmd_template::check_script("script", t)?;
    }
    if let Some(t) = &b.user_data {
        cmd_template::check_user_data("user_data", t)?;
    }
    let v = api
        .blocking(move |_, s| {
            let t = cmd_template::add(
                s,
                &b.name,
                &b.image,
                b.script.as_deref(),
                b.user_data.as_deref(),
            )?;
            Ok(cmd_template::template_json(&t))
        })
        .await?;
    Ok((StatusCode::CREATED, Json(v)))
}

/// One template.
#[utoipa::path(get, path = "/templates/{name}", tag = "templates",
    params(("name" = String, Path, description = "Template name")),
    responses((status = 200, description = "The template", body = schema::Template)))]
async fn show_template(State(api): State<Api>, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    let v = api
        .blocking(move |_, s| Ok(cmd_template::template_json(&s.template(&name)?)))
        .await?;
    Ok(Json(v))
}

/// Deletes a template (`template rm`; refused while nodes use it).
#[utoipa::path(delete, path = "/templates/{name}", tag = "templates",
    params(("name" = String, Path, description = "Template name")),
    responses((status = 200, description = "The template removed", body = schema::Template)))]
async fn remove_template(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let v = api
        .blocking(move |_, s| Ok(cmd_template::template_json(&s.remove_template(&name)?)))
        .await?;
    Ok(Json(v))
}

/// The servers sharing the registry (`server list --json`).
#[utoipa::path(get, path = "/servers", tag = "fleet",
    responses((status = 200, description = "Servers", body = Vec<schema::Server>)))]
async fn servers(State(api): State<Api>) -> ApiResult<Json<Value>> {
    Ok(Json(api.blocking(|_, s| cmd_server::list_json(s)).await?))
}

/// Physical against logical bytes (`df --json`).
#[utoipa::path(get, path = "/df", tag = "fleet",
    responses((status = 200, description = "Space", body = schema::Df)))]
async fn df(State(api): State<Api>) -> ApiResult<Json<Value>> {
    Ok(Json(
        api.blocking(|dd, s| cmd_df::report_json(dd, s)).await?,
    ))
}
