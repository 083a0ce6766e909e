//! `serve --sync-writes`: when an acknowledged write is durable.
//!
//! Alone, serve acknowledges a write once it is in the page cache with its
//! write-ahead record: a crash of serve loses nothing, a crash of the
//! machine loses what the initiator has not flushed, which is the contract
//! of the volatile write cache bootd reports. With peers, a survivor opens
//! the overlay from the shared storage after this machine died with its
//! page cache, and drops this machine's log (another boot): so each write
//! must be on the storage before it is acknowledged.

use imagestore::SyncWrites;
use serde::Deserialize;

/// The `--sync-writes` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SyncSetting {
    /// always with a shared (PostgreSQL) registry, flush alone.
    Auto,
    /// Every write, zeroing and unmap is durable before its status is
    /// sent; concurrent writes to one overlay share one fdatasync.
    Always,
    /// Writes are durable at SYNCHRONIZE CACHE or FUA (a volatile write
    /// cache; a crash of serve still loses nothing).
    Flush,
    /// As always, but one commit per write with no sharing: only to
    /// measure what group commit saves.
    #[value(hide = true)]
    Each,
}

impl SyncSetting {
    /// The engine's mode: `shared` says whether other servers share the
    /// registry (and so the overlays' storage).
    pub fn resolve(setting: Option<Self>, shared: bool) -> SyncWrites {
        match setting.unwrap_or(Self::Auto) {
            Self::Auto if shared => SyncWrites::Always,
            Self::Auto | Self::Flush => SyncWrites::Flush,
            Self::Always => SyncWrites::Always,
            Self::Each => SyncWrites::Each,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_key_takes_the_modes() -> Result<(), toml::de::Error> {
        use crate::serve::config::ServeConfig;
        let c: ServeConfig = toml::from_str("sync_writes = \"always\"\n")?;
        assert_eq!(c.sync_writes, Some(SyncSetting::Always));
        let c: ServeConfig = toml::from_str("sync_writes = \"auto\"\n")?;
        assert_eq!(c.sync_writes, Some(SyncSetting::Auto));
        assert!(toml::from_str::<ServeConfig>("sync_writes = \"sometimes\"\n").is_err());
        Ok(())
    }

    #[test]
    fn auto_is_always_with_peers_and_flush_alone() {
        assert_eq!(SyncSetting::resolve(None, true), SyncWrites::Always);
        assert_eq!(SyncSetting::resolve(None, false), SyncWrites::Flush);
        assert_eq!(
            SyncSetting::resolve(Some(SyncSetting::Flush), true),
            SyncWrites::Flush
        );
        assert_eq!(
            SyncSetting::resolve(Some(SyncSetting::Always), false),
            SyncWrites::Always
        );
        assert_eq!(
            SyncSetting::resolve(Some(SyncSetting::Each), false),
            SyncWrites::Each
        );
    }
}
