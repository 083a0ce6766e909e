//! A throwaway PostgreSQL server for tests: `initdb` and `postgres` in a
//! temporary directory, run as an unprivileged user (PostgreSQL refuses
//! root; as root the directory goes to the `postgres` system user, else
//! `nobody`), listening on 127.0.0.1 on a free port with password
//! (SCRAM) authentication. Stopped and removed on drop.
//!
//! [`shared`] starts one server per test binary; each test takes a fresh
//! database from it ([`PgServer::create_database`]), so a suite pays one
//! start-up (about a second), not one per test.

use anyhow::{bail, Context, Result};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The superuser the tests connect as, and its password.
pub const USER: &str = "bootd";
pub const PASSWORD: &str = "bootd-test-password";

/// Where `initdb` and `postgres` are: `BOOTD_PG_BIN`, Debian's
/// `/usr/lib/postgresql/15/bin` (not on `PATH`), any other version there,
/// or `PATH`.
pub fn bin_dir() -> Option<PathBuf> {
    let has = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    if let Some(d) = std::env::var_os("BOOTD_PG_BIN").map(PathBuf::from) {
        return has(&d).then_some(d);
    }
    let debian = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(debian)
        .map(|rd| rd.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    // 15 first (what the install script installs), then the newest.
    versions.sort_by_key(|p| {
        (
            !p.starts_with(debian.join("15")),
            std::cmp::Reverse(p.clone()),
        )
    });
    versions
        .into_iter()
        .find(|d| has(d))
        .or_else(|| crate::env::which("initdb").and_then(|p| p.parent().map(Path::to_path_buf)))
        .filter(|d| has(d))
}

/// What [`PgServer::start_with`] adds to a default server: files put in its
/// data directory (owned by the server's user, mode 0600; settings name
/// them relative to it), `-c NAME=VALUE` settings, and a `pg_hba.conf` in
/// place of initdb's.
#[derive(Debug, Default, Clone)]
pub struct Setup {
    pub files: Vec<(String, Vec<u8>)>,
    pub settings: Vec<(String, String)>,
    pub hba: Option<String>,
}

pub struct PgServer {
    child: Child,
    /// Whether `child` may still be running (not yet waited for).
    running: bool,
    dir: tempfile::TempDir,
    /// What a restart starts again with.
    bin: PathBuf,
    ids: Option<(u32, u32)>,
    settings: Vec<(String, String)>,
    pub port: u16,
    /// How long initdb and the start took.
    pub started_in: Duration,
    databases: AtomicU32,
}

/// The uid and gid PostgreSQL runs as: ours, or an unprivileged user's when
/// we are root.
fn run_as() -> Result<Option<(u32, u32)>> {
    if !crate::env::is_root() {
        return Ok(None);
    }
    for name in [c"postgres", c"nobody"] {
        // SAFETY: getpwnam returns NULL or a pointer to static storage,
        // read at once, before any other call could overwrite it.
        let pw = unsafe { libc::getpwnam(name.as_ptr()) };
        if !pw.is_null() {
            // SAFETY: checked non-NULL above.
            let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
            return Ok(Some((uid, gid)));
        }
    }
    bail!("running as root and neither a postgres nor a nobody user exists")
}

fn chown(path: &Path, ids: Option<(u32, u32)>) -> Result<()> {
    if let Some((uid, gid)) = ids {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(())
}

fn command(bin: &Path, dir: &Path, ids: Option<(u32, u32)>) -> Command {
    let mut c = Command::new(bin);
    c.current_dir(dir).env_remove("PGPASSWORD");
    if let Some((uid, gid)) = ids {
        c.uid(uid).gid(gid);
    }
    c
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl PgServer {
    /// Runs initdb and starts the server; fails if the binaries are missing.
    pub fn start() -> Result<Self> {
        Self::start_with(&Setup::default())
    }

    /// [`PgServer::start`] with `setup`'s files, settings and pg_hba.conf
    /// (TLS, say).
    pub fn start_with(setup: &Setup) -> Result<Self> {
        let t0 = Instant::now();
        let bin = bin_dir().context("PostgreSQL not found (Debian package postgresql-15)")?;
        let ids = run_as()?;
        let dir = tempfile::Builder::new().prefix("bootd-pg.").tempdir()?;
        chown(dir.path(), ids)?;
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD)?;
        chown(&pwfile, ids)?;
        let data = dir.path().join("data");
        let out = command(&bin.join("initdb"), dir.path(), ids)
            .args([
                "-D",
                &data.to_string_lossy(),
                "-U",
                USER,
                "-A",
                "scram-sha-256",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args([
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
                "--no-instructions",
            ])
            .stdin(Stdio::null())
            .output()
            .context("running initdb")?;
        if !out.status.success() {
            bail!(
                "initdb failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for (name, bytes) in &setup.files {
            let path = data.join(name);
            std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            chown(&path, ids)?;
        }
        if let Some(hba) = &setup.hba {
            let path = data.join("pg_hba.conf");
            std::fs::write(&path, hba)?;
            chown(&path, ids)?;
        }
        // A free port may be taken between the check and the bind: retry.
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port()?;
            match Self::spawn(&bin, dir.path(), &data, port, ids, &setup.settings) {
                Ok(child) => {
                    return Ok(Self {
                        child,
                        running: true,
                        dir,
                        bin,
                        ids,
                        settings: setup.settings.clone(),
                        port,
                        started_in: t0.elapsed(),
                        databases: AtomicU32::new(0),
                    })
                }
                Err(e) => last = format!("{e:#}"),
            }
        }
        bail!("PostgreSQL did not start: {last}")
    }

    fn spawn(
        bin: &Path,
        dir: &Path,
        data: &Path,
        port: u16,
        ids: Option<(u32, u32)>,
        settings: &[(String, String)],
    ) -> Result<Child> {
        let log = dir.join("log");
        // Appended to: a restart keeps what the first run logged.
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        chown(&log, ids)?;
        let mut cmd = command(&bin.join("postgres"), dir, ids);
        cmd.args(["-D", &data.to_string_lossy(), "-p", &port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.display()))
            // A test database need not survive a crash.
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=300"]);
        for (k, v) in settings {
            cmd.arg("-c").arg(format!("{k}={v}"));
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(logf);
        // SAFETY: prctl is async-signal-safe; it runs after the uid change
        // (which would clear it). A test process that dies without dropping
        // the server (a panic in a static, a kill) takes the server with it:
        // SIGQUIT is PostgreSQL's immediate shutdown.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().context("starting postgres")?;
        let pidfile = data.join("postmaster.pid");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait()? {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                bail!("postgres exited ({status}): {text}");
            }
            // Line 8 of the pid file is the postmaster's status.
            let ready = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|t| t.lines().nth(7).map(|l| l.trim() == "ready"))
                .unwrap_or(false);
            if ready {
                return Ok(child);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("postgres not ready after 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `postgres://bootd@127.0.0.1:PORT/DB`, without the password (it is
    /// [`PASSWORD`]; pass it as `PGPASSWORD`).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// The same database through the server's Unix socket (its directory,
    /// percent-encoded, as the URL's host). A socket is a path, so processes
    /// in other network namespaces (which cannot reach this 127.0.0.1) reach
    /// the server through it too.
    pub fn unix_url(&self, db: &str) -> String {
        let dir = self.dir.path().to_string_lossy().replace('/', "%2F");
        format!("postgres://{USER}@{dir}:{}/{db}", self.port)
    }

    /// A connection configuration for `db`, password included. Through the
    /// Unix socket: it works whatever pg_hba.conf says of TCP (TLS only,
    /// say).
    pub fn config(&self, db: &str) -> postgres::Config {
        let mut c = postgres::Config::new();
        c.host_path(self.dir.path())
            .port(self.port)
            .user(USER)
            .password(PASSWORD)
            .dbname(db)
            .connect_timeout(Duration::from_secs(10));
        c
    }

    /// A connection to `db`.
    pub fn connect(&self, db: &str) -> Result<postgres::Client> {
        Ok(self.config(db).connect(postgres::NoTls)?)
    }

    /// A new, empty database; its name. Its default collation is ICU's
    /// en-US where the server has ICU, so a query that relies on the
    /// database's collation for a bytewise order shows it.
    pub fn create_database(&self) -> Result<String> {
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        let name = format!("t{n}");
        let mut c = self.connect("postgres")?;
        let icu = format!(
            "CREATE DATABASE {name} TEMPLATE template0 STRATEGY FILE_COPY LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"
        );
        if c.batch_execute(&icu).is_err() {
            c.batch_execute(&format!("CREATE DATABASE {name}"))?;
        }
        Ok(name)
    }

    /// `pg_ctl restart -m fast`: a fast shutdown (clients disconnected
    /// at once), then the same server on the same port and data again.
    /// How long it was unreachable.
    pub fn restart(&mut self) -> Result<Duration> {
        let t = Instant::now();
        self.halt();
        self.start_again()?;
        Ok(t.elapsed())
    }

    /// A fast shutdown, waited for: clients see their connections end and
    /// new ones refused until [`PgServer::start_again`].
    pub fn halt(&mut self) {
        self.stop();
    }

    /// Starts the halted server again (same port, data and settings).
    pub fn start_again(&mut self) -> Result<()> {
        if self.running {
            bail!("PostgreSQL is running");
        }
        let data = self.dir.path().join("data");
        self.child = Self::spawn(
            &self.bin,
            self.dir.path(),
            &data,
            self.port,
            self.ids,
            &self.settings,
        )?;
        self.running = true;
        Ok(())
    }

    fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        // SIGINT: fast shutdown (disconnects clients, no waiting).
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: plain signal to our own child.
            unsafe { libc::kill(pid, libc::SIGINT) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The test binary's one server, started on first use by a thread that
/// lives as long as the process (the server's parent-death signal follows
/// the thread that started it), stopped and removed at exit. `None` (with
/// a printed reason) when PostgreSQL is absent and `BOOTD_E2E` is unset;
/// panics when `BOOTD_E2E=1` or when it is there but will not start.
pub fn shared(test: &str) -> Option<&'static PgServer> {
    static SERVER: OnceLock<std::result::Result<PgServer, String>> = OnceLock::new();
    if !crate::env::Needs::new().postgres().met(test) {
        return None;
    }
    let server = SERVER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("postgres-owner".into())
            .spawn(move || {
                let _ = tx.send(PgServer::start().map_err(|e| format!("{e:#}")));
                loop {
                    std::thread::park();
                }
            });
        let got = match spawned {
            Ok(_) => rx
                .recv()
                .unwrap_or_else(|_| Err("the owner thread died".into())),
            Err(e) => Err(e.to_string()),
        };
        if let Ok(s) = &got {
            eprintln!("PostgreSQL for the tests started in {:?}", s.started_in);
            // SAFETY: registers a plain extern "C" function.
            unsafe { libc::atexit(stop_shared) };
        }
        got
    });
    extern "C" fn stop_shared() {
        if let Some(Ok(s)) = SERVER.get() {
            // The static is never dropped: stop it by pid, remove its files.
            if let Ok(pid) = i32::try_from(s.child.id()) {
                // SAFETY: plain signal and wait on our own child.
                unsafe {
                    libc::kill(pid, libc::SIGINT);
                    let deadline = Instant::now() + Duration::from_secs(10);
                    let mut st = 0;
                    while libc::waitpid(pid, &mut st, libc::WNOHANG) == 0
                        && Instant::now() < deadline
                    {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
            let _ = std::fs::remove_dir_all(s.dir.path());
        }
    }
    match server {
        Ok(s) => Some(s),
        Err(e) => panic!("{test}: PostgreSQL is installed but did not start: {e}"),
    }
}
