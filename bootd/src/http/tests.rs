//! The server against a real socket and an in-memory registry: node states,
//! HEAD, refused methods and a stored template that no longer renders.

use super::HttpServer;
use crate::fleet::{Registry, Watcher};
use crate::store::sqlite::SqliteStore;
use crate::store::{NewImage, NewNode, NodeState, Store};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

async fn ask(port: u16, request: &str) -> Result<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(request.as_bytes()).await?;
    let out = response(&mut s, request.starts_with("HEAD ")).await?;
    Ok(String::from_utf8(out)?)
}

/// One whole response: its head and `Content-Length` bytes of body (the
/// connection stays open for the next request), or all until the server
/// closes.
async fn response(s: &mut tokio::net::TcpStream, head_only: bool) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse::<usize>().ok());
            let want = if head_only { Some(0) } else { len };
            if want.is_some_and(|n| out.len() >= end + 4 + n) {
                return Ok(out);
            }
        }
        let n =
            tokio::time::timeout(std::time::Duration::from_secs(15), s.read(&mut chunk)).await??;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

fn new_node(template: Option<&str>, image_id: i64) -> NewNode {
    NewNode {
        name: "a".into(),
        mac: bootd_plan::Mac::new([2, 0, 0, 0, 0, 0x0a]),
        image_id,
        template: template.map(Into::into),
        // The address the tests fetch from: the node's own.
        ip: Some(std::net::Ipv4Addr::LOCALHOST.into()),
        target_iqn: "iqn.t:a".into(),
        initiator_iqn: "iqn.i:a".into(),
        chap_user: "a".into(),
        chap_secret: "0123456789abcdef".into(),
        overlay_path: "/data/overlays/a.qcow2".into(),
        user_data: None,
    }
}

/// The registry the server's fleet view follows.
struct Fleet {
    registry: Registry,
    watcher: Watcher,
    /// Held for the test's length: dropping it would stop the server.
    _stop: crate::service::Trigger,
}

async fn start() -> Result<(Fleet, u16, i64)> {
    start_with(Arc::new(crate::tftp::Root::at(
        "/nonexistent-boot-dir".into(),
    )))
    .await
}

async fn start_with(files: Arc<crate::tftp::Root>) -> Result<(Fleet, u16, i64)> {
    let mut store = SqliteStore::open_in_memory()?;
    let img = store.add_image(&NewImage {
        name: "deb".into(),
        version: 1,
        path: "/data/images/deb-v1.raw".into(),
        bytes: 1 << 20,
        sha256: "00".repeat(32),
    })?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let registry = Registry::new(Box::new(store));
    let (watcher, view) = Watcher::start(registry.clone())?;
    let server = HttpServer::new(
        view,
        files,
        port,
        3260,
        Default::default(),
        Default::default(),
        super::Access::default(),
    );
    let (stop, shutdown) = crate::service::channel();
    tokio::spawn(server.serve(listener, shutdown));
    Ok((
        Fleet {
            registry,
            watcher,
            _stop: stop,
        },
        port,
        img.id,
    ))
}

/// A registry change, and the watcher's reload that follows it.
fn with_store<T>(fleet: &Fleet, f: impl FnOnce(&mut dyn Store) -> T) -> T {
    let out = fleet.registry.with(f);
    fleet.watcher.reload();
    out
}

#[tokio::test]
async fn node_scripts_follow_the_registry() -> Result {
    let (server, port, image) = start().await?;
    let get = "GET /boot/02-00-00-00-00-0A.ipxe HTTP/1.1\r\nHost: x\r\n\r\n";
    assert!(ask(port, get).await?.starts_with("HTTP/1.1 404 "));

    with_store(&server, |s| s.add_node(&new_node(None, image)))?;
    // Still being created: not bootable yet.
    assert!(ask(port, get).await?.starts_with("HTTP/1.1 503 "));

    with_store(&server, |s| s.set_node_state("a", NodeState::Ready))?;
    let ok = ask(port, get).await?;
    assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
    assert!(ok.contains("Content-Type: text/plain"), "{ok}");
    assert!(
        ok.contains("\r\n\r\n#!ipxe\n") && ok.contains("sanboot iscsi:127.0.0.1::3260:0:iqn.t:a"),
        "{ok}"
    );
    let len = ok.split("\r\n\r\n").nth(1).map(str::len).ok_or("no body")?;
    assert!(ok.contains(&format!("Content-Length: {len}\r\n")), "{ok}");

    // hyper answers an HTTP/1.0 client in HTTP/1.0 (and closes after).
    let head = ask(port, "HEAD /boot/02000000000a.ipxe HTTP/1.0\r\n\r\n").await?;
    assert!(
        head.starts_with("HTTP/1.0 200 ") && head.ends_with("\r\n\r\n"),
        "{head}"
    );
    assert!(
        head.contains(&format!("Content-Length: {len}\r\n")),
        "{head}"
    );

    let post = ask(port, "POST /boot.ipxe HTTP/1.1\r\n\r\n").await?;
    assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
    Ok(())
}

#[tokio::test]
async fn a_stored_template_that_fails_is_a_server_error() -> Result {
    let (server, port, image) = start().await?;
    with_store(&server, |s| {
        // Stored behind validate's back, as an older bootd might have.
        s.add_template("old", "deb", Some("#!ipxe\necho {{ gone }}\n"), None)?;
        s.add_node(&new_node(Some("old"), image))?;
        s.set_node_state("a", NodeState::Ready)
    })?;
    let r = ask(port, "GET /boot/02:00:00:00:00:0a.ipxe HTTP/1.1\r\n\r\n").await?;
    assert!(r.starts_with("HTTP/1.1 500 "), "{r}");
    Ok(())
}

#[tokio::test]
async fn binaries_for_http_boot_come_from_the_boot_directory() -> Result {
    let dir = tempfile::tempdir()?;
    // Not valid UTF-8: the body must go out byte for byte.
    let efi: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    std::fs::write(dir.path().join("snponly.efi"), &efi)?;
    let (_server, port, _) = start_with(Arc::new(crate::tftp::Root::new(dir.path())?)).await?;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(b"GET /ipxe/snponly.efi HTTP/1.1\r\n\r\n")
        .await?;
    let out = response(&mut s, false).await?;
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no head")?;
    let head = String::from_utf8_lossy(&out[..split]);
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(
        head.contains("Content-Type: application/octet-stream"),
        "{head}"
    );
    assert!(head.contains("Content-Length: 70000"), "{head}");
    assert!(out[split + 4..] == efi[..], "body differs");
    let missing = ask(port, "GET /ipxe/ipxe.efi HTTP/1.1\r\n\r\n").await?;
    assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
    Ok(())
}

/// An idle connection from `source` (it never sends a request head).
async fn idle_from(source: [u8; 4], port: u16) -> Result<tokio::net::TcpStream> {
    let s = tokio::net::TcpSocket::new_v4()?;
    s.bind((std::net::Ipv4Addr::from(source), 0).into())?;
    Ok(s.connect(([127, 0, 0, 1], port).into()).await?)
}

/// Idle sockets, from one address or from many, do not keep another
/// machine from its script: one source gets its share, and unfinished
/// connections are evicted for newcomers. Before, 256 idle sockets made
/// everyone else wait for the 10 s head timeout.
#[tokio::test]
async fn slot_floods_do_not_starve_other_sources() -> Result {
    let (server, port, image) = start().await?;
    with_store(&server, |s| {
        s.add_node(&new_node(None, image))?;
        s.set_node_state("a", NodeState::Ready)
    })?;
    let get = "GET /boot/02-00-00-00-00-0a.ipxe HTTP/1.1\r\n\r\n";
    let timely = |what: &'static str| async move {
        let r = tokio::time::timeout(std::time::Duration::from_secs(3), ask(port, get)).await;
        match r {
            Ok(Ok(a)) if a.starts_with("HTTP/1.1 200 ") => Ok(()),
            other => Err(format!("{what}: {other:?}")),
        }
    };
    let mut held = Vec::new();
    // One source, more sockets than there are slots.
    for _ in 0..super::slots::MAX_CONNECTIONS + 20 {
        if let Ok(s) = idle_from([127, 0, 0, 2], port).await {
            held.push(s);
        }
    }
    timely("after one source's flood").await?;
    drop(held);
    // Many sources, each within its share, together over the total.
    let mut held = Vec::new();
    let sources = super::slots::MAX_CONNECTIONS / super::slots::PER_SOURCE + 4;
    for i in 0..sources {
        for _ in 0..super::slots::PER_SOURCE {
            held.push(idle_from([127, 0, 1, 10 + i as u8], port).await?);
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    timely("after a flood from many sources").await?;
    Ok(())
}

/// iPXE keeps its connection open between requests: several answers come
/// on one connection (the old server closed after each).
#[tokio::test]
async fn one_connection_serves_several_requests() -> Result {
    let (_server, port, _) = start().await?;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    for _ in 0..3 {
        s.write_all(b"GET /boot.ipxe HTTP/1.1\r\nHost: x\r\n\r\n")
            .await?;
        let r = String::from_utf8(response(&mut s, false).await?)?;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("/boot/${netX/mac:hexhyp}.ipxe"), "{r}");
    }
    // Pipelined: both answers, in order.
    s.write_all(b"HEAD /boot.ipxe HTTP/1.1\r\n\r\nGET /nothing HTTP/1.1\r\n\r\n")
        .await?;
    let r = String::from_utf8(response(&mut s, true).await?)?;
    assert!(r.starts_with("HTTP/1.1 200 "), "{r}");
    let r = String::from_utf8(response(&mut s, false).await?)?;
    assert!(r.starts_with("HTTP/1.1 404 "), "{r}");
    Ok(())
}

/// What the hand parser refused is refused by hyper and target.rs, with a
/// status, through the real server.
#[tokio::test]
async fn hostile_heads_are_refused() -> Result {
    let (_server, port, _) = start().await?;
    let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(300));
    let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(super::MAX_HEAD));
    let cases: [(&str, &[&str]); 11] = [
        ("POST /boot.ipxe HTTP/1.1\r\n\r\n", &["405"]),
        ("GET / HTTP/2.0\r\n\r\n", &["400", "505"]),
        ("GET  / HTTP/1.1\r\n\r\n", &["400"]),
        ("GET /\r\n\r\n", &["400"]),
        ("GET /%2e%2e/x HTTP/1.1\r\n\r\n", &["400"]),
        ("GET http://x/boot.ipxe HTTP/1.1\r\n\r\n", &["400"]),
        ("GET /\u{e9} HTTP/1.1\r\n\r\n", &["400"]),
        (&long, &["414"]),
        (&huge, &["431"]),
        // No bodies on the boot network.
        (
            "GET /boot.ipxe HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            &["413"],
        ),
        (
            "GET /boot.ipxe HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            &["413"],
        ),
    ];
    for (req, want) in cases {
        let r = ask(port, req).await?;
        let status = r.get(9..12).unwrap_or_default();
        assert!(
            r.starts_with("HTTP/1.1 ") && want.contains(&status),
            "{req:?}: {r}"
        );
    }
    Ok(())
}

/// Files larger than TFTP's in-memory limit are streamed, whole or by
/// range; HEAD gives the length alone.
#[tokio::test]
async fn large_files_are_streamed_with_ranges() -> Result {
    let dir = tempfile::tempdir()?;
    let size = crate::tftp::files::MAX_FILE_BYTES + (1 << 20);
    let f = std::fs::File::create(dir.path().join("initrd.img"))?;
    f.set_len(size)?;
    // One marked byte near the end, for the range read.
    std::os::unix::fs::FileExt::write_at(&f, b"Z", size - 10)?;
    let (_server, port, _) = start_with(Arc::new(crate::tftp::Root::new(dir.path())?)).await?;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(b"HEAD /ipxe/initrd.img HTTP/1.1\r\n\r\n")
        .await?;
    let head = String::from_utf8(response(&mut s, true).await?)?;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(
        head.contains(&format!("Content-Length: {size}\r\n")),
        "{head}"
    );
    let range = format!(
        "GET /ipxe/initrd.img HTTP/1.1\r\nRange: bytes={}-{}\r\n\r\n",
        size - 12,
        size - 9
    );
    s.write_all(range.as_bytes()).await?;
    let part = response(&mut s, false).await?;
    let text = String::from_utf8_lossy(&part);
    assert!(text.starts_with("HTTP/1.1 206 "), "{text}");
    assert!(part.ends_with(b"\0\0Z\0"), "{text}");
    // The whole file, counted as it streams.
    s.write_all(b"GET /ipxe/initrd.img HTTP/1.1\r\n\r\n")
        .await?;
    let mut got = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    while got < size {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    assert!(got > size, "head and {size} bytes of body: {got}");
    Ok(())
}

/// Slowloris: a client trickling its head, and one that stops reading a
/// large answer, are both cut off within their limits.
#[tokio::test]
async fn slow_clients_are_cut_off() -> Result {
    let dir = tempfile::tempdir()?;
    std::fs::File::create(dir.path().join("big"))?.set_len(256 << 20)?;
    let (_server, port, _) = start_with(Arc::new(crate::tftp::Root::new(dir.path())?)).await?;
    let began = std::time::Instant::now();
    let trickle = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        for b in b"GET /boot.ipxe HTTP/1.1\r\nX: ".iter().cycle().take(60) {
            if s.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
        // Cut off: reading ends (EOF or reset) instead of waiting.
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(20), s.read_to_end(&mut sink))
            .await?;
        Result::Ok(began.elapsed())
    };
    let stalled = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(b"GET /ipxe/big HTTP/1.1\r\n\r\n").await?;
        // Never read until the server must have given up ...
        tokio::time::sleep(std::time::Duration::from_secs(14)).await;
        // ... then it is gone before the file is through.
        let mut got = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(Ok(n)) =
            tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf)).await
        {
            if n == 0 {
                break;
            }
            got += n as u64;
        }
        Result::Ok(got)
    };
    let (trickled, got) = tokio::try_join!(trickle, stalled)?;
    assert!(
        trickled < std::time::Duration::from_secs(13),
        "trickling head lasted {trickled:?}"
    );
    assert!(got < 256 << 20, "a stalled reader kept its answer: {got}");
    Ok(())
}
