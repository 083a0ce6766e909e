//! The one MAC address type: every protocol keys a node by it, and it is
//! parsed once, at the edge where it arrives (a DHCP header, a URL path, an
//! operator's command line, a registry row).

use std::fmt;
use std::str::FromStr;

/// An Ethernet hardware address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac([u8; 6]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a MAC address (want six hex pairs like 52:54:00:12:34:56)")]
pub struct MacError(pub String);

impl Mac {
    pub const fn new(bytes: [u8; 6]) -> Self {
        Self(bytes)
    }

    pub fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// The first six bytes of a DHCP `chaddr`; `None` when shorter.
    pub fn from_hardware(chaddr: &[u8]) -> Option<Self> {
        let b: [u8; 6] = chaddr.get(..6)?.try_into().ok()?;
        Some(Self(b))
    }

    /// `52-54-00-12-34-56`: the spelling in boot URLs (iPXE's `hexhyp`).
    pub fn hyphenated(&self) -> String {
        let mut s = String::with_capacity(17);
        // Writing to a String cannot fail.
        let _ = self.write(&mut s, '-');
        s
    }

    /// Six lower-case hex pairs joined by `sep`, with no allocation.
    fn write(&self, out: &mut impl fmt::Write, sep: char) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                out.write_char(sep)?;
            }
            write!(out, "{b:02x}")?;
        }
        Ok(())
    }

    /// The strict spelling accepted in URL paths: six hex pairs, bare or
    /// all separated by the same `:` or `-`, any case.
    pub fn parse_path(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        match b.len() {
            12 => hex12(b),
            17 => {
                let sep = b[2];
                if !matches!(sep, b':' | b'-') {
                    return None;
                }
                let mut out = Vec::with_capacity(12);
                for (i, &c) in b.iter().enumerate() {
                    if i % 3 == 2 {
                        if c != sep {
                            return None;
                        }
                    } else {
                        out.push(c);
                    }
                }
                hex12(&out)
            }
            _ => None,
        }
    }
}

/// Twelve hex digits as six bytes.
fn hex12(b: &[u8]) -> Option<Mac> {
    if b.len() != 12 {
        return None;
    }
    let mut out = [0u8; 6];
    for (i, pair) in b.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(Mac(out))
}

impl FromStr for Mac {
    type Err = MacError;

    /// What operators type: `aa:bb:cc:dd:ee:ff`, `AA-BB-CC-DD-EE-FF`,
    /// `aabb.ccdd.eeff` and `aabbccddeeff`.
    fn from_str(input: &str) -> Result<Self, MacError> {
        let err = || MacError(input.to_string());
        if !input
            .chars()
            .all(|c| c.is_ascii_hexdigit() || matches!(c, ':' | '-' | '.'))
        {
            return Err(err());
        }
        let hex: Vec<u8> = input
            .bytes()
            .filter(|c| !matches!(c, b':' | b'-' | b'.'))
            .collect();
        hex12(&hex).ok_or_else(err)
    }
}

/// Lower-case colon form, as stored in the registry and shown to operators.
impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f, ':')
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn spellings() {
        let want = Mac::new([0x52, 0x54, 0, 0x12, 0x34, 0xab]);
        for s in [
            "52:54:00:12:34:ab",
            "52-54-00-12-34-AB",
            "5254.0012.34ab",
            "5254001234ab",
        ] {
            assert_eq!(s.parse::<Mac>(), Ok(want), "{s}");
        }
        assert_eq!(want.to_string(), "52:54:00:12:34:ab");
        assert_eq!(want.hyphenated(), "52-54-00-12-34-ab");
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:ab:cd",
            "zz:54:00:12:34:ab",
            "52 54 00 12 34 ab",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
        assert_eq!(Mac::parse_path("52-54:00-12-34-56"), None);
        assert_eq!(Mac::parse_path("5254.0012.34ab"), None);
        assert_eq!(Mac::parse_path("5254001234Ab"), Some(want));
        assert_eq!(
            Mac::from_hardware(&[0x52, 0x54, 0, 0x12, 0x34, 0xab, 0, 0]),
            Some(want)
        );
        assert_eq!(Mac::from_hardware(&[1, 2]), None);
    }

    proptest! {
        #[test]
        fn display_parses_back(b in any::<[u8; 6]>()) {
            let m = Mac::new(b);
            prop_assert_eq!(m.to_string().parse::<Mac>(), Ok(m));
            prop_assert_eq!(Mac::parse_path(&m.hyphenated()), Some(m));
        }

        #[test]
        fn any_text_parses_without_panic(s in "\\PC{0,40}") {
            let _ = s.parse::<Mac>();
            let _ = Mac::parse_path(&s);
        }
    }
}
