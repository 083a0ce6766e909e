//! `bootd image capture NODE NAME`: a node's current disk (its golden image
//! and its overlay, flattened) stored as the next version of image NAME,
//! with the node's identity scrubbed by the same `scrub.sh` as `image
//! build`, so every node booting the capture keeps what the source node
//! installed and makes its own machine-id, SSH host keys and cloud-init
//! instance on its first boot.
//!
//! The node must have no live iSCSI session (serve's session lock, see
//! `events::session_locks`): a disk in use holds a half-written file
//! system. It is then released like `node reset` releases it (serve closes
//! the overlay), read through the overlay engine, and given back unchanged
//! before the scrub, so the node is away from serve only while its disk is
//! copied.

use super::flatten::{flatten, Flattened};
use super::partitions;
use crate::datadir::DataDir;
use crate::progress::Progress;
use crate::store::{Image, Node, Store};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Set by SIGINT, SIGTERM or SIGHUP during a capture: the copy stops and
/// everything is undone (node state, mount, work directory) as on any
/// error, instead of the process dying with the node away from serve and
/// a file system mounted.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn catch_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe {
            libc::signal(
                sig,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            );
        }
    }
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted; the node is back as it was and nothing was stored");
    }
    Ok(())
}

pub struct Captured {
    pub image: Image,
    pub node: String,
    /// The node's image when captured.
    pub from: Image,
    pub flattened: Flattened,
    /// The partition scrubbed (1-based), or `None` with `--no-scrub`.
    pub scrubbed: Option<usize>,
    pub elapsed: Duration,
}

/// Removes the work directory whatever happens (after the mount guard,
/// which is dropped first, has unmounted).
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One step: a spinner on a terminal, a plain line otherwise.
fn step<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let spin = Progress::spinner(what);
    if !spin.visible() {
        eprintln!("image capture: {what}");
    }
    let r = f();
    spin.finish();
    r
}

/// A step with a progress bar of its own: only the plain line here.
fn announce(what: &str) {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        eprintln!("image capture: {what}");
    }
}

pub fn capture(
    dd: &DataDir,
    store: &mut dyn Store,
    node_name: &str,
    name: &str,
    scrub: bool,
    wait: Duration,
) -> Result<Captured> {
    // Everything that can be refused is refused before the node is touched.
    crate::names::check_image_name("image", name)?;
    for n in crate::lifecycle::recover_releasing(dd, store)? {
        eprintln!("bootd: node {n}: an interrupted command had left it releasing; ready again");
    }
    let node = store.node(node_name)?;
    if scrub {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            bail!("image capture must run as root to mount the node's root file system (or pass --no-scrub)");
        }
        for (tool, package) in [
            ("sfdisk", "fdisk"),
            ("mount", "mount"),
            ("umount", "mount"),
            ("bash", "bash"),
        ] {
            if super::which(tool).is_none() {
                bail!("{tool} is not installed (Debian package {package})");
            }
        }
    }
    // Asked here for a quick answer, and again under the claim below.
    catch_signals();
    wait_no_session(dd, &node, wait)?;
    let start = Instant::now();
    let work = WorkDir(
        dd.images()
            .join(format!(".capture-{name}-{}", std::process::id())),
    );
    let _ = std::fs::remove_dir_all(&work.0);
    std::fs::create_dir_all(&work.0).with_context(|| format!("{}", work.0.display()))?;
    let disk = work.0.join("disk.raw");

    // Checked under the node's claim, just before serve is asked to let go:
    // a login after it is ended by serve like a reset would end it, and the
    // copy then holds everything written before.
    let (held, now) = step(&format!("releasing node {}", node.name), || {
        crate::lifecycle::hold_for_reading(dd, store, &node.name, |n| no_session(dd, n))
    })?;
    announce(&format!(
        "flattening {} ({} v{} + overlay)",
        now.name, now.image.name, now.image.version
    ));
    let copied = flatten(&now.overlay_path, &now.image.path, &disk, &interrupted);
    // The node goes back to serve as soon as its disk is copied.
    let restored = held.restore(store);
    let flattened = copied?;
    restored?;

    let scrubbed = if scrub {
        Some(step("scrubbing identity", || scrub_disk(&work.0, &disk))?)
    } else {
        None
    };
    check_interrupted()?;
    announce("checksum");
    let (bytes, sha256) = crate::import::hash_file(&disk)?;
    check_interrupted()?;
    let image = crate::import::register(dd, store, name, &disk, bytes, sha256)?;
    Ok(Captured {
        image,
        node: now.name,
        from: now.image,
        flattened,
        scrubbed,
        elapsed: start.elapsed(),
    })
}

fn no_session(dd: &DataDir, n: &Node) -> Result<()> {
    if crate::events::session_locks::live(dd, &n.name)? {
        bail!(
            "node {} has a live iSCSI session: shut the node down (or log it out) first; \
             a disk in use holds a half-written file system. A node that powered off \
             without logging out keeps its session until serve notices the silence \
             (about a minute): `--wait 120` waits for that",
            n.name
        );
    }
    Ok(())
}

/// [`no_session`], polled until `wait` has passed: a node that was just
/// powered off never logs out, and serve only ends its session when TCP
/// keepalive finds the peer gone.
fn wait_no_session(dd: &DataDir, n: &Node, wait: Duration) -> Result<()> {
    let deadline = Instant::now() + wait;
    loop {
        match no_session(dd, n) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => {
                check_interrupted()?;
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

/// Runs `cmd`, failing with its stderr's last lines.
fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(8).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("{what} failed ({}): {}", out.status, tail.join("\n  "));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Finds the root file system on `disk`, mounts it and runs scrub.sh on
/// it. Returns the partition's number.
fn scrub_disk(work: &Path, disk: &Path) -> Result<usize> {
    let len = std::fs::metadata(disk)?.len();
    let json = run(
        Command::new("sfdisk").arg("--json").arg(disk),
        "sfdisk --json (reading the partition table)",
    )
    .map_err(|e| e.context(no_scrub_hint("the disk has no readable partition table")))?;
    let table = partitions::parse(&json, len)
        .map_err(|e| anyhow::anyhow!("{e}").context(no_scrub_hint("bad partition table")))?;
    if table.linux.is_empty() {
        bail!(no_scrub_hint(&format!(
            "no Linux partition in the {} table (types: {})",
            table.label,
            table.kinds.join(", ")
        )));
    }
    let script = work.join("scrub.sh");
    std::fs::write(&script, include_str!("files/scrub.sh"))?;
    let root = work.join("root");
    std::fs::create_dir_all(&root)?;
    let mut tried = Vec::new();
    for part in &table.linux {
        let mount = match Mount::new(disk, part, &root) {
            Ok(m) => m,
            Err(e) => {
                tried.push(format!("partition {}: {e:#}", part.number));
                continue;
            }
        };
        // Not followed: a node's symlink must not make us look elsewhere.
        let etc = std::fs::symlink_metadata(root.join("etc"));
        if !etc.is_ok_and(|m| m.is_dir()) {
            tried.push(format!("partition {}: no /etc", part.number));
            mount.unmount()?;
            continue;
        }
        let scrubbed = run(
            Command::new("bash").arg(&script).arg(&root),
            "scrub.sh (removing the node's identity)",
        );
        // Freed blocks (the removed host keys, logs) are discarded, so the
        // loop device punches holes in the image: the captured image does
        // not carry the old keys' bytes and stays sparse. Best effort: a
        // file system without discard keeps them unreferenced.
        if scrubbed.is_ok() {
            if let Err(e) = run(Command::new("fstrim").arg(&root), "fstrim") {
                eprintln!("bootd: warning: {e:#}; freed blocks stay in the image");
            }
        }
        let unmounted = mount.unmount();
        scrubbed?;
        unmounted?;
        return Ok(part.number);
    }
    bail!(no_scrub_hint(&format!(
        "no Linux root file system found ({})",
        tried.join("; ")
    )))
}

fn no_scrub_hint(why: &str) -> String {
    format!(
        "{why}: bootd scrubs only Linux root file systems; for Windows or another \
         system, generalize the node yourself (e.g. sysprep /generalize /shutdown) \
         and capture with --no-scrub"
    )
}

/// A partition of the disk file mounted on a loop device; unmounted when
/// dropped (on every error path), or explicitly to see that it worked.
struct Mount {
    point: PathBuf,
    mounted: bool,
}

impl Mount {
    fn new(disk: &Path, part: &partitions::Candidate, point: &Path) -> Result<Self> {
        // nosymfollow: scrub.sh writes paths inside the tree as root; a
        // symlink the node planted (etc/machine-id -> /etc/shadow) must not
        // lead outside it. nodev/nosuid/noexec: nothing on the node's disk
        // runs or opens devices here.
        let opts = format!(
            "loop,offset={},sizelimit={},nodev,nosuid,noexec,nosymfollow",
            part.offset, part.bytes
        );
        run(
            Command::new("mount")
                .args(["-o", &opts])
                .arg(disk)
                .arg(point),
            "mount",
        )?;
        Ok(Self {
            point: point.to_path_buf(),
            mounted: true,
        })
    }

    fn unmount(mut self) -> Result<()> {
        self.mounted = false;
        run(Command::new("umount").arg(&self.point), "umount").map(drop)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.mounted {
            let ok = Command::new("umount")
                .arg(&self.point)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                // Detach it at least, so the work directory can go.
                let _ = Command::new("umount").arg("-l").arg(&self.point).status();
            }
        }
    }
}
