//! The operator API (`serve --api-listen`) end to end: a real serve, a real
//! HTTP client, the registry on SQLite (one smoke test on PostgreSQL).
//! Every route, its auth (401 without a token, 403 for a read-only token
//! that changes anything) and its refusals of bad input with nothing
//! changed.

use crate::common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A serve with the API on a free port of 127.0.0.1; its stderr kept in a
/// file (for "no token in the log"); killed on drop.
pub struct ApiServe {
    child: Option<Child>,
    pub iscsi: u16,
    pub http: u16,
    /// `127.0.0.1:PORT` of the API.
    pub api: String,
    pub log: std::path::PathBuf,
}

impl ApiServe {
    pub fn start(env: &Env, extra: &[&str]) -> Result<Self> {
        let mut args = vec![
            "serve",
            "--dhcp",
            "off",
            "--listen-ip",
            "127.0.0.1",
            "--iscsi-port",
            "0",
            "--http-port",
            "0",
            "--tftp-port",
            "0",
            "--api-listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        let log = env.path("serve.log");
        let mut cmd = env.bootd_cmd(&args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?);
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            for _ in 0..4 {
                let mut line = String::new();
                let _ = r.read_line(&mut line);
                let _ = tx.send(line);
            }
        });
        let mut s = Self {
            child: Some(child),
            iscsi: 0,
            http: 0,
            api: String::new(),
            log,
        };
        let addr = |kind: &str| -> Result<String> {
            let line = rx.recv_timeout(Duration::from_secs(20))?;
            Ok(line
                .trim()
                .strip_prefix(kind)
                .ok_or_else(|| format!("expected {kind:?}, serve printed {line:?}"))?
                .to_string())
        };
        let port = |a: String| a.rsplit(':').next().and_then(|p| p.parse().ok());
        s.iscsi = port(addr("iscsi ")?).ok_or("iscsi port")?;
        s.http = port(addr("http ")?).ok_or("http port")?;
        addr("tftp ")?;
        s.api = addr("api ")?;
        Ok(s)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}/api/v1{path}", self.api)
    }

    /// `METHOD /api/v1PATH` with `token` and a JSON `body`: status and JSON.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> Result<(u16, Value)> {
        call(&self.url(path), method, token, body)
    }

    pub fn stop(mut self) -> Result {
        let mut child = self.child.take().ok_or("stopped")?;
        tool("kill", &["-TERM", &child.id().to_string()])?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = child.try_wait()? {
                assert!(s.success(), "serve exited with {s}");
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err("serve did not stop within 20 s of SIGTERM".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ApiServe {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build()
}

/// One request; a 4xx or 5xx is an answer, not an error.
pub fn call(
    url: &str,
    method: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Result<(u16, Value)> {
    let mut req = agent().request(method, url);
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let answer = match body {
        Some(b) => req.set("Content-Type", "application/json").send_string(b),
        None => req.call(),
    };
    let resp = match answer {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(e.into()),
    };
    let status = resp.status();
    let text = resp.into_string()?;
    let v = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).map_err(|e| format!("{status} {text:?}: {e}"))?
    };
    Ok((status, v))
}

/// A token made with the CLI, as an operator would.
pub fn token(env: &Env, name: &str, read_only: bool) -> Result<String> {
    let mut args = vec!["token", "add", name];
    if read_only {
        args.push("--read-only");
    }
    let t = env.ok(&args)?.trim().to_string();
    assert!(t.starts_with("bootd_") && t.len() == 70, "{t}");
    Ok(t)
}

/// The error code of an error answer.
pub fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// Everything the registry holds that a request could change.
fn registry(env: &Env) -> Result<Value> {
    Ok(json!({
        "nodes": env.json(&["node", "list", "--json"])?,
        "images": env.json(&["image", "list", "--json"])?,
        "templates": env.json(&["template", "list", "--json"])?,
    }))
}

#[test]
fn no_token_is_401_and_a_read_only_token_cannot_change_anything() -> Result {
    let env = Env::new()?;
    one_node(&env, "52:54:00:00:a0:01")?;
    let full = token(&env, "ops", false)?;
    let ro = token(&env, "viewer", true)?;
    let serve = ApiServe::start(&env, &[])?;
    let before = registry(&env)?;

    // No token, a wrong one, a malformed header: 401 with the challenge.
    for auth in [None, Some("bootd_00"), Some("")] {
        let mut req = agent().get(&serve.url("/nodes"));
        if let Some(a) = auth {
            req = req.set("Authorization", &format!("Bearer {a}"));
        }
        match req.call() {
            Err(ureq::Error::Status(401, r)) => {
                assert_eq!(r.header("WWW-Authenticate"), Some("Bearer realm=\"bootd\""));
                let v: Value = serde_json::from_str(&r.into_string()?)?;
                assert_eq!(code(&v), "unauthorized");
            }
            other => panic!("{auth:?}: expected 401, got {other:?}"),
        }
    }
    let (s, v) = serve.call("GET", "/nodes", Some(&ro), None)?;
    assert_eq!(s, 200, "{v}");
    // Every change a read-only token tries is 403, before any work.
    for (method, path, body) in [
        (
            "POST",
            "/nodes",
            r#"{"mac":"52:54:00:00:a0:02","image":"deb"}"#,
        ),
        ("DELETE", "/nodes/n1", ""),
        ("POST", "/nodes/n1/reset", "{}"),
        ("POST", "/nodes/n1/move", r#"{"latest":true}"#),
        ("POST", "/discovered/adopt", r#"{"all":true,"image":"deb"}"#),
        ("POST", "/images", r#"{"name":"x","path":"/nonexistent"}"#),
        ("DELETE", "/images/deb", ""),
        ("POST", "/templates", r#"{"name":"t","image":"deb"}"#),
        ("DELETE", "/templates/t", ""),
    ] {
        let body = (!body.is_empty()).then_some(body);
        let (s, v) = serve.call(method, path, Some(&ro), body)?;
        assert_eq!(
            (s, code(&v)),
            (403, "read_only_token"),
            "{method} {path}: {v}"
        );
        // And with no token at all, 401.
        let (s, _) = serve.call(method, path, None, body)?;
        assert_eq!(s, 401, "{method} {path}");
    }
    assert_eq!(registry(&env)?, before);

    // A revoked token is refused at once.
    env.ok(&["token", "rm", "viewer"])?;
    let (s, _) = serve.call("GET", "/nodes", Some(&ro), None)?;
    assert_eq!(s, 401);
    let (s, _) = serve.call("GET", "/nodes", Some(&full), None)?;
    assert_eq!(s, 200);

    // `token list` tells names and use, never the token or its hash.
    let list = env.ok(&["token", "list", "--json"])?;
    let v: Value = serde_json::from_str(&list)?;
    assert_eq!(v[0]["name"], "ops");
    assert!(v[0]["last_used"].as_i64().is_some(), "{v}");
    let text = list + &env.ok(&["token", "list"])?;
    let hash = sha256_hex(&full);
    assert!(!text.contains(&full) && !text.contains(&hash), "{text}");
    // A change is logged with the token's name, never the token.
    let (s, v) = serve.call(
        "POST",
        "/templates",
        Some(&full),
        Some(r#"{"name":"t","image":"deb"}"#),
    )?;
    assert_eq!(s, 201, "{v}");
    let log = serve.log.clone();
    serve.stop()?;
    let log = std::fs::read_to_string(log)?;
    assert!(
        !log.contains(&full) && !log.contains(&ro),
        "a token in the log"
    );
    assert!(!log.contains(&hash), "a token's hash in the log");
    assert!(
        log.contains("api POST /api/v1/templates token=ops"),
        "{log}"
    );
    Ok(())
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

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
    let (s, list) = serve.call("GET", "/nodes", Some(&ro), None)?;
    assert_eq!(s, 200);
    assert_eq!(list, env.json(&["node", "list", "--json"])?);
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

/// The registry on PostgreSQL: tokens and the API work the same.
#[test]
fn the_api_works_on_a_postgres_registry() -> Result {
    let Some(server) =
        bootd_tests::postgres::shared("cli::api::the_api_works_on_a_postgres_registry")
    else {
        return Ok(());
    };
    let db = server.create_database()?;
    let mut env = Env::new()?;
    env.vars = vec![
        ("BOOTD_REGISTRY".into(), server.url(&db)),
        ("PGPASSWORD".into(), bootd_tests::postgres::PASSWORD.into()),
    ];
    one_node(&env, "52:54:00:00:a0:01")?;
    let full = token(&env, "ops", false)?;
    let ro = token(&env, "viewer", true)?;
    let serve = ApiServe::start(&env, &[])?;
    let (s, v) = serve.call("GET", "/nodes", Some(&ro), None)?;
    assert_eq!((s, v[0]["name"].as_str()), (200, Some("n1")), "{v}");
    let (s, _) = serve.call("DELETE", "/nodes/n1", Some(&ro), None)?;
    assert_eq!(s, 403);
    let (s, v) = serve.call(
        "POST",
        "/templates",
        Some(&full),
        Some(r#"{"name":"lab","image":"deb"}"#),
    )?;
    assert_eq!(s, 201, "{v}");
    assert_eq!(env.json(&["template", "list", "--json"])?[0]["name"], "lab");
    let (s, v) = serve.call("POST", "/nodes/n1/reset", Some(&full), Some("{}"))?;
    assert_eq!(s, 200, "{v}");
    let (s, _) = serve.call("GET", "/nodes", None, None)?;
    assert_eq!(s, 401);
    serve.stop()?;
    Ok(())
}

#[test]
fn token_commands_check_names_and_refuse_what_is_not_there() -> Result {
    let env = Env::new()?;
    assert_eq!(env.json(&["token", "list", "--json"])?, json!([]));
    let a = token(&env, "ops", false)?;
    let b = token(&env, "ops2", false)?;
    assert_ne!(a, b);
    let err = env.fails(&["token", "add", "ops"])?;
    assert!(err.contains("already exists"), "{err}");
    let err = env.fails(&["token", "add", "../x"])?;
    assert!(err.contains("invalid"), "{err}");
    let err = env.fails(&["token", "rm", "nope"])?;
    assert!(err.contains("does not exist"), "{err}");
    env.ok(&["token", "rm", "ops2"])?;
    let list = env.json(&["token", "list", "--json"])?;
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    assert_eq!(list[0]["read_only"], false);
    assert_eq!(list[0]["last_used"], Value::Null);
    // The registry holds the hash, not the token.
    let db = rusqlite::Connection::open(env.data().join("bootd.db"))?;
    let stored: String = db.query_row("SELECT sha256 FROM api_tokens", [], |r| r.get(0))?;
    assert_eq!(stored, sha256_hex(&a));
    Ok(())
}
