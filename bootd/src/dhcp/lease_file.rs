//! The lease table's file: bootd's [`LeaseStore`], the driver side of the
//! sans-IO lease table in `bootd-dhcp`.

use bootd_dhcp::lease::{Change, Lease, LeaseStore};
use bootd_plan::Mac;
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

/// A text log, one line per change (`MAC IP EXPIRES`, or `MAC -` once the
/// lease is forgotten); later lines win. Appending and one fdatasync per
/// batch of answers lets many ACKs share one disk flush; the log is
/// rewritten atomically when it grows well past the live leases.
pub struct FileLeaseStore {
    path: PathBuf,
    log: Option<std::fs::File>,
}

impl FileLeaseStore {
    pub fn new(path: PathBuf) -> Self {
        Self { path, log: None }
    }

    fn line(mac: &Mac, lease: Option<&Lease>) -> String {
        match lease {
            Some(l) => format!("{mac} {} {}\n", l.ip, l.expires),
            None => format!("{mac} -\n"),
        }
    }
}

impl LeaseStore for FileLeaseStore {
    fn load(&mut self) -> std::io::Result<HashMap<Mac, Lease>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        // Only whole lines count: a last line cut short by a crash could
        // still parse (an expiry cut to its first digits) and win.
        let whole = text.rfind('\n').map_or("", |i| &text[..=i]);
        let mut out = HashMap::new();
        for line in whole.lines() {
            let mut f = line.split_whitespace();
            // A damaged line (a torn last write) loses one change, not the table.
            let Some(Ok(mac)) = f.next().map(str::parse::<Mac>) else {
                continue;
            };
            match (f.next(), f.next().map(str::parse)) {
                (Some("-"), None) => {
                    out.remove(&mac);
                }
                (Some(ip), Some(Ok(expires))) => {
                    if let Ok(ip) = ip.parse() {
                        out.insert(mac, Lease { ip, expires });
                    }
                }
                _ => {}
            }
        }
        // Start from a compact file: the log then only holds this run's changes.
        self.rewrite(&out)?;
        Ok(out)
    }

    fn append(&mut self, changes: &[Change]) -> std::io::Result<()> {
        if self.log.is_none() {
            self.log = Some(
                std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(&self.path)?,
            );
        }
        let Some(f) = self.log.as_mut() else {
            return Ok(());
        };
        let mut text = String::new();
        for (mac, lease) in changes {
            text.push_str(&Self::line(mac, lease.as_ref()));
        }
        let done = f.write_all(text.as_bytes()).and_then(|()| f.sync_data());
        if done.is_err() {
            // Part of the text may be in the file, and a retried fsync can
            // claim success for data that never reached the disk: the
            // caller rewrites the whole table instead of appending again.
            self.log = None;
        }
        done
    }

    fn rewrite(&mut self, all: &HashMap<Mac, Lease>) -> std::io::Result<()> {
        let mut rows: Vec<_> = all.iter().collect();
        rows.sort_by_key(|(_, l)| l.ip);
        let mut text = String::new();
        for (mac, l) in rows {
            text.push_str(&Self::line(mac, Some(l)));
        }
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        // Appends go to the new file from now on, whatever happens next.
        self.log = None;
        if let Some(dir) = self.path.parent() {
            // The rename itself must survive a power cut.
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}
