//! `serve --record-io DIR`: each node's reads, writes and flushes, in order,
//! to `DIR/NODE.trace`, as the boot-storm tool replays them. A line is
//! `<ms since the node's first command> R|W|F <lba> <blocks>` after a
//! `# bootd-io-trace v1 block_size=512 node=NAME` header; logins are noted
//! as comments. The I/O path only queues an entry; one thread writes the
//! files, flushed every second and at exit.

use crate::events::{Event, Subscriber};
use iscsi_proto::scsi::cdb::{block_io, BlockIo};
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::Instant;

/// Lines kept per node: a boot is thousands; this bounds a runaway run.
const MAX_LINES: u64 = 1_000_000;
/// Entries queued for the writer; only when this many wait does a command
/// wait for the writer (a trace must not have gaps).
const QUEUE: usize = 65_536;

struct Trace {
    out: BufWriter<File>,
    t0: Instant,
    lines: u64,
}

enum Entry {
    Command(String, BlockIo, Instant),
    Note(String, String, Instant),
    /// Flush every file, then answer.
    Flush(SyncSender<()>),
}

/// Records from the I/O path through a queue; one thread owns the files.
pub struct IoRecorder {
    tx: SyncSender<Entry>,
}

/// `...:node.NAME` targets trace to `NAME.trace`.
fn node_name(target: &str) -> &str {
    target.rsplit_once(":node.").map_or(target, |(_, n)| n)
}

impl IoRecorder {
    pub fn new(dir: &Path, block_size: u32) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let (tx, rx) = sync_channel(QUEUE);
        let writer = Writer {
            dir: dir.to_path_buf(),
            block_size,
            traces: HashMap::new(),
        };
        std::thread::Builder::new()
            .name("iotrace".into())
            .spawn(move || writer.run(rx))?;
        Ok(Self { tx })
    }

    pub fn command(&self, target: &str, io: BlockIo) {
        let _ = self
            .tx
            .send(Entry::Command(target.to_string(), io, Instant::now()));
    }

    pub fn note(&self, target: &str, text: &str) {
        let _ = self.tx.send(Entry::Note(
            target.to_string(),
            text.to_string(),
            Instant::now(),
        ));
    }

    /// Asks the writer to write out everything recorded so far; with
    /// `wait`, returns once it has.
    pub fn flush(&self, wait: bool) {
        let (done_tx, done_rx) = sync_channel(1);
        if self.tx.send(Entry::Flush(done_tx)).is_ok() && wait {
            let _ = done_rx.recv();
        }
    }
}

/// Reads, writes and flushes from the command events; logins and logouts
/// as notes.
impl Subscriber for IoRecorder {
    fn on(&self, event: &Event<'_>) {
        match event {
            Event::Command(c) => {
                if let Some(io) = block_io(c.cdb) {
                    self.command(c.target, io);
                }
            }
            Event::IscsiLogin {
                target,
                initiator,
                isid,
                peer,
            } => {
                let d = format!("login {} {initiator} from {peer}", hex::encode(isid));
                self.note(target, &d);
            }
            Event::IscsiEnded {
                target,
                isid,
                reason,
                ..
            } => self.note(target, &format!("logout {} {reason}", hex::encode(isid))),
            _ => {}
        }
    }
}

struct Writer {
    dir: PathBuf,
    block_size: u32,
    traces: HashMap<String, Trace>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Entry>) {
        while let Ok(e) = rx.recv() {
            match e {
                Entry::Command(target, io, at) => self.with(&target, at, |t, ms| match io {
                    BlockIo::Read { lba, blocks } => writeln!(t.out, "{ms} R {lba} {blocks}"),
                    BlockIo::Write { lba, blocks } => writeln!(t.out, "{ms} W {lba} {blocks}"),
                    BlockIo::Flush => writeln!(t.out, "{ms} F 0 0"),
                }),
                Entry::Note(target, text, at) => {
                    self.with(&target, at, |t, ms| writeln!(t.out, "# {ms} ms: {text}"))
                }
                Entry::Flush(done) => {
                    for t in self.traces.values_mut() {
                        let _ = t.out.flush();
                    }
                    let _ = done.send(());
                }
            }
        }
        for t in self.traces.values_mut() {
            let _ = t.out.flush();
        }
    }

    fn with<F>(&mut self, target: &str, at: Instant, f: F)
    where
        F: FnOnce(&mut Trace, u128) -> std::io::Result<()>,
    {
        if !self.traces.contains_key(target) {
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
                    self.traces.insert(
                        target.to_string(),
                        Trace {
                            out,
                            t0: at,
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
        if let Some(t) = self.traces.get_mut(target) {
            if t.lines < MAX_LINES {
                t.lines += 1;
                let ms = at.saturating_duration_since(t.t0).as_millis();
                if let Err(e) = f(t, ms) {
                    tracing::warn!(target, "io trace: {e}");
                    t.lines = MAX_LINES;
                }
            }
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
        r.flush(true);
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
