//! Change notification for the SQLite registry. SQLite has no NOTIFY, and
//! the CLI that changes the registry is another process, so the signal is
//! the file system's: every committed write touches the database or its
//! write-ahead log, and inotify wakes the watcher at once. The watcher then
//! reads the generation (one cheap query) to tell a registry change from,
//! say, a recorded boot stage.

use crate::store::ChangeFeed;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

pub struct FileChanges {
    inotify: Inotify,
    /// `bootd.db`, so that events for other files in the directory (the
    /// DHCP lease file, overlays' neighbours) do not wake the watcher.
    stem: std::ffi::OsString,
}

impl FileChanges {
    /// Watches the directory of the database at `db` (the WAL file comes
    /// and goes, so the directory is what can be watched).
    pub fn new(db: &Path) -> std::io::Result<Self> {
        let dir = db.parent().unwrap_or(Path::new("."));
        let stem = db.file_name().unwrap_or_default().to_os_string();
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        inotify.add_watch(
            dir,
            AddWatchFlags::IN_MODIFY
                | AddWatchFlags::IN_CLOSE_WRITE
                | AddWatchFlags::IN_MOVED_TO
                | AddWatchFlags::IN_CREATE,
        )?;
        Ok(Self { inotify, stem })
    }

    /// Reads what is queued; true when an event concerned the database.
    fn drain(&self) -> bool {
        let mut ours = false;
        while let Ok(events) = self.inotify.read_events() {
            if events.is_empty() {
                break;
            }
            ours |= events.iter().any(|e| {
                e.name.as_ref().is_some_and(|n| {
                    n.as_encoded_bytes()
                        .starts_with(self.stem.as_encoded_bytes())
                })
            });
        }
        ours
    }
}

impl ChangeFeed for FileChanges {
    fn wait(&mut self, timeout: Duration) -> bool {
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(n) if n > 0 => self.drain(),
            Ok(_) => false,
            Err(e) => {
                // EINTR and the like: the caller's periodic check covers it.
                tracing::debug!("registry change feed: {e}");
                std::thread::sleep(timeout);
                false
            }
        }
    }
}

/// No file to watch (an in-memory database): only the caller's timeout.
pub struct Timer;

impl ChangeFeed for Timer {
    fn wait(&mut self, timeout: Duration) -> bool {
        std::thread::sleep(timeout);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_to_the_database_wakes_the_feed_and_others_do_not() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let db = dir.path().join("bootd.db");
        std::fs::write(&db, b"")?;
        let mut feed = FileChanges::new(&db)?;
        assert!(!feed.wait(Duration::from_millis(20)));
        std::fs::write(dir.path().join("dhcp-leases"), b"x")?;
        assert!(!feed.wait(Duration::from_millis(200)));
        std::fs::write(dir.path().join("bootd.db-wal"), b"x")?;
        assert!(feed.wait(Duration::from_secs(5)));
        Ok(())
    }
}
