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
