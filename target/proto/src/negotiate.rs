//! Operational text keys and their negotiation rules (RFC 7143 13).
//!
//! The target only ever answers keys the initiator offered: proposing keys
//! the initiator did not send breaks iPXE. The one exception is our own
//! MaxRecvDataSegmentLength declaration, sent when the initiator declares its
//! own, and TargetPortalGroupTag, which RFC 7143 requires.

/// Session parameters in force after negotiation (defaults from RFC 7143 13).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    pub header_digest: bool,
    pub data_digest: bool,
    /// Largest data segment we may send (the initiator's declaration).
    pub initiator_mrdsl: u32,
    /// Largest data segment the initiator may send us (our declaration).
    pub target_mrdsl: u32,
    pub max_burst: u32,
    pub first_burst: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub max_outstanding_r2t: u32,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub default_time2wait: u16,
    pub default_time2retain: u16,
    pub error_recovery_level: u8,
    pub max_connections: u16,
}

/// What the target is willing to accept; from the driver's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_recv_data_segment: u32,
    pub max_burst: u32,
    pub first_burst: u32,
    pub max_outstanding_r2t: u32,
}

impl Params {
    pub fn new(limits: &Limits) -> Self {
        Self {
            header_digest: false,
            data_digest: false,
            initiator_mrdsl: 8192,
            target_mrdsl: limits.max_recv_data_segment,
            max_burst: 262_144.min(limits.max_burst),
            first_burst: 65_536.min(limits.first_burst),
            immediate_data: true,
            initial_r2t: true,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            default_time2wait: 2,
            default_time2retain: 20,
            error_recovery_level: 0,
            max_connections: 1,
        }
    }

    /// Enforces relations between keys once a negotiation round is over.
    pub fn settle(&mut self) {
        self.first_burst = self.first_burst.min(self.max_burst);
    }
}

/// The answer to one offered key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Answer with this value.
    Value(String),
    /// Not an operational key: the caller (login or text handling) owns it.
    NotMine,
}

const NOT_UNDERSTOOD: &str = "NotUnderstood";
const REJECT: &str = "Reject";
const IRRELEVANT: &str = "Irrelevant";

/// Parses a numerical value: decimal, or hex with `0x` (RFC 7143 6.1).
pub fn parse_number(v: &str) -> Option<u64> {
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        if h.is_empty() || h.len() > 16 {
            return None;
        }
        u64::from_str_radix(h, 16).ok()
    } else if !v.is_empty() && v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit()) {
        v.parse().ok()
    } else {
        None
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

fn yes_no(b: bool) -> String {
    if b { "Yes" } else { "No" }.to_string()
}

fn in_range(v: &str, lo: u64, hi: u64) -> Option<u64> {
    parse_number(v).filter(|n| (lo..=hi).contains(n))
}

/// Digest list: choose the first the target supports.
fn digest(v: &str) -> Option<bool> {
    v.split(',').find_map(|d| match d {
        "None" => Some(false),
        "CRC32C" => Some(true),
        _ => None,
    })
}

/// Negotiates one operational key offered during login (`in_login`) or in
/// a Text request in full feature phase.
pub fn answer(
    params: &mut Params,
    limits: &Limits,
    key: &str,
    value: &str,
    in_login: bool,
) -> Answer {
    let v = |s: &str| Answer::Value(s.to_string());
    // Keys that may only change during login (RFC 7143 13: "LO"/"Declarative
    // at login" keys); in full feature phase they are rejected.
    let login_only = matches!(
        key,
        "HeaderDigest"
            | "DataDigest"
            | "MaxConnections"
            | "InitialR2T"
            | "ImmediateData"
            | "MaxBurstLength"
            | "FirstBurstLength"
            | "DefaultTime2Wait"
            | "DefaultTime2Retain"
            | "MaxOutstandingR2T"
            | "DataPDUInOrder"
            | "DataSequenceInOrder"
            | "ErrorRecoveryLevel"
            | "IFMarker"
            | "OFMarker"
            | "IFMarkInt"
            | "OFMarkInt"
    );
    if login_only && !in_login {
        return v(REJECT);
    }
    match key {
        "HeaderDigest" | "DataDigest" => match digest(value) {
            Some(on) => {
                if key == "HeaderDigest" {
                    params.header_digest = on;
                } else {
                    params.data_digest = on;
                }
                v(if on { "CRC32C" } else { "None" })
            }
            None => v(REJECT),
        },
        "MaxRecvDataSegmentLength" => match in_range(value, 512, 0x00ff_ffff) {
            Some(n) => {
                params.initiator_mrdsl = n as u32;
                // Declarative: we answer with our own declaration.
                Answer::Value(params.target_mrdsl.to_string())
            }
            None => v(REJECT),
        },
        "MaxBurstLength" => match in_range(value, 512, 0x00ff_ffff) {
            Some(n) => {
                params.max_burst = (n as u32).min(limits.max_burst);
                Answer::Value(params.max_burst.to_string())
            }
            None => v(REJECT),
        },
        "FirstBurstLength" => match in_range(value, 512, 0x00ff_ffff) {
            Some(n) => {
                params.first_burst = (n as u32).min(limits.first_burst);
                Answer::Value(params.first_burst.to_string())
            }
            None => v(REJECT),
        },
        "MaxOutstandingR2T" => match in_range(value, 1, 65535) {
            Some(n) => {
                params.max_outstanding_r2t = (n as u32).min(limits.max_outstanding_r2t);
                Answer::Value(params.max_outstanding_r2t.to_string())
            }
            None => v(REJECT),
        },
        "MaxConnections" => match in_range(value, 1, 65535) {
            Some(_) => {
                params.max_connections = 1;
                v("1")
            }
            None => v(REJECT),
        },
        // Boolean OR: the result is Yes if either side says Yes. We accept
        // unsolicited data, so the initiator's value stands.
        "InitialR2T" => match parse_bool(value) {
            Some(b) => {
                params.initial_r2t = b;
                Answer::Value(yes_no(b))
            }
            None => v(REJECT),
        },
        // Boolean AND: we support immediate data, so the initiator's value stands.
        "ImmediateData" => match parse_bool(value) {
            Some(b) => {
                params.immediate_data = b;
                Answer::Value(yes_no(b))
            }
            None => v(REJECT),
        },
        // OR: we need in-order data, so the result is always Yes.
        "DataPDUInOrder" | "DataSequenceInOrder" => match parse_bool(value) {
            Some(_) => v("Yes"),
            None => v(REJECT),
        },
        "DefaultTime2Wait" => match in_range(value, 0, 3600) {
            Some(n) => {
                params.default_time2wait = (n as u16).max(params.default_time2wait);
                Answer::Value(params.default_time2wait.to_string())
            }
            None => v(REJECT),
        },
        "DefaultTime2Retain" => match in_range(value, 0, 3600) {
            Some(n) => {
                params.default_time2retain = (n as u16).min(params.default_time2retain);
                Answer::Value(params.default_time2retain.to_string())
            }
            None => v(REJECT),
        },
        "ErrorRecoveryLevel" => match in_range(value, 0, 2) {
            Some(_) => {
                params.error_recovery_level = 0;
                v("0")
            }
            None => v(REJECT),
        },
        // Markers were removed in RFC 7143; answer like an RFC 3720 target
        // that does not support them.
        "IFMarker" | "OFMarker" => match parse_bool(value) {
            Some(_) => v("No"),
            None => v(REJECT),
        },
        "IFMarkInt" | "OFMarkInt" => v(IRRELEVANT),
        "iSCSIProtocolLevel" => match parse_number(value) {
            Some(_) => v("1"),
            None => v(REJECT),
        },
        "TaskReporting" => v("RFC3720"),
        _ if key.starts_with("X-") || key.starts_with("X#") => v(NOT_UNDERSTOOD),
        "InitiatorName"
        | "InitiatorAlias"
        | "TargetName"
        | "TargetAlias"
        | "SessionType"
        | "AuthMethod"
        | "SendTargets"
        | "TargetAddress"
        | "TargetPortalGroupTag" => Answer::NotMine,
        _ if key.starts_with("CHAP_") => Answer::NotMine,
        _ => v(NOT_UNDERSTOOD),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_recv_data_segment: 262_144,
            max_burst: 1 << 20,
            first_burst: 262_144,
            max_outstanding_r2t: 8,
        }
    }

    fn ans(p: &mut Params, k: &str, v: &str) -> String {
        match answer(p, &limits(), k, v, true) {
            Answer::Value(s) => s,
            Answer::NotMine => "NotMine".into(),
        }
    }

    #[test]
    fn ipxe_offer() {
        let mut p = Params::new(&limits());
        assert_eq!(ans(&mut p, "HeaderDigest", "None"), "None");
        assert_eq!(ans(&mut p, "DataDigest", "None"), "None");
        assert_eq!(ans(&mut p, "MaxRecvDataSegmentLength", "8192"), "262144");
        assert_eq!(ans(&mut p, "ImmediateData", "No"), "No");
        assert_eq!(ans(&mut p, "InitialR2T", "Yes"), "Yes");
        assert_eq!(ans(&mut p, "MaxOutstandingR2T", "1"), "1");
        assert_eq!(ans(&mut p, "FirstBurstLength", "65536"), "65536");
        assert_eq!(ans(&mut p, "MaxBurstLength", "262144"), "262144");
        p.settle();
        assert_eq!(p.initiator_mrdsl, 8192);
        assert!(!p.immediate_data && p.initial_r2t);
    }

    #[test]
    fn rules() {
        let mut p = Params::new(&limits());
        assert_eq!(ans(&mut p, "HeaderDigest", "CRC32C,None"), "CRC32C");
        assert_eq!(ans(&mut p, "DataDigest", "Foo"), "Reject");
        assert_eq!(ans(&mut p, "MaxBurstLength", "0x1000000"), "Reject");
        assert_eq!(ans(&mut p, "MaxBurstLength", "16776192"), "1048576");
        assert_eq!(ans(&mut p, "FirstBurstLength", "1048576"), "262144");
        assert_eq!(ans(&mut p, "DefaultTime2Wait", "0"), "2");
        assert_eq!(ans(&mut p, "DefaultTime2Retain", "0"), "0");
        assert_eq!(ans(&mut p, "ErrorRecoveryLevel", "2"), "0");
        assert_eq!(ans(&mut p, "MaxConnections", "8"), "1");
        assert_eq!(ans(&mut p, "DataPDUInOrder", "No"), "Yes");
        assert_eq!(ans(&mut p, "X-com.example.foo", "1"), "NotUnderstood");
        assert_eq!(ans(&mut p, "Bogus", "1"), "NotUnderstood");
        assert_eq!(ans(&mut p, "TargetName", "x"), "NotMine");
        assert!(p.header_digest);
        let mut q = Params::new(&limits());
        assert_eq!(
            answer(&mut q, &limits(), "MaxBurstLength", "4096", false),
            Answer::Value("Reject".into())
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number("0x10"), Some(16));
        assert_eq!(parse_number("123"), Some(123));
        assert_eq!(parse_number(""), None);
        assert_eq!(parse_number("-1"), None);
        assert_eq!(parse_number("99999999999999999999999"), None);
    }
}
