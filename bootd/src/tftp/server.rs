//! The TFTP driver: requests arrive on the well-known socket; each read
//! runs as its own task on its own ephemeral socket (its TID, RFC 1350),
//! driving a [`Transfer`] with the socket and the clock.

use super::files::Root;
use super::packet::{self, ErrorCode, Packet, Request};
use super::transfer::{Limits, Outcome, Transfer};
use crate::events::{Event, Events};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;

/// Transfers running at once; more requests get "server busy".
pub const DEFAULT_MAX_TRANSFERS: usize = 512;
/// Transfers one client address may run at once unless told otherwise
/// (`serve --per-source`); a PXE ROM needs one. Requests beyond it are
/// dropped without an answer (the source may be forged), so one address
/// cannot take every slot.
pub const PER_SOURCE_TRANSFERS: usize = 16;

pub struct TftpServer {
    root: Arc<Root>,
    limits: Limits,
    slots: Arc<Semaphore>,
    sources: Arc<Sources>,
    events: Events,
}

/// Transfers running per client address.
struct Sources {
    running: Mutex<HashMap<IpAddr, usize>>,
    per_source: usize,
}

/// One running transfer of `ip`; dropping it frees the place.
struct SourceSlot {
    sources: Arc<Sources>,
    ip: IpAddr,
}

impl Sources {
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<SourceSlot> {
        let ip = ip.to_canonical();
        let mut m = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(ip).or_default();
        if *n >= self.per_source {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            sources: self.clone(),
            ip,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut m = self
            .sources
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

impl TftpServer {
    pub fn new(root: Arc<Root>, limits: Limits, max_transfers: usize) -> Self {
        Self {
            root,
            limits,
            slots: Arc::new(Semaphore::new(max_transfers)),
            sources: Arc::new(Sources {
                running: Mutex::new(HashMap::new()),
                per_source: PER_SOURCE_TRANSFERS,
            }),
            events: Events::default(),
        }
    }

    /// Transfers one client address may run at once (at least 1).
    pub fn per_source(mut self, n: usize) -> Self {
        self.sources = Arc::new(Sources {
            running: Mutex::new(HashMap::new()),
            per_source: n.max(1),
        });
        self
    }

    /// Transfers and refusals are emitted as boot events.
    pub fn with_events(mut self, events: Events) -> Self {
        self.events = events;
        self
    }

    /// Answers requests on `socket` (bound by the caller) until `shutdown`;
    /// transfers under way end on their own time limits.
    pub async fn serve(self, socket: UdpSocket, mut shutdown: crate::service::Shutdown) {
        let local_ip = match socket.local_addr() {
            Ok(a) => a.ip(),
            Err(e) => {
                tracing::error!("tftp socket: {e}");
                return;
            }
        };
        let mut buf = vec![0u8; 2048];
        loop {
            let received = tokio::select! {
                r = socket.recv_from(&mut buf) => r,
                _ = shutdown.wait() => return,
            };
            let (n, peer) = match received {
                Ok(r) => r,
                Err(e) => {
                    // Transient (an ICMP error surfacing, a full buffer):
                    // the next datagram is unaffected.
                    tracing::debug!("tftp recv: {e}");
                    continue;
                }
            };
            let reply = match Packet::decode(&buf[..n]) {
                Ok(Packet::Rrq(req)) => {
                    let Some(mine) = self.sources.take(peer.ip()) else {
                        self.events.emit(Event::TftpRefused);
                        tracing::debug!(%peer, "tftp: source over its share; request dropped");
                        continue;
                    };
                    match self.slots.clone().try_acquire_owned() {
                        Ok(permit) => {
                            let root = self.root.clone();
                            let limits = self.limits;
                            let events = self.events.clone();
                            tokio::spawn(async move {
                                run_transfer(root, limits, req, peer, local_ip, events).await;
                                drop(permit);
                                drop(mine);
                            });
                            None
                        }
                        Err(_) => {
                            self.events.emit(Event::TftpRefused);
                            Some(packet::error(ErrorCode::NotDefined, "server busy"))
                        }
                    }
                }
                Ok(Packet::Wrq(_)) => Some(packet::error(
                    ErrorCode::AccessViolation,
                    "read-only server",
                )),
                // Strays (late ACKs of finished transfers, noise) get nothing:
                // answering would let anyone reflect traffic through us.
                Ok(_) | Err(_) => None,
            };
            if let Some(r) = reply {
                let _ = socket.send_to(&r, peer).await;
            }
        }
    }
}

async fn run_transfer(
    root: Arc<Root>,
    limits: Limits,
    req: Request,
    peer: SocketAddr,
    local_ip: IpAddr,
    events: Events,
) {
    let began = std::time::Instant::now();
    let sock = match UdpSocket::bind(SocketAddr::new(local_ip, 0)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%peer, "tftp transfer socket: {e}");
            return;
        }
    };
    // Only octet is served: boot loaders are binary, and netascii's line-end
    // translation would corrupt them. A netascii request is refused rather
    // than silently served as octet, so the client sees why.
    if req.mode != "octet" {
        let _ = sock
            .send_to(
                &packet::error(ErrorCode::IllegalOperation, "only octet mode is served"),
                peer,
            )
            .await;
        return;
    }
    let name = req.filename.clone();
    let r = root.clone();
    let loaded = match tokio::task::spawn_blocking(move || r.load(&name)).await {
        Ok(l) => l,
        Err(_) => Err((ErrorCode::NotDefined, "internal error")),
    };
    let file = match loaded {
        Ok(f) => f,
        Err((code, message)) => {
            tracing::info!(%peer, file = %req.filename, message, "tftp refused");
            let _ = sock.send_to(&packet::error(code, message), peer).await;
            return;
        }
    };
    let size = file.len();
    let (mut t, first) = Transfer::start(&req.options, file, &limits, std::time::Instant::now());
    if send_all(&sock, &first, peer).await.is_err() {
        return;
    }
    let mut buf = vec![0u8; 2048];
    while t.outcome().is_none() {
        let deadline = tokio::time::Instant::from_std(t.deadline());
        let out = tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok((n, src)) if src == peer => t.on_datagram(&buf[..n], std::time::Instant::now()),
                Ok((_, src)) => {
                    let _ = sock.send_to(&packet::error(ErrorCode::UnknownTid, "unknown transfer ID"), src).await;
                    continue;
                }
                Err(e) => {
                    tracing::debug!(%peer, "tftp transfer recv: {e}");
                    continue;
                }
            },
            _ = tokio::time::sleep_until(deadline) => t.on_timeout(std::time::Instant::now()),
        };
        if send_all(&sock, &out, peer).await.is_err() {
            return;
        }
    }
    match t.outcome() {
        Some(Outcome::Complete) => {
            tracing::debug!(%peer, file = %req.filename, bytes = size,
                blksize = t.blksize(), window = t.window(), "tftp sent");
            events.emit(Event::TftpSent {
                peer: peer.ip(),
                file: &req.filename,
                bytes: size as u64,
                secs: began.elapsed().as_secs_f64(),
                blksize: t.blksize(),
            });
        }
        Some(o) => {
            events.emit(Event::TftpFailed);
            tracing::info!(%peer, file = %req.filename, outcome = ?o, "tftp ended")
        }
        None => {}
    }
}

async fn send_all(sock: &UdpSocket, out: &[Vec<u8>], peer: SocketAddr) -> std::io::Result<()> {
    for d in out {
        if let Err(e) = sock.send_to(d, peer).await {
            tracing::debug!(%peer, "tftp send: {e}");
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

    fn request(write: bool, name: &str, options: &[(&str, &str)]) -> Vec<u8> {
        let mut v = Vec::new();
        packet::encode_request(
            &mut v,
            write,
            &Request {
                filename: name.into(),
                mode: "octet".into(),
                options: options
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            },
        );
        v
    }

    async fn recv(sock: &UdpSocket, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
        tokio::time::timeout(Duration::from_secs(5), sock.recv_from(buf))
            .await
            .map_err(|_| std::io::Error::other("nothing received"))?
    }

    /// One address sending more requests than its share (and never
    /// answering) leaves the slots to everyone else.
    #[tokio::test]
    async fn one_source_cannot_take_every_slot() -> TestResult {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("f"), b"hello")?;
        let max = 2 * PER_SOURCE_TRANSFERS;
        let server = TftpServer::new(Arc::new(Root::new(dir.path())?), Limits::default(), max);
        let listen = UdpSocket::bind("127.0.0.1:0").await?;
        let port = listen.local_addr()?.port();
        let (stop, shutdown) = crate::service::channel();
        let task = tokio::spawn(server.serve(listen, shutdown));
        // The flood: every slot's worth of requests from 127.0.0.2, with
        // the longest timeout it may ask for; nothing is ever acknowledged.
        let flood = UdpSocket::bind("127.0.0.2:0").await?;
        for _ in 0..max + 8 {
            flood
                .send_to(
                    &request(false, "f", &[("timeout", "255")]),
                    ("127.0.0.1", port),
                )
                .await?;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let client = UdpSocket::bind("127.0.0.1:0").await?;
        client
            .send_to(&request(false, "f", &[]), ("127.0.0.1", port))
            .await?;
        let mut buf = vec![0u8; 2048];
        let (n, _) = recv(&client, &mut buf).await?;
        assert_eq!(
            Packet::decode(&buf[..n]),
            Ok(Packet::Data {
                block: 1,
                data: b"hello"
            })
        );
        // The one way a server stops: its shutdown, and it returns.
        stop.fire();
        task.await?;
        Ok(())
    }

    #[tokio::test]
    async fn windowed_read_over_sockets_with_a_lost_block() -> TestResult {
        let dir = tempfile::tempdir()?;
        let content: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(dir.path().join("f"), &content)?;
        let server = TftpServer::new(Arc::new(Root::new(dir.path())?), Limits::default(), 4);
        let listen = UdpSocket::bind("127.0.0.1:0").await?;
        let port = listen.local_addr()?.port();
        let (stop, shutdown) = crate::service::channel();
        let task = tokio::spawn(server.serve(listen, shutdown));

        let client = UdpSocket::bind("127.0.0.1:0").await?;
        let mut buf = vec![0u8; 2048];
        // Writes are refused from the well-known port.
        client
            .send_to(&request(true, "f", &[]), ("127.0.0.1", port))
            .await?;
        let (n, _) = recv(&client, &mut buf).await?;
        assert!(matches!(
            Packet::decode(&buf[..n]),
            Ok(Packet::Error { code: 2, .. })
        ));

        let opts = [("blksize", "1000"), ("windowsize", "8"), ("tsize", "0")];
        client
            .send_to(&request(false, "f", &opts), ("127.0.0.1", port))
            .await?;
        let (n, tid) = recv(&client, &mut buf).await?;
        assert_ne!(tid.port(), port, "a transfer answers from its own port");
        let Ok(Packet::Oack(got)) = Packet::decode(&buf[..n]) else {
            return Err("expected an OACK".into());
        };
        assert!(got.contains(&("tsize".to_string(), "100000".to_string())));

        // A stranger writing to the transfer's TID gets ERROR 5.
        let stranger = UdpSocket::bind("127.0.0.1:0").await?;
        stranger.send_to(&[0, 4, 0, 0], tid).await?;
        let (n, _) = recv(&stranger, &mut buf).await?;
        assert!(matches!(
            Packet::decode(&buf[..n]),
            Ok(Packet::Error { code: 5, .. })
        ));

        let ack = |b: u16| [0u8, 4, (b >> 8) as u8, b as u8];
        client.send_to(&ack(0), tid).await?;
        let mut received = Vec::new();
        let mut next = 1u16;
        let mut dropped = false;
        loop {
            // One window: take blocks in order; pretend block 6 was lost once.
            let mut last_len = 1000;
            for _ in 0..8 {
                let (n, _) = recv(&client, &mut buf).await?;
                let Ok(Packet::Data { block, data }) = Packet::decode(&buf[..n]) else {
                    return Err("expected DATA".into());
                };
                if block == 6 && !dropped {
                    dropped = true;
                    // Drain the rest of this window, then ask from 6 again.
                    for _ in block..8 {
                        recv(&client, &mut buf).await?;
                    }
                    break;
                }
                if block == next {
                    received.extend_from_slice(data);
                    next += 1;
                }
                last_len = data.len();
                if data.len() < 1000 {
                    break;
                }
            }
            client.send_to(&ack(next - 1), tid).await?;
            if last_len < 1000 {
                break;
            }
        }
        assert_eq!(received, content);
        // The one way a server stops: its shutdown, and it returns.
        stop.fire();
        task.await?;
        Ok(())
    }
}
