//! The shapes of the API's answers, for the OpenAPI document only: the
//! answers themselves are the CLI's `--json` output (built where the CLI
//! builds it). `api_openapi`'s contract test checks every answer against
//! these, so a field added to one and not the other fails it.
#![allow(dead_code)]

use utoipa::ToSchema;

/// Every error.
#[derive(ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(ToSchema)]
pub struct ErrorDetail {
    /// Stable, snake_case: `unauthorized`, `read_only_token`, `not_found`,
    /// `already_exists`, `in_use`, `malformed_json`, `invalid_body`,
    /// `unsupported_media_type`, `body_too_large`, `rejected`,
    /// `no_such_route`, `method_not_allowed`, `timeout`,
    /// `too_many_streams`, `registry_error`, `internal`.
    code: String,
    /// One line, as the CLI would print it.
    message: String,
}

/// The caller's own token (`GET /token`): never the token or its hash.
#[derive(ToSchema)]
pub struct TokenSelf {
    /// As given to `bootd token add NAME`.
    name: String,
    /// May only read (GET).
    read_only: bool,
    /// Unix seconds.
    created: i64,
}

/// A node as listed (`node list --json`): no secrets.
#[derive(ToSchema)]
pub struct Node {
    name: String,
    mac: String,
    /// Image name.
    image: String,
    image_version: u32,
    image_path: String,
    template: Option<String>,
    ip: Option<String>,
    target_iqn: String,
    initiator_iqn: String,
    chap_user: String,
    /// `null` while mutual CHAP is off.
    mutual_chap_user: Option<String>,
    overlay_path: String,
    /// Bytes the overlay takes on disk.
    overlay_bytes: u64,
    /// The node's disk size (its image's).
    virtual_bytes: u64,
    /// `creating`, `ready` or `releasing`.
    state: String,
    /// The server serving it, if one has claimed it.
    owner: Option<String>,
    owner_epoch: u64,
    pinned_server: Option<String>,
    /// Unix seconds.
    created: i64,
    /// Where its last boot got to; `null` if never seen booting. The
    /// whole timeline is `GET /nodes/{node}/boot`.
    last_stage: Option<LastStage>,
}

/// The newest stage of a node's last boot.
#[derive(ToSchema)]
pub struct LastStage {
    /// As in [`Stage`].
    stage: String,
    /// Unix milliseconds.
    at_ms: i64,
    /// When the boot's first stage was seen (Unix milliseconds).
    boot_started_ms: i64,
}

/// One node (`node show --json`): [`Node`] and more; the CHAP secrets
/// only for a full (not read-only) token.
#[derive(ToSchema)]
pub struct NodeDetail {
    name: String,
    mac: String,
    image: String,
    image_version: u32,
    image_path: String,
    template: Option<String>,
    ip: Option<String>,
    target_iqn: String,
    initiator_iqn: String,
    chap_user: String,
    /// Full tokens only.
    chap_secret: Option<String>,
    mutual_chap_user: Option<String>,
    /// Full tokens only; `null` while mutual CHAP is off.
    mutual_chap_secret: Option<String>,
    overlay_path: String,
    overlay_bytes: u64,
    virtual_bytes: u64,
    state: String,
    owner: Option<String>,
    owner_epoch: u64,
    pinned_server: Option<String>,
    created: i64,
    /// Where its cloud-init user-data comes from: `own`, `template` or
    /// `default` (never the text).
    user_data: String,
    /// Fresh overlays it has had (moves on with every reset and move).
    overlay_generation: u64,
    last_boot: Vec<Stage>,
}

/// One stage of a boot.
#[derive(ToSchema)]
pub struct Stage {
    /// `dhcp`, `tftp`, `ipxe-dhcp`, `script`, `cloud-init`,
    /// `iscsi-login-N`, `iscsi-logout-N`.
    stage: String,
    /// Unix milliseconds.
    at_ms: i64,
    detail: String,
}

/// The stages of a node's last boot.
#[derive(ToSchema)]
pub struct BootTimeline {
    node: String,
    mac: String,
    stages: Vec<Stage>,
}

#[derive(ToSchema)]
pub struct RemovedNode {
    removed: String,
    mac: String,
}

/// A machine that asked to boot unregistered.
#[derive(ToSchema)]
pub struct Discovered {
    mac: String,
    /// DHCP option 93.
    arch: Option<u16>,
    vendor_class: String,
    /// Asked from iPXE rather than the firmware.
    ipxe: bool,
    /// Unix seconds.
    first_seen: i64,
    last_seen: i64,
    requests: u64,
}

/// A stored image version (`image list --json`).
#[derive(ToSchema)]
pub struct ImageVersion {
    name: String,
    version: u32,
    path: String,
    /// Virtual size.
    bytes: u64,
    allocated_bytes: u64,
    sha256: String,
    /// The newest version of its name.
    latest: bool,
    /// `sha256:HEX`.
    checksum: String,
    /// Nodes on this version.
    nodes: u64,
    created: i64,
}

/// A version just stored.
#[derive(ToSchema)]
pub struct StoredImage {
    name: String,
    version: u32,
    path: String,
    bytes: u64,
    allocated_bytes: u64,
    sha256: String,
}

#[derive(ToSchema)]
pub struct RemovedImage {
    removed: String,
    versions: Vec<u32>,
}

#[derive(ToSchema)]
pub struct Template {
    name: String,
    image: String,
    /// The iPXE script template; `null` = the built-in sanboot.
    script: Option<String>,
    /// Whether it has cloud-init user-data (never the text).
    user_data: bool,
    created: i64,
}

/// A server sharing the registry (`server list --json`).
#[derive(ToSchema)]
pub struct Server {
    id: String,
    /// Its iSCSI portal, `IP:PORT`.
    iscsi: String,
    http_port: u16,
    started_at_ms: i64,
    heartbeat_age_ms: i64,
    live: bool,
    /// Being drained (`bootd server drain`): it hands its nodes to peers.
    draining: bool,
    nodes_owned: u64,
    sessions: u64,
    bytes_served: u64,
}

/// Physical against logical bytes (`df --json`).
#[derive(ToSchema)]
pub struct Df {
    physical_bytes: u64,
    logical_bytes: u64,
    saved_bytes: u64,
    saving_percent: f64,
    images_bytes: u64,
    overlays_bytes: u64,
    images: u64,
    nodes: u64,
    free_bytes: u64,
    reserve_bytes: u64,
    headroom_bytes: u64,
}

/// `event: stage` on `/events`: a boot stage, resolved to its node.
#[derive(ToSchema)]
pub struct StageEvent {
    node: String,
    mac: String,
    stage: String,
    at_ms: i64,
    /// When this boot's first stage was seen.
    boot_started_ms: i64,
    /// This stage began a new boot: earlier stages are gone.
    new_boot: bool,
    detail: String,
}

/// `event: io` on `/events`, every second.
#[derive(ToSchema)]
pub struct IoEvent {
    at_ms: u64,
    interval_ms: u64,
    /// The nodes that moved bytes in the interval.
    nodes: Vec<IoNode>,
}

#[derive(ToSchema)]
pub struct IoNode {
    node: String,
    target: String,
    /// Since serve started.
    read_bytes: u64,
    written_bytes: u64,
    read_bytes_per_s: u64,
    written_bytes_per_s: u64,
}

/// `event: lagged` on `/events`: the reader fell behind.
#[derive(ToSchema)]
pub struct Lagged {
    missed: u64,
}
