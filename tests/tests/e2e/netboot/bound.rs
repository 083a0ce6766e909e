//! Issue 11 on a wire: with `--dhcp full`, a node's script (it carries the node's
//! CHAP secret) goes to the address bootd leased that node's MAC, and to no other
//! machine on the boot network, registered or not; relayed requests naming a relay
//! bootd was not told about get no answer.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bootd_tests::dhcp_client::{Message, DISCOVER};
use bootd_tests::serve::ServeOptions;

use super::lab::{self, Lab, SERVER_IP};

const POOL: &str = "192.0.2.100-192.0.2.120";
const NODE_MAC: &str = "52:54:00:e2:0d:01";
const OTHER_MAC: &str = "52:54:00:e2:0d:02";
const STRANGER_MAC: &str = "52:54:00:e2:0d:03";
const RELAY: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 77);

#[test]
fn scripts_go_to_the_leased_address_only() -> Result<()> {
    let test = "scripts_go_to_the_leased_address_only";
    if !lab::can_run(test, &[("curl", "curl")]) {
        return Ok(());
    }
    let start = Instant::now();
    let lab = Lab::new()?;
    let node = lab.data.add_node(NODE_MAC, "golden", "bound1")?;
    lab.data.add_node(OTHER_MAC, "golden", "bound2")?;
    let opts = ServeOptions {
        netns: Some(&lab.server_ns),
        listen_ip: SERVER_IP.to_string(),
        extra: ["--dhcp", "full", "--interface", lab::BRIDGE, "--pool", POOL]
            .map(String::from)
            .to_vec(),
    };
    let serve = lab.data.serve_with(&opts)?;
    let url = format!(
        "http://{SERVER_IP}:{}/boot/{}.ipxe",
        serve.http_port(),
        NODE_MAC.replace(':', "-")
    );

    // The node: iPXE's DHCP, then its script from the leased address.
    let machine = lab.machine(NODE_MAC)?;
    let lease = lab
        .udhcpc(&machine, "node", lab::IPXE)
        .with_context(|| serve.log())?;
    let (status, body) = lab.http_get(&machine, &url)?;
    ensure!(
        status == 200 && String::from_utf8_lossy(&body).contains(&node.chap_secret),
        "{url} from the node's lease {:?}: {status}\n{}",
        lease.ip(),
        serve.log()
    );

    // Another registered node and an unregistered machine, each with a lease of
    // its own: 403, no secret.
    for (mac, label) in [(OTHER_MAC, "other"), (STRANGER_MAC, "stranger")] {
        let ns = lab.machine(mac)?;
        let l = lab
            .udhcpc(&ns, label, lab::IPXE)
            .with_context(|| serve.log())?;
        ensure!(l.ip()? != lease.ip()?, "{label} got the node's address");
        let (status, body) = lab.http_get(&ns, &url)?;
        ensure!(
            status == 403 && !String::from_utf8_lossy(&body).contains(&node.chap_secret),
            "{label} at {:?} fetched {url}: {status}\n{}",
            l.ip(),
            serve.log()
        );
    }

    println!(
        "{test}: node {}: 200; other node and stranger: 403",
        lease.ip()?
    );

    // After a restart, the lease (from the lease file) still admits the node,
    // before any new DHCP exchange.
    serve.stop()?;
    let serve = lab.data.serve_with(&opts)?;
    let url = format!(
        "http://{SERVER_IP}:{}/boot/{}.ipxe",
        serve.http_port(),
        NODE_MAC.replace(':', "-")
    );
    let (status, _) = lab.http_get(&machine, &url)?;
    ensure!(
        status == 200,
        "after a restart, {url} from the node's lease: {status}\n{}",
        serve.log()
    );

    // A relayed DISCOVER naming a relay nobody configured (here the sender
    // itself, listening where a relay would): no answer at all. Any host could
    // otherwise aim bootd's replies at any address.
    let relay = lab.machine("52:54:00:e2:0d:04")?;
    relay.ip(&["addr", "add", &format!("{RELAY}/24"), "dev", lab::NIC])?;
    let answered = relay.run_inside(|| -> Result<Option<SocketAddr>> {
        let sock = UdpSocket::bind((RELAY, 67)).context("binding the relay port 67")?;
        let mut m = Message::client(DISCOVER, [0x52, 0x54, 0, 0xe2, 0x0d, 0x05], 0x1b0d);
        m.giaddr = RELAY;
        sock.send_to(&m.encode(), (lab::SERVER, 67))?;
        sock.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut buf = [0u8; 1500];
        Ok(sock.recv_from(&mut buf).ok().map(|(_, from)| from))
    })?;
    ensure!(
        answered.is_none(),
        "an unconfigured relay got an answer from {answered:?}\n{}",
        serve.log()
    );
    serve.stop()?;
    println!("{test}: passed in {:.1}s", start.elapsed().as_secs_f64());
    Ok(())
}
