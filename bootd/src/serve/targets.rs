//! Keeps the iSCSI server's targets in step with the registry: one target
//! per `ready` node, its overlay as LUN 0, only the node's initiator IQN with
//! the node's CHAP secret (and, with mutual CHAP on, the target secret it
//! answers the node's challenge with). Golden images are opened once per version and
//! shared by every overlay on them.

use crate::datadir::DataDir;
use crate::events::{Event, Events};
use anyhow::{Context, Result};
use blockdev::{BlockDevice, RawFile};
use bootd_plan::{NodePlan, Snapshot};
use imagestore::qcow2::overlay::Limits;
use imagestore::qcow2::Overlay;
use iscsi_proto::conn::ChapCredentials;
use iscsi_target::lun::{Lun, LunConfig};
use iscsi_target::{Server, Target};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// A node the server is serving now.
struct Served {
    id: i64,
    revision: i64,
    iqn: String,
    image_id: i64,
    overlay: Arc<Overlay>,
    path: std::path::PathBuf,
    /// The overlay's OFD lock when this process holds it itself (no
    /// registry peers); else the fence keeper holds it (`peers::keeper`).
    fence: Option<std::fs::File>,
    /// The fencing epoch of this server's claim.
    epoch: u64,
    /// The owner the registry named when this server opened the node: a
    /// fleet view that still names it predates the claim.
    taken_from: Option<String>,
    failure_logged: bool,
}

pub struct Targets {
    server: Arc<Server>,
    dd: DataDir,
    /// Where the nodes' persistent reservations are kept (`serve::pr`).
    registry: crate::fleet::Registry,
    /// Free space and failed overlays go out as events (for /metrics).
    events: Events,
    served: HashMap<String, Served>,
    goldens: HashMap<i64, Arc<RawFile>>,
    /// Nodes that failed to open, by name, at the revision that failed: tried
    /// again every tick, logged once per revision.
    failed: HashMap<String, i64>,
    seen: Option<u64>,
    /// Space limits every overlay gets.
    limits: Limits,
    /// Free bytes below which serve warns.
    warn_free: u64,
    sync_writes: imagestore::SyncWrites,
    watermark: crate::space::Watermark,
    /// Who this server is and how it claims nodes; `None` serves every
    /// ready node (no registry peers).
    own: Option<super::owned::Ownership>,
    /// The live servers at the last tick.
    live: Vec<String>,
    /// Served nodes that should be elsewhere but have a session: looked at
    /// again every tick until it ends.
    handing_off: bool,
    /// The live peers and their addresses at the last tick.
    peer_key: Vec<(String, String, bool)>,
    /// Logins redirected to a peer, by target IQN: initiator, address.
    redirects: HashMap<String, (String, iscsi_target::Elsewhere)>,
    /// Nodes claimed in the registry whose overlay could not be opened
    /// yet (its file lock still held elsewhere), with the claim's epoch:
    /// the retry takes the lock again without claiming again, so a held
    /// lock does not move the epoch (and every fleet view) every tick.
    claimed: HashMap<String, u64>,
}

impl Targets {
    pub fn new(
        server: Arc<Server>,
        dd: DataDir,
        registry: crate::fleet::Registry,
        events: Events,
    ) -> Self {
        Self {
            server,
            dd,
            registry,
            events,
            served: HashMap::new(),
            goldens: HashMap::new(),
            failed: HashMap::new(),
            seen: None,
            limits: Limits::default(),
            warn_free: 0,
            sync_writes: imagestore::SyncWrites::Flush,
            watermark: Default::default(),
            own: None,
            live: Vec::new(),
            handing_off: false,
            peer_key: Vec::new(),
            redirects: HashMap::new(),
            claimed: HashMap::new(),
        }
    }

    /// Serve only the nodes this server owns (see `owned`).
    pub fn with_ownership(mut self, own: super::owned::Ownership) -> Self {
        self.own = Some(own);
        self
    }

    /// Sets the per-overlay quota and the free-space reserve and warning
    /// watermark (defaults derived from the overlays' filesystem).
    pub fn with_space(
        mut self,
        quota: Option<u64>,
        reserve: Option<u64>,
        warn: Option<u64>,
    ) -> Result<Self> {
        let overlays = self.dd.overlays();
        let (_, total) = crate::space::filesystem(&overlays)
            .with_context(|| format!("free space of {}", overlays.display()))?;
        self.limits = Limits {
            quota_bytes: quota,
            reserve_free_bytes: reserve.unwrap_or_else(|| crate::space::default_reserve(total)),
        };
        self.warn_free = warn.unwrap_or_else(|| crate::space::default_warn(total));
        Ok(self)
    }

    /// Sets when acknowledged writes are durable (`serve --sync-writes`).
    pub fn with_sync_writes(mut self, mode: imagestore::SyncWrites) -> Self {
        self.sync_writes = mode;
        self
    }

    /// When acknowledged writes are durable, in words for serve's start line
    /// (said once the configuration is known good, not before its errors).
    pub fn durable_when(&self) -> &'static str {
        match self.sync_writes {
            imagestore::SyncWrites::Flush => "at SYNCHRONIZE CACHE or FUA",
            _ => "before they are acknowledged",
        }
    }

    /// Free space and failed overlays: logged when they change, and in
    /// /metrics.
    fn watch(&mut self) {
        let overlays = self.dd.overlays();
        if let Ok((free, _)) = crate::space::filesystem(&overlays) {
            match self.watermark.update(free, self.warn_free) {
                Some(true) => tracing::warn!(
                    free = free,
                    warn_free = self.warn_free,
                    reserve_free = self.limits.reserve_free_bytes,
                    "low disk space for overlays: first writes fail with SPACE ALLOCATION FAILED below the reserve"
                ),
                Some(false) => tracing::info!(free = free, "disk space for overlays recovered"),
                None => {}
            }
            self.events.emit(Event::Space {
                free,
                low: self.watermark.low(),
            });
        }
        let mut failed = 0;
        for (name, s) in &mut self.served {
            if s.overlay.failed() {
                failed += 1;
                if !s.failure_logged {
                    s.failure_logged = true;
                    tracing::error!(
                        node = %name,
                        "overlay failed after a write-back error: the node's I/O gets medium errors \
                         until serve restarts (writes since its last flush may be lost)"
                    );
                }
            }
        }
        self.events.emit(Event::OverlaysFailed(failed));
    }

    /// Targets being served.
    pub fn len(&self) -> usize {
        self.served.len()
    }

    /// One reconciliation with `snap`, the fleet view's current snapshot:
    /// cheap when it is the one already served and nothing is waiting for
    /// a retry.
    pub async fn tick(&mut self, snap: &Snapshot, peers: &[crate::store::ServerInfo]) {
        self.watch();
        if self.own.as_ref().is_some_and(|o| !o.lease.valid()) {
            // No heartbeat has reached the registry for too long: peers
            // may soon take this server's nodes. Nothing is served, or
            // claimed, until one does again.
            self.fence_all().await;
            if let Some(o) = &self.own {
                o.lease.rearm();
            }
            self.seen = None;
            return;
        }
        let generation = snap.generation();
        let live = self.own.as_ref().map(|o| o.live(peers)).unwrap_or_default();
        let peer_key = self
            .own
            .as_ref()
            .map(|o| o.peer_key(peers))
            .unwrap_or_default();
        if self.seen == Some(generation)
            && self.failed.is_empty()
            && live == self.live
            && peer_key == self.peer_key
            && !self.handing_off
        {
            return;
        }
        self.live = live;
        self.peer_key = peer_key;
        let wanted: HashMap<&str, &Arc<NodePlan>> = snap
            .nodes()
            .iter()
            .filter(|n| n.ready())
            .map(|n| (n.name.as_str(), n))
            .collect();

        // Drop first: a reset node's old target goes before its new one comes.
        let stale: Vec<String> = self
            .served
            .iter()
            .filter(|(name, s)| {
                wanted
                    .get(name.as_str())
                    .is_none_or(|n| n.id != s.id || n.revision != s.revision)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            if let Some(s) = self.served.remove(&name) {
                self.drop_target(&name, s).await;
            }
        }
        self.failed
            .retain(|name, _| wanted.contains_key(name.as_str()));
        self.claimed
            .retain(|name, _| wanted.contains_key(name.as_str()));

        // Nodes that should be on another server move once idle; all of
        // them, sessions and all, when this server is drained (the
        // initiator logs in again and is redirected to the new owner).
        self.handing_off = false;
        // Released in this tick: the snapshot still names this server their
        // owner, which must not make the loop below release them again.
        let mut released: Vec<String> = Vec::new();
        if let Some(own) = &self.own {
            let draining = own.draining(peers);
            let mut leaving = Vec::new();
            for (name, node) in &wanted {
                if !self.served.contains_key(*name) || own.mine_now(node, &self.live, peers) {
                    continue;
                }
                if own.in_use(node) && !draining {
                    // Stays here while its session lasts.
                    self.handing_off = true;
                } else {
                    leaving.push(name.to_string());
                }
            }
            // A node served here whose registry row names another live
            // server: it was taken while this server could not renew its
            // lease (and had fenced itself, or is about to). Dropped
            // without a commit: the file is the other server's now.
            let lost: Vec<String> = wanted
                .iter()
                .filter(|(name, node)| {
                    self.served.contains_key(**name)
                        && node.owner.as_deref().is_some_and(|o| {
                            o != own.me
                                && self.live.iter().any(|l| l == o)
                                && self.served[**name].taken_from.as_deref() != Some(o)
                        })
                })
                .map(|(name, _)| name.to_string())
                .collect();
            for name in lost {
                if let Some(s) = self.served.remove(&name) {
                    tracing::error!(node = %name, "taken by another server: stopped serving it without writing");
                    self.abandon(s);
                }
            }
            for name in leaving {
                if let Some(s) = self.served.remove(&name) {
                    self.drop_target(&name, s).await;
                    if let Some(own) = &self.own {
                        own.release(&name).await;
                    }
                    released.push(name);
                }
            }
        }

        for (name, node) in &wanted {
            if self.served.contains_key(*name) {
                continue;
            }
            if let Some(own) = &self.own {
                if !own.mine_now(node, &self.live, peers) {
                    // Not ours: let the owner it should have claim it.
                    if node.owner.as_deref() == Some(own.me.as_str())
                        && !released.iter().any(|r| r == name)
                    {
                        own.release(name).await;
                    }
                    self.failed.remove(*name);
                    self.claimed.remove(*name);
                    continue;
                }
            }
            match self.open(node).await {
                Ok(s) => {
                    tracing::info!(node = %name, iqn = %node.target_iqn, image = %node.image.name, version = node.image.version, epoch = s.epoch, "serving");
                    self.failed.remove(*name);
                    self.served.insert(name.to_string(), s);
                }
                Err(e) => {
                    if self.failed.insert(name.to_string(), node.revision) != Some(node.revision) {
                        tracing::error!(node = %name, "cannot serve: {e:#}");
                    }
                }
            }
        }
        self.redirect(&wanted, peers);
        let used: Vec<i64> = self.served.values().map(|s| s.image_id).collect();
        self.goldens.retain(|id, _| used.contains(id));
        self.seen = Some(generation);
    }

    /// Logins for ready nodes this server does not serve go to the peer
    /// that does (or is about to): an iSCSI login redirect.
    fn redirect(
        &mut self,
        wanted: &HashMap<&str, &Arc<NodePlan>>,
        peers: &[crate::store::ServerInfo],
    ) {
        let Some(own) = &self.own else {
            return;
        };
        let mut now = HashMap::new();
        for (name, node) in wanted {
            if self.served.contains_key(*name) {
                continue;
            }
            let at = match own.redirect(node, &self.live, peers) {
                Some(to) => iscsi_target::Elsewhere::Moved(to),
                // Behind a floating address this server took: its login
                // comes back until the owner's lease has lapsed and the node
                // is claimed here, rather than failing as an unknown target.
                // So is a node this server should have and has not claimed
                // yet (a script may already name this portal).
                None if own.coming(node, peers) || own.mine_now(node, &self.live, peers) => {
                    iscsi_target::Elsewhere::Coming
                }
                None => continue,
            };
            now.insert(node.target_iqn.clone(), (node.initiator_iqn.clone(), at));
        }
        for iqn in self.redirects.keys() {
            if !now.contains_key(iqn) {
                self.server.clear_moved(iqn);
            }
        }
        for (iqn, (initiator, at)) in &now {
            if self.redirects.get(iqn) != Some(&(initiator.clone(), *at)) {
                tracing::debug!(iqn = %iqn, at = ?at, "logins for a target elsewhere");
                self.server.set_elsewhere(iqn, initiator, *at);
            }
        }
        self.redirects = now;
    }

    /// Removes the target (ending its sessions) and commits the overlay.
    async fn drop_target(&self, name: &str, s: Served) {
        self.server.remove_target(&s.iqn);
        // A commit after the lease has lapsed could land on a file a peer
        // has opened: it is skipped (the write-ahead log has every
        // acknowledged write; the next owner replays it).
        let lapsed = self.own.as_ref().is_some_and(|o| !o.lease.valid());
        if lapsed {
            tracing::warn!(node = %name, "lease lapsed: overlay left uncommitted for its next owner");
        } else if let Err(e) = s.overlay.close().await {
            tracing::error!(node = %name, "closing overlay: {e}");
        }
        // Only once the overlay is closed may another server lock it.
        self.unlock(s);
        tracing::info!(node = %name, "stopped serving");
    }

    /// Stops serving a node without writing its overlay (it may be
    /// another server's now): sessions end, the overlay is not committed.
    fn abandon(&self, s: Served) {
        self.server.remove_target(&s.iqn);
        self.unlock(s);
    }

    fn unlock(&self, s: Served) {
        let Served {
            overlay,
            path,
            fence,
            ..
        } = s;
        // Every request the overlay still gets goes through the lease
        // (`Fenced`) or has been committed; its own descriptor closes when
        // the last session lets go of it.
        drop(overlay);
        match (fence, &self.own) {
            (Some(f), _) => drop(f),
            (None, Some(own)) => own.keeper.unlock(&path),
            (None, None) => {}
        }
    }

    /// Self-fencing: every node dropped without a write.
    async fn fence_all(&mut self) {
        self.claimed.clear();
        if self.served.is_empty() {
            return;
        }
        let n = self.served.len();
        let served: Vec<(String, Served)> = self.served.drain().collect();
        for (_, s) in served {
            self.abandon(s);
        }
        tracing::error!(
            nodes = n,
            "ownership lease lapsed (no heartbeat reached the registry in {:?}): stopped serving every node without writing its overlay; peers take them once the lease has expired in the registry",
            crate::peers::lease::FENCE_AFTER
        );
    }

    async fn open(&mut self, node: &NodePlan) -> Result<Served> {
        let opened = self.open_locked(node).await;
        if opened.is_err() {
            // The lock taken for it goes again (not the claim: a retry
            // reuses it without moving the epoch).
            if let Some(own) = &self.own {
                own.keeper.unlock(&node.overlay);
            }
        } else {
            self.claimed.remove(&node.name);
        }
        opened
    }

    async fn open_locked(&mut self, node: &NodePlan) -> Result<Served> {
        // Ownership first: the registry's claim, then the file lock; the
        // overlay is opened only with both.
        if self.own.as_ref().is_some_and(|o| !o.lease.valid()) {
            anyhow::bail!("not claimed: this server's ownership lease has lapsed");
        }
        let epoch = match &self.own {
            Some(own) => match self.claimed.get(&node.name) {
                Some(e) if node.owner.as_deref() == Some(own.me.as_str()) => *e,
                _ => {
                    let e = own.claim(node).await?;
                    self.claimed.insert(node.name.clone(), e);
                    e
                }
            },
            None => 0,
        };
        let path = node.overlay.clone();
        let keeper = self.own.as_ref().map(|o| o.keeper.clone());
        let fence = tokio::task::spawn_blocking(move || match keeper {
            Some(k) => k.lock(&path).map(|()| None),
            None => crate::peers::fence::lock(&path).map(Some),
        })
        .await??;
        let golden = match self.goldens.get(&node.image.id) {
            Some(g) => g.clone(),
            None => {
                let path = node.image.path.clone();
                let sha = node.image.sha256.clone();
                let started = std::time::Instant::now();
                let g = tokio::task::spawn_blocking(move || -> Result<RawFile> {
                    // Verified once per serve run, before any node reads it.
                    crate::import::verify_golden(&path, &sha)?;
                    Ok(RawFile::open(&path, true)?)
                })
                .await?
                .with_context(|| format!("golden image {}", node.image.path.display()))?;
                tracing::info!(image = %node.image.name, version = node.image.version, secs = started.elapsed().as_secs_f64(), "golden image verified against its SHA-256");
                let g = Arc::new(g);
                self.goldens.insert(node.image.id, g.clone());
                g
            }
        };
        let path = node.overlay.clone();
        let backing: Arc<dyn BlockDevice> = golden;
        // With a keeper, the keeper's locks keep other writers out: a
        // `flock` of this process's would outlive a freeze (`peers::keeper`).
        let elsewhere = self.own.is_some();
        let overlay = tokio::task::spawn_blocking(move || {
            if elsewhere {
                Overlay::open_locked_elsewhere(&path, Some(backing))
            } else {
                Overlay::open(&path, Some(backing), false)
            }
        })
        .await?
        .with_context(|| format!("overlay {}", node.overlay.display()))?;
        let r = overlay.recovered();
        if r.replayed > 0 {
            tracing::warn!(node = %node.name, records = r.replayed, "recovered writes acknowledged before a crash from the write-ahead log");
        }
        if let Some(why) = &r.dropped {
            tracing::warn!(node = %node.name, "write-ahead log not replayed: {why}");
        }
        overlay.set_limits(self.limits);
        overlay.set_sync_writes(self.sync_writes);
        let overlay = Arc::new(overlay);
        let id = crate::names::stable_id(&node.target_iqn);
        // Every request checks the lease first (`peers::lease`).
        let device: Arc<dyn BlockDevice> = match &self.own {
            Some(own) => Arc::new(crate::peers::lease::Fenced {
                inner: overlay.clone(),
                lease: own.lease.clone(),
                hold: crate::peers::lease::HOLD_REFUSED,
            }),
            None => overlay.clone(),
        };
        // Persistent reservations come from the registry (a restart's or a
        // takeover's new LUN starts where the last acknowledged change
        // left off) and every change goes back there, fenced by this
        // claim's epoch.
        let pr: Arc<dyn iscsi_target::lun::PrStore> = Arc::new(super::pr::RegistryPr {
            registry: self.registry.clone(),
            node: node.name.clone(),
            lun: 0,
            fence: self.own.as_ref().map(|o| (o.me.clone(), epoch)),
            legacy: Some(self.dd.pr_file(&node.name)),
        });
        let config = LunConfig {
            serial: format!("{id:016x}"),
            naa_id: id,
            vendor: "BOOTD".into(),
            product: "node disk".into(),
            pr_store: Some(pr),
            removable: false,
        };
        // Loading the state reads the registry: off the runtime's workers.
        let lun = tokio::task::spawn_blocking(move || Lun::new(device, config)).await??;
        self.server.add_target(Target {
            iqn: node.target_iqn.clone(),
            alias: Some(node.name.clone()),
            luns: BTreeMap::from([(0, Arc::new(lun))]),
            allowed_initiators: Some(vec![node.initiator_iqn.clone()]),
            chap: Some(ChapCredentials {
                user: node.chap.user.clone(),
                secret: node.chap.secret.expose().as_bytes().to_vec(),
                mutual: node
                    .mutual_chap
                    .as_ref()
                    .map(|m| (m.user.clone(), m.secret.expose().as_bytes().to_vec())),
            }),
        })?;
        Ok(Served {
            id: node.id,
            revision: node.revision,
            iqn: node.target_iqn.clone(),
            image_id: node.image.id,
            overlay,
            path: node.overlay.clone(),
            fence,
            epoch,
            taken_from: node.owner.clone(),
            failure_logged: false,
        })
    }

    /// After the server has stopped: commit every overlay and give back
    /// reserved clusters, so `qemu-img check` finds them clean. Returns how
    /// many could not be committed.
    pub async fn close_all(&mut self) -> usize {
        let mut failed = 0;
        let served: Vec<(String, Served)> = self.served.drain().collect();
        for (name, s) in served {
            if self.own.as_ref().is_some_and(|o| !o.lease.valid()) {
                // Self-fenced meanwhile: not ours to write.
                self.abandon(s);
                continue;
            }
            if let Err(e) = s.overlay.close().await {
                tracing::error!(node = %name, "closing overlay: {e}");
                failed += 1;
            }
            self.unlock(s);
        }
        failed
    }
}
