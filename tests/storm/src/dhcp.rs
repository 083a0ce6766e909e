//! The DHCP client side of every simulated node: one socket on port 68
//! bound to the storm's veth, replies handed to the waiting node by xid.
//! A node does DORA as a PXE BIOS ROM, later as iPXE, and finally RELEASE.

use anyhow::{anyhow, bail, Context, Result};
use dhcproto::v4::{
    Architecture, DhcpOption, Flags, Message, MessageType, Opcode, OptionCode, UnknownOption,
};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UdpSocket;

/// Told of every retransmission and restart: what happened, and the
/// server the message was for when it named one.
pub type Retry<'a> = dyn FnMut(String, Option<Ipv4Addr>) + Send + 'a;
use tokio::sync::mpsc;

/// What PXE ROMs (and iPXE after them) send as vendor class on BIOS.
const VENDOR_CLASS: &[u8] = b"PXEClient:Arch:00000:UNDI:002001";
/// iPXE's option 175 (its feature list): a few of the flags it sends.
const IPXE_FEATURES: [u8; 9] = [0x13, 1, 1, 0x11, 1, 1, 0x15, 1, 1];
/// Waits per try; a try that times out is retransmitted (RFC 2131 4.1 backoff).
const TRIES: [Duration; 4] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(4),
];

type Waiters = Arc<Mutex<HashMap<u32, mpsc::UnboundedSender<Message>>>>;

pub struct Dhcp {
    sock: Arc<UdpSocket>,
    waiters: Waiters,
    recv_task: tokio::task::JoinHandle<()>,
}

/// What a DORA ended with.
#[derive(Debug, Clone)]
pub struct Lease {
    pub ip: Ipv4Addr,
    pub server_id: Ipv4Addr,
    pub next_server: Ipv4Addr,
    pub boot_file: String,
}

impl Drop for Dhcp {
    fn drop(&mut self) {
        self.recv_task.abort();
    }
}

/// One reply's xid slot: removed from the table when dropped.
struct Slot<'a> {
    xid: u32,
    rx: mpsc::UnboundedReceiver<Message>,
    waiters: &'a Waiters,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.xid);
    }
}

impl Dhcp {
    /// Binds 0.0.0.0:68 on `ifname` and starts the receiver.
    pub fn bind(ifname: &str) -> Result<Self> {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_reuse_address(true)?;
        s.set_broadcast(true)?;
        s.bind_device(Some(ifname.as_bytes()))
            .with_context(|| format!("SO_BINDTODEVICE {ifname}"))?;
        // A burst of replies for every node at once.
        s.set_recv_buffer_size(8 << 20)?;
        s.set_nonblocking(true)?;
        s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 68)).into())
            .context("binding the DHCP client port 68")?;
        let sock = Arc::new(UdpSocket::from_std(s.into())?);
        let waiters: Waiters = Arc::default();
        let recv_task = tokio::spawn(receive(sock.clone(), waiters.clone()));
        Ok(Self {
            sock,
            waiters,
            recv_task,
        })
    }

    fn slot(&self) -> Slot<'_> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut w = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        let mut xid: u32 = rand::random();
        while w.contains_key(&xid) {
            xid = rand::random();
        }
        w.insert(xid, tx);
        Slot {
            xid,
            rx,
            waiters: &self.waiters,
        }
    }

    async fn send(&self, msg: &Message, to: SocketAddrV4) -> Result<()> {
        let mut buf = Vec::with_capacity(576);
        msg.encode(&mut Encoder::new(&mut buf))?;
        self.sock.send_to(&buf, to).await?;
        Ok(())
    }

    /// Sends `msg` and waits for a reply of one of `kinds`, retransmitting
    /// on timeout. Every timeout is passed to `retry` (an error to count)
    /// with the server the message was for, if it names one.
    async fn exchange(
        &self,
        slot: &mut Slot<'_>,
        msg: &Message,
        to: SocketAddrV4,
        kinds: &[MessageType],
        retry: &mut Retry<'_>,
    ) -> Result<Message> {
        let server = match msg.opts().get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
            _ => None,
        };
        let what = msg.opts().msg_type().map_or_else(
            || "message".to_string(),
            |k| format!("{k:?}").to_uppercase(),
        );
        for (n, wait) in TRIES.iter().enumerate() {
            self.send(msg, to).await?;
            let deadline = tokio::time::Instant::now() + *wait;
            loop {
                match tokio::time::timeout_at(deadline, slot.rx.recv()).await {
                    Ok(Some(m)) if m.opts().msg_type().is_some_and(|k| kinds.contains(&k)) => {
                        return Ok(m)
                    }
                    // A late answer to an earlier message of this exchange.
                    Ok(Some(_)) => continue,
                    Ok(None) => bail!("DHCP receiver stopped"),
                    Err(_) => break,
                }
            }
            if n + 1 < TRIES.len() {
                retry(
                    format!("no answer to {what} within {wait:?}, retransmitted"),
                    server,
                );
            }
        }
        bail!("no answer to {what} after {} tries", TRIES.len())
    }

    /// DISCOVER, OFFER, REQUEST, ACK for `mac`, as PXE firmware (`ipxe`
    /// false) or as iPXE. A NAK restarts the exchange once; a REQUEST
    /// nobody answers (its server died after its OFFER) restarts it too,
    /// as a client back in INIT state does.
    pub async fn dora(&self, mac: [u8; 6], ipxe: bool, retry: &mut Retry<'_>) -> Result<Lease> {
        let broadcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
        let mut naks = 0;
        for attempt in 0..3 {
            let mut slot = self.slot();
            let discover = request(slot.xid, mac, MessageType::Discover, ipxe);
            let offer = self
                .exchange(
                    &mut slot,
                    &discover,
                    broadcast,
                    &[MessageType::Offer],
                    retry,
                )
                .await?;
            let ip = offer.yiaddr();
            if ip.is_unspecified() {
                bail!("OFFER without an address");
            }
            let server_id = server_id(&offer).context("OFFER without server identifier")?;
            let mut req = request(slot.xid, mac, MessageType::Request, ipxe);
            req.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
            req.opts_mut()
                .insert(DhcpOption::ServerIdentifier(server_id));
            let ack = match self
                .exchange(
                    &mut slot,
                    &req,
                    broadcast,
                    &[MessageType::Ack, MessageType::Nak],
                    retry,
                )
                .await
            {
                Ok(a) => a,
                Err(e) if attempt < 2 => {
                    retry(format!("{e:#}, starting over"), Some(server_id));
                    continue;
                }
                Err(e) => return Err(e),
            };
            if ack.opts().msg_type() == Some(MessageType::Nak) {
                let text = nak_text(&ack);
                if naks == 0 && attempt < 2 {
                    naks += 1;
                    retry(format!("NAK for {ip}{text}, starting over"), None);
                    continue;
                }
                bail!("NAK for {ip}{text}");
            }
            if ack.yiaddr() != ip {
                bail!("ACK for {} after an OFFER of {ip}", ack.yiaddr());
            }
            return Ok(Lease {
                ip,
                server_id,
                next_server: ack.siaddr(),
                boot_file: boot_file(&ack).context("ACK without a boot file")?,
            });
        }
        Err(anyhow!("DHCP gave up"))
    }

    /// RELEASE: the address goes back to the pool (no answer is sent).
    /// Sent as a bound client sends it: from its address and port 68,
    /// unicast to the server that granted the lease.
    pub async fn release(&self, mac: [u8; 6], lease: &Lease) -> Result<()> {
        let slot = self.slot();
        let mut m = Message::new(
            lease.ip,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &mac,
        );
        m.set_xid(slot.xid);
        m.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Release));
        m.opts_mut()
            .insert(DhcpOption::ServerIdentifier(lease.server_id));
        let mut buf = Vec::with_capacity(576);
        m.encode(&mut Encoder::new(&mut buf))?;
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        // Beside the shared 0.0.0.0:68 socket, which also set it.
        s.set_reuse_address(true)?;
        s.bind(&SocketAddr::from((lease.ip, 68)).into())
            .with_context(|| format!("binding {}:68 for RELEASE", lease.ip))?;
        s.send_to(&buf, &SocketAddr::from((lease.server_id, 67)).into())
            .with_context(|| format!("RELEASE to {}", lease.server_id))?;
        Ok(())
    }
}

/// A BOOTREQUEST as a PXE BIOS ROM sends it, or iPXE with its user class
/// and option 175.
fn request(xid: u32, mac: [u8; 6], kind: MessageType, ipxe: bool) -> Message {
    let mut m = Message::new(
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &mac,
    );
    m.set_xid(xid).set_flags(Flags::default().set_broadcast());
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(kind));
    o.insert(DhcpOption::MaxMessageSize(1472));
    o.insert(DhcpOption::ClassIdentifier(VENDOR_CLASS.to_vec()));
    o.insert(DhcpOption::ClientSystemArchitecture(
        Architecture::Intelx86PC,
    ));
    o.insert(DhcpOption::ClientNetworkInterface(1, 2, 1));
    let mut uuid = vec![0u8; 17];
    uuid[11..].copy_from_slice(&mac);
    o.insert(DhcpOption::ClientMachineIdentifier(uuid));
    o.insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
        OptionCode::VendorExtensions,
        OptionCode::ClassIdentifier,
        OptionCode::TFTPServerName,
        OptionCode::BootfileName,
    ]));
    if ipxe {
        o.insert(DhcpOption::UserClass(b"iPXE".to_vec()));
        o.insert(DhcpOption::Unknown(UnknownOption::new(
            OptionCode::Unknown(175),
            IPXE_FEATURES.to_vec(),
        )));
    }
    m
}

fn server_id(m: &Message) -> Option<Ipv4Addr> {
    match m.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    }
}

/// Option 67, else the file field.
fn boot_file(m: &Message) -> Option<String> {
    if let Some(DhcpOption::BootfileName(f)) = m.opts().get(OptionCode::BootfileName) {
        return Some(String::from_utf8_lossy(f).into_owned());
    }
    let f = m.fname_str()?.ok()?;
    (!f.is_empty()).then(|| f.to_string())
}

fn nak_text(m: &Message) -> String {
    match m.opts().get(OptionCode::Message) {
        Some(DhcpOption::Message(t)) => format!(" ({t})"),
        _ => String::new(),
    }
}

/// Hands each BOOTREPLY to the node waiting for its xid.
async fn receive(sock: Arc<UdpSocket>, waiters: Waiters) {
    let mut buf = vec![0u8; 2048];
    loop {
        let len = match sock.recv_from(&mut buf).await {
            Ok((len, _)) => len,
            Err(_) => {
                // ICMP errors and the like: not a reason to stop listening.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Some(bytes) = buf.get(..len) else {
            continue;
        };
        let Ok(m) = Message::decode(&mut Decoder::new(bytes)) else {
            continue;
        };
        if m.opcode() != Opcode::BootReply {
            continue;
        }
        let w = waiters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = w.get(&m.xid()) {
            let _ = tx.send(m);
        }
    }
}
