//! What every backend does the same way before and after its SQL: the text
//! form of stored values, the unique fields a new node is checked against,
//! and the wording of the errors callers see.

use super::{NewImage, NewNode, Result, StoreError};
use std::path::Path;

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub fn path_text(p: &Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| StoreError::Corrupt(format!("path {} is not UTF-8", p.display())))
}

pub fn image_bytes(image: &NewImage) -> Result<i64> {
    i64::try_from(image.bytes)
        .map_err(|_| StoreError::Corrupt(format!("image size {}", image.bytes)))
}

pub fn duplicate_image(image: &NewImage) -> StoreError {
    StoreError::Duplicate {
        kind: "image",
        field: "version",
        value: format!("{} v{}", image.name, image.version),
    }
}

pub fn not_found(kind: &'static str, name: &str) -> StoreError {
    StoreError::NotFound {
        kind,
        name: name.to_string(),
    }
}

/// A new node's values as stored: the MAC in lower-case colon form, the
/// address as `IpAddr` prints it; rows are parsed back into these types.
pub struct NodeText<'a> {
    pub mac: String,
    pub ip: Option<String>,
    pub overlay: &'a str,
}

impl<'a> NodeText<'a> {
    pub fn of(node: &'a NewNode) -> Result<Self> {
        Ok(Self {
            mac: node.mac.to_string(),
            ip: node.ip.map(|i| i.to_string()),
            overlay: path_text(&node.overlay_path)?,
        })
    }

    /// (column, what the error calls it, value) for every unique column a
    /// new node must not collide on, checked in this order.
    pub fn unique_fields(
        &'a self,
        node: &'a NewNode,
    ) -> Vec<(&'static str, &'static str, &'a str)> {
        let mut v = vec![
            ("name", "name", node.name.as_str()),
            ("mac", "MAC", self.mac.as_str()),
            ("target_iqn", "target IQN", node.target_iqn.as_str()),
            (
                "initiator_iqn",
                "initiator IQN",
                node.initiator_iqn.as_str(),
            ),
            ("overlay_path", "overlay", self.overlay),
        ];
        if let Some(ip) = &self.ip {
            v.push(("ip", "IP", ip.as_str()));
        }
        v
    }
}

/// `InUse` when `users` (the names of what still uses the `what` (kind,
/// name) about to be removed) is not empty.
pub fn refuse_if_used(what: (&'static str, &str), user_kind: &str, users: &[String]) -> Result<()> {
    if users.is_empty() {
        return Ok(());
    }
    Err(StoreError::InUse {
        kind: what.0,
        name: what.1.to_string(),
        by: describe(user_kind, users),
    })
}

/// "node a", "nodes a, b, c", "nodes a, b, c and 7 more".
fn describe(kind: &str, names: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut s = format!(
        "{kind}{} {}",
        if names.len() == 1 { "" } else { "s" },
        names
            .iter()
            .take(SHOWN)
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    );
    if names.len() > SHOWN {
        s.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    s
}

/// The queries that list what uses an image or a template, by name, in
/// name order; `$1` is the name in both dialects (SQLite reads `$1` as
/// its first parameter too).
pub const NODES_ON_IMAGE: &str = "SELECT n.name FROM nodes n JOIN images i ON i.id = n.image_id
     WHERE i.name = $1 ORDER BY n.name";
pub const TEMPLATES_ON_IMAGE: &str = "SELECT name FROM templates WHERE image = $1 ORDER BY name";
pub const NODES_ON_TEMPLATE: &str = "SELECT name FROM nodes WHERE template = $1 ORDER BY name";
