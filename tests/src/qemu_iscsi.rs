//! QEMU's iSCSI client (qemu-io, qemu-img) logging in as a given initiator with given
//! CHAP credentials, as a node would. The `iscsi://` URL form cannot name the
//! initiator, so this uses QEMU's `--image-opts` keys (`file.initiator-name`,
//! `file.user`, `file.password`).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::process::{describe, run, Finished};
use crate::serve::Node;

/// One qemu-io or qemu-img call on loopback takes well under a second; a whole-disk
/// copy of 64 MiB a few seconds on a busy machine.
pub const CLIENT_LIMIT: Duration = Duration::from_secs(60);

/// Who logs in to which target.
#[derive(Clone, Debug)]
pub struct Login {
    pub port: u16,
    pub target: String,
    pub initiator: String,
    /// CHAP user and secret; `None` offers no CHAP at all.
    pub chap: Option<(String, String)>,
}

impl Login {
    /// `node` logging in to its own target with its own name and secret.
    pub fn node(port: u16, node: &Node) -> Self {
        Self {
            port,
            target: node.target_iqn.clone(),
            initiator: node.initiator_iqn.clone(),
            chap: Some((node.chap_user.clone(), node.chap_secret.clone())),
        }
    }

    /// The same initiator and credentials aimed at another target.
    pub fn to_target(mut self, target: &str) -> Self {
        self.target = target.to_string();
        self
    }

    /// The same login under another initiator name.
    pub fn as_initiator(mut self, initiator: &str) -> Self {
        self.initiator = initiator.to_string();
        self
    }

    pub fn without_chap(mut self) -> Self {
        self.chap = None;
        self
    }

    /// QEMU `--image-opts`: the LUN as a raw disk over libiscsi.
    pub fn image_opts(&self) -> String {
        let mut opts = vec![
            "driver=raw".to_string(),
            "file.driver=iscsi".to_string(),
            "file.transport=tcp".to_string(),
            format!("file.portal=127.0.0.1:{}", self.port),
            format!("file.target={}", self.target),
            "file.lun=0".to_string(),
            format!("file.initiator-name={}", self.initiator),
        ];
        if let Some((user, secret)) = &self.chap {
            opts.push(format!("file.user={user}"));
            opts.push(format!("file.password={secret}"));
        }
        // QEMU's option syntax escapes a comma inside a value by doubling it.
        opts.iter()
            .map(|o| o.replace(',', ",,"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn qemu_io_command(&self, cmds: &[String]) -> Command {
        let mut cmd = Command::new("qemu-io");
        cmd.args(["--image-opts", &self.image_opts()]);
        for c in cmds {
            cmd.args(["-c", c]);
        }
        cmd
    }

    /// Runs qemu-io commands in one session; the caller judges the outcome.
    pub fn qemu_io(&self, cmds: &[String]) -> Result<Finished> {
        run(&mut self.qemu_io_command(cmds), CLIENT_LIMIT)
    }

    /// Runs qemu-io commands that must all succeed, `read -P` checks included.
    pub fn qemu_io_ok(&self, cmds: &[String]) -> Result<Finished> {
        let out = self.qemu_io(cmds)?;
        if !out.success() || verification_failed(&out) {
            bail!("qemu-io failed: {out}");
        }
        Ok(out)
    }

    /// Starts qemu-io in the background (output discarded); the caller kills it.
    pub fn spawn_qemu_io(&self, cmds: &[String]) -> Result<Child> {
        let mut cmd = self.qemu_io_command(cmds);
        let command = describe(&cmd);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("spawning `{command}`"))
    }

    /// Copies the whole LUN into the raw file `dest` through qemu-img.
    pub fn copy_to(&self, dest: &Path) -> Result<Finished> {
        let dest = dest.to_str().context("destination path is not UTF-8")?;
        let mut cmd = Command::new("qemu-img");
        cmd.args([
            "convert",
            "--image-opts",
            &self.image_opts(),
            "-O",
            "raw",
            dest,
        ]);
        run(&mut cmd, CLIENT_LIMIT)?.ok()
    }
}

/// qemu-io reports a failed `read -P` on stdout and still exits 0.
pub fn verification_failed(out: &Finished) -> bool {
    out.stdout.contains("Pattern verification failed")
        || out.stderr.contains("Pattern verification failed")
}

/// True when qemu-io failed because the login was refused (as opposed to, say, a
/// connection that never came up).
pub fn login_refused(out: &Finished) -> bool {
    !out.success() && out.stderr.contains("Failed to log in to target")
}

/// qemu-io kept open with commands fed on stdin: a session that stays logged in while
/// the test does something else.
pub struct Session {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
    log: crate::export::Log,
}

impl Session {
    pub fn start(login: &Login) -> Result<Self> {
        let mut cmd = Command::new("qemu-io");
        cmd.args(["--image-opts", &login.image_opts()]);
        let command = describe(&cmd);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning `{command}`"))?;
        let log = crate::export::Log::default();
        let (tx, lines) = std::sync::mpsc::channel();
        log.follow("stdout", child.stdout.take(), Some(tx));
        log.follow("stderr", child.stderr.take(), None);
        let stdin = child.stdin.take();
        Ok(Self {
            child,
            stdin,
            lines,
            log,
        })
    }

    /// Sends one qemu-io command and waits for a line containing `expect`.
    pub fn command(&mut self, cmd: &str, expect: &str) -> Result<()> {
        use std::io::Write;
        let stdin = self
            .stdin
            .as_mut()
            .context("qemu-io stdin already closed")?;
        if let Err(e) = writeln!(stdin, "{cmd}").and_then(|()| stdin.flush()) {
            bail!("sending {cmd:?}: {e}\n{}", self.log());
        }
        let deadline = std::time::Instant::now() + CLIENT_LIMIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains("Pattern verification failed") => {
                    bail!("{cmd:?}: {line}\n{}", self.log())
                }
                Ok(line) if line.contains(expect) => return Ok(()),
                Ok(_) => {}
                Err(_) => bail!("{cmd:?}: no {expect:?} from qemu-io\n{}", self.log()),
            }
        }
    }

    pub fn log(&self) -> String {
        format!("--- qemu-io session ---\n{}--- end ---", self.log.text())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Closing stdin ends qemu-io; kill it if a dead connection keeps it busy.
        drop(self.stdin.take());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        // Errors only mean it is already gone.
        let _ = crate::process::wait_until(&mut self.child, deadline);
    }
}
