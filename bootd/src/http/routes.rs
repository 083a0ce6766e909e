//! Which resource a request path names. Paths are checked strictly: only
//! the boot paths and `/ipxe/NAME` exist, and anything that looks like
//! traversal is a 400 rather than a lookup.

/// Longest MAC spelling accepted in a path (`aa-bb-cc-dd-ee-ff`).
const MAX_MAC: usize = 17;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/boot.ipxe`: the generic script that chains to the node's own.
    Chain,
    /// `/boot/{mac}.ipxe`, with the MAC in lower-case colon form.
    Node(String),
    /// `/metrics`: Prometheus text exposition.
    Metrics,
    /// `/ipxe/{name}`: an iPXE binary for UEFI HTTP boot firmware, from
    /// the boot directory TFTP serves.
    Binary(String),
}

/// Longest binary name accepted (`snponly-arm64.efi` is 17).
const MAX_BINARY: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    BadRequest,
    NotFound,
}

pub fn route(path: &str) -> Result<Route, Refusal> {
    if path.contains("..") || path.contains("//") {
        return Err(Refusal::BadRequest);
    }
    if path == "/boot.ipxe" {
        return Ok(Route::Chain);
    }
    if path == "/metrics" {
        return Ok(Route::Metrics);
    }
    if let Some(name) = path.strip_prefix(crate::dhcp::boot::HTTP_BINARY_PREFIX) {
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
    let mac = path
        .strip_prefix("/boot/")
        .and_then(|p| p.strip_suffix(".ipxe"))
        .ok_or(Refusal::NotFound)?;
    parse_mac(mac).map(Route::Node).ok_or(Refusal::NotFound)
}

/// Six hex pairs, either bare or all separated by the same `:` or `-`, any
/// case (iPXE's `${netX/mac:hexhyp}` gives `52-54-00-12-34-56`).
pub fn parse_mac(s: &str) -> Option<String> {
    if s.len() > MAX_MAC {
        return None;
    }
    let bytes = s.as_bytes();
    let hex: Vec<u8> = match bytes.len() {
        12 => bytes.to_vec(),
        17 => {
            let sep = bytes[2];
            if !matches!(sep, b':' | b'-') {
                return None;
            }
            let mut out = Vec::with_capacity(12);
            for (i, &b) in bytes.iter().enumerate() {
                if i % 3 == 2 {
                    if b != sep {
                        return None;
                    }
                } else {
                    out.push(b);
                }
            }
            out
        }
        _ => return None,
    };
    if !hex.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let lower = hex.to_ascii_lowercase();
    let pairs: Vec<&str> = lower
        .chunks(2)
        .map(|p| std::str::from_utf8(p).unwrap_or_default())
        .collect();
    Some(pairs.join(":"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn boot_paths() {
        assert_eq!(route("/boot.ipxe"), Ok(Route::Chain));
        assert_eq!(route("/metrics"), Ok(Route::Metrics));
        for p in [
            "/boot/52-54-00-12-34-AB.ipxe",
            "/boot/52:54:00:12:34:ab.ipxe",
            "/boot/5254001234Ab.ipxe",
        ] {
            assert_eq!(route(p), Ok(Route::Node("52:54:00:12:34:ab".into())), "{p}");
        }
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
    }

    proptest! {
        #[test]
        fn any_path_routes_without_panic(path in "[A-Za-z0-9._:/-]{0,300}") {
            if let Ok(Route::Node(mac)) = route(&path) {
                prop_assert_eq!(mac.len(), 17);
                prop_assert!(mac.bytes().all(|b| b == b':' || b.is_ascii_hexdigit()));
            }
        }
    }
}
