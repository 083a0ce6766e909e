//! A logical unit: SCSI commands executed against a block device.
//!
//! The SCSI state machine (unit attentions, reservations, mode pages, SPC
//! answers) lives in `iscsi_proto::scsi::lu`; this file holds it in a mutex
//! for the moment a decision takes, does the block I/O, and persists
//! persistent-reservation state.

use blockdev::{Allocation, BlockDevice, BlockError};
use bytes::{Bytes, BytesMut};
use iscsi_proto::scsi::cdb;
use iscsi_proto::scsi::inquiry::{Identity, Limits};
use iscsi_proto::scsi::lu::{LogicalUnit, Spc};
use iscsi_proto::scsi::pr::PrState;
use iscsi_proto::scsi::removable;
use iscsi_proto::scsi::sbc::{self, BlockOp, Geometry};
use iscsi_proto::scsi::sense::Sense;
use iscsi_proto::task::{Nexus, ScsiCommand, ScsiResult, TmfFunction, TmfResponse};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

mod sanitize;
mod xcopy;

/// Identity and persistence settings of one LUN.
#[derive(Debug, Clone)]
pub struct LunConfig {
    /// Unit serial number (VPD 0x80); stable for the LUN's life.
    pub serial: String,
    /// 64-bit identifier for the NAA designator (VPD 0x83); stable per LUN.
    pub naa_id: u64,
    pub vendor: String,
    pub product: String,
    /// Where persistent reservations are kept across restarts (`None`: memory only).
    pub pr_state: Option<PathBuf>,
    /// A removable medium (INQUIRY RMB): initiators can eject and load it
    /// with START STOP UNIT and prevent that per I_T nexus. The medium is
    /// loaded at start.
    pub removable: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LunError {
    #[error("persistent reservation state {path}: {source}")]
    PrState {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("block size {0} is not a multiple of 512")]
    BlockSize(u32),
}

/// Largest chunk WRITE SAME writes at once.
const WRITE_SAME_CHUNK: u64 = 1 << 20;
/// Most blocks GET LBA STATUS asks the device about at once.
const LBA_STATUS_SPAN: u64 = 1 << 20;
/// Most device queries one GET LBA STATUS makes; the initiator asks again
/// from where the answer ends.
const LBA_STATUS_SPANS: usize = 64;

mod pr_file;

use iscsi_proto::scsi::opcode::{
    EXTENDED_COPY, PERSISTENT_RESERVE_OUT as PR_OUT, SANITIZE, START_STOP_UNIT,
};

pub struct Lun {
    device: Arc<dyn BlockDevice>,
    geo: Geometry,
    limits: Limits,
    volatile_cache: bool,
    removable: bool,
    /// Shared with a running SANITIZE, which outlives its command.
    state: Arc<Mutex<LogicalUnit>>,
    /// Reads and writes hold it shared, COMPARE AND WRITE, WRITE ATOMIC and
    /// read-modify-writes exclusively: nothing else touches the medium in
    /// between.
    /// A running SANITIZE holds it exclusively (owned) until it ends.
    write_gate: Arc<tokio::sync::RwLock<()>>,
    pr_file: Option<PathBuf>,
    /// Serialises PR state file writes so the newest state lands last.
    pr_persist: tokio::sync::Mutex<()>,
}

impl Lun {
    pub fn new(device: Arc<dyn BlockDevice>, config: LunConfig) -> Result<Self, LunError> {
        let caps = device.capabilities();
        if caps.block_size == 0 || !caps.block_size.is_multiple_of(512) {
            return Err(LunError::BlockSize(caps.block_size));
        }
        let geo = Geometry {
            block_size: caps.block_size,
            num_blocks: caps.num_blocks,
            read_only: caps.read_only,
            thin: caps.thin,
            max_transfer_blocks: 0,
        };
        let pr = match &config.pr_state {
            Some(path) => pr_file::load_pr(path)?,
            None => PrState::default(),
        };
        let id = Identity {
            vendor: config.vendor,
            product: config.product,
            revision: env!("CARGO_PKG_VERSION").chars().take(4).collect(),
            serial: config.serial,
            naa_id: config.naa_id,
            removable: config.removable,
        };
        let lu = LogicalUnit::new(id, geo, caps.volatile_cache, pr);
        Ok(Self {
            device,
            geo: lu.geo,
            limits: lu.limits,
            volatile_cache: caps.volatile_cache,
            removable: config.removable,
            state: Arc::new(Mutex::new(lu)),
            write_gate: Arc::new(tokio::sync::RwLock::new(())),
            pr_file: config.pr_state,
            pr_persist: tokio::sync::Mutex::new(()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, LogicalUnit> {
        lock_state(&self.state)
    }

    /// Runs one command; never fails: errors become CHECK CONDITION results.
    pub async fn execute(&self, nexus: &Nexus, cmd: &ScsiCommand) -> ScsiResult {
        let mut r = self.run(nexus, cmd).await;
        // Data-In: what is actually returned (the residual tells the
        // initiator how much less than it asked for); Data-Out: what the CDB
        // asks the initiator to send.
        r.transfer_len = if cdb::data_out(&cmd.cdb) {
            cdb::transfer_len(&cmd.cdb, self.geo.block_size)
        } else {
            u32::try_from(r.data_in.len()).unwrap_or(u32::MAX)
        };
        r
    }

    async fn run(&self, nexus: &Nexus, cmd: &ScsiCommand) -> ScsiResult {
        // Ejecting writes cached data first (NO_FLUSH 0), before the medium
        // is gone.
        if self.removable
            && cdb::Cdb(&cmd.cdb).opcode() == START_STOP_UNIT
            && removable::eject_flushes(&cmd.cdb)
        {
            if let Err(e) = self.device.flush().await {
                return block_error(&e, true);
            }
        }
        // PERSISTENT RESERVE OUT with a state file runs alone from its change
        // to the file's save, so a failed save rolls back exactly its change.
        let saving = self.pr_file.is_some() && cdb::Cdb(&cmd.cdb).opcode() == PR_OUT;
        let _saving = match saving {
            true => Some(self.pr_persist.lock().await),
            false => None,
        };
        let (spc, write_through, geo, pr_before) = {
            let mut lu = self.lock();
            let before = saving.then(|| lu.pr.clone());
            let spc = lu.spc(nexus, cmd.lun, &cmd.cdb, &cmd.data_out);
            (
                spc,
                lu.write_through() && self.volatile_cache,
                lu.current_geo(),
                before,
            )
        };
        match spc {
            Spc::Done { result, pr_changed } => {
                if pr_changed {
                    if let Err(e) = self.save_pr().await {
                        // Memory and file must agree: what could not be
                        // saved did not happen, and the initiator is told.
                        tracing::error!("persistent reservation state not saved: {e}");
                        if let Some(before) = pr_before {
                            self.lock().pr = before;
                        }
                        return Sense::INTERNAL_TARGET_FAILURE.into_result();
                    }
                }
                return result;
            }
            Spc::Block => {}
        }
        match cdb::Cdb(&cmd.cdb).opcode() {
            SANITIZE => return self.sanitize(&cmd.cdb, &cmd.data_out, &geo).await,
            EXTENDED_COPY => {
                return self
                    .extended_copy(nexus, &cmd.cdb, &cmd.data_out, &geo, write_through)
                    .await
            }
            _ => {}
        }
        let op = match sbc::decode(&geo, &self.limits, &cmd.cdb, &cmd.data_out) {
            Ok(Some(op)) => op,
            Ok(None) => return Sense::INVALID_OPCODE.into_result(),
            Err(r) => return r,
        };
        let write = matches!(
            op,
            BlockOp::Write { .. }
                | BlockOp::WriteSame { .. }
                | BlockOp::CompareAndWrite { .. }
                | BlockOp::OrWrite { .. }
                | BlockOp::AtomicWrite { .. }
                | BlockOp::Discard(_)
                | BlockOp::Flush
        );
        match self.block(op, write_through).await {
            Ok(r) => r,
            Err(e) => block_error(&e, write),
        }
    }

    async fn block(&self, op: BlockOp, write_through: bool) -> Result<ScsiResult, BlockError> {
        let ok = |d: Bytes| sbc::good(d, 0);
        match op {
            BlockOp::Nothing => Ok(ok(Bytes::new())),
            BlockOp::Read { offset, len } => {
                // Shared: a read never sees half of an atomic write.
                let _g = self.write_gate.read().await;
                self.device.read(offset, len as usize).await.map(ok)
            }
            BlockOp::AtomicWrite { offset, data, fua } => {
                // Exclusive, like CAW: no other write lands in between and
                // no read sees the range half written.
                let _g = self.write_gate.write().await;
                self.device
                    .write(offset, data, fua || write_through)
                    .await?;
                Ok(ok(Bytes::new()))
            }
            BlockOp::Write { offset, data, fua } => {
                let bs = self.geo.block_size as usize;
                let fua = fua || write_through;
                if data.len() % bs == 0 {
                    let _g = self.write_gate.read().await;
                    self.device.write(offset, data, fua).await?;
                } else {
                    // Truncated Data-Out ending inside a block: merge the
                    // bytes that arrived into the block (exclusively, like CAW).
                    let _g = self.write_gate.write().await;
                    let whole = data.len() / bs * bs;
                    let tail_at = offset + whole as u64;
                    let mut tail = BytesMut::from(&self.device.read(tail_at, bs).await?[..]);
                    tail[..data.len() - whole].copy_from_slice(&data[whole..]);
                    let mut all = BytesMut::with_capacity(whole + bs);
                    all.extend_from_slice(&data[..whole]);
                    all.extend_from_slice(&tail);
                    self.device.write(offset, all.freeze(), fua).await?;
                }
                Ok(ok(Bytes::new()))
            }
            BlockOp::OrWrite { offset, data, fua } => {
                // Read-modify-write: exclusive against other writes, like CAW.
                let _g = self.write_gate.write().await;
                let medium = self.device.read(offset, data.len()).await?;
                let merged: Vec<u8> = medium.iter().zip(&data[..]).map(|(a, b)| a | b).collect();
                self.device
                    .write(offset, Bytes::from(merged), fua || write_through)
                    .await?;
                Ok(ok(Bytes::new()))
            }
            BlockOp::Verify {
                offset,
                len,
                compare,
            } => {
                let medium = self.device.read(offset, len as usize).await?;
                Ok(
                    match compare.and_then(|c| sbc::first_difference(&medium, &c)) {
                        Some(at) => miscompare(at),
                        None => ok(Bytes::new()),
                    },
                )
            }
            BlockOp::WriteSame {
                offset,
                len,
                block,
                unmap,
                fua,
            } => {
                let _g = self.write_gate.read().await;
                self.write_same(offset, len, block, unmap, fua || write_through)
                    .await?;
                Ok(ok(Bytes::new()))
            }
            BlockOp::CompareAndWrite {
                offset,
                compare,
                write,
                fua,
            } => {
                let _g = self.write_gate.write().await;
                let medium = self.device.read(offset, compare.len()).await?;
                if let Some(at) = sbc::first_difference(&medium, &compare) {
                    return Ok(miscompare(at));
                }
                self.device
                    .write(offset, write, fua || write_through)
                    .await?;
                Ok(ok(Bytes::new()))
            }
            BlockOp::DataIn { data, .. } => Ok(ok(data)),
            BlockOp::Flush => {
                self.device.flush().await?;
                Ok(ok(Bytes::new()))
            }
            BlockOp::Discard(ranges) => {
                let _g = self.write_gate.read().await;
                for (offset, len) in ranges {
                    self.device.discard(offset, len).await?;
                }
                Ok(ok(Bytes::new()))
            }
            BlockOp::LbaStatus { lba, alloc } => {
                let runs = self.lba_runs(lba, alloc).await?;
                Ok(sbc::lba_status(&runs, alloc))
            }
        }
    }

    /// (lba, blocks, deallocated) runs from `lba` on, adjacent runs of one
    /// state merged, as many as `alloc` bytes of descriptors can hold: the
    /// device is asked span by span so a large LU still reports its end.
    async fn lba_runs(&self, lba: u64, alloc: u32) -> Result<Vec<(u64, u64, bool)>, BlockError> {
        let bs = u64::from(self.geo.block_size);
        let max_runs = (alloc as usize).saturating_sub(8) / 16;
        let mut runs: Vec<(u64, u64, bool)> = Vec::new();
        let mut at = lba;
        let mut spans = 0;
        while at < self.geo.num_blocks && runs.len() <= max_runs.max(1) && spans < LBA_STATUS_SPANS
        {
            spans += 1;
            let blocks = (self.geo.num_blocks - at).min(LBA_STATUS_SPAN);
            let extents = self.device.block_status(at * bs, blocks * bs).await?;
            let start = at;
            for e in extents.iter().filter(|e| e.len >= bs) {
                let (elba, n) = (e.offset / bs, e.len / bs);
                let dealloc = e.state == Allocation::Deallocated;
                match runs.last_mut() {
                    Some(last)
                        if last.2 == dealloc
                            && last.0 + last.1 == elba
                            && last.1 + n <= u64::from(u32::MAX) =>
                    {
                        last.1 += n;
                    }
                    _ => runs.push((elba, n, dealloc)),
                }
                at = at.max(elba + n);
            }
            if at == start {
                break;
            }
        }
        Ok(runs)
    }

    async fn write_same(
        &self,
        offset: u64,
        len: u64,
        block: Option<Bytes>,
        unmap: bool,
        fua: bool,
    ) -> Result<(), BlockError> {
        // With UNMAP the range is deallocated whatever the data (it reads
        // back as zeros: LBPRZ), as initiators and libiscsi expect.
        let zero = unmap || block.as_ref().is_none_or(|b| b.iter().all(|x| *x == 0));
        if zero {
            match self.device.write_zeroes(offset, len, unmap).await {
                Ok(()) => {
                    if fua {
                        self.device.flush().await?;
                    }
                    return Ok(());
                }
                Err(BlockError::Unsupported) => {}
                Err(e) => return Err(e),
            }
        }
        let bs = u64::from(self.geo.block_size);
        let pattern = block.unwrap_or_else(|| Bytes::from(vec![0u8; bs as usize]));
        let chunk_len = len.min(WRITE_SAME_CHUNK.max(bs) / bs * bs);
        let mut chunk = BytesMut::with_capacity(chunk_len as usize);
        while (chunk.len() as u64) < chunk_len {
            chunk.extend_from_slice(&pattern);
        }
        let chunk = chunk.freeze();
        let mut at = 0;
        while at < len {
            let n = (len - at).min(chunk_len);
            self.device
                .write(offset + at, chunk.slice(..n as usize), fua)
                .await?;
            at += n;
        }
        Ok(())
    }

    /// Writes the PR state file (tmp + fsync + rename); the caller holds
    /// `pr_persist`.
    async fn save_pr(&self) -> std::io::Result<()> {
        let Some(path) = self.pr_file.clone() else {
            return Ok(());
        };
        let bytes = self.lock().pr.encode();
        tokio::task::spawn_blocking(move || pr_file::write_atomic(&path, &bytes))
            .await
            .map_err(std::io::Error::other)?
    }

    /// Carries out a task management function's effect on this LU.
    pub fn task_management(&self, nexus: &Nexus, function: TmfFunction) -> TmfResponse {
        match function {
            TmfFunction::TaskReassign => TmfResponse::ReassignmentNotSupported,
            TmfFunction::Other(_) => TmfResponse::NotSupported,
            f => {
                self.lock().task_management(nexus, f);
                TmfResponse::Complete
            }
        }
    }

    /// The I_T nexus is gone: its SPC-2 reservation is released;
    /// persistent reservation registrations stay.
    pub fn nexus_lost(&self, nexus: &Nexus) {
        self.lock().nexus_lost(nexus);
    }

    /// Flushes the device (shutdown).
    pub async fn flush(&self) -> Result<(), BlockError> {
        self.device.flush().await
    }
}

fn lock_state(state: &Mutex<LogicalUnit>) -> MutexGuard<'_, LogicalUnit> {
    // Every update of the state completes under the lock without panicking
    // paths, so a poisoned lock still holds consistent state.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn miscompare(at: usize) -> ScsiResult {
    Sense::MISCOMPARE_DURING_VERIFY
        .with_info(u32::try_from(at).unwrap_or(u32::MAX))
        .into_result()
}

/// Maps a device error to its sense data.
fn block_error(e: &BlockError, write: bool) -> ScsiResult {
    let sense = match e {
        BlockError::Io(_) | BlockError::Device(_) | BlockError::Unsupported if write => {
            Sense::WRITE_ERROR
        }
        BlockError::Io(_) | BlockError::Device(_) | BlockError::Unsupported => {
            Sense::UNRECOVERED_READ_ERROR
        }
        BlockError::NoSpace => Sense::SPACE_ALLOCATION_FAILED,
        BlockError::ReadOnly => Sense::WRITE_PROTECTED,
        BlockError::OutOfRange { .. } => Sense::LBA_OUT_OF_RANGE,
    };
    sense.into_result()
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use blockdev::{Capabilities, Extent, MemDevice};
    use iscsi_proto::scsi::cdb::{be32, be64};
    use iscsi_proto::task::{ScsiStatus, TaskAttr};
    use proptest::prelude::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn cmd(cdb: &[u8], data_out: &[u8]) -> ScsiCommand {
        let mut c = cdb.to_vec();
        if c.len() < 16 {
            c.resize(16, 0);
        }
        ScsiCommand {
            itt: 1,
            lun: 0,
            cdb: Bytes::from(c),
            expected_len: 4096,
            read: data_out.is_empty(),
            write: !data_out.is_empty(),
            attr: TaskAttr::Simple,
            data_out: Bytes::copy_from_slice(data_out),
        }
    }

    fn nexus(i: u8) -> Nexus {
        Nexus {
            initiator_port: format!("iqn.2026-01.test:i{i},i,0x23d000000{i}").into(),
            target_port: "iqn.2026-01.test:t,t,0x1".into(),
            relative_port: 1,
        }
    }

    fn config(pr_state: Option<PathBuf>) -> LunConfig {
        LunConfig {
            serial: "SER0".into(),
            naa_id: 0xABCDEF,
            vendor: "BOOTD".into(),
            product: "test disk".into(),
            pr_state,
            removable: false,
        }
    }

    fn lun(read_only: bool) -> Result<Lun, LunError> {
        Lun::new(Arc::new(MemDevice::new(512, 64, read_only)), config(None))
    }

    /// (sense key, ASC, ASCQ) of a CHECK CONDITION.
    fn sense(r: &ScsiResult) -> Option<(u8, u8, u8)> {
        r.sense.as_ref().map(|s| (s[2] & 0x0F, s[12], s[13]))
    }

    async fn run(l: &Lun, n: &Nexus, cdb: &[u8], data: &[u8]) -> ScsiResult {
        l.execute(n, &cmd(cdb, data)).await
    }

    #[test]
    fn a_device_layer_error_is_reported_as_a_medium_error() {
        let io = || BlockError::Io(std::io::Error::other("x"));
        let dev = || BlockError::Device("corrupt qcow2 image: x".into());
        for write in [false, true] {
            assert_eq!(
                sense(&block_error(&dev(), write)),
                sense(&block_error(&io(), write))
            );
        }
        assert_eq!(sense(&block_error(&dev(), true)), Some((3, 0x0C, 0x00)));
        assert_eq!(sense(&block_error(&dev(), false)), Some((3, 0x11, 0x00)));
    }

    /// Consumes the power-on unit attention a new nexus gets.
    async fn attach(l: &Lun, n: &Nexus) {
        let r = run(l, n, &[0x00], &[]).await;
        assert_eq!(sense(&r), Some((6, 0x29, 0x00)));
        assert_eq!(run(l, n, &[0x00], &[]).await.status, ScsiStatus::GOOD);
    }

    fn rw10(op: u8, lba: u32, blocks: u16) -> Vec<u8> {
        let mut c = vec![op, 0];
        c.extend_from_slice(&lba.to_be_bytes());
        c.push(0);
        c.extend_from_slice(&blocks.to_be_bytes());
        c.push(0);
        c
    }

    fn prout(sa: u8, kind: u8, key: u64, sa_key: u64, aptpl: bool) -> (Vec<u8>, Vec<u8>) {
        let cdb = vec![0x5F, sa, kind, 0, 0, 0, 0, 0, 24, 0];
        let mut p = key.to_be_bytes().to_vec();
        p.extend_from_slice(&sa_key.to_be_bytes());
        p.extend_from_slice(&[0; 4]);
        p.push(u8::from(aptpl));
        p.extend_from_slice(&[0; 3]);
        (cdb, p)
    }

    async fn pr_out(l: &Lun, n: &Nexus, sa: u8, kind: u8, key: u64, sa_key: u64) -> ScsiResult {
        let (c, p) = prout(sa, kind, key, sa_key, false);
        run(l, n, &c, &p).await
    }

    #[tokio::test]
    async fn write_then_read_back() -> TestResult {
        let lun = lun(false)?;
        let n = nexus(1);
        attach(&lun, &n).await;
        let data = vec![0x5Au8; 1024];
        let mut w = rw10(0x2A, 4, 2);
        w[1] = 0x08;
        let r = run(&lun, &n, &w, &data).await;
        assert_eq!(r.status, ScsiStatus::GOOD);
        assert_eq!(r.transfer_len, 1024);
        let r = run(&lun, &n, &rw10(0x28, 3, 4), &[]).await;
        assert_eq!(r.status, ScsiStatus::GOOD);
        assert_eq!(&r.data_in[..512], &[0u8; 512][..]);
        assert_eq!(&r.data_in[512..1536], &data[..]);
        assert_eq!(r.transfer_len, 2048);
        // Less Data-Out than the CDB describes: only what arrived is
        // written; transfer_len lets the iSCSI layer report the residual.
        let r = run(&lun, &n, &rw10(0x2A, 4, 2), &[1; 600]).await;
        assert_eq!(r.status, ScsiStatus::GOOD);
        assert_eq!(r.transfer_len, 1024);
        let back = run(&lun, &n, &rw10(0x28, 4, 2), &[]).await;
        assert!(back.data_in[..600].iter().all(|b| *b == 1));
        assert!(back.data_in[600..].iter().all(|b| *b == 0x5A));
        Ok(())
    }

    #[tokio::test]
    async fn read_only_and_out_of_range() -> TestResult {
        let lun = lun(true)?;
        let n = nexus(1);
        attach(&lun, &n).await;
        let w = run(&lun, &n, &rw10(0x2A, 0, 1), &[0; 512]).await;
        assert_eq!(sense(&w), Some((7, 0x27, 0)));
        let r = run(&lun, &n, &rw10(0x28, 64, 1), &[]).await;
        assert_eq!(sense(&r), Some((5, 0x21, 0)));
        let ms = run(&lun, &n, &[0x1A, 0, 0x3F, 0, 255, 0], &[]).await;
        assert_eq!(ms.data_in[2] & 0x80, 0x80);
        let unmap = run(&lun, &n, &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &[0; 24]).await;
        assert_eq!(sense(&unmap), Some((7, 0x27, 0)));
        Ok(())
    }

    #[tokio::test]
    async fn unit_attentions() -> TestResult {
        let lun = lun(false)?;
        let (a, b) = (nexus(1), nexus(2));
        // INQUIRY and REPORT LUNS do not consume the power-on UA.
        let inq = run(&lun, &a, &[0x12, 0, 0, 0, 96, 0], &[]).await;
        assert_eq!(inq.status, ScsiStatus::GOOD);
        assert_eq!(inq.transfer_len, 96);
        let rl = run(&lun, &a, &[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0], &[]).await;
        assert_eq!(rl.status, ScsiStatus::GOOD);
        // REQUEST SENSE reports it as data and clears it.
        let rs = run(&lun, &a, &[0x03, 0, 0, 0, 18, 0], &[]).await;
        assert_eq!(rs.status, ScsiStatus::GOOD);
        assert_eq!((rs.data_in[2], rs.data_in[12]), (6, 0x29));
        assert_eq!(run(&lun, &a, &[0x00], &[]).await.status, ScsiStatus::GOOD);
        attach(&lun, &b).await;
        // LU reset: every nexus gets 29/03.
        assert_eq!(
            lun.task_management(&a, TmfFunction::LogicalUnitReset),
            TmfResponse::Complete
        );
        for n in [&a, &b] {
            let r = run(&lun, n, &[0x00], &[]).await;
            assert_eq!(sense(&r), Some((6, 0x29, 0x03)));
        }
        // CLEAR TASK SET: the other nexus learns its commands were cleared.
        lun.task_management(&a, TmfFunction::ClearTaskSet);
        assert_eq!(run(&lun, &a, &[0x00], &[]).await.status, ScsiStatus::GOOD);
        let r = run(&lun, &b, &[0x00], &[]).await;
        assert_eq!(sense(&r), Some((6, 0x2F, 0x00)));
        // A lost nexus starts over with a power-on UA.
        lun.nexus_lost(&b);
        attach(&lun, &b).await;
        Ok(())
    }

    #[tokio::test]
    async fn spc2_reserve_release() -> TestResult {
        let lun = lun(false)?;
        let (a, b) = (nexus(1), nexus(2));
        attach(&lun, &a).await;
        attach(&lun, &b).await;
        assert_eq!(run(&lun, &a, &[0x16], &[]).await.status, ScsiStatus::GOOD);
        let conflict = ScsiStatus::RESERVATION_CONFLICT;
        assert_eq!(run(&lun, &b, &[0x16], &[]).await.status, conflict);
        assert_eq!(run(&lun, &b, &rw10(0x28, 0, 1), &[]).await.status, conflict);
        // Release by a non-holder is a no-op; INQUIRY still works.
        assert_eq!(run(&lun, &b, &[0x17], &[]).await.status, ScsiStatus::GOOD);
        let inq = run(&lun, &b, &[0x12, 0, 0, 0, 36, 0], &[]).await;
        assert_eq!(inq.status, ScsiStatus::GOOD);
        assert_eq!(
            run(&lun, &a, &rw10(0x28, 0, 1), &[]).await.status,
            ScsiStatus::GOOD
        );
        // Losing the holder's nexus releases it.
        lun.nexus_lost(&a);
        assert_eq!(
            run(&lun, &b, &rw10(0x28, 0, 1), &[]).await.status,
            ScsiStatus::GOOD
        );
        assert_eq!(
            run(&lun, &b, &[0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[])
                .await
                .status,
            ScsiStatus::GOOD
        );
        lun.task_management(&b, TmfFunction::LogicalUnitReset);
        attach(&lun, &a).await;
        assert_eq!(run(&lun, &a, &[0x16], &[]).await.status, ScsiStatus::GOOD);
        Ok(())
    }

    async fn read_keys(l: &Lun, n: &Nexus) -> (u32, Vec<u64>) {
        let r = run(l, n, &[0x5E, 0, 0, 0, 0, 0, 0, 1, 0, 0], &[]).await;
        let d = &r.data_in;
        let gen = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
        let keys = d[8..]
            .chunks(8)
            .map(|k| k.iter().fold(0u64, |a, b| (a << 8) | u64::from(*b)))
            .collect();
        (gen, keys)
    }

    async fn read_reservation(l: &Lun, n: &Nexus) -> Option<(u64, u8)> {
        let r = run(l, n, &[0x5E, 1, 0, 0, 0, 0, 0, 1, 0, 0], &[]).await;
        let d = &r.data_in;
        if d[7] == 0 {
            return None;
        }
        let key = d[8..16].iter().fold(0u64, |a, b| (a << 8) | u64::from(*b));
        Some((key, d[21] & 0x0F))
    }

    #[tokio::test]
    async fn persistent_reservation_access_rules() -> TestResult {
        let lun = lun(false)?;
        let (a, b) = (nexus(1), nexus(2));
        attach(&lun, &a).await;
        attach(&lun, &b).await;
        let good = ScsiStatus::GOOD;
        let conflict = ScsiStatus::RESERVATION_CONFLICT;
        // Reserving unregistered conflicts; registering with a wrong key too.
        assert_eq!(pr_out(&lun, &a, 1, 1, 0xA, 0).await.status, conflict);
        assert_eq!(pr_out(&lun, &a, 0, 0, 5, 0xA).await.status, conflict);
        assert_eq!(pr_out(&lun, &a, 0, 0, 0, 0xA).await.status, good);
        assert_eq!(pr_out(&lun, &b, 6, 0, 0, 0xB).await.status, good);
        assert_eq!(read_keys(&lun, &a).await, (2, vec![0xA, 0xB]));
        let read = rw10(0x28, 0, 1);
        let write = rw10(0x2A, 0, 1);
        let blk = [0u8; 512];
        // (type, registered B reads, writes, unregistered B reads, writes)
        for (kind, rr, rw, ur, uw) in [
            (1u8, true, false, true, false),
            (3, false, false, false, false),
            (5, true, true, true, false),
            (6, true, true, false, false),
            (7, true, true, true, false),
            (8, true, true, false, false),
        ] {
            assert_eq!(pr_out(&lun, &b, 6, 0, 0, 0xB).await.status, good);
            assert_eq!(
                pr_out(&lun, &a, 1, kind, 0xA, 0).await.status,
                good,
                "type {kind}"
            );
            let shown = if kind >= 7 { 0 } else { 0xA };
            assert_eq!(read_reservation(&lun, &b).await, Some((shown, kind)));
            assert_eq!(run(&lun, &a, &write, &blk).await.status, good);
            let st = |ok: bool| if ok { good } else { conflict };
            assert_eq!(
                run(&lun, &b, &read, &[]).await.status,
                st(rr),
                "type {kind}"
            );
            assert_eq!(
                run(&lun, &b, &write, &blk).await.status,
                st(rw),
                "type {kind}"
            );
            assert_eq!(pr_out(&lun, &b, 0, 0, 0xB, 0).await.status, good);
            assert_eq!(
                run(&lun, &b, &read, &[]).await.status,
                st(ur),
                "type {kind}"
            );
            assert_eq!(
                run(&lun, &b, &write, &blk).await.status,
                st(uw),
                "type {kind}"
            );
            // PR commands and INQUIRY never conflict.
            assert_eq!(
                run(&lun, &b, &[0x12, 0, 0, 0, 36, 0], &[]).await.status,
                good
            );
            // Releasing with the wrong type is an error.
            let wrong = if kind == 1 { 3 } else { 1 };
            let r = pr_out(&lun, &a, 2, wrong, 0xA, 0).await;
            assert_eq!(sense(&r), Some((5, 0x26, 0x04)));
            assert_eq!(pr_out(&lun, &a, 2, kind, 0xA, 0).await.status, good);
            assert_eq!(read_reservation(&lun, &a).await, None);
        }
        // Bad type and scope are invalid fields.
        assert_eq!(
            sense(&pr_out(&lun, &a, 1, 2, 0xA, 0).await),
            Some((5, 0x24, 0))
        );
        assert_eq!(
            sense(&pr_out(&lun, &a, 1, 0x11, 0xA, 0).await),
            Some((5, 0x24, 0))
        );
        // PRIN service actions beyond READ FULL STATUS are invalid.
        let bad = run(&lun, &a, &[0x5E, 4, 0, 0, 0, 0, 0, 1, 0, 0], &[]).await;
        assert_eq!(sense(&bad), Some((5, 0x24, 0)));
        Ok(())
    }

    #[tokio::test]
    async fn persistent_reservation_preempt_and_ua() -> TestResult {
        let lun = lun(false)?;
        let (a, b) = (nexus(1), nexus(2));
        attach(&lun, &a).await;
        attach(&lun, &b).await;
        let good = ScsiStatus::GOOD;
        assert_eq!(pr_out(&lun, &a, 6, 0, 0, 0xA).await.status, good);
        assert_eq!(pr_out(&lun, &b, 6, 0, 0, 0xB).await.status, good);
        assert_eq!(pr_out(&lun, &a, 1, 6, 0xA, 0).await.status, good);
        let (gen, _) = read_keys(&lun, &a).await;
        // B preempts A: A's registration goes, B holds an EA reservation.
        assert_eq!(pr_out(&lun, &b, 4, 3, 0xB, 0xA).await.status, good);
        assert_eq!(read_keys(&lun, &b).await, (gen + 1, vec![0xB]));
        assert_eq!(read_reservation(&lun, &b).await, Some((0xB, 3)));
        let r = run(&lun, &a, &[0x00], &[]).await;
        assert_eq!(sense(&r), Some((6, 0x2A, 0x05)));
        assert_eq!(
            run(&lun, &a, &rw10(0x28, 0, 1), &[]).await.status,
            ScsiStatus::RESERVATION_CONFLICT
        );
        // Preempting a key nobody holds conflicts.
        assert_eq!(
            pr_out(&lun, &b, 4, 3, 0xB, 0x77).await.status,
            ScsiStatus::RESERVATION_CONFLICT
        );
        // A registrants-only holder unregistering releases with a UA.
        assert_eq!(pr_out(&lun, &a, 6, 0, 0, 0xA).await.status, good);
        assert_eq!(pr_out(&lun, &b, 2, 3, 0xB, 0).await.status, good);
        assert_eq!(pr_out(&lun, &b, 1, 5, 0xB, 0).await.status, good);
        assert_eq!(pr_out(&lun, &b, 0, 0, 0xB, 0).await.status, good);
        assert_eq!(
            sense(&run(&lun, &a, &[0x00], &[]).await),
            Some((6, 0x2A, 0x04))
        );
        assert_eq!(read_reservation(&lun, &a).await, None);
        // CLEAR removes everything and tells the others.
        assert_eq!(pr_out(&lun, &b, 6, 0, 0, 0xB).await.status, good);
        assert_eq!(pr_out(&lun, &a, 3, 0, 0xA, 0).await.status, good);
        assert_eq!(read_keys(&lun, &a).await.1, Vec::<u64>::new());
        assert_eq!(
            sense(&run(&lun, &b, &[0x00], &[]).await),
            Some((6, 0x2A, 0x03))
        );
        // REPORT CAPABILITIES and READ FULL STATUS.
        let caps = run(&lun, &a, &[0x5E, 2, 0, 0, 0, 0, 0, 0, 8, 0], &[]).await;
        assert_eq!(&caps.data_in[..], &[0, 8, 0x01, 0x90, 0xEA, 0x01, 0, 0]);
        assert_eq!(pr_out(&lun, &a, 6, 0, 0, 0xA).await.status, good);
        assert_eq!(pr_out(&lun, &a, 1, 1, 0xA, 0).await.status, good);
        let fs = run(&lun, &a, &[0x5E, 3, 0, 0, 0, 0, 0, 1, 0, 0], &[]).await;
        let d = &fs.data_in;
        assert_eq!(&d[8..16], &0xAu64.to_be_bytes());
        assert_eq!((d[20], d[21]), (1, 1));
        assert_eq!(d[32], 0x45);
        let name = &d[36..36 + a.initiator_port.len()];
        assert_eq!(name, a.initiator_port.as_bytes());
        Ok(())
    }

    #[tokio::test]
    async fn persistent_reservations_survive_restart_with_aptpl() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("lun0.pr");
        let dev = Arc::new(MemDevice::new(512, 64, false));
        let a = nexus(1);
        {
            let lun = Lun::new(dev.clone(), config(Some(path.clone())))?;
            attach(&lun, &a).await;
            let (c, p) = prout(6, 0, 0, 0x1234, true);
            assert_eq!(run(&lun, &a, &c, &p).await.status, ScsiStatus::GOOD);
            assert_eq!(
                pr_out(&lun, &a, 1, 5, 0x1234, 0).await.status,
                ScsiStatus::GOOD
            );
        }
        let lun = Lun::new(dev.clone(), config(Some(path.clone())))?;
        attach(&lun, &a).await;
        assert_eq!(read_reservation(&lun, &a).await, Some((0x1234, 5)));
        assert_eq!(read_keys(&lun, &a).await.1, vec![0x1234]);
        // Re-registering without APTPL: the next start has no reservations.
        assert_eq!(
            pr_out(&lun, &a, 0, 0, 0x1234, 0x99).await.status,
            ScsiStatus::GOOD
        );
        drop(lun);
        let lun = Lun::new(dev.clone(), config(Some(path.clone())))?;
        attach(&lun, &a).await;
        assert_eq!(read_keys(&lun, &a).await.1, Vec::<u64>::new());
        // A corrupt file is reported, not ignored.
        std::fs::write(&path, b"garbage")?;
        assert!(Lun::new(dev, config(Some(path))).is_err());
        Ok(())
    }

    #[tokio::test]
    async fn a_reservation_that_cannot_be_saved_fails_and_is_undone() -> TestResult {
        let dir = tempfile::tempdir()?;
        // The state file's directory does not exist (yet): saving fails.
        let sub = dir.path().join("gone");
        let path = sub.join("lun0.pr");
        let lun = Lun::new(
            Arc::new(MemDevice::new(512, 64, false)),
            config(Some(path.clone())),
        )?;
        let a = nexus(1);
        attach(&lun, &a).await;
        let r = pr_out(&lun, &a, 0, 0, 0, 0x1234).await;
        assert_eq!(r.status, ScsiStatus::CHECK_CONDITION);
        assert_eq!(sense(&r), Some((0x04, 0x44, 0x00)));
        // Memory agrees with the (absent) file: no registration, generation unchanged.
        assert_eq!(read_keys(&lun, &a).await, (0, vec![]));
        // Once the file can be written, the same command succeeds and is kept.
        std::fs::create_dir(&sub)?;
        assert_eq!(
            pr_out(&lun, &a, 0, 0, 0, 0x1234).await.status,
            ScsiStatus::GOOD
        );
        assert_eq!(read_keys(&lun, &a).await, (1, vec![0x1234]));
        assert!(path.exists());
        Ok(())
    }

    #[tokio::test]
    async fn compare_and_write_and_verify() -> TestResult {
        let lun = lun(false)?;
        let n = nexus(1);
        attach(&lun, &n).await;
        assert_eq!(
            run(&lun, &n, &rw10(0x2A, 2, 2), &[b'A'; 1024]).await.status,
            ScsiStatus::GOOD
        );
        let mut caw = [0u8; 16];
        caw[0] = 0x89;
        caw[9] = 2;
        caw[13] = 2;
        let mut data = vec![b'A'; 1024];
        data[700] = b'X';
        data.extend_from_slice(&[b'B'; 1024]);
        let r = run(&lun, &n, &caw, &data).await;
        assert_eq!(sense(&r), Some((0x0E, 0x1D, 0)));
        let s = r.sense.as_ref().ok_or("no sense")?;
        assert_eq!(s[0], 0xF0);
        assert_eq!(u32::from_be_bytes([s[3], s[4], s[5], s[6]]), 700);
        assert_eq!(r.transfer_len, 2048);
        let back = run(&lun, &n, &rw10(0x28, 2, 2), &[]).await;
        assert!(back.data_in.iter().all(|b| *b == b'A'));
        data[700] = b'A';
        assert_eq!(run(&lun, &n, &caw, &data).await.status, ScsiStatus::GOOD);
        let back = run(&lun, &n, &rw10(0x28, 2, 2), &[]).await;
        assert!(back.data_in.iter().all(|b| *b == b'B'));
        // VERIFY with BYTCHK=1: mismatch reports the offset; BYTCHK=0 only reads.
        let mut v = rw10(0x2F, 2, 2);
        v[1] = 0x02;
        let mut cmp = vec![b'B'; 1024];
        assert_eq!(run(&lun, &n, &v, &cmp).await.status, ScsiStatus::GOOD);
        cmp[600] = 0;
        let r = run(&lun, &n, &v, &cmp).await;
        assert_eq!(sense(&r), Some((0x0E, 0x1D, 0)));
        v[1] = 0;
        assert_eq!(run(&lun, &n, &v, &cmp).await.status, ScsiStatus::GOOD);
        Ok(())
    }

    #[tokio::test]
    async fn write_same_unmap_and_lba_status() -> TestResult {
        let dev = Arc::new(MemDevice::new(512, 64, false));
        let lun = Lun::new(dev.clone(), config(None))?;
        let n = nexus(1);
        attach(&lun, &n).await;
        let mut ws = vec![0x41, 0, 0, 0, 0, 8, 0, 0, 4, 0];
        assert_eq!(run(&lun, &n, &ws, &[7; 512]).await.status, ScsiStatus::GOOD);
        let back = run(&lun, &n, &rw10(0x28, 8, 4), &[]).await;
        assert!(back.data_in.iter().all(|b| *b == 7));
        assert_eq!(dev.allocated_blocks(), 4);
        // GET LBA STATUS at LBA 8: mapped run of 4, then deallocated.
        let mut gls = vec![0x9E, 0x12, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 40, 0, 0];
        let r = run(&lun, &n, &gls, &[]).await;
        let d = &r.data_in;
        assert_eq!(&d[0..4], &[0, 0, 0, 36]);
        assert_eq!((d[15], d[19], d[20]), (8, 4, 0));
        assert_eq!((d[31], d[35], d[36]), (12, 52, 1));
        // UNMAP two of them.
        let mut list = vec![0, 22, 0, 16, 0, 0, 0, 0];
        list.extend_from_slice(&9u64.to_be_bytes());
        list.extend_from_slice(&[0, 0, 0, 2, 0, 0, 0, 0]);
        let r = run(&lun, &n, &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &list).await;
        assert_eq!(r.status, ScsiStatus::GOOD);
        assert_eq!(dev.allocated_blocks(), 2);
        // WRITE SAME with UNMAP and zeros deallocates.
        ws[1] = 0x08;
        assert_eq!(run(&lun, &n, &ws, &[0; 512]).await.status, ScsiStatus::GOOD);
        assert_eq!(dev.allocated_blocks(), 0);
        gls[9] = 64;
        assert_eq!(sense(&run(&lun, &n, &gls, &[]).await), Some((5, 0x21, 0)));
        Ok(())
    }

    #[tokio::test]
    async fn lba_status_spans_the_whole_lu() -> TestResult {
        // Larger than one device query: the answer still reaches the end.
        let blocks = 3 * LBA_STATUS_SPAN;
        let lun = Lun::new(Arc::new(MemDevice::new(512, blocks, false)), config(None))?;
        let n = nexus(1);
        attach(&lun, &n).await;
        let mut w = vec![0x8A, 0];
        w.extend_from_slice(&(2 * LBA_STATUS_SPAN + 5).to_be_bytes());
        w.extend_from_slice(&[0, 0, 0, 1, 0, 0]);
        assert_eq!(run(&lun, &n, &w, &[1; 512]).await.status, ScsiStatus::GOOD);
        let gls = [0x9E, 0x12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
        let d = run(&lun, &n, &gls, &[]).await.data_in;
        assert_eq!(&d[0..4], &[0, 0, 0, 52]);
        let desc = |i: usize| {
            let e = &d[8 + 16 * i..24 + 16 * i];
            (be64(e, 0), u64::from(be32(e, 8)), e[12])
        };
        let mapped = 2 * LBA_STATUS_SPAN + 5;
        assert_eq!(desc(0), (0, mapped, 1));
        assert_eq!(desc(1), (mapped, 1, 0));
        assert_eq!(desc(2), (mapped + 1, blocks - mapped - 1, 1));
        Ok(())
    }

    /// A device with a volatile cache that records whether writes asked for FUA.
    struct CacheDevice {
        inner: MemDevice,
        last_fua: AtomicBool,
        flushes: AtomicUsize,
        flush_fails: AtomicBool,
    }

    #[async_trait]
    impl BlockDevice for CacheDevice {
        fn capabilities(&self) -> Capabilities {
            Capabilities {
                volatile_cache: true,
                thin: false,
                ..self.inner.capabilities()
            }
        }
        async fn read(&self, offset: u64, len: usize) -> Result<Bytes, BlockError> {
            let r = self.inner.read(offset, len).await;
            // Give other tasks a chance to run between a read and a write.
            tokio::task::yield_now().await;
            r
        }
        async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), BlockError> {
            self.last_fua.store(fua, Ordering::SeqCst);
            self.inner.write(offset, data, fua).await
        }
        async fn flush(&self) -> Result<(), BlockError> {
            self.flushes.fetch_add(1, Ordering::SeqCst);
            if self.flush_fails.load(Ordering::SeqCst) {
                return Err(BlockError::Io(std::io::Error::other("write-back failed")));
            }
            Ok(())
        }
        async fn discard(&self, offset: u64, len: u64) -> Result<(), BlockError> {
            self.inner.discard(offset, len).await
        }
        async fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<(), BlockError> {
            self.inner.write_zeroes(offset, len, unmap).await
        }
        async fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, BlockError> {
            self.inner.block_status(offset, len).await
        }
    }

    const EJECT: [u8; 6] = [0x1B, 0, 0, 0, 0x02, 0];
    const LOAD: [u8; 6] = [0x1B, 0, 0, 0, 0x03, 0];
    const PREVENT: [u8; 6] = [0x1E, 0, 0, 0, 1, 0];
    const ALLOW: [u8; 6] = [0x1E, 0, 0, 0, 0, 0];

    fn removable_lun(dev: Arc<dyn BlockDevice>) -> Result<Lun, LunError> {
        Lun::new(
            dev,
            LunConfig {
                removable: true,
                ..config(None)
            },
        )
    }

    #[tokio::test]
    async fn removable_eject_and_load_keep_the_data() -> TestResult {
        let lun = removable_lun(Arc::new(MemDevice::new(512, 64, false)))?;
        let n = nexus(1);
        attach(&lun, &n).await;
        let inq = run(&lun, &n, &[0x12, 0, 0, 0, 36, 0], &[]).await;
        assert_eq!(inq.data_in[1] & 0x80, 0x80);
        let w = run(&lun, &n, &rw10(0x2A, 3, 1), &[0x5A; 512]).await;
        assert_eq!(w.status, ScsiStatus::GOOD);
        assert_eq!(run(&lun, &n, &EJECT, &[]).await.status, ScsiStatus::GOOD);
        let not_present = Some((2, 0x3A, 0x02));
        assert_eq!(sense(&run(&lun, &n, &[0x00], &[]).await), not_present);
        let r = run(&lun, &n, &rw10(0x28, 3, 1), &[]).await;
        assert_eq!(sense(&r), not_present);
        assert!(r.data_in.is_empty());
        let w = run(&lun, &n, &rw10(0x2A, 3, 1), &[0; 512]).await;
        assert_eq!(sense(&w), not_present);
        let sync = [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(sense(&run(&lun, &n, &sync, &[]).await), not_present);
        assert_eq!(run(&lun, &n, &LOAD, &[]).await.status, ScsiStatus::GOOD);
        assert_eq!(run(&lun, &n, &[0x00], &[]).await.status, ScsiStatus::GOOD);
        // The refused write while ejected changed nothing.
        let back = run(&lun, &n, &rw10(0x28, 3, 1), &[]).await;
        assert!(back.data_in.iter().all(|b| *b == 0x5A) && back.data_in.len() == 512);
        Ok(())
    }

    #[tokio::test]
    async fn removable_prevention_per_nexus() -> TestResult {
        let lun = removable_lun(Arc::new(MemDevice::new(512, 64, false)))?;
        let (a, b) = (nexus(1), nexus(2));
        attach(&lun, &a).await;
        attach(&lun, &b).await;
        let prevented = Some((5, 0x53, 0x02));
        assert_eq!(run(&lun, &a, &PREVENT, &[]).await.status, ScsiStatus::GOOD);
        assert_eq!(sense(&run(&lun, &b, &EJECT, &[]).await), prevented);
        assert_eq!(run(&lun, &b, &ALLOW, &[]).await.status, ScsiStatus::GOOD);
        assert_eq!(sense(&run(&lun, &b, &EJECT, &[]).await), prevented);
        assert_eq!(run(&lun, &a, &[0x00], &[]).await.status, ScsiStatus::GOOD);
        // a's nexus goes away (logout, connection loss): its prevention too.
        lun.nexus_lost(&a);
        assert_eq!(run(&lun, &b, &EJECT, &[]).await.status, ScsiStatus::GOOD);
        assert_eq!(run(&lun, &b, &PREVENT, &[]).await.status, ScsiStatus::GOOD);
        assert_eq!(sense(&run(&lun, &b, &LOAD, &[]).await), prevented);
        // A LU reset clears it as well.
        lun.task_management(&b, TmfFunction::LogicalUnitReset);
        assert_eq!(sense(&run(&lun, &b, &LOAD, &[]).await), Some((6, 0x29, 3)));
        assert_eq!(run(&lun, &b, &LOAD, &[]).await.status, ScsiStatus::GOOD);
        assert_eq!(run(&lun, &b, &[0x00], &[]).await.status, ScsiStatus::GOOD);
        Ok(())
    }

    /// A cache that cannot be written back is a write error (3/0C/00), not
    /// a read error: the initiator's error handling differs.
    #[tokio::test]
    async fn failed_synchronize_cache_is_a_write_error() -> TestResult {
        let dev = Arc::new(CacheDevice {
            inner: MemDevice::new(512, 64, false),
            last_fua: AtomicBool::new(false),
            flushes: AtomicUsize::new(0),
            flush_fails: AtomicBool::new(true),
        });
        let lun = Lun::new(dev, config(None))?;
        let n = nexus(1);
        attach(&lun, &n).await;
        let sync = [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(sense(&run(&lun, &n, &sync, &[]).await), Some((3, 0x0C, 0)));
        Ok(())
    }

    #[tokio::test]
    async fn removable_eject_flushes_unless_no_flush() -> TestResult {
        let dev = Arc::new(CacheDevice {
            inner: MemDevice::new(512, 64, false),
            last_fua: AtomicBool::new(false),
            flushes: AtomicUsize::new(0),
            flush_fails: AtomicBool::new(false),
        });
        let lun = removable_lun(dev.clone())?;
        let n = nexus(1);
        attach(&lun, &n).await;
        assert_eq!(run(&lun, &n, &EJECT, &[]).await.status, ScsiStatus::GOOD);
        assert_eq!(dev.flushes.load(Ordering::SeqCst), 1);
        assert_eq!(run(&lun, &n, &LOAD, &[]).await.status, ScsiStatus::GOOD);
        let no_flush = [0x1B, 0, 0, 0, 0x06, 0];
        assert_eq!(run(&lun, &n, &no_flush, &[]).await.status, ScsiStatus::GOOD);
        assert_eq!(dev.flushes.load(Ordering::SeqCst), 1);
        // A fixed LU neither ejects nor flushes.
        let fixed = Lun::new(dev.clone(), config(None))?;
        attach(&fixed, &n).await;
        assert_eq!(
            sense(&run(&fixed, &n, &EJECT, &[]).await),
            Some((5, 0x24, 0))
        );
        assert_eq!(dev.flushes.load(Ordering::SeqCst), 1);
        Ok(())
    }

    #[tokio::test]
    async fn write_cache_enable_controls_fua() -> TestResult {
        let dev = Arc::new(CacheDevice {
            inner: MemDevice::new(512, 64, false),
            last_fua: AtomicBool::new(false),
            flushes: AtomicUsize::new(0),
            flush_fails: AtomicBool::new(false),
        });
        let lun = Lun::new(dev.clone(), config(None))?;
        let (a, b) = (nexus(1), nexus(2));
        attach(&lun, &a).await;
        attach(&lun, &b).await;
        let caching = run(&lun, &a, &[0x1A, 0x08, 0x08, 0, 255, 0], &[]).await;
        let page = caching.data_in[4..].to_vec();
        assert_eq!((page[0], page[2] & 0x04), (0x08, 0x04));
        assert_eq!(
            run(&lun, &a, &rw10(0x2A, 0, 1), &[1; 512]).await.status,
            ScsiStatus::GOOD
        );
        assert!(!dev.last_fua.load(Ordering::SeqCst));
        // Turn WCE off: writes become FUA; the other nexus hears of it.
        let mut list = vec![0, 0, 0, 0];
        let mut p = page.clone();
        p[2] &= !0x04;
        list.extend_from_slice(&p);
        let sel = [0x15, 0x10, 0, 0, list.len() as u8, 0];
        assert_eq!(run(&lun, &a, &sel, &list).await.status, ScsiStatus::GOOD);
        assert_eq!(
            run(&lun, &a, &rw10(0x2A, 0, 1), &[1; 512]).await.status,
            ScsiStatus::GOOD
        );
        assert!(dev.last_fua.load(Ordering::SeqCst));
        assert_eq!(
            sense(&run(&lun, &b, &[0x00], &[]).await),
            Some((6, 0x2A, 0x01))
        );
        // Saved values are not supported.
        let saved = run(&lun, &a, &[0x1A, 0, 0xC8, 0, 255, 0], &[]).await;
        assert_eq!(sense(&saved), Some((5, 0x39, 0)));
        Ok(())
    }

    #[tokio::test]
    async fn spc_answers() -> TestResult {
        let lun = lun(false)?;
        let n = nexus(1);
        attach(&lun, &n).await;
        let vpd83 = run(&lun, &n, &[0x12, 1, 0x83, 0, 255, 0], &[]).await;
        assert_eq!(vpd83.status, ScsiStatus::GOOD);
        let rc16 = run(
            &lun,
            &n,
            &[0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
            &[],
        )
        .await;
        assert_eq!(&rc16.data_in[4..8], &[0, 0, 0, 63]);
        assert_eq!(rc16.data_in[14], 0xC0);
        let rc10 = run(&lun, &n, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]).await;
        assert_eq!(&rc10.data_in[..], &[0, 0, 0, 63, 0, 0, 2, 0]);
        let rsoc = run(
            &lun,
            &n,
            &[0xA3, 0x0C, 1, 0x28, 0, 0, 0, 0, 1, 0, 0, 0],
            &[],
        )
        .await;
        assert_eq!(rsoc.data_in[1], 0x03);
        let unknown = run(&lun, &n, &[0xC7], &[]).await;
        assert_eq!(sense(&unknown), Some((5, 0x20, 0)));
        assert_eq!(run(&lun, &n, &[0x35], &[]).await.status, ScsiStatus::GOOD);
        assert_eq!(
            run(&lun, &n, &[0x1B, 0, 0, 0, 1, 0], &[]).await.status,
            ScsiStatus::GOOD
        );
        assert_eq!(
            run(&lun, &n, &[0x1E, 0, 0, 0, 1, 0], &[]).await.status,
            ScsiStatus::GOOD
        );
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn compare_and_write_is_atomic() -> TestResult {
        let dev = Arc::new(CacheDevice {
            inner: MemDevice::new(512, 64, false),
            last_fua: AtomicBool::new(false),
            flushes: AtomicUsize::new(0),
            flush_fails: AtomicBool::new(false),
        });
        let lun = Arc::new(Lun::new(dev, config(None))?);
        let mut tasks = Vec::new();
        for t in 0..8u8 {
            let lun = lun.clone();
            tasks.push(tokio::spawn(async move {
                let n = nexus(t);
                lun.execute(&n, &cmd(&[0x00], &[])).await;
                let mut done = 0u32;
                while done < 20 {
                    // Increment the counter in block 0 with COMPARE AND WRITE.
                    let cur = lun.execute(&n, &cmd(&rw10(0x28, 0, 1), &[])).await;
                    let v = u32::from_be_bytes([
                        cur.data_in[0],
                        cur.data_in[1],
                        cur.data_in[2],
                        cur.data_in[3],
                    ]);
                    let mut data = cur.data_in.to_vec();
                    let mut next = cur.data_in.to_vec();
                    next[..4].copy_from_slice(&(v + 1).to_be_bytes());
                    data.extend_from_slice(&next);
                    let mut caw = [0u8; 16];
                    caw[0] = 0x89;
                    caw[13] = 1;
                    if lun.execute(&n, &cmd(&caw, &data)).await.status == ScsiStatus::GOOD {
                        done += 1;
                    }
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
        let n = nexus(0);
        let r = lun.execute(&n, &cmd(&rw10(0x28, 0, 1), &[])).await;
        assert_eq!(&r.data_in[..4], &160u32.to_be_bytes());
        Ok(())
    }

    #[test]
    fn odd_block_size_is_refused() {
        let dev = Arc::new(MemDevice::new(100, 8, false));
        assert!(matches!(
            Lun::new(dev, config(None)),
            Err(LunError::BlockSize(100))
        ));
    }

    #[tokio::test]
    async fn write_atomic16() -> TestResult {
        let lun = lun(false)?;
        let n = nexus(1);
        attach(&lun, &n).await;
        let mut wa = [0u8; 16];
        wa[0] = 0x9C;
        wa[1] = 0x18; // DPO, FUA
        wa[9] = 62;
        wa[13] = 2;
        let r = run(&lun, &n, &wa, &[0xA6; 1024]).await;
        assert_eq!(r.status, ScsiStatus::GOOD);
        assert_eq!(r.transfer_len, 1024);
        let back = run(&lun, &n, &rw10(0x28, 62, 2), &[]).await;
        assert!(back.data_in.iter().all(|b| *b == 0xA6));
        wa[9] = 63;
        assert_eq!(
            sense(&run(&lun, &n, &wa, &[0; 1024]).await),
            Some((5, 0x21, 0))
        );
        let rsoc = run(
            &lun,
            &n,
            &[0xA3, 0x0C, 1, 0x9C, 0, 0, 0, 0, 1, 0, 0, 0],
            &[],
        )
        .await;
        assert_eq!((rsoc.data_in[1] & 0x07, rsoc.data_in[5]), (0x03, 0x18));
        // Block Limits: atomic length within the transfer length.
        let bl = run(&lun, &n, &[0x12, 1, 0xB0, 0, 255, 0], &[])
            .await
            .data_in;
        let max = u32::from_be_bytes([bl[8], bl[9], bl[10], bl[11]]);
        let atomic = u32::from_be_bytes([bl[44], bl[45], bl[46], bl[47]]);
        assert!(atomic > 0 && atomic <= max);
        Ok(())
    }

    #[tokio::test]
    async fn orwrite_and_prefetch() -> TestResult {
        let lun = lun(false)?;
        let n = nexus(1);
        attach(&lun, &n).await;
        assert_eq!(
            run(&lun, &n, &rw10(0x2A, 1, 1), &[0x0F; 512]).await.status,
            ScsiStatus::GOOD
        );
        let mut or = [0u8; 16];
        or[0] = 0x8B;
        or[9] = 1;
        or[13] = 1;
        assert_eq!(
            run(&lun, &n, &or, &[0xF0; 512]).await.status,
            ScsiStatus::GOOD
        );
        let back = run(&lun, &n, &rw10(0x28, 1, 1), &[]).await;
        assert!(back.data_in.iter().all(|b| *b == 0xFF));
        assert_eq!(
            run(&lun, &n, &rw10(0x34, 0, 64), &[]).await.status,
            ScsiStatus::GOOD
        );
        assert_eq!(
            sense(&run(&lun, &n, &rw10(0x34, 1, 64), &[]).await),
            Some((5, 0x21, 0))
        );
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn random_cdbs_never_panic(
            cdb in proptest::collection::vec(any::<u8>(), 0..32),
            data in proptest::collection::vec(any::<u8>(), 0..2048),
            op in prop_oneof![any::<u8>(), Just(0x5Fu8), Just(0x89), Just(0x93), Just(0x42), Just(0x9E), Just(0xA3), Just(0x15)],
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build()?;
            let lun = lun(false)?;
            let n = nexus(1);
            let mut cdb = cdb;
            if let Some(b) = cdb.first_mut() {
                *b = op;
            }
            let c = ScsiCommand {
                itt: 1,
                lun: 0,
                cdb: Bytes::from(cdb),
                expected_len: 0,
                read: true,
                write: false,
                attr: TaskAttr::Simple,
                data_out: Bytes::from(data),
            };
            let r = rt.block_on(async {
                lun.execute(&n, &c).await;
                lun.execute(&n, &c).await
            });
            prop_assert!(r.data_in.len() <= r.transfer_len as usize || r.transfer_len == 0);
        }
    }
}
