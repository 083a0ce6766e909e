//! DHCP's node lookup with the real fleet view, enroller and registry.

use super::*;
use crate::datadir::DataDir;
use crate::fleet::enrol::{self, Policy};
use crate::fleet::{Registry, Watcher};
use crate::store::{NewImage, NodeState};
use dhcproto::v4::{DhcpOption, Message, MessageType};
use dhcproto::{Encodable, Encoder};

type R = std::result::Result<(), Box<dyn std::error::Error>>;
type Res<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn request(mac: [u8; 6], pxe: bool) -> Res<Request> {
    let u = Ipv4Addr::UNSPECIFIED;
    let mut m = Message::new_with_id(7, u, u, u, u, &mac);
    m.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Discover));
    if pxe {
        m.opts_mut().insert(DhcpOption::ClassIdentifier(
            b"PXEClient:Arch:00007:UNDI:003016".to_vec(),
        ));
        m.opts_mut()
            .insert(DhcpOption::ClientSystemArchitecture(7u16.into()));
    }
    let mut buf = Vec::new();
    m.encode(&mut Encoder::new(&mut buf))?;
    Request::decode(&buf).ok_or_else(|| "did not decode".into())
}

/// A data directory with image `golden` and template `lab` on it.
fn data_dir() -> Res<(tempfile::TempDir, DataDir)> {
    let tmp = tempfile::tempdir()?;
    let dd = DataDir::open(tmp.path())?;
    let path = dd.image_file("golden", 1);
    std::fs::write(&path, vec![0u8; 1 << 20])?;
    let mut s = dd.store()?;
    s.add_image(&NewImage {
        name: "golden".into(),
        version: 1,
        path,
        bytes: 1 << 20,
        sha256: "00".repeat(32),
    })?;
    s.add_template("lab", "golden", None, None)?;
    Ok((tmp, dd))
}

/// DHCP's lookup wired to a real enroller and watcher on `dd`.
fn nodes(dd: &DataDir, policy: Policy, cap: u32) -> Res<(Nodes, Watcher)> {
    let registry = Registry::new(dd.store()?);
    let (watcher, view) = Watcher::start(registry.clone())?;
    let enroller = enrol::start(policy, cap, dd.clone(), registry, watcher.clone())?;
    Ok((Nodes::new(view, Some(enroller)), watcher))
}

/// Waits (bounded) for the enroller thread to have done its work.
fn eventually(what: &str, mut ok: impl FnMut() -> Res<bool>) -> R {
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if ok()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("timed out waiting for {what}").into())
}

fn lookup(n: &mut Nodes, req: &Request, now: u64) -> NodeLookup {
    let (snap, _) = n.refresh();
    n.lookup(&snap, req, now)
}

#[test]
fn discover_records_booting_machines_once_a_minute() -> R {
    let (_tmp, dd) = data_dir()?;
    let (mut n, _w) = nodes(&dd, Policy::Discover, 256)?;
    let pxe = request([2, 0, 0, 0, 0, 1], true)?;
    assert_eq!(lookup(&mut n, &pxe, 100), NodeLookup::Unknown);
    assert_eq!(lookup(&mut n, &pxe, 101), NodeLookup::Unknown);
    // A laptop asking for an address is not a machine to adopt.
    lookup(&mut n, &request([2, 0, 0, 0, 0, 2], false)?, 102);
    eventually("the record", || Ok(!dd.store()?.discovered()?.is_empty()))?;
    // A flood of fresh MACs is cut off at the per-minute budget.
    n.window.1 = NEW_PER_MINUTE;
    lookup(&mut n, &request([2, 0, 0, 0, 0, 9], true)?, 103);
    std::thread::sleep(Duration::from_millis(200));
    let found = dd.store()?.discovered()?;
    assert_eq!(found.len(), 1);
    assert_eq!(printable(b"PXE\x1b[2J\nx"), "PXE?[2J?x");
    assert_eq!(found[0].mac, "02:00:00:00:00:01");
    assert_eq!((found[0].arch, found[0].requests), (Some(7), 1));
    Ok(())
}

#[test]
fn default_template_registers_unknown_machines_for_their_next_request() -> R {
    let (_tmp, dd) = data_dir()?;
    let policy = Policy::Default("lab".into());
    let (mut n, _w) = nodes(&dd, policy, 256)?;
    let pxe = request([2, 0, 0, 0, 0, 3], true)?;
    // Off the DHCP path: this request is not held up by the registry write.
    assert_eq!(lookup(&mut n, &pxe, 100), NodeLookup::Unknown);
    eventually("the node in the snapshot", || {
        Ok(lookup(&mut n, &pxe, 101) == NodeLookup::Known { static_ip: None })
    })?;
    let node = dd.store()?.node("02:00:00:00:00:03")?;
    assert_eq!(node.state, NodeState::Ready);
    assert_eq!(node.template.as_deref(), Some("lab"));
    assert!(node.overlay_path.is_file());
    // Plain DHCP clients are left alone.
    assert_eq!(
        lookup(&mut n, &request([2, 0, 0, 0, 0, 4], false)?, 102),
        NodeLookup::Unknown
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(dd.store()?.nodes()?.len(), 1);
    Ok(())
}

#[test]
fn the_cap_stops_discovery_and_registration() -> R {
    let (_tmp, dd) = data_dir()?;
    let (mut n, _w) = nodes(&dd, Policy::Discover, 2)?;
    for i in 1..=5 {
        lookup(&mut n, &request([2, 0, 0, 0, 1, i], true)?, 100);
    }
    eventually("two records", || Ok(dd.store()?.discovered()?.len() == 2))?;
    // A MAC already recorded is still updated (not a newcomer).
    n.recent.clear();
    lookup(&mut n, &request([2, 0, 0, 0, 1, 1], true)?, 200);
    eventually("the update", || {
        Ok(dd
            .store()?
            .discovered()?
            .iter()
            .any(|x| x.mac == "02:00:00:00:01:01" && x.last_seen == 200))
    })?;
    assert_eq!(dd.store()?.discovered()?.len(), 2);

    let policy = || Policy::Default("lab".into());
    let (mut n, _w) = nodes(&dd, policy(), 3)?;
    for i in 1..=6 {
        lookup(&mut n, &request([2, 0, 0, 0, 2, i], true)?, 100);
    }
    eventually("three nodes", || Ok(dd.store()?.nodes()?.len() == 3))?;
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(dd.store()?.nodes()?.len(), 3);
    // Across a restart too: the registry's size counts, not this run's.
    let (mut n, _w) = nodes(&dd, policy(), 3)?;
    lookup(&mut n, &request([2, 0, 0, 0, 2, 9], true)?, 100);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(dd.store()?.nodes()?.len(), 3);
    Ok(())
}
