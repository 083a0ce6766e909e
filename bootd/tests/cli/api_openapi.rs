//! The API's OpenAPI document: every route in it and nothing else, valid
//! by a real validator; and the API over TLS.

use crate::api::{call, code, token, ApiServe};
use crate::common::*;
use serde_json::{json, Value};

/// Where scripts/install-test-deps.sh puts openapi-spec-validator.
const VALIDATOR: &str = "/opt/bootd-test-venv/bin/openapi-spec-validator";

/// The routes the dashboard and scripts rely on.
const ROUTES: &[&str] = &[
    "DELETE /api/v1/images/{name}",
    "DELETE /api/v1/nodes/{node}",
    "DELETE /api/v1/templates/{name}",
    "GET /api/v1/df",
    "GET /api/v1/discovered",
    "GET /api/v1/events",
    "GET /api/v1/images",
    "GET /api/v1/nodes",
    "GET /api/v1/nodes/{node}",
    "GET /api/v1/nodes/{node}/boot",
    "GET /api/v1/openapi.json",
    "GET /api/v1/servers",
    "GET /api/v1/templates",
    "GET /api/v1/templates/{name}",
    "GET /api/v1/token",
    "POST /api/v1/discovered/adopt",
    "POST /api/v1/images",
    "POST /api/v1/nodes",
    "POST /api/v1/nodes/{node}/move",
    "POST /api/v1/nodes/{node}/reset",
    "POST /api/v1/templates",
];

fn documented(doc: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for method in item.as_object().into_iter().flatten().map(|(m, _)| m) {
            if ["get", "post", "put", "delete", "patch", "head", "options"]
                .contains(&method.as_str())
            {
                out.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn the_openapi_document_lists_exactly_the_routes() -> Result {
    let env = Env::new()?;
    let full = token(&env, "ops", false)?;
    let serve = ApiServe::start(&env, &[])?;
    // No token needed for the document itself.
    let (s, doc) = serve.call("GET", "/openapi.json", None, None)?;
    assert_eq!(s, 200);
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{doc}"
    );
    let routes = documented(&doc);
    let listed: Vec<String> = routes.iter().map(|(m, p)| format!("{m} {p}")).collect();
    assert_eq!(listed, ROUTES);
    let paths: Vec<&str> = routes.iter().map(|(_, p)| p.as_str()).collect();
    // Every documented operation is routed (answers something other than
    // "no such route"), and every other method on its path is 405: the
    // router has no undocumented method there.
    for (method, path) in &routes {
        if path.ends_with("/events") {
            continue; // a stream: checked in api_events
        }
        let url = format!(
            "http://{}{}",
            serve.api,
            path.replace("{node}", "x").replace("{name}", "x")
        );
        let body = (method == "POST").then_some("{}");
        let (s, v) = call(&url, method, Some(&full), body)?;
        assert_ne!(code(&v), "no_such_route", "{method} {path}");
        assert_ne!(s, 405, "{method} {path}");
        for other in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            if routes.iter().any(|(m, p)| m == other && p == path) {
                continue;
            }
            let (s, v) = call(&url, other, Some(&full), None)?;
            assert_eq!((s, code(&v)), (405, "method_not_allowed"), "{other} {path}");
        }
    }
    // Paths not in the document are not routed.
    for path in [
        "/api/v1",
        "/api/v1/tokens",
        "/api/v1/nodes/x/y",
        "/api/v2/nodes",
        "/index.html", // `/` is the dashboard (cli/dashboard.rs)
    ] {
        assert!(!paths.contains(&path));
        let (s, v) = call(
            &format!("http://{}{path}", serve.api),
            "GET",
            Some(&full),
            None,
        )?;
        assert_eq!((s, code(&v)), (404, "no_such_route"), "{path}");
    }
    // Every operation but the document needs the bearer token.
    assert!(doc["components"]["securitySchemes"]["bearer"]["scheme"]
        .as_str()
        .is_some_and(|s| s.eq_ignore_ascii_case("bearer")));
    serve.stop()?;
    Ok(())
}

/// `openapi-spec-validator` (PyPI), installed by scripts/install-test-deps.sh;
/// skipped with a reason when missing unless BOOTD_E2E=1.
fn validator() -> Result<Option<&'static str>> {
    if std::path::Path::new(VALIDATOR).exists() {
        return Ok(Some(VALIDATOR));
    }
    if std::env::var_os("BOOTD_E2E").is_some() {
        return Err(format!("{VALIDATOR} is missing: run scripts/install-test-deps.sh").into());
    }
    eprintln!("skipped: {VALIDATOR} is missing (scripts/install-test-deps.sh installs it)");
    Ok(None)
}

#[test]
fn the_openapi_document_is_valid() -> Result {
    let Some(validator) = validator()? else {
        return Ok(());
    };
    let env = Env::new()?;
    let serve = ApiServe::start(&env, &[])?;
    let (s, doc) = serve.call("GET", "/openapi.json", None, None)?;
    assert_eq!(s, 200);
    serve.stop()?;
    let good = env.path("openapi.json");
    std::fs::write(&good, serde_json::to_vec_pretty(&doc)?)?;
    let out = run({
        let mut c = std::process::Command::new(validator);
        c.arg(&good);
        c
    })?;
    assert!(
        out.status.success(),
        "openapi-spec-validator: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The validator does fail a broken document: an operation without
    // responses, a path parameter that is not declared.
    let mut bad = doc.clone();
    bad["paths"]["/api/v1/nodes/{node}"]["get"]["parameters"] = Value::Array(vec![]);
    bad["paths"]["/api/v1/df"]["get"]["responses"] = Value::String("none".into());
    let broken = env.path("broken.json");
    std::fs::write(&broken, serde_json::to_vec_pretty(&bad)?)?;
    let out = run({
        let mut c = std::process::Command::new(validator);
        c.arg(&broken);
        c
    })?;
    assert!(!out.status.success(), "a broken document passed");
    Ok(())
}

/// `--api-cert/--api-key`: the API over TLS with a self-signed certificate
/// (rcgen), checked by curl against that certificate; plain HTTP is not
/// answered there.
#[test]
fn the_api_speaks_tls_with_a_certificate_given() -> Result {
    let env = Env::new()?;
    let full = token(&env, "ops", false)?;
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".into()])?;
    let (cert, key) = (env.path("api.crt"), env.path("api.key"));
    std::fs::write(&cert, ck.cert.pem())?;
    std::fs::write(&key, ck.key_pair.serialize_pem())?;
    let serve = ApiServe::start(
        &env,
        &[
            "--api-cert",
            &cert.to_string_lossy(),
            "--api-key",
            &key.to_string_lossy(),
        ],
    )?;
    let url = format!("https://{}/api/v1/nodes", serve.api);
    let auth = format!("Authorization: Bearer {full}");
    let out = tool(
        "curl",
        &[
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            &cert.to_string_lossy(),
            "-H",
            &auth,
            &url,
        ],
    )?;
    assert_eq!(out.trim(), "[]");
    // HTTP/2 over ALPN as well.
    let out = tool(
        "curl",
        &[
            "-sS",
            "--http2",
            "--max-time",
            "10",
            "--cacert",
            &cert.to_string_lossy(),
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
            "-H",
            &auth,
            &url,
        ],
    )?;
    assert_eq!(out, "2 200");
    // Without the certificate trusted: refused by the client.
    let mut c = std::process::Command::new("curl");
    c.args(["-sS", "--max-time", "10", &url]);
    assert!(!run(c)?.status.success());
    // Plain HTTP to the TLS port gets no API answer.
    let plain = call(
        &format!("http://{}/api/v1/nodes", serve.api),
        "GET",
        Some(&full),
        None,
    );
    assert!(
        plain.is_err() || plain.as_ref().is_ok_and(|(s, _)| *s != 200),
        "{plain:?}"
    );
    serve.stop()?;
    // A key that does not go with the certificate: serve refuses to start.
    let other = rcgen::generate_simple_self_signed(vec!["x".to_string()])?;
    std::fs::write(&key, other.key_pair.serialize_pem())?;
    let out = env.bootd(&[
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
        "127.0.0.1:0",
        "--api-cert",
        &cert.to_string_lossy(),
        "--api-key",
        &key.to_string_lossy(),
    ])?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--api-cert"), "{err}");
    assert!(!err.contains("PRIVATE KEY"), "{err}");
    Ok(())
}

/// A schema of the document, `$ref`s followed: its properties and which
/// are required (for an array, its items').
fn resolve<'a>(doc: &'a Value, mut s: &'a Value) -> &'a Value {
    loop {
        if let Some(r) = s["$ref"].as_str() {
            let name = r.trim_start_matches("#/components/schemas/");
            s = &doc["components"]["schemas"][name];
        } else if s["type"] == "array" {
            s = &s["items"];
        } else {
            return s;
        }
    }
}

/// The properties and required ones of a named schema.
pub fn shape(doc: &Value, name: &str) -> (Vec<String>, Vec<String>) {
    let s = resolve(doc, &doc["components"]["schemas"][name]);
    fields(s)
}

fn fields(s: &Value) -> (Vec<String>, Vec<String>) {
    let mut props: Vec<String> = s["properties"]
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    let mut required: Vec<String> = s["required"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    props.sort();
    required.sort();
    (props, required)
}

/// An answer has the fields its documented schema has: none that is not
/// documented, every required one present; `exact`: every documented one.
pub fn check_shape(what: &str, v: &Value, props: &[String], required: &[String], exact: bool) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("{what}: not an object: {v}"));
    let mut keys: Vec<&String> = obj.keys().collect();
    keys.sort();
    for k in &keys {
        assert!(
            props.contains(k),
            "{what}: field {k} is not in the document ({props:?})"
        );
    }
    for r in required {
        assert!(
            obj.contains_key(r),
            "{what}: required field {r} missing: {v}"
        );
    }
    if exact {
        assert_eq!(
            keys.len(),
            props.len(),
            "{what}: {keys:?} against {props:?}"
        );
    }
}

#[test]
fn every_answer_has_its_documented_shape() -> Result {
    let env = Env::new()?;
    let n1 = one_node(&env, "52:54:00:00:b0:01")?;
    env.ok(&["template", "add", "lab", "--image", "deb"])?;
    let full = token(&env, "ops", false)?;
    let ro = token(&env, "viewer", true)?;
    let db = rusqlite::Connection::open(env.data().join("bootd.db"))?;
    db.execute(
        "INSERT INTO discovered (mac, arch, vendor_class, ipxe, first_seen, last_seen, requests)
         VALUES ('52:54:00:00:b0:07', NULL, '', 1, 1, 2, 1)",
        [],
    )?;
    // n1 has booted as far as its script: the list carries that stage.
    db.execute(
        "INSERT INTO boot_stages (mac, stage, at_ms, detail) VALUES
         ('52:54:00:00:b0:01', 'dhcp', 1000, 'offer'), ('52:54:00:00:b0:01', 'script', 1500, '')",
        [],
    )?;
    let dir = env.dir.path().to_string_lossy().to_string();
    let serve = ApiServe::start(&env, &["--api-import-dir", &dir])?;
    let (_, doc) = serve.call("GET", "/openapi.json", None, None)?;
    let answer_schema = |method: &str, path: &str, status: &str| {
        let s = &doc["paths"][format!("/api/v1{path}")][method]["responses"][status]["content"]
            ["application/json"]["schema"];
        fields(resolve(&doc, s))
    };
    let mut checked = 0;
    for (path, concrete, token) in [
        ("/nodes", "/nodes", &ro),
        ("/nodes/{node}", "/nodes/n1", &full),
        ("/nodes/{node}", "/nodes/n1", &ro),
        ("/nodes/{node}/boot", "/nodes/n1/boot", &ro),
        ("/discovered", "/discovered", &ro),
        ("/images", "/images", &ro),
        ("/templates", "/templates", &ro),
        ("/templates/{name}", "/templates/lab", &ro),
        ("/servers", "/servers", &ro),
        ("/df", "/df", &ro),
        ("/token", "/token", &ro),
        ("/token", "/token", &full),
    ] {
        let (s, v) = serve.call("GET", concrete, Some(token), None)?;
        assert_eq!(s, 200, "{concrete}: {v}");
        let (props, required) = answer_schema("get", path, "200");
        assert!(!props.is_empty(), "{path}: no documented schema");
        let items = match &v {
            Value::Array(a) => a.clone(),
            one => vec![one.clone()],
        };
        assert!(!items.is_empty(), "{concrete}: nothing to check");
        // A full token sees every field of a node; a read-only one all but
        // the secrets.
        let exact = token == &full || path != "/nodes/{node}";
        for item in &items {
            check_shape(concrete, item, &props, &required, exact);
            checked += 1;
        }
    }
    // Each listed node's last stage, in its documented shape.
    let (_, list) = serve.call("GET", "/nodes", Some(&ro), None)?;
    let last = &list[0]["last_stage"];
    assert_eq!(
        (&last["stage"], &last["at_ms"], &last["boot_started_ms"]),
        (&json!("script"), &json!(1500), &json!(1000)),
        "{list}"
    );
    let (props, required) = shape(&doc, "LastStage");
    check_shape("last_stage", last, &props, &required, true);
    // The error shape, and the answers of changes.
    let (s, v) = serve.call("GET", "/nodes/nope", Some(&ro), None)?;
    assert_eq!(s, 404);
    let (props, required) = shape(&doc, "ErrorBody");
    check_shape("error", &v, &props, &required, true);
    let (props, required) = shape(&doc, "ErrorDetail");
    check_shape("error detail", &v["error"], &props, &required, true);
    let (s, v) = serve.call("POST", "/nodes/n1/reset", Some(&full), Some("{}"))?;
    assert_eq!(s, 200, "{v}");
    let (props, required) = answer_schema("post", "/nodes/{node}/reset", "200");
    check_shape("reset", &v, &props, &required, true);
    let raw = env.path("g.raw");
    let body = serde_json::json!({"name": "deb", "path": raw}).to_string();
    let (s, v) = serve.call("POST", "/images", Some(&full), Some(&body))?;
    assert_eq!(s, 201, "{v}");
    let (props, required) = answer_schema("post", "/images", "201");
    check_shape("import", &v, &props, &required, true);
    let (s, v) = serve.call("DELETE", "/nodes/n1", Some(&full), None)?;
    assert_eq!(s, 200, "{v}");
    let (props, required) = answer_schema("delete", "/nodes/{node}", "200");
    check_shape("node rm", &v, &props, &required, true);
    assert_eq!(v["mac"], n1["mac"]);
    assert!(checked >= 12);
    serve.stop()?;
    Ok(())
}
