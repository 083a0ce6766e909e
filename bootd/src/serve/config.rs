//! `serve` settings: an optional TOML file, overridden by command-line flags.

use bootd_ipxe::arch::EfiFlavour;
use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DhcpMode {
    /// No DHCP: machines are pointed at their targets some other way.
    Off,
    /// proxyDHCP beside the site's DHCP server.
    Proxy,
    /// A full DHCP server handing out the pool.
    Full,
}

/// Which iPXE build x64 UEFI clients get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EfiBinary {
    /// `snponly.efi`: iPXE over the firmware's own NIC driver.
    Snponly,
    /// `ipxe.efi`: iPXE with its own NIC drivers.
    Ipxe,
}

impl From<EfiBinary> for EfiFlavour {
    fn from(b: EfiBinary) -> Self {
        match b {
            EfiBinary::Snponly => EfiFlavour::SnpOnly,
            EfiBinary::Ipxe => EfiFlavour::Full,
        }
    }
}

/// Who may fetch a node's boot script (it carries the node's CHAP secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ScriptAccess {
    /// Only the node: from the address bootd leased it (full mode), its
    /// static address, or with the one-time token bootd put in the boot URL
    /// it gave that MAC (proxy mode).
    Bound,
    /// Anyone who reaches the HTTP port (a lab, a load test, DHCP run by
    /// something else with no static addresses): every secret is public.
    Open,
}

/// What a PXE client whose MAC is not registered gets.
pub use crate::fleet::enrol::Policy as UnknownPolicy;

impl FromStr for UnknownPolicy {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "ignore" => Ok(Self::Ignore),
            "discover" => Ok(Self::Discover),
            _ => match s.strip_prefix("default=") {
                Some(t) if !t.is_empty() => Ok(Self::Default(t.to_string())),
                _ => Err(ConfigError::Unknown(s.to_string())),
            },
        }
    }
}

/// The config file; every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen_ip: Option<IpAddr>,
    pub iscsi_port: Option<u16>,
    pub dhcp: Option<DhcpMode>,
    pub interface: Option<String>,
    pub pool: Option<String>,
    pub http_port: Option<u16>,
    pub tftp_port: Option<u16>,
    pub tftp_dir: Option<PathBuf>,
    pub router: Option<Ipv4Addr>,
    pub dns: Option<Vec<Ipv4Addr>>,
    pub lease_secs: Option<u32>,
    pub efi_binary: Option<EfiBinary>,
    pub unknown: Option<String>,
    pub record_io: Option<PathBuf>,
    pub relays: Option<Vec<Ipv4Addr>>,
    pub script_access: Option<ScriptAccess>,
    pub metrics_from: Option<Vec<IpAddr>>,
    pub unknown_cap: Option<u32>,
    pub per_source: Option<u32>,
    pub node_quota: Option<String>,
    pub reserve_free: Option<String>,
    pub warn_free: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}", path = path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}", path = path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("pool {0:?} is not FIRST-LAST (two IPv4 addresses, first <= last)")]
    Pool(String),
    #[error("unknown-MAC policy {0:?} is not ignore, discover or default=TEMPLATE")]
    Unknown(String),
    #[error("lease time {0} s is too short (at least 60)")]
    LeaseTime(u32),
    #[error("serve needs --interface or --listen-ip to know which network to serve on (--listen-ip 0.0.0.0 serves on every address)")]
    NoNetwork,
    #[error("--per-source {0}: at least 1")]
    PerSource(u32),
    #[error("interface {0} has no IPv4 address to serve on")]
    NoAddress(String),
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            line: e
                .span()
                .map(|s| {
                    text.as_bytes()[..s.start.min(text.len())]
                        .iter()
                        .filter(|&&b| b == b'\n')
                        .count()
                        + 1
                })
                .unwrap_or(1),
            // One line: the message without toml's source excerpt.
            message: e.message().lines().collect::<Vec<_>>().join(" "),
        })
    }
}

/// What `serve` runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen_ip: IpAddr,
    pub iscsi_port: u16,
    pub dhcp: DhcpMode,
    pub interface: Option<String>,
    pub pool: Option<(Ipv4Addr, Ipv4Addr)>,
    pub http_port: u16,
    pub tftp_port: u16,
    /// Where TFTP files come from; `None`: Debian's iPXE directory.
    pub tftp_dir: Option<PathBuf>,
    /// Given to DHCP clients in full mode (options 3 and 6).
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub lease_secs: u32,
    pub efi: EfiFlavour,
    pub unknown: UnknownPolicy,
    /// Where each node's I/O trace goes (`--record-io`).
    pub record_io: Option<PathBuf>,
    /// DHCP relay agents (giaddr) answered; relayed requests from any
    /// other giaddr are dropped.
    pub relays: Vec<Ipv4Addr>,
    pub script_access: ScriptAccess,
    /// Besides the server itself, who may read /metrics.
    pub metrics_from: Vec<IpAddr>,
    /// Discovered MACs recorded, and nodes in the registry up to which
    /// `--unknown default=` registers more, at most.
    pub unknown_cap: u32,
    /// HTTP connections and TFTP transfers one client address may hold.
    pub per_source: usize,
    /// Bytes one overlay may take.
    pub node_quota: Option<u64>,
    /// Free bytes kept on the overlays' filesystem (default: derived from its size).
    pub reserve_free: Option<u64>,
    /// Free bytes below which serve warns (default: derived from its size).
    pub warn_free: Option<u64>,
}

pub fn parse_pool(s: &str) -> Result<(Ipv4Addr, Ipv4Addr), ConfigError> {
    let bad = || ConfigError::Pool(s.to_string());
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let a: Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
    let b: Ipv4Addr = b.trim().parse().map_err(|_| bad())?;
    if a > b {
        return Err(bad());
    }
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_file_and_pool() -> Result<(), Box<dyn std::error::Error>> {
        let c: FileConfig = toml::from_str(
            "listen_ip = \"127.0.0.1\"\niscsi_port = 3261\ndhcp = \"off\"\npool = \"192.0.2.10-192.0.2.20\"\ntftp_dir = \"/srv/tftp\"\n",
        )?;
        assert_eq!(c.iscsi_port, Some(3261));
        assert_eq!(c.tftp_dir.as_deref(), Some(Path::new("/srv/tftp")));
        assert_eq!(c.dhcp, Some(DhcpMode::Off));
        assert!(toml::from_str::<FileConfig>("bogus = 1\n").is_err());
        assert_eq!(
            parse_pool("192.0.2.10-192.0.2.20")?,
            ("192.0.2.10".parse()?, "192.0.2.20".parse()?)
        );
        assert!(parse_pool("192.0.2.20-192.0.2.10").is_err());
        assert!(parse_pool("192.0.2.10").is_err());
        let c: FileConfig = toml::from_str(
            "router = \"192.0.2.254\"\ndns = [\"192.0.2.53\"]\nlease_secs = 600\nefi_binary = \"ipxe\"\nunknown = \"default=lab\"\n",
        )?;
        assert_eq!(c.dns, Some(vec![Ipv4Addr::new(192, 0, 2, 53)]));
        assert_eq!(c.efi_binary, Some(EfiBinary::Ipxe));
        assert_eq!(
            c.unknown
                .as_deref()
                .map(str::parse::<UnknownPolicy>)
                .transpose()?,
            Some(UnknownPolicy::Default("lab".into()))
        );
        assert_eq!(
            "discover".parse::<UnknownPolicy>()?,
            UnknownPolicy::Discover
        );
        assert!("default=".parse::<UnknownPolicy>().is_err());
        assert!("boot".parse::<UnknownPolicy>().is_err());
        assert!(toml::from_str::<FileConfig>("router = \"fe80::1\"\n").is_err());
        let c: FileConfig = toml::from_str(
            "relays = [\"192.0.2.254\"]\nscript_access = \"open\"\nmetrics_from = [\"192.0.2.9\"]\nunknown_cap = 10\n",
        )?;
        assert_eq!(c.relays, Some(vec![Ipv4Addr::new(192, 0, 2, 254)]));
        assert_eq!(c.script_access, Some(ScriptAccess::Open));
        assert_eq!(c.unknown_cap, Some(10));
        Ok(())
    }
}
