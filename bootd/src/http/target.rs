//! The request target, as hyper parsed it from untrusted bytes, checked
//! with hard bounds before anything looks it up: a short, plain path in
//! origin form (`/…`), and of the query only a plausible script token.
//! hyper's parser enforces HTTP/1.x syntax and the head's size; what a
//! boot path may contain is bootd's rule, kept here.

/// Longest request target (path and query) accepted: boot paths are short.
pub const MAX_TARGET: usize = 256;

/// The query parameter of a script URL that carries the one-time token.
pub use bootd_plan::urls::TOKEN_PARAM;

/// Longest token accepted (bootd issues 32 hex digits).
pub const MAX_TOKEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The path without its query string; only `[A-Za-z0-9._:/-]`.
    pub path: String,
    /// The script token (`?t=HEX`), when the query has a plausible one;
    /// the rest of the query is ignored.
    pub token: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("request target longer than {MAX_TARGET} bytes")]
    TooLong,
    #[error("request target has characters outside [A-Za-z0-9._:/-]")]
    BadTarget,
}

impl TargetError {
    /// The status to answer with.
    pub fn status(self) -> u16 {
        match self {
            Self::TooLong => 414,
            Self::BadTarget => 400,
        }
    }
}

/// Checks a target: `absolute` is whether it came in absolute form
/// (`GET http://host/path`), which a boot client never sends.
pub fn check(absolute: bool, path: &str, query: Option<&str>) -> Result<Target, TargetError> {
    let len = path.len() + query.map_or(0, |q| q.len() + 1);
    if len > MAX_TARGET {
        return Err(TargetError::TooLong);
    }
    // No percent-decoding: an escaped byte can never smuggle a separator.
    let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'/' | b'-');
    if absolute || !path.starts_with('/') || !path.bytes().all(plain) {
        return Err(TargetError::BadTarget);
    }
    Ok(Target {
        path: path.to_string(),
        token: query.and_then(token),
    })
}

/// `t=HEX` among `&`-separated query parameters: hex digits only, bounded.
fn token(query: &str) -> Option<String> {
    let prefix = format!("{TOKEN_PARAM}=");
    query
        .split('&')
        .filter_map(|p| p.strip_prefix(prefix.as_str()))
        .find(|v| !v.is_empty() && v.len() <= MAX_TOKEN && v.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_ascii_lowercase)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_paths_and_tokens() {
        let t = check(false, "/boot/52-54-00-12-34-56.ipxe", Some("x=%2e"));
        assert_eq!(
            t,
            Ok(Target {
                path: "/boot/52-54-00-12-34-56.ipxe".into(),
                token: None
            })
        );
        let t = check(false, "/boot/52-54-00-12-34-56.ipxe", Some("x=1&t=00AbfF"));
        assert_eq!(t.map(|t| t.token), Ok(Some("00abff".into())));
        for q in ["t=", "t=xyz", "tt=00", "t=00%00"] {
            assert_eq!(
                check(false, "/boot.ipxe", Some(q)).map(|t| t.token),
                Ok(None)
            );
        }
    }

    #[test]
    fn refuses_hostile_targets() {
        for p in ["/%2e%2e/x", "/a b", "x", "", "/\u{e9}"] {
            assert_eq!(check(false, p, None), Err(TargetError::BadTarget), "{p}");
        }
        assert_eq!(check(true, "/", None), Err(TargetError::BadTarget));
        let long = format!("/{}", "a".repeat(MAX_TARGET));
        assert_eq!(check(false, &long, None), Err(TargetError::TooLong));
        let q = "t=".to_string() + &"0".repeat(MAX_TARGET);
        assert_eq!(check(false, "/", Some(&q)), Err(TargetError::TooLong));
    }

    proptest! {
        #[test]
        fn hostile_targets_never_pass_unchecked(path in "\\PC{0,300}", query in proptest::option::of("\\PC{0,80}")) {
            if let Ok(t) = check(false, &path, query.as_deref()) {
                prop_assert!(t.path.len() <= MAX_TARGET && t.path.starts_with('/'));
                prop_assert!(!t.path.contains('%'));
                prop_assert!(t.token.is_none_or(|t| t.len() <= MAX_TOKEN));
            }
        }
    }
}
