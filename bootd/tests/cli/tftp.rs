//! `serve --tftp-port 0 --tftp-dir DIR`: curl fetches a 1.5 MiB file with
//! 512- and 1428-byte blocks, byte-identical; escaping paths and writes are
//! refused.

use crate::common::*;
use std::process::Command;

/// Deterministic pseudo-random bytes (xorshift), so a mismatch reproduces.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn tftp_url(serve: &Serve, name: &str) -> String {
    format!("tftp://127.0.0.1:{}/{name}", serve.tftp)
}

fn curl(args: &[&str]) -> Result<std::process::Output> {
    let mut c = Command::new("curl");
    c.args(["-s", "--max-time", "30"]).args(args);
    run(c)
}

#[test]
fn tftp_serves_files_byte_identical_and_refuses_escapes() -> Result {
    let env = Env::new()?;
    let dir = env.path("boot");
    std::fs::create_dir_all(&dir)?;
    let content = noise(1536 * 1024 + 77);
    std::fs::write(dir.join("file"), &content)?;
    std::fs::write(env.path("secret"), b"outside the boot directory")?;
    std::os::unix::fs::symlink(env.path("secret"), dir.join("link"))?;
    // A directory link leaving the root exposes nothing below it.
    std::fs::create_dir_all(env.path("outside"))?;
    std::fs::write(env.path("outside/file"), b"outside")?;
    std::os::unix::fs::symlink(env.path("outside"), dir.join("dirlink"))?;
    let serve = Serve::start_with(&env, &["--tftp-dir", &dir.to_string_lossy()])?;

    for blksize in ["512", "1428"] {
        let copy = env.path(&format!("copy-{blksize}"));
        let out = curl(&[
            &tftp_url(&serve, "file"),
            "--tftp-blksize",
            blksize,
            "-o",
            &copy.to_string_lossy(),
        ])?;
        assert!(out.status.success(), "curl blksize {blksize}: {out:?}");
        assert!(
            std::fs::read(&copy)? == content,
            "copy with blksize {blksize} differs"
        );
    }

    // curl exits 69 for a TFTP access violation and 68 for file not found;
    // `%2e%2e` keeps curl from folding the `..` away itself.
    for (path, code) in [
        ("%2e%2e/secret", 69),
        ("sub/%2e%2e/%2e%2e/secret", 69),
        ("dirlink/file", 69),
        ("missing", 68),
    ] {
        let out = curl(&[&tftp_url(&serve, path), "-o", "/dev/null"])?;
        assert_eq!(out.status.code(), Some(code), "{path}: {out:?}");
    }
    // A file link is the operator naming a file (Debian's ipxe.efi is one).
    let out = curl(&[&tftp_url(&serve, "link")])?;
    assert_eq!(out.stdout, b"outside the boot directory", "link: {out:?}");

    // Uploads are refused: the server is read-only.
    let out = curl(&[
        "-T",
        &dir.join("file").to_string_lossy(),
        &tftp_url(&serve, "up"),
    ])?;
    assert_eq!(out.status.code(), Some(69), "upload: {out:?}");
    assert!(!dir.join("up").exists());
    Ok(())
}

#[test]
fn tftp_keeps_answering_after_random_datagrams() -> Result {
    let env = Env::new()?;
    let dir = env.path("boot");
    std::fs::create_dir_all(&dir)?;
    let content = noise(100_000);
    std::fs::write(dir.join("file"), &content)?;
    let serve = Serve::start_with(&env, &["--tftp-dir", &dir.to_string_lossy()])?;

    // 2000 datagrams: random bytes, half of them dressed as requests
    // (opcodes 1..=6) so they reach the request and option parsers.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let bytes = noise(2000 * 64);
    for (i, chunk) in bytes.chunks(64).enumerate() {
        let mut d = chunk[..(chunk[0] as usize % 64)].to_vec();
        if i % 2 == 0 && d.len() >= 2 {
            d[0] = 0;
            d[1] = (i % 6) as u8 + 1;
        }
        sock.send_to(&d, ("127.0.0.1", serve.tftp))?;
    }

    let copy = env.path("copy");
    let out = curl(&[&tftp_url(&serve, "file"), "-o", &copy.to_string_lossy()])?;
    assert!(out.status.success(), "curl after the flood: {out:?}");
    assert!(std::fs::read(&copy)? == content, "copy differs");
    Ok(())
}
