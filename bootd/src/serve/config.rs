//! `serve`'s configuration: one type for the command line, the
//! environment (`BOOTD_*`) and the TOML file, and the defaults.

use anyhow::Context;
use bootd_dhcp::server::Mode;
use bootd_ipxe::arch::EfiFlavour;
use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use super::values::{ApiListen, DhcpSetting, Pool, RaMode, ScriptAccess, UnknownPolicy};

#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[command(after_help = "\
Changes made with `bootd node|image` take effect within a second. \
`node reset` and `node rm` end the node's live sessions first: serve drops the \
node's target (closing its sessions) and its overlay, the CLI waits until the \
overlay is released, then replaces or deletes it.")]
pub struct ServeConfig {
    /// TOML file with any of: listen_ip, iscsi_port, dhcp, ipv6_ra, interface, pool,
    /// router, dns, lease_secs, http_port, tftp_port, tftp_dir, efi_binary,
    /// unknown, unknown_cap, record_io, relays, script_access, metrics_from,
    /// per_source, node_quota, reserve_free, warn_free, sync_writes, server_id, api_listen,
    /// api_cert, api_key, api_import_dir (sizes as strings,
    /// e.g. "20G"). Unknown keys are an error. Flags (and BOOTD_* variables)
    /// override it.
    #[arg(long, env = "BOOTD_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Network interface DHCP answers on (SO_BINDTODEVICE); its IPv4
    /// address is the server address unless --listen-ip names one.
    #[arg(long, env = "BOOTD_INTERFACE")]
    pub interface: Option<String>,
    /// Address iSCSI, HTTP and TFTP listen on [default: the address of
    /// --interface]. One of the two is needed; 0.0.0.0 serves on every
    /// address of the machine.
    #[arg(long, env = "BOOTD_LISTEN_IP")]
    pub listen_ip: Option<IpAddr>,
    /// off, proxy (boot offers beside the site's DHCP server, ports 67 and
    /// 4011) or full (addresses from --pool too) [default: off].
    #[arg(long, value_name = "MODE", env = "BOOTD_DHCP")]
    #[serde(deserialize_with = "from_text")]
    pub dhcp: Option<DhcpSetting>,
    /// Answer IPv6 router solicitations on the boot interface with an
    /// advertisement that configures nothing, so iPXE does not wait ~13 s
    /// for an IPv6 router before it boots: auto (with --dhcp full), on
    /// (also with --dhcp proxy, on a network with no IPv6 router) or off
    /// [default: auto].
    #[arg(long, value_name = "MODE", env = "BOOTD_IPV6_RA")]
    #[serde(deserialize_with = "from_text")]
    pub ipv6_ra: Option<RaMode>,
    /// Address pool for --dhcp full, FIRST-LAST.
    #[arg(long, env = "BOOTD_POOL")]
    #[serde(deserialize_with = "from_text")]
    pub pool: Option<Pool>,
    /// Default gateway handed out with --dhcp full (option 3) [default: none].
    #[arg(long, env = "BOOTD_ROUTER")]
    pub router: Option<Ipv4Addr>,
    /// DNS server handed out with --dhcp full (option 6); repeat for more.
    #[arg(long, env = "BOOTD_DNS", value_delimiter = ',')]
    pub dns: Vec<Ipv4Addr>,
    /// Lease time in seconds for --dhcp full, at least 60 [default: 3600].
    #[arg(long, env = "BOOTD_LEASE_SECS")]
    pub lease_secs: Option<u32>,
    /// iPXE build for x64 UEFI clients: snponly (snponly.efi, the firmware's
    /// NIC driver) or ipxe (ipxe.efi, iPXE's own drivers) [default: snponly].
    #[arg(long, env = "BOOTD_EFI_BINARY", value_name = "BUILD")]
    pub efi_binary: Option<EfiFlavour>,
    /// PXE clients whose MAC is not registered: ignore (no boot offer),
    /// discover (recorded for `node list --discovered`, then `node adopt`)
    /// or default=TEMPLATE (registered from TEMPLATE and booted)
    /// [default: ignore].
    #[arg(long, value_name = "POLICY", env = "BOOTD_UNKNOWN")]
    #[serde(deserialize_with = "from_text")]
    pub unknown: Option<UnknownPolicy>,
    /// At most this many discovered MACs are recorded, and --unknown
    /// default=TEMPLATE registers no more nodes once the registry holds
    /// this many [default: 256].
    #[arg(long, value_name = "N", env = "BOOTD_UNKNOWN_CAP")]
    pub unknown_cap: Option<u32>,
    /// A DHCP relay agent (giaddr) to answer; repeat for more. Relayed
    /// requests from any other giaddr are dropped [default: none].
    #[arg(
        long = "relay",
        value_name = "IP",
        env = "BOOTD_RELAYS",
        value_delimiter = ','
    )]
    pub relays: Vec<Ipv4Addr>,
    /// Who gets a node's boot script, which carries its CHAP secret:
    /// bound (only the node: its leased or static address, or the one-time
    /// token in the boot URL bootd's DHCP gave it) or open (anyone)
    /// [default: bound].
    #[arg(long, value_enum, env = "BOOTD_SCRIPT_ACCESS")]
    pub script_access: Option<ScriptAccess>,
    /// HTTP connections and TFTP transfers one client address may hold at
    /// once [default: 16]. A machine needs one; raise it for load tests
    /// that play many machines from one address.
    #[arg(long, value_name = "N", env = "BOOTD_PER_SOURCE")]
    pub per_source: Option<u32>,
    /// An address that may read /metrics besides the server itself;
    /// repeat for more [default: none].
    #[arg(
        long,
        value_name = "IP",
        env = "BOOTD_METRICS_FROM",
        value_delimiter = ','
    )]
    pub metrics_from: Vec<IpAddr>,
    /// Record every node's reads, writes and flushes to DIR/NODE.trace
    /// (for bootd-storm to replay); off by default.
    #[arg(long, value_name = "DIR", env = "BOOTD_RECORD_IO")]
    pub record_io: Option<PathBuf>,
    /// HTTP port for iPXE scripts (/boot.ipxe, /boot/MAC.ipxe) and, for
    /// UEFI HTTP boot, the iPXE binaries (/ipxe/NAME); 0 picks a free one
    /// [default: 8080]. A port that cannot be bound is an error.
    #[arg(long, env = "BOOTD_HTTP_PORT")]
    pub http_port: Option<u16>,
    /// TFTP port for PXE firmware; 0 picks a free one [default: 69].
    /// Port 69 needs root (or CAP_NET_BIND_SERVICE); failing to bind is an error.
    #[arg(long, env = "BOOTD_TFTP_PORT")]
    pub tftp_port: Option<u16>,
    /// Directory served over TFTP (read-only, octet mode; names cannot
    /// leave it) [default: /usr/lib/ipxe].
    #[arg(long, env = "BOOTD_TFTP_DIR")]
    pub tftp_dir: Option<PathBuf>,
    /// iSCSI port; 0 picks a free one [default: 3260].
    #[arg(long, env = "BOOTD_ISCSI_PORT")]
    pub iscsi_port: Option<u16>,
    /// Most space one node's overlay may take (e.g. 20G); writes that
    /// need more fail with SPACE ALLOCATION FAILED [default: no limit].
    #[arg(long, value_name = "SIZE", value_parser = crate::space::parse_size, env = "BOOTD_NODE_QUOTA")]
    #[serde(deserialize_with = "size_text")]
    pub node_quota: Option<u64>,
    /// Free space kept on the overlays' filesystem: writes that need new
    /// space fail below it, before the disk itself is full
    /// [default: 1% of the filesystem, at most 256M].
    #[arg(long, value_name = "SIZE", value_parser = crate::space::parse_size, env = "BOOTD_RESERVE_FREE")]
    #[serde(deserialize_with = "size_text")]
    pub reserve_free: Option<u64>,
    /// Free space below which serve logs a warning and
    /// bootd_data_low_space is 1 [default: 10% of the filesystem, at most 10G].
    #[arg(long, value_name = "SIZE", value_parser = crate::space::parse_size, env = "BOOTD_WARN_FREE")]
    #[serde(deserialize_with = "size_text")]
    pub warn_free: Option<u64>,
    /// When an acknowledged write is durable on the overlays' storage:
    /// always (before its SCSI status; concurrent writes share one
    /// fdatasync), flush (at SYNCHRONIZE CACHE or FUA; a crash of serve
    /// loses nothing, a crash of the machine what was not flushed) or auto
    /// (always with a shared PostgreSQL registry, whose peers take over
    /// after this machine died; flush alone) [default: auto].
    #[arg(long, value_name = "MODE", env = "BOOTD_SYNC_WRITES")]
    pub sync_writes: Option<super::durability::SyncSetting>,
    /// This server's name among those sharing one registry (letters,
    /// digits, '.', '_', '-'; at most 63): its row in `server list`, the
    /// owner of the nodes it serves, its lock file in the data directory
    /// [default: the host name].
    #[arg(long, value_name = "NAME", env = "BOOTD_SERVER_ID")]
    pub server_id: Option<String>,
    /// Where the operator API (JSON under /api/v1, bearer tokens from
    /// `bootd token add`) listens, ADDR:PORT, or off; a listener of its
    /// own, never the boot network's HTTP port [default: 127.0.0.1:9090,
    /// skipped with a warning when taken]. A port given that cannot be
    /// bound is an error.
    #[arg(long, value_name = "ADDR:PORT|off", env = "BOOTD_API_LISTEN")]
    #[serde(deserialize_with = "from_text")]
    pub api_listen: Option<ApiListen>,
    /// PEM certificate chain: the API speaks TLS (with --api-key).
    #[arg(long, value_name = "PEM", env = "BOOTD_API_CERT", requires = "api_key")]
    pub api_cert: Option<PathBuf>,
    /// PEM private key of --api-cert.
    #[arg(long, value_name = "PEM", env = "BOOTD_API_KEY", requires = "api_cert")]
    pub api_key: Option<PathBuf>,
    /// The one directory the API imports images from (`POST
    /// /api/v1/images` with a path in it, or relative to it): serve runs
    /// as root, and a token must not make it read any file of the machine
    /// [default: DATA_DIR/import].
    #[arg(long, value_name = "DIR", env = "BOOTD_API_IMPORT_DIR")]
    pub api_import_dir: Option<PathBuf>,
    /// A floating address (keepalived, pacemaker's IPaddr2, `ip addr add`)
    /// this server answers iSCSI on while the host has it, following the
    /// host's addresses (netlink); while it holds one, it publishes it as
    /// its portal and takes the nodes of a dead server that published it.
    /// Repeatable.
    #[arg(
        long = "floating-ip",
        value_name = "ADDR",
        env = "BOOTD_FLOATING_IP",
        value_delimiter = ','
    )]
    #[serde(default)]
    pub floating_ip: Vec<IpAddr>,
    /// On SIGTERM, drain first: hand every node to the peers (as `bootd
    /// server drain` does), then stop.
    #[arg(long, env = "BOOTD_DRAIN")]
    #[serde(default)]
    pub drain: bool,
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
    #[error("--ipv6-ra {0:?} is not auto, on or off")]
    Ra(String),
    #[error("DHCP mode {0:?} is not off, proxy or full")]
    Dhcp(String),
    #[error("pool {0:?} is not FIRST-LAST (two IPv4 addresses, first <= last)")]
    Pool(String),
    #[error("unknown-MAC policy {0:?} is not ignore, discover or default=TEMPLATE")]
    Unknown(String),
    #[error("lease time {0} s is too short (at least 60)")]
    LeaseTime(u32),
    #[error("serve needs --interface or --listen-ip to know which network to serve on (--listen-ip 0.0.0.0 serves on every address)")]
    NoNetwork,
    #[error("--api-listen {0:?} is not ADDR:PORT or off")]
    ApiListen(String),
    #[error("--api-cert and --api-key go together")]
    ApiTls,
    #[error("--per-source {0}: at least 1")]
    PerSource(u32),
    #[error("interface {0} has no IPv4 address to serve on")]
    NoAddress(String),
}

impl ServeConfig {
    /// The flags (and their environment variables) over the file they
    /// name, if any; then checked, and the address to serve on worked out.
    pub fn load(flags: ServeConfig) -> anyhow::Result<Self> {
        let mut c = match &flags.config {
            Some(p) => Self::read(p)?,
            None => Self::default(),
        };
        c.overlay(flags);
        c.check()?;
        if c.listen_ip.is_none() {
            c.listen_ip = Some(match &c.interface {
                // The boot network's address, not every address of the
                // machine: the site's other networks never see bootd's ports.
                Some(name) => crate::dhcp::iface::find(Some(name), None)
                    .with_context(|| format!("reading the address of {name}"))?
                    .map(|f| IpAddr::V4(f.ip))
                    .ok_or_else(|| ConfigError::NoAddress(name.clone()))?,
                None => return Err(ConfigError::NoNetwork.into()),
            });
        }
        Ok(c)
    }

    /// A config file: the same keys as the flags, with `_` for `-`
    /// (`relays` for `--relay`); an unknown key is an error.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
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

    /// Whatever `over` sets replaces what `self` has; a list given at all
    /// replaces the whole list.
    fn overlay(&mut self, over: ServeConfig) {
        macro_rules! take {
            ($($f:ident),*) => {$(
                if over.$f.is_some() {
                    self.$f = over.$f;
                }
            )*};
        }
        macro_rules! take_list {
            ($($f:ident),*) => {$(
                if !over.$f.is_empty() {
                    self.$f = over.$f;
                }
            )*};
        }
        take!(
            config,
            interface,
            listen_ip,
            dhcp,
            ipv6_ra,
            pool,
            router,
            lease_secs,
            efi_binary,
            unknown,
            unknown_cap,
            script_access,
            per_source,
            record_io,
            http_port,
            tftp_port,
            tftp_dir,
            iscsi_port,
            node_quota,
            reserve_free,
            warn_free,
            sync_writes,
            server_id,
            api_listen,
            api_cert,
            api_key,
            api_import_dir
        );
        take_list!(dns, relays, metrics_from, floating_ip);
        self.drain |= over.drain;
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.per_source == Some(0) {
            return Err(ConfigError::PerSource(0));
        }
        if let Some(l) = self.lease_secs.filter(|&l| l < 60) {
            return Err(ConfigError::LeaseTime(l));
        }
        // A config file may name one without the other.
        if self.api_cert.is_some() != self.api_key.is_some() {
            return Err(ConfigError::ApiTls);
        }
        Ok(())
    }

    /// Where iSCSI, HTTP and TFTP listen; set by [`ServeConfig::load`].
    pub fn listen_ip(&self) -> IpAddr {
        self.listen_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    pub fn iscsi_port(&self) -> u16 {
        self.iscsi_port.unwrap_or(3260)
    }

    pub fn http_port(&self) -> u16 {
        self.http_port.unwrap_or(DEFAULT_HTTP_PORT)
    }

    pub fn tftp_port(&self) -> u16 {
        self.tftp_port.unwrap_or(69)
    }

    /// The DHCP mode; `None` with `--dhcp off` (the default).
    pub fn dhcp(&self) -> Option<Mode> {
        self.dhcp.and_then(|d| d.0)
    }

    /// Whether DHCP in `mode` also answers IPv6 router solicitations.
    pub fn ipv6_ra(&self, mode: Mode) -> bool {
        match self.ipv6_ra.unwrap_or(RaMode::Auto) {
            RaMode::Auto => mode == Mode::Full,
            RaMode::On => true,
            RaMode::Off => false,
        }
    }

    pub fn lease_secs(&self) -> u32 {
        self.lease_secs.unwrap_or(3600)
    }

    pub fn efi(&self) -> EfiFlavour {
        self.efi_binary.unwrap_or_default()
    }

    pub fn unknown(&self) -> UnknownPolicy {
        self.unknown.clone().unwrap_or(UnknownPolicy::Ignore)
    }

    pub fn unknown_cap(&self) -> u32 {
        self.unknown_cap.unwrap_or(DEFAULT_UNKNOWN_CAP)
    }

    pub fn script_access(&self) -> ScriptAccess {
        self.script_access.unwrap_or(ScriptAccess::Bound)
    }

    /// Where the API listens (`None`: off), and whether that is the
    /// default rather than asked for.
    pub fn api_listen(&self) -> (Option<std::net::SocketAddr>, bool) {
        match self.api_listen {
            Some(ApiListen(a)) => (a, false),
            None => (Some(DEFAULT_API_LISTEN), true),
        }
    }

    /// HTTP connections and TFTP transfers one client address may hold.
    pub fn per_source(&self) -> usize {
        usize::try_from(self.per_source.unwrap_or(DEFAULT_PER_SOURCE)).unwrap_or(usize::MAX)
    }
}

/// Where the operator API listens unless told otherwise: this machine only.
const DEFAULT_API_LISTEN: std::net::SocketAddr =
    std::net::SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9090);
/// Where iPXE scripts are served unless told otherwise.
const DEFAULT_HTTP_PORT: u16 = 8080;
/// Discovered MACs kept, and the registry size auto-registration stops at.
const DEFAULT_UNKNOWN_CAP: u32 = 256;
/// HTTP connections and TFTP transfers per client address.
const DEFAULT_PER_SOURCE: u32 = 16;

/// A config-file string parsed as the flag would be.
fn from_text<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: FromStr,
    T::Err: std::fmt::Display,
{
    let text = String::deserialize(d)?;
    text.parse().map(Some).map_err(serde::de::Error::custom)
}

/// A size in a config file: a string like `"20G"`, as on the command line.
fn size_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let text = String::deserialize(d)?;
    crate::space::parse_size(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    type R = Result<(), Box<dyn std::error::Error>>;

    /// The flags as `bootd serve` parses them.
    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        c: ServeConfig,
    }

    fn flags(args: &[&str]) -> Result<ServeConfig, clap::Error> {
        Flags::try_parse_from(std::iter::once("serve").chain(args.iter().copied())).map(|f| f.c)
    }

    #[test]
    fn config_file_keys_are_the_flags() -> R {
        let c: ServeConfig = toml::from_str(
            "listen_ip = \"127.0.0.1\"\niscsi_port = 3261\ndhcp = \"off\"\npool = \"192.0.2.10-192.0.2.20\"\ntftp_dir = \"/srv/tftp\"\n",
        )?;
        assert_eq!(c.iscsi_port(), 3261);
        assert_eq!(c.tftp_dir.as_deref(), Some(Path::new("/srv/tftp")));
        assert_eq!(c.dhcp(), None);
        assert!(toml::from_str::<ServeConfig>("dhcp = \"on\"\n").is_err());
        let pool = Pool {
            first: "192.0.2.10".parse()?,
            last: "192.0.2.20".parse()?,
        };
        assert_eq!(c.pool, Some(pool));
        assert!(toml::from_str::<ServeConfig>("bogus = 1\n").is_err());
        assert!(toml::from_str::<ServeConfig>("config = \"x\"\n").is_err());
        assert!("192.0.2.20-192.0.2.10".parse::<Pool>().is_err());
        assert!("192.0.2.10".parse::<Pool>().is_err());
        let c: ServeConfig = toml::from_str(
            "router = \"192.0.2.254\"\ndns = [\"192.0.2.53\"]\nlease_secs = 600\nefi_binary = \"ipxe\"\nunknown = \"default=lab\"\nnode_quota = \"20G\"\n",
        )?;
        assert_eq!(c.dns, vec![Ipv4Addr::new(192, 0, 2, 53)]);
        assert_eq!(c.efi(), EfiFlavour::Full);
        assert_eq!(c.unknown(), UnknownPolicy::Default("lab".into()));
        assert_eq!(c.node_quota, Some(20 << 30));
        assert!(toml::from_str::<ServeConfig>("unknown = \"boot\"\n").is_err());
        assert!(toml::from_str::<ServeConfig>("efi_binary = \"full\"\n").is_err());
        assert_eq!(
            "discover".parse::<UnknownPolicy>()?,
            UnknownPolicy::Discover
        );
        assert!("default=".parse::<UnknownPolicy>().is_err());
        assert!(toml::from_str::<ServeConfig>("router = \"fe80::1\"\n").is_err());
        let c: ServeConfig = toml::from_str(
            "relays = [\"192.0.2.254\"]\nscript_access = \"open\"\nmetrics_from = [\"192.0.2.9\"]\nunknown_cap = 10\n",
        )?;
        assert_eq!(c.relays, vec![Ipv4Addr::new(192, 0, 2, 254)]);
        assert_eq!(c.script_access(), ScriptAccess::Open);
        assert_eq!(c.unknown_cap(), 10);
        Ok(())
    }

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() -> R {
        let mut c: ServeConfig = toml::from_str(
            "iscsi_port = 3261\nlease_secs = 600\ndns = [\"192.0.2.53\"]\nefi_binary = \"ipxe\"\n",
        )?;
        c.overlay(flags(&[
            "--iscsi-port",
            "3262",
            "--dns",
            "192.0.2.1,192.0.2.2",
            "--unknown",
            "discover",
            "--node-quota",
            "1G",
            "--pool",
            "192.0.2.10-192.0.2.20",
            "--dhcp",
            "proxy",
        ])?);
        assert_eq!(c.dhcp(), Some(Mode::Proxy));
        assert!(!c.ipv6_ra(Mode::Proxy) && c.ipv6_ra(Mode::Full));
        c.overlay(flags(&["--ipv6-ra", "on"])?);
        assert!(c.ipv6_ra(Mode::Proxy));
        let off: ServeConfig = toml::from_str("ipv6_ra = \"off\"\n")?;
        assert!(!off.ipv6_ra(Mode::Full));
        assert!(flags(&["--ipv6-ra", "yes"]).is_err());
        assert_eq!(c.iscsi_port(), 3262);
        assert_eq!(c.lease_secs(), 600);
        assert_eq!(
            c.dns,
            [Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2)]
        );
        assert_eq!(c.efi(), EfiFlavour::Full);
        assert_eq!(c.unknown(), UnknownPolicy::Discover);
        assert_eq!(c.node_quota, Some(1 << 30));
        assert_eq!(
            (c.http_port(), c.tftp_port(), c.per_source()),
            (8080, 69, 16)
        );
        assert!(flags(&["--unknown", "boot"]).is_err());
        assert!(flags(&["--pool", "192.0.2.20-192.0.2.10"]).is_err());
        assert!(flags(&["--efi-binary", "full"]).is_err());
        let mut short = flags(&["--lease-secs", "30"])?;
        assert!(matches!(short.check(), Err(ConfigError::LeaseTime(30))));
        short.lease_secs = None;
        short.per_source = Some(0);
        assert!(matches!(short.check(), Err(ConfigError::PerSource(0))));
        Ok(())
    }
}
