//! Registry rows into typed values, for every backend: the column lists
//! (one order, shared by every backend's queries) and the parsing of each
//! column at the store boundary. A value that does not parse fails the read,
//! naming the column; a row is never silently dropped.

use super::{BootStage, Discovered, Image, LastStage, MutualChap, Node, NodeState, Template};
use std::path::PathBuf;

/// The columns of a node and its image, in the order [`node_row`] reads.
pub const NODE_SELECT: &str = "
    SELECT n.id, n.name, n.mac, n.template, n.ip, n.target_iqn, n.initiator_iqn,
           n.chap_user, n.chap_secret, n.overlay_path, n.state, n.revision, n.created,
           i.id, i.name, i.version, i.path, i.bytes, i.sha256, i.created,
           n.mutual_user, n.mutual_secret, n.user_data, n.overlay_generation,
           n.owner, n.owner_epoch, n.pinned_server
    FROM nodes n JOIN images i ON i.id = n.image_id";

pub const TEMPLATE_SELECT: &str = "SELECT name, image, script, created, user_data FROM templates";

pub const IMAGE_SELECT: &str = "SELECT id, name, version, path, bytes, sha256, created FROM images";

pub const DISCOVERED_SELECT: &str =
    "SELECT mac, arch, vendor_class, ipxe, first_seen, last_seen, requests FROM discovered";

pub const STAGE_SELECT: &str = "SELECT stage, at_ms, detail FROM boot_stages";

/// Each MAC's newest stage (the one `boot_stages` lists last: latest
/// `at_ms`, then greatest name) and when its boot began. Window functions
/// as both SQLite (3.25+) and PostgreSQL write them.
pub const LAST_STAGE_SELECT: &str = "SELECT mac, stage, at_ms, started FROM (
    SELECT mac, stage, at_ms,
        MIN(at_ms) OVER (PARTITION BY mac) AS started,
        ROW_NUMBER() OVER (PARTITION BY mac ORDER BY at_ms DESC, stage DESC) AS nth
    FROM boot_stages) AS t WHERE nth = 1";

/// One result row as a backend hands it over: typed reads of column `i`,
/// in the backend's own error type.
pub trait Columns {
    type Error;
    fn int(&self, i: usize) -> Result<i64, Self::Error>;
    fn opt_int(&self, i: usize) -> Result<Option<i64>, Self::Error>;
    fn text(&self, i: usize) -> Result<String, Self::Error>;
    fn opt_text(&self, i: usize) -> Result<Option<String>, Self::Error>;
    fn flag(&self, i: usize) -> Result<bool, Self::Error>;
    /// Column `i` holds a value the types refuse (`what` says which).
    fn invalid(&self, i: usize, what: String) -> Self::Error;
}

fn unsigned<R: Columns>(row: &R, i: usize) -> Result<u64, R::Error> {
    let v = row.int(i)?;
    u64::try_from(v).map_err(|_| row.invalid(i, format!("negative count {v}")))
}

/// Column `i` as text, parsed.
fn parsed<R: Columns, T>(
    row: &R,
    i: usize,
    parse: impl FnOnce(&str) -> Option<T>,
    what: &str,
) -> Result<T, R::Error> {
    let text = row.text(i)?;
    parse(&text).ok_or_else(|| row.invalid(i, format!("{what} {text:?}")))
}

/// The image whose columns start at `base` (see [`IMAGE_SELECT`]).
pub fn image_at<R: Columns>(row: &R, base: usize) -> Result<Image, R::Error> {
    let version = row.int(base + 2)?;
    Ok(Image {
        id: row.int(base)?,
        name: row.text(base + 1)?,
        version: u32::try_from(version)
            .map_err(|_| row.invalid(base + 2, format!("image version {version}")))?,
        path: PathBuf::from(row.text(base + 3)?),
        bytes: unsigned(row, base + 4)?,
        sha256: row.text(base + 5)?,
        created: row.int(base + 6)?,
    })
}

pub fn node_row<R: Columns>(row: &R) -> Result<Node, R::Error> {
    Ok(Node {
        id: row.int(0)?,
        name: row.text(1)?,
        mac: parsed(row, 2, |s| s.parse::<bootd_plan::Mac>().ok(), "MAC")?,
        template: row.opt_text(3)?,
        ip: match row.opt_text(4)? {
            Some(_) => Some(parsed(
                row,
                4,
                |s| s.parse::<std::net::IpAddr>().ok(),
                "address",
            )?),
            None => None,
        },
        target_iqn: row.text(5)?,
        initiator_iqn: row.text(6)?,
        chap_user: row.text(7)?,
        chap_secret: row.text(8)?,
        overlay_path: PathBuf::from(row.text(9)?),
        state: parsed(row, 10, NodeState::parse, "node state")?,
        revision: row.int(11)?,
        created: row.int(12)?,
        image: image_at(row, 13)?,
        // The schema's CHECK keeps both set or both NULL.
        mutual_chap: match (row.opt_text(20)?, row.opt_text(21)?) {
            (Some(user), Some(secret)) => Some(MutualChap { user, secret }),
            _ => None,
        },
        user_data: row.opt_text(22)?,
        overlay_generation: unsigned(row, 23)?,
        owner: row.opt_text(24)?,
        owner_epoch: unsigned(row, 25)?,
        pinned_server: row.opt_text(26)?,
    })
}

pub fn template_row<R: Columns>(row: &R) -> Result<Template, R::Error> {
    Ok(Template {
        name: row.text(0)?,
        image: row.text(1)?,
        script: row.opt_text(2)?,
        created: row.int(3)?,
        user_data: row.opt_text(4)?,
    })
}

pub fn discovered_row<R: Columns>(row: &R) -> Result<Discovered, R::Error> {
    Ok(Discovered {
        mac: row.text(0)?,
        arch: match row.opt_int(1)? {
            Some(a) => {
                Some(u16::try_from(a).map_err(|_| row.invalid(1, format!("client arch {a}")))?)
            }
            None => None,
        },
        vendor_class: row.text(2)?,
        ipxe: row.flag(3)?,
        first_seen: row.int(4)?,
        last_seen: row.int(5)?,
        requests: u64::try_from(row.int(6)?).unwrap_or(0),
    })
}

pub fn last_stage_row<R: Columns>(row: &R) -> Result<LastStage, R::Error> {
    Ok(LastStage {
        mac: row.text(0)?,
        stage: row.text(1)?,
        at_ms: row.int(2)?,
        boot_started_ms: row.int(3)?,
    })
}

pub fn stage_row<R: Columns>(row: &R) -> Result<BootStage, R::Error> {
    Ok(BootStage {
        stage: row.text(0)?,
        at_ms: row.int(1)?,
        detail: row.text(2)?,
    })
}
