//! `/api/v1/nodes` and `/api/v1/discovered`: what `bootd node ...` does,
//! through the same functions.

use super::auth::Caller;
use super::body::Body;
use super::error::{ApiError, ApiResult};
use super::{schema, Api};
use crate::cmd_node::{self, discovered};
use crate::lifecycle::AddOptions;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::IpAddr;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<Api> {
    OpenApiRouter::new()
        .routes(routes!(list, add))
        .routes(routes!(show, remove))
        .routes(routes!(reset))
        .routes(routes!(move_node))
        .routes(routes!(boot))
        .routes(routes!(list_discovered))
        .routes(routes!(adopt))
}

/// `node add`: `image` or `template` (one of them), the rest optional.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewNodeBody {
    /// In any common spelling (`52:54:00:ab:cd:01`, `52-54-00-AB-CD-01`).
    mac: String,
    image: Option<String>,
    template: Option<String>,
    /// Default: `node-<mac without colons>`.
    name: Option<String>,
    #[schema(value_type = Option<String>)]
    ip: Option<IpAddr>,
    #[serde(default)]
    mutual_chap: bool,
    /// The node's own cloud-init user-data (text, at most 64 KiB).
    user_data: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ResetBody {
    /// Also move the node to the newest version of its image.
    #[serde(default)]
    latest: bool,
}

/// `node move`: `latest: true`, or `server` (`"none"` unpins).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveBody {
    #[serde(default)]
    latest: bool,
    server: Option<String>,
}

/// `node adopt`: `macs`, or `all: true`; `image` or `template`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdoptBody {
    #[serde(default)]
    macs: Vec<String>,
    #[serde(default)]
    all: bool,
    image: Option<String>,
    template: Option<String>,
    #[serde(default)]
    mutual_chap: bool,
    user_data: Option<String>,
}

fn options(mutual_chap: bool, user_data: Option<String>) -> anyhow::Result<AddOptions> {
    if let Some(t) = &user_data {
        crate::cmd_template::check_user_data("user_data", t)?;
    }
    Ok(AddOptions {
        mutual_chap,
        user_data,
    })
}

fn source(image: Option<String>, template: Option<String>) -> ApiResult<crate::lifecycle::Source> {
    if image.is_some() == template.is_some() {
        return Err(ApiError::invalid("give exactly one of image and template"));
    }
    Ok(cmd_node::source(image, template)?)
}

/// A node as `node show --json` has it; the CHAP secrets only for a
/// token that may change things.
fn shown(v: Value, caller: &Caller) -> Value {
    if caller.read_only {
        cmd_node::without_secrets(v)
    } else {
        v
    }
}

/// Every node (`node list --json`): no secrets.
#[utoipa::path(get, path = "/nodes", tag = "nodes",
    responses((status = 200, description = "Nodes", body = Vec<schema::Node>)))]
async fn list(State(api): State<Api>) -> ApiResult<Json<Value>> {
    Ok(Json(api.blocking(|_, s| cmd_node::list_json(s)).await?))
}

/// Registers a machine (`node add`).
#[utoipa::path(post, path = "/nodes", tag = "nodes", request_body = NewNodeBody,
    responses((status = 201, description = "The node, as `node show --json`", body = schema::NodeDetail)))]
async fn add(
    State(api): State<Api>,
    Body(b): Body<NewNodeBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let source = source(b.image, b.template)?;
    let opts = options(b.mutual_chap, b.user_data)?;
    let v = api
        .blocking(move |dd, s| {
            let n = crate::lifecycle::add_with(dd, s, &b.mac, &source, b.name, b.ip, &opts)?;
            cmd_node::show_json(s, &n)
        })
        .await?;
    Ok((StatusCode::CREATED, Json(v)))
}

/// One node by name or MAC (`node show --json`), with the stages of its
/// last boot; CHAP secrets only for a full token.
#[utoipa::path(get, path = "/nodes/{node}", tag = "nodes",
    params(("node" = String, Path, description = "Name or MAC")),
    responses((status = 200, description = "The node", body = schema::NodeDetail)))]
async fn show(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(node): Path<String>,
) -> ApiResult<Json<Value>> {
    let v = api
        .blocking(move |_, s| {
            let n = cmd_node::lookup(s, &node)?;
            cmd_node::show_json(s, &n)
        })
        .await?;
    Ok(Json(shown(v, &caller)))
}

/// Deletes the node and its overlay (`node rm`).
#[utoipa::path(delete, path = "/nodes/{node}", tag = "nodes",
    params(("node" = String, Path, description = "Name or MAC")),
    responses((status = 200, description = "What was removed", body = schema::RemovedNode)))]
async fn remove(State(api): State<Api>, Path(node): Path<String>) -> ApiResult<Json<Value>> {
    let v = api
        .blocking(move |dd, s| {
            let n = cmd_node::lookup(s, &node)?;
            crate::lifecycle::remove(dd, s, &n)?;
            Ok(json!({"removed": n.name, "mac": n.mac.to_string()}))
        })
        .await?;
    Ok(Json(v))
}

/// Discards the node's writes (`node reset [--latest]`).
#[utoipa::path(post, path = "/nodes/{node}/reset", tag = "nodes", request_body = ResetBody,
    params(("node" = String, Path, description = "Name or MAC")),
    responses((status = 200, description = "The node after the reset", body = schema::NodeDetail)))]
async fn reset(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(node): Path<String>,
    Body(b): Body<ResetBody>,
) -> ApiResult<Json<Value>> {
    let v = api
        .blocking(move |dd, s| {
            let n = cmd_node::reset(dd, s, &node, b.latest)?;
            cmd_node::show_json(s, &n)
        })
        .await?;
    Ok(Json(shown(v, &caller)))
}

/// `node move --latest` or `node move --server S` (`"none"` unpins).
#[utoipa::path(post, path = "/nodes/{node}/move", tag = "nodes", request_body = MoveBody,
    params(("node" = String, Path, description = "Name or MAC")),
    responses((status = 200, description = "The node after the move", body = schema::NodeDetail)))]
async fn move_node(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(node): Path<String>,
    Body(b): Body<MoveBody>,
) -> ApiResult<Json<Value>> {
    if b.latest == b.server.is_some() {
        return Err(ApiError::invalid(
            "give exactly one of latest: true and server",
        ));
    }
    let v = api
        .blocking(move |dd, s| {
            let n = match &b.server {
                Some(server) => cmd_node::pin(s, &node, server)?,
                None => cmd_node::reset(dd, s, &node, true)?,
            };
            cmd_node::show_json(s, &n)
        })
        .await?;
    Ok(Json(shown(v, &caller)))
}

/// The stages of the node's last boot (as in `node show`).
#[utoipa::path(get, path = "/nodes/{node}/boot", tag = "nodes",
    params(("node" = String, Path, description = "Name or MAC")),
    responses((status = 200, description = "The last boot", body = schema::BootTimeline)))]
async fn boot(State(api): State<Api>, Path(node): Path<String>) -> ApiResult<Json<Value>> {
    let v = api
        .blocking(move |_, s| {
            let n = cmd_node::lookup(s, &node)?;
            let stages = s.boot_stages(&n.mac.to_string())?;
            Ok(json!({
                "node": n.name,
                "mac": n.mac.to_string(),
                "stages": cmd_node::stages::to_json(&stages),
            }))
        })
        .await?;
    Ok(Json(v))
}

/// Machines that asked to boot unregistered (`node list --discovered`).
#[utoipa::path(get, path = "/discovered", tag = "nodes",
    responses((status = 200, description = "Discovered machines", body = Vec<schema::Discovered>)))]
async fn list_discovered(State(api): State<Api>) -> ApiResult<Json<Value>> {
    Ok(Json(api.blocking(|_, s| discovered::list_json(s)).await?))
}

/// Registers discovered machines as nodes (`node adopt`); `all: true`
/// adopts every one (the API has no terminal to confirm on).
#[utoipa::path(post, path = "/discovered/adopt", tag = "nodes", request_body = AdoptBody,
    responses((status = 200, description = "The nodes made, without secrets", body = Vec<schema::Node>)))]
async fn adopt(State(api): State<Api>, Body(b): Body<AdoptBody>) -> ApiResult<Json<Value>> {
    if b.all != b.macs.is_empty() {
        return Err(ApiError::invalid("give exactly one of macs and all: true"));
    }
    let source = source(b.image, b.template)?;
    let opts = options(b.mutual_chap, b.user_data)?;
    let v = api
        .blocking(move |dd, s| {
            let which = if b.all {
                discovered::Which::All
            } else {
                discovered::Which::Macs(&b.macs)
            };
            let added = discovered::adopt_each(dd, s, which, &source, &opts, |_| {})?;
            cmd_node::listed_json(s, &added)
        })
        .await?;
    Ok(Json(v))
}
