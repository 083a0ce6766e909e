//! The bodies of the store tests; `super` runs each against every backend.

use super::{Dialect, Fixture};
use crate::store::{
    BootStage, Discovered, MutualChap, NewImage, NewNode, NodeState, Result, StoreError,
};

pub(super) fn image(name: &str, version: u32) -> NewImage {
    NewImage {
        name: name.into(),
        version,
        path: format!("/data/images/{name}-v{version}.raw").into(),
        bytes: 1 << 20,
        sha256: "00".repeat(32),
    }
}

pub(super) fn node(name: &str, mac: &str, image_id: i64) -> NewNode {
    NewNode {
        name: name.into(),
        mac: mac.parse().unwrap_or(bootd_plan::Mac::new([0; 6])),
        image_id,
        template: None,
        ip: None,
        target_iqn: format!("iqn.t:{name}"),
        initiator_iqn: format!("iqn.i:{name}"),
        chap_user: name.into(),
        chap_secret: "0123456789abcdef".into(),
        overlay_path: format!("/data/overlays/{name}.qcow2").into(),
        user_data: None,
    }
}

pub fn every_write_bumps_the_generation(f: Fixture) -> Result<()> {
    let mut s = f.open()?;
    let g0 = s.generation()?;
    let img = s.add_image(&image("deb", 1))?;
    let g1 = s.generation()?;
    assert!(g1 > g0);
    s.add_node(&node("a", "02:00:00:00:00:01", img.id))?;
    let g2 = s.generation()?;
    assert!(g2 > g1);
    s.set_node_state("a", NodeState::Ready)?;
    assert!(s.generation()? > g2);
    // Reads do not.
    let g3 = s.generation()?;
    s.nodes()?;
    s.images()?;
    assert_eq!(s.generation()?, g3);
    Ok(())
}

pub fn versions_and_latest(f: Fixture) -> Result<()> {
    let mut s = f.open()?;
    assert_eq!(s.max_image_version("deb")?, 0);
    s.add_image(&image("deb", 1))?;
    s.add_image(&image("deb", 2))?;
    assert_eq!(s.max_image_version("deb")?, 2);
    assert_eq!(s.latest_image("deb")?.version, 2);
    assert!(matches!(
        s.add_image(&image("deb", 2)),
        Err(StoreError::Duplicate { .. })
    ));
    assert!(matches!(
        s.latest_image("nope"),
        Err(StoreError::NotFound { .. })
    ));
    Ok(())
}

pub fn duplicates_and_lookups(f: Fixture) -> Result<()> {
    let mut s = f.open()?;
    let img = s.add_image(&image("deb", 1))?;
    s.add_node(&node("a", "02:00:00:00:00:01", img.id))?;
    let err = s.add_node(&node("b", "02:00:00:00:00:01", img.id));
    assert!(
        matches!(err, Err(StoreError::Duplicate { field: "MAC", .. })),
        "{err:?}"
    );
    let err = s.add_node(&node("a", "02:00:00:00:00:02", img.id));
    assert!(matches!(
        err,
        Err(StoreError::Duplicate { field: "name", .. })
    ));
    assert_eq!(s.node("02:00:00:00:00:01")?.name, "a");
    assert_eq!(s.node("a")?.image.name, "deb");
    assert_eq!(s.node("a")?.state, NodeState::Creating);
    Ok(())
}

pub fn image_and_template_removal_is_refused_while_used(f: Fixture) -> Result<()> {
    let mut s = f.open()?;
    let v1 = s.add_image(&image("deb", 1))?;
    s.add_image(&image("deb", 2))?;
    s.add_template("t", "deb", Some("#!ipxe"), None)?;
    let mut n = node("a", "02:00:00:00:00:01", v1.id);
    n.template = Some("t".into());
    s.add_node(&n)?;
    assert!(matches!(
        s.remove_image("deb"),
        Err(StoreError::InUse { .. })
    ));
    assert!(matches!(
        s.remove_template("t"),
        Err(StoreError::InUse { .. })
    ));
    s.remove_node("a")?;
    // The template still names the image.
    assert!(matches!(
        s.remove_image("deb"),
        Err(StoreError::InUse { .. })
    ));
    s.remove_template("t")?;
    assert_eq!(s.remove_image("deb")?.len(), 2);
    assert!(s.images()?.is_empty());
    Ok(())
}

pub fn reopening_keeps_data_and_a_newer_schema_is_refused(f: Fixture) -> Result<()> {
    {
        let mut s = f.open()?;
        s.add_image(&image("deb", 1))?;
    }
    {
        let s = f.open()?;
        assert_eq!(s.images()?.len(), 1);
        f.exec("UPDATE schema_version SET version = 999")?;
    }
    assert!(matches!(
        f.open(),
        Err(StoreError::SchemaTooNew { found: 999, .. })
    ));
    Ok(())
}

pub fn node_revisions_move_with_state_and_image(f: Fixture) -> Result<()> {
    let mut s = f.open()?;
    let v1 = s.add_image(&image("deb", 1))?;
    let v2 = s.add_image(&image("deb", 2))?;
    let n = s.add_node(&node("a", "02:00:00:00:00:01", v1.id))?;
    let r = s.node_overlay_ready("a", v1.id)?;
    assert_eq!(r.state, NodeState::Ready);
    assert!(r.revision > n.revision);
    let rel = s.set_node_state("a", NodeState::Releasing)?;
    assert!(rel.revision > r.revision);
    let moved = s.node_overlay_ready("a", v2.id)?;
    assert_eq!(moved.image.version, 2);
    assert!(moved.revision > rel.revision);
    assert!(matches!(
        s.set_node_state("ghost", NodeState::Ready),
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(s.remove_node("a")?.name, "a");
    assert!(matches!(s.node("a"), Err(StoreError::NotFound { .. })));
    Ok(())
}

/// A database written by a bootd from before migration 3 (schema version 2)
/// with one node in it.
fn version_2_database(f: &Fixture) -> Result<()> {
    f.exec(
        "CREATE TABLE schema_version (version BIGINT NOT NULL);
         INSERT INTO schema_version (version) VALUES (2);",
    )?;
    for m in &f.migrations()[..2] {
        f.exec(m)?;
    }
    f.exec(
        "INSERT INTO images (name, version, path, bytes, sha256, created)
         VALUES ('deb', 1, '/data/images/deb-v1.raw', 1048576, 'aa', 1);
         INSERT INTO nodes (name, mac, image_id, template, ip, target_iqn, initiator_iqn,
                            chap_user, chap_secret, overlay_path, state, revision, created)
         VALUES ('old', '02:00:00:00:00:01', 1, NULL, NULL, 'iqn.t:old', 'iqn.i:old',
                 'old', '0123456789abcdef', '/data/overlays/old.qcow2', 'ready', 4, 1);",
    )?;
    Ok(())
}

pub fn migration_3_leaves_existing_nodes_without_mutual_chap(f: Fixture) -> Result<()> {
    version_2_database(&f)?;
    let mut s = f.open()?;
    assert_version(&f, crate::store::schema::latest())?;
    let n = s.node("old")?;
    assert_eq!(n.mutual_chap, None);
    // Migrating is not a change serve has to act on.
    assert_eq!(n.revision, 4);
    assert_eq!(n.chap_secret, "0123456789abcdef");
    let m = MutualChap {
        user: "bootd".into(),
        secret: "fedcba9876543210".into(),
    };
    let on = s.set_mutual_chap("old", Some(&m))?;
    assert_eq!(on.mutual_chap.as_ref(), Some(&m));
    assert!(on.revision > n.revision);
    drop(s);
    // Kept across a reopen; off again clears both columns.
    let mut s = f.open()?;
    assert_eq!(s.node("old")?.mutual_chap, Some(m));
    let off = s.set_mutual_chap("old", None)?;
    assert_eq!(off.mutual_chap, None);
    assert!(off.revision > on.revision);
    Ok(())
}

pub fn mutual_chap_moves_the_generation_and_half_credentials_are_refused(f: Fixture) -> Result<()> {
    let mut s = f.open()?;
    let img = s.add_image(&image("deb", 1))?;
    s.add_node(&node("a", "02:00:00:00:00:01", img.id))?;
    let g = s.generation()?;
    let m = MutualChap {
        user: "bootd".into(),
        secret: "fedcba9876543210".into(),
    };
    s.set_mutual_chap("a", Some(&m))?;
    assert!(s.generation()? > g);
    assert!(matches!(
        s.set_mutual_chap("ghost", Some(&m)),
        Err(StoreError::NotFound { .. })
    ));
    // A name without a secret (or the reverse) never gets stored.
    for sql in [
        "UPDATE nodes SET mutual_secret = NULL WHERE name = 'a'",
        "UPDATE nodes SET mutual_user = NULL WHERE name = 'a'",
    ] {
        assert!(f.exec(sql).is_err(), "{sql}");
    }
    assert_eq!(s.node("a")?.mutual_chap, Some(m));
    Ok(())
}

/// A value the types refuse, written behind the store's back (by hand, or
/// by an older bootd): reading the nodes is an error naming it, not a node
/// silently missing from the fleet.
pub fn a_stored_value_that_does_not_parse_is_an_error(f: Fixture) -> Result<()> {
    let mut s = f.open()?;
    let img = s.add_image(&image("deb", 1))?;
    s.add_node(&node("a", "02:00:00:00:00:01", img.id))?;
    f.exec("UPDATE nodes SET mac = 'not-a-mac' WHERE name = 'a'")?;
    let e = s
        .nodes()
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(!e.is_empty(), "a bad MAC read as a node");
    f.exec("UPDATE nodes SET mac = '02:00:00:00:00:01', ip = '192.0.2.999' WHERE name = 'a'")?;
    assert!(s.nodes().is_err(), "a bad address read as a node");
    f.exec("UPDATE nodes SET ip = '192.0.2.9' WHERE name = 'a'")?;
    let n = s.node("a")?;
    assert_eq!(n.ip, Some(std::net::Ipv4Addr::new(192, 0, 2, 9).into()));
    assert_eq!(n.mac.to_string(), "02:00:00:00:00:01");
    Ok(())
}

/// A database written by a bootd from before migration 4 (schema version
/// 3): a template, a ready node on it and one still being created.
fn version_3_database(f: &Fixture) -> Result<()> {
    f.exec(
        "CREATE TABLE schema_version (version BIGINT NOT NULL);
         INSERT INTO schema_version (version) VALUES (3);",
    )?;
    for m in &f.migrations()[..3] {
        f.exec(m)?;
    }
    f.exec(
        "INSERT INTO images (name, version, path, bytes, sha256, created)
         VALUES ('deb', 1, '/data/images/deb-v1.raw', 1048576, 'aa', 1);
         INSERT INTO templates (name, image, script, created) VALUES ('t', 'deb', '#!ipxe', 1);
         INSERT INTO nodes (name, mac, image_id, template, ip, target_iqn, initiator_iqn,
                            chap_user, chap_secret, overlay_path, state, revision, created,
                            mutual_user, mutual_secret)
         VALUES ('old', '02:00:00:00:00:01', 1, 't', '192.0.2.7', 'iqn.t:old', 'iqn.i:old',
                 'old', '0123456789abcdef', '/data/overlays/old.qcow2', 'ready', 4, 1,
                 'bootd', 'fedcba9876543210'),
                ('new', '02:00:00:00:00:02', 1, NULL, NULL, 'iqn.t:new', 'iqn.i:new',
                 'new', 'abcdef0123456789', '/data/overlays/new.qcow2', 'creating', 0, 2,
                 NULL, NULL);",
    )?;
    Ok(())
}

pub fn migration_4_keeps_rows_and_numbers_existing_overlays(f: Fixture) -> Result<()> {
    version_3_database(&f)?;
    let mut s = f.open()?;
    assert_version(&f, crate::store::schema::latest())?;
    let old = s.node("old")?;
    assert_eq!(
        (
            old.template.as_deref(),
            old.revision,
            old.chap_secret.as_str()
        ),
        (Some("t"), 4, "0123456789abcdef")
    );
    assert_eq!(old.ip, Some(std::net::Ipv4Addr::new(192, 0, 2, 7).into()));
    assert_eq!(
        old.mutual_chap.map(|m| m.secret).as_deref(),
        Some("fedcba9876543210")
    );
    assert_eq!(old.user_data, None);
    // It has an overlay already: its first.
    assert_eq!(old.overlay_generation, 1);
    // Migration 5: no owner, no pin, epoch 0 until a server claims it.
    assert_eq!(
        (
            old.owner.as_deref(),
            old.owner_epoch,
            old.pinned_server.as_deref()
        ),
        (None, 0, None)
    );
    let new = s.node("new")?;
    assert_eq!(
        (new.state, new.overlay_generation),
        (NodeState::Creating, 0)
    );
    let t = s.template("t")?;
    assert_eq!((t.script.as_deref(), t.user_data), (Some("#!ipxe"), None));
    // The first overlay of the node that was being made is its first.
    assert_eq!(
        s.node_overlay_ready("new", new.image.id)?
            .overlay_generation,
        1
    );
    assert_eq!(
        s.node_overlay_ready("old", old.image.id)?
            .overlay_generation,
        2
    );
    Ok(())
}

pub fn user_data_is_stored_on_templates_and_nodes(f: Fixture) -> Result<()> {
    let mut s = f.open()?;
    let img = s.add_image(&image("deb", 1))?;
    let t = s.add_template(
        "t",
        "deb",
        None,
        Some("#cloud-config\nhostname: {{ name }}\n"),
    )?;
    assert_eq!(
        t.user_data.as_deref(),
        Some("#cloud-config\nhostname: {{ name }}\n")
    );
    assert_eq!(s.templates()?[0], t);
    assert_eq!(s.add_template("plain", "deb", None, None)?.user_data, None);
    let mut n = node("a", "02:00:00:00:00:01", img.id);
    n.template = Some("t".into());
    n.user_data = Some("#cloud-config\n{}\n".into());
    let a = s.add_node(&n)?;
    assert_eq!(a.user_data.as_deref(), Some("#cloud-config\n{}\n"));
    let b = s.add_node(&node("b", "02:00:00:00:00:02", img.id))?;
    assert_eq!(b.user_data, None);
    assert_eq!(s.node("a")?, a);
    Ok(())
}

pub fn every_fresh_overlay_moves_the_overlay_generation(f: Fixture) -> Result<()> {
    let mut s = f.open()?;
    let v1 = s.add_image(&image("deb", 1))?;
    let v2 = s.add_image(&image("deb", 2))?;
    let n = s.add_node(&node("a", "02:00:00:00:00:01", v1.id))?;
    assert_eq!(n.overlay_generation, 0, "no overlay yet");
    assert_eq!(s.node_overlay_ready("a", v1.id)?.overlay_generation, 1);
    // Other changes leave it alone.
    s.set_node_state("a", NodeState::Releasing)?;
    let m = MutualChap {
        user: "bootd".into(),
        secret: "fedcba9876543210".into(),
    };
    assert_eq!(s.set_mutual_chap("a", Some(&m))?.overlay_generation, 1);
    // Reset (same version), then move.
    assert_eq!(s.node_overlay_ready("a", v1.id)?.overlay_generation, 2);
    let moved = s.node_overlay_ready("a", v2.id)?;
    assert_eq!((moved.overlay_generation, moved.image.version), (3, 2));
    // A stored value the type refuses is an error, not a wrapped number.
    f.exec(match f.dialect {
        Dialect::Sqlite => {
            "PRAGMA ignore_check_constraints = ON;
             UPDATE nodes SET overlay_generation = -1 WHERE name = 'a';"
        }
        Dialect::Postgres => {
            "ALTER TABLE nodes DROP CONSTRAINT nodes_overlay_generation_check;
             UPDATE nodes SET overlay_generation = -1 WHERE name = 'a';"
        }
    })?;
    assert!(s.node("a").is_err(), "a negative generation read as a node");
    Ok(())
}

/// The schema version the fixture's database records.
pub(super) fn assert_version(f: &Fixture, want: i64) -> Result<()> {
    assert_eq!(
        f.scalar("SELECT CAST(MAX(version) AS BIGINT) FROM schema_version")?,
        want
    );
    Ok(())
}

pub fn discovered_and_stages(f: Fixture) -> Result<()> {
    let mut s = f.open()?;
    let g = s.generation()?;
    let mut d = Discovered {
        mac: "52:54:00:00:00:01".into(),
        arch: Some(7),
        vendor_class: "PXEClient:Arch:00007".into(),
        ipxe: false,
        first_seen: 100,
        last_seen: 100,
        requests: 1,
    };
    s.note_discovered(&d)?;
    d.last_seen = 200;
    d.first_seen = 200;
    d.ipxe = true;
    s.note_discovered(&d)?;
    let got = s.discovered()?;
    assert_eq!(got.len(), 1);
    assert_eq!(
        (
            got[0].first_seen,
            got[0].last_seen,
            got[0].requests,
            got[0].ipxe
        ),
        (100, 200, 2, true)
    );
    assert_eq!(got[0].arch, Some(7));
    let st = |stage: &str, at_ms| BootStage {
        stage: stage.into(),
        at_ms,
        detail: String::new(),
    };
    s.record_stage(&d.mac, &st("dhcp", 1), true)?;
    s.record_stage(&d.mac, &st("tftp", 2), false)?;
    assert_eq!(s.boot_stages(&d.mac)?.len(), 2);
    s.record_stage(&d.mac, &st("dhcp", 3), true)?;
    assert_eq!(s.boot_stages(&d.mac)?, vec![st("dhcp", 3)]);
    // Each MAC's newest stage, all in one: ties at one millisecond go to
    // the name `boot_stages` lists last, and the boot's start comes along.
    let other = "52:54:00:00:00:99";
    s.record_stage(other, &st("dhcp", 10), true)?;
    s.record_stage(other, &st("tftp", 12), false)?;
    s.record_stage(other, &st("script", 12), false)?;
    let mut last = s.last_stages()?;
    last.sort_by(|a, b| a.mac.cmp(&b.mac));
    let want = |mac: &str, stage: &str, at_ms, boot_started_ms| crate::store::LastStage {
        mac: mac.into(),
        stage: stage.into(),
        at_ms,
        boot_started_ms,
    };
    assert_eq!(
        last,
        vec![want(&d.mac, "dhcp", 3, 3), want(other, "tftp", 12, 10)]
    );
    assert_eq!(
        s.boot_stages(other)?.last().map(|b| b.stage.clone()),
        Some("tftp".into())
    );
    // Neither moves what serve watches.
    assert_eq!(s.generation()?, g);
    // Adding the MAC as a node takes it off the list.
    let img = s.add_image(&image("deb", 1))?;
    s.add_node(&node("a", "52:54:00:00:00:01", img.id))?;
    assert!(s.discovered()?.is_empty());
    Ok(())
}

mod concurrent;
pub use concurrent::*;
mod reservations;
pub use reservations::*;
mod servers;
pub use servers::*;
