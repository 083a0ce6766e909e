//! EXTENDED COPY (LID1) carried out within one LU: each segment is read and
//! written back in bounded chunks, each chunk under the LU's write gate
//! like a write, so other commands interleave between chunks.

use super::{block_error, Lun};
use blockdev::BlockError;
use bytes::Bytes;
use iscsi_proto::scsi::inquiry::naa_designator;
use iscsi_proto::scsi::sbc::{self, Geometry};
use iscsi_proto::scsi::xcopy::{self, CopyStatus};
use iscsi_proto::task::{Nexus, ScsiResult};

/// Bytes moved per read/write pair.
const CHUNK: u64 = 1 << 20;

impl Lun {
    pub(super) async fn extended_copy(
        &self,
        nexus: &Nexus,
        cdb: &[u8],
        data: &Bytes,
        geo: &Geometry,
        write_through: bool,
    ) -> ScsiResult {
        let designator = naa_designator(&self.lock().id);
        let list = match xcopy::decode(cdb, data, geo, &designator) {
            Ok(Some(list)) => list,
            Ok(None) => return sbc::good(Bytes::new(), 0),
            Err(r) => return r,
        };
        let mut status = CopyStatus {
            ok: true,
            segments_processed: 0,
            bytes: 0,
        };
        let mut failure = None;
        for &(src, dst, len) in &list.segments {
            match self.copy_segment(src, dst, len, write_through).await {
                Ok(()) => {
                    status.segments_processed += 1;
                    status.bytes += len;
                }
                Err(e) => {
                    status.ok = false;
                    failure = Some(e);
                    break;
                }
            }
        }
        if list.hold {
            self.lock().hold_copy_result(nexus, list.list_id, status);
        }
        match failure {
            None => sbc::good(Bytes::new(), 0),
            Some(e) => block_error(&e, true),
        }
    }

    /// Copies `len` bytes from `src` to `dst`; overlapping ranges come out
    /// as if the source had been read whole first.
    async fn copy_segment(
        &self,
        src: u64,
        dst: u64,
        len: u64,
        fua: bool,
    ) -> Result<(), BlockError> {
        let bs = u64::from(self.geo.block_size);
        let chunk = (CHUNK / bs * bs).max(bs);
        // Copying towards higher addresses over an overlap goes back to front.
        let backwards = dst > src && dst < src + len;
        let n_chunks = len.div_ceil(chunk);
        for i in 0..n_chunks {
            let k = if backwards { n_chunks - 1 - i } else { i };
            let at = k * chunk;
            let n = (len - at).min(chunk);
            let _g = self.write_gate.read().await;
            let buf = self.device.read(src + at, n as usize).await?;
            self.device.write(dst + at, buf, fua).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::lun::{Lun, LunConfig};
    use blockdev::MemDevice;
    use bytes::Bytes;
    use iscsi_proto::task::{Nexus, ScsiCommand, ScsiResult, ScsiStatus, TaskAttr};
    use std::sync::Arc;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn nexus(i: u8) -> Nexus {
        Nexus {
            initiator_port: format!("iqn.2026-01.test:i,i,0x{i}").into(),
            target_port: "iqn.2026-01.test:t,t,0x1".into(),
            relative_port: 1,
        }
    }

    async fn run(l: &Lun, n: &Nexus, cdb: &[u8], data: &[u8]) -> ScsiResult {
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
        l.execute(n, &cmd).await
    }

    fn rw10(op: u8, lba: u32, blocks: u16) -> Vec<u8> {
        let mut c = vec![op, 0];
        c.extend_from_slice(&lba.to_be_bytes());
        c.push(0);
        c.extend_from_slice(&blocks.to_be_bytes());
        c
    }

    /// An EXTENDED COPY parameter list naming this LU (NAA id 0x77).
    fn params(list_id: u8, segs: &[(u16, u64, u64)]) -> Vec<u8> {
        let mut t = vec![0u8; 32];
        t[0] = 0xE4;
        t[4..8].copy_from_slice(&[0x01, 0x03, 0, 8]);
        t[8..16].copy_from_slice(&((3u64 << 60) | 0x77).to_be_bytes());
        t[30] = 0x02;
        let mut s = Vec::new();
        for &(blocks, src, dst) in segs {
            s.extend_from_slice(&[0x02, 0, 0, 0x18, 0, 0, 0, 0, 0, 0]);
            s.extend_from_slice(&blocks.to_be_bytes());
            s.extend_from_slice(&src.to_be_bytes());
            s.extend_from_slice(&dst.to_be_bytes());
        }
        let mut d = vec![list_id, 0, 0, 32, 0, 0, 0, 0];
        d.extend_from_slice(&(s.len() as u32).to_be_bytes());
        d.extend_from_slice(&[0; 4]);
        d.extend_from_slice(&t);
        d.extend_from_slice(&s);
        d
    }

    fn xcopy_cdb(len: usize) -> Vec<u8> {
        let mut c = vec![0x83, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        c.extend_from_slice(&(len as u32).to_be_bytes());
        c
    }

    #[tokio::test]
    async fn copies_within_the_lu_and_holds_status() -> TestResult {
        let dev = Arc::new(MemDevice::new(512, 8192, false));
        let config = LunConfig {
            serial: "S".into(),
            naa_id: 0x77,
            vendor: "BOOTD".into(),
            product: "t".into(),
            pr_store: None,
            removable: false,
        };
        let l = Lun::new(dev, config)?;
        let (a, b) = (nexus(1), nexus(2));
        run(&l, &a, &[0x00], &[]).await;
        run(&l, &b, &[0x00], &[]).await;
        let data: Vec<u8> = (0..4096 * 512).map(|i| (i / 512) as u8).collect();
        let w = rw10(0x2A, 0, 4096);
        assert_eq!(run(&l, &a, &w, &data).await.status, ScsiStatus::GOOD);
        // Two segments; the second overlaps its own source (shift by 1).
        let p = params(9, &[(2048, 0, 6000), (3000, 0, 1)]);
        let r = run(&l, &a, &xcopy_cdb(p.len()), &p).await;
        assert_eq!(r.status, ScsiStatus::GOOD);
        let back = run(&l, &a, &rw10(0x28, 6000, 2048), &[]).await;
        assert_eq!(&back.data_in[..], &data[..2048 * 512]);
        let back = run(&l, &a, &rw10(0x28, 1, 3000), &[]).await;
        assert_eq!(&back.data_in[..], &data[..3000 * 512]);
        // COPY STATUS for this nexus only.
        let cs = [0x84, 0x00, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0];
        let r = run(&l, &a, &cs, &[]).await;
        assert_eq!(&r.data_in[4..8], &[0x01, 0, 2, 0]);
        let bytes = u32::from_be_bytes([r.data_in[8], r.data_in[9], r.data_in[10], r.data_in[11]]);
        assert_eq!(bytes, 5048 * 512);
        let other = run(&l, &b, &cs, &[]).await;
        assert!(other.sense.is_some());
        // A list naming another LU copies nothing.
        let mut p = params(3, &[(1, 0, 10)]);
        p[31] ^= 1;
        let r = run(&l, &a, &xcopy_cdb(p.len()), &p).await;
        let s = r.sense.as_ref().map(|s| (s[2] & 0x0F, s[12], s[13]));
        assert_eq!(s, Some((0x0A, 0x08, 0x04)));
        Ok(())
    }
}
