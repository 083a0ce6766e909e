//! Data safety (issue 17) with real initiators and real faults: no write `bootd serve`
//! acknowledged is lost to a crash of serve, a full disk or an I/O error, and the
//! overlay opens and checks clean afterwards.
//!
//! - `kill9`: a write-back initiator (qemu-io, no FUA, no flush), serve killed with
//!   SIGKILL mid-stream and restarted on the same port, six times.
//! - `enospc`: the overlays directory on a 24 MiB tmpfs in a private mount namespace,
//!   filled until writes fail; then a clean stop, or a kill -9, and a restart; under
//!   serve's defaults and with `--reserve-free 0`. `enospc_only_when_the_disk_is_full`
//!   fails (a03ed47; main 89bfac3 with `--reserve-free 0`): it found a capacity bug.
//! - `eio`: the overlays directory on a FUSE file system that fails fsync or write on
//!   demand (`tests/faults/failfs.py`).
//! - `machine_death`: the overlays directory on `failfs.py --volatile`, which loses
//!   every unsynced write when its "machine" dies: `--sync-writes always` loses no
//!   acknowledged write, `flush` loses them (issue 15, item 5).
//! - `guest`: a TCG Linux guest's kernel initiator (iscsistart, then iscsid) writes
//!   ext4 files through its page cache while serve is killed twice (~85 s).
//!
//! The kill-and-restart rounds pick their kill points from a seed printed at the start;
//! `BOOTD_E2E_SEED=N` repeats a run.

mod eio;
mod enospc;
mod guest;
mod kill9;
mod machine_death;

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Result};
use bootd_tests::disk::{noise, Fill};
use bootd_tests::env::Needs;
use bootd_tests::export::Server;
use bootd_tests::faults::Mounted;
use bootd_tests::overlay::{judge, Verdict};
use bootd_tests::process::Finished;
use bootd_tests::qemu_iscsi::Login;
use bootd_tests::serve::{DataDir, Node, Serve, ServeOptions};
use bootd_tests::writeback::parse_sense;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GOLDEN_BYTES: u64 = 64 * MIB;
/// The overlay's cluster: a write to a cluster of its own allocates, so its table
/// change is what must survive.
const CLUSTER: u64 = 64 * KIB;
const BLOCK: u64 = 4 * KIB;
/// serve's listening port is free again this soon after a kill; allow for a slow box.
const RESTART_LIMIT: Duration = Duration::from_secs(10);

fn needs(test: &str, root: bool) -> bool {
    if Server::from_env() != Server::Bootd {
        println!("{test}: skipped: the overlays and serve are bootd's own (BOOTD_TEST_TARGET)");
        return false;
    }
    let mut n = Needs::new()
        .server()
        .tool("qemu-io", "qemu-utils")
        .tool("qemu-img", "qemu-utils")
        .tool("stdbuf", "coreutils");
    if root {
        n = n.root();
    }
    n.met(test)
}

/// A seed for this run's random choices: `BOOTD_E2E_SEED`, or the clock.
fn seed(test: &str) -> u64 {
    let seed = std::env::var("BOOTD_E2E_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    println!("{test}: seed {seed} (BOOTD_E2E_SEED={seed} repeats it)");
    seed
}

/// splitmix64's finaliser: neighbouring seeds give unrelated numbers.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A data directory with a noise golden image of `bytes` and one node on it.
struct Setup {
    /// Mounts over parts of the data directory; first, so they are detached before the
    /// directory is removed.
    mounts: Vec<Mounted>,
    work: tempfile::TempDir,
    golden: Vec<u8>,
    data: DataDir,
    node: Node,
}

impl Setup {
    fn new(bytes: u64, seed: u64) -> Result<Self> {
        let work = tempfile::tempdir()?;
        let golden = noise(usize::try_from(bytes)?, seed | 1);
        let file = work.path().join("golden.raw");
        std::fs::write(&file, &golden)?;
        let data = DataDir::new()?;
        data.import("golden", &file)?;
        std::fs::remove_file(&file)?;
        let node = data.add_node("52:54:00:d5:00:01", "golden", "dsafe")?;
        Ok(Self {
            mounts: Vec::new(),
            work,
            golden,
            data,
            node,
        })
    }

    fn scratch(&self) -> PathBuf {
        self.work.path().join("scratch.raw")
    }

    fn overlays(&self) -> PathBuf {
        self.data.path().join("overlays")
    }

    /// The node's whole disk over iSCSI, judged against what was acknowledged.
    fn judge_disk(&self, login: &Login, acked: &[Fill], unacked: &[Fill]) -> Result<Verdict> {
        let scratch = self.scratch();
        login.copy_to(&scratch)?;
        let got = std::fs::read(&scratch)?;
        judge(&got, &self.golden, acked, unacked)
    }
}

/// A port free right now, for a serve that must come back on the same port so a
/// connected initiator can reconnect.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// serve on `port`; right after a kill the port may be busy for a moment.
fn serve_on(data: &DataDir, port: u16) -> Result<Serve> {
    serve_retrying(
        data,
        &ServeOptions {
            extra: vec!["--iscsi-port".into(), port.to_string()],
            ..ServeOptions::default()
        },
    )
}

/// serve as `opts` says, retried for a while: a fixed port may still be held for a
/// moment by the serve just killed.
fn serve_retrying(data: &DataDir, opts: &ServeOptions) -> Result<Serve> {
    let deadline = Instant::now() + RESTART_LIMIT;
    loop {
        match data.serve_with(opts) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Checks qemu-io's failed-command lines: at least one, each with sense key `key` (and
/// ASC `asc` if given). Returns how many.
fn expect_sense(what: &str, lines: &[&str], key: u8, asc: Option<u8>) -> Result<usize> {
    ensure!(!lines.is_empty(), "{what}: no failed SCSI command reported");
    for l in lines {
        let sense = parse_sense(l);
        ensure!(
            sense.is_some_and(|(k, ascq)| k == key && asc.is_none_or(|a| (ascq >> 8) as u8 == a)),
            "{what}: {l:?}, expected sense key {key:#x}{}",
            asc.map(|a| format!(" ASC {a:#04x}")).unwrap_or_default()
        );
    }
    Ok(lines.len())
}

fn sense_lines(out: &Finished) -> Vec<&str> {
    out.stderr
        .lines()
        .chain(out.stdout.lines())
        .filter(|l| l.contains("SENSE KEY:"))
        .collect()
}
