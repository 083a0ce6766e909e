//! Paths in the registry are relative to the data directory, so the
//! directory can move and servers sharing one registry may mount it at
//! different places. This wrapper strips the root from paths going in and
//! puts it back on paths coming out; callers only ever see absolute paths.
//! (Absolute paths already stored stay as they are: joining keeps them.)

use super::{
    BootStage, Discovered, Image, MutualChap, NewImage, NewNode, NewServer, Node, NodeState,
    Records, Result, ServerInfo, Servers, Store, Template,
};
use std::path::{Path, PathBuf};

pub struct Rooted {
    inner: Box<dyn Store>,
    root: PathBuf,
}

impl Rooted {
    pub fn new(inner: Box<dyn Store>, root: PathBuf) -> Self {
        Self { inner, root }
    }

    fn rel(&self, p: &Path) -> PathBuf {
        p.strip_prefix(&self.root)
            .map(Path::to_path_buf)
            .unwrap_or_else(|_| p.to_path_buf())
    }

    fn image(&self, mut i: Image) -> Image {
        i.path = self.root.join(&i.path);
        i
    }

    fn node(&self, mut n: Node) -> Node {
        n.overlay_path = self.root.join(&n.overlay_path);
        n.image = self.image(n.image);
        n
    }

    fn nodes(&self, v: Vec<Node>) -> Vec<Node> {
        v.into_iter().map(|n| self.node(n)).collect()
    }
}

impl Store for Rooted {
    fn changes(&self) -> Result<Box<dyn super::ChangeFeed>> {
        self.inner.changes()
    }

    fn generation(&self) -> Result<u64> {
        self.inner.generation()
    }

    fn add_image(&mut self, image: &NewImage) -> Result<Image> {
        let mut rel = image.clone();
        rel.path = self.rel(&image.path);
        let i = self.inner.add_image(&rel)?;
        Ok(self.image(i))
    }

    fn images(&self) -> Result<Vec<Image>> {
        Ok(self
            .inner
            .images()?
            .into_iter()
            .map(|i| self.image(i))
            .collect())
    }

    fn latest_image(&self, name: &str) -> Result<Image> {
        Ok(self.image(self.inner.latest_image(name)?))
    }

    fn max_image_version(&self, name: &str) -> Result<u32> {
        self.inner.max_image_version(name)
    }

    fn remove_image(&mut self, name: &str) -> Result<Vec<Image>> {
        Ok(self
            .inner
            .remove_image(name)?
            .into_iter()
            .map(|i| self.image(i))
            .collect())
    }

    fn add_template(
        &mut self,
        name: &str,
        image: &str,
        script: Option<&str>,
        user_data: Option<&str>,
    ) -> Result<Template> {
        self.inner.add_template(name, image, script, user_data)
    }

    fn templates(&self) -> Result<Vec<Template>> {
        self.inner.templates()
    }

    fn template(&self, name: &str) -> Result<Template> {
        self.inner.template(name)
    }

    fn remove_template(&mut self, name: &str) -> Result<Template> {
        self.inner.remove_template(name)
    }

    fn add_node(&mut self, node: &NewNode) -> Result<Node> {
        let mut rel = node.clone();
        rel.overlay_path = self.rel(&node.overlay_path);
        let n = self.inner.add_node(&rel)?;
        Ok(self.node(n))
    }

    fn nodes(&self) -> Result<Vec<Node>> {
        Ok(self.nodes(self.inner.nodes()?))
    }

    fn node(&self, name_or_mac: &str) -> Result<Node> {
        Ok(self.node(self.inner.node(name_or_mac)?))
    }

    fn set_node_state(&mut self, name: &str, state: NodeState) -> Result<Node> {
        let n = self.inner.set_node_state(name, state)?;
        Ok(self.node(n))
    }

    fn node_overlay_ready(&mut self, name: &str, image_id: i64) -> Result<Node> {
        let n = self.inner.node_overlay_ready(name, image_id)?;
        Ok(self.node(n))
    }

    fn set_mutual_chap(&mut self, name: &str, mutual: Option<&MutualChap>) -> Result<Node> {
        let n = self.inner.set_mutual_chap(name, mutual)?;
        Ok(self.node(n))
    }

    fn remove_node(&mut self, name: &str) -> Result<Node> {
        let n = self.inner.remove_node(name)?;
        Ok(self.node(n))
    }
}

impl Records for Rooted {
    fn note_discovered(&mut self, d: &Discovered) -> Result<()> {
        self.inner.note_discovered(d)
    }

    fn discovered(&self) -> Result<Vec<Discovered>> {
        self.inner.discovered()
    }

    fn record_stage(&mut self, mac: &str, stage: &BootStage, new_boot: bool) -> Result<()> {
        self.inner.record_stage(mac, stage, new_boot)
    }

    fn boot_stages(&self, mac: &str) -> Result<Vec<BootStage>> {
        self.inner.boot_stages(mac)
    }

    fn last_stages(&self) -> Result<Vec<super::LastStage>> {
        self.inner.last_stages()
    }
}

impl Servers for Rooted {
    fn register_server(&mut self, s: &NewServer) -> Result<()> {
        self.inner.register_server(s)
    }

    fn heartbeat(&mut self, id: &str, sessions: u64, bytes_served: u64) -> Result<bool> {
        self.inner.heartbeat(id, sessions, bytes_served)
    }

    fn servers(&self) -> Result<Vec<ServerInfo>> {
        self.inner.servers()
    }

    fn claim_node(&mut self, node: &str, me: &str, dead_after_ms: i64) -> Result<Option<u64>> {
        self.inner.claim_node(node, me, dead_after_ms)
    }

    fn release_node(&mut self, node: &str, me: &str) -> Result<bool> {
        self.inner.release_node(node, me)
    }

    fn retire_server(&mut self, id: &str, dead_after_ms: i64) -> Result<u64> {
        self.inner.retire_server(id, dead_after_ms)
    }

    fn set_draining(&mut self, id: &str, on: bool) -> Result<bool> {
        self.inner.set_draining(id, on)
    }

    fn set_portal(&mut self, id: &str, iscsi: &str) -> Result<bool> {
        self.inner.set_portal(id, iscsi)
    }

    fn pin_node(&mut self, node: &str, server: Option<&str>) -> Result<Node> {
        let n = self.inner.pin_node(node, server)?;
        Ok(self.node(n))
    }
}

impl super::Tokens for Rooted {
    fn add_token(&mut self, name: &str, sha256: &str, read_only: bool) -> Result<super::TokenInfo> {
        self.inner.add_token(name, sha256, read_only)
    }

    fn tokens(&self) -> Result<Vec<super::TokenInfo>> {
        self.inner.tokens()
    }

    fn remove_token(&mut self, name: &str) -> Result<super::TokenInfo> {
        self.inner.remove_token(name)
    }

    fn token_used(&mut self, name: &str, at: i64) -> Result<()> {
        self.inner.token_used(name, at)
    }
}

impl super::Reservations for Rooted {
    fn pr_state(&self, node: &str, lun: u32) -> Result<iscsi_proto::scsi::pr::PrState> {
        self.inner.pr_state(node, lun)
    }
    fn save_pr_state(
        &mut self,
        node: &str,
        lun: u32,
        fence: Option<super::reservations::Fence<'_>>,
        state: &iscsi_proto::scsi::pr::PrState,
    ) -> Result<bool> {
        self.inner.save_pr_state(node, lun, fence, state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;

    #[test]
    fn paths_are_stored_relative_and_read_back_absolute() -> Result<()> {
        let mut s = Rooted::new(
            Box::new(SqliteStore::open_in_memory()?),
            "/srv/bootd".into(),
        );
        let img = s.add_image(&NewImage {
            name: "deb".into(),
            version: 1,
            path: "/srv/bootd/images/deb-v1.raw".into(),
            bytes: 512,
            sha256: String::new(),
        })?;
        assert_eq!(img.path, Path::new("/srv/bootd/images/deb-v1.raw"));
        // Seen through another mount point of the same registry.
        let moved = Rooted::new(s.inner, "/mnt/other".into());
        assert_eq!(
            moved.latest_image("deb")?.path,
            Path::new("/mnt/other/images/deb-v1.raw")
        );
        Ok(())
    }
}
