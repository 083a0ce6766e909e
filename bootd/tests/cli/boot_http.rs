//! `serve --http-port`: the generic chain script, each node's script from
//! its template with its own credentials and portal, refusals for unknown
//! MACs and hostile paths, and `template add` refusing a broken script.

use crate::common::*;
use std::io::{Read, Write};
use std::time::Duration;

/// GETs from a serve's HTTP port.
pub(crate) trait HttpGet {
    /// GET with curl as-is (no path normalising): (status, body).
    fn get(&self, path: &str) -> Result<(u16, String)> {
        self.get_as("127.0.0.1", path)
    }

    /// The same from local address `source`.
    fn get_as(&self, source: &str, path: &str) -> Result<(u16, String)>;
}

impl HttpGet for Serve {
    fn get_as(&self, source: &str, path: &str) -> Result<(u16, String)> {
        let url = format!("http://127.0.0.1:{}{path}", self.http);
        let out = tool(
            "curl",
            &[
                "-s",
                "--interface",
                source,
                "--path-as-is",
                "--max-time",
                "10",
                "-w",
                "\n%{http_code} %{content_type}",
                &url,
            ],
        )?;
        let (body, tail) = out.rsplit_once('\n').ok_or("no status line")?;
        let (code, ctype) = tail.split_once(' ').ok_or("no content type")?;
        assert!(ctype.starts_with("text/plain"), "{path}: {ctype}");
        Ok((code.parse()?, body.to_string()))
    }
}

fn field(v: &serde_json::Value, k: &str) -> Result<String> {
    Ok(v[k]
        .as_str()
        .ok_or_else(|| format!("{k} missing"))?
        .to_string())
}

#[test]
fn nodes_get_their_own_ipxe_scripts() -> Result {
    let env = Env::new()?;
    // The scripts are fetched from 127.0.0.1: the nodes' own address.
    let n1 = one_node_at(&env, "52:54:00:ab:cd:ef", Some("127.0.0.1"))?;

    let serve = Serve::start(&env)?;

    let (code, chain) = serve.get("/boot.ipxe")?;
    assert_eq!(code, 200);
    assert!(chain.starts_with("#!ipxe\n"), "{chain}");
    let want = format!(
        "chain http://127.0.0.1:{}/boot/${{netX/mac:hexhyp}}.ipxe",
        serve.http
    );
    assert!(chain.contains(&want), "{chain}");

    // iPXE's hexhyp spelling, upper case and colons all name the same node.
    for mac in [
        "52-54-00-ab-cd-ef",
        "52-54-00-AB-CD-EF",
        "52:54:00:Ab:cD:ef",
        "525400abcdef",
    ] {
        let (code, script) = serve.get(&format!("/boot/{mac}.ipxe"))?;
        assert_eq!(code, 200, "{mac}: {script}");
        assert!(script.starts_with("#!ipxe\n"), "{script}");
        let target = field(&n1, "target_iqn")?;
        for line in [
            format!("set initiator-iqn {}", field(&n1, "initiator_iqn")?),
            format!("set username {}", field(&n1, "chap_user")?),
            format!("set password {}", field(&n1, "chap_secret")?),
            format!(
                "sanboot iscsi:127.0.0.1::{}:0:{target} || goto failed",
                serve.port
            ),
        ] {
            assert!(script.lines().any(|l| l == line), "{line:?} in {script}");
        }
        assert!(script.contains(&format!("127.0.0.1:{}", serve.port)));
    }
    let (code, _) = serve.get("/boot/52-54-00-ab-cd-e0.ipxe")?;
    assert_eq!(code, 404, "unknown MAC");

    // Hostile and overlong paths never reach the registry or the disk.
    for path in [
        "/boot/../bootd.db",
        "/boot/..%2fbootd.db",
        "/../../etc/passwd",
        "/boot/52-54-00-ab-cd-ef.ipxe/../../x",
    ] {
        let (code, _) = serve.get(path)?;
        assert!(matches!(code, 400 | 404), "{path}: {code}");
    }
    let long = format!("/boot/{}.ipxe", "a".repeat(5000));
    let (code, _) = serve.get(&long)?;
    assert!(matches!(code, 400 | 404 | 414), "overlong path: {code}");
    // A head without end larger than the limit is cut off.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", serve.http))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let _ = s.write_all(format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(20_000)).as_bytes());
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");

    // A template that does not render is refused with one line ...
    let bad = env.path("bad.ipxe");
    std::fs::write(&bad, "#!ipxe\nsanboot {{ no_such_variable }}\n")?;
    let e = env.fails(&[
        "template",
        "add",
        "bad",
        "--image",
        "deb",
        "--script",
        &bad.to_string_lossy(),
    ])?;
    assert!(e.contains("undefined"), "{e}");
    std::fs::write(&bad, "#!ipxe\n{% if %}\n")?;
    env.fails(&[
        "template",
        "add",
        "bad",
        "--image",
        "deb",
        "--script",
        &bad.to_string_lossy(),
    ])?;
    assert!(env
        .json(&["template", "list", "--json"])?
        .as_array()
        .ok_or("list")?
        .is_empty());

    // ... a good one is stored, and a node added from it while serve runs
    // gets its script at once.
    let win = env.path("win.ipxe");
    std::fs::write(&win, "{% include \"windows-sanboot.ipxe\" %}")?;
    env.ok(&[
        "template",
        "add",
        "win",
        "--image",
        "deb",
        "--script",
        &win.to_string_lossy(),
    ])?;
    env.ok(&[
        "node",
        "add",
        "52:54:00:12:34:57",
        "--template",
        "win",
        "--name",
        "w1",
        "--ip",
        "127.0.0.3",
    ])?;
    let w1 = env.json(&["node", "show", "w1", "--json"])?;
    let (code, script) = serve.get_as("127.0.0.3", "/boot/525400123457.ipxe")?;
    assert_eq!(code, 200, "{script}");
    assert!(
        script.contains(&format!(
            "sanboot --drive 0x80 iscsi:127.0.0.1::{}:0:{}",
            serve.port,
            field(&w1, "target_iqn")?
        )),
        "{script}"
    );
    assert!(script.contains(&format!("set password {}", field(&w1, "chap_secret")?)));

    serve.stop()
}
