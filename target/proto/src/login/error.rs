//! Why a login fails, and the status class/detail each reason is answered
//! with (RFC 7143 11.13.5).

use super::status;
use crate::text::TextError;

/// Why a login failed. The text is what the driver logs ("login failed:
/// ..."); [`LoginError::status`] is what the Login response says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// The keys of one request, across continued PDUs, exceed the bound.
    #[error("login text too long")]
    TextTooLong,
    /// The key=value text does not parse.
    #[error(transparent)]
    Text(#[from] TextError),
    /// A current stage that does not exist or goes backwards.
    #[error("invalid CSG {0}")]
    InvalidCsg(u8),
    /// Operational stage entered while CHAP is required and not done.
    #[error("CHAP required")]
    ChapRequired,
    #[error("AuthMethod outside security stage")]
    AuthMethodOutsideSecurity,
    /// The target wants CHAP; the initiator's AuthMethod list lacks it.
    #[error("CHAP required but not offered")]
    ChapNotOffered,
    /// A next stage that does not exist or is not ahead of the current.
    #[error("invalid NSG {0}")]
    InvalidNsg(u8),
    /// Transit requested while CHAP is required and AuthMethod never came.
    #[error("no authentication offered")]
    NoAuthentication,
    /// Version-min above the only version there is (0).
    #[error("version above 0")]
    UnsupportedVersion,
    #[error("no InitiatorName")]
    NoInitiatorName,
    /// A SessionType other than Normal and Discovery (the value sent).
    #[error("session type {0:?}")]
    SessionType(String),
    #[error("no TargetName")]
    NoTargetName,
    /// A TSIH naming no session of this initiator (the TSIH sent).
    #[error("no session with TSIH {0}")]
    NoSession(u16),
    /// InitiatorName or TargetName given again with another value.
    #[error("name changed during login")]
    NameChanged,
    #[error("CHAP_A out of order")]
    ChapAOutOfOrder,
    /// None of the offered CHAP algorithms is MD5.
    #[error("CHAP without MD5")]
    ChapWithoutMd5,
    #[error("CHAP_R out of order")]
    ChapROutOfOrder,
    /// Wrong name or response, or a decoy target (the CHAP_N sent).
    #[error("CHAP failed for {0:?}")]
    ChapFailed(String),
    /// The initiator challenges us, but no mutual secret is configured or
    /// its CHAP_I/CHAP_C do not decode.
    #[error("mutual CHAP not possible")]
    MutualChapImpossible,
    /// The initiator sent back our own (or an empty) challenge.
    #[error("reflected CHAP challenge")]
    ReflectedChallenge,
    #[error("CHAP_I without CHAP_C")]
    ChapIWithoutC,
    /// Another PDU arrived before login completed; nothing is answered.
    #[error("non-login PDU during login")]
    NotLoginPdu,
    /// The connection has no login state left (a bug, not a peer's doing).
    #[error("login state missing")]
    StateMissing,
    /// Not a failure: the target is served at `to` (portal group `tpgt`)
    /// now; the response redirects the initiator there.
    #[error("target moved to {to}")]
    Moved { to: std::net::SocketAddr, tpgt: u16 },
    /// The target is not served here yet but is about to be (a takeover
    /// under way); the initiator should try again shortly.
    #[error("target not available yet")]
    Unavailable { target: String },
}

impl LoginError {
    /// Status class and detail of the Login response that reports this.
    pub fn status(&self) -> (u8, u8) {
        use LoginError::*;
        match self {
            TextTooLong
            | Text(_)
            | InvalidCsg(_)
            | AuthMethodOutsideSecurity
            | InvalidNsg(_)
            | NameChanged
            | ChapAOutOfOrder
            | ChapROutOfOrder
            | ChapIWithoutC
            | NotLoginPdu
            | StateMissing => status::INITIATOR_ERROR,
            ChapRequired | ChapNotOffered | NoAuthentication | ChapWithoutMd5 | ChapFailed(_)
            | MutualChapImpossible | ReflectedChallenge => status::AUTH_FAILURE,
            UnsupportedVersion => status::UNSUPPORTED_VERSION,
            NoInitiatorName | NoTargetName => status::MISSING_PARAMETER,
            SessionType(_) => status::SESSION_TYPE_UNSUPPORTED,
            NoSession(_) => status::SESSION_DOES_NOT_EXIST,
            Moved { .. } => status::TARGET_MOVED_TEMPORARILY,
            Unavailable { .. } => status::SERVICE_UNAVAILABLE,
        }
    }

    /// The text the Login response carries: the TargetAddress of a
    /// redirect (`IP:PORT,TPGT`, IPv6 in brackets, the port always there),
    /// nothing for a failure.
    pub fn response_text(&self) -> bytes::Bytes {
        match self {
            LoginError::Moved { to, tpgt } => {
                let mut out = crate::text::Pairs::default();
                out.push("TargetAddress", format!("{to},{tpgt}"));
                out.encode()
            }
            _ => bytes::Bytes::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The texts are in logs and boot records, the statuses on the wire
    /// (the libiscsi suite checks them): both are fixed per reason.
    #[test]
    fn texts_and_statuses() {
        use LoginError::*;
        let cases: Vec<(LoginError, &str, (u8, u8))> = vec![
            (TextTooLong, "login text too long", (2, 0)),
            (
                Text(TextError::Duplicate("K".into())),
                "key K sent twice",
                (2, 0),
            ),
            (InvalidCsg(2), "invalid CSG 2", (2, 0)),
            (ChapRequired, "CHAP required", (2, 1)),
            (
                AuthMethodOutsideSecurity,
                "AuthMethod outside security stage",
                (2, 0),
            ),
            (ChapNotOffered, "CHAP required but not offered", (2, 1)),
            (InvalidNsg(1), "invalid NSG 1", (2, 0)),
            (NoAuthentication, "no authentication offered", (2, 1)),
            (UnsupportedVersion, "version above 0", (2, 5)),
            (NoInitiatorName, "no InitiatorName", (2, 7)),
            (SessionType("X".into()), "session type \"X\"", (2, 9)),
            (NoTargetName, "no TargetName", (2, 7)),
            (NoSession(7), "no session with TSIH 7", (2, 10)),
            (NameChanged, "name changed during login", (2, 0)),
            (ChapAOutOfOrder, "CHAP_A out of order", (2, 0)),
            (ChapWithoutMd5, "CHAP without MD5", (2, 1)),
            (ChapROutOfOrder, "CHAP_R out of order", (2, 0)),
            (
                ChapFailed("al\"ice".into()),
                "CHAP failed for \"al\\\"ice\"",
                (2, 1),
            ),
            (MutualChapImpossible, "mutual CHAP not possible", (2, 1)),
            (ReflectedChallenge, "reflected CHAP challenge", (2, 1)),
            (ChapIWithoutC, "CHAP_I without CHAP_C", (2, 0)),
            (NotLoginPdu, "non-login PDU during login", (2, 0)),
            (StateMissing, "login state missing", (2, 0)),
            (
                Unavailable {
                    target: "iqn.t".into(),
                },
                "target not available yet",
                (3, 1),
            ),
        ];
        for (e, text, st) in cases {
            assert_eq!(e.to_string(), text);
            assert_eq!(e.status(), st, "{e}");
        }
    }
}
