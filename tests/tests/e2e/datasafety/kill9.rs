//! serve killed with SIGKILL under a write-back initiator.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bootd_tests::disk::Fill;
use bootd_tests::overlay::{qemu_img_check, qemu_img_compare};
use bootd_tests::qemu_iscsi::{Login, CLIENT_LIMIT};
use bootd_tests::writeback::{scattered, Writer};

use super::{free_port, mix, needs, seed, serve_on, Setup, BLOCK, CLUSTER, GOLDEN_BYTES};

/// What one kill round saw (printed with `{:?}`).
#[derive(Debug)]
#[allow(dead_code)]
struct Round {
    /// Writes acknowledged before the kill.
    acked_at_kill: usize,
    /// Of those, lost after the restart.
    lost_at_kill: usize,
    /// Writes acknowledged in all (after a reconnect too), and lost of them.
    acked: usize,
    lost: usize,
    garbage: usize,
    writer_stayed: bool,
    aio: bool,
    flushing: bool,
}

/// Issue 17's measurement as a test: `qemu-io -t writeback` writes 4 KiB blocks to
/// clusters of their own, every write acknowledged GOOD and none flushed; serve is
/// killed with SIGKILL after a random number of them and restarted on the same port.
/// In even rounds the initiator stays connected, reconnects and goes on (as Linux's
/// initiator does); in odd rounds it is killed too. Rounds 2 and 3 flush every 8
/// writes (the kill may hit a commit); the last two issue all their writes at once
/// (`aio_write`), so many are in flight. Every write acknowledged, before
/// the kill or after the reconnect, must read back; nothing else may change; after a
/// clean stop `qemu-img check` is clean and the qcow2 file alone (the log folded in)
/// holds the disk that was served.
#[test]
fn serve_kill9_keeps_acknowledged_writeback_writes() -> Result<()> {
    const TEST: &str = "serve_kill9_keeps_acknowledged_writeback_writes";
    const ROUNDS: u64 = 6;
    const PER_ROUND: usize = 160;
    if !needs(TEST, false) {
        return Ok(());
    }
    let started = Instant::now();
    let seed = seed(TEST);
    let setup = Setup::new(GOLDEN_BYTES, seed)?;
    let node = &setup.node;
    let port = free_port()?;
    let login = Login::node(port, node);
    let mut serve = serve_on(&setup.data, port)?;
    let mut taken = BTreeSet::new();
    let (mut acked, mut unacked) = (Vec::<Fill>::new(), Vec::<Fill>::new());
    let mut rounds = Vec::new();

    for round in 0..ROUNDS {
        let fills = scattered(
            PER_ROUND,
            BLOCK,
            (0, GOLDEN_BYTES),
            CLUSTER,
            &mut taken,
            u8::try_from(0x20 + 0x30 * round).unwrap_or(0),
            mix(seed.wrapping_add(round + 1000)),
        )?;
        // Rounds 2 and 3 flush every 8 writes, so the kill may land in a commit or the
        // log's turnover after it; the last two rounds issue every write at once (aio):
        // many are in flight at the kill, and the log takes them in any order.
        let aio = round >= ROUNDS - 2;
        let flushing = (2..4).contains(&round);
        let mut writer = if aio {
            Writer::start_aio(&login, &fills)?
        } else if flushing {
            Writer::start_flushing(&login, &fills, 8)?
        } else {
            Writer::start(&login, &fills, false)?
        };
        let at = 10 + usize::try_from(mix(seed ^ round) % (PER_ROUND as u64 - 40))?;
        ensure!(
            writer.wait_acked(at, CLIENT_LIMIT),
            "round {round}: {at} writes not acknowledged within {}s\n{}",
            CLIENT_LIMIT.as_secs(),
            serve.log()
        );
        serve.kill9()?;
        // Completion lines still in the pipe belong to writes acknowledged before the
        // kill; none can come now until serve is back.
        std::thread::sleep(Duration::from_millis(100));
        let acked_at_kill = writer.acked_count();
        // The file as the crash left it (without its log) is consistent, leaks aside.
        let crashed = qemu_img_check(&node.overlay_path, true)
            .with_context(|| format!("round {round}: the overlay right after kill -9"))?;

        let stay = round % 2 == 0;
        let (writer, early) = if stay {
            (Some(writer), None)
        } else {
            (None, Some(writer.kill()?))
        };
        std::thread::sleep(Duration::from_millis(200 + 150 * round));
        serve = serve_on(&setup.data, port)?;
        let outcome = match (writer, early) {
            (Some(writer), _) => {
                let o = writer.finish(CLIENT_LIMIT)?;
                ensure!(
                    o.code == Some(0) && o.unacked.is_empty(),
                    "round {round}: the connected writer did not recover and finish: \
                     exit {:?}, {} of {PER_ROUND} acknowledged\n{}\n{}",
                    o.code,
                    o.acked.len(),
                    o.log,
                    serve.log()
                );
                o
            }
            (None, Some(o)) => o,
            (None, None) => bail!("round {round}: no writer outcome"),
        };
        let before: Vec<Fill> = outcome.acked.iter().take(acked_at_kill).copied().collect();
        acked.extend(&outcome.acked);
        unacked.extend(&outcome.unacked);
        let v = setup
            .judge_disk(&login, &acked, &unacked)
            .with_context(|| serve.log())?;
        let r = Round {
            acked_at_kill,
            lost_at_kill: before
                .iter()
                .filter(|f| v.lost.iter().any(|l| l.offset == f.offset))
                .count(),
            acked: outcome.acked.len(),
            lost: v
                .lost
                .iter()
                .filter(|l| outcome.acked.iter().any(|f| f.offset == l.offset))
                .count(),
            garbage: v.garbage.len(),
            writer_stayed: stay,
            aio,
            flushing,
        };
        println!("{TEST}: round {round}: {r:?}; qemu-img check after the kill: {crashed}");
        let (lost_at_kill, acked_at_kill) = (r.lost_at_kill, r.acked_at_kill);
        rounds.push(r);
        if !v.lost.is_empty() || !v.garbage.is_empty() {
            // Later rounds would only pile on; the figures so far make the report.
            let lost: usize = rounds.iter().map(|r| r.lost).sum();
            let total: usize = rounds.iter().map(|r| r.acked).sum();
            bail!(
                "round {round}: {lost} of {total} acknowledged writes lost so far \
                 ({} of {} acknowledged before this round's kill); first lost: {:?}; \
                 bytes that match neither golden nor a write at: {:?}\nrounds: {rounds:#?}\n{}",
                lost_at_kill,
                acked_at_kill,
                v.lost.first(),
                v.garbage,
                serve.log()
            );
        }
    }
    serve.stop()?;
    let check = qemu_img_check(&node.overlay_path, false)?;
    // The last copy is what serve served; the qcow2 file alone must hold it now.
    qemu_img_compare(&node.overlay_path, &setup.scratch())?;
    let total: usize = rounds.iter().map(|r| r.acked).sum();
    let at_kill: usize = rounds.iter().map(|r| r.acked_at_kill).sum();
    println!(
        "{TEST}: {ROUNDS} kills, {total} writes acknowledged ({at_kill} of them before a kill), \
         0 lost; final qemu-img check: {check}; {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
