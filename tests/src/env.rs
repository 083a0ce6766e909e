//! What a test needs from the machine, and whether a missing piece skips or fails it.

use std::path::{Path, PathBuf};

use crate::export::Server;

/// True when `BOOTD_E2E=1`: the end-to-end tests must run, so anything missing is a
/// failure rather than a skip (CI and `scripts/test.sh` set it).
pub fn e2e_required() -> bool {
    std::env::var("BOOTD_E2E").is_ok_and(|v| v == "1")
}

/// Finds `name` on `PATH` (plus the sbin directories, which a non-root `PATH` may lack).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether we run as root (tgtd, network namespaces).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Collects a test's prerequisites; [`Needs::met`] decides skip or fail.
///
/// ```no_run
/// use bootd_tests::env::Needs;
/// if !Needs::new().server().tool("iscsi-ls", "libiscsi-bin").met("discovery") {
///     return;
/// }
/// ```
#[derive(Debug, Default)]
#[must_use]
pub struct Needs {
    missing: Vec<String>,
}

impl Needs {
    pub fn new() -> Self {
        Self::default()
    }

    /// A program on `PATH`, from the Debian package `package`.
    pub fn tool(mut self, tool: &str, package: &str) -> Self {
        if which(tool).is_none() {
            self.missing
                .push(format!("{tool} not found (Debian package {package})"));
        }
        self
    }

    /// A file on the host, from the Debian package `package`.
    pub fn file(mut self, path: &str, package: &str) -> Self {
        if !Path::new(path).is_file() {
            self.missing
                .push(format!("{path} not found (Debian package {package})"));
        }
        self
    }

    pub fn root(mut self) -> Self {
        if !is_root() {
            self.missing.push("needs root".to_string());
        }
        self
    }

    /// Whatever the selected export server needs: the bootd binary, or tgt and root.
    pub fn server(self) -> Self {
        match Server::from_env() {
            Server::Bootd => match crate::bootd::bootd_bin() {
                Ok(_) => self,
                Err(e) => self.missing_because(format!("{e:#}")),
            },
            Server::Tgt => self.root().tool("tgtd", "tgt").tool("tgtadm", "tgt"),
        }
    }

    /// PostgreSQL's server binaries (`initdb`, `postgres`).
    pub fn postgres(self) -> Self {
        match crate::postgres::bin_dir() {
            Some(_) => self,
            None => self.missing_because(
                "PostgreSQL's initdb not found (Debian package postgresql-15)".into(),
            ),
        }
    }

    fn missing_because(mut self, why: String) -> Self {
        self.missing.push(why);
        self
    }

    /// True when everything is there. Otherwise prints `skipped: <why>` and returns
    /// false, or panics when `BOOTD_E2E=1` demands that end-to-end tests run.
    pub fn met(self, test: &str) -> bool {
        if self.missing.is_empty() {
            return true;
        }
        let why = self.missing.join("; ");
        if e2e_required() {
            panic!(
                "{test}: BOOTD_E2E=1 but {why} (scripts/install-test-deps.sh installs the tools)"
            );
        }
        println!("{test}: skipped: {why}");
        false
    }
}
