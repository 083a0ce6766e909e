//! `key=value` text segments of Login and Text PDUs (RFC 7143 6.1).
//!
//! Only syntax lives here; what each key means and how it is negotiated is in
//! [`crate::negotiate`].

use bytes::Bytes;

/// Longest key name (RFC 7143 6.1: 63 bytes).
pub const MAX_KEY_LEN: usize = 63;
/// Longest value we accept. Most values are at most 255 bytes; CHAP
/// challenges and responses may be long binary values, so allow more.
pub const MAX_VALUE_LEN: usize = 8192;
/// Most text we collect across continued PDUs of one request.
pub const MAX_TEXT_LEN: usize = 64 * 1024;
/// Most pairs in one request.
pub const MAX_PAIRS: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("text segment longer than {MAX_TEXT_LEN} bytes")]
    TooLong,
    #[error("too many keys")]
    TooManyPairs,
    #[error("missing '=' in {0:?}")]
    NoEquals(String),
    #[error("invalid key {0:?}")]
    BadKey(String),
    #[error("value of {0} too long")]
    ValueTooLong(String),
    #[error("value of {0} is not UTF-8")]
    NotUtf8(String),
    #[error("key {0} sent twice")]
    Duplicate(String),
}

/// Parsed pairs, in the order the peer sent them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pairs(pub Vec<(String, String)>);

impl Pairs {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    pub fn push(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.0.push((key.into(), value.into()));
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Encodes as NUL-terminated `key=value` strings.
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::new();
        for (k, v) in &self.0 {
            out.extend_from_slice(k.as_bytes());
            out.push(b'=');
            out.extend_from_slice(v.as_bytes());
            out.push(0);
        }
        Bytes::from(out)
    }
}

fn key_ok(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= MAX_KEY_LEN
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-+@_:".contains(&b))
}

/// Parses a complete text segment. A missing NUL after the last pair is
/// tolerated; empty strings between NULs (padding) are skipped.
pub fn parse(data: &[u8]) -> Result<Pairs, TextError> {
    if data.len() > MAX_TEXT_LEN {
        return Err(TextError::TooLong);
    }
    let mut pairs = Pairs::default();
    for item in data.split(|&b| b == 0).filter(|s| !s.is_empty()) {
        if pairs.0.len() >= MAX_PAIRS {
            return Err(TextError::TooManyPairs);
        }
        let text = String::from_utf8_lossy(item);
        let eq = item
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| TextError::NoEquals(text.chars().take(80).collect()))?;
        let key = std::str::from_utf8(&item[..eq])
            .ok()
            .filter(|k| key_ok(k))
            .ok_or_else(|| TextError::BadKey(text.chars().take(80).collect()))?;
        let value = &item[eq + 1..];
        if value.len() > MAX_VALUE_LEN {
            return Err(TextError::ValueTooLong(key.to_string()));
        }
        let value = std::str::from_utf8(value).map_err(|_| TextError::NotUtf8(key.to_string()))?;
        if pairs.get(key).is_some() {
            return Err(TextError::Duplicate(key.to_string()));
        }
        pairs.push(key, value);
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_encodes() -> Result<(), TextError> {
        let p = parse(b"InitiatorName=iqn.x\0SessionType=Normal\0\0\0")?;
        assert_eq!(p.get("InitiatorName"), Some("iqn.x"));
        assert_eq!(p.get("SessionType"), Some("Normal"));
        assert_eq!(parse(&p.encode())?, p);
        // Empty values are legal syntax (the negotiation decides).
        assert_eq!(parse(b"X-a=\0")?.get("X-a"), Some(""));
        Ok(())
    }

    #[test]
    fn rejects_bad_text() {
        assert!(matches!(parse(b"novalue\0"), Err(TextError::NoEquals(_))));
        assert!(matches!(parse(b"=v\0"), Err(TextError::BadKey(_))));
        assert!(matches!(parse(b"a b=v\0"), Err(TextError::BadKey(_))));
        assert!(matches!(parse(b"A=1\0A=2\0"), Err(TextError::Duplicate(_))));
        let long = format!("K={}\0", "v".repeat(MAX_VALUE_LEN + 1));
        assert!(matches!(
            parse(long.as_bytes()),
            Err(TextError::ValueTooLong(_))
        ));
        assert!(matches!(parse(b"A=\xff\0"), Err(TextError::NotUtf8(_))));
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse(&data);
        }

        #[test]
        fn round_trips(pairs in proptest::collection::btree_map("[A-Za-z][A-Za-z0-9.:_-]{0,20}", "[ -~]{0,40}", 0..10)) {
            let mut p = Pairs::default();
            for (k, v) in &pairs {
                p.push(k.clone(), v.clone());
            }
            prop_assert_eq!(parse(&p.encode()).ok(), Some(p));
        }
    }
}
