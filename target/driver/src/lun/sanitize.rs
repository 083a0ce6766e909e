//! SANITIZE carried out on the block device (SBC-4 4.11, 5.30).
//!
//! The operation runs in its own task: it goes on after its command is
//! aborted, its connection drops or the LU is reset, as the standard asks.
//! It holds the LU's write gate exclusively (waiting for I/O in flight) and
//! the LU state says "sanitize in progress", so every other medium access
//! is refused meanwhile; other LUs are never held up. It writes in bounded
//! chunks and reports progress through REQUEST SENSE.

use super::{block_error, lock_state, Lun};
use blockdev::{BlockDevice, BlockError};
use bytes::{Bytes, BytesMut};
use iscsi_proto::scsi::lu::LogicalUnit;
use iscsi_proto::scsi::sanitize::{self, Action, State};
use iscsi_proto::scsi::sbc::{self, Geometry};
use iscsi_proto::scsi::sense::Sense;
use iscsi_proto::task::ScsiResult;
use std::sync::{Arc, Mutex};

/// Bytes written (or deallocated) per device call.
const CHUNK: u64 = 4 << 20;
const ERASE_CHUNK: u64 = 1 << 30;
/// OVERWRITE pace in bytes per second. The storage is shared with every
/// other node's disk: an unpaced overwrite of a whole LU would starve their
/// I/O for its duration, so it runs as a background stream at this rate.
const OVERWRITE_RATE: u64 = 128 << 20;

impl Lun {
    /// SANITIZE: checks, then starts the operation; without IMMED waits for it.
    pub(super) async fn sanitize(&self, cdb: &[u8], data: &Bytes, geo: &Geometry) -> ScsiResult {
        let op = match sanitize::decode(cdb, data, geo.block_size, geo.thin, geo.read_only) {
            Ok(op) => op,
            Err(r) => return r,
        };
        if op.action == Action::ExitFailureMode {
            let mut lu = self.lock();
            if lu.sanitize == State::Failed {
                lu.sanitize = State::Idle;
            }
            return sbc::good(Bytes::new(), 0);
        }
        // Refuse new commands first; the task then waits for those already
        // admitted (in the task, so an abort cannot leave the state behind).
        self.lock().sanitize = State::Running { progress: 0 };
        let gate = self.write_gate.clone();
        let job = Job {
            device: self.device.clone(),
            state: self.state.clone(),
            size: geo.num_blocks * u64::from(geo.block_size),
            block_size: geo.block_size,
            rate: OVERWRITE_RATE,
        };
        let task = tokio::spawn(async move {
            let gate = gate.write_owned().await;
            let res = job.run(&op.action).await;
            if let Err(e) = &res {
                tracing::warn!("sanitize failed: {e}");
            }
            lock_state(&job.state).sanitize = if res.is_ok() {
                State::Idle
            } else {
                State::Failed
            };
            drop(gate);
            res
        });
        if op.immed {
            return sbc::good(Bytes::new(), 0);
        }
        match task.await {
            Ok(Ok(())) => sbc::good(Bytes::new(), 0),
            Ok(Err(e)) => block_error(&e, true),
            Err(_) => Sense::INTERNAL_TARGET_FAILURE.into_result(),
        }
    }
}

struct Job {
    device: Arc<dyn BlockDevice>,
    state: Arc<Mutex<LogicalUnit>>,
    size: u64,
    block_size: u32,
    /// Overwrite pace, bytes per second.
    rate: u64,
}

impl Job {
    async fn run(&self, action: &Action) -> Result<(), BlockError> {
        match action {
            Action::Overwrite {
                pattern,
                passes,
                invert,
            } => {
                for pass in 0..*passes {
                    let block =
                        sanitize::pass_block(pattern, self.block_size, pass, *passes, *invert);
                    self.overwrite_pass(&block, u64::from(pass), u64::from(*passes))
                        .await?;
                }
                Ok(())
            }
            Action::BlockErase => self.erase().await,
            Action::ExitFailureMode => Ok(()),
        }
    }

    async fn overwrite_pass(&self, block: &[u8], pass: u64, passes: u64) -> Result<(), BlockError> {
        let bs = u64::from(self.block_size);
        let chunk_len = (CHUNK / bs * bs).max(bs).min(self.size);
        let mut chunk = BytesMut::with_capacity(chunk_len as usize);
        while (chunk.len() as u64) < chunk_len {
            chunk.extend_from_slice(block);
        }
        let chunk = chunk.freeze();
        let start = tokio::time::Instant::now();
        let mut at = 0;
        while at < self.size {
            let n = (self.size - at).min(chunk_len);
            self.device
                .write(at, chunk.slice(..n as usize), false)
                .await?;
            at += n;
            self.progress(pass * self.size + at, passes * self.size);
            let due = std::time::Duration::from_secs_f64(at as f64 / self.rate as f64);
            tokio::time::sleep_until(start + due).await;
        }
        // Each pass is on the medium before the next one starts.
        self.device.flush().await
    }

    async fn erase(&self) -> Result<(), BlockError> {
        let mut at = 0;
        while at < self.size {
            let n = (self.size - at).min(ERASE_CHUNK);
            match self.device.discard(at, n).await {
                Ok(()) => {}
                Err(BlockError::Unsupported) => self.device.write_zeroes(at, n, true).await?,
                Err(e) => return Err(e),
            }
            at += n;
            self.progress(at, self.size);
        }
        self.device.flush().await
    }

    fn progress(&self, done: u64, total: u64) {
        let p = (u128::from(done) * 65536 / u128::from(total.max(1))).min(65535);
        lock_state(&self.state).sanitize = State::Running {
            progress: u16::try_from(p).unwrap_or(u16::MAX),
        };
    }
}

#[cfg(test)]
mod tests {
    use crate::lun::{Lun, LunConfig};
    use blockdev::MemDevice;
    use bytes::Bytes;
    use iscsi_proto::task::{Nexus, ScsiCommand, ScsiResult, ScsiStatus, TaskAttr};
    use std::sync::Arc;
    use std::time::Duration;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn nexus() -> Nexus {
        Nexus {
            initiator_port: "iqn.2026-01.test:i,i,0x1".into(),
            target_port: "iqn.2026-01.test:t,t,0x1".into(),
            relative_port: 1,
        }
    }

    fn lun(dev: Arc<MemDevice>) -> Result<Arc<Lun>, Box<dyn std::error::Error>> {
        let config = LunConfig {
            serial: "S".into(),
            naa_id: 1,
            vendor: "BOOTD".into(),
            product: "t".into(),
            pr_store: None,
            removable: false,
        };
        Ok(Arc::new(Lun::new(dev, config)?))
    }

    async fn run(l: &Lun, cdb: &[u8], data: &[u8]) -> ScsiResult {
        let mut c = cdb.to_vec();
        c.resize(16, 0);
        let cmd = ScsiCommand {
            itt: 1,
            lun: 0,
            cdb: Bytes::from(c),
            expected_len: 1 << 20,
            read: data.is_empty(),
            write: !data.is_empty(),
            attr: TaskAttr::Simple,
            data_out: Bytes::copy_from_slice(data),
        };
        l.execute(&nexus(), &cmd).await
    }

    fn asc(r: &ScsiResult) -> Option<(u8, u8)> {
        r.sense.as_ref().map(|s| (s[12], s[13]))
    }

    fn sanitize_cdb(b1: u8, plen: u16) -> Vec<u8> {
        let mut c = vec![0x48, b1, 0, 0, 0, 0, 0];
        c.extend_from_slice(&plen.to_be_bytes());
        c
    }

    fn overwrite_list(pattern: &[u8]) -> Vec<u8> {
        let mut d = vec![0x01, 0];
        d.extend_from_slice(&(pattern.len() as u16).to_be_bytes());
        d.extend_from_slice(pattern);
        d
    }

    fn read10(lba: u32, blocks: u16) -> Vec<u8> {
        let mut c = vec![0x28, 0];
        c.extend_from_slice(&lba.to_be_bytes());
        c.push(0);
        c.extend_from_slice(&blocks.to_be_bytes());
        c
    }

    /// Polls TEST UNIT READY until the sanitize is over.
    async fn wait_ready(l: &Lun) -> TestResult {
        for _ in 0..200 {
            let r = run(l, &[0x00], &[]).await;
            if r.status == ScsiStatus::GOOD {
                return Ok(());
            }
            assert_eq!(asc(&r), Some((0x04, 0x1B)));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err("sanitize did not finish".into())
    }

    #[tokio::test]
    async fn overwrite_writes_the_pattern_everywhere() -> TestResult {
        let dev = Arc::new(MemDevice::new(512, 64, false));
        let l = lun(dev.clone())?;
        run(&l, &[0x00], &[]).await; // power-on UA
        let w = vec![0x2A, 0, 0, 0, 0, 3, 0, 0, 1, 0];
        assert_eq!(run(&l, &w, &[9; 512]).await.status, ScsiStatus::GOOD);
        let list = overwrite_list(&[1, 2, 3, 4]);
        let r = run(&l, &sanitize_cdb(0x01, list.len() as u16), &list).await;
        assert_eq!(r.status, ScsiStatus::GOOD);
        let back = run(&l, &read10(0, 64), &[]).await;
        assert_eq!(back.data_in.len(), 64 * 512);
        for (i, b) in back.data_in.iter().enumerate() {
            assert_eq!(*b, [1, 2, 3, 4][i % 4]);
        }
        assert_eq!(dev.allocated_blocks(), 64);
        // A bad parameter list is refused.
        let bad = overwrite_list(&[]);
        let r = run(&l, &sanitize_cdb(0x01, bad.len() as u16), &bad).await;
        assert_eq!(asc(&r), Some((0x24, 0)));
        Ok(())
    }

    #[tokio::test]
    async fn block_erase_deallocates_all() -> TestResult {
        let dev = Arc::new(MemDevice::new(512, 64, false));
        let l = lun(dev.clone())?;
        run(&l, &[0x00], &[]).await;
        let w = vec![0x2A, 0, 0, 0, 0, 0, 0, 0, 64, 0];
        assert_eq!(run(&l, &w, &[7; 64 * 512]).await.status, ScsiStatus::GOOD);
        let r = run(&l, &sanitize_cdb(0x02, 0), &[]).await;
        assert_eq!(r.status, ScsiStatus::GOOD);
        assert_eq!(dev.allocated_blocks(), 0);
        let back = run(&l, &read10(0, 64), &[]).await;
        assert!(back.data_in.iter().all(|b| *b == 0));
        // GET LBA STATUS: one deallocated run over the whole LU.
        let gls = [0x9E, 0x12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
        let d = run(&l, &gls, &[]).await.data_in;
        assert_eq!(&d[0..4], &[0, 0, 0, 20]);
        assert_eq!((&d[16..20], d[20]), (&64u32.to_be_bytes()[..], 1));
        // CRYPTO ERASE is not offered.
        let r = run(&l, &sanitize_cdb(0x03, 0), &[]).await;
        assert_eq!(asc(&r), Some((0x24, 0)));
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn immed_runs_in_background_and_survives_abort() -> TestResult {
        // 16 MiB: well over 100 ms at the overwrite pace.
        let dev = Arc::new(MemDevice::new(512, 32768, false));
        let l = lun(dev.clone())?;
        run(&l, &[0x00], &[]).await;
        let list = overwrite_list(&[0x5A; 512]);
        let r = run(&l, &sanitize_cdb(0x81, list.len() as u16), &list).await;
        assert_eq!(r.status, ScsiStatus::GOOD);
        // Medium access and TUR are refused; INQUIRY and REQUEST SENSE work.
        assert_eq!(asc(&run(&l, &read10(0, 1), &[]).await), Some((0x04, 0x1B)));
        assert_eq!(
            run(&l, &[0x12, 0, 0, 0, 36, 0], &[]).await.status,
            ScsiStatus::GOOD
        );
        let rs = run(&l, &[0x03, 0, 0, 0, 18, 0], &[]).await;
        assert_eq!(
            (rs.data_in[12], rs.data_in[13], rs.data_in[15]),
            (0x04, 0x1B, 0x80)
        );
        wait_ready(&l).await?;
        let back = run(&l, &read10(32767, 1), &[]).await;
        assert!(back.data_in.iter().all(|b| *b == 0x5A));
        // Without IMMED, a command dropped midway (abort, connection
        // loss) does not stop the operation.
        let list = overwrite_list(&[0xC3]);
        let l2 = l.clone();
        let cmd =
            tokio::spawn(
                async move { run(&l2, &sanitize_cdb(0x01, list.len() as u16), &list).await },
            );
        tokio::time::sleep(Duration::from_millis(20)).await;
        cmd.abort();
        wait_ready(&l).await?;
        let back = run(&l, &read10(32767, 1), &[]).await;
        assert!(back.data_in.iter().all(|b| *b == 0xC3));
        Ok(())
    }
}
