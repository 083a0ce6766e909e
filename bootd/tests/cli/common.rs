//! Helpers: a data directory with the bootd binary pointed at it, commands
//! with time limits, and a running `serve` that is stopped on drop.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Every external command gets this long at most.
const LIMIT: Duration = Duration::from_secs(60);

pub struct Env {
    pub dir: tempfile::TempDir,
    /// Extra variables for every bootd run (`BOOTD_REGISTRY`, `PGPASSWORD`).
    pub vars: Vec<(String, String)>,
}

impl Env {
    pub fn new() -> Result<Self> {
        Ok(Self {
            dir: tempfile::tempdir()?,
            vars: Vec::new(),
        })
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn bootd_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_bootd"));
        c.env("BOOTD_DATA_DIR", self.data())
            .env("BOOTD_LOG", "info")
            .env_remove("BOOTD_REGISTRY")
            .env_remove("PGPASSWORD")
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .args(args);
        c
    }

    /// Runs bootd; returns its output whatever the exit status.
    pub fn bootd(&self, args: &[&str]) -> Result<Output> {
        run(self.bootd_cmd(args))
    }

    /// Runs bootd and insists on success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.bootd(args)?;
        if !out.status.success() {
            return Err(format!(
                "bootd {args:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// Runs bootd, insists on failure with exactly one line on stderr; returns it.
    pub fn fails(&self, args: &[&str]) -> Result<String> {
        let out = self.bootd(args)?;
        let err = String::from_utf8(out.stderr)?;
        assert!(!out.status.success(), "bootd {args:?} should fail");
        assert_eq!(err.lines().count(), 1, "one line on stderr: {err:?}");
        Ok(err)
    }

    pub fn json(&self, args: &[&str]) -> Result<serde_json::Value> {
        Ok(serde_json::from_str(&self.ok(args)?)?)
    }
}

/// Runs a command to completion within [`LIMIT`].
pub fn run(mut cmd: Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("{cmd:?}: {e}"))?;
    let mut out = child.stdout.take().ok_or("no stdout")?;
    let mut err = child.stderr.take().ok_or("no stderr")?;
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{cmd:?} took longer than {LIMIT:?}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Output {
        status,
        stdout: t_out.join().map_err(|_| "stdout reader")?,
        stderr: t_err.join().map_err(|_| "stderr reader")?,
    })
}

/// Runs a tool that must exist here and must succeed.
pub fn tool(program: &str, args: &[&str]) -> Result<String> {
    let mut c = Command::new(program);
    c.args(args);
    let out = run(c)?;
    if !out.status.success() {
        return Err(format!(
            "{program} {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// A raw golden image: `size` bytes, the first `filled` bytes set to `byte`.
pub fn golden(path: &Path, size: u64, filled: usize, byte: u8) -> Result {
    std::fs::write(path, vec![byte; filled])?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .set_len(size)?;
    Ok(())
}

pub fn sha256(path: &Path) -> Result<String> {
    let out = tool("sha256sum", &[&path.to_string_lossy()])?;
    Ok(out.split_whitespace().next().unwrap_or("").to_string())
}

/// A running `bootd serve` on 127.0.0.1 with free ports, stopped (SIGTERM
/// on `stop`, kill on drop).
pub struct Serve {
    child: Option<Child>,
    /// The iSCSI port.
    pub port: u16,
    pub http: u16,
    pub tftp: u16,
    /// The addresses of the ready lines: iSCSI, HTTP, TFTP.
    pub listen: Vec<String>,
}

impl Serve {
    pub fn start(env: &Env) -> Result<Self> {
        Self::start_with(env, &[])
    }

    /// With `extra` arguments after the defaults (e.g. `--tftp-dir DIR`).
    pub fn start_with(env: &Env, extra: &[&str]) -> Result<Self> {
        Self::start_args(env, &loopback_serve(extra))
    }

    /// `bootd ARGS` (a serve command line of its own); waits for the ready
    /// lines. `listen` is what they said: iSCSI, HTTP, TFTP addresses.
    pub fn start_args(env: &Env, args: &[&str]) -> Result<Self> {
        Self::start_cmd(env.bootd_cmd(args))
    }

    /// [`Serve::start_args`] for a command made elsewhere (inside a network
    /// namespace, say).
    pub fn start_cmd(mut cmd: Command) -> Result<Self> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut serve = Self {
            child: Some(cmd.spawn()?),
            port: 0,
            http: 0,
            tftp: 0,
            listen: Vec::new(),
        };
        let child = serve.child.as_mut().ok_or("no child")?;
        serve.listen = ready_addrs(child, &["iscsi", "http", "tftp"])?;
        let ports = serve
            .listen
            .iter()
            .map(|a| port_of(a))
            .collect::<Result<Vec<u16>>>()?;
        (serve.port, serve.http, serve.tftp) = (ports[0], ports[1], ports[2]);
        Ok(serve)
    }

    /// The serve process's id.
    pub fn pid(&self) -> Result<u32> {
        Ok(self.child.as_ref().ok_or("stopped")?.id())
    }

    /// Descriptors the serve process has open on `path`.
    pub fn open_count(&self, path: &Path) -> Result<usize> {
        let pid = self.child.as_ref().ok_or("stopped")?.id();
        let want = std::fs::canonicalize(path)?;
        let mut n = 0;
        for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
            if std::fs::read_link(fd?.path()).ok().as_deref() == Some(want.as_path()) {
                n += 1;
            }
        }
        Ok(n)
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(mut self) -> Result {
        stop_child(self.child.take().ok_or("already stopped")?)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// How a client presents itself to a target.
pub struct Login<'a> {
    pub target: &'a str,
    pub initiator: &'a str,
    pub chap: Option<(&'a str, &'a str)>,
}

/// qemu-io against `iscsi://127.0.0.1:port` with the given identity.
pub fn qemu_io(port: u16, login: &Login<'_>, cmds: &[&str]) -> Result<Output> {
    let mut opts = format!(
        "driver=iscsi,transport=tcp,portal=127.0.0.1:{port},target={},lun=0,initiator-name={}",
        login.target, login.initiator
    );
    if let Some((u, p)) = login.chap {
        opts.push_str(&format!(",user={u},password={p}"));
    }
    let mut c = Command::new("qemu-io");
    c.arg("--image-opts").arg(opts);
    for cmd in cmds {
        c.arg("-c").arg(cmd);
    }
    run(c)
}

/// qemu-io must succeed and report no pattern mismatch.
pub fn io_ok(port: u16, login: &Login<'_>, cmds: &[&str]) -> Result {
    let out = qemu_io(port, login, cmds)?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success()
        || text.contains("Pattern verification failed")
        || text.contains("can't open")
    {
        return Err(format!("qemu-io {cmds:?} as {}: {text}", login.initiator).into());
    }
    Ok(())
}

/// Retries `io_ok` while serve catches up with a registry change.
pub fn io_eventually(port: u16, login: &Login<'_>, cmds: &[&str]) -> Result {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match io_ok(port, login, cmds) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// The login must be refused (qemu-io cannot open the LUN).
pub fn login_refused(port: u16, login: &Login<'_>) -> Result {
    let out = qemu_io(port, login, &["read 0 512"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("can't open"),
        "login of {} to {} should be refused: {err}",
        login.initiator,
        login.target
    );
    Ok(())
}

/// Image `deb` (8 MiB, its first MiB filled) and node `n1` with `mac` on it;
/// `node show n1 --json`.
pub fn one_node(env: &Env, mac: &str) -> Result<serde_json::Value> {
    one_node_at(env, mac, None)
}

/// [`one_node`], with static address `ip` (the address serve's HTTP side
/// then serves the node's script to).
pub fn one_node_at(env: &Env, mac: &str, ip: Option<&str>) -> Result<serde_json::Value> {
    let raw = env.path("g.raw");
    golden(&raw, 8 << 20, 1 << 20, 0x5a)?;
    env.ok(&["image", "import", "deb", &raw.to_string_lossy()])?;
    let mut args = vec!["node", "add", mac, "--image", "deb", "--name", "n1"];
    if let Some(ip) = ip {
        args.extend(["--ip", ip]);
    }
    env.ok(&args)?;
    env.json(&["node", "show", "n1", "--json"])
}

/// How bootd reaches the test's PostgreSQL server.
#[derive(Debug, Clone, Copy)]
pub enum Via {
    /// 127.0.0.1 and the server's port.
    Tcp,
    /// The server's Unix socket: what serves in other network namespaces
    /// (which cannot reach the host's loopback) share.
    Unix,
}

/// An Env whose bootd runs use a fresh database on `server` (through
/// `via`; the password in `PGPASSWORD`), and the database's name.
pub fn on_postgres(server: &bootd_tests::postgres::PgServer, via: Via) -> Result<(Env, String)> {
    let db = server.create_database()?;
    let url = match via {
        Via::Tcp => server.url(&db),
        Via::Unix => server.unix_url(&db),
    };
    let mut env = Env::new()?;
    env.vars = vec![
        ("BOOTD_REGISTRY".into(), url),
        ("PGPASSWORD".into(), bootd_tests::postgres::PASSWORD.into()),
    ];
    Ok((env, db))
}

/// [`on_postgres`] with image `deb` imported: `size` bytes, its first MiB
/// 0x5a.
pub fn on_postgres_with_image(
    server: &bootd_tests::postgres::PgServer,
    via: Via,
    size: u64,
) -> Result<(Env, String)> {
    let (env, db) = on_postgres(server, via)?;
    let raw = env.path("g.raw");
    golden(&raw, size, 1 << 20, 0x5a)?;
    env.ok(&["image", "import", "deb", &raw.to_string_lossy()])?;
    Ok((env, db))
}

/// SIGTERM to a serve process, then wait (at most 20 s) for a clean exit.
/// `serve` on 127.0.0.1 with no DHCP and every port chosen by the kernel,
/// then `extra`.
pub fn loopback_serve<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    serve_at("127.0.0.1", extra)
}

/// [`loopback_serve`] on address `ip` (another loopback address, or one in
/// a namespace).
pub fn serve_at<'a>(ip: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "serve",
        "--dhcp",
        "off",
        "--listen-ip",
        ip,
        "--iscsi-port",
        "0",
        "--http-port",
        "0",
        "--tftp-port",
        "0",
    ];
    args.extend_from_slice(extra);
    args
}

/// serve's ready lines on its stdout ("iscsi ADDR", "http ADDR", ...), one
/// per `kinds` in that order: the addresses. Each may take 20 s (a debug
/// build opening its registry on a loaded machine).
pub fn ready_addrs(child: &mut Child, kinds: &[&str]) -> Result<Vec<String>> {
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let n = kinds.len();
    let (tx, rx) = std::sync::mpsc::channel();
    // A thread, so a serve that never prints cannot hang the test.
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        for _ in 0..n {
            let mut line = String::new();
            let _ = r.read_line(&mut line);
            let _ = tx.send(line);
        }
    });
    let mut addrs = Vec::new();
    for kind in kinds {
        let line = rx.recv_timeout(Duration::from_secs(20))?;
        let addr = line
            .trim()
            .strip_prefix(kind)
            .and_then(|a| a.strip_prefix(' '))
            .ok_or_else(|| format!("expected a {kind} line, serve printed {line:?}"))?;
        addrs.push(addr.to_string());
    }
    Ok(addrs)
}

/// The port of `HOST:PORT`.
pub fn port_of(addr: &str) -> Result<u16> {
    Ok(addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("no port in {addr:?}"))?)
}

pub fn stop_child(mut child: std::process::Child) -> Result {
    tool("kill", &["-TERM", &child.id().to_string()])?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = child.try_wait()? {
            assert!(s.success(), "serve exited with {s}");
            return Ok(());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err("serve did not stop within 20 s of SIGTERM".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
