//! iPXE's HTTP side: GET a script, follow `/boot.ipxe`'s chain to the
//! node's own script, and read what `sanboot` needs from it.

use anyhow::{bail, Context, Result};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Connect plus the whole answer.
const LIMIT: Duration = Duration::from_secs(10);
/// Scripts are small; anything bigger is a fault.
const MAX_RESPONSE: u64 = 64 * 1024;

/// `http://HOST:PORT/PATH` split up; HOST must be an IPv4 address.
pub fn parse_url(url: &str) -> Result<(SocketAddr, String)> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("not an http:// URL: {url:?}"))?;
    let (hostport, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let addr: SocketAddr = hostport
        .parse()
        .with_context(|| format!("URL host is not IPv4:PORT: {url:?}"))?;
    let path = if path.is_empty() { "/" } else { path };
    Ok((addr, path.to_string()))
}

/// A TCP connection to `addr` from the node's address `local`.
pub async fn connect_from(local: Ipv4Addr, addr: SocketAddr) -> Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::from((local, 0)))
        .with_context(|| format!("binding {local}"))?;
    s.connect(addr)
        .await
        .with_context(|| format!("connecting to {addr} from {local}"))
}

/// GET `path` from `addr` (from `local`); the body of a 200 answer.
pub async fn get(local: Ipv4Addr, addr: SocketAddr, path: &str) -> Result<String> {
    tokio::time::timeout(LIMIT, get_inner(local, addr, path))
        .await
        .with_context(|| format!("GET {path}: no complete answer within {LIMIT:?}"))?
}

async fn get_inner(local: Ipv4Addr, addr: SocketAddr, path: &str) -> Result<String> {
    let mut s = connect_from(local, addr).await?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nConnection: close\r\nUser-Agent: iPXE/1.21.1\r\nHost: {addr}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    (&mut s)
        .take(MAX_RESPONSE + 1)
        .read_to_end(&mut raw)
        .await?;
    if raw.len() as u64 > MAX_RESPONSE {
        bail!("GET {path}: answer over {MAX_RESPONSE} bytes");
    }
    let text = String::from_utf8(raw).context("answer is not UTF-8")?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("GET {path}: no end of headers"))?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        bail!("GET {path}: {status}");
    }
    let length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.trim().parse::<usize>())
        .transpose()
        .context("bad Content-Length")?;
    if let Some(n) = length {
        if n != body.len() {
            bail!("GET {path}: Content-Length {n}, got {} bytes", body.len());
        }
    }
    Ok(body.to_string())
}

/// The URL `/boot.ipxe` chains to, with `${netX/mac:hexhyp}` expanded as
/// iPXE would for `mac`.
pub fn chain_url(script: &str, mac: [u8; 6]) -> Result<String> {
    let hyp = mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join("-");
    let line = script
        .lines()
        .find_map(|l| l.trim().strip_prefix("chain "))
        .context("no `chain` line in /boot.ipxe")?;
    let url = line.split_whitespace().next().unwrap_or_default();
    Ok(url.replace("${netX/mac:hexhyp}", &hyp))
}

/// What the node's script hands to iPXE's iSCSI initiator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sanboot {
    pub initiator_iqn: String,
    pub username: String,
    pub password: String,
    pub portal: SocketAddr,
    pub lun: u64,
    pub target_iqn: String,
}

/// Reads `set initiator-iqn|username|password` and the `sanboot
/// iscsi:HOST:PROTO:PORT:LUN:TARGET` root path.
pub fn parse_sanboot(script: &str) -> Result<Sanboot> {
    let mut initiator = None;
    let mut user = None;
    let mut pass = None;
    let mut root = None;
    for line in script.lines().map(str::trim) {
        let mut w = line.split_whitespace();
        match (w.next(), w.next(), w.next()) {
            (Some("set"), Some("initiator-iqn"), Some(v)) => initiator = Some(v.to_string()),
            (Some("set"), Some("username"), Some(v)) => user = Some(v.to_string()),
            (Some("set"), Some("password"), Some(v)) => pass = Some(v.to_string()),
            (Some("sanboot"), Some(v), _) => root = Some(v.to_string()),
            _ => {}
        }
    }
    let root = root.context("no `sanboot` line in the node's script")?;
    let fields: Vec<&str> = root
        .strip_prefix("iscsi:")
        .with_context(|| format!("sanboot root path is not iscsi: {root:?}"))?
        .splitn(5, ':')
        .collect();
    let [host, _proto, port, lun, target] = fields[..] else {
        bail!("bad iSCSI root path {root:?}");
    };
    let port: u16 = if port.is_empty() {
        3260
    } else {
        port.parse().context("bad port in root path")?
    };
    let portal = format!("{host}:{port}")
        .parse()
        .with_context(|| format!("portal host is not IPv4 in {root:?}"))?;
    Ok(Sanboot {
        initiator_iqn: initiator.context("script sets no initiator-iqn")?,
        username: user.context("script sets no username")?,
        password: pass.context("script sets no password")?,
        portal,
        lun: if lun.is_empty() {
            0
        } else {
            lun.parse().context("bad LUN")?
        },
        target_iqn: target.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_and_sanboot_scripts() -> Result<()> {
        let chain = "#!ipxe\nchain http://192.0.2.1:8080/boot/${netX/mac:hexhyp}.ipxe || goto unknown\n:unknown\n";
        let url = chain_url(chain, [0x52, 0x54, 0, 1, 2, 0xab])?;
        assert_eq!(url, "http://192.0.2.1:8080/boot/52-54-00-01-02-ab.ipxe");
        let (addr, path) = parse_url(&url)?;
        assert_eq!(addr, "192.0.2.1:8080".parse()?);
        assert_eq!(path, "/boot/52-54-00-01-02-ab.ipxe");
        let script = "#!ipxe\nset initiator-iqn iqn.2026-11.io.bootd:initiator.n1\nset username n1\n\
                      set password abcdefghijklmnop\necho x\n\
                      sanboot iscsi:192.0.2.1::3260:0:iqn.2026-11.io.bootd:node.n1 || goto failed\n";
        let s = parse_sanboot(script)?;
        assert_eq!(s.target_iqn, "iqn.2026-11.io.bootd:node.n1");
        assert_eq!(s.portal, "192.0.2.1:3260".parse()?);
        assert_eq!(
            (s.username.as_str(), s.password.as_str()),
            ("n1", "abcdefghijklmnop")
        );
        assert_eq!(s.lun, 0);
        assert!(parse_sanboot("#!ipxe\nsanboot http://x/\n").is_err());
        Ok(())
    }
}
