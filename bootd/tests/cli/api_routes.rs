//! Every API route against a real serve: what it answers is what the CLI
//! says, and bad bodies are refused with nothing changed.

use crate::api::{agent, call, code, registry, token, ApiServe};
use crate::common::*;
use serde_json::{json, Value};

#[test]
fn every_route_does_what_the_cli_does() -> Result {
    let env = Env::new()?;
    let raw = env.path("g.raw");
    golden(&raw, 8 << 20, 1 << 20, 0x5a)?;
    let full = token(&env, "ops", false)?;
    let ro = token(&env, "viewer", true)?;
    let dir = env.dir.path().to_string_lossy().to_string();
    let serve = ApiServe::start(&env, &["--api-import-dir", &dir])?;
    let t = Some(full.as_str());

    // Images: import from a path on the server (in the import directory,
    // absolute or relative), list, (remove at the end).
    let body = json!({"name": "deb", "path": "g.raw"}).to_string();
    let (s, img) = serve.call("POST", "/images", t, Some(&body))?;
    assert_eq!(s, 201, "{img}");
    assert_eq!(
        (img["name"].as_str(), img["version"].as_u64()),
        (Some("deb"), Some(1))
    );
    assert_eq!(
        img["sha256"].as_str().map(str::to_string),
        Some(sha256(&raw)?)
    );
    let (s, v) = serve.call("GET", "/images", Some(&ro), None)?;
    assert_eq!(s, 200);
    assert_eq!(v, env.json(&["image", "list", "--json"])?);
    let (s, v) = serve.call(
        "POST",
        "/images",
        t,
        Some(r#"{"name":"x","path":"nonexistent.raw"}"#),
    )?;
    assert_eq!((s, code(&v)), (404, "not_found"), "{v}");
    // Nothing outside the import directory: not by absolute path, `..`
    // or a symbolic link (serve runs as root: a token must not read
    // /etc/shadow into an image).
    std::os::unix::fs::symlink("/etc/passwd", env.path("link.raw"))?;
    for path in [
        "/etc/passwd",
        "../../etc/passwd",
        "link.raw",
        "/etc/nonexistent",
    ] {
        let body = json!({"name": "x", "path": path}).to_string();
        let (s, v) = serve.call("POST", "/images", t, Some(&body))?;
        assert_eq!((s, code(&v)), (403, "path_not_allowed"), "{path}: {v}");
    }
    assert_eq!(
        env.json(&["image", "list", "--json"])?
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    // Templates: add (checked by a trial render), list, show, refuse a
    // broken script, remove.
    let body = json!({"name": "lab", "image": "deb", "script": "#!ipxe\necho {{ node_name }} on {{ target_iqn }}\n{% include \"sanboot.ipxe\" %}\n"});
    let (s, v) = serve.call("POST", "/templates", t, Some(&body.to_string()))?;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["name"], "lab");
    let (s, v) = serve.call("POST", "/templates", t, Some(&body.to_string()))?;
    assert_eq!((s, code(&v)), (409, "already_exists"), "{v}");
    let broken = json!({"name": "bad", "image": "deb", "script": "#!ipxe\n{% if %}\n"});
    let (s, v) = serve.call("POST", "/templates", t, Some(&broken.to_string()))?;
    assert_eq!((s, code(&v)), (422, "rejected"), "{v}");
    let (s, v) = serve.call("GET", "/templates", Some(&ro), None)?;
    assert_eq!(s, 200);
    assert_eq!(v, env.json(&["template", "list", "--json"])?);
    let (s, v) = serve.call("GET", "/templates/lab", Some(&ro), None)?;
    assert_eq!((s, v["image"].as_str()), (200, Some("deb")));
    let (s, v) = serve.call("GET", "/templates/nope", Some(&ro), None)?;
    assert_eq!((s, code(&v)), (404, "not_found"));

    // Nodes: add from the template, list (no secrets), show (secrets for a
    // full token only), the boot timeline, reset, move, remove.
    let body =
        json!({"mac": "52-54-00-00-A0-01", "template": "lab", "name": "n1", "mutual_chap": true});
    let (s, n1) = serve.call("POST", "/nodes", t, Some(&body.to_string()))?;
    assert_eq!(s, 201, "{n1}");
    assert_eq!(n1["mac"], "52:54:00:00:a0:01");
    let cli = env.json(&["node", "show", "n1", "--json"])?;
    assert_eq!(n1["chap_secret"], cli["chap_secret"]);
    assert!(n1["mutual_chap_secret"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    let (s, v) = serve.call("POST", "/nodes", t, Some(&body.to_string()))?;
    assert_eq!((s, code(&v)), (409, "already_exists"), "{v}");
    let (s, v) = serve.call(
        "POST",
        "/nodes",
        t,
        Some(r#"{"mac":"52:54:00:00:a0:09","image":"deb","template":"lab"}"#),
    )?;
    assert_eq!((s, code(&v)), (422, "invalid_body"), "{v}");
    // serve claims the new node (its owner) a moment after it is added:
    // compare once that settled.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let list = loop {
        let (s, list) = serve.call("GET", "/nodes", Some(&ro), None)?;
        assert_eq!(s, 200);
        let cli = env.json(&["node", "list", "--json"])?;
        if list == cli || std::time::Instant::now() > deadline {
            assert_eq!(list, cli);
            break list;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let text = list.to_string();
    assert!(!text.contains("chap_secret"), "{text}");
    let (s, shown) = serve.call("GET", "/nodes/n1", t, None)?;
    assert_eq!(s, 200);
    assert_eq!(shown["chap_secret"], cli["chap_secret"]);
    assert_eq!(shown["target_iqn"], cli["target_iqn"]);
    // By MAC, read-only: no secrets.
    let (s, shown) = serve.call("GET", "/nodes/52:54:00:00:a0:01", Some(&ro), None)?;
    assert_eq!((s, shown["name"].as_str()), (200, Some("n1")));
    assert!(shown.get("chap_secret").is_none() && shown.get("mutual_chap_secret").is_none());
    assert_eq!(shown["chap_user"], cli["chap_user"]);
    let (s, v) = serve.call("GET", "/nodes/nope", Some(&ro), None)?;
    assert_eq!((s, code(&v)), (404, "not_found"), "{v}");
    let (s, v) = serve.call("GET", "/nodes/n1/boot", Some(&ro), None)?;
    assert_eq!(s, 200);
    assert_eq!(v["stages"], json!([]));

    // A second version, then reset --latest moves n1 to it.
    let body = json!({"name": "deb", "path": raw}).to_string();
    let (s, _) = serve.call("POST", "/images", t, Some(&body))?;
    assert_eq!(s, 201);
    let (s, v) = serve.call("POST", "/nodes/n1/reset", t, Some("{}"))?;
    assert_eq!((s, v["image_version"].as_u64()), (200, Some(1)), "{v}");
    let gen = v["overlay_generation"].as_u64().unwrap_or(0);
    let (s, v) = serve.call("POST", "/nodes/n1/reset", t, Some(r#"{"latest":true}"#))?;
    assert_eq!((s, v["image_version"].as_u64()), (200, Some(2)), "{v}");
    assert_eq!(v["overlay_generation"].as_u64(), Some(gen + 1));
    let (s, v) = serve.call(
        "POST",
        "/nodes/n1/move",
        t,
        Some(r#"{"latest":true,"server":"x"}"#),
    )?;
    assert_eq!((s, code(&v)), (422, "invalid_body"), "{v}");
    let (s, v) = serve.call("POST", "/nodes/n1/move", t, Some(r#"{"server":"nope"}"#))?;
    assert_eq!((s, code(&v)), (404, "not_found"), "{v}");
    let (s, servers) = serve.call("GET", "/servers", Some(&ro), None)?;
    assert_eq!(s, 200);
    let me = servers[0]["id"].as_str().ok_or("no server")?.to_string();
    assert_eq!(servers[0]["live"], true);
    let (s, v) = serve.call(
        "POST",
        "/nodes/n1/move",
        t,
        Some(&json!({"server": me}).to_string()),
    )?;
    assert_eq!(
        (s, v["pinned_server"].as_str()),
        (200, Some(me.as_str())),
        "{v}"
    );
    let (s, v) = serve.call("POST", "/nodes/n1/move", t, Some(r#"{"server":"none"}"#))?;
    assert_eq!((s, v["pinned_server"].clone()), (200, Value::Null), "{v}");

    // df as the CLI measures it.
    let (s, df) = serve.call("GET", "/df", Some(&ro), None)?;
    assert_eq!(s, 200);
    let cli = env.json(&["df", "--json"])?;
    assert_eq!(df["logical_bytes"], cli["logical_bytes"]);
    assert_eq!(df["nodes"], 1);

    // Discovered machines: one recorded as serve --unknown discover would.
    let (s, v) = serve.call("GET", "/discovered", Some(&ro), None)?;
    assert_eq!((s, v), (200, json!([])));
    let (s, v) = serve.call(
        "POST",
        "/discovered/adopt",
        t,
        Some(r#"{"all":true,"image":"deb"}"#),
    )?;
    assert_eq!((s, code(&v)), (422, "rejected"), "{v}");
    let db = rusqlite::Connection::open(env.data().join("bootd.db"))?;
    db.execute(
        "INSERT INTO discovered (mac, arch, vendor_class, ipxe, first_seen, last_seen, requests)
         VALUES ('52:54:00:00:a0:07', 7, 'PXEClient:Arch:00007', 0, 1, 2, 1)",
        [],
    )?;
    let (s, v) = serve.call("GET", "/discovered", Some(&ro), None)?;
    assert_eq!(s, 200);
    assert_eq!(v, env.json(&["node", "list", "--discovered", "--json"])?);
    assert_eq!(v[0]["mac"], "52:54:00:00:a0:07");
    let (s, v) = serve.call(
        "POST",
        "/discovered/adopt",
        t,
        Some(r#"{"macs":["52:54:00:00:a0:07"],"image":"deb"}"#),
    )?;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v[0]["mac"], "52:54:00:00:a0:07");
    assert!(v[0].get("chap_secret").is_none());
    env.json(&["node", "show", "52:54:00:00:a0:07", "--json"])?;

    // Removals: refused while used, then done.
    let (s, v) = serve.call("DELETE", "/images/deb", t, None)?;
    assert_eq!((s, code(&v)), (409, "in_use"), "{v}");
    let (s, v) = serve.call("DELETE", "/templates/lab", t, None)?;
    assert_eq!((s, code(&v)), (409, "in_use"), "{v}");
    for n in ["n1", "52:54:00:00:a0:07"] {
        let (s, v) = serve.call("DELETE", &format!("/nodes/{n}"), t, None)?;
        assert_eq!(s, 200, "{v}");
    }
    let (s, v) = serve.call("DELETE", "/nodes/n1", t, None)?;
    assert_eq!((s, code(&v)), (404, "not_found"));
    let (s, _) = serve.call("DELETE", "/templates/lab", t, None)?;
    assert_eq!(s, 200);
    let (s, v) = serve.call("DELETE", "/images/deb", t, None)?;
    assert_eq!((s, v["versions"].clone()), (200, json!([1, 2])), "{v}");
    assert_eq!(env.json(&["image", "list", "--json"])?, json!([]));

    // The boot network's HTTP port never serves the API.
    let (s, _) = call(
        &format!("http://127.0.0.1:{}/api/v1/nodes", serve.http),
        "GET",
        t,
        None,
    )
    .unwrap_or((0, Value::Null));
    assert_ne!(s, 200);
    let (s, v) = serve.call("GET", "/nope", t, None)?;
    assert_eq!((s, code(&v)), (404, "no_such_route"));
    serve.stop()?;
    Ok(())
}

#[test]
fn bad_bodies_are_refused_and_change_nothing() -> Result {
    let env = Env::new()?;
    one_node(&env, "52:54:00:00:a0:01")?;
    let full = token(&env, "ops", false)?;
    let serve = ApiServe::start(&env, &[])?;
    let t = Some(full.as_str());
    let before = registry(&env)?;
    for (method, path, body, status, want) in [
        (
            "POST",
            "/templates",
            "{\"name\":\"t\",",
            400,
            "malformed_json",
        ),
        ("POST", "/templates", "not json", 400, "malformed_json"),
        (
            "POST",
            "/templates",
            r#"{"name":"t","image":"deb","scirpt":"x"}"#,
            422,
            "invalid_body",
        ),
        ("POST", "/templates", r#"{"name":"t"}"#, 422, "invalid_body"),
        (
            "POST",
            "/nodes",
            r#"{"mac":"52:54:00:00:a0:02","image":"deb","admin":true}"#,
            422,
            "invalid_body",
        ),
        (
            "POST",
            "/nodes",
            r#"{"mac":"52:54:00:00:a0:02","image":"deb","ip":"not-an-ip"}"#,
            422,
            "invalid_body",
        ),
        (
            "POST",
            "/nodes",
            r#"{"mac":"not a mac","image":"deb"}"#,
            422,
            "rejected",
        ),
        (
            "POST",
            "/nodes/n1/reset",
            r#"{"latest":"yes"}"#,
            422,
            "invalid_body",
        ),
        (
            "POST",
            "/nodes/n1/move",
            r#"{"latest":true,"extra":1}"#,
            422,
            "invalid_body",
        ),
        (
            "POST",
            "/images",
            r#"{"name":"deb","file":"/etc/passwd"}"#,
            422,
            "invalid_body",
        ),
        ("POST", "/discovered/adopt", "[]", 422, "invalid_body"),
    ] {
        let (s, v) = serve.call(method, path, t, Some(body))?;
        assert_eq!(
            (s, code(&v)),
            (status, want),
            "{method} {path} {:.80}: {v}",
            body
        );
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    // A body without its JSON content type.
    let r = agent()
        .post(&serve.url("/templates"))
        .set("Authorization", &format!("Bearer {full}"))
        .send_string(r#"{"name":"t","image":"deb"}"#);
    match r {
        Err(ureq::Error::Status(415, r)) => {
            let v: Value = serde_json::from_str(&r.into_string()?)?;
            assert_eq!(code(&v), "unsupported_media_type");
        }
        other => panic!("expected 415, got {other:?}"),
    }
    // A huge body, with its length declared and sent chunked (no length up
    // front): 413 either way. curl, since it reads the answer that comes
    // before the body is all sent (a client that does not sees the
    // connection closed under it).
    let huge = env.path("huge.json");
    let script = "x".repeat(2 << 20);
    std::fs::write(
        &huge,
        format!(r#"{{"name":"big","image":"deb","script":"{script}"}}"#),
    )?;
    for chunked in [false, true] {
        let auth = format!("Authorization: Bearer {full}");
        let file = format!("@{}", huge.display());
        let url = serve.url("/templates");
        let mut args = vec![
            "-s",
            "--max-time",
            "20",
            "-w",
            "\n%{http_code}",
            "-H",
            &auth,
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &file,
        ];
        if chunked {
            args.extend(["-H", "Transfer-Encoding: chunked"]);
        }
        args.push(&url);
        let out = tool("curl", &args)?;
        let (body, status) = out.rsplit_once('\n').ok_or("no status")?;
        assert_eq!(status, "413", "chunked {chunked}: {body}");
        let v: Value = serde_json::from_str(body)?;
        assert_eq!(code(&v), "body_too_large", "chunked {chunked}");
    }
    assert_eq!(registry(&env)?, before);
    serve.stop()?;
    Ok(())
}
