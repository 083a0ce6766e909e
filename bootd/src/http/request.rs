//! The HTTP/1.x request head, parsed from untrusted bytes with hard bounds:
//! only the request line matters (GET or HEAD of a short, plain path);
//! headers are skipped but count towards the size limit.

/// The whole head (request line and headers) must fit in this.
pub const MAX_HEAD: usize = 8 * 1024;
/// Longest request target accepted: boot paths are short.
pub const MAX_TARGET: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The target without its query string; only `[A-Za-z0-9._:/-]`.
    pub path: String,
    /// The script token (`?t=HEX`), when the query has a plausible one;
    /// the rest of the query is ignored.
    pub token: Option<String>,
}

/// The query parameter of a script URL that carries the one-time token.
pub use bootd_plan::urls::TOKEN_PARAM;

/// Longest token accepted (bootd issues 32 hex digits).
pub const MAX_TOKEN: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("request head larger than {MAX_HEAD} bytes")]
    TooLarge,
    #[error("malformed request line")]
    Malformed,
    #[error("method not allowed")]
    Method,
    #[error("unsupported HTTP version")]
    Version,
    #[error("request target longer than {MAX_TARGET} bytes")]
    TargetTooLong,
    #[error("request target has characters outside [A-Za-z0-9._:/-]")]
    BadTarget,
}

impl ParseError {
    /// The status to answer with.
    pub fn status(self) -> u16 {
        match self {
            Self::TooLarge => 431,
            Self::Method => 405,
            Self::Version => 505,
            Self::TargetTooLong => 414,
            Self::Malformed | Self::BadTarget => 400,
        }
    }
}

/// `Ok(None)` until the head is complete (a blank line has arrived).
pub fn parse(buf: &[u8]) -> Result<Option<Request>, ParseError> {
    let Some(end) = head_end(buf) else {
        return if buf.len() >= MAX_HEAD {
            Err(ParseError::TooLarge)
        } else {
            Ok(None)
        };
    };
    if end > MAX_HEAD {
        return Err(ParseError::TooLarge);
    }
    let head = &buf[..end];
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = head[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&head[..line_end]);
    if !line.iter().all(|&b| (0x20..0x7f).contains(&b)) {
        return Err(ParseError::Malformed);
    }
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::Malformed);
    };
    let method = match method {
        b"GET" => Method::Get,
        b"HEAD" => Method::Head,
        m if !m.is_empty() && m.iter().all(u8::is_ascii_uppercase) => {
            return Err(ParseError::Method)
        }
        _ => return Err(ParseError::Malformed),
    };
    if !matches!(version, b"HTTP/1.1" | b"HTTP/1.0") {
        return Err(if version.starts_with(b"HTTP/") {
            ParseError::Version
        } else {
            ParseError::Malformed
        });
    }
    if target.len() > MAX_TARGET {
        return Err(ParseError::TargetTooLong);
    }
    // Of the query string only the token is read; nothing else is
    // interpreted.
    let mut split = target.splitn(2, |&b| b == b'?');
    let path = split.next().unwrap_or_default();
    let token = split.next().and_then(token);
    // No percent-decoding: an escaped byte can never smuggle a separator.
    let plain = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'/' | b'-');
    if !path.starts_with(b"/") || !path.iter().all(plain) {
        return Err(ParseError::BadTarget);
    }
    Ok(Some(Request {
        method,
        path: String::from_utf8_lossy(path).into_owned(),
        token,
    }))
}

/// `t=HEX` among `&`-separated query parameters: hex digits only, bounded.
fn token(query: &[u8]) -> Option<String> {
    let prefix = format!("{TOKEN_PARAM}=");
    query
        .split(|&b| b == b'&')
        .filter_map(|p| p.strip_prefix(prefix.as_bytes()))
        .find(|v| !v.is_empty() && v.len() <= MAX_TOKEN && v.iter().all(u8::is_ascii_hexdigit))
        .map(|v| String::from_utf8_lossy(v).to_ascii_lowercase())
}

/// Index just past the blank line ending the head (`\r\n\r\n` or `\n\n`).
fn head_end(buf: &[u8]) -> Option<usize> {
    let limit = buf.len().min(MAX_HEAD + 4);
    let buf = &buf[..limit];
    (0..buf.len()).find_map(|i| {
        if buf[i..].starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if buf[i..].starts_with(b"\n\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_get_and_head() {
        let r = parse(b"GET /boot.ipxe HTTP/1.1\r\nHost: x\r\nUser-Agent: iPXE/1.21\r\n\r\n");
        assert_eq!(
            r,
            Ok(Some(Request {
                method: Method::Get,
                path: "/boot.ipxe".into(),
                token: None,
            }))
        );
        let r = parse(b"HEAD /boot/52-54-00-12-34-56.ipxe?x=%2e HTTP/1.0\n\n");
        assert_eq!(
            r,
            Ok(Some(Request {
                method: Method::Head,
                path: "/boot/52-54-00-12-34-56.ipxe".into(),
                token: None,
            }))
        );
        let r = parse(b"GET /boot/52-54-00-12-34-56.ipxe?x=1&t=00AbfF HTTP/1.1\r\n\r\n");
        assert_eq!(
            r.map(|r| r.and_then(|r| r.token)),
            Ok(Some("00abff".into()))
        );
        for q in ["t=", "t=xyz", "tt=00", "t=00%00"] {
            let head = format!("GET /boot.ipxe?{q} HTTP/1.1\r\n\r\n");
            assert_eq!(
                parse(head.as_bytes()).map(|r| r.and_then(|r| r.token)),
                Ok(None),
                "{q}"
            );
        }
    }

    #[test]
    fn waits_for_the_blank_line() {
        assert_eq!(parse(b"GET /boot.ipxe HTTP/1.1\r\nHost: x\r\n"), Ok(None));
        assert_eq!(parse(b""), Ok(None));
    }

    #[test]
    fn refuses_bad_heads() {
        assert_eq!(parse(b"POST / HTTP/1.1\r\n\r\n"), Err(ParseError::Method));
        assert_eq!(parse(b"GET / HTTP/2.0\r\n\r\n"), Err(ParseError::Version));
        assert_eq!(
            parse(b"GET  / HTTP/1.1\r\n\r\n"),
            Err(ParseError::Malformed)
        );
        assert_eq!(parse(b"GET /\r\n\r\n"), Err(ParseError::Malformed));
        assert_eq!(
            parse(b"GET /%2e%2e/x HTTP/1.1\r\n\r\n"),
            Err(ParseError::BadTarget)
        );
        assert_eq!(
            parse(b"GET http://x/ HTTP/1.1\r\n\r\n"),
            Err(ParseError::BadTarget)
        );
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_TARGET));
        assert_eq!(parse(long.as_bytes()), Err(ParseError::TargetTooLong));
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(parse(huge.as_bytes()), Err(ParseError::TooLarge));
        assert_eq!(
            parse(b"GET /\xff HTTP/1.1\r\n\r\n"),
            Err(ParseError::Malformed)
        );
    }

    proptest! {
        #[test]
        fn hostile_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..10_000)) {
            if let Ok(Some(r)) = parse(&bytes) {
                prop_assert!(r.path.len() <= MAX_TARGET);
                prop_assert!(r.path.starts_with('/'));
            }
        }

        #[test]
        fn mangled_requests_never_panic(
            prefix in "(GET|HEAD|PUT|) ?",
            target in "[ -~]{0,300}",
            tail in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut bytes = format!("{prefix}{target} HTTP/1.1\r\n").into_bytes();
            bytes.extend_from_slice(&tail);
            bytes.extend_from_slice(b"\r\n\r\n");
            if let Ok(Some(r)) = parse(&bytes) {
                prop_assert!(!r.path.contains(".%"));
                prop_assert!(r.path.len() <= MAX_TARGET);
            }
        }
    }
}
