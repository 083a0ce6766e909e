//! `bootd export`: one raw file as LUN 0 of one target.

use anyhow::{bail, Context, Result};
use blockdev::{BlockDevice, RawFile};
use clap::Args;
use imagestore::format::{probe, ImageFormat, PROBE_LEN};
use imagestore::Overlay;
use iscsi_proto::conn::ChapCredentials;
use iscsi_target::lun::{Lun, LunConfig, PrFile, PrStore};
use iscsi_target::{Server, ServerConfig, Target};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Args)]
pub struct ExportArgs {
    /// The raw image file (or block device), or a qcow2 image, to serve.
    file: PathBuf,
    /// For a qcow2 image with a backing file: the raw image to read
    /// unwritten clusters from. bootd never opens a path found in a header.
    #[arg(long, value_name = "FILE")]
    backing: Option<PathBuf>,
    /// Address and port to listen on (port 0 picks a free one).
    #[arg(long, default_value = "0.0.0.0:3260")]
    listen: SocketAddr,
    /// Target name (default: derived from the file name).
    #[arg(long)]
    iqn: Option<String>,
    /// Refuse writes.
    #[arg(long)]
    read_only: bool,
    /// Serve it as a removable medium (like a BMC's virtual media):
    /// initiators may eject and load it, and prevent its removal.
    #[arg(long)]
    removable: bool,
    /// Require CHAP with this user and secret.
    #[arg(long, value_name = "USER:SECRET")]
    chap: Option<String>,
    /// Also prove the target to the initiator (mutual CHAP).
    #[arg(long, value_name = "USER:SECRET", requires = "chap")]
    mutual_chap: Option<String>,
    /// Only these initiator names may log in (repeatable; default: any).
    #[arg(long = "initiator", value_name = "IQN")]
    initiators: Vec<String>,
    /// For a qcow2 overlay: when an acknowledged write is durable, always
    /// (before its status; concurrent writes share one fdatasync) or flush
    /// (at SYNCHRONIZE CACHE or FUA) [default: flush]; as `serve
    /// --sync-writes`.
    #[arg(long, value_name = "MODE")]
    sync_writes: Option<crate::serve::durability::SyncSetting>,
}

fn split_chap(s: &str) -> Result<(String, Vec<u8>)> {
    let (user, secret) = s
        .split_once(':')
        .context("CHAP credentials must be USER:SECRET")?;
    if user.is_empty() || secret.len() < 12 || secret.len() > 16 {
        // RFC 7143 12.1.3: CHAP secrets are 12 to 16 bytes for interop
        // with initiators that enforce it (Windows, open-iscsi warns).
        bail!("CHAP user must be non-empty and the secret 12 to 16 characters");
    }
    Ok((user.to_string(), secret.as_bytes().to_vec()))
}

fn default_iqn(file: &Path) -> String {
    let name: String = file
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_else(|| "disk".into())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("iqn.2026-11.io.bootd:export.{name}")
}

pub fn run(data_dir: &Path, args: ExportArgs) -> Result<()> {
    let chap = match &args.chap {
        Some(c) => {
            let (user, secret) = split_chap(c)?;
            let mutual = args.mutual_chap.as_deref().map(split_chap).transpose()?;
            Some(ChapCredentials {
                user,
                secret,
                mutual,
            })
        }
        None => None,
    };
    let iqn = args.iqn.clone().unwrap_or_else(|| default_iqn(&args.file));
    // Opening the file and loading reservation state block: do it all
    // before the runtime starts.
    let path = std::fs::canonicalize(&args.file)
        .with_context(|| format!("{}: cannot open", args.file.display()))?;
    let (device, overlay) = open_image(&path, args.backing.as_deref(), args.read_only)?;
    if let Some(o) = &overlay {
        // One server: no peer opens the file after this machine dies.
        o.set_sync_writes(crate::serve::durability::SyncSetting::resolve(
            args.sync_writes,
            false,
        ));
    }
    let id = crate::names::stable_id(&format!("{}\0{}", iqn, path.display()));
    let pr_dir = data_dir.join("pr");
    let pr_store = match std::fs::create_dir_all(&pr_dir) {
        Ok(()) => {
            Some(Arc::new(PrFile::new(pr_dir.join(format!("{id:016x}-lun0")))) as Arc<dyn PrStore>)
        }
        Err(e) => {
            tracing::warn!(
                "{}: {e}; persistent reservations kept in memory only",
                pr_dir.display()
            );
            None
        }
    };
    let lun = Lun::new(
        device,
        LunConfig {
            serial: format!("{id:016x}"),
            naa_id: id,
            vendor: "BOOTD".into(),
            product: "export".into(),
            pr_store,
            removable: args.removable,
        },
    )
    .context("setting up LUN 0")?;
    let target = Target {
        iqn,
        alias: None,
        luns: BTreeMap::from([(0, Arc::new(lun))]),
        allowed_initiators: (!args.initiators.is_empty()).then(|| args.initiators.clone()),
        chap,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async {
        let served = serve(&args, &path, target).await;
        // A clean close gives back reserved clusters, so that `qemu-img
        // check` finds no leaks after an orderly shutdown.
        if let Some(o) = overlay {
            o.close().await.context("closing the qcow2 image")?;
        }
        served
    })
}

/// The device to serve, and the overlay behind it when FILE is qcow2 (it
/// needs a close on shutdown).
type Opened = (Arc<dyn BlockDevice>, Option<Arc<Overlay>>);

/// Opens FILE by what its bytes say it is, never by its name.
fn open_image(path: &Path, backing: Option<&Path>, read_only: bool) -> Result<Opened> {
    let mut head = vec![0u8; PROBE_LEN];
    let n =
        read_head(path, &mut head).with_context(|| format!("{}: cannot read", path.display()))?;
    let format =
        probe(&head[..n]).with_context(|| format!("{}: bad image header", path.display()))?;
    match format {
        ImageFormat::Raw => {
            if backing.is_some() {
                bail!("{}: --backing is only for qcow2 images", path.display());
            }
            let raw = RawFile::open(path, read_only)
                .with_context(|| format!("{}: cannot open", path.display()))?;
            Ok((Arc::new(raw), None))
        }
        ImageFormat::Qcow2(h) => {
            let backing = match (&h.backing_file, backing) {
                (Some(_), Some(b)) => {
                    let dev: Arc<dyn BlockDevice> = Arc::new(
                        RawFile::open(b, true)
                            .with_context(|| format!("{}: cannot open backing image", b.display()))?,
                    );
                    Some(dev)
                }
                (Some(name), None) => bail!(
                    "{}: qcow2 image has backing file {name:?}; pass it with --backing FILE",
                    path.display()
                ),
                (None, Some(_)) => bail!("{}: qcow2 image has no backing file", path.display()),
                (None, None) => None,
            };
            let overlay = Arc::new(
                Overlay::open(path, backing, read_only)
                    .with_context(|| format!("{}: cannot open", path.display()))?,
            );
            Ok((overlay.clone(), Some(overlay)))
        }
        other => bail!(
            "{}: {} images are not served directly; convert with `qemu-img convert -O raw` or use `bootd image import`",
            path.display(),
            other.qemu_name()
        ),
    }
}

fn read_head(path: &Path, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

async fn serve(args: &ExportArgs, path: &Path, target: Target) -> Result<()> {
    let iqn = target.iqn.clone();
    let server = Server::new(ServerConfig::default());
    server.add_target(target)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener.local_addr()?;
    let host = if local.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        match local {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        }
    };
    // Handlers go in before the ready lines: a SIGTERM right after them
    // must still shut down cleanly.
    let signal = crate::service::signal()?;
    // stdout carries exactly these two lines so scripts can wait for them.
    let mut out = std::io::stdout().lock();
    writeln!(out, "iscsi://{host}:{}/{iqn}/0", local.port())?;
    writeln!(out, "sanboot iscsi:{host}::{}:0:{iqn}", local.port())?;
    out.flush()?;
    drop(out);
    tracing::info!(file = %path.display(), listen = %local, read_only = args.read_only, removable = args.removable, "serving");

    let srv = server.clone();
    tokio::spawn(async move {
        signal.await;
        tracing::info!("shutting down");
        srv.shutdown();
    });
    server.serve(listener).await?;
    tracing::info!("flushed; bye");
    Ok(())
}
