//! Interoperation with qemu-img and qemu-io, both directions.

use crate::common::*;
use blockdev::BlockDevice;
use imagestore::Overlay;

const SIZE: u64 = 8 << 20;

fn golden_8m(dir: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
    golden(dir, SIZE, &[(0, 3 << 20), (5 << 20, 2 << 20)])
}

#[tokio::test]
async fn ours_checks_clean_and_compares_equal() -> TestResult {
    let dir = tempfile::tempdir()?;
    let gold = golden_8m(dir.path())?;
    let ov = dir.path().join("node.qcow2");
    Overlay::create(&ov, SIZE, s(&gold))?;
    let info = run("qemu-img", &["info", s(&ov)])?;
    let info = String::from_utf8_lossy(&info.stdout).to_string();
    assert!(info.contains("backing file format: raw"), "{info}");
    assert!(info.contains(s(&gold)), "{info}");
    qemu_check(&ov, false)?;

    let mut expect = std::fs::read(&gold)?;
    let dev = open(&ov, &gold)?;
    let mut put = |off: u64, data: Vec<u8>| {
        expect[off as usize..off as usize + data.len()].copy_from_slice(&data);
        bytes(&data)
    };
    // Partial cluster, across a cluster boundary, a whole cluster, 1 MiB, the last sector.
    dev.write(4096, put(4096, pattern(4096, 1)), false).await?;
    dev.write(60 << 10, put(60 << 10, pattern(12 << 10, 2)), false)
        .await?;
    dev.write(256 << 10, put(256 << 10, pattern(64 << 10, 3)), true)
        .await?;
    dev.write(2 << 20, put(2 << 20, pattern(1 << 20, 4)), false)
        .await?;
    dev.write(SIZE - 512, put(SIZE - 512, pattern(512, 5)), false)
        .await?;
    // Whole clusters over golden data and over our own writes, a partial one.
    dev.discard(1 << 20, 128 << 10).await?;
    expect[1 << 20..(1 << 20) + (128 << 10)].fill(0);
    dev.discard(2 << 20, 64 << 10).await?;
    expect[2 << 20..(2 << 20) + (64 << 10)].fill(0);
    dev.write_zeroes((5 << 20) + 512, 1024, true).await?;
    expect[(5 << 20) + 512..(5 << 20) + 1536].fill(0);
    assert_eq!(&dev.read(0, SIZE as usize).await?[..], &expect[..]);
    dev.close().await?;
    drop(dev);

    qemu_check(&ov, false)?;
    let exp = dir.path().join("expected.raw");
    std::fs::write(&exp, &expect)?;
    let cmp = run(
        "qemu-img",
        &["compare", "-f", "qcow2", "-F", "raw", s(&ov), s(&exp)],
    )?;
    assert!(
        cmp.status.success(),
        "{}",
        String::from_utf8_lossy(&cmp.stdout)
    );
    // Discarded ranges read as zeros in qemu too (not the golden data).
    let io = run(
        "qemu-io",
        &["-f", "qcow2", "-r", "-c", "read -P 0 1M 128k", s(&ov)],
    )?;
    let out = String::from_utf8_lossy(&io.stdout).to_string();
    assert!(
        io.status.success() && out.contains("read 131072/131072"),
        "{out}"
    );
    assert!(!out.contains("verification failed"), "{out}");
    // The golden image is untouched.
    assert_eq!(std::fs::read(&gold)?, {
        let d = tempfile::tempdir()?;
        std::fs::read(golden_8m(d.path())?)?
    });
    // Reopening gives the same bytes.
    let dev = open(&ov, &gold)?;
    assert_eq!(&dev.read(0, SIZE as usize).await?[..], &expect[..]);
    drop(dev);
    // qemu writes into the image we made (its allocator on our refcounts),
    // and we read what it wrote.
    let io = run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x5a 7M 192k",
            "-c",
            "write -P 0x6b 6144 2048",
            "-c",
            "write -z 256k 64k",
            s(&ov),
        ],
    )?;
    assert!(
        io.status.success(),
        "{}",
        String::from_utf8_lossy(&io.stderr)
    );
    expect[7 << 20..(7 << 20) + (192 << 10)].fill(0x5a);
    expect[6144..8192].fill(0x6b);
    expect[256 << 10..320 << 10].fill(0);
    qemu_check(&ov, false)?;
    let dev = open(&ov, &gold)?;
    assert_eq!(&dev.read(0, SIZE as usize).await?[..], &expect[..]);
    dev.write(7 << 20, bytes(&pattern(512, 8)), false).await?;
    expect[7 << 20..(7 << 20) + 512].copy_from_slice(&pattern(512, 8));
    dev.close().await?;
    drop(dev);
    qemu_check(&ov, false)?;
    std::fs::write(&exp, &expect)?;
    let cmp = run(
        "qemu-img",
        &["compare", "-f", "qcow2", "-F", "raw", s(&ov), s(&exp)],
    )?;
    assert!(
        cmp.status.success(),
        "{}",
        String::from_utf8_lossy(&cmp.stdout)
    );
    Ok(())
}

#[tokio::test]
async fn qemu_written_overlay_reads_right() -> TestResult {
    let dir = tempfile::tempdir()?;
    let gold = golden_8m(dir.path())?;
    let ov = dir.path().join("qemu.qcow2");
    let out = run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            s(&gold),
            "-F",
            "raw",
            s(&ov),
        ],
    )?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0xab 4096 8192",
            "-c",
            "write -P 0xcd 1M 64k",
            "-c",
            "write -z 2M 128k",
            "-c",
            "write -P 0x11 3M 1M",
            "-c",
            "discard 3M 64k",
            "-c",
            "write -P 0x22 8000k 100k",
            s(&ov),
        ],
    )?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // What qemu itself reads, as raw.
    let want_path = dir.path().join("want.raw");
    let out = run("qemu-img", &["convert", "-O", "raw", s(&ov), s(&want_path)])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut want = std::fs::read(&want_path)?;

    let dev = open(&ov, &gold)?;
    assert_eq!(&dev.read(0, SIZE as usize).await?[..], &want[..]);
    // Then we write into qemu's image, and qemu agrees.
    dev.write(6144, bytes(&pattern(4096, 9)), false).await?;
    want[6144..6144 + 4096].copy_from_slice(&pattern(4096, 9));
    dev.write((2 << 20) + 512, bytes(&pattern(512, 10)), false)
        .await?;
    want[(2 << 20) + 512..(2 << 20) + 1024].copy_from_slice(&pattern(512, 10));
    dev.discard(1 << 20, 64 << 10).await?;
    want[1 << 20..(1 << 20) + (64 << 10)].fill(0);
    dev.close().await?;
    drop(dev);
    qemu_check(&ov, false)?;
    std::fs::write(&want_path, &want)?;
    let cmp = run(
        "qemu-img",
        &["compare", "-f", "qcow2", "-F", "raw", s(&ov), s(&want_path)],
    )?;
    assert!(
        cmp.status.success(),
        "{}",
        String::from_utf8_lossy(&cmp.stdout)
    );
    Ok(())
}

#[tokio::test]
async fn unsupported_images_are_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let gold = golden_8m(dir.path())?;
    let refused = |name: &str, args: &[&str], what: &str| -> TestResult {
        let p = dir.path().join(name);
        let mut all: Vec<&str> = args.to_vec();
        all.push(s(&p));
        all.push("8M");
        let out = run("qemu-img", &all)?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let err = Overlay::open(&p, None, false)
            .err()
            .ok_or(format!("{name} opened"))?;
        assert!(err.to_string().contains(what), "{name}: {err}");
        Ok(())
    };
    refused(
        "small.qcow2",
        &["create", "-q", "-f", "qcow2", "-o", "cluster_size=4096"],
        "cluster size",
    )?;
    refused(
        "rc8.qcow2",
        &["create", "-q", "-f", "qcow2", "-o", "refcount_bits=8"],
        "refcount_order",
    )?;
    refused(
        "v2.qcow2",
        &["create", "-q", "-f", "qcow2", "-o", "compat=0.10"],
        "version",
    )?;
    refused(
        "ext-small.qcow2",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "extended_l2=on,cluster_size=32k",
        ],
        "cluster size",
    )?;
    // Compressed clusters.
    let comp = dir.path().join("comp.qcow2");
    let out = run(
        "qemu-img",
        &["convert", "-c", "-O", "qcow2", s(&gold), s(&comp)],
    )?;
    assert!(out.status.success());
    let err = Overlay::open(&comp, None, true)
        .err()
        .ok_or("compressed opened")?;
    assert!(err.to_string().contains("compressed"), "{err}");
    // Internal snapshots.
    let snap = dir.path().join("snap.qcow2");
    run("qemu-img", &["create", "-q", "-f", "qcow2", s(&snap), "8M"])?;
    run("qemu-img", &["snapshot", "-c", "one", s(&snap)])?;
    let err = Overlay::open(&snap, None, true)
        .err()
        .ok_or("snapshot opened")?;
    assert!(err.to_string().contains("snapshots"), "{err}");
    // A backing device of the wrong size.
    let ov = dir.path().join("size.qcow2");
    Overlay::create(&ov, 4 << 20, "golden.raw")?;
    let err = Overlay::open(&ov, Some(open_golden(&gold)?), false)
        .err()
        .ok_or("size mismatch opened")?;
    assert!(err.to_string().contains("bytes"), "{err}");
    // Not a qcow2 at all.
    assert!(Overlay::open(&gold, None, true).is_err());
    Ok(())
}

/// (start, length, depth, zero) of a `qemu-img map` extent.
type MapRow = (u64, u64, u64, bool);
/// (start, length, zero) of an extent stored in the overlay.
type OverlayRow = (u64, u64, bool);

/// `qemu-img map` of an image, per extent; depth 0 is the overlay itself,
/// 1 the backing image.
fn qemu_map(path: &std::path::Path) -> Result<Vec<MapRow>, Box<dyn std::error::Error>> {
    let out = run(
        "qemu-img",
        &["map", "--output=json", "-f", "qcow2", s(path)],
    )?;
    ensure!(
        out.status.success(),
        "qemu-img map: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let field = |line: &str, name: &str| -> Option<String> {
        let at = line.find(&format!("\"{name}\": "))? + name.len() + 4;
        let rest = &line[at..];
        let end = rest.find([',', '}']).unwrap_or(rest.len());
        Some(rest[..end].trim().to_owned())
    };
    let mut extents = Vec::new();
    for line in text.lines() {
        let (Some(start), Some(len), Some(depth), Some(zero)) = (
            field(line, "start"),
            field(line, "length"),
            field(line, "depth"),
            field(line, "zero"),
        ) else {
            continue;
        };
        extents.push((start.parse()?, len.parse()?, depth.parse()?, zero == "true"));
    }
    Ok(extents)
}

/// Extents stored in the overlay itself: (start, length, zero), adjacent
/// ones of the same kind merged.
fn overlay_extents(path: &std::path::Path) -> Result<Vec<OverlayRow>, Box<dyn std::error::Error>> {
    let mut out: Vec<OverlayRow> = Vec::new();
    for (start, len, depth, zero) in qemu_map(path)? {
        if depth != 0 {
            continue;
        }
        match out.last_mut() {
            Some((s0, l0, z0)) if *s0 + *l0 == start && *z0 == zero => *l0 += len,
            _ => out.push((start, len, zero)),
        }
    }
    Ok(out)
}

fn compare_raw(ov: &std::path::Path, want: &[u8], dir: &std::path::Path) -> TestResult {
    let want_path = dir.join("want-cmp.raw");
    std::fs::write(&want_path, want)?;
    let cmp = run(
        "qemu-img",
        &["compare", "-f", "qcow2", "-F", "raw", s(ov), s(&want_path)],
    )?;
    ensure!(
        cmp.status.success(),
        "qemu-img compare: {}",
        String::from_utf8_lossy(&cmp.stdout)
    );
    Ok(())
}

/// Our partial-cluster writes touch only their 2 KiB subclusters (edge
/// subclusters copied from the golden image), partial zeroing sets zero
/// bits, and qemu reads all of it right.
#[tokio::test]
async fn our_subclusters_read_right_in_qemu() -> TestResult {
    let dir = tempfile::tempdir()?;
    let gold = golden_8m(dir.path())?;
    let ov = dir.path().join("node.qcow2");
    Overlay::create(&ov, SIZE, s(&gold))?;
    let info = run("qemu-img", &["info", s(&ov)])?;
    let info = String::from_utf8_lossy(&info.stdout).to_string();
    assert!(info.contains("extended l2: true"), "{info}");

    let mut want = std::fs::read(&gold)?;
    let dev = open(&ov, &gold)?;
    let k = 1024u64;
    // (offset, length): 4 KiB on subcluster boundaries; 1 KiB inside one
    // subcluster; 3 KiB across three; 512 bytes at the end of a cluster;
    // and over an area where the golden image is a hole.
    let writes = [
        (64 * k + 4 * k, 4 * k),
        (128 * k + 512, k),
        (192 * k + 1536, 3 * k),
        (320 * k - 512, 512),
        (4096 * k + 6 * k, 2 * k + 512),
    ];
    for (i, &(off, len)) in writes.iter().enumerate() {
        let data = pattern(len as usize, 100 + i as u64);
        dev.write(off, bytes(&data), false).await?;
        want[off as usize..(off + len) as usize].copy_from_slice(&data);
    }
    // A second write into a cluster that already has subclusters: one
    // allocated subcluster partly overwritten, one new.
    let data = pattern(3 * k as usize, 200);
    dev.write(64 * k + 7 * k, bytes(&data), false).await?;
    want[(71 * k) as usize..(74 * k) as usize].copy_from_slice(&data);
    // Zeroing 4 KiB from the middle of a subcluster over golden data: one
    // whole subcluster gets its zero bit, the partial ones are written.
    dev.write_zeroes(384 * k + 1536, 4 * k, false).await?;
    want[(384 * k + 1536) as usize..(388 * k + 1536) as usize].fill(0);
    // Zeroing whole subclusters only.
    dev.discard(448 * k + 2 * k, 4 * k).await?;
    want[(450 * k) as usize..(454 * k) as usize].fill(0);
    assert_eq!(&dev.read(0, SIZE as usize).await?[..], &want[..]);
    dev.close().await?;
    drop(dev);

    qemu_check(&ov, false)?;
    compare_raw(&ov, &want, dir.path())?;
    assert_eq!(
        overlay_extents(&ov)?,
        vec![
            (68 * k, 6 * k, false),
            (128 * k, 2 * k, false),
            (192 * k, 6 * k, false),
            (320 * k - 2 * k, 2 * k, false),
            (384 * k, 2 * k, false),
            (386 * k, 2 * k, true),
            (388 * k, 2 * k, false),
            (450 * k, 4 * k, true),
            (4096 * k + 6 * k, 4 * k, false),
        ]
    );
    let io = run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-r",
            "-c",
            "read -P 0 394752 4096",
            "-c",
            "read -P 0 460800 4096",
            s(&ov),
        ],
    )?;
    let out = String::from_utf8_lossy(&io.stdout).to_string();
    assert!(
        io.status.success() && !out.contains("verification failed"),
        "{out}"
    );
    // Reopened, we read the same.
    let dev = open(&ov, &gold)?;
    assert_eq!(&dev.read(0, SIZE as usize).await?[..], &want[..]);
    Ok(())
}

/// qemu's own subcluster images: qemu-io writes 4 KiB and smaller pieces
/// (it allocates subclusters only), we read them right, then we write
/// partial clusters into them and qemu agrees.
#[tokio::test]
async fn qemu_subcluster_image_reads_right() -> TestResult {
    let dir = tempfile::tempdir()?;
    let gold = golden_8m(dir.path())?;
    let ov = dir.path().join("qemu-ext.qcow2");
    let out = run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "extended_l2=on,cluster_size=64k",
            "-b",
            s(&gold),
            "-F",
            "raw",
            s(&ov),
        ],
    )?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0xab 4096 4096",
            "-c",
            "write -P 0xcd 70656 1024",
            "-c",
            "write -z 1M 8k",
            "-c",
            "write -P 0x11 3M 192k",
            "-c",
            "discard 3M 64k",
            "-c",
            "write -P 0x22 5M 3k",
            "-c",
            "write -P 0x33 8000k 100k",
            s(&ov),
        ],
    )?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // qemu wrote subclusters, not whole clusters.
    let ext = overlay_extents(&ov)?;
    ensure!(
        ext.first() == Some(&(4096, 4096, false)),
        "qemu-img map: {ext:?}"
    );
    let want_path = dir.path().join("want.raw");
    let out = run("qemu-img", &["convert", "-O", "raw", s(&ov), s(&want_path)])?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut want = std::fs::read(&want_path)?;
    let dev = open(&ov, &gold)?;
    assert_eq!(&dev.read(0, SIZE as usize).await?[..], &want[..]);
    // Our writes: in place in qemu's subclusters, a new subcluster of a
    // cluster qemu allocated, zero bits, a whole-cluster discard.
    let mut put = |off: u64, data: Vec<u8>| {
        want[off as usize..off as usize + data.len()].copy_from_slice(&data);
        bytes(&data)
    };
    dev.write(4608, put(4608, pattern(1024, 11)), false).await?;
    dev.write(10240, put(10240, pattern(1536, 12)), false)
        .await?;
    dev.write(
        (5 << 20) + 4096,
        put((5 << 20) + 4096, pattern(4096, 13)),
        true,
    )
    .await?;
    dev.write_zeroes((3 << 20) + (70 << 10), 6 << 10, false)
        .await?;
    want[(3 << 20) + (70 << 10)..(3 << 20) + (76 << 10)].fill(0);
    dev.discard(8000 << 10, 64 << 10).await?;
    want[8000 << 10..8064 << 10].fill(0);
    assert_eq!(&dev.read(0, SIZE as usize).await?[..], &want[..]);
    dev.close().await?;
    drop(dev);
    qemu_check(&ov, false)?;
    compare_raw(&ov, &want, dir.path())?;
    Ok(())
}
