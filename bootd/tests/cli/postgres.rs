//! `--registry postgres://...`: the operator commands and serve on a real
//! PostgreSQL (started by the test harness), with the data directory kept
//! for images and overlays only. Skipped with a reason when PostgreSQL is
//! not installed, unless `BOOTD_E2E=1`.

use crate::common::*;
use bootd_tests::postgres::{shared, PASSWORD};
use std::time::{Duration, Instant};

fn names(list: &serde_json::Value) -> Vec<String> {
    list.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn commands_work_against_a_postgres_registry() -> Result {
    let Some(server) = shared("cli::postgres::commands_work_against_a_postgres_registry") else {
        return Ok(());
    };
    let (env, db) = on_postgres_with_image(server, Via::Tcp, 32 << 20)?;
    env.ok(&["template", "add", "lab", "--image", "deb"])?;
    env.ok(&[
        "node",
        "add",
        "02:00:00:00:00:0b",
        "--template",
        "lab",
        "--name",
        "b",
    ])?;
    env.ok(&[
        "node",
        "add",
        "02:00:00:00:00:0a",
        "--image",
        "deb",
        "--name",
        "a",
    ])?;
    let list = env.json(&["node", "list", "--json"])?;
    assert_eq!(names(&list), ["a", "b"]);
    // The same errors as on SQLite.
    let e = env.fails(&["node", "add", "02:00:00:00:00:0a", "--image", "deb"])?;
    assert!(e.contains("already exists"), "{e}");
    let e = env.fails(&["template", "rm", "lab"])?;
    assert!(e.contains("in use by node b"), "{e}");
    env.ok(&["node", "rm", "b"])?;
    assert_eq!(names(&env.json(&["node", "list", "--json"])?), ["a"]);
    let a = env.json(&["node", "show", "a", "--json"])?;
    let overlay = a["overlay_path"].as_str().ok_or("overlay_path")?;
    assert!(
        overlay.starts_with(&*env.data().to_string_lossy()),
        "{overlay}"
    );
    tool("qemu-img", &["check", overlay])?;
    env.ok(&["node", "reset", "a"])?;
    let reset = env.json(&["node", "show", "a", "--json"])?;
    assert_eq!(reset["state"], "ready");
    let df = env.json(&["df", "--json"])?;
    assert_eq!(df["logical_bytes"], 32u64 << 20);

    // The rows are in PostgreSQL, and no SQLite registry was made.
    let mut c = server.connect(&db)?;
    let rows: Vec<String> = c
        .query("SELECT name FROM nodes ORDER BY name", &[])?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(rows, ["a"]);
    assert!(!env.data().join("bootd.db").exists());
    // `--registry` on the command line does the same as the variable.
    let mut flag = Env::new()?;
    flag.vars = vec![("PGPASSWORD".into(), PASSWORD.into())];
    std::fs::remove_dir_all(flag.dir.path())?;
    std::fs::create_dir_all(flag.dir.path())?;
    let url = server.url(&db);
    let out = flag.json(&["--registry", &url, "node", "list", "--json"])?;
    assert_eq!(names(&out), ["a"]);
    // Through the server's Unix socket (a path in the URL's host, percent-
    // encoded): what servers in other network namespaces can share.
    let unix = server.unix_url(&db);
    let out = flag.json(&["--registry", &unix, "node", "list", "--json"])?;
    assert_eq!(names(&out), ["a"]);
    Ok(())
}

/// The password is never printed: not on a failed login, not in --help.
#[test]
fn the_registry_password_is_never_shown() -> Result {
    let Some(server) = shared("cli::postgres::the_registry_password_is_never_shown") else {
        return Ok(());
    };
    let (env, db) = on_postgres(server, Via::Tcp)?;
    let secret = "pw-7d1e-never-shown";
    let url = format!("postgres://bootd:{secret}@127.0.0.1:{}/{db}", server.port);
    let e = env.fails(&["--registry", &url, "node", "list"])?;
    assert!(e.contains("password authentication failed"), "{e}");
    assert!(
        e.contains(&format!("postgres://bootd@127.0.0.1:{}/{db}", server.port)),
        "{e}"
    );
    assert!(!e.contains(secret), "{e}");
    let bad = format!("postgres://bootd:{secret}@127.0.0.1:notaport/{db}");
    let e = env.fails(&["--registry", &bad, "node", "list"])?;
    assert!(!e.contains(secret), "{e}");
    let mut c = env.bootd_cmd(&["node", "--help"]);
    c.env("BOOTD_REGISTRY", &url);
    let help = run(c)?;
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("--registry"), "{text}");
    assert!(!text.contains(secret), "{text}");
    // With the right password in the URL, it works.
    let good = format!("postgres://bootd:{PASSWORD}@127.0.0.1:{}/{db}", server.port);
    let mut plain = Env::new()?;
    plain.vars.clear();
    plain.ok(&["--registry", &good, "image", "list"])?;
    Ok(())
}

/// Serve on a PostgreSQL registry: a node added by the CLI (another
/// process) is served within about a second, through LISTEN/NOTIFY.
#[test]
fn serve_follows_a_postgres_registry() -> Result {
    let Some(server) = shared("cli::postgres::serve_follows_a_postgres_registry") else {
        return Ok(());
    };
    let (env, _db) = on_postgres_with_image(server, Via::Tcp, 32 << 20)?;
    let serve = Serve::start(&env)?;
    let t = Instant::now();
    env.ok(&[
        "node",
        "add",
        "02:00:00:00:00:0c",
        "--image",
        "deb",
        "--name",
        "c",
    ])?;
    let added = t.elapsed();
    let v = env.json(&["node", "show", "c", "--json"])?;
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    let (target, initiator) = (s("target_iqn"), s("initiator_iqn"));
    let (user, secret) = (s("chap_user"), s("chap_secret"));
    let login = Login {
        target: &target,
        initiator: &initiator,
        chap: Some((&user, &secret)),
    };
    io_eventually(serve.port, &login, &["read -P 0x5a 0 64k"])?;
    let served = t.elapsed();
    println!("node add took {added:?}; served {served:?} after the add began");
    assert!(served < Duration::from_secs(5), "{served:?}");
    env.ok(&["node", "rm", "c"])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while qemu_io(serve.port, &login, &["read 0 512"])?
        .status
        .success()
    {
        assert!(Instant::now() < deadline, "removed node still served");
        std::thread::sleep(Duration::from_millis(100));
    }
    serve.stop()?;
    Ok(())
}

/// A CA (self-signed) in `dir`: `NAME.crt`, `NAME.key`.
fn make_ca(dir: &std::path::Path, name: &str) -> Result {
    let p = |ext: &str| {
        dir.join(format!("{name}.{ext}"))
            .to_string_lossy()
            .into_owned()
    };
    tool(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &p("key"),
            "-out",
            &p("crt"),
            "-days",
            "2",
            "-subj",
            &format!("/CN=bootd test {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    )?;
    Ok(())
}

/// `server.crt` and `server.key` in `dir`, signed by CA `ca`, for
/// 127.0.0.1 and pg.test (not localhost).
fn make_server_cert(dir: &std::path::Path, ca: &str) -> Result {
    let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:pg.test\n",
    )?;
    tool(
        "openssl",
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &p("server.key"),
            "-out",
            &p("server.csr"),
            "-subj",
            "/CN=bootd test registry",
        ],
    )?;
    tool(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            &p("server.csr"),
            "-CA",
            &p(&format!("{ca}.crt")),
            "-CAkey",
            &p(&format!("{ca}.key")),
            "-CAcreateserial",
            "-out",
            &p("server.crt"),
            "-days",
            "2",
            "-extfile",
            &p("server.ext"),
        ],
    )?;
    Ok(())
}

/// A PostgreSQL server with TLS on whose TCP clients must use it
/// (`hostssl` only; the harness uses the Unix socket), its certificate
/// signed by the CA `ca.crt` in `certs`.
fn tls_server(certs: &std::path::Path) -> Result<bootd_tests::postgres::PgServer> {
    make_ca(certs, "ca")?;
    make_ca(certs, "other")?;
    make_server_cert(certs, "ca")?;
    let setup = bootd_tests::postgres::Setup {
        files: vec![
            (
                "server.crt".into(),
                std::fs::read(certs.join("server.crt"))?,
            ),
            (
                "server.key".into(),
                std::fs::read(certs.join("server.key"))?,
            ),
        ],
        settings: [
            ("ssl", "on"),
            ("ssl_cert_file", "server.crt"),
            ("ssl_key_file", "server.key"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        hba: Some(
            "local all all scram-sha-256\nhostssl all all 127.0.0.1/32 scram-sha-256\n".into(),
        ),
    };
    Ok(bootd_tests::postgres::PgServer::start_with(&setup)?)
}

/// `sslmode` and `sslrootcert`: verify-full passes with the right CA, a
/// wrong CA or a certificate for another name is refused with a clear
/// error, and a plain connection is refused by a `hostssl`-only server.
#[test]
fn the_registry_over_tls() -> Result {
    let name = "cli::postgres::the_registry_over_tls";
    if !bootd_tests::env::Needs::new()
        .postgres()
        .tool("openssl", "openssl")
        .met(name)
    {
        return Ok(());
    }
    let certs = tempfile::tempdir()?;
    let server = tls_server(certs.path())?;
    let (env, db) = on_postgres(&server, Via::Tcp)?;
    let ca = certs.path().join("ca.crt");
    let other = certs.path().join("other.crt");
    let url =
        |host: &str, query: String| format!("postgres://bootd@{host}:{}/{db}?{query}", server.port);
    let root =
        |mode: &str, ca: &std::path::Path| format!("sslmode={mode}&sslrootcert={}", ca.display());

    // verify-full with the CA that signed the server's certificate: every
    // command works (pg_hba.conf admits TCP clients over TLS only).
    // channel_binding=require: the login is SCRAM-SHA-256-PLUS, bound to
    // this TLS session (tls-server-end-point), or there is none.
    let full = url(
        "127.0.0.1",
        format!("{}&channel_binding=require", root("verify-full", &ca)),
    );
    let raw = env.path("g.raw");
    golden(&raw, 8 << 20, 1 << 20, 0x5a)?;
    env.ok(&[
        "--registry",
        &full,
        "image",
        "import",
        "deb",
        &raw.to_string_lossy(),
    ])?;
    env.ok(&[
        "--registry",
        &full,
        "node",
        "add",
        "02:00:00:00:00:0d",
        "--image",
        "deb",
        "--name",
        "d",
    ])?;
    let list = env.json(&["--registry", &full, "node", "list", "--json"])?;
    assert_eq!(names(&list), ["d"]);

    // A serve on it holds TLS connections (pg_stat_ssl says so), and
    // neither its log (at debug level) nor `server list` shows the
    // password, given in the URL or in PGPASSWORD.
    let with_password = format!(
        "postgres://bootd:{PASSWORD}@127.0.0.1:{}/{db}?{}",
        server.port,
        root("verify-full", &ca)
    );
    let out_path = env.path("serve.out");
    let err_path = env.path("serve.err");
    let mut cmd = env.bootd_cmd(&[
        "--registry",
        &with_password,
        "serve",
        "--server-id",
        "tls1",
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
    ]);
    cmd.env("BOOTD_LOG", "debug")
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(std::fs::File::create(&err_path)?);
    let mut serve = cmd.spawn()?;
    let t = Instant::now();
    while !std::fs::read_to_string(&out_path)?.contains("tftp ") {
        assert!(
            t.elapsed() < Duration::from_secs(20) && serve.try_wait()?.is_none(),
            "serve did not start: {}",
            std::fs::read_to_string(&err_path)?
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut c = server.connect(&db)?;
    let ssl: Vec<(bool, String)> = c
        .query(
            "SELECT s.ssl, coalesce(s.version, '') FROM pg_stat_ssl s \
             JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'bootd'",
            &[],
        )?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(!ssl.is_empty(), "serve holds no registry connection");
    assert!(ssl.iter().all(|(on, _)| *on), "{ssl:?}");
    println!("serve's registry connections: {ssl:?}");
    let mut shown = String::new();
    within_secs(10, || {
        let list = env.ok(&["--registry", &full, "server", "list", "--json"])?;
        Ok(list.contains("tls1").then_some(list))
    })
    .map(|l| shown.push_str(&l))?;
    shown.push_str(&env.ok(&["--registry", &with_password, "server", "list"])?);
    tool("kill", &["-TERM", &serve.id().to_string()])?;
    let status = serve.wait()?;
    assert!(status.success(), "serve: {status}");
    let log = format!(
        "{}{}",
        std::fs::read_to_string(&out_path)?,
        std::fs::read_to_string(&err_path)?
    );
    assert!(log.contains("DEBUG"), "not a debug log: {log}");
    for text in [&log, &shown] {
        assert!(!text.contains(PASSWORD), "the password is shown: {text}");
    }

    // require without a root encrypts without checking: it connects.
    env.ok(&[
        "--registry",
        &url("127.0.0.1", "sslmode=require".into()),
        "image",
        "list",
    ])?;
    // verify-ca checks the chain, not the name: localhost (not in the
    // certificate) passes; verify-full to localhost does not.
    env.ok(&[
        "--registry",
        &url("localhost", root("verify-ca", &ca)),
        "image",
        "list",
    ])?;
    let e = env.fails(&[
        "--registry",
        &url("localhost", root("verify-full", &ca)),
        "image",
        "list",
    ])?;
    println!("verify-full to a name the certificate lacks: {e}");
    assert!(
        e.contains("TLS") && e.contains("not valid for name \"localhost\""),
        "{e}"
    );
    // Another CA: refused, one clear line naming the registry (no password).
    let e = env.fails(&[
        "--registry",
        &url("127.0.0.1", root("verify-full", &other)),
        "image",
        "list",
    ])?;
    println!("verify-full with the wrong CA: {e}");
    assert!(e.contains("TLS") && e.contains("UnknownIssuer"), "{e}");
    assert!(
        e.contains(&format!("postgres://bootd@127.0.0.1:{}/{db}", server.port)),
        "{e}"
    );
    let e = env.fails(&[
        "--registry",
        &format!(
            "postgres://bootd:{PASSWORD}@127.0.0.1:{}/{db}?{}",
            server.port,
            root("verify-full", &other)
        ),
        "image",
        "list",
    ])?;
    assert!(!e.contains(PASSWORD), "{e}");
    // sslmode=disable: the server admits no plain TCP client.
    let e = env.fails(&[
        "--registry",
        &url("127.0.0.1", "sslmode=disable".into()),
        "image",
        "list",
    ])?;
    println!("sslmode=disable against hostssl only: {e}");
    assert!(
        e.contains("no pg_hba.conf entry") && e.contains("no encryption"),
        "{e}"
    );
    // A root file that is not there: named, before any connection.
    let e = env.fails(&[
        "--registry",
        &url(
            "127.0.0.1",
            root("verify-full", &certs.path().join("nope.crt")),
        ),
        "image",
        "list",
    ])?;
    assert!(e.contains("nope.crt"), "{e}");
    Ok(())
}

/// Calls `f` every 200 ms until it returns `Some`, at most `secs` seconds.
fn within_secs<T>(secs: u64, mut f: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let t = Instant::now();
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if t.elapsed() > Duration::from_secs(secs) {
            return Err(format!("not within {secs} s").into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
