//! The shared PostgreSQL backend: several bootd servers (and the CLI) on one
//! registry. Same semantics as SQLite's: every write is one transaction
//! that bumps the generation, and writers queue behind each other (they
//! lock the generation row first, as SQLite's `BEGIN IMMEDIATE` takes the
//! write lock), so the duplicate and in-use checks see every committed
//! write and answer with the same errors. A trigger on the generation row
//! NOTIFYs `bootd_registry` on commit ([`notify`]).
//!
//! TCP with TLS as the URL's `sslmode` says ([`tls`]), or a Unix socket
//! (never TLS, as in libpq). The `postgres` crate runs its own
//! small tokio runtime per connection; [`off_runtime::OffRuntime`] keeps its
//! blocking calls off serve's runtime.

use super::rows::{image_at, node_row, template_row, IMAGE_SELECT, NODE_SELECT, TEMPLATE_SELECT};
use super::schema::{self, POSTGRES_MIGRATIONS};
use super::shared::{self, not_found, now, path_text, NodeText};
use super::url::PgTarget;
use super::{
    Image, MutualChap, NewImage, NewNode, Node, NodeState, Result, Store, StoreError, Template,
};
use postgres::types::ToSql;
use postgres::{Client, GenericClient, NoTls, Transaction};
use std::cell::{RefCell, RefMut};

pub struct PgStore {
    /// Reads take `&self` but a query needs the client mutably; a store is
    /// used by one thread at a time (`Send`, not `Sync`).
    client: RefCell<Client>,
    target: PgTarget,
}

/// Key of the advisory lock held while migrating, so two bootd processes
/// starting at once on a fresh database migrate one after the other.
const MIGRATION_LOCK: i64 = 0x626f_6f74_645f_6d69; // "bootd_mi"

/// Opens the registry at `target` for the rest of bootd, behind the guard
/// that keeps its blocking calls off any tokio runtime.
pub fn open(target: &PgTarget) -> Result<Box<dyn Store>> {
    let store = off_runtime::run(|| PgStore::open(target))?;
    Ok(Box::new(off_runtime::OffRuntime::new(Box::new(store))))
}

/// Every connection bootd makes to the registry (store, notify feed,
/// leases) is made here.
pub(super) fn connect(target: &PgTarget) -> Result<Client> {
    let connected = match &target.tls {
        Some(tls) => target.config.connect(tls.clone()),
        None => target.config.connect(NoTls),
    };
    connected.map_err(|source| StoreError::Connect {
        registry: target.shown.clone(),
        source,
    })
}

impl PgStore {
    /// Connects and migrates. Blocks: call it off any tokio runtime (see
    /// [`open`]).
    pub fn open(target: &PgTarget) -> Result<Self> {
        let mut client = connect(target)?;
        migrate(&mut client).map_err(|e| match e {
            StoreError::Pg(source) => StoreError::Connect {
                registry: target.shown.clone(),
                source,
            },
            other => other,
        })?;
        Ok(Self {
            client: RefCell::new(client),
            target: target.clone(),
        })
    }

    /// The connection, made again if the server closed it.
    fn conn(&self) -> Result<RefMut<'_, Client>> {
        let mut c = self.client.borrow_mut();
        if c.is_closed() {
            self.reconnect(&mut c)?;
        }
        Ok(c)
    }

    fn reconnect(&self, c: &mut Client) -> Result<()> {
        tracing::warn!(registry = %self.target.shown, "registry connection lost; connecting again");
        *c = connect(&self.target)?;
        Ok(())
    }

    /// Runs the read `f`; if the connection turns out to be lost (the
    /// server restarted or dropped it while idle), once more on a new one:
    /// a read is safe to repeat.
    fn read<T>(&self, f: impl Fn(&mut Client) -> Result<T>) -> Result<T> {
        let mut c = self.conn()?;
        match f(&mut c) {
            Err(StoreError::Pg(e)) if lost(&e, &c) => {
                self.reconnect(&mut c)?;
                f(&mut c)
            }
            other => other,
        }
    }

    /// The connection for a write, checked with an empty query first (one
    /// round trip): a connection lost while idle is replaced before the
    /// write begins, so nothing is run twice.
    fn live(&self) -> Result<RefMut<'_, Client>> {
        let mut conn = self.conn()?;
        if let Err(e) = conn.batch_execute("") {
            if !lost(&e, &conn) {
                return Err(e.into());
            }
            self.reconnect(&mut conn)?;
        }
        Ok(conn)
    }

    /// One write statement outside the registry's transaction (records).
    fn write_record(&self, sql: &str, p: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        Ok(self.live()?.execute(sql, p)?)
    }

    fn rows(&self, sql: &str, p: &[&(dyn ToSql + Sync)]) -> Result<Vec<postgres::Row>> {
        self.read(|c| Ok(c.query(sql, p)?))
    }

    fn row_opt(&self, sql: &str, p: &[&(dyn ToSql + Sync)]) -> Result<Option<postgres::Row>> {
        self.read(|c| Ok(c.query_opt(sql, p)?))
    }

    fn row_one(&self, sql: &str, p: &[&(dyn ToSql + Sync)]) -> Result<postgres::Row> {
        self.read(|c| Ok(c.query_one(sql, p)?))
    }

    /// Runs `f` in a write transaction and commits what it returns. A
    /// connection found lost at BEGIN is replaced and the write goes ahead
    /// (nothing of it had run); one lost later fails the write, since
    /// whether its COMMIT took effect is unknown.
    fn write<T>(&mut self, f: impl FnOnce(&mut Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self.live()?;
        let mut tx = conn.transaction()?;
        // Writers queue here (see the module comment).
        tx.execute("SELECT value FROM generation WHERE id = 1 FOR UPDATE", &[])?;
        let out = f(&mut tx)?;
        // The trigger NOTIFYs on commit.
        tx.execute("UPDATE generation SET value = value + 1 WHERE id = 1", &[])?;
        tx.commit()?;
        Ok(out)
    }

    /// Runs one UPDATE of node `name` (`NotFound` if it changed nothing)
    /// and returns the node as it is now.
    fn update_node(&mut self, name: &str, sql: &str, p: &[&(dyn ToSql + Sync)]) -> Result<Node> {
        self.write(|tx| {
            if tx.execute(sql, p)? == 0 {
                return Err(not_found("node", name));
            }
            node_by_name(tx, name)
        })
    }
}

/// Whether `e` says the connection is gone (rather than the statement
/// failed): closed, reset, or the server shutting the session down.
fn lost(e: &postgres::Error, c: &Client) -> bool {
    use postgres::error::SqlState;
    c.is_closed()
        || e.is_closed()
        || matches!(
            e.code(),
            Some(
                &SqlState::ADMIN_SHUTDOWN
                    | &SqlState::CRASH_SHUTDOWN
                    | &SqlState::CANNOT_CONNECT_NOW
            )
        )
        || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
}

/// Applies the migrations this database lacks, each in its own transaction
/// under the migration lock.
fn migrate(client: &mut Client) -> Result<()> {
    loop {
        let mut tx = client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
        // Not CREATE ... IF NOT EXISTS: its NOTICE would reach the log.
        let made: bool = tx
            .query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[])?
            .try_get(0)?;
        if !made {
            tx.batch_execute("CREATE TABLE schema_version (version BIGINT NOT NULL)")?;
        }
        let current: i64 = tx
            .query_one("SELECT MAX(version)::BIGINT FROM schema_version", &[])?
            .try_get::<_, Option<i64>>(0)?
            .unwrap_or(0);
        let Some(next) = schema::next(current)? else {
            return Ok(());
        };
        tx.batch_execute(POSTGRES_MIGRATIONS[next])?;
        tx.execute("DELETE FROM schema_version", &[])?;
        tx.execute(
            // Cast: an older table may have an INTEGER column.
            "INSERT INTO schema_version (version) VALUES ($1::BIGINT)",
            &[&(current + 1)],
        )?;
        tx.commit()?;
    }
}

fn node_by_name(c: &mut impl GenericClient, name: &str) -> Result<Node> {
    match c.query_opt(&format!("{NODE_SELECT} WHERE n.name = $1"), &[&name])? {
        Some(r) => node_row(&r),
        None => Err(not_found("node", name)),
    }
}

/// Whether `sql` (taking `value` as $1) finds any row (several are fine).
fn exists(c: &mut impl GenericClient, sql: &str, value: &str) -> Result<bool> {
    Ok(!c.query(sql, &[&value])?.is_empty())
}

/// `InUse` if `users_sql` (taking the name as $1) lists anything that still
/// uses the `what` (kind, name) about to be removed.
fn refuse_if_used(
    c: &mut impl GenericClient,
    users_sql: &str,
    what: (&'static str, &str),
    user_kind: &str,
) -> Result<()> {
    let users = c
        .query(users_sql, &[&what.1])?
        .iter()
        .map(|r| r.try_get::<_, String>(0))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    shared::refuse_if_used(what, user_kind, &users)
}

fn images_named(c: &mut impl GenericClient, name: &str) -> Result<Vec<Image>> {
    c.query(
        &format!("{IMAGE_SELECT} WHERE name = $1 ORDER BY version"),
        &[&name],
    )?
    .iter()
    .map(|r| image_at(r, 0))
    .collect()
}

impl Store for PgStore {
    fn changes(&self) -> Result<Box<dyn super::ChangeFeed>> {
        Ok(Box::new(notify::PgChanges::new(&self.target)?))
    }

    fn generation(&self) -> Result<u64> {
        let v: i64 = self
            .row_one("SELECT value FROM generation WHERE id = 1", &[])?
            .try_get(0)?;
        u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("generation {v}")))
    }

    fn add_image(&mut self, image: &NewImage) -> Result<Image> {
        let version = i64::from(image.version);
        let bytes = shared::image_bytes(image)?;
        let path = path_text(&image.path)?;
        self.write(|tx| {
            if tx
                .query_opt(
                    "SELECT 1 FROM images WHERE name = $1 AND version = $2",
                    &[&image.name, &version],
                )?
                .is_some()
            {
                return Err(shared::duplicate_image(image));
            }
            let row = tx.query_one(
                "INSERT INTO images (name, version, path, bytes, sha256, created)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 RETURNING id, name, version, path, bytes, sha256, created",
                &[&image.name, &version, &path, &bytes, &image.sha256, &now()],
            )?;
            image_at(&row, 0)
        })
    }

    fn images(&self) -> Result<Vec<Image>> {
        self.rows(&format!("{IMAGE_SELECT} ORDER BY name, version"), &[])?
            .iter()
            .map(|r| image_at(r, 0))
            .collect()
    }

    fn latest_image(&self, name: &str) -> Result<Image> {
        match self.row_opt(
            &format!("{IMAGE_SELECT} WHERE name = $1 ORDER BY version DESC LIMIT 1"),
            &[&name],
        )? {
            Some(r) => image_at(&r, 0),
            None => Err(not_found("image", name)),
        }
    }

    fn max_image_version(&self, name: &str) -> Result<u32> {
        let v: Option<i64> = self
            .row_one("SELECT MAX(version) FROM images WHERE name = $1", &[&name])?
            .try_get(0)?;
        u32::try_from(v.unwrap_or(0)).map_err(|_| StoreError::Corrupt(format!("version {v:?}")))
    }

    fn remove_image(&mut self, name: &str) -> Result<Vec<Image>> {
        self.write(|tx| {
            let images = images_named(tx, name)?;
            if images.is_empty() {
                return Err(not_found("image", name));
            }
            refuse_if_used(tx, shared::NODES_ON_IMAGE, ("image", name), "node")?;
            refuse_if_used(tx, shared::TEMPLATES_ON_IMAGE, ("image", name), "template")?;
            tx.execute("DELETE FROM images WHERE name = $1", &[&name])?;
            Ok(images)
        })
    }

    fn add_template(
        &mut self,
        name: &str,
        image: &str,
        script: Option<&str>,
        user_data: Option<&str>,
    ) -> Result<Template> {
        self.write(|tx| {
            if exists(tx, "SELECT 1 FROM templates WHERE name = $1", name)? {
                return Err(StoreError::Duplicate {
                    kind: "template",
                    field: "name",
                    value: name.to_string(),
                });
            }
            if !exists(tx, "SELECT 1 FROM images WHERE name = $1", image)? {
                return Err(not_found("image", image));
            }
            tx.execute(
                "INSERT INTO templates (name, image, script, user_data, created)
                 VALUES ($1, $2, $3, $4, $5)",
                &[&name, &image, &script, &user_data, &now()],
            )?;
            let row = tx.query_one(&format!("{TEMPLATE_SELECT} WHERE name = $1"), &[&name])?;
            template_row(&row)
        })
    }

    fn templates(&self) -> Result<Vec<Template>> {
        self.rows(&format!("{TEMPLATE_SELECT} ORDER BY name"), &[])?
            .iter()
            .map(template_row)
            .collect()
    }

    fn template(&self, name: &str) -> Result<Template> {
        match self.row_opt(&format!("{TEMPLATE_SELECT} WHERE name = $1"), &[&name])? {
            Some(r) => template_row(&r),
            None => Err(not_found("template", name)),
        }
    }

    fn remove_template(&mut self, name: &str) -> Result<Template> {
        self.write(|tx| {
            let t = match tx.query_opt(&format!("{TEMPLATE_SELECT} WHERE name = $1"), &[&name])? {
                Some(r) => template_row(&r)?,
                None => return Err(not_found("template", name)),
            };
            refuse_if_used(tx, shared::NODES_ON_TEMPLATE, ("template", name), "node")?;
            tx.execute("DELETE FROM templates WHERE name = $1", &[&name])?;
            Ok(t)
        })
    }

    fn add_node(&mut self, node: &NewNode) -> Result<Node> {
        let text = NodeText::of(node)?;
        self.write(|tx| {
            for (column, field, value) in text.unique_fields(node) {
                let sql = format!("SELECT 1 FROM nodes WHERE {column} = $1");
                if exists(tx, &sql, value)? {
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
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 0, $12, $13, 0)",
                &[
                    &node.name,
                    &text.mac,
                    &node.image_id,
                    &node.template,
                    &text.ip,
                    &node.target_iqn,
                    &node.initiator_iqn,
                    &node.chap_user,
                    &node.chap_secret,
                    &text.overlay,
                    &NodeState::Creating.as_str(),
                    &now(),
                    &node.user_data,
                ],
            )?;
            // Adopted: no longer waiting in the discovered list.
            tx.execute("DELETE FROM discovered WHERE mac = $1", &[&text.mac])?;
            node_by_name(tx, &node.name)
        })
    }

    fn nodes(&self) -> Result<Vec<Node>> {
        self.rows(&format!("{NODE_SELECT} ORDER BY n.name"), &[])?
            .iter()
            .map(node_row)
            .collect()
    }

    fn node(&self, name_or_mac: &str) -> Result<Node> {
        match self.row_opt(
            &format!("{NODE_SELECT} WHERE n.name = $1 OR n.mac = $1"),
            &[&name_or_mac],
        )? {
            Some(r) => node_row(&r),
            None => Err(not_found("node", name_or_mac)),
        }
    }

    fn set_node_state(&mut self, name: &str, state: NodeState) -> Result<Node> {
        self.update_node(
            name,
            "UPDATE nodes SET state = $2, revision = revision + 1 WHERE name = $1",
            &[&name, &state.as_str()],
        )
    }

    fn node_overlay_ready(&mut self, name: &str, image_id: i64) -> Result<Node> {
        self.update_node(
            name,
            "UPDATE nodes SET state = $2, image_id = $3, revision = revision + 1,
                              overlay_generation = overlay_generation + 1
             WHERE name = $1",
            &[&name, &NodeState::Ready.as_str(), &image_id],
        )
    }

    fn set_mutual_chap(&mut self, name: &str, mutual: Option<&MutualChap>) -> Result<Node> {
        let user = mutual.map(|m| m.user.as_str());
        let secret = mutual.map(|m| m.secret.as_str());
        self.update_node(
            name,
            "UPDATE nodes SET mutual_user = $2, mutual_secret = $3, revision = revision + 1
             WHERE name = $1",
            &[&name, &user, &secret],
        )
    }

    fn remove_node(&mut self, name: &str) -> Result<Node> {
        self.write(|tx| {
            let n = node_by_name(tx, name)?;
            tx.execute("DELETE FROM nodes WHERE id = $1", &[&n.id])?;
            Ok(n)
        })
    }
}

mod binding;
pub mod leases;
pub mod notify;
pub mod off_runtime;
mod records;
mod reservations;
mod rows;
mod servers;
pub mod tls;
mod tokens;
