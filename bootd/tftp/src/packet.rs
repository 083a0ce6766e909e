//! TFTP packets on bytes (RFC 1350, options per RFC 2347): decoding checks
//! every length against the datagram, encoding appends to a buffer.

/// Longest file name accepted in a request; boot file names are short.
pub const MAX_FILENAME: usize = 255;
/// At most this many option pairs are read from a request.
pub const MAX_OPTIONS: usize = 16;
/// Option names and values longer than this are malformed.
const MAX_OPTION_LEN: usize = 64;

pub const OP_RRQ: u16 = 1;
pub const OP_WRQ: u16 = 2;
pub const OP_DATA: u16 = 3;
pub const OP_ACK: u16 = 4;
pub const OP_ERROR: u16 = 5;
pub const OP_OACK: u16 = 6;

/// RFC 1350 error codes (8 is RFC 2347's option refusal); the full table,
/// though a read-only server never sends some of them.
#[allow(dead_code)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    NotDefined = 0,
    FileNotFound = 1,
    AccessViolation = 2,
    DiskFull = 3,
    IllegalOperation = 4,
    UnknownTid = 5,
    FileExists = 6,
    NoSuchUser = 7,
    OptionRefused = 8,
}

/// A read or write request: file name, mode (lowercased) and options
/// (names lowercased, in the order sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub filename: String,
    pub mode: String,
    pub options: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    Rrq(Request),
    Wrq(Request),
    Data { block: u16, data: &'a [u8] },
    Ack(u16),
    Error { code: u16, message: String },
    Oack(Vec<(String, String)>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("datagram shorter than its opcode needs")]
    Truncated,
    #[error("unknown opcode {0}")]
    Opcode(u16),
    #[error("string not NUL-terminated")]
    Unterminated,
    #[error("string is not valid text")]
    NotText,
    #[error("file name empty or longer than {MAX_FILENAME} bytes")]
    Filename,
    #[error("malformed option")]
    Option,
}

impl Packet<'_> {
    pub fn decode(buf: &[u8]) -> Result<Packet<'_>, DecodeError> {
        let (op, rest) = split_u16(buf)?;
        match op {
            OP_RRQ | OP_WRQ => {
                let req = decode_request(rest)?;
                Ok(if op == OP_RRQ {
                    Packet::Rrq(req)
                } else {
                    Packet::Wrq(req)
                })
            }
            OP_DATA => {
                let (block, data) = split_u16(rest)?;
                Ok(Packet::Data { block, data })
            }
            OP_ACK => {
                // Trailing bytes after the block number are tolerated, as
                // some clients pad.
                let (block, _) = split_u16(rest)?;
                Ok(Packet::Ack(block))
            }
            OP_ERROR => {
                let (code, rest) = split_u16(rest)?;
                // Messages from peers are often unterminated; take what is there.
                let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
                let message = String::from_utf8_lossy(&rest[..end.min(512)]).into_owned();
                Ok(Packet::Error { code, message })
            }
            OP_OACK => Ok(Packet::Oack(decode_options(rest)?)),
            other => Err(DecodeError::Opcode(other)),
        }
    }
}

fn split_u16(buf: &[u8]) -> Result<(u16, &[u8]), DecodeError> {
    match buf {
        [a, b, rest @ ..] => Ok((u16::from_be_bytes([*a, *b]), rest)),
        _ => Err(DecodeError::Truncated),
    }
}

/// One NUL-terminated string and what follows it.
fn take_str(buf: &[u8], max: usize) -> Result<(&str, &[u8]), DecodeError> {
    let end = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or(DecodeError::Unterminated)?;
    if end > max {
        return Err(DecodeError::Option);
    }
    let s = std::str::from_utf8(&buf[..end]).map_err(|_| DecodeError::NotText)?;
    Ok((s, &buf[end + 1..]))
}

fn decode_request(buf: &[u8]) -> Result<Request, DecodeError> {
    let (filename, rest) = take_str(buf, MAX_FILENAME).map_err(|e| match e {
        DecodeError::Option => DecodeError::Filename,
        e => e,
    })?;
    if filename.is_empty() {
        return Err(DecodeError::Filename);
    }
    let (mode, rest) = take_str(rest, MAX_OPTION_LEN)?;
    Ok(Request {
        filename: filename.to_string(),
        mode: mode.to_ascii_lowercase(),
        options: decode_options(rest)?,
    })
}

fn decode_options(mut buf: &[u8]) -> Result<Vec<(String, String)>, DecodeError> {
    let mut out = Vec::new();
    // Some clients pad requests with trailing NULs: stop at the first empty name.
    while !buf.is_empty() && buf[0] != 0 {
        if out.len() == MAX_OPTIONS {
            return Err(DecodeError::Option);
        }
        let (name, rest) = take_str(buf, MAX_OPTION_LEN)?;
        let (value, rest) = take_str(rest, MAX_OPTION_LEN)?;
        out.push((name.to_ascii_lowercase(), value.to_string()));
        buf = rest;
    }
    Ok(out)
}

pub fn encode_data(out: &mut Vec<u8>, block: u16, data: &[u8]) {
    out.reserve(4 + data.len());
    out.extend_from_slice(&OP_DATA.to_be_bytes());
    out.extend_from_slice(&block.to_be_bytes());
    out.extend_from_slice(data);
}

/// Clients send these (the tests and the load tool play client).
pub fn encode_ack(out: &mut Vec<u8>, block: u16) {
    out.extend_from_slice(&OP_ACK.to_be_bytes());
    out.extend_from_slice(&block.to_be_bytes());
}

pub fn encode_error(out: &mut Vec<u8>, code: ErrorCode, message: &str) {
    out.extend_from_slice(&OP_ERROR.to_be_bytes());
    out.extend_from_slice(&(code as u16).to_be_bytes());
    out.extend(message.bytes().filter(|&b| b != 0));
    out.push(0);
}

pub fn encode_oack(out: &mut Vec<u8>, options: &[(String, String)]) {
    out.extend_from_slice(&OP_OACK.to_be_bytes());
    for (k, v) in options {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
}

/// Encodes a request (clients send these; the tests play client).
pub fn encode_request(out: &mut Vec<u8>, write: bool, req: &Request) {
    let op = if write { OP_WRQ } else { OP_RRQ };
    out.extend_from_slice(&op.to_be_bytes());
    out.extend_from_slice(req.filename.as_bytes());
    out.push(0);
    out.extend_from_slice(req.mode.as_bytes());
    out.push(0);
    for (k, v) in &req.options {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
}

/// An ERROR packet as a fresh buffer.
pub fn error(code: ErrorCode, message: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(5 + message.len());
    encode_error(&mut v, code, message);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn request_round_trip() -> Result<(), DecodeError> {
        let req = Request {
            filename: "undionly.kpxe".into(),
            mode: "octet".into(),
            options: vec![
                ("blksize".into(), "1428".into()),
                ("tsize".into(), "0".into()),
            ],
        };
        let mut buf = Vec::new();
        encode_request(&mut buf, false, &req);
        assert_eq!(Packet::decode(&buf)?, Packet::Rrq(req.clone()));
        buf.clear();
        encode_request(&mut buf, true, &req);
        assert_eq!(Packet::decode(&buf)?, Packet::Wrq(req));
        Ok(())
    }

    #[test]
    fn names_and_modes_are_case_folded_and_padding_tolerated() -> Result<(), DecodeError> {
        let buf = b"\x00\x01f\x00OCTET\x00BLKSIZE\x00512\x00\x00\x00";
        let Packet::Rrq(r) = Packet::decode(buf)? else {
            panic!("not an RRQ");
        };
        assert_eq!(r.mode, "octet");
        assert_eq!(r.options, vec![("blksize".to_string(), "512".to_string())]);
        Ok(())
    }

    #[test]
    fn malformed_requests_are_refused() {
        assert_eq!(Packet::decode(b"\x00"), Err(DecodeError::Truncated));
        assert_eq!(Packet::decode(b"\x00\x09"), Err(DecodeError::Opcode(9)));
        assert_eq!(
            Packet::decode(b"\x00\x01file"),
            Err(DecodeError::Unterminated)
        );
        assert_eq!(
            Packet::decode(b"\x00\x01\x00octet\x00"),
            Err(DecodeError::Filename)
        );
        let mut long = b"\x00\x01".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_FILENAME + 1));
        long.extend_from_slice(b"\x00octet\x00");
        assert_eq!(Packet::decode(&long), Err(DecodeError::Filename));
        assert_eq!(
            Packet::decode(b"\x00\x01f\x00octet\x00blksize\x00"),
            Err(DecodeError::Unterminated)
        );
        assert_eq!(
            Packet::decode(b"\x00\x01f\xff\x00octet\x00"),
            Err(DecodeError::NotText)
        );
    }

    #[test]
    fn data_ack_error_oack() -> Result<(), DecodeError> {
        let mut b = Vec::new();
        encode_data(&mut b, 7, b"abc");
        assert_eq!(
            Packet::decode(&b)?,
            Packet::Data {
                block: 7,
                data: b"abc"
            }
        );
        b.clear();
        encode_ack(&mut b, 65535);
        assert_eq!(Packet::decode(&b)?, Packet::Ack(65535));
        assert_eq!(
            Packet::decode(&error(ErrorCode::FileNotFound, "no\0pe"))?,
            Packet::Error {
                code: 1,
                message: "nope".into()
            }
        );
        b.clear();
        let opts = vec![("tsize".to_string(), "42".to_string())];
        encode_oack(&mut b, &opts);
        assert_eq!(Packet::decode(&b)?, Packet::Oack(opts));
        Ok(())
    }

    proptest! {
        #[test]
        fn hostile_datagrams_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Packet::decode(&buf);
        }

        #[test]
        fn hostile_requests_never_panic(
            op in 1u16..=6,
            body in proptest::collection::vec(prop_oneof![Just(0u8), any::<u8>(), Just(b'a')], 0..400),
        ) {
            let mut buf = op.to_be_bytes().to_vec();
            buf.extend(body);
            let _ = Packet::decode(&buf);
        }
    }
}
