//! Logical unit tests on in-memory devices: helpers, reads and writes,
//! unit attentions, SPC answers; the command groups in their own files.

use super::*;
use async_trait::async_trait;
use blockdev::{Capabilities, Extent, MemDevice};
use bytes::Bytes;
use iscsi_proto::scsi::cdb::{be32, be64};
use iscsi_proto::task::{ScsiStatus, TaskAttr};
use proptest::prelude::*;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

mod block;
mod pr;
mod removable;

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
        pr_store: pr_state.map(|p| Arc::new(PrFile::new(p)) as Arc<dyn PrStore>),
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

#[test]
fn odd_block_size_is_refused() {
    let dev = Arc::new(MemDevice::new(100, 8, false));
    assert!(matches!(
        Lun::new(dev, config(None)),
        Err(LunError::BlockSize(100))
    ));
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
