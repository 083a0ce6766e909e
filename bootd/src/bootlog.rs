//! The boot of every node, stage by stage: DHCP, TFTP, iPXE's DHCP, the
//! script, iSCSI logins and logouts. Serve's components report what they
//! did with what they know (a MAC, a client address, a target name); one
//! thread resolves that to a node, logs one line per stage with the time
//! since the boot began, and keeps the last boot's stages in the registry
//! for `node show`. Reporting never blocks serving: when the queue is full
//! a stage is dropped from the record (it was still served).

use crate::store::{BootStage, Store};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
            Self::IscsiLogin => "iscsi-login",
            Self::IscsiLogout => "iscsi-logout",
        }
    }
}

/// Who a stage happened to, as the reporting component knows it.
#[derive(Debug, Clone)]
pub enum Who {
    Mac(String),
    /// A client address (TFTP): found in the kernel's neighbour table.
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
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl BootLog {
    /// Starts the recorder thread; it ends when every handle is dropped.
    pub fn start(store: Box<dyn Store>) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("bootlog".into())
            .spawn(move || Recorder::new(store).run(rx))?;
        Ok(Self { tx })
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
    store: Box<dyn Store>,
    generation: Option<u64>,
    /// Node name and MAC by target IQN, and names by MAC.
    by_target: HashMap<String, (String, String)>,
    names: HashMap<String, String>,
    boots: HashMap<String, Boot>,
}

impl Recorder {
    fn new(store: Box<dyn Store>) -> Self {
        Self {
            store,
            generation: None,
            by_target: HashMap::new(),
            names: HashMap::new(),
            boots: HashMap::new(),
        }
    }

    fn run(mut self, rx: Receiver<Report>) {
        while let Ok(r) = rx.recv() {
            self.refresh();
            self.record(r);
        }
    }

    fn refresh(&mut self) {
        let Ok(g) = self.store.generation() else {
            return;
        };
        if self.generation == Some(g) {
            return;
        }
        if let Ok(nodes) = self.store.nodes() {
            self.by_target = nodes
                .iter()
                .map(|n| (n.target_iqn.clone(), (n.name.clone(), n.mac.clone())))
                .collect();
            self.names = nodes.into_iter().map(|n| (n.mac, n.name)).collect();
            self.generation = Some(g);
        }
    }

    fn mac_of(&self, who: &Who) -> Option<String> {
        match who {
            Who::Mac(m) => Some(m.clone()),
            Who::Target(t) => self.by_target.get(t).map(|(_, mac)| mac.clone()),
            Who::Addr(IpAddr::V4(ip)) => {
                let table = std::fs::read_to_string("/proc/net/arp").ok()?;
                mac_for(&table, &ip.to_string())
            }
            Who::Addr(IpAddr::V6(_)) => None,
        }
    }

    fn record(&mut self, r: Report) {
        let Some(mac) = self.mac_of(&r.who) else {
            tracing::debug!(who = ?r.who, stage = r.stage.name(), "boot stage of an unknown client");
            return;
        };
        let Some(node) = self.names.get(&mac).cloned() else {
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
                mac.clone(),
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
        let rec = BootStage {
            stage,
            at_ms: r.at_ms,
            detail: r.detail,
        };
        if let Err(e) = self.store.record_stage(&mac, &rec, new_boot) {
            tracing::warn!(%node, "recording a boot stage: {e}");
        }
    }
}

/// The MAC of `ip` in `/proc/net/arp` text (complete entries only).
fn mac_for(table: &str, ip: &str) -> Option<String> {
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // IP address, HW type, Flags (0x2 = complete), HW address, Mask, Device.
        (f.len() >= 4 && f[0] == ip && f[2] != "0x0").then(|| f[3].to_ascii_lowercase())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;

    #[test]
    fn neighbour_table_lookup() {
        let table =
            "IP address       HW type     Flags       HW address            Mask     Device\n\
                     192.0.2.100      0x1         0x2         52:54:00:AB:00:01     *        br0\n\
                     192.0.2.101      0x1         0x0         00:00:00:00:00:00     *        br0\n";
        assert_eq!(
            mac_for(table, "192.0.2.100").as_deref(),
            Some("52:54:00:ab:00:01")
        );
        assert_eq!(mac_for(table, "192.0.2.101"), None);
        assert_eq!(mac_for(table, "192.0.2.1"), None);
    }

    #[test]
    fn stages_of_one_boot_are_numbered_and_kept() -> Result<(), Box<dyn std::error::Error>> {
        let store = SqliteStore::open_in_memory()?;
        let mut rec = Recorder::new(Box::new(store));
        rec.names.insert("02:00:00:00:00:01".into(), "n1".into());
        rec.by_target
            .insert("iqn.t:n1".into(), ("n1".into(), "02:00:00:00:00:01".into()));
        rec.generation = Some(u64::MAX);
        let mac = || Who::Mac("02:00:00:00:00:01".into());
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
        let got: Vec<String> = rec
            .store
            .boot_stages("02:00:00:00:00:01")?
            .into_iter()
            .map(|s| s.stage)
            .collect();
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
        let got: Vec<String> = rec
            .store
            .boot_stages("02:00:00:00:00:01")?
            .into_iter()
            .map(|s| s.stage)
            .collect();
        assert_eq!(got, ["ipxe-dhcp", "iscsi-login-1"]);
        // The next power-on through PXE firmware starts over too.
        rec.record(Report {
            who: mac(),
            stage: Stage::Dhcp,
            detail: "undionly.kpxe".into(),
            at_ms: 90_000,
        });
        assert_eq!(rec.store.boot_stages("02:00:00:00:00:01")?.len(), 1);
        Ok(())
    }
}
