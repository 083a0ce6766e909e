//! cloud-init user-data on `template add` / `node add`, checked when it is
//! added and never printed; each node's overlay generation in `node show`.

use crate::common::*;

/// A secret-looking line: user-data may hold passwords, and none of them
/// may reach listings or `node show`.
const SECRET: &str = "s3cret-passw0rd-do-not-print";

fn setup() -> Result<Env> {
    let env = Env::new()?;
    let raw = env.path("g.raw");
    golden(&raw, 64 << 20, 1 << 20, 0x5a)?;
    env.ok(&["image", "import", "deb", &raw.to_string_lossy()])?;
    Ok(env)
}

fn write(env: &Env, name: &str, text: &[u8]) -> Result<String> {
    let p = env.path(name);
    std::fs::write(&p, text)?;
    Ok(p.to_string_lossy().into_owned())
}

fn good(env: &Env, name: &str) -> Result<String> {
    let text = format!(
        "#cloud-config\nhostname: {{{{ name }}}}\npassword: {SECRET}\n\
         # {{{{ mac }}}} {{{{ ip }}}} {{{{ image }}}} {{{{ version }}}}\n"
    );
    write(env, name, text.as_bytes())
}

#[test]
fn user_data_comes_from_the_node_its_template_or_the_default() -> Result {
    let env = setup()?;
    let file = good(&env, "ud.yaml")?;
    let out = env.ok(&[
        "template",
        "add",
        "lab",
        "--image",
        "deb",
        "--user-data",
        &file,
    ])?;
    assert!(out.contains("with user-data"), "{out}");
    let mac = |i: u8| format!("02:00:00:00:00:{i:02x}");
    env.ok(&["node", "add", &mac(1), "--template", "lab", "--name", "t"])?;
    env.ok(&["node", "add", &mac(2), "--image", "deb", "--name", "d"])?;
    let own = good(&env, "own.yaml")?;
    env.ok(&[
        "node",
        "add",
        &mac(3),
        "--template",
        "lab",
        "--name",
        "o",
        "--user-data",
        &own,
    ])?;
    for (node, want) in [("t", "template"), ("d", "default"), ("o", "own")] {
        let v = env.json(&["node", "show", node, "--json"])?;
        assert_eq!(v["user_data"], want, "{node}");
        assert_eq!(v["overlay_generation"], 1, "{node}");
        let text = env.ok(&["node", "show", node])?;
        let line = text
            .lines()
            .find(|l| l.starts_with("user_data "))
            .ok_or("no user_data line")?;
        assert_eq!(line.split_whitespace().nth(1), Some(want), "{text}");
        assert!(!text.contains(SECRET), "{text}");
        assert!(!v.to_string().contains(SECRET), "{v}");
    }
    // Listings carry neither the text nor anything new.
    let list = env.ok(&["node", "list"])?;
    assert!(!list.contains(SECRET), "{list}");
    assert_eq!(
        list.lines().next().map(|l| l.split_whitespace().collect()),
        Some(vec!["NAME", "MAC", "IMAGE", "IP", "OVERLAY", "STATE"])
    );
    let nodes = env.json(&["node", "list", "--json"])?;
    for n in nodes.as_array().ok_or("array")? {
        assert!(n.get("user_data").is_none(), "{n}");
        assert!(n.get("overlay_generation").is_none(), "{n}");
    }
    let templates = env.json(&["template", "list", "--json"])?;
    assert_eq!(templates[0]["user_data"], true);
    assert!(!templates.to_string().contains(SECRET), "{templates}");
    assert!(!env.ok(&["template", "list"])?.contains(SECRET));
    Ok(())
}

#[test]
fn a_bad_user_data_file_is_refused_and_nothing_is_stored() -> Result {
    let env = setup()?;
    let big = format!("#cloud-config\n#{}\n", "x".repeat(64 * 1024));
    let cases: [(&str, &[u8], &str); 4] = [
        (
            "unknown.yaml",
            b"#cloud-config\nhostname: {{ hostname }}\n",
            "undefined",
        ),
        ("syntax.yaml", b"#cloud-config\n{% if %}\n", "syntax"),
        ("big.yaml", big.as_bytes(), "larger than 65536"),
        ("latin1.yaml", b"#cloud-config\nname: caf\xe9\n", "UTF-8"),
    ];
    for (name, text, why) in cases {
        let file = write(&env, name, text)?;
        let err = env.fails(&[
            "template",
            "add",
            "lab",
            "--image",
            "deb",
            "--user-data",
            &file,
        ])?;
        assert!(err.contains(&file), "names the file: {err}");
        assert!(err.contains(why), "says why ({why}): {err}");
        let err = env.fails(&[
            "node",
            "add",
            "02:00:00:00:00:01",
            "--image",
            "deb",
            "--user-data",
            &file,
        ])?;
        assert!(err.contains(&file) && err.contains(why), "{err}");
    }
    let missing = env.path("missing.yaml").to_string_lossy().into_owned();
    let err = env.fails(&[
        "template",
        "add",
        "lab",
        "--image",
        "deb",
        "--user-data",
        &missing,
    ])?;
    assert!(err.contains(&missing), "{err}");
    assert_eq!(
        env.json(&["template", "list", "--json"])?,
        serde_json::json!([])
    );
    assert_eq!(
        env.json(&["node", "list", "--json"])?,
        serde_json::json!([])
    );
    let overlays = std::fs::read_dir(env.data().join("overlays"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(overlays, 0, "no overlay was made");
    // The same name with a good file is accepted afterwards.
    let file = good(&env, "good.yaml")?;
    env.ok(&[
        "template",
        "add",
        "lab",
        "--image",
        "deb",
        "--user-data",
        &file,
    ])?;
    Ok(())
}

#[test]
fn every_fresh_overlay_moves_the_overlay_generation() -> Result {
    let env = setup()?;
    env.ok(&[
        "node",
        "add",
        "02:00:00:00:00:01",
        "--image",
        "deb",
        "--name",
        "a",
    ])?;
    let generation = |env: &Env| -> Result<serde_json::Value> {
        Ok(env.json(&["node", "show", "a", "--json"])?["overlay_generation"].clone())
    };
    assert_eq!(generation(&env)?, 1);
    let text = env.ok(&["node", "show", "a"])?;
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["overlay_generation", "1"]),
        "{text}"
    );
    env.ok(&["node", "reset", "a"])?;
    assert_eq!(generation(&env)?, 2);
    // Changes that keep the disk keep the generation.
    env.ok(&["node", "chap", "a", "--mutual", "on"])?;
    assert_eq!(generation(&env)?, 2);
    let raw2 = env.path("g2.raw");
    golden(&raw2, 64 << 20, 1 << 20, 0x77)?;
    env.ok(&["image", "import", "deb", &raw2.to_string_lossy()])?;
    env.ok(&["node", "move", "a", "--latest"])?;
    assert_eq!(generation(&env)?, 3);
    let raw3 = env.path("g3.raw");
    golden(&raw3, 64 << 20, 1 << 20, 0x33)?;
    env.ok(&["image", "import", "deb", &raw3.to_string_lossy()])?;
    env.ok(&["image", "upgrade", "deb"])?;
    assert_eq!(generation(&env)?, 4);
    Ok(())
}
