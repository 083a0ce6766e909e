//! CRC32C header and data digests (RFC 7143 13.1, Appendix A).
//!
//! The digest is the Castagnoli CRC of the covered bytes, sent least
//! significant byte first (RFC 7143 B.4 gives test vectors).

/// Digest of `parts` taken as one contiguous byte string.
pub fn crc32c(parts: &[&[u8]]) -> u32 {
    parts
        .iter()
        .fold(0u32, |crc, part| crc32c::crc32c_append(crc, part))
}

/// Encodes a digest as it travels on the wire.
pub fn to_wire(crc: u32) -> [u8; 4] {
    crc.to_le_bytes()
}

/// Decodes a digest read from the wire.
pub fn from_wire(bytes: [u8; 4]) -> u32 {
    u32::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7143 B.4 (from RFC 3720 B.4): 32 bytes of zeros.
    #[test]
    fn rfc_vectors() {
        assert_eq!(crc32c(&[&[0u8; 32]]), 0x8a91_36aa);
        assert_eq!(crc32c(&[&[0xffu8; 32]]), 0x62a8_ab43);
        let inc: Vec<u8> = (0u8..32).collect();
        assert_eq!(crc32c(&[&inc]), 0x46dd_794e);
        assert_eq!(crc32c(&[&inc[..5], &inc[5..]]), 0x46dd_794e);
    }
}
