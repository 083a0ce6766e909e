//! The boot of every node, stage by stage: DHCP, TFTP, iPXE's DHCP, the
//! script, iSCSI logins and logouts. Serve's components report what they
//! did with what they know (a MAC, a client address, a target name); one
//! thread resolves that to a node, logs one line per stage with the time
//! since the boot began, and keeps the last boot's stages in the registry
//! for `node show`. Reporting never blocks serving: when the queue is full
//! a stage is dropped from the record (it was still served).

use crate::events::{Event, Subscriber};
use crate::fleet::{FleetView, Registry};
use crate::serve::grants::Grants;
use crate::store::BootStage;
use bootd_plan::Mac;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast;

/// Stages waiting to be recorded before new ones are dropped.
const QUEUE: usize = 8192;
/// A DHCP answer from iPXE starts a new boot unless the firmware's own DHCP
/// (or another stage) was seen this recently: a ROM that is iPXE already
/// begins with iPXE's DHCP.
const SAME_BOOT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The PXE firmware's DHCP answered with a boot file.
    Dhcp,
    /// The iPXE binary went out over TFTP.
    Tftp,
    /// iPXE's own DHCP answered with the script URL.
    IpxeDhcp,
    /// The node's script went out over HTTP.
    Script,
    /// The booted OS's cloud-init fetched its user-data (first boot).
    CloudInit,
    IscsiLogin,
    IscsiLogout,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Self::Dhcp => "dhcp",
            Self::Tftp => "tftp",
            Self::IpxeDhcp => "ipxe-dhcp",
            Self::Script => "script",
            Self::CloudInit => "cloud-init",
            Self::IscsiLogin => "iscsi-login",
            Self::IscsiLogout => "iscsi-logout",
        }
    }
}

/// Who a stage happened to, as the reporting component knows it.
#[derive(Debug, Clone)]
pub enum Who {
    Mac(Mac),
    /// A client address (TFTP): a node's static address, or one bootd's
    /// DHCP leased.
    Addr(IpAddr),
    /// A node's target IQN (iSCSI).
    Target(String),
}

struct Report {
    who: Who,
    stage: Stage,
    detail: String,
    at_ms: i64,
}

/// A cheap, cloneable handle for reporting stages.
#[derive(Clone)]
pub struct BootLog {
    tx: SyncSender<Report>,
    feed: broadcast::Sender<Arc<StageEvent>>,
}

/// A stage resolved to its node, as recorded: what live views (the API's
/// event stream) follow.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StageEvent {
    pub node: String,
    pub mac: String,
    /// As `node show` names it: `dhcp`, `tftp`, `ipxe-dhcp`, `script`,
    /// `cloud-init`, `iscsi-login-N`, `iscsi-logout-N`.
    pub stage: String,
    /// Unix milliseconds.
    pub at_ms: i64,
    /// When this boot's first stage was seen (Unix milliseconds).
    pub boot_started_ms: i64,
    /// This stage began a new boot (the node's earlier stages are gone).
    pub new_boot: bool,
    pub detail: String,
}

/// Stages a slow live view may fall behind by before it misses some.
const FEED: usize = 4096;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl BootLog {
    /// Starts the recorder thread; it ends when every handle is dropped.
    /// Starts the recorder: nodes come from `view`, leased addresses from
    /// `grants`, and stages are written through `registry`.
    pub fn start(
        registry: Registry,
        view: FleetView,
        grants: Arc<Grants>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel(QUEUE);
        let recorder = Recorder::new(registry, view, grants);
        let feed = recorder.feed.clone();
        std::thread::Builder::new()
            .name("bootlog".into())
            .spawn(move || recorder.run(rx))?;
        Ok(Self { tx, feed })
    }

    /// Every stage recorded from now on, resolved to its node. Sending to
    /// nobody costs nothing.
    pub fn feed(&self) -> broadcast::Sender<Arc<StageEvent>> {
        self.feed.clone()
    }

    pub fn report(&self, who: Who, stage: Stage, detail: impl Into<String>) {
        let r = Report {
            who,
            stage,
            detail: detail.into(),
            at_ms: now_ms(),
        };
        if let Err(TrySendError::Full(_)) = self.tx.try_send(r) {
            tracing::debug!("boot log queue full: a stage goes unrecorded");
        }
    }
}

/// The boot events that are stages of a node's boot, as the emitting
/// server knew the node (a MAC, a client address, a target); the recorder
/// thread resolves them to nodes.
impl Subscriber for BootLog {
    fn on(&self, event: &Event<'_>) {
        match event {
            Event::DhcpReply { boot: Some(b), .. } => {
                let stage = if b.ipxe { Stage::IpxeDhcp } else { Stage::Dhcp };
                let detail = match b.leased {
                    Some(ip) => format!("{} to {ip}", b.file),
                    None => format!("{} (proxy)", b.file),
                };
                self.report(Who::Mac(b.mac), stage, detail);
            }
            Event::TftpSent {
                peer,
                file,
                bytes,
                secs,
                blksize,
            } => {
                let detail = format!("{file} {bytes} bytes in {secs:.2} s (blksize {blksize})");
                self.report(Who::Addr(*peer), Stage::Tftp, detail);
            }
            Event::MetadataServed { mac } => {
                self.report(Who::Mac(*mac), Stage::CloudInit, "user-data");
            }
            Event::ScriptServed { mac, template } => {
                self.report(
                    Who::Mac(*mac),
                    Stage::Script,
                    format!("template {template}"),
                );
            }
            Event::IscsiLogin {
                target,
                initiator,
                isid,
                peer,
            } => {
                let d = format!("{} {initiator} from {peer}", hex::encode(isid));
                self.report(Who::Target(target.to_string()), Stage::IscsiLogin, d);
            }
            Event::IscsiEnded {
                target,
                isid,
                reason,
                ..
            } => {
                let d = format!("{} {reason}", hex::encode(isid));
                self.report(Who::Target(target.to_string()), Stage::IscsiLogout, d);
            }
            _ => {}
        }
    }
}

/// A boot in progress: when it began, and its sessions for numbering.
struct Boot {
    started_ms: i64,
    last_ms: i64,
    logins: u32,
    sessions: HashMap<String, u32>,
    /// The script (or a login) was served: the boot is past iPXE's DHCP.
    scripted: bool,
}

struct Recorder {
    registry: Registry,
    view: FleetView,
    grants: Arc<Grants>,
    boots: HashMap<Mac, Boot>,
    feed: broadcast::Sender<Arc<StageEvent>>,
}

impl Recorder {
    fn new(registry: Registry, view: FleetView, grants: Arc<Grants>) -> Self {
        Self {
            registry,
            view,
            grants,
            boots: HashMap::new(),
            feed: broadcast::channel(FEED).0,
        }
    }

    fn run(mut self, rx: Receiver<Report>) {
        while let Ok(r) = rx.recv() {
            self.record(r);
        }
    }

    /// The node a report is about, in the current snapshot.
    fn node_of(&self, who: &Who) -> Option<(Mac, String)> {
        let snap = self.view.current();
        let node = match who {
            Who::Mac(m) => snap.by_mac(m),
            Who::Target(t) => snap.by_target(t),
            Who::Addr(ip) => {
                let ip = ip.to_canonical();
                match snap.by_ip(&ip) {
                    Some(n) => Some(n),
                    None => snap.by_mac(&self.grants.leased_to(ip)?),
                }
            }
        }?;
        Some((node.mac, node.name.clone()))
    }

    fn record(&mut self, r: Report) {
        let Some((mac, node)) = self.node_of(&r.who) else {
            tracing::debug!(who = ?r.who, stage = r.stage.name(), "boot stage of an unknown client");
            return;
        };
        let fresh = self
            .boots
            .get(&mac)
            .is_none_or(|b| r.at_ms - b.last_ms > SAME_BOOT.as_millis() as i64);
        // iPXE's DHCP after this boot got its script is the next power-on of a
        // machine whose ROM is iPXE (no firmware DHCP comes first).
        let again = self.boots.get(&mac).is_some_and(|b| b.scripted);
        let new_boot = r.stage == Stage::Dhcp || (r.stage == Stage::IpxeDhcp && (fresh || again));
        if new_boot || fresh {
            self.boots.insert(
                mac,
                Boot {
                    started_ms: r.at_ms,
                    last_ms: r.at_ms,
                    logins: 0,
                    sessions: HashMap::new(),
                    scripted: false,
                },
            );
        }
        let Some(boot) = self.boots.get_mut(&mac) else {
            return;
        };
        boot.last_ms = r.at_ms;
        boot.scripted |= matches!(r.stage, Stage::Script | Stage::IscsiLogin);
        // Two logins per boot are normal (iPXE's, then the OS's): number them,
        // and give a logout the number of the login of its session (`detail`
        // starts with the ISID).
        let session = r.detail.split_whitespace().next().unwrap_or("").to_string();
        let stage = match r.stage {
            Stage::IscsiLogin => {
                boot.logins += 1;
                boot.sessions.insert(session, boot.logins);
                format!("iscsi-login-{}", boot.logins)
            }
            Stage::IscsiLogout => match boot.sessions.get(&session) {
                Some(n) => format!("iscsi-logout-{n}"),
                None => "iscsi-logout".into(),
            },
            s => s.name().to_string(),
        };
        let since = (r.at_ms - boot.started_ms) as f64 / 1000.0;
        tracing::info!("boot {node} {stage} +{since:.2}s {} ({mac})", r.detail);
        if self.feed.receiver_count() > 0 {
            let _ = self.feed.send(Arc::new(StageEvent {
                node: node.clone(),
                mac: mac.to_string(),
                stage: stage.clone(),
                at_ms: r.at_ms,
                boot_started_ms: boot.started_ms,
                new_boot,
                detail: r.detail.clone(),
            }));
        }
        let rec = BootStage {
            stage,
            at_ms: r.at_ms,
            detail: r.detail,
        };
        let stored = self
            .registry
            .with(|s| s.record_stage(&mac.to_string(), &rec, new_boot));
        if let Err(e) = stored {
            tracing::warn!(%node, "recording a boot stage: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::{Registry, Watcher};
    use crate::store::sqlite::SqliteStore;
    use crate::store::{NewImage, NewNode, NodeState, Store};

    type Res<T> = Result<T, Box<dyn std::error::Error>>;
    const MAC: Mac = Mac::new([2, 0, 0, 0, 0, 1]);

    /// A recorder over a registry holding node `n1`, and its watcher.
    fn recorder() -> Res<(Recorder, Watcher)> {
        let mut store = SqliteStore::open_in_memory()?;
        let img = store.add_image(&NewImage {
            name: "deb".into(),
            version: 1,
            path: "/data/images/deb-v1.raw".into(),
            bytes: 1 << 20,
            sha256: "00".repeat(32),
        })?;
        store.add_node(&NewNode {
            name: "n1".into(),
            mac: MAC,
            image_id: img.id,
            template: None,
            ip: Some(std::net::Ipv4Addr::new(192, 0, 2, 50).into()),
            target_iqn: "iqn.t:n1".into(),
            initiator_iqn: "iqn.i:n1".into(),
            chap_user: "n1".into(),
            chap_secret: "0123456789abcdef".into(),
            overlay_path: "/data/overlays/n1.qcow2".into(),
            user_data: None,
        })?;
        store.set_node_state("n1", NodeState::Ready)?;
        let registry = Registry::new(Box::new(store));
        let (watcher, view) = Watcher::start(registry.clone())?;
        let grants = Arc::new(Grants::new());
        Ok((Recorder::new(registry, view, grants), watcher))
    }

    fn stages(rec: &Recorder) -> Res<Vec<String>> {
        let got = rec.registry.with(|s| s.boot_stages(&MAC.to_string()))?;
        Ok(got.into_iter().map(|s| s.stage).collect())
    }

    /// A TFTP client is known by its address: the node's static one, or
    /// the one bootd's DHCP leased its MAC; nobody else's.
    #[test]
    fn a_client_address_is_the_node_holding_it() -> Res<()> {
        let (mut rec, _watcher) = recorder()?;
        let tftp = |ip: [u8; 4], ms| Report {
            who: Who::Addr(std::net::Ipv4Addr::from(ip).into()),
            stage: Stage::Tftp,
            detail: "snponly.efi".into(),
            at_ms: ms,
        };
        rec.record(tftp([192, 0, 2, 50], 1_000));
        assert_eq!(stages(&rec)?, ["tftp"]);
        // Nobody's address: not recorded against the node.
        rec.record(tftp([192, 0, 2, 77], 2_000));
        let at = rec.registry.with(|s| s.boot_stages(&MAC.to_string()))?;
        assert_eq!(at.iter().map(|s| s.at_ms).max(), Some(1_000));
        let now = std::time::Instant::now();
        let until = now + Duration::from_secs(60);
        rec.grants.lease(
            &MAC,
            std::net::Ipv4Addr::new(192, 0, 2, 77).into(),
            until,
            now,
        );
        rec.record(tftp([192, 0, 2, 77], 3_000));
        let at = rec.registry.with(|s| s.boot_stages(&MAC.to_string()))?;
        assert_eq!(at.iter().map(|s| s.at_ms).max(), Some(3_000));
        Ok(())
    }

    /// Live views get each stage as recorded, resolved to its node and
    /// numbered; a client that is no node's gets nothing.
    #[test]
    fn the_feed_carries_each_recorded_stage() -> Res<()> {
        let (mut rec, _watcher) = recorder()?;
        let mut feed = rec.feed.subscribe();
        for (who, stage, ms) in [
            (
                Who::Addr(std::net::Ipv4Addr::new(192, 0, 2, 77).into()),
                Stage::Tftp,
                500,
            ),
            (Who::Mac(MAC), Stage::IpxeDhcp, 1_000),
            (Who::Target("iqn.t:n1".into()), Stage::IscsiLogin, 2_000),
        ] {
            rec.record(Report {
                who,
                stage,
                detail: "400001370000 iPXE".into(),
                at_ms: ms,
            });
        }
        let first = feed.try_recv()?;
        assert_eq!(
            (first.node.as_str(), first.stage.as_str(), first.new_boot),
            ("n1", "ipxe-dhcp", true)
        );
        assert_eq!(first.mac, MAC.to_string());
        let second = feed.try_recv()?;
        assert_eq!(second.stage, "iscsi-login-1");
        assert_eq!((second.at_ms, second.boot_started_ms), (2_000, 1_000));
        assert!(!second.new_boot);
        assert!(feed.try_recv().is_err(), "the unknown client's stage");
        Ok(())
    }

    #[test]
    fn stages_of_one_boot_are_numbered_and_kept() -> Result<(), Box<dyn std::error::Error>> {
        let (mut rec, _watcher) = recorder()?;
        let mac = || Who::Mac(MAC);
        let t = || Who::Target("iqn.t:n1".into());
        let at = |ms| ms;
        for (who, stage, detail, ms) in [
            (mac(), Stage::IpxeDhcp, "192.0.2.100", at(1_000)),
            (mac(), Stage::Script, "sanboot", at(1_500)),
            (t(), Stage::IscsiLogin, "400001370000 iPXE", at(2_000)),
            (t(), Stage::IscsiLogin, "400001370001 OS", at(9_000)),
            (t(), Stage::IscsiLogout, "400001370001 logout", at(20_000)),
        ] {
            rec.record(Report {
                who,
                stage,
                detail: detail.into(),
                at_ms: ms,
            });
        }
        let got = stages(&rec)?;
        assert_eq!(
            got,
            [
                "ipxe-dhcp",
                "script",
                "iscsi-login-1",
                "iscsi-login-2",
                "iscsi-logout-2"
            ]
        );
        // A reboot a minute later of a machine whose ROM is iPXE: no firmware
        // DHCP, but iPXE's DHCP after a served script starts the next boot.
        rec.record(Report {
            who: mac(),
            stage: Stage::IpxeDhcp,
            detail: "192.0.2.100".into(),
            at_ms: 80_000,
        });
        rec.record(Report {
            who: t(),
            stage: Stage::IscsiLogin,
            detail: "400001370002 iPXE".into(),
            at_ms: 81_000,
        });
        let got = stages(&rec)?;
        assert_eq!(got, ["ipxe-dhcp", "iscsi-login-1"]);
        // The next power-on through PXE firmware starts over too.
        rec.record(Report {
            who: mac(),
            stage: Stage::Dhcp,
            detail: "undionly.kpxe".into(),
            at_ms: 90_000,
        });
        assert_eq!(stages(&rec)?.len(), 1);
        Ok(())
    }
}
