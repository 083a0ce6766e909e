//! The `postgres` crate blocks on a tokio runtime of its own inside every
//! call, and tokio panics when that happens on a thread that is already
//! running async code (serve reads the registry from its runtime at start,
//! tests from `#[tokio::test]`s), or when a client is dropped there. This
//! wrapper runs each call on a scoped thread when the caller is inside a
//! runtime, and directly otherwise (the watcher's and boot log's threads,
//! the CLI): SQLite's callers need not know which backend they have.

use crate::store::{
    BootStage, ChangeFeed, Discovered, Image, MutualChap, NewImage, NewNode, NewServer, Node,
    NodeState, Records, Result, ServerInfo, Servers, Store, StoreError, Template,
};
use std::sync::Mutex;

/// Runs `f` where a blocking `block_on` is allowed.
pub fn run<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

pub struct OffRuntime {
    /// A reader (`&self`) hands the store to another thread, which needs
    /// it `Sync`; the lock is never contended (one caller at a time).
    inner: Mutex<Option<Box<dyn Store>>>,
}

impl OffRuntime {
    pub fn new(inner: Box<dyn Store>) -> Self {
        Self {
            inner: Mutex::new(Some(inner)),
        }
    }

    fn with<T: Send>(&self, f: impl FnOnce(&mut dyn Store) -> Result<T> + Send) -> Result<T> {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match guard.as_deref_mut() {
            Some(s) => run(|| f(s)),
            // Only `drop` takes it.
            None => Err(StoreError::Corrupt("registry used after close".into())),
        }
    }

    fn with_mut<T: Send>(
        &mut self,
        f: impl FnOnce(&mut dyn Store) -> Result<T> + Send,
    ) -> Result<T> {
        self.with(f)
    }
}

impl Drop for OffRuntime {
    fn drop(&mut self) {
        let inner = self
            .inner
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(inner) = inner {
            run(move || drop(inner));
        }
    }
}

/// A change feed whose waits (and drop) stay off any runtime too.
struct Feed(Option<Box<dyn ChangeFeed>>);

impl ChangeFeed for Feed {
    fn wait(&mut self, timeout: std::time::Duration) -> bool {
        match self.0.as_deref_mut() {
            Some(f) => run(|| f.wait(timeout)),
            None => false,
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            run(move || drop(f));
        }
    }
}

impl Records for OffRuntime {
    fn note_discovered(&mut self, d: &Discovered) -> Result<()> {
        self.with_mut(|s| s.note_discovered(d))
    }
    fn discovered(&self) -> Result<Vec<Discovered>> {
        self.with(|s| s.discovered())
    }
    fn record_stage(&mut self, mac: &str, stage: &BootStage, new_boot: bool) -> Result<()> {
        self.with_mut(|s| s.record_stage(mac, stage, new_boot))
    }
    fn boot_stages(&self, mac: &str) -> Result<Vec<BootStage>> {
        self.with(|s| s.boot_stages(mac))
    }
    fn last_stages(&self) -> Result<Vec<crate::store::LastStage>> {
        self.with(|s| s.last_stages())
    }
}

impl Servers for OffRuntime {
    fn register_server(&mut self, s: &NewServer) -> Result<()> {
        self.with_mut(|st| st.register_server(s))
    }
    fn heartbeat(&mut self, id: &str, sessions: u64, bytes_served: u64) -> Result<bool> {
        self.with_mut(|s| s.heartbeat(id, sessions, bytes_served))
    }
    fn servers(&self) -> Result<Vec<ServerInfo>> {
        self.with(|s| s.servers())
    }
    fn claim_node(&mut self, node: &str, me: &str, dead_after_ms: i64) -> Result<Option<u64>> {
        self.with_mut(|s| s.claim_node(node, me, dead_after_ms))
    }
    fn release_node(&mut self, node: &str, me: &str) -> Result<bool> {
        self.with_mut(|s| s.release_node(node, me))
    }
    fn retire_server(&mut self, id: &str, dead_after_ms: i64) -> Result<u64> {
        self.with_mut(|s| s.retire_server(id, dead_after_ms))
    }
    fn set_draining(&mut self, id: &str, on: bool) -> Result<bool> {
        self.with_mut(|s| s.set_draining(id, on))
    }
    fn set_portal(&mut self, id: &str, iscsi: &str) -> Result<bool> {
        self.with_mut(|s| s.set_portal(id, iscsi))
    }
    fn pin_node(&mut self, node: &str, server: Option<&str>) -> Result<Node> {
        self.with_mut(|s| s.pin_node(node, server))
    }
}

impl crate::store::Tokens for OffRuntime {
    fn add_token(
        &mut self,
        name: &str,
        sha256: &str,
        read_only: bool,
    ) -> Result<crate::store::TokenInfo> {
        self.with_mut(|s| s.add_token(name, sha256, read_only))
    }
    fn tokens(&self) -> Result<Vec<crate::store::TokenInfo>> {
        self.with(|s| s.tokens())
    }
    fn remove_token(&mut self, name: &str) -> Result<crate::store::TokenInfo> {
        self.with_mut(|s| s.remove_token(name))
    }
    fn token_used(&mut self, name: &str, at: i64) -> Result<()> {
        self.with_mut(|s| s.token_used(name, at))
    }
}

impl crate::store::Reservations for OffRuntime {
    fn pr_state(&self, node: &str, lun: u32) -> Result<iscsi_proto::scsi::pr::PrState> {
        self.with(|s| s.pr_state(node, lun))
    }
    fn save_pr_state(
        &mut self,
        node: &str,
        lun: u32,
        fence: Option<crate::store::reservations::Fence<'_>>,
        state: &iscsi_proto::scsi::pr::PrState,
    ) -> Result<bool> {
        self.with_mut(|s| s.save_pr_state(node, lun, fence, state))
    }
}

impl Store for OffRuntime {
    fn changes(&self) -> Result<Box<dyn ChangeFeed>> {
        let feed = self.with(|s| s.changes())?;
        Ok(Box::new(Feed(Some(feed))))
    }
    fn generation(&self) -> Result<u64> {
        self.with(|s| s.generation())
    }
    fn add_image(&mut self, image: &NewImage) -> Result<Image> {
        self.with_mut(|s| s.add_image(image))
    }
    fn images(&self) -> Result<Vec<Image>> {
        self.with(|s| s.images())
    }
    fn latest_image(&self, name: &str) -> Result<Image> {
        self.with(|s| s.latest_image(name))
    }
    fn max_image_version(&self, name: &str) -> Result<u32> {
        self.with(|s| s.max_image_version(name))
    }
    fn remove_image(&mut self, name: &str) -> Result<Vec<Image>> {
        self.with_mut(|s| s.remove_image(name))
    }
    fn add_template(
        &mut self,
        name: &str,
        image: &str,
        script: Option<&str>,
        user_data: Option<&str>,
    ) -> Result<Template> {
        self.with_mut(|s| s.add_template(name, image, script, user_data))
    }
    fn templates(&self) -> Result<Vec<Template>> {
        self.with(|s| s.templates())
    }
    fn template(&self, name: &str) -> Result<Template> {
        self.with(|s| s.template(name))
    }
    fn remove_template(&mut self, name: &str) -> Result<Template> {
        self.with_mut(|s| s.remove_template(name))
    }
    fn add_node(&mut self, node: &NewNode) -> Result<Node> {
        self.with_mut(|s| s.add_node(node))
    }
    fn nodes(&self) -> Result<Vec<Node>> {
        self.with(|s| s.nodes())
    }
    fn node(&self, name_or_mac: &str) -> Result<Node> {
        self.with(|s| s.node(name_or_mac))
    }
    fn set_node_state(&mut self, name: &str, state: NodeState) -> Result<Node> {
        self.with_mut(|s| s.set_node_state(name, state))
    }
    fn node_overlay_ready(&mut self, name: &str, image_id: i64) -> Result<Node> {
        self.with_mut(|s| s.node_overlay_ready(name, image_id))
    }
    fn set_mutual_chap(&mut self, name: &str, mutual: Option<&MutualChap>) -> Result<Node> {
        self.with_mut(|s| s.set_mutual_chap(name, mutual))
    }
    fn remove_node(&mut self, name: &str) -> Result<Node> {
        self.with_mut(|s| s.remove_node(name))
    }
}
