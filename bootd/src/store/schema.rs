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
    // 5: several servers on one registry. `servers`: each serve's row,
    // written at start and heartbeat (times in Unix milliseconds of the
    // registry's clock, so servers' clocks need not agree). Nodes get their
    // owner (a server id, or NULL), the fencing epoch every claim moves on,
    // and the server `node move --server` pinned them to.
    "
    CREATE TABLE servers (
        id            TEXT PRIMARY KEY,
        iscsi         TEXT NOT NULL,
        http_port     INTEGER NOT NULL,
        started_at    INTEGER NOT NULL,
        heartbeat_at  INTEGER NOT NULL,
        sessions      INTEGER NOT NULL DEFAULT 0,
        bytes_served  INTEGER NOT NULL DEFAULT 0
    );
    ALTER TABLE nodes ADD COLUMN owner TEXT;
    ALTER TABLE nodes ADD COLUMN owner_epoch INTEGER NOT NULL DEFAULT 0
        CHECK (owner_epoch >= 0);
    ALTER TABLE nodes ADD COLUMN pinned_server TEXT;
    ",
    // 6: DHCP leases shared by servers on one registry (`--dhcp full`):
    // one row per address (the primary key is the unique constraint that
    // keeps two servers from granting it twice), the MAC holding it, the
    // server that granted it, `offered` (held for the REQUEST) or `bound`,
    // and its expiry in Unix milliseconds of the registry's clock. A
    // single SQLite server keeps its leases in the `dhcp-leases` file; the
    // table is here so that both dialects have one history.
    "
    CREATE TABLE leases (
        address     TEXT PRIMARY KEY,
        mac         TEXT NOT NULL,
        server_id   TEXT NOT NULL,
        state       TEXT NOT NULL CHECK (state IN ('offered', 'bound')),
        expires_at  INTEGER NOT NULL
    );
    CREATE INDEX leases_mac ON leases(mac);
    ",
    // 7: API bearer tokens (`bootd token add`): only each token's SHA-256
    // (hex) is kept, with whether it may only read, when it was made and
    // when it was last used (Unix seconds; NULL = never).
    "
    CREATE TABLE api_tokens (
        name       TEXT PRIMARY KEY,
        sha256     TEXT NOT NULL UNIQUE,
        read_only  INTEGER NOT NULL CHECK (read_only IN (0, 1)),
        created    INTEGER NOT NULL,
        last_used  INTEGER
    );
    ",
    // 8: a server being drained (`bootd server drain`, `serve --drain`):
    // it hands its nodes to its peers, sessions and all; 1 or 0.
    "
    ALTER TABLE servers ADD COLUMN draining INTEGER NOT NULL DEFAULT 0;
    ",
    // 9: DHCP leases, for several servers at a storm's scale. `changed_xid`
    // is the id of the transaction that last wrote the row, so that a
    // server reads only the rows changed since its last read (PostgreSQL
    // fills it in; a sequence would not do, since values are taken before
    // commit and a reader could pass a row that commits late). A
    // `declined` row keeps an address out of every server's offers until it
    // expires (a client found someone else using it). SQLite cannot change
    // a CHECK: the unused table is made again.
    "
    DROP TABLE leases;
    CREATE TABLE leases (
        address     TEXT PRIMARY KEY,
        mac         TEXT NOT NULL,
        server_id   TEXT NOT NULL,
        state       TEXT NOT NULL CHECK (state IN ('offered', 'bound', 'declined')),
        expires_at  INTEGER NOT NULL,
        changed_xid INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX leases_mac ON leases(mac);
    CREATE INDEX leases_changed ON leases(changed_xid);
    ",
    // 10: persistent reservations (SPC-4 5.9) per node and LUN, so that
    // they outlive a serve restart and move with a takeover. `pr_state`:
    // the PRgeneration, APTPL, and the reservation (type, scope and the
    // holder's I_T nexus; all NULL when none is held), for the node's
    // overlay generation they were made on (a fresh overlay is a new disk
    // and starts with none). `pr_registrations`: one row per registered
    // I_T nexus, its key's 64 bits as a signed integer, `position` keeping
    // the order READ KEYS lists them in.
    "
    CREATE TABLE pr_state (
        node_id            INTEGER NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
        lun                INTEGER NOT NULL CHECK (lun >= 0),
        overlay_generation INTEGER NOT NULL,
        pr_generation      INTEGER NOT NULL CHECK (pr_generation BETWEEN 0 AND 4294967295),
        aptpl              INTEGER NOT NULL CHECK (aptpl IN (0, 1)),
        res_type           INTEGER CHECK (res_type BETWEEN 1 AND 15),
        res_scope          INTEGER CHECK (res_scope = 0),
        holder_initiator   TEXT,
        holder_target      TEXT,
        CHECK ((res_type IS NULL) = (res_scope IS NULL)
           AND (res_type IS NULL) = (holder_initiator IS NULL)
           AND (res_type IS NULL) = (holder_target IS NULL)),
        PRIMARY KEY (node_id, lun)
    );
    CREATE TABLE pr_registrations (
        node_id        INTEGER NOT NULL,
        lun            INTEGER NOT NULL,
        position       INTEGER NOT NULL,
        initiator_port TEXT NOT NULL,
        target_port    TEXT NOT NULL,
        relative_port  INTEGER NOT NULL CHECK (relative_port BETWEEN 0 AND 65535),
        reg_key        INTEGER NOT NULL,
        PRIMARY KEY (node_id, lun, initiator_port, target_port),
        UNIQUE (node_id, lun, position),
        FOREIGN KEY (node_id, lun) REFERENCES pr_state(node_id, lun) ON DELETE CASCADE
    );
    ",
];

/// The version a fully migrated database has.
pub fn latest() -> i64 {
    MIGRATIONS.len() as i64
}

/// The migration a database at `current` needs next (an index into either
/// backend's list), `None` when it is up to date; a database newer than this
/// binary is an error for both backends alike.
pub fn next(current: i64) -> Result<Option<usize>, super::StoreError> {
    if current > latest() {
        return Err(super::StoreError::SchemaTooNew {
            found: current,
            known: latest(),
        });
    }
    Ok((current < latest()).then_some(current.max(0) as usize))
}

/// The same history in PostgreSQL's dialect: entry `i` makes the same
/// tables and columns as [`MIGRATIONS`]`[i]`. Differences: integers are
/// BIGINT (Rust reads every one as i64), ids are identity columns, flags are
/// BOOLEAN, names sort bytewise (`COLLATE "C"`, as SQLite's BINARY does,
/// whatever the database's locale), and a trigger NOTIFYs every change of
/// the generation (see `postgres::notify`).
pub const POSTGRES_MIGRATIONS: &[&str] = &[
    // 1
    r#"
    CREATE TABLE images (
        id       BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        name     TEXT COLLATE "C" NOT NULL,
        version  BIGINT NOT NULL CHECK (version > 0),
        path     TEXT NOT NULL UNIQUE,
        bytes    BIGINT NOT NULL CHECK (bytes > 0),
        sha256   TEXT NOT NULL,
        created  BIGINT NOT NULL,
        UNIQUE (name, version)
    );
    CREATE TABLE templates (
        name     TEXT COLLATE "C" PRIMARY KEY,
        image    TEXT COLLATE "C" NOT NULL,
        script   TEXT,
        created  BIGINT NOT NULL
    );
    CREATE TABLE nodes (
        id            BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        name          TEXT COLLATE "C" NOT NULL UNIQUE,
        mac           TEXT COLLATE "C" NOT NULL UNIQUE,
        image_id      BIGINT NOT NULL REFERENCES images(id),
        template      TEXT COLLATE "C" REFERENCES templates(name),
        ip            TEXT UNIQUE,
        target_iqn    TEXT NOT NULL UNIQUE,
        initiator_iqn TEXT NOT NULL UNIQUE,
        chap_user     TEXT NOT NULL,
        chap_secret   TEXT NOT NULL,
        overlay_path  TEXT NOT NULL UNIQUE,
        state         TEXT NOT NULL CHECK (state IN ('creating', 'ready', 'releasing')),
        revision      BIGINT NOT NULL DEFAULT 0,
        created       BIGINT NOT NULL
    );
    CREATE INDEX nodes_image ON nodes(image_id);
    CREATE TABLE generation (
        id     INTEGER PRIMARY KEY CHECK (id = 1),
        value  BIGINT NOT NULL
    );
    INSERT INTO generation (id, value) VALUES (1, 0);
    CREATE FUNCTION bootd_registry_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('bootd_registry', NEW.value::text);
        RETURN NEW;
    END
    $$;
    CREATE TRIGGER generation_notify AFTER UPDATE ON generation
        FOR EACH ROW EXECUTE FUNCTION bootd_registry_changed();
    "#,
    // 2
    r#"
    CREATE TABLE discovered (
        mac           TEXT COLLATE "C" PRIMARY KEY,
        arch          BIGINT,
        vendor_class  TEXT NOT NULL,
        ipxe          BOOLEAN NOT NULL,
        first_seen    BIGINT NOT NULL,
        last_seen     BIGINT NOT NULL,
        requests      BIGINT NOT NULL
    );
    CREATE TABLE boot_stages (
        mac     TEXT COLLATE "C" NOT NULL,
        stage   TEXT COLLATE "C" NOT NULL,
        at_ms   BIGINT NOT NULL,
        detail  TEXT NOT NULL,
        PRIMARY KEY (mac, stage)
    );
    "#,
    // 3
    "
    ALTER TABLE nodes
        ADD COLUMN mutual_user TEXT,
        ADD COLUMN mutual_secret TEXT,
        ADD CONSTRAINT nodes_mutual_pair
            CHECK ((mutual_secret IS NULL) = (mutual_user IS NULL));
    ",
    // 4
    "
    ALTER TABLE templates ADD COLUMN user_data TEXT;
    ALTER TABLE nodes
        ADD COLUMN user_data TEXT,
        ADD COLUMN overlay_generation BIGINT NOT NULL DEFAULT 0
            CONSTRAINT nodes_overlay_generation_check CHECK (overlay_generation >= 0);
    UPDATE nodes SET overlay_generation = 1 WHERE state <> 'creating';
    ",
    // 5
    r#"
    CREATE TABLE servers (
        id            TEXT COLLATE "C" PRIMARY KEY,
        iscsi         TEXT NOT NULL,
        http_port     BIGINT NOT NULL,
        started_at    BIGINT NOT NULL,
        heartbeat_at  BIGINT NOT NULL,
        sessions      BIGINT NOT NULL DEFAULT 0,
        bytes_served  BIGINT NOT NULL DEFAULT 0
    );
    ALTER TABLE nodes
        ADD COLUMN owner TEXT COLLATE "C",
        ADD COLUMN owner_epoch BIGINT NOT NULL DEFAULT 0
            CONSTRAINT nodes_owner_epoch_check CHECK (owner_epoch >= 0),
        ADD COLUMN pinned_server TEXT COLLATE "C";
    "#,
    // 6
    r#"
    CREATE TABLE leases (
        address     TEXT COLLATE "C" PRIMARY KEY,
        mac         TEXT COLLATE "C" NOT NULL,
        server_id   TEXT COLLATE "C" NOT NULL,
        state       TEXT NOT NULL CHECK (state IN ('offered', 'bound')),
        expires_at  BIGINT NOT NULL
    );
    CREATE INDEX leases_mac ON leases(mac);
    "#,
    // 7
    r#"
    CREATE TABLE api_tokens (
        name       TEXT COLLATE "C" PRIMARY KEY,
        sha256     TEXT NOT NULL UNIQUE,
        read_only  BOOLEAN NOT NULL,
        created    BIGINT NOT NULL,
        last_used  BIGINT
    );
    "#,
    // 8
    "
    ALTER TABLE servers ADD COLUMN draining BIGINT NOT NULL DEFAULT 0;
    ",
    // 9
    r#"
    ALTER TABLE leases
        DROP CONSTRAINT leases_state_check,
        ADD CONSTRAINT leases_state_check
            CHECK (state IN ('offered', 'bound', 'declined')),
        ADD COLUMN changed_xid BIGINT NOT NULL
            DEFAULT CAST(CAST(pg_current_xact_id() AS TEXT) AS BIGINT);
    CREATE INDEX leases_changed ON leases(changed_xid);
    "#,
    // 10
    r#"
    CREATE TABLE pr_state (
        node_id            BIGINT NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
        lun                BIGINT NOT NULL CHECK (lun >= 0),
        overlay_generation BIGINT NOT NULL,
        pr_generation      BIGINT NOT NULL CHECK (pr_generation BETWEEN 0 AND 4294967295),
        aptpl              BOOLEAN NOT NULL,
        res_type           BIGINT CHECK (res_type BETWEEN 1 AND 15),
        res_scope          BIGINT CHECK (res_scope = 0),
        holder_initiator   TEXT COLLATE "C",
        holder_target      TEXT COLLATE "C",
        CHECK ((res_type IS NULL) = (res_scope IS NULL)
           AND (res_type IS NULL) = (holder_initiator IS NULL)
           AND (res_type IS NULL) = (holder_target IS NULL)),
        PRIMARY KEY (node_id, lun)
    );
    CREATE TABLE pr_registrations (
        node_id        BIGINT NOT NULL,
        lun            BIGINT NOT NULL,
        position       BIGINT NOT NULL,
        initiator_port TEXT COLLATE "C" NOT NULL,
        target_port    TEXT COLLATE "C" NOT NULL,
        relative_port  BIGINT NOT NULL CHECK (relative_port BETWEEN 0 AND 65535),
        reg_key        BIGINT NOT NULL,
        PRIMARY KEY (node_id, lun, initiator_port, target_port),
        UNIQUE (node_id, lun, position),
        FOREIGN KEY (node_id, lun) REFERENCES pr_state(node_id, lun) ON DELETE CASCADE
    );
    "#,
];

// One history: every migration has both dialects.
const _: () = assert!(MIGRATIONS.len() == POSTGRES_MIGRATIONS.len());
