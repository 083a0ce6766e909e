//! Servers, ownership claims and API tokens in the store.

use super::*;

/// Servers register and heartbeat without moving the generation; claims
/// are a compare-and-set on the owner with a fencing epoch that only grows;
/// pins name registered servers only.
pub fn servers_heartbeat_and_claim_nodes(f: Fixture) -> Result<()> {
    use crate::store::NewServer;
    let mut s = f.open()?;
    let img = s.add_image(&image("deb", 1))?;
    s.add_node(&node("a", "02:00:00:00:00:01", img.id))?;
    let fresh = s.node("a")?;
    assert_eq!((fresh.owner.as_deref(), fresh.owner_epoch), (None, 0));
    let g0 = s.generation()?;
    for id in ["s1", "s2"] {
        s.register_server(&NewServer {
            id: id.into(),
            iscsi: format!("127.0.0.{}:3260", id.len()),
            http_port: 8080,
        })?;
    }
    assert!(s.heartbeat("s1", 3, 4096)?);
    assert!(!s.heartbeat("nobody", 0, 0)?);
    assert_eq!(s.generation()?, g0, "heartbeats moved the generation");
    let list = s.servers()?;
    let ids: Vec<&str> = list.iter().map(|v| v.id.as_str()).collect();
    assert_eq!(ids, ["s1", "s2"]);
    assert_eq!((list[0].sessions, list[0].bytes_served), (3, 4096));
    assert!(
        list.iter().all(|v| (0..5000).contains(&v.heartbeat_age_ms)),
        "{list:?}"
    );

    // s1 claims; s2 cannot while s1 is live; s1 again moves the epoch on.
    assert_eq!(s.claim_node("a", "s1", 5000)?, Some(1));
    assert!(s.generation()? > g0, "a claim must reach the fleet views");
    let g1 = s.generation()?;
    assert_eq!(s.claim_node("a", "s2", 5000)?, None);
    assert_eq!(
        s.generation()?,
        g1,
        "a refused claim changed the generation"
    );
    assert_eq!(s.claim_node("a", "s1", 5000)?, Some(2));
    assert_eq!(s.claim_node("missing", "s1", 5000)?, None);
    assert_eq!(s.servers()?[0].nodes_owned, 1);
    // s1's heartbeat goes stale: s2 may take the node, with a higher epoch.
    f.exec("UPDATE servers SET heartbeat_at = heartbeat_at - 60000 WHERE id = 's1'")?;
    assert!(s.servers()?[0].heartbeat_age_ms >= 60000);
    assert_eq!(s.claim_node("a", "s2", 5000)?, Some(3));
    assert_eq!(s.node("a")?.owner.as_deref(), Some("s2"));
    // Only the owner releases.
    assert!(!s.release_node("a", "s1")?);
    assert!(s.release_node("a", "s2")?);
    assert_eq!(s.node("a")?.owner, None);
    assert_eq!(s.claim_node("a", "s1", 5000)?, Some(4));

    // Pins: a known server, or none.
    let e = s.pin_node("a", Some("s9"));
    assert!(
        matches!(e, Err(StoreError::NotFound { kind: "server", .. })),
        "{e:?}"
    );
    assert!(matches!(
        s.pin_node("zz", Some("s1")),
        Err(StoreError::NotFound { kind: "node", .. })
    ));
    let g2 = s.generation()?;
    let n = s.pin_node("a", Some("s2"))?;
    assert_eq!(n.pinned_server.as_deref(), Some("s2"));
    assert!(s.generation()? > g2);
    assert_eq!(
        n.revision,
        s.node("a")?.revision,
        "a pin rebuilt the target"
    );
    assert_eq!(s.pin_node("a", None)?.pinned_server, None);
    // A restart under the same id starts its row afresh.
    s.register_server(&NewServer {
        id: "s1".into(),
        iscsi: "127.0.0.9:3261".into(),
        http_port: 1,
    })?;
    let s1 = &s.servers()?[0];
    assert_eq!(
        (s1.iscsi.as_str(), s1.sessions, s1.heartbeat_age_ms < 5000),
        ("127.0.0.9:3261", 0, true)
    );
    // A clean stop: s1's nodes lose their owner, s1 is dead at once, and
    // s2 claims without waiting for s1's heartbeat to expire.
    assert!(s.heartbeat("s2", 0, 0)?);
    assert_eq!(s.node("a")?.owner.as_deref(), Some("s1"));
    let g3 = s.generation()?;
    assert_eq!(s.retire_server("s1", 5000)?, 1);
    assert!(
        s.generation()? > g3,
        "a retirement must reach the fleet views"
    );
    assert_eq!(s.node("a")?.owner, None);
    let s1 = &s.servers()?[0];
    assert!(s1.heartbeat_age_ms > 5000, "{s1:?}");
    assert_eq!(s.retire_server("s1", 5000)?, 0);
    assert_eq!(s.claim_node("a", "s2", 5000)?, Some(5));
    // Draining: a flag on the row, cleared by a restart.
    assert!(!s.servers()?[1].draining);
    assert!(s.set_draining("s2", true)?);
    assert!(s.servers()?[1].draining);
    assert!(!s.set_draining("nobody", true)?);
    s.register_server(&NewServer {
        id: "s2".into(),
        iscsi: "127.0.0.2:3260".into(),
        http_port: 8080,
    })?;
    assert!(!s.servers()?[1].draining);
    assert!(s.set_portal("s2", "192.0.2.50:3260")?);
    assert_eq!(s.servers()?[1].iscsi, "192.0.2.50:3260");
    assert!(!s.set_portal("nobody", "192.0.2.50:3260")?);
    Ok(())
}

/// API tokens: stored by hash, listed by name, a name or hash taken twice
/// is `Duplicate`, use is recorded, removal of a missing one `NotFound`;
/// none of it moves the generation (serve serves nothing differently).
pub fn tokens_are_stored_by_hash_and_listed_by_name(f: Fixture) -> Result<()> {
    let mut s = f.open()?;
    let g0 = s.generation()?;
    let (h1, h2) = ("ab".repeat(32), "cd".repeat(32));
    let t = s.add_token("ops", &h1, false)?;
    assert_eq!(
        (t.name.as_str(), t.read_only, t.last_used),
        ("ops", false, None)
    );
    s.add_token("dash", &h2, true)?;
    assert!(matches!(
        s.add_token("ops", &"ef".repeat(32), true),
        Err(StoreError::Duplicate { kind: "token", .. })
    ));
    assert!(matches!(
        s.add_token("other", &h1, true),
        Err(StoreError::Duplicate { kind: "token", .. })
    ));
    s.token_used("ops", 1_800_000_000)?;
    // Another connection sees the same.
    let listed = f.open()?.tokens()?;
    let names: Vec<_> = listed.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["dash", "ops"]);
    assert_eq!(listed[0].sha256, h2);
    assert!(listed[0].read_only);
    assert_eq!(listed[1].last_used, Some(1_800_000_000));
    assert_eq!(s.generation()?, g0);
    assert_eq!(s.remove_token("dash")?.name, "dash");
    assert!(matches!(
        s.remove_token("dash"),
        Err(StoreError::NotFound { kind: "token", .. })
    ));
    assert_eq!(s.tokens()?.len(), 1);
    Ok(())
}
