//! `--dhcp full` on three servers sharing one PostgreSQL registry: a DORA
//! load against all three at once, then no address bound twice, every
//! bound address a `bound` row in the registry, and every server admitting
//! every node's script fetch from its address (each server sees every
//! lease, whichever server granted it). Network namespaces on one bridge
//! (192.0.2.0/24); needs root and PostgreSQL (skipped with a reason
//! without them, unless `BOOTD_E2E=1`).

use crate::common::*;
use bootd_tests::dhcp_client::{Client, Message, ACK, DISCOVER, NAK, OFFER, REQUEST};
use bootd_tests::diskless::Lan;
use bootd_tests::netns::NetNs;
use bootd_tests::postgres::shared;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

const SERVERS: u8 = 3;
const CLIENTS: u8 = 48;
/// 64 addresses for 48 clients (and the broadcast clients' extra offers):
/// the servers' searches meet, and they race for the same addresses.
const POOL: &str = "192.0.2.100-192.0.2.163";
/// The whole load, retries included, ends within this.
const LOAD_LIMIT: Duration = Duration::from_secs(60);
/// A client that heard nothing for this long starts over.
const RETRY_AFTER: Duration = Duration::from_millis(1500);
const TRIES: u32 = 20;

fn mac(i: u8) -> [u8; 6] {
    [2, 0, 0, 0, 3, i]
}

fn mac_text(i: u8) -> String {
    mac(i)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Selecting,
    Requesting,
    Bound(Ipv4Addr, Ipv4Addr),
}

struct Dora {
    phase: Phase,
    tries: u32,
    sent: Instant,
    naks: u32,
}

/// Each bound client's address and the server that ACKed it, by client.
type Bound = BTreeMap<u8, (Ipv4Addr, Ipv4Addr)>;

fn xid(i: u8, tries: u32) -> u32 {
    (tries << 8) | u32::from(i)
}

/// Every fourth client broadcasts (all servers hear it); the others reach
/// one server each, as through a relay or across segments: then the
/// servers see different requests in different orders and, each on its
/// own table, would pick the same first free addresses for different
/// clients.
fn send(c: &Client, i: u8, m: &Message) -> anyhow::Result<()> {
    if i % 4 == 3 {
        return c.broadcast(m);
    }
    let server = Ipv4Addr::new(192, 0, 2, i % SERVERS + 1);
    c.send(m, SocketAddrV4::new(server, 67))
}

/// Every client's DISCOVER at once, then REQUESTs for the first offers,
/// until all are bound or [`LOAD_LIMIT`]. Returns each client's (address,
/// server) and the NAKs seen.
fn dora(c: &Client) -> anyhow::Result<(Bound, u32)> {
    let start = Instant::now();
    let mut clients: Vec<Dora> = (0..CLIENTS)
        .map(|_| Dora {
            phase: Phase::Selecting,
            tries: 0,
            sent: start,
            naks: 0,
        })
        .collect();
    for i in 0..CLIENTS {
        send(c, i, &Message::client(DISCOVER, mac(i), xid(i, 0)))?;
    }
    while start.elapsed() < LOAD_LIMIT {
        if clients.iter().all(|d| matches!(d.phase, Phase::Bound(..))) {
            break;
        }
        if let Some(m) = c.next_reply(Duration::from_millis(100))? {
            let i = (m.xid & 0xff) as u8;
            let Some(d) = clients.get_mut(usize::from(i)) else {
                continue;
            };
            if m.xid != xid(i, d.tries) || m.chaddr != mac(i) {
                continue;
            }
            match (d.phase, m.kind()) {
                (Phase::Selecting, Some(OFFER)) => {
                    let sid = m.opt(54).unwrap_or_default().to_vec();
                    send(
                        c,
                        i,
                        &Message::client(REQUEST, mac(i), m.xid)
                            .with(50, &m.yiaddr.octets())
                            .with(54, &sid),
                    )?;
                    d.phase = Phase::Requesting;
                    d.sent = Instant::now();
                }
                (Phase::Requesting, Some(ACK)) => {
                    let sid = m.opt_ip(54).unwrap_or(Ipv4Addr::UNSPECIFIED);
                    d.phase = Phase::Bound(m.yiaddr, sid);
                }
                (Phase::Requesting, Some(NAK)) => {
                    d.naks += 1;
                    d.sent = start - RETRY_AFTER;
                }
                _ => {}
            }
        }
        // Start over whoever waited too long (a lost claim drops the
        // OFFER; a NAK ends the exchange).
        for (i, d) in clients.iter_mut().enumerate() {
            if !matches!(d.phase, Phase::Bound(..)) && d.sent.elapsed() >= RETRY_AFTER {
                if d.tries >= TRIES {
                    anyhow::bail!("client {i}: no lease after {TRIES} tries");
                }
                d.tries += 1;
                d.phase = Phase::Selecting;
                d.sent = Instant::now();
                let i = i as u8;
                send(c, i, &Message::client(DISCOVER, mac(i), xid(i, d.tries)))?;
            }
        }
    }
    let naks = clients.iter().map(|d| d.naks).sum();
    let bound: Bound = clients
        .iter()
        .enumerate()
        .filter_map(|(i, d)| match d.phase {
            Phase::Bound(ip, sid) => Some((i as u8, (ip, sid))),
            _ => None,
        })
        .collect();
    Ok((bound, naks))
}

#[test]
fn three_full_dhcp_servers_never_bind_one_address_twice() -> Result {
    let name = "cli::dhcp_leases::three_full_dhcp_servers_never_bind_one_address_twice";
    if !bootd_tests::env::Needs::new()
        .root()
        .tool("ip", "iproute2")
        .tool("curl", "curl")
        .met(name)
    {
        return Ok(());
    }
    let Some(pg) = shared(name) else {
        return Ok(());
    };
    // The Unix socket: the serves in their namespaces cannot reach the
    // host's loopback.
    let (env, db) = on_postgres_with_image(pg, Via::Unix, 8 << 20)?;
    // Registered nodes: their scripts are what the servers admit only
    // from the address a lease gave them.
    for i in 0..CLIENTS {
        env.ok(&[
            "node",
            "add",
            &mac_text(i),
            "--image",
            "deb",
            "--name",
            &format!("d{i:02}"),
        ])?;
    }

    let lan_ns = NetNs::new()?;
    let lan = Lan::new(&lan_ns, "br0", "192.0.2.254/24")?;
    let mut hosts = Vec::new();
    for n in 1..=SERVERS {
        hosts.push(lan.add_host(&format!("p{n}"), "eth0", &format!("192.0.2.{n}/24"))?);
    }
    let client_ns = lan.add_host("pc", "eth0", "192.0.2.250/24")?;
    let mut serves = Vec::new();
    for (n, ns) in (1..=SERVERS).zip(&hosts) {
        let mut cmd = ns.command(env!("CARGO_BIN_EXE_bootd"));
        cmd.env("BOOTD_DATA_DIR", env.data())
            .env("BOOTD_LOG", "info")
            .envs(env.vars.iter().map(|(k, v)| (k, v)))
            .args([
                "serve",
                "--server-id",
                &format!("s{n}"),
                "--listen-ip",
                &format!("192.0.2.{n}"),
                "--dhcp",
                "full",
                "--pool",
                POOL,
                "--ipv6-ra",
                "off",
                "--iscsi-port",
                "0",
                "--http-port",
                "0",
                "--tftp-port",
                "0",
            ]);
        serves.push(Serve::start_cmd(cmd)?);
    }

    let t = Instant::now();
    let (bound, naks) = client_ns.run_inside(|| {
        let c = Client::bind("eth0")?;
        dora(&c)
    })?;
    let took = t.elapsed();
    let by_server: BTreeMap<Ipv4Addr, usize> = bound.values().fold(BTreeMap::new(), |mut m, v| {
        *m.entry(v.1).or_default() += 1;
        m
    });
    println!(
        "DORA: {} of {CLIENTS} clients bound by {SERVERS} servers in {:.2} s, {naks} NAKs, per server {by_server:?}",
        bound.len(),
        took.as_secs_f64()
    );
    assert_eq!(bound.len(), usize::from(CLIENTS), "every client bound");

    // No address bound twice.
    let addresses: BTreeSet<Ipv4Addr> = bound.values().map(|v| v.0).collect();
    assert_eq!(
        addresses.len(),
        bound.len(),
        "an address bound twice: {bound:?}"
    );

    // The registry holds exactly these leases, bound.
    let mut c = pg.connect(&db)?;
    let rows: BTreeMap<String, String> = c
        .query("SELECT address, mac FROM leases WHERE state = 'bound'", &[])?
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect();
    let want: BTreeMap<String, String> = bound
        .iter()
        .map(|(i, v)| (v.0.to_string(), mac_text(*i)))
        .collect();
    assert_eq!(rows, want);

    // Every server admits every node's script fetch from its address:
    // each one sees the leases the others granted (within its sync).
    for (i, (ip, _)) in &bound {
        client_ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        for (n, s) in (1..=SERVERS).zip(&serves) {
            let url = format!(
                "http://192.0.2.{n}:{}/boot/{}.ipxe",
                s.http,
                mac_text(*i).replace(':', "-")
            );
            let mut curl = client_ns.command("curl");
            curl.args([
                "-sf",
                "--max-time",
                "10",
                "--retry",
                "3",
                "--retry-all-errors",
            ])
            .args(["--interface", &ip.to_string(), &url]);
            let out = run(curl)?;
            assert!(
                out.status.success(),
                "server s{n} refused d{i:02}'s script from {ip}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    for s in serves {
        s.stop()?;
    }
    Ok(())
}
