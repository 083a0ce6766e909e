//! The values of `serve`'s settings that are more than a number or a path:
//! each parses from the text the flag, the environment and the TOML file
//! share, and says what was wrong with it.

use super::config::ConfigError;
use bootd_dhcp::server::Mode;
use serde::Deserialize;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// `--ipv6-ra`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RaMode {
    /// With `--dhcp full`: bootd owns the boot network.
    Auto,
    On,
    Off,
}

impl FromStr for RaMode {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "auto" => Ok(Self::Auto),
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            _ => Err(ConfigError::Ra(s.to_string())),
        }
    }
}

/// `--dhcp`: off, or the mode the DHCP core runs in (the one enum for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DhcpSetting(pub Option<Mode>);

impl FromStr for DhcpSetting {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "off" => Ok(Self(None)),
            "proxy" => Ok(Self(Some(Mode::Proxy))),
            "full" => Ok(Self(Some(Mode::Full))),
            _ => Err(ConfigError::Dhcp(s.to_string())),
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

/// `--api-listen`: an address, or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiListen(pub Option<std::net::SocketAddr>);

impl FromStr for ApiListen {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        if s == "off" {
            return Ok(Self(None));
        }
        s.parse()
            .map(|a| Self(Some(a)))
            .map_err(|_| ConfigError::ApiListen(s.to_string()))
    }
}

/// A DHCP address pool, `FIRST-LAST`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
}

impl FromStr for Pool {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::Pool(s.to_string());
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let first: Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
        let last: Ipv4Addr = b.trim().parse().map_err(|_| bad())?;
        if first > last {
            return Err(bad());
        }
        Ok(Self { first, last })
    }
}
