//! Registry rows into typed values: every column is parsed here, at the
//! store boundary, and a value that does not parse fails the read.

use crate::store::{Image, MutualChap, Node, NodeState, Template};
use rusqlite::Row;
use std::path::PathBuf;

fn u64_col(row: &Row<'_>, idx: usize) -> rusqlite::Result<u64> {
    let v: i64 = row.get(idx)?;
    u64::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, v))
}

pub(super) fn image_at(row: &Row<'_>, base: usize) -> rusqlite::Result<Image> {
    let version: i64 = row.get(base + 2)?;
    Ok(Image {
        id: row.get(base)?,
        name: row.get(base + 1)?,
        version: u32::try_from(version)
            .map_err(|_| rusqlite::Error::IntegralValueOutOfRange(base + 2, version))?,
        path: PathBuf::from(row.get::<_, String>(base + 3)?),
        bytes: u64_col(row, base + 4)?,
        sha256: row.get(base + 5)?,
        created: row.get(base + 6)?,
    })
}

/// Column `idx` as text, parsed: a stored value that does not parse is an
/// error naming the column, never a row silently dropped.
fn parsed<T>(
    row: &Row<'_>,
    idx: usize,
    parse: impl FnOnce(&str) -> Option<T>,
    what: &str,
) -> rusqlite::Result<T> {
    let text: String = row.get(idx)?;
    parse(&text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            idx,
            rusqlite::types::Type::Text,
            format!("{what} {text:?}").into(),
        )
    })
}

pub(super) fn node_row(row: &Row<'_>) -> rusqlite::Result<Node> {
    let state: String = row.get(10)?;
    let state = NodeState::parse(&state).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            10,
            rusqlite::types::Type::Text,
            format!("node state {state:?}").into(),
        )
    })?;
    Ok(Node {
        id: row.get(0)?,
        name: row.get(1)?,
        mac: parsed(row, 2, |s: &str| s.parse::<bootd_plan::Mac>().ok(), "MAC")?,
        template: row.get(3)?,
        ip: match row.get::<_, Option<String>>(4)? {
            Some(_) => Some(parsed(
                row,
                4,
                |s: &str| s.parse::<std::net::IpAddr>().ok(),
                "address",
            )?),
            None => None,
        },
        target_iqn: row.get(5)?,
        initiator_iqn: row.get(6)?,
        chap_user: row.get(7)?,
        chap_secret: row.get(8)?,
        overlay_path: PathBuf::from(row.get::<_, String>(9)?),
        state,
        revision: row.get(11)?,
        created: row.get(12)?,
        image: image_at(row, 13)?,
        // The schema's CHECK keeps both set or both NULL.
        mutual_chap: match (row.get(20)?, row.get(21)?) {
            (Some(user), Some(secret)) => Some(MutualChap { user, secret }),
            _ => None,
        },
        user_data: row.get(22)?,
        overlay_generation: u64_col(row, 23)?,
    })
}

pub(super) fn template_row(row: &Row<'_>) -> rusqlite::Result<Template> {
    Ok(Template {
        name: row.get(0)?,
        image: row.get(1)?,
        script: row.get(2)?,
        created: row.get(3)?,
        user_data: row.get(4)?,
    })
}
