//! `serve` settings: an optional TOML file, overridden by command-line flags.

use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

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
        Ok(())
    }
}
