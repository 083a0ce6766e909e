//! Issue 11: what one machine on the boot network, or one local user, can
//! take from another: file modes of the data directory, scripts (and the
//! CHAP secrets in them) served only to their node, slot floods, the
//! registration cap, `node adopt --all` asking first.

use crate::common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn mode(p: &Path) -> Result<u32> {
    Ok(std::fs::metadata(p)?.permissions().mode() & 0o777)
}

#[test]
fn data_directory_is_private() -> Result {
    let env = Env::new()?;
    let n1 = one_node(&env, "52:54:00:ab:cd:01")?;
    let data = env.data();
    assert_eq!(mode(&data)?, 0o700, "data directory");
    for sub in ["images", "overlays", "pr"] {
        assert_eq!(mode(&data.join(sub))? & 0o077, 0, "{sub}");
    }
    assert_eq!(mode(&data.join("bootd.db"))?, 0o600, "registry");
    let overlay = n1["overlay_path"].as_str().ok_or("no overlay_path")?;
    let overlay = data.join(overlay);
    assert_eq!(mode(&overlay)? & 0o077, 0, "{}", overlay.display());
    for e in std::fs::read_dir(data.join("images"))? {
        let p = e?.path();
        assert_eq!(mode(&p)? & 0o077, 0, "{}", p.display());
    }
    Ok(())
}

/// Without --listen-ip, iSCSI, HTTP and TFTP listen on the address of
/// --interface, not on every address; with neither, serve refuses to guess.
#[test]
fn serve_binds_the_boot_interface_address() -> Result {
    let env = Env::new()?;
    one_node(&env, "52:54:00:ab:cd:02")?;
    let serve = Serve::start_args(
        &env,
        &[
            "serve",
            "--interface",
            "lo",
            "--iscsi-port",
            "0",
            "--http-port",
            "0",
            "--tftp-port",
            "0",
        ],
    )?;
    for addr in &serve.listen {
        assert!(addr.starts_with("127.0.0.1:"), "{:?}", serve.listen);
    }
    serve.stop()?;
    let e = env.fails(&["serve", "--iscsi-port", "0", "--http-port", "0"])?;
    assert!(e.contains("needs --interface or --listen-ip"), "{e}");
    let e = env.fails(&["serve", "--listen-ip", "127.0.0.1", "--per-source", "0"])?;
    assert!(e.contains("--per-source 0"), "{e}");
    // Every address, when asked for.
    let all = Serve::start_args(
        &env,
        &[
            "serve",
            "--listen-ip",
            "0.0.0.0",
            "--iscsi-port",
            "0",
            "--http-port",
            "0",
            "--tftp-port",
            "0",
        ],
    )?;
    assert!(
        all.listen.iter().all(|a| a.starts_with("0.0.0.0:")),
        "{:?}",
        all.listen
    );
    all.stop()
}

/// GET `path` from serve's HTTP port with the connection coming from
/// `source` (127.0.0.2 plays a foreign machine): (status, body).
fn get_from(serve: &Serve, source: &str, path: &str) -> Result<(u16, String)> {
    let url = format!("http://127.0.0.1:{}{path}", serve.http);
    let out = tool(
        "curl",
        &[
            "-s",
            "--interface",
            source,
            "--max-time",
            "10",
            "-w",
            "\n%{http_code}",
            &url,
        ],
    )?;
    let (body, code) = out.rsplit_once('\n').ok_or("no status line")?;
    Ok((code.trim().parse()?, body.to_string()))
}

fn secret(node: &serde_json::Value) -> Result<String> {
    Ok(node["chap_secret"]
        .as_str()
        .ok_or("no chap_secret")?
        .to_string())
}

/// A script (with the CHAP secret) goes to the node's address only; another
/// address gets 403 and no secret. /metrics is the server's own.
#[test]
fn scripts_go_to_their_node_only() -> Result {
    let env = Env::new()?;
    let n1 = one_node_at(&env, "52:54:00:ab:cd:03", Some("127.0.0.1"))?;
    let secret = secret(&n1)?;
    let serve = Serve::start(&env)?;
    let path = "/boot/52-54-00-ab-cd-03.ipxe";
    let (code, body) = get_from(&serve, "127.0.0.1", path)?;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(&secret));
    let (code, body) = get_from(&serve, "127.0.0.2", path)?;
    assert_eq!(code, 403, "{body}");
    assert!(!body.contains(&secret), "{body}");
    // A made-up token is no better.
    let forged = format!("{path}?t={}", "0".repeat(32));
    let (code, body) = get_from(&serve, "127.0.0.2", &forged)?;
    assert_eq!(code, 403, "{body}");

    let (code, body) = get_from(&serve, "127.0.0.2", "/metrics")?;
    assert_eq!(code, 403, "{body}");
    assert!(!body.contains("n1"), "{body}");
    let (code, body) = get_from(&serve, "127.0.0.1", "/metrics")?;
    assert_eq!(code, 200);
    assert!(
        body.contains("bootd_http_scripts_refused_total 2"),
        "{body}"
    );
    assert!(!body.contains(&secret), "{body}");
    serve.stop()?;

    // The operator may open scripts to everyone, and name a scraper.
    let open = Serve::start_with(
        &env,
        &["--script-access", "open", "--metrics-from", "127.0.0.2"],
    )?;
    let (code, body) = get_from(&open, "127.0.0.2", path)?;
    assert_eq!(code, 200, "{body}");
    let (code, _) = get_from(&open, "127.0.0.2", "/metrics")?;
    assert_eq!(code, 200);
    open.stop()?;

    // No static address, no DHCP of ours: nobody gets it.
    env.ok(&[
        "node",
        "add",
        "52:54:00:ab:cd:04",
        "--image",
        "deb",
        "--name",
        "n2",
    ])?;
    let serve = Serve::start(&env)?;
    let (code, _) = get_from(&serve, "127.0.0.1", "/boot/52-54-00-ab-cd-04.ipxe")?;
    assert_eq!(code, 403);
    serve.stop()
}

/// The boot URL of a proxy ACK to an iPXE REQUEST on port 4011 for `mac`,
/// asked from 127.0.0.1 as a machine with that address would.
fn proxy_boot_url(mac: [u8; 6]) -> Result<String> {
    use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};
    use dhcproto::{Decodable, Decoder, Encodable, Encoder};
    use std::net::Ipv4Addr;
    let lo = Ipv4Addr::LOCALHOST;
    let u = Ipv4Addr::UNSPECIFIED;
    let mut m = Message::new_with_id(0x5ec, lo, u, u, u, &mac);
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(MessageType::Request));
    o.insert(DhcpOption::ClassIdentifier(
        b"PXEClient:Arch:00000:UNDI:002001".to_vec(),
    ));
    o.insert(DhcpOption::UserClass(b"iPXE".to_vec()));
    let mut buf = Vec::new();
    m.encode(&mut Encoder::new(&mut buf))?;
    let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
    sock.set_read_timeout(Some(std::time::Duration::from_millis(500)))?;
    let mut answer = [0u8; 1500];
    // The DHCP threads may start a moment after the ready lines.
    for _ in 0..20 {
        sock.send_to(&buf, "127.0.0.1:4011")?;
        if let Ok(n) = sock.recv(&mut answer) {
            let ack = Message::decode(&mut Decoder::new(&answer[..n]))?;
            return match ack.opts().get(OptionCode::BootfileName) {
                Some(DhcpOption::BootfileName(f)) => Ok(String::from_utf8(f.clone())?),
                other => Err(format!("no boot file in the ACK: {other:?}").into()),
            };
        }
    }
    Err("no proxy ACK from 127.0.0.1:4011".into())
}

/// Proxy mode: bootd never learns the node's address, so the boot URL it
/// gives the MAC carries a one-time token. The token admits one fetch,
/// from anywhere; without it, or a second time, the answer is 403.
#[test]
fn proxy_boot_urls_carry_one_time_tokens() -> Result {
    if !nix_is_root() {
        eprintln!("skipped: binding DHCP ports 67 and 4011 needs root");
        return Ok(());
    }
    let env = Env::new()?;
    let n1 = one_node(&env, "52:54:00:ab:cd:05")?;
    let secret = secret(&n1)?;
    let tftp = env.path("tftp");
    std::fs::create_dir_all(&tftp)?;
    std::fs::write(tftp.join("undionly.kpxe"), b"x")?;
    let serve = Serve::start_args(
        &env,
        &[
            "serve",
            "--dhcp",
            "proxy",
            "--interface",
            "lo",
            "--iscsi-port",
            "0",
            "--http-port",
            "0",
            "--tftp-port",
            "0",
            "--tftp-dir",
            &tftp.to_string_lossy(),
        ],
    )?;
    let url = proxy_boot_url([0x52, 0x54, 0, 0xab, 0xcd, 0x05])?;
    let base = format!("http://127.0.0.1:{}", serve.http);
    let path = url
        .strip_prefix(&base)
        .ok_or_else(|| format!("boot URL {url} is not under {base}"))?;
    let (script, token) = path.split_once("?t=").ok_or("no token")?;
    assert_eq!(script, "/boot/52-54-00-ab-cd-05.ipxe");
    assert_eq!(token.len(), 32, "{token}");
    let (code, _) = get_from(&serve, "127.0.0.2", script)?;
    assert_eq!(code, 403, "no token");
    let (code, body) = get_from(&serve, "127.0.0.2", path)?;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(&secret));
    let (code, body) = get_from(&serve, "127.0.0.2", path)?;
    assert_eq!(code, 403, "a second use: {body}");
    // A fresh token, but for another MAC's script.
    let url2 = proxy_boot_url([0x52, 0x54, 0, 0xab, 0xcd, 0x05])?;
    let (_, token2) = url2.split_once("?t=").ok_or("no token")?;
    assert_ne!(token, token2);
    let (code, _) = get_from(
        &serve,
        "127.0.0.2",
        &format!("/boot/52-54-00-ab-cd-06.ipxe?t={token2}"),
    )?;
    assert!(matches!(code, 403 | 404), "{code}");
    // Neither token nor secret in the boot log.
    let shown = env.ok(&["node", "show", "n1", "--json"])?;
    assert!(!shown.contains(token2), "{shown}");
    serve.stop()
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// serve raises its soft open-file limit to the hard one.
#[test]
fn serve_raises_its_open_file_limit() -> Result {
    let env = Env::new()?;
    one_node(&env, "52:54:00:ab:cd:07")?;
    // A soft limit below the hard one, as a login shell hands down; serve
    // inherits it. (4096 leaves the tests running beside this one plenty.)
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err("getrlimit".into());
        }
        if lim.rlim_max <= 4096 {
            eprintln!(
                "skipped: hard open-file limit {} too low to test",
                lim.rlim_max
            );
            return Ok(());
        }
        let low = libc::rlimit {
            rlim_cur: 4096,
            rlim_max: lim.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &low) != 0 {
            return Err("setrlimit".into());
        }
    }
    let serve = Serve::start_with(&env, &[])?;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", serve.pid()?))?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .ok_or("no open-file limit")?;
    let nums: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(nums.len(), 2, "{line}");
    assert_eq!(nums[0], nums[1], "soft limit not raised: {line}");
    assert_eq!(nums[1], lim.rlim_max.to_string(), "{line}");
    serve.stop()
}

/// Adds discovered machines to the registry as `serve --unknown discover`
/// would have.
fn discover(env: &Env, macs: &[&str]) -> Result {
    let db = rusqlite::Connection::open(env.data().join("bootd.db"))?;
    for mac in macs {
        db.execute(
            "INSERT INTO discovered (mac, arch, vendor_class, ipxe, first_seen, last_seen, requests)
             VALUES (?1, 0, 'PXEClient', 0, 1, 1, 1)",
            [mac],
        )?;
    }
    Ok(())
}

/// `node adopt --all` asks first; without a terminal it refuses unless
/// `--yes`, and then adopts them all.
#[test]
fn adopt_all_needs_a_yes() -> Result {
    let env = Env::new()?;
    one_node(&env, "52:54:00:ab:cd:08")?;
    discover(&env, &["02:00:00:00:00:a1", "02:00:00:00:00:a2"])?;
    let e = env.fails(&["node", "adopt", "--all", "--image", "deb"])?;
    assert!(e.contains("--yes") && e.contains("2 discovered"), "{e}");
    let nodes = env.json(&["node", "list", "--json"])?;
    assert_eq!(nodes.as_array().map(Vec::len), Some(1), "nothing adopted");
    let out = env.ok(&["node", "adopt", "--all", "--yes", "--image", "deb"])?;
    assert_eq!(out.lines().count(), 2, "{out}");
    let nodes = env.json(&["node", "list", "--json"])?;
    assert_eq!(nodes.as_array().map(Vec::len), Some(3));
    Ok(())
}

/// `node list` (table or JSON) never shows a CHAP secret; `node show` does.
#[test]
fn list_output_has_no_secrets() -> Result {
    let env = Env::new()?;
    let n1 = one_node(&env, "52:54:00:ab:cd:09")?;
    let secret = secret(&n1)?;
    for args in [&["node", "list"][..], &["node", "list", "--json"][..]] {
        let out = env.ok(args)?;
        assert!(
            out.contains("n1") && !out.contains(&secret),
            "{args:?}: {out}"
        );
    }
    assert!(env.ok(&["node", "show", "n1"])?.contains(&secret));
    Ok(())
}

/// A golden image changed on disk after import is refused before any node
/// reads it: its nodes are not served (their logins fail).
#[test]
fn a_tampered_golden_image_is_not_served() -> Result {
    let env = Env::new()?;
    let n1 = one_node(&env, "52:54:00:ab:cd:40")?;
    let login = Login {
        target: n1["target_iqn"].as_str().ok_or("target_iqn")?,
        initiator: n1["initiator_iqn"].as_str().ok_or("initiator_iqn")?,
        chap: Some((
            n1["chap_user"].as_str().ok_or("chap_user")?,
            n1["chap_secret"].as_str().ok_or("chap_secret")?,
        )),
    };
    // Untouched, it serves.
    let serve = Serve::start(&env)?;
    io_eventually(serve.port, &login, &["read 0 512"])?;
    serve.stop()?;
    let images = env.json(&["image", "list", "--json"])?;
    let path = images[0]["path"].as_str().ok_or("image path")?;
    let path = env.data().join(path);
    // One byte flipped (root may write the 0400 file; anyone else may not).
    let mut bytes = std::fs::read(&path)?;
    bytes[4096] ^= 0xff;
    std::fs::write(&path, &bytes)?;
    let serve = Serve::start(&env)?;
    std::thread::sleep(std::time::Duration::from_millis(1500));
    login_refused(serve.port, &login)?;
    serve.stop()?;
    Ok(())
}
