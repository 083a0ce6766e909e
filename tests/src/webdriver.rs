//! A real browser for the dashboard tests: Debian's headless `chromium` driven by its
//! `chromedriver` through plain W3C WebDriver (JSON over HTTP/1.1), both inside a
//! network namespace so the page reaches an API listening on the namespace's loopback.
//! The tiny HTTP client here also calls the API itself from inside the namespace.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::{json, Value};

use crate::netns::NetNs;
use crate::process::{terminate, wait_until};

/// The Debian packages and the binaries they install.
pub const TOOLS: &[(&str, &str)] = &[
    ("chromium", "chromium"),
    ("chromedriver", "chromium-driver"),
];
const CHROMIUM: &str = "/usr/bin/chromium";
/// chromedriver's port inside the namespace (a fresh namespace: always free).
const DRIVER_PORT: u16 = 9515;
const DRIVER_START: Duration = Duration::from_secs(30);
/// One WebDriver command; a page load under TCG guests' CPU load takes a few seconds.
const COMMAND_LIMIT: Duration = Duration::from_secs(60);

/// One HTTP/1.1 request (`Connection: close`) on a TCP connection opened inside
/// `ns` (or here, without one) to `host:port`: the status and the body.
pub fn http(
    ns: Option<&NetNs>,
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<(u16, String)> {
    let connect = move || -> Result<TcpStream> {
        let s = TcpStream::connect((host, port))
            .with_context(|| format!("connecting to {host}:{port}"))?;
        s.set_read_timeout(Some(COMMAND_LIMIT))?;
        s.set_write_timeout(Some(COMMAND_LIMIT))?;
        Ok(s)
    };
    let mut s = match ns {
        Some(ns) => ns.run_inside(connect)?,
        None => connect()?,
    };
    let body = body.unwrap_or("");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())?;
    // chromedriver keeps the connection open whatever the request says: read the
    // header, then exactly Content-Length bytes (or chunks, or to the end).
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = s.read(&mut buf)?;
        ensure!(n > 0, "connection closed before the HTTP header ended");
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("no status in {head:?}"))?;
    let field = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let mut rest = raw[head_end + 4..].to_vec();
    let body = if let Some(len) = field("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while rest.len() < len {
            let n = s.read(&mut buf)?;
            ensure!(
                n > 0,
                "connection closed {} bytes into a {len}-byte body",
                rest.len()
            );
            rest.extend_from_slice(&buf[..n]);
        }
        rest.truncate(len);
        String::from_utf8_lossy(&rest).to_string()
    } else {
        s.read_to_end(&mut rest)?;
        let text = String::from_utf8_lossy(&rest).to_string();
        if field("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            dechunk(&text)?
        } else {
            text
        }
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").context("chunk size line")?;
        let n = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("chunk size {size:?}"))?;
        if n == 0 {
            return Ok(out);
        }
        ensure!(rest.len() >= n, "chunk shorter than {n}");
        out.push_str(&rest[..n]);
        s = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
}

/// A headless Chromium session; the browser and its driver end when dropped.
pub struct Browser<'a> {
    ns: &'a NetNs,
    driver: Option<Child>,
    session: String,
    _profile: tempfile::TempDir,
    shots: PathBuf,
}

impl<'a> Browser<'a> {
    /// Starts chromedriver in `ns` and a headless Chromium session of `width`x`height`;
    /// screenshots go to `shots`.
    pub fn start(ns: &'a NetNs, shots: &Path, width: u32, height: u32) -> Result<Self> {
        let profile = tempfile::tempdir().context("chromium profile dir")?;
        let log = std::fs::File::create(profile.path().join("driver.log"))?;
        let driver = ns
            .command("chromedriver")
            .arg(format!("--port={DRIVER_PORT}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning chromedriver (Debian package chromium-driver)")?;
        let mut b = Self {
            ns,
            driver: Some(driver),
            session: String::new(),
            _profile: profile,
            shots: shots.to_path_buf(),
        };
        let deadline = Instant::now() + DRIVER_START;
        loop {
            match b.raw("GET", "/status", None) {
                Ok(v) if v["value"]["ready"] == true => break,
                _ if Instant::now() > deadline => bail!("chromedriver not ready within 30 s"),
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        let args = [
            "--headless=new".to_string(),
            // As root (CI): Chromium's sandbox needs an unprivileged user.
            "--no-sandbox".to_string(),
            "--disable-gpu".to_string(),
            "--disable-dev-shm-usage".to_string(),
            "--no-first-run".to_string(),
            format!("--window-size={width},{height}"),
            format!(
                "--user-data-dir={}",
                b._profile.path().join("profile").display()
            ),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
            "timeouts": {"script": 60000, "pageLoad": 60000},
        }}});
        let v = b.raw("POST", "/session", Some(&caps))?;
        b.session = v["value"]["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("no session in {v}"))?
            .to_string();
        Ok(b)
    }

    fn raw(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let body = body.map(Value::to_string);
        let (status, text) = http(
            Some(self.ns),
            "127.0.0.1",
            DRIVER_PORT,
            method,
            path,
            &[],
            body.as_deref(),
        )?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("WebDriver {method} {path}: {status} {text:?}"))?;
        if status != 200 {
            bail!(
                "WebDriver {method} {path}: {status} {}: {}",
                v["value"]["error"],
                v["value"]["message"]
            );
        }
        Ok(v)
    }

    /// A command of this session; its `value`.
    pub fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let path = format!("/session/{}{path}", self.session);
        Ok(self.raw(method, &path, body.as_ref())?["value"].take())
    }

    pub fn goto(&self, url: &str) -> Result<()> {
        self.cmd("POST", "/url", Some(json!({ "url": url })))
            .map(drop)
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    pub fn js(&self, script: &str, args: Value) -> Result<Value> {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
    }

    /// Runs `script` with a callback as its last argument; the value it is called with.
    pub fn js_async(&self, script: &str, args: Value) -> Result<Value> {
        self.cmd(
            "POST",
            "/execute/async",
            Some(json!({"script": script, "args": args})),
        )
    }

    /// Polls `script` until it returns something truthy (not null, false, 0 or "").
    pub fn wait(&self, what: &str, limit: Duration, script: &str) -> Result<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.js(script, json!([]))?;
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return Ok(v);
            }
            ensure!(
                Instant::now() < deadline,
                "{what}: not within {limit:?} (last: {v})"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The first element matching `css`: its WebDriver reference.
    pub fn find(&self, css: &str) -> Result<Value> {
        let v = self.cmd(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        )?;
        let id = v
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("no element {css}: {v}"))?;
        Ok(json!(id))
    }

    /// Clicks the first element matching `css`, as a user would (it must be visible
    /// and enabled, or WebDriver refuses).
    pub fn click(&self, css: &str) -> Result<()> {
        let id = self.find(css)?;
        let id = id.as_str().unwrap_or_default();
        self.cmd("POST", &format!("/element/{id}/click"), Some(json!({})))
            .with_context(|| format!("clicking {css}"))
            .map(drop)
    }

    /// Types `text` into the first element matching `css`.
    pub fn type_into(&self, css: &str, text: &str) -> Result<()> {
        let id = self.find(css)?;
        let id = id.as_str().unwrap_or_default();
        self.cmd(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        )
        .map(drop)
    }

    /// A PNG of the viewport, saved as `SHOTS/NAME.png`.
    pub fn screenshot(&self, name: &str) -> Result<PathBuf> {
        let v = self.cmd("GET", "/screenshot", None)?;
        let png = base64_decode(v.as_str().unwrap_or_default())?;
        ensure!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

impl Drop for Browser<'_> {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.raw("DELETE", &format!("/session/{}", self.session), None);
        }
        if let Some(mut c) = self.driver.take() {
            terminate(&c);
            if wait_until(&mut c, Instant::now() + Duration::from_secs(10))
                .ok()
                .flatten()
                .is_none()
            {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Standard base64 (WebDriver's screenshots).
fn base64_decode(s: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b'\n' | b'\r' => continue,
            _ => bail!("not base64: {:?}", c as char),
        };
        acc = ((acc << 6) | u32::from(v)) & 0xff_ffff;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_and_chunks() {
        assert_eq!(super::base64_decode("aGVsbG8=").expect("decodes"), b"hello");
        assert_eq!(
            super::base64_decode("AAEC/w==").expect("decodes"),
            [0, 1, 2, 255]
        );
        assert!(super::base64_decode("a*").is_err());
        assert_eq!(
            super::dechunk("5\r\nhello\r\n1\r\n!\r\n0\r\n\r\n").expect("decodes"),
            "hello!"
        );
        assert!(super::dechunk("9\r\nhi\r\n").is_err());
    }
}
