//! A Linux guest's kernel initiator writing through its page cache to a node's disk
//! while serve is killed with SIGKILL twice and restarted.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bootd_tests::dsafe;
use bootd_tests::guest::{self, Boot};
use bootd_tests::netns::NetNs;
use bootd_tests::serve::{DataDir, Serve, ServeOptions};

use super::{needs, serve_retrying, MIB};

const SERVER_IP: &str = "192.0.2.1";
const TAP: &str = "tap0";
const DISK_BYTES: u64 = 256 * MIB;
/// How long the guest writes; the kills land inside this window.
const WRITE_SECS: u64 = 60;
/// Kills after the guest started writing, and how long serve stays down each time.
const KILLS_AT: [Duration; 2] = [Duration::from_secs(15), Duration::from_secs(35)];
const DOWN: Duration = Duration::from_secs(3);
/// Boot (~5 s under TCG), login, mkfs, the writing, the final sync and logout.
const GUEST_LIMIT: Duration = Duration::from_secs(WRITE_SECS + 180);

fn serve_in(ns: &NetNs, data: &DataDir) -> Result<Serve> {
    serve_retrying(
        data,
        &ServeOptions {
            netns: Some(ns),
            listen_ip: SERVER_IP.to_string(),
            extra: vec!["--iscsi-port".into(), "3260".into()],
        },
    )
}

/// Issue 17's guest measurement as a test. A TCG guest logs in to a node's target with
/// iscsistart, lets iscsid adopt the session, makes ext4 on the disk and writes files for
/// 60 s with no syncs of its own. Serve is killed with SIGKILL 15 s and 35 s into that,
/// and restarted 3 s later each time; iscsid recovers the session. The guest must see no
/// I/O error; after its final sync and logout and a clean stop of serve, the overlay
/// checks clean, the host's e2fsck finds the file system clean, and every file the
/// guest reported written reads back with its exact contents.
#[test]
fn guest_page_cache_writes_survive_serve_kill9() -> Result<()> {
    const TEST: &str = "guest_page_cache_writes_survive_serve_kill9";
    if !needs(TEST, true) {
        return Ok(());
    }
    let mut n = bootd_tests::env::Needs::new()
        .tool("debugfs", "e2fsprogs")
        .tool("e2fsck", "e2fsprogs");
    for (tool, package) in guest::TOOLS {
        n = n.tool(tool, package);
    }
    if !n.met(TEST) {
        return Ok(());
    }
    let started = Instant::now();
    let work = tempfile::tempdir()?;
    let image = dsafe::image(work.path())?;
    let golden = work.path().join("golden.raw");
    std::fs::File::create(&golden)?.set_len(DISK_BYTES)?;
    let data = DataDir::new()?;
    data.import("blank", &golden)?;
    let node = data.add_node("52:54:00:d5:00:02", "blank", "dsafe-guest")?;
    let token = format!("d{:x}", std::process::id());

    let ns = NetNs::new()?;
    ns.add_tap(TAP, &format!("{SERVER_IP}/24"))?;
    let serve = serve_in(&ns, &data)?;
    let console = work.path().join("console.log");
    let boot = Boot {
        image: &image,
        tap: TAP,
        params: vec![
            "bootd.ip=192.0.2.2/24".to_string(),
            format!("bootd.portal={SERVER_IP}:3260"),
            format!("bootd.iqn={}", node.target_iqn),
            format!("bootd.initiator={}", node.initiator_iqn),
            format!("bootd.chap={}:{}", node.chap_user, node.chap_secret),
            format!("bootd.token={token}"),
            format!("bootd.write_secs={WRITE_SECS}"),
        ],
        console: console.clone(),
        limit: GUEST_LIMIT,
    };
    let (outcome, serve) = std::thread::scope(|s| -> Result<_> {
        let guest = s.spawn(|| guest::boot(&ns, &boot));
        let writing = dsafe::wait_for_mark(
            &console,
            "BOOTD-E2E: writing for",
            Duration::from_secs(120),
            || guest.is_finished(),
        );
        let mut serve = serve;
        let mut kills = Vec::new();
        if writing.is_ok() {
            let t0 = Instant::now();
            for at in KILLS_AT {
                std::thread::sleep(at.saturating_sub(t0.elapsed()));
                if guest.is_finished() {
                    break;
                }
                serve.kill9()?;
                kills.push(t0.elapsed());
                std::thread::sleep(DOWN);
                serve = serve_in(&ns, &data)?;
            }
        }
        let outcome: guest::Outcome = guest
            .join()
            .map_err(|_| anyhow::anyhow!("guest thread panicked"))??;
        println!(
            "{TEST}: guest ran {:.1}s; serve killed at {kills:?} after the writing began",
            outcome.elapsed.as_secs_f64()
        );
        writing.with_context(|| format!("{outcome}\n{}", serve.log()))?;
        ensure!(
            kills.len() == KILLS_AT.len(),
            "the guest finished before both kills\n{outcome}"
        );
        Ok((outcome, serve))
    })?;
    if !outcome.passed() {
        bail!("the guest did not pass\n{outcome}\n{}", serve.log());
    }
    let files = dsafe::files_written(&outcome)?;
    println!(
        "{TEST}: guest: {}",
        outcome.mark("wrote ").unwrap_or_default()
    );
    serve.stop()?;
    drop(ns);
    let check = dsafe::check_disk(&node.overlay_path, work.path(), &token, files)?;
    println!(
        "{TEST}: all {files} files intact; e2fsck clean; qemu-img check: {check}; {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
