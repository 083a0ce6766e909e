//! Decisions on requests built as real clients send them: the helpers
//! here, the tests by topic in the submodules.

mod full;
mod hostile;
mod leases;
mod proxy;

use crate::lease::{Change, Lease, LeaseStore, Leases};
use crate::reply::Destination;
use crate::server::{handle, Mode, NodeLookup, Params};
use crate::{reply::Reply, Request, PXE_PORT, SERVER_PORT};
use bootd_plan::Mac;
use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, OptionCode, UnknownOption};
use dhcproto::{Encodable, Encoder};
use proptest::prelude::*;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex};

type R = Result<(), Box<dyn std::error::Error>>;

const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
const SERVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const NOW: u64 = 1_000_000;
const KNOWN: NodeLookup = NodeLookup::Known { static_ip: None };

fn params(mode: Mode) -> Params {
    Params {
        mode,
        server: SERVER,
        subnet_mask: Ipv4Addr::new(255, 255, 255, 0),
        router: Some(SERVER),
        dns: vec![SERVER],
        lease_secs: 3600,
        http_port: 8080,
        tftp_server: SERVER,
        efi: bootd_ipxe::arch::EfiFlavour::SnpOnly,
        binaries: None,
        relays: Vec::new(),
    }
}

/// Lease storage in memory, shared with the test so it can look inside.
#[derive(Clone, Default)]
pub(crate) struct Mem(Arc<Mutex<HashMap<Mac, Lease>>>);

impl Mem {
    fn load(&self) -> std::io::Result<HashMap<Mac, Lease>> {
        Ok(self
            .0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .clone())
    }
}

impl LeaseStore for Mem {
    fn load(&mut self) -> std::io::Result<HashMap<Mac, Lease>> {
        Mem::load(self)
    }
    fn append(&mut self, changes: &[Change]) -> std::io::Result<()> {
        let mut m = self
            .0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?;
        for (mac, lease) in changes {
            match lease {
                Some(l) => m.insert(*mac, l.clone()),
                None => m.remove(mac),
            };
        }
        Ok(())
    }
    fn rewrite(&mut self, all: &HashMap<Mac, Lease>) -> std::io::Result<()> {
        *self
            .0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))? = all.clone();
        Ok(())
    }
}

fn leases(store: Mem) -> std::io::Result<Leases> {
    Leases::open(
        (Ipv4Addr::new(192, 0, 2, 100), Ipv4Addr::new(192, 0, 2, 102)),
        Box::new(store),
    )
}

fn msg(kind: MessageType, mac: [u8; 6]) -> Message {
    let u = Ipv4Addr::UNSPECIFIED;
    let mut m = Message::new_with_id(0x1234, u, u, u, u, &mac);
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    m
}

fn pxe(m: &mut Message, arch: u16) {
    m.opts_mut().insert(DhcpOption::ClassIdentifier(
        format!("PXEClient:Arch:{arch:05}:UNDI:002001").into_bytes(),
    ));
    m.opts_mut()
        .insert(DhcpOption::ClientSystemArchitecture(arch.into()));
}

fn decode(m: &Message) -> Result<Request, Box<dyn std::error::Error>> {
    let mut buf = Vec::new();
    m.encode(&mut Encoder::new(&mut buf))?;
    Request::decode(&buf).ok_or_else(|| "request did not decode".into())
}

fn src() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68)
}

fn run(
    m: &Message,
    p: &Params,
    l: &mut Leases,
    node: &NodeLookup,
) -> Result<Option<Reply>, Box<dyn std::error::Error>> {
    let r = handle(&decode(m)?, SERVER_PORT, src(), p, Some(&mut *l), node, NOW);
    // As the driver does before it sends anything.
    l.commit()?;
    Ok(r)
}

fn boot_file(m: &Message) -> Option<String> {
    match m.opts().get(OptionCode::BootfileName) {
        Some(DhcpOption::BootfileName(b)) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    }
}

/// The reply as a client decodes it off the wire.
fn wire(r: &Reply) -> Result<Message, Box<dyn std::error::Error>> {
    use dhcproto::{Decodable, Decoder};
    let b = r.to_bytes().ok_or("encode")?;
    Ok(Message::decode(&mut Decoder::new(&b))?)
}
