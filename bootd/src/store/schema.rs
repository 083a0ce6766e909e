//! Schema migrations. Each entry moves the database from version `i` to
//! `i + 1`; `schema_version` records how far a database has come. Append
//! new migrations, never edit applied ones.

pub const MIGRATIONS: &[&str] = &[
    // 1: images, templates, nodes, the change counter.
    "
    CREATE TABLE images (
        id       INTEGER PRIMARY KEY AUTOINCREMENT,
        name     TEXT NOT NULL,
        version  INTEGER NOT NULL CHECK (version > 0),
        path     TEXT NOT NULL UNIQUE,
        bytes    INTEGER NOT NULL CHECK (bytes > 0),
        sha256   TEXT NOT NULL,
        created  INTEGER NOT NULL,
        UNIQUE (name, version)
    );
    CREATE TABLE templates (
        name     TEXT PRIMARY KEY,
        image    TEXT NOT NULL,
        script   TEXT,
        created  INTEGER NOT NULL
    );
    CREATE TABLE nodes (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        name          TEXT NOT NULL UNIQUE,
        mac           TEXT NOT NULL UNIQUE,
        image_id      INTEGER NOT NULL REFERENCES images(id),
        template      TEXT REFERENCES templates(name),
        ip            TEXT UNIQUE,
        target_iqn    TEXT NOT NULL UNIQUE,
        initiator_iqn TEXT NOT NULL UNIQUE,
        chap_user     TEXT NOT NULL,
        chap_secret   TEXT NOT NULL,
        overlay_path  TEXT NOT NULL UNIQUE,
        state         TEXT NOT NULL CHECK (state IN ('creating', 'ready', 'releasing')),
        revision      INTEGER NOT NULL DEFAULT 0,
        created       INTEGER NOT NULL
    );
    CREATE INDEX nodes_image ON nodes(image_id);
    CREATE TABLE generation (
        id     INTEGER PRIMARY KEY CHECK (id = 1),
        value  INTEGER NOT NULL
    );
    INSERT INTO generation (id, value) VALUES (1, 0);
    ",
    // 2: MACs that asked to boot while unregistered (`--unknown discover`),
    // and each MAC's stages of its last boot. Neither moves the generation:
    // they do not change what serve serves.
    "
    CREATE TABLE discovered (
        mac           TEXT PRIMARY KEY,
        arch          INTEGER,
        vendor_class  TEXT NOT NULL,
        ipxe          INTEGER NOT NULL,
        first_seen    INTEGER NOT NULL,
        last_seen     INTEGER NOT NULL,
        requests      INTEGER NOT NULL
    );
    CREATE TABLE boot_stages (
        mac     TEXT NOT NULL,
        stage   TEXT NOT NULL,
        at_ms   INTEGER NOT NULL,
        detail  TEXT NOT NULL,
        PRIMARY KEY (mac, stage)
    );
    ",
    // 3: mutual CHAP per node: the name and secret the target proves itself
    // with when the initiator asks. NULL (both) = off; the CHECK keeps them
    // set or cleared together.
    "
    ALTER TABLE nodes ADD COLUMN mutual_user TEXT;
    ALTER TABLE nodes ADD COLUMN mutual_secret TEXT
        CHECK ((mutual_secret IS NULL) = (mutual_user IS NULL));
    ",
    // 4: cloud-init user-data (minijinja text; NULL = none) on templates and
    // nodes (a node's own wins), and each node's overlay generation: how
    // many fresh overlays it has had, so a reset or move gives it a new
    // cloud-init instance-id. Nodes that already have an overlay are on
    // their first.
    "
    ALTER TABLE templates ADD COLUMN user_data TEXT;
    ALTER TABLE nodes ADD COLUMN user_data TEXT;
    ALTER TABLE nodes ADD COLUMN overlay_generation INTEGER NOT NULL DEFAULT 0
        CHECK (overlay_generation >= 0);
    UPDATE nodes SET overlay_generation = 1 WHERE state <> 'creating';
    ",
];

/// The version a fully migrated database has.
pub fn latest() -> i64 {
    MIGRATIONS.len() as i64
}
