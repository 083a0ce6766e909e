//! `serve --record-io DIR`: each node's reads, writes and flushes, in order,
//! to `DIR/NODE.trace`, as the boot-storm tool replays them. A line is
//! `<ms since the node's first command> R|W|F <lba> <blocks>` after a
//! `# bootd-io-trace v1 block_size=512 node=NAME` header; logins are noted
//! as comments. Lines are buffered and flushed every second and at exit.

use iscsi_proto::scsi::cdb::BlockIo;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

/// Lines kept per node: a boot is thousands; this bounds a runaway run.
const MAX_LINES: u64 = 1_000_000;

struct Trace {
    out: BufWriter<File>,
    t0: Instant,
    lines: u64,
}

pub struct IoRecorder {
    dir: PathBuf,
    block_size: u32,
    traces: Mutex<HashMap<String, Trace>>,
}

/// `...:node.NAME` targets trace to `NAME.trace`.
fn node_name(target: &str) -> &str {
    target.rsplit_once(":node.").map_or(target, |(_, n)| n)
}

impl IoRecorder {
    pub fn new(dir: &Path, block_size: u32) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            block_size,
            traces: Mutex::new(HashMap::new()),
        })
    }

    fn with<F: FnOnce(&mut Trace) -> std::io::Result<()>>(&self, target: &str, f: F) {
        let mut traces = self.traces.lock().unwrap_or_else(|e| e.into_inner());
        if !traces.contains_key(target) {
            let name = node_name(target);
            // Names are checked at `node add` (no `/`); an odd target is skipped.
            if name.is_empty() || name.contains('/') || name.starts_with('.') {
                return;
            }
            let path = self.dir.join(format!("{name}.trace"));
            let opened = File::create(&path).and_then(|f| {
                let mut out = BufWriter::new(f);
                writeln!(
                    out,
                    "# bootd-io-trace v1 block_size={} node={name}",
                    self.block_size
                )?;
                Ok(out)
            });
            match opened {
                Ok(out) => {
                    traces.insert(
                        target.to_string(),
                        Trace {
                            out,
                            t0: Instant::now(),
                            lines: 0,
                        },
                    );
                }
                Err(e) => {
                    tracing::warn!("io trace {}: {e}", path.display());
                    return;
                }
            }
        }
        if let Some(t) = traces.get_mut(target) {
            if t.lines < MAX_LINES {
                t.lines += 1;
                if let Err(e) = f(t) {
                    tracing::warn!(target, "io trace: {e}");
                    t.lines = MAX_LINES;
                }
            }
        }
    }

    pub fn command(&self, target: &str, io: BlockIo) {
        self.with(target, |t| {
            let ms = t.t0.elapsed().as_millis();
            match io {
                BlockIo::Read { lba, blocks } => writeln!(t.out, "{ms} R {lba} {blocks}"),
                BlockIo::Write { lba, blocks } => writeln!(t.out, "{ms} W {lba} {blocks}"),
                BlockIo::Flush => writeln!(t.out, "{ms} F 0 0"),
            }
        });
    }

    pub fn note(&self, target: &str, text: &str) {
        self.with(target, |t| {
            writeln!(t.out, "# {} ms: {text}", t.t0.elapsed().as_millis())
        });
    }

    pub fn flush(&self) {
        let mut traces = self.traces.lock().unwrap_or_else(|e| e.into_inner());
        for t in traces.values_mut() {
            let _ = t.out.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_per_node_in_order() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let r = IoRecorder::new(dir.path(), 512)?;
        let t = "iqn.2026-11.io.bootd:node.web1";
        r.note(t, "login 400001370000");
        r.command(t, BlockIo::Read { lba: 0, blocks: 8 });
        r.command(
            t,
            BlockIo::Write {
                lba: 2048,
                blocks: 1,
            },
        );
        r.command(t, BlockIo::Flush);
        r.command("iqn.x:node../etc", BlockIo::Flush);
        r.flush();
        let text = std::fs::read_to_string(dir.path().join("web1.trace"))?;
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "# bootd-io-trace v1 block_size=512 node=web1");
        assert!(lines[1].starts_with("# ") && lines[1].ends_with("login 400001370000"));
        let ops: Vec<String> = lines[2..]
            .iter()
            .map(|l| l.split_once(' ').map_or("", |(_, r)| r).to_string())
            .collect();
        assert_eq!(ops, ["R 0 8", "W 2048 1", "F 0 0"]);
        assert_eq!(std::fs::read_dir(dir.path())?.count(), 1);
        Ok(())
    }
}
