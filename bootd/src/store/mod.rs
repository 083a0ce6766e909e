//! The node registry: images, templates and nodes, behind [`Store`]. The
//! embedded backend is SQLite ([`sqlite::SqliteStore`]) in the data
//! directory; several bootd servers share one PostgreSQL registry
//! ([`postgres::PgStore`]). Both keep one schema history ([`schema`]), read
//! rows through one typing ([`rows`]) and answer with the same errors.
//!
//! Every change bumps one `generation` counter in the same transaction, so a
//! running `serve` notices CLI changes by reading one integer.

pub mod postgres;
pub mod records;
pub mod reservations;
pub mod rooted;
pub mod rows;
pub mod schema;
pub mod servers;
pub mod shared;
pub mod sqlite;
#[cfg(test)]
mod tests;
pub mod tokens;
pub mod url;

pub use records::{BootStage, Discovered, LastStage, Records};
pub use reservations::Reservations;
pub use servers::{NewServer, ServerInfo, Servers};
pub use tokens::{TokenInfo, Tokens};

use bootd_plan::Mac;
use std::net::IpAddr;
use std::path::PathBuf;

/// One stored version of a golden image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub id: i64,
    pub name: String,
    pub version: u32,
    pub path: PathBuf,
    /// Virtual size: the raw file's length.
    pub bytes: u64,
    /// Hex SHA-256 of the stored raw file.
    pub sha256: String,
    /// Unix seconds.
    pub created: i64,
}

/// What `image import` hands the store once the file is in place.
#[derive(Debug, Clone)]
pub struct NewImage {
    pub name: String,
    pub version: u32,
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub name: String,
    /// Image name (not version): nodes get its newest version.
    pub image: String,
    pub script: Option<String>,
    /// cloud-init user-data (minijinja text) for the template's nodes that
    /// have none of their own; `None` = bootd's default. May hold secrets:
    /// never printed in listings or logs.
    pub user_data: Option<String>,
    pub created: i64,
}

/// Where a node's overlay is in its life; `serve` only serves `Ready` nodes.
/// One enum for a node's life, shared with the fleet view.
pub use bootd_plan::NodeState;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: i64,
    pub name: String,
    pub mac: Mac,
    /// The image version the overlay sits on, with its name, version, file and size.
    pub image: Image,
    pub template: Option<String>,
    pub ip: Option<IpAddr>,
    pub target_iqn: String,
    pub initiator_iqn: String,
    pub chap_user: String,
    pub chap_secret: String,
    /// What the target proves itself with when the initiator asks (mutual
    /// CHAP); `None` = off.
    pub mutual_chap: Option<MutualChap>,
    pub overlay_path: PathBuf,
    pub state: NodeState,
    /// Bumped by every change to the node; `serve` rebuilds the target when it moves.
    pub revision: i64,
    /// The node's own cloud-init user-data (minijinja text), which wins over
    /// its template's; `None` = none of its own. May hold secrets: never
    /// printed in listings or logs.
    pub user_data: Option<String>,
    /// Fresh overlays the node has had: 1 once its first is ready, and one
    /// more for every reset, move and image upgrade (0 while the first is
    /// being made). Part of its cloud-init instance-id, so a fresh disk
    /// runs first boot again.
    pub overlay_generation: u64,
    /// The server that has claimed the node (see `store::servers`); `None`
    /// until one has.
    pub owner: Option<String>,
    /// Moves on with every claim: the fencing epoch of the current owner.
    pub owner_epoch: u64,
    /// The server `node move --server` pinned the node to, if any.
    pub pinned_server: Option<String>,
    pub created: i64,
}

/// The target's side of mutual CHAP for one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MutualChap {
    pub user: String,
    pub secret: String,
}

impl MutualChap {
    /// The name iPXE and open-iscsi check the target's answer against. One
    /// name for every node (the secret is what is per node); no ':' or '@',
    /// which dracut's `netroot=iscsi:USER:SECRET:USER_IN:SECRET_IN@...`
    /// splits on.
    pub const USER: &'static str = "bootd";

    /// Fresh credentials for a node whose initiator secret is
    /// `initiator_secret`. RFC 7143 (section 12.1.3) forbids one secret for
    /// both directions, and so do Windows and open-iscsi.
    pub fn generate(initiator_secret: &str) -> Self {
        loop {
            let secret = crate::names::chap_secret();
            if secret != initiator_secret {
                return Self {
                    user: Self::USER.into(),
                    secret,
                };
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct NewNode {
    pub name: String,
    pub mac: Mac,
    pub image_id: i64,
    pub template: Option<String>,
    pub ip: Option<IpAddr>,
    pub target_iqn: String,
    pub initiator_iqn: String,
    pub chap_user: String,
    pub chap_secret: String,
    pub overlay_path: PathBuf,
    /// The node's own cloud-init user-data; see [`Node::user_data`].
    pub user_data: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{kind} {name:?} does not exist")]
    NotFound { kind: &'static str, name: String },
    #[error("{kind} with {field} {value:?} already exists")]
    Duplicate {
        kind: &'static str,
        field: &'static str,
        value: String,
    },
    #[error("{kind} {name:?} is in use by {by}")]
    InUse {
        kind: &'static str,
        name: String,
        by: String,
    },
    #[error("database schema version {found} is newer than this bootd understands ({known})")]
    SchemaTooNew { found: i64, known: i64 },
    #[error("database holds an invalid value: {0}")]
    Corrupt(String),
    #[error("database {path}", path = path.display())]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("database")]
    Db(#[from] rusqlite::Error),
    /// `registry` is the URL without its password.
    #[error("registry {registry}")]
    Connect {
        registry: String,
        source: ::postgres::Error,
    },
    #[error("registry")]
    Pg(#[from] ::postgres::Error),
    #[error("watching the database for changes")]
    Watch(#[source] std::io::Error),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The registry's operations; each write is one transaction that also bumps
/// the generation.
/// Wakes a registry watcher when the registry may have changed.
pub trait ChangeFeed: Send {
    /// Blocks until the registry may have changed (true) or `timeout`
    /// passes (false).
    fn wait(&mut self, timeout: std::time::Duration) -> bool;
}

pub trait Store: Records + Reservations + Servers + Tokens + Send {
    /// A feed of change notifications from this registry.
    fn changes(&self) -> Result<Box<dyn ChangeFeed>>;
    /// Changes so far; moves on every committed write.
    fn generation(&self) -> Result<u64>;

    /// Adds an image version; `Duplicate` if that name and version exist.
    fn add_image(&mut self, image: &NewImage) -> Result<Image>;
    /// Every version of every image, by name then version.
    fn images(&self) -> Result<Vec<Image>>;
    /// The newest version of `name`.
    fn latest_image(&self, name: &str) -> Result<Image>;
    /// Highest version stored under `name` (0 when none).
    fn max_image_version(&self, name: &str) -> Result<u32>;
    /// Removes every version of `name`; refused while a node or template uses it.
    fn remove_image(&mut self, name: &str) -> Result<Vec<Image>>;

    /// `script`: iPXE script template; `user_data`: cloud-init user-data
    /// template. Both checked by the caller.
    fn add_template(
        &mut self,
        name: &str,
        image: &str,
        script: Option<&str>,
        user_data: Option<&str>,
    ) -> Result<Template>;
    fn templates(&self) -> Result<Vec<Template>>;
    fn template(&self, name: &str) -> Result<Template>;
    /// Refused while nodes were created from it.
    fn remove_template(&mut self, name: &str) -> Result<Template>;

    /// Adds a node in state `Creating`.
    fn add_node(&mut self, node: &NewNode) -> Result<Node>;
    fn nodes(&self) -> Result<Vec<Node>>;
    /// By name or by (normalised) MAC.
    fn node(&self, name_or_mac: &str) -> Result<Node>;
    fn set_node_state(&mut self, name: &str, state: NodeState) -> Result<Node>;
    /// A fresh overlay over `image_id` is in place: the node is `Ready` and
    /// its overlay generation moves on by one. Every path that writes a new
    /// overlay for a node ends here (add, reset, move, image upgrade).
    fn node_overlay_ready(&mut self, name: &str, image_id: i64) -> Result<Node>;
    /// Turns the node's mutual CHAP on (`Some`) or off; moves its revision,
    /// so a running serve rebuilds the node's target with the new credentials.
    fn set_mutual_chap(&mut self, name: &str, mutual: Option<&MutualChap>) -> Result<Node>;
    fn remove_node(&mut self, name: &str) -> Result<Node>;
}
