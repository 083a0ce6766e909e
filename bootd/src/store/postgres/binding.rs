//! SCRAM channel binding `tls-server-end-point` (RFC 5929 section 4.1):
//! the hash of the server's certificate, with the hash function of the
//! certificate's signature algorithm (SHA-256 where that is MD5 or SHA-1).
//! With it, SCRAM-SHA-256-PLUS ties the password exchange to this TLS
//! session: a man in the middle who terminates TLS (possible when the
//! certificate is not checked, `sslmode=require`) cannot relay the login.
//!
//! The certificate comes from the network: the DER walk is bounds-checked
//! and answers `None` for anything it does not know (then no binding is
//! offered, and SCRAM runs without it).

use sha2::{Digest, Sha256, Sha384, Sha512};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

/// The `tls-server-end-point` binding data for the DER certificate `cert`.
pub fn end_point(cert: &[u8]) -> Option<Vec<u8>> {
    Some(match signature_hash(cert)? {
        Hash::Sha256 => Sha256::digest(cert).to_vec(),
        Hash::Sha384 => Sha384::digest(cert).to_vec(),
        Hash::Sha512 => Sha512::digest(cert).to_vec(),
    })
}

/// DER object identifiers (contents octets) of signature algorithms, and
/// the hash RFC 5929 binds with.
const ALGORITHMS: &[(&[u8], Hash)] = &[
    // md5WithRSAEncryption, sha1WithRSAEncryption: SHA-256 by the RFC.
    (
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x04],
        Hash::Sha256,
    ),
    (
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05],
        Hash::Sha256,
    ),
    // sha256/384/512WithRSAEncryption.
    (
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b],
        Hash::Sha256,
    ),
    (
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c],
        Hash::Sha384,
    ),
    (
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d],
        Hash::Sha512,
    ),
    // ecdsa-with-SHA1, ecdsa-with-SHA256/384/512.
    (&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01], Hash::Sha256),
    (
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02],
        Hash::Sha256,
    ),
    (
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],
        Hash::Sha384,
    ),
    (
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04],
        Hash::Sha512,
    ),
];

/// The hash of `cert`'s signatureAlgorithm: `Certificate ::= SEQUENCE {
/// tbsCertificate, signatureAlgorithm AlgorithmIdentifier, signature }`,
/// `AlgorithmIdentifier ::= SEQUENCE { algorithm OID, parameters }`.
/// RSASSA-PSS (hash in its parameters), EdDSA (no hash defined) and
/// anything else: `None`.
pub fn signature_hash(cert: &[u8]) -> Option<Hash> {
    let (body, _) = tlv(cert, SEQUENCE)?;
    let (_tbs, rest) = tlv(body, SEQUENCE)?;
    let (algorithm, _) = tlv(rest, SEQUENCE)?;
    let (oid, _) = tlv(algorithm, OID)?;
    ALGORITHMS
        .iter()
        .find(|(known, _)| *known == oid)
        .map(|(_, h)| *h)
}

const SEQUENCE: u8 = 0x30;
const OID: u8 = 0x06;

/// One DER element of tag `tag` at the start of `b`: its contents and what
/// follows it. Definite lengths of up to four octets only.
fn tlv(b: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = b.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (octets, rest) = rest.split_at_checked(n)?;
        let len = octets
            .iter()
            .fold(0usize, |acc, &o| (acc << 8) | usize::from(o));
        (len, rest)
    };
    rest.split_at_checked(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate's outline: SEQUENCE { tbs, AlgorithmIdentifier, BIT
    /// STRING }, with `tbs_len` bytes of TBS (long-form length past 127).
    fn cert(oid: &[u8], tbs_len: usize) -> Vec<u8> {
        fn element(tag: u8, body: &[u8]) -> Vec<u8> {
            let mut v = vec![tag];
            if body.len() < 0x80 {
                v.push(body.len() as u8);
            } else {
                v.extend([0x82, (body.len() >> 8) as u8, body.len() as u8]);
            }
            v.extend_from_slice(body);
            v
        }
        let mut body = element(SEQUENCE, &vec![0x02; tbs_len]);
        body.extend(element(SEQUENCE, &element(OID, oid)));
        body.extend(element(0x03, &[0, 1, 2, 3]));
        element(SEQUENCE, &body)
    }

    #[test]
    fn signature_hashes() {
        let ecdsa384 = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
        let sha1rsa = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05];
        let ed25519 = [0x2b, 0x65, 0x70];
        assert_eq!(signature_hash(&cert(&ecdsa384, 300)), Some(Hash::Sha384));
        assert_eq!(signature_hash(&cert(&sha1rsa, 10)), Some(Hash::Sha256));
        assert_eq!(signature_hash(&cert(&ed25519, 10)), None);
        let c = cert(&ecdsa384, 300);
        assert_eq!(end_point(&c), Some(Sha384::digest(&c).to_vec()));
    }

    #[test]
    fn truncated_or_malformed_gives_none() {
        let c = cert(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02], 200);
        for n in 0..c.len() {
            assert_eq!(signature_hash(&c[..n]), None, "{n} bytes");
        }
        let mut wrong_tag = c.clone();
        wrong_tag[0] = 0x31;
        assert_eq!(signature_hash(&wrong_tag), None);
        // Indefinite and over-long lengths.
        assert_eq!(signature_hash(&[0x30, 0x80, 0, 0]), None);
        assert_eq!(signature_hash(&[0x30, 0x85, 1, 1, 1, 1, 1]), None);
        assert_eq!(signature_hash(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }
}
