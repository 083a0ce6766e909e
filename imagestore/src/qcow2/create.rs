//! Creating an empty overlay: header (naming the golden image and its raw
//! format), an all-zero L1 table, a one-cluster refcount table and the first
//! refcount block counting those clusters. New overlays use extended L2
//! entries (2 KiB subclusters), so a small first write to a cluster writes
//! only the subclusters it touches instead of copying the whole cluster.

use super::header::{Header, INCOMPAT_EXTL2};
use super::l2::Layout;
use super::meta::MAX_L1_ENTRIES;
use super::{ImageError, CLUSTER_SIZE, RB_ENTRIES};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Writes a new qcow2 v3 image of `virtual_size` bytes at `path` (which must
/// not exist) whose header names `backing_file_name` with format raw, with
/// extended L2 entries or the standard layout. Blocking.
pub fn create(
    path: &Path,
    virtual_size: u64,
    backing_file_name: &str,
    extended_l2: bool,
) -> Result<(), ImageError> {
    if virtual_size == 0 || !virtual_size.is_multiple_of(512) {
        return Err(ImageError::Unsupported(format!(
            "virtual size {virtual_size} is not a positive multiple of 512"
        )));
    }
    let layout = Layout {
        extended: extended_l2,
    };
    let l1_entries = virtual_size.div_ceil(layout.entries() as u64 * CLUSTER_SIZE);
    if l1_entries > MAX_L1_ENTRIES {
        return Err(ImageError::Unsupported(format!(
            "virtual size {virtual_size} is too large"
        )));
    }
    let l1_clusters = (l1_entries * 8).div_ceil(CLUSTER_SIZE);
    let l1_offset = CLUSTER_SIZE;
    let rt_offset = l1_offset + l1_clusters * CLUSTER_SIZE;
    let rb_offset = rt_offset + CLUSTER_SIZE;
    let used = rb_offset / CLUSTER_SIZE + 1;
    debug_assert!(used <= RB_ENTRIES as u64);

    let mut header = Header::new(virtual_size, l1_entries as u32, l1_offset, rt_offset, 1);
    if extended_l2 {
        header.incompatible_features |= INCOMPAT_EXTL2;
    }
    header.backing_file = Some(backing_file_name.to_owned());
    header.backing_format = Some("raw".to_owned());
    let head = header.encode()?;

    let mut rt = vec![0u8; CLUSTER_SIZE as usize];
    rt[..8].copy_from_slice(&rb_offset.to_be_bytes());
    let mut rb = vec![0u8; CLUSTER_SIZE as usize];
    for c in 0..used as usize {
        rb[c * 2..c * 2 + 2].copy_from_slice(&1u16.to_be_bytes());
    }

    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| io_at(path, e))?;
    let result = (|| -> std::io::Result<()> {
        file.write_all(&head)?;
        // The L1 table stays a hole: all zeros, nothing allocated.
        file.write_all_at(&rt, rt_offset)?;
        file.write_all_at(&rb, rb_offset)?;
        file.set_len(used * CLUSTER_SIZE)?;
        file.sync_all()?;
        sync_dir(path)
    })();
    if let Err(e) = result {
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(io_at(path, e));
    }
    file.flush()?;
    Ok(())
}

fn io_at(path: &Path, e: std::io::Error) -> ImageError {
    ImageError::Io(std::io::Error::new(
        e.kind(),
        format!("{}: {e}", path.display()),
    ))
}

/// Makes the new directory entry durable.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}
