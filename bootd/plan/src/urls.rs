//! Every URL path bootd serves, in one place: the DHCP answer that points
//! iPXE at a script, the chain script that points it at the node's own, the
//! HTTP router that takes them apart, and the iPXE binaries for UEFI HTTP
//! boot. Paths are checked strictly: anything that looks like traversal is
//! refused rather than looked up.

use crate::Mac;

/// The generic script: chains to the node's own by MAC.
pub const CHAIN_PATH: &str = "/boot.ipxe";
/// Prometheus text exposition.
pub const METRICS_PATH: &str = "/metrics";
/// Where iPXE binaries are served for UEFI HTTP boot.
pub const BINARY_PREFIX: &str = "/ipxe/";
/// cloud-init's NoCloud seed (`ds=nocloud;s=http://SERVER:PORT/nocloud/`):
/// the same URL for every node, which is told apart by its address.
pub const NOCLOUD_PREFIX: &str = "/nocloud/";
/// A node's own script is `NODE_PREFIX + MAC + NODE_SUFFIX`.
const NODE_PREFIX: &str = "/boot/";
const NODE_SUFFIX: &str = ".ipxe";
/// The query parameter carrying a one-time script token.
pub const TOKEN_PARAM: &str = "t";

/// Longest binary name accepted (`snponly-arm64.efi` is 17).
const MAX_BINARY: usize = 64;

/// `http://HOST:PORT`, the base every URL here is appended to.
pub fn http_base(host: &str, port: u16) -> String {
    format!("http://{host}:{port}")
}

/// The generic chain script's URL.
pub fn chain_url(base: &str) -> String {
    format!("{base}{CHAIN_PATH}")
}

/// A node's own script, with its one-time token when it has one.
pub fn node_url(base: &str, mac: Mac, token: Option<&str>) -> String {
    let path = format!("{base}{NODE_PREFIX}{}{NODE_SUFFIX}", mac.hyphenated());
    match token {
        Some(t) => format!("{path}?{TOKEN_PARAM}={t}"),
        None => path,
    }
}

/// The node-script URL as an iPXE script writes it, with iPXE's own
/// `${netX/mac:hexhyp}` in place of the MAC.
pub fn node_url_ipxe(base: &str) -> String {
    format!("{base}{NODE_PREFIX}${{netX/mac:hexhyp}}{NODE_SUFFIX}")
}

/// An iPXE binary for UEFI HTTP boot firmware.
pub fn binary_url(base: &str, name: &str) -> String {
    format!("{base}{BINARY_PREFIX}{name}")
}

/// The NoCloud seed URL, with the trailing `/` cloud-init needs.
pub fn nocloud_url(base: &str) -> String {
    format!("{base}{NOCLOUD_PREFIX}")
}

/// The binary a URL names, if it is a binary URL.
pub fn binary_of(url: &str) -> Option<&str> {
    url.rsplit_once(BINARY_PREFIX).map(|(_, name)| name)
}

/// `url` without its token, for logs and boot stages.
pub fn redact(url: &str) -> String {
    match url.split_once(&format!("?{TOKEN_PARAM}=")) {
        Some((base, _)) => format!("{base}?{TOKEN_PARAM}=…"),
        None => url.to_string(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/boot.ipxe`: the generic script that chains to the node's own.
    Chain,
    /// `/boot/{mac}.ipxe`.
    Node(Mac),
    /// `/metrics`.
    Metrics,
    /// `/ipxe/{name}`: an iPXE binary from the boot directory TFTP serves.
    Binary(String),
    /// `/nocloud/{file}`: the asking node's cloud-init seed.
    NoCloud(NoCloudFile),
}

/// The files of a NoCloud seed cloud-init fetches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoCloudFile {
    MetaData,
    UserData,
    VendorData,
    NetworkConfig,
}

impl NoCloudFile {
    fn from_name(name: &str) -> Option<Self> {
        match name {
            "meta-data" => Some(Self::MetaData),
            "user-data" => Some(Self::UserData),
            "vendor-data" => Some(Self::VendorData),
            "network-config" => Some(Self::NetworkConfig),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    BadRequest,
    NotFound,
}

/// Which resource a request path (no query string) names.
pub fn route(path: &str) -> Result<Route, Refusal> {
    if path.contains("..") || path.contains("//") {
        return Err(Refusal::BadRequest);
    }
    if path == CHAIN_PATH {
        return Ok(Route::Chain);
    }
    if path == METRICS_PATH {
        return Ok(Route::Metrics);
    }
    if let Some(name) = path.strip_prefix(NOCLOUD_PREFIX) {
        return NoCloudFile::from_name(name)
            .map(Route::NoCloud)
            .ok_or(Refusal::NotFound);
    }
    if let Some(name) = path.strip_prefix(BINARY_PREFIX) {
        // One plain file name: no directories, nothing hidden.
        let ok = !name.is_empty()
            && name.len() <= MAX_BINARY
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        return if ok {
            Ok(Route::Binary(name.to_string()))
        } else {
            Err(Refusal::NotFound)
        };
    }
    path.strip_prefix(NODE_PREFIX)
        .and_then(|p| p.strip_suffix(NODE_SUFFIX))
        .and_then(Mac::parse_path)
        .map(Route::Node)
        .ok_or(Refusal::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAC: Mac = Mac::new([0x52, 0x54, 0, 0x12, 0x34, 0xab]);

    #[test]
    fn boot_paths() {
        assert_eq!(route("/boot.ipxe"), Ok(Route::Chain));
        assert_eq!(route("/metrics"), Ok(Route::Metrics));
        for p in [
            "/boot/52-54-00-12-34-AB.ipxe",
            "/boot/52:54:00:12:34:ab.ipxe",
            "/boot/5254001234Ab.ipxe",
        ] {
            assert_eq!(route(p), Ok(Route::Node(MAC)), "{p}");
        }
    }

    #[test]
    fn urls_route_back() {
        let base = http_base("192.0.2.1", 8080);
        let url = node_url(&base, MAC, Some("ab12"));
        assert_eq!(
            url,
            "http://192.0.2.1:8080/boot/52-54-00-12-34-ab.ipxe?t=ab12"
        );
        assert_eq!(
            redact(&url),
            "http://192.0.2.1:8080/boot/52-54-00-12-34-ab.ipxe?t=…"
        );
        let path = url.strip_prefix(&base).and_then(|p| p.split('?').next());
        assert_eq!(path.map(route), Some(Ok(Route::Node(MAC))));
        assert_eq!(chain_url(&base), "http://192.0.2.1:8080/boot.ipxe");
        let bin = binary_url(&base, "snponly.efi");
        assert_eq!(binary_of(&bin), Some("snponly.efi"));
        assert_eq!(
            node_url_ipxe(&base),
            "http://192.0.2.1:8080/boot/${netX/mac:hexhyp}.ipxe"
        );
    }

    #[test]
    fn refusals() {
        assert_eq!(route("/boot/../bootd.db"), Err(Refusal::BadRequest));
        assert_eq!(route("/boot/..ipxe"), Err(Refusal::BadRequest));
        assert_eq!(route("//boot.ipxe"), Err(Refusal::BadRequest));
        assert_eq!(route("/"), Err(Refusal::NotFound));
        assert_eq!(
            route("/boot/52-54:00-12-34-56.ipxe"),
            Err(Refusal::NotFound)
        );
        assert_eq!(route("/boot/52545400123456.ipxe"), Err(Refusal::NotFound));
        assert_eq!(route("/boot/zz5400123456.ipxe"), Err(Refusal::NotFound));
        assert_eq!(route("/boot/52-54-00-12-34-56.efi"), Err(Refusal::NotFound));
        assert_eq!(
            route("/ipxe/snponly.efi"),
            Ok(Route::Binary("snponly.efi".into()))
        );
        for p in [
            "/ipxe/",
            "/ipxe/.hidden",
            "/ipxe/a/b.efi",
            "/ipxe/a%2fb",
            "/ipxe/a b",
        ] {
            assert_eq!(route(p), Err(Refusal::NotFound), "{p}");
        }
        assert_eq!(route("/ipxe/../etc/passwd"), Err(Refusal::BadRequest));
        assert_eq!(
            route("/nocloud/meta-data"),
            Ok(Route::NoCloud(NoCloudFile::MetaData))
        );
        assert_eq!(
            route("/nocloud/user-data"),
            Ok(Route::NoCloud(NoCloudFile::UserData))
        );
        for p in ["/nocloud/", "/nocloud/meta-data/", "/nocloud/secrets"] {
            assert_eq!(route(p), Err(Refusal::NotFound), "{p}");
        }
        assert_eq!(
            nocloud_url("http://192.0.2.1:8080"),
            "http://192.0.2.1:8080/nocloud/"
        );
    }

    proptest! {
        #[test]
        fn any_path_routes_without_panic(path in "[A-Za-z0-9._:/-]{0,300}") {
            let _ = route(&path);
        }
    }
}
