//! A TFTP client as PXE ROMs use it: RRQ in octet mode with blksize and
//! tsize, lock-step ACKs, retransmission of the last packet on timeout.

use anyhow::{bail, Context, Result};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::net::UdpSocket;

const RRQ: u16 = 1;
const DATA: u16 = 3;
const ACK: u16 = 4;
const ERROR: u16 = 5;
const OACK: u16 = 6;
/// Wait for the next packet before retransmitting ours.
const WAIT: Duration = Duration::from_secs(1);
/// Retransmissions of one packet before giving up.
const TRIES: u32 = 5;

fn ack(block: u16) -> [u8; 4] {
    let b = block.to_be_bytes();
    [0, ACK as u8, b[0], b[1]]
}

/// `name\0octet\0blksize\0N\0tsize\00\0` after the opcode.
fn rrq(name: &str, blksize: u16) -> Vec<u8> {
    let mut p = RRQ.to_be_bytes().to_vec();
    for part in [name, "octet", "blksize", &blksize.to_string(), "tsize", "0"] {
        p.extend_from_slice(part.as_bytes());
        p.push(0);
    }
    p
}

/// Option names and values of an OACK.
fn oack_options(body: &[u8]) -> Vec<(String, String)> {
    let parts: Vec<String> = body
        .split(|&b| b == 0)
        .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase())
        .collect();
    parts
        .chunks(2)
        .filter(|c| c.len() == 2 && !c[0].is_empty())
        .map(|c| (c[0].clone(), c[1].clone()))
        .collect()
}

/// Fetches `name` from `server` from the node's address `local` and checks
/// it equals `expect`. Every retransmission is passed to `retry` (an error
/// to count).
pub async fn fetch(
    local: Ipv4Addr,
    server: SocketAddr,
    name: &str,
    blksize: u16,
    expect: &[u8],
    retry: &mut (dyn FnMut(String) + Send),
) -> Result<u64> {
    let sock = UdpSocket::bind((local, 0))
        .await
        .with_context(|| format!("binding {local} for TFTP"))?;
    let mut last: Vec<u8> = rrq(name, blksize);
    // The transfer's own port on the server, learned from its first packet.
    let mut peer: Option<SocketAddr> = None;
    let mut size = 512usize;
    let mut data = Vec::with_capacity(expect.len());
    let mut next: u16 = 1;
    let mut buf = vec![0u8; 65536];
    let mut tries = 0;
    sock.send_to(&last, server).await?;
    loop {
        let (len, from) = match tokio::time::timeout(WAIT, sock.recv_from(&mut buf)).await {
            Ok(r) => r.context("tftp receive")?,
            Err(_) => {
                tries += 1;
                if tries >= TRIES {
                    bail!(
                        "no packet after block {} in {TRIES} tries",
                        next.wrapping_sub(1)
                    );
                }
                // No block number: the same text for every node adds up to one line.
                retry(format!("no packet within {WAIT:?}, retransmitted"));
                sock.send_to(&last, peer.unwrap_or(server)).await?;
                continue;
            }
        };
        if from.ip() != server.ip() || peer.is_some_and(|p| p != from) {
            continue;
        }
        let Some(pkt) = buf.get(..len).filter(|p| p.len() >= 4) else {
            bail!("short TFTP packet ({len} bytes)");
        };
        let op = u16::from_be_bytes([pkt[0], pkt[1]]);
        let num = u16::from_be_bytes([pkt[2], pkt[3]]);
        match op {
            ERROR => bail!(
                "server ERROR {num}: {}",
                String::from_utf8_lossy(&pkt[4..]).trim_end_matches('\0')
            ),
            OACK if peer.is_none() => {
                peer = Some(from);
                for (k, v) in oack_options(&pkt[2..]) {
                    match k.as_str() {
                        "blksize" => size = v.parse().context("bad blksize in OACK")?,
                        "tsize" => {
                            let t: usize = v.parse().context("bad tsize in OACK")?;
                            if t != expect.len() {
                                bail!("tsize {t}, expected {}", expect.len());
                            }
                        }
                        _ => {}
                    }
                }
                if size != usize::from(blksize) {
                    bail!("server chose blksize {size}, asked {blksize}");
                }
                last = ack(0).to_vec();
                tries = 0;
            }
            DATA => {
                if peer.is_none() {
                    bail!("DATA without OACK: the server ignored blksize and tsize");
                }
                if num != next {
                    // A duplicate of an earlier block: our ACK was lost or late.
                    continue;
                }
                let payload = &pkt[4..];
                if payload.len() > size {
                    bail!(
                        "block {num} is {} bytes, over blksize {size}",
                        payload.len()
                    );
                }
                data.extend_from_slice(payload);
                if data.len() > expect.len() {
                    bail!("more data than the file holds ({} bytes)", expect.len());
                }
                last = ack(num).to_vec();
                next = next.wrapping_add(1);
                tries = 0;
                if payload.len() < size {
                    sock.send_to(&last, from).await?;
                    break;
                }
            }
            _ => continue,
        }
        sock.send_to(&last, from).await?;
    }
    if data != expect {
        bail!(
            "received {} bytes that differ from the {} bytes served",
            data.len(),
            expect.len()
        );
    }
    Ok(data.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rrq_and_oack() {
        assert_eq!(
            rrq("a", 1428),
            b"\x00\x01a\0octet\0blksize\x001428\0tsize\x000\0".to_vec()
        );
        assert_eq!(
            oack_options(b"blksize\x001428\0TSIZE\x0074213\0"),
            vec![
                ("blksize".to_string(), "1428".to_string()),
                ("tsize".to_string(), "74213".to_string())
            ]
        );
    }
}
