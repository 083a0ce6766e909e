//! The embedded SQLite backend. WAL mode lets `serve` read while the CLI
//! writes; writes take the write lock up front (`BEGIN IMMEDIATE`) so two
//! CLI commands queue instead of failing half-way.

use super::rows::{image_at, node_row, template_row, IMAGE_SELECT, NODE_SELECT, TEMPLATE_SELECT};
use super::schema::{self, MIGRATIONS};
use super::shared::{self, not_found, now, path_text, NodeText};
use super::{
    Image, MutualChap, NewImage, NewNode, Node, NodeState, Result, Store, StoreError, Template,
};
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use std::path::Path;
use std::time::Duration;

pub struct SqliteStore {
    pub(super) conn: Connection,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub fn open(path: &Path) -> Result<Self> {
        let at = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(at)?;
        Self::setup(conn).map_err(|e| match e {
            StoreError::Db(source) => at(source),
            other => other,
        })
    }

    /// An in-memory database, for tests.
    #[cfg(test)]
    pub fn open_in_memory() -> Result<Self> {
        Self::setup(Connection::open_in_memory()?)
    }

    fn setup(mut conn: Connection) -> Result<Self> {
        // Another bootd process may hold the write lock for a moment.
        conn.busy_timeout(BUSY_WAIT)?;
        conn.pragma_update(None, "foreign_keys", true)?;
        // A fresh file is in rollback mode until one opener has made it WAL;
        // there two openers that both read and then want to write deadlock,
        // and SQLite answers one of them BUSY at once, without the busy
        // timeout. That opener waits a moment and starts again.
        let deadline = std::time::Instant::now() + BUSY_WAIT;
        let mut pause = Duration::from_millis(5);
        loop {
            match prepare(&mut conn) {
                Err(StoreError::Db(e)) if is_busy(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                done => {
                    done?;
                    return Ok(Self { conn });
                }
            }
        }
    }

    /// Runs one UPDATE of node `name` (`NotFound` if it changed nothing),
    /// bumps the generation and returns the node as it is now.
    fn update_node(&mut self, name: &str, sql: &str, p: impl rusqlite::Params) -> Result<Node> {
        let tx = self.write()?;
        if tx.execute(sql, p)? == 0 {
            return Err(StoreError::NotFound {
                kind: "node",
                name: name.to_string(),
            });
        }
        let n = node_by_name(&tx, name)?;
        bump(&tx)?;
        tx.commit()?;
        Ok(n)
    }

    fn write(&mut self) -> Result<Transaction<'_>> {
        Ok(self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?)
    }
}

/// How long an opener or writer waits for another bootd process's lock.
const BUSY_WAIT: Duration = Duration::from_secs(10);

/// WAL, full syncs, and the migrations this database lacks.
fn prepare(conn: &mut Connection) -> Result<()> {
    // In-memory databases answer "memory"; both are fine.
    let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    migrate(conn)
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Applies the migrations this database lacks, each in its own transaction.
fn migrate(conn: &mut Connection) -> Result<()> {
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
        [],
    )?;
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current: i64 = tx
            .query_row("SELECT MAX(version) FROM schema_version", [], |r| {
                r.get::<_, Option<i64>>(0)
            })?
            .unwrap_or(0);
        let Some(next) = schema::next(current)? else {
            return Ok(());
        };
        tx.execute_batch(MIGRATIONS[next])?;
        tx.execute("DELETE FROM schema_version", [])?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            [current + 1],
        )?;
        tx.commit()?;
    }
}

fn bump(tx: &Transaction<'_>) -> Result<()> {
    tx.execute("UPDATE generation SET value = value + 1 WHERE id = 1", [])?;
    Ok(())
}

fn node_by_name(conn: &Connection, name: &str) -> Result<Node> {
    conn.query_row(&format!("{NODE_SELECT} WHERE n.name = ?1"), [name], |r| {
        node_row(r)
    })
    .optional()?
    .ok_or_else(|| not_found("node", name))
}

fn exists(conn: &Connection, sql: &str, value: &str) -> Result<bool> {
    Ok(conn
        .query_row(sql, [value], |_| Ok(()))
        .optional()?
        .is_some())
}

impl Store for SqliteStore {
    fn changes(&self) -> Result<Box<dyn crate::store::ChangeFeed>> {
        match self.conn.path().filter(|p| !p.is_empty()) {
            Some(p) => notify::FileChanges::new(Path::new(p))
                .map(|f| Box::new(f) as Box<dyn crate::store::ChangeFeed>)
                .map_err(StoreError::Watch),
            None => Ok(Box::new(notify::Timer)),
        }
    }

    fn generation(&self) -> Result<u64> {
        let v: i64 = self
            .conn
            .query_row("SELECT value FROM generation WHERE id = 1", [], |r| {
                r.get(0)
            })?;
        u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("generation {v}")))
    }

    fn add_image(&mut self, image: &NewImage) -> Result<Image> {
        let tx = self.write()?;
        if tx
            .query_row(
                "SELECT 1 FROM images WHERE name = ?1 AND version = ?2",
                params![image.name, image.version],
                |_| Ok(()),
            )
            .optional()?
            .is_some()
        {
            return Err(shared::duplicate_image(image));
        }
        let bytes = shared::image_bytes(image)?;
        tx.execute(
            "INSERT INTO images (name, version, path, bytes, sha256, created)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                image.name,
                image.version,
                path_text(&image.path)?,
                bytes,
                image.sha256,
                now()
            ],
        )?;
        let id = tx.last_insert_rowid();
        let img = tx.query_row(&format!("{IMAGE_SELECT} WHERE id = ?1"), [id], |r| {
            image_at(r, 0)
        })?;
        bump(&tx)?;
        tx.commit()?;
        Ok(img)
    }

    fn images(&self) -> Result<Vec<Image>> {
        let mut st = self
            .conn
            .prepare(&format!("{IMAGE_SELECT} ORDER BY name, version"))?;
        let rows = st.query_map([], |r| image_at(r, 0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn latest_image(&self, name: &str) -> Result<Image> {
        self.conn
            .query_row(
                &format!("{IMAGE_SELECT} WHERE name = ?1 ORDER BY version DESC LIMIT 1"),
                [name],
                |r| image_at(r, 0),
            )
            .optional()?
            .ok_or_else(|| StoreError::NotFound {
                kind: "image",
                name: name.to_string(),
            })
    }

    fn max_image_version(&self, name: &str) -> Result<u32> {
        let v: Option<i64> = self.conn.query_row(
            "SELECT MAX(version) FROM images WHERE name = ?1",
            [name],
            |r| r.get(0),
        )?;
        u32::try_from(v.unwrap_or(0)).map_err(|_| StoreError::Corrupt(format!("version {v:?}")))
    }

    fn remove_image(&mut self, name: &str) -> Result<Vec<Image>> {
        let tx = self.write()?;
        let images: Vec<Image> = {
            let mut st = tx.prepare(&format!("{IMAGE_SELECT} WHERE name = ?1"))?;
            let rows = st.query_map([name], |r| image_at(r, 0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        if images.is_empty() {
            return Err(StoreError::NotFound {
                kind: "image",
                name: name.to_string(),
            });
        }
        refuse_if_used(&tx, shared::NODES_ON_IMAGE, ("image", name), "node")?;
        refuse_if_used(&tx, shared::TEMPLATES_ON_IMAGE, ("image", name), "template")?;
        tx.execute("DELETE FROM images WHERE name = ?1", [name])?;
        bump(&tx)?;
        tx.commit()?;
        Ok(images)
    }

    fn add_template(
        &mut self,
        name: &str,
        image: &str,
        script: Option<&str>,
        user_data: Option<&str>,
    ) -> Result<Template> {
        let tx = self.write()?;
        if exists(&tx, "SELECT 1 FROM templates WHERE name = ?1", name)? {
            return Err(StoreError::Duplicate {
                kind: "template",
                field: "name",
                value: name.to_string(),
            });
        }
        if !exists(&tx, "SELECT 1 FROM images WHERE name = ?1", image)? {
            return Err(StoreError::NotFound {
                kind: "image",
                name: image.to_string(),
            });
        }
        tx.execute(
            "INSERT INTO templates (name, image, script, user_data, created)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![name, image, script, user_data, now()],
        )?;
        let t = tx.query_row(&format!("{TEMPLATE_SELECT} WHERE name = ?1"), [name], |r| {
            template_row(r)
        })?;
        bump(&tx)?;
        tx.commit()?;
        Ok(t)
    }

    fn templates(&self) -> Result<Vec<Template>> {
        let mut st = self
            .conn
            .prepare(&format!("{TEMPLATE_SELECT} ORDER BY name"))?;
        let rows = st.query_map([], |r| template_row(r))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn template(&self, name: &str) -> Result<Template> {
        self.conn
            .query_row(&format!("{TEMPLATE_SELECT} WHERE name = ?1"), [name], |r| {
                template_row(r)
            })
            .optional()?
            .ok_or_else(|| StoreError::NotFound {
                kind: "template",
                name: name.to_string(),
            })
    }

    fn remove_template(&mut self, name: &str) -> Result<Template> {
        let tx = self.write()?;
        let t = tx
            .query_row(&format!("{TEMPLATE_SELECT} WHERE name = ?1"), [name], |r| {
                template_row(r)
            })
            .optional()?
            .ok_or_else(|| StoreError::NotFound {
                kind: "template",
                name: name.to_string(),
            })?;
        refuse_if_used(&tx, shared::NODES_ON_TEMPLATE, ("template", name), "node")?;
        tx.execute("DELETE FROM templates WHERE name = ?1", [name])?;
        bump(&tx)?;
        tx.commit()?;
        Ok(t)
    }

    fn add_node(&mut self, node: &NewNode) -> Result<Node> {
        let tx = self.write()?;
        let text = NodeText::of(node)?;
        for (column, field, value) in text.unique_fields(node) {
            let sql = format!("SELECT 1 FROM nodes WHERE {column} = ?1");
            if exists(&tx, &sql, value)? {
                return Err(StoreError::Duplicate {
                    kind: "node",
                    field,
                    value: value.to_string(),
                });
            }
        }
        tx.execute(
            "INSERT INTO nodes (name, mac, image_id, template, ip, target_iqn, initiator_iqn,
                                chap_user, chap_secret, overlay_path, state, revision, created,
                                user_data, overlay_generation)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 0, ?12, ?13, 0)",
            params![
                node.name,
                text.mac,
                node.image_id,
                node.template,
                text.ip,
                node.target_iqn,
                node.initiator_iqn,
                node.chap_user,
                node.chap_secret,
                text.overlay,
                NodeState::Creating.as_str(),
                now(),
                node.user_data
            ],
        )?;
        // Adopted: no longer waiting in the discovered list.
        tx.execute("DELETE FROM discovered WHERE mac = ?1", [&text.mac])?;
        let n = node_by_name(&tx, &node.name)?;
        bump(&tx)?;
        tx.commit()?;
        Ok(n)
    }

    fn nodes(&self) -> Result<Vec<Node>> {
        let mut st = self
            .conn
            .prepare(&format!("{NODE_SELECT} ORDER BY n.name"))?;
        let rows = st.query_map([], |r| node_row(r))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn node(&self, name_or_mac: &str) -> Result<Node> {
        let found = self
            .conn
            .query_row(
                &format!("{NODE_SELECT} WHERE n.name = ?1 OR n.mac = ?1"),
                [name_or_mac],
                |r| node_row(r),
            )
            .optional()?;
        found.ok_or_else(|| StoreError::NotFound {
            kind: "node",
            name: name_or_mac.to_string(),
        })
    }

    fn set_node_state(&mut self, name: &str, state: NodeState) -> Result<Node> {
        self.update_node(
            name,
            "UPDATE nodes SET state = ?2, revision = revision + 1 WHERE name = ?1",
            params![name, state.as_str()],
        )
    }

    fn node_overlay_ready(&mut self, name: &str, image_id: i64) -> Result<Node> {
        self.update_node(
            name,
            "UPDATE nodes SET state = ?2, image_id = ?3, revision = revision + 1,
                              overlay_generation = overlay_generation + 1
             WHERE name = ?1",
            params![name, NodeState::Ready.as_str(), image_id],
        )
    }

    fn set_mutual_chap(&mut self, name: &str, mutual: Option<&MutualChap>) -> Result<Node> {
        self.update_node(
            name,
            "UPDATE nodes SET mutual_user = ?2, mutual_secret = ?3, revision = revision + 1
             WHERE name = ?1",
            params![
                name,
                mutual.map(|m| m.user.as_str()),
                mutual.map(|m| m.secret.as_str())
            ],
        )
    }

    fn remove_node(&mut self, name: &str) -> Result<Node> {
        let tx = self.write()?;
        let n = node_by_name(&tx, name)?;
        tx.execute("DELETE FROM nodes WHERE id = ?1", [n.id])?;
        bump(&tx)?;
        tx.commit()?;
        Ok(n)
    }
}

/// `InUse` if `users_sql` (taking the name as $1) lists anything that still
/// uses the `what` (kind, name) about to be removed.
fn refuse_if_used(
    conn: &Connection,
    users_sql: &str,
    what: (&'static str, &str),
    user_kind: &str,
) -> Result<()> {
    let users: Vec<String> = {
        let mut st = conn.prepare(users_sql)?;
        let rows = st.query_map([what.1], |r| r.get(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    shared::refuse_if_used(what, user_kind, &users)
}

pub mod notify;
mod records;
mod reservations;
mod rows;
mod servers;
mod tokens;
