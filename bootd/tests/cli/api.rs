//! The operator API (`serve --api-listen`) end to end: a real serve, a real
//! HTTP client, the registry on SQLite (one smoke test on PostgreSQL).
//! Every route, its auth (401 without a token, 403 for a read-only token
//! that changes anything) and its refusals of bad input with nothing
//! changed.

use crate::common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::Duration;

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
        let args = loopback_serve(&[&["--api-listen", "127.0.0.1:0"], extra].concat());
        let log = env.path("serve.log");
        let mut cmd = env.bootd_cmd(&args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?);
        let mut s = Self {
            child: Some(cmd.spawn()?),
            iscsi: 0,
            http: 0,
            api: String::new(),
            log,
        };
        let child = s.child.as_mut().ok_or("no child")?;
        let addrs = ready_addrs(child, &["iscsi", "http", "tftp", "api"])?;
        s.iscsi = port_of(&addrs[0])?;
        s.http = port_of(&addrs[1])?;
        s.api = addrs[3].clone();
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
        stop_child(self.child.take().ok_or("stopped")?)
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
pub fn registry(env: &Env) -> Result<Value> {
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
    // Who am I: the token's name and powers, never the token or its hash
    // (the dashboard asks this instead of trying a change).
    let (s, v) = serve.call("GET", "/token", Some(&ro), None)?;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (&v["name"], &v["read_only"]),
        (&json!("viewer"), &json!(true))
    );
    assert!(
        v["created"].as_i64().is_some_and(|c| c > 1_600_000_000),
        "{v}"
    );
    let (s, v) = serve.call("GET", "/token", Some(&full), None)?;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (&v["name"], &v["read_only"]),
        (&json!("ops"), &json!(false))
    );
    let text = v.to_string();
    assert!(
        !text.contains(&full) && !text.contains(&sha256_hex(&full)),
        "{v}"
    );
    assert_eq!(serve.call("GET", "/token", None, None)?.0, 401);
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

pub fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
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

    // Requests reuse the API's registry connections: sessions opened on
    // the database (counted by PostgreSQL when a session reports) stay few
    // over 40 requests, where opening the registry per request (token,
    // then handler) made 80.
    let mut admin = server.connect(&db)?;
    let sessions = |admin: &mut postgres::Client| -> Result<i64> {
        std::thread::sleep(Duration::from_millis(1500));
        let row = admin.query_one(
            "SELECT sessions FROM pg_stat_database WHERE datname = $1",
            &[&db],
        )?;
        Ok(row.get(0))
    };
    // The count moves with every session (else this proves nothing).
    let base = sessions(&mut admin)?;
    for _ in 0..3 {
        drop(server.connect(&db)?);
    }
    let before = sessions(&mut admin)?;
    assert!(
        before - base >= 3,
        "sessions not counted: {base} then {before}"
    );
    for _ in 0..40 {
        assert_eq!(serve.call("GET", "/nodes", Some(&ro), None)?.0, 200);
    }
    let opened = sessions(&mut admin)? - before;
    println!("{opened} registry sessions opened for 40 API requests");
    assert!(opened <= 4, "{opened} sessions opened for 40 requests");
    // Every connection of serve's cut by the server: the pooled ones are
    // found lost and made again; the API answers as before.
    admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = $1 AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
        &[&db],
    )?;
    for _ in 0..10 {
        let (s, v) = serve.call("GET", "/nodes", Some(&ro), None)?;
        assert_eq!((s, v[0]["name"].as_str()), (200, Some("n1")), "{v}");
    }
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

/// `--api-listen off` starts no API; a port given that is taken is an
/// error (a port left at its default that is taken is only a warning: the
/// boot network matters more than the API).
#[test]
fn api_listen_off_and_a_taken_port() -> Result {
    let env = Env::new()?;
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?.to_string();
    let base = [
        "serve",
        "--listen-ip",
        "127.0.0.1",
        "--iscsi-port",
        "0",
        "--http-port",
        "0",
        "--tftp-port",
        "0",
        "--api-listen",
    ];
    let mut args = base.to_vec();
    args.push(&addr);
    let err = env.fails(&args)?;
    assert!(err.contains("--api-listen") && err.contains(&addr), "{err}");
    let err = env.fails(&[&base[..], &["nonsense"]].concat())?;
    assert!(err.contains("nonsense"), "{err}");
    // Off: the ready lines stop at tftp.
    let mut cmd = env.bootd_cmd(&[&base[..], &["off"]].concat());
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn()?;
    let mut out = BufReader::new(child.stdout.take().ok_or("stdout")?);
    let mut lines = Vec::new();
    for _ in 0..3 {
        let mut l = String::new();
        out.read_line(&mut l)?;
        lines.push(l);
    }
    assert!(lines[2].starts_with("tftp "), "{lines:?}");
    tool("kill", &["-TERM", &child.id().to_string()])?;
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest)?;
    assert!(child.wait()?.success());
    assert_eq!(rest, "", "no api line");
    Ok(())
}
