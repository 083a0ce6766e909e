//! The initiator's login (RFC 7143 6.3, 13): an optional security stage
//! with CHAP (MD5, RFC 1994; mutual when configured), then the
//! operational stage, then full feature phase.

use super::{Event, Initiator, InitiatorError, Phase};
use crate::login::{chap_response, decode_binary};
use crate::pdu::{Digests, LoginRequest, Request, Response};
use crate::text::{self, Pairs};

/// Where in the login the next response lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// AuthMethod offered; the target picks one.
    AuthMethod,
    /// CHAP_A offered; the target sends its challenge.
    ChapAlgorithm,
    /// CHAP_R sent; the target accepts it (and answers ours, if mutual).
    ChapResponse,
    /// Operational keys offered; the target answers and moves to FFP.
    Operational,
}

const SECURITY: u8 = 0;
const OPERATIONAL: u8 = 1;
const FULL_FEATURE: u8 = 3;
/// CHAP with MD5 (RFC 7143 12.1.3).
const CHAP_MD5: &str = "5";

impl Initiator {
    /// Starts the login; its end comes as [`Event::LoggedIn`] or
    /// [`Event::LoginFailed`].
    pub fn login(&mut self) {
        let mut keys = Pairs::default();
        keys.push("InitiatorName", self.config.initiator_name.clone());
        match &self.config.target_name {
            Some(t) => {
                keys.push("TargetName", t.clone());
                keys.push("SessionType", "Normal");
            }
            None => keys.push("SessionType", "Discovery"),
        }
        self.itt = self.itt.wrapping_add(1);
        if self.config.chap.is_some() {
            keys.push("AuthMethod", "CHAP,None");
            self.login_request(SECURITY, OPERATIONAL, keys);
            self.phase = Phase::Login(Step::AuthMethod);
        } else {
            for (k, v) in &self.config.offer {
                keys.push(k.clone(), v.clone());
            }
            self.login_request(OPERATIONAL, FULL_FEATURE, keys);
            self.phase = Phase::Login(Step::Operational);
        }
    }

    /// One login request, with the transit bit set: each of our steps
    /// either says everything it has to say or moves on.
    fn login_request(&mut self, csg: u8, nsg: u8, keys: Pairs) {
        let req = Request::Login(LoginRequest {
            transit: true,
            cont: false,
            csg,
            nsg,
            version_max: 0,
            version_min: 0,
            isid: self.config.isid,
            tsih: 0,
            itt: self.itt,
            cid: 0,
            // Login requests are immediate: CmdSN does not advance.
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            data: keys.encode(),
        });
        self.send_raw(&req);
    }

    pub(super) fn on_login_response(&mut self, resp: Response) -> Result<(), InitiatorError> {
        let Response::Login {
            transit,
            cont,
            nsg,
            tsih,
            status_class,
            status_detail,
            data,
            ..
        } = resp
        else {
            return Ok(());
        };
        let Phase::Login(step) = self.phase else {
            return Ok(());
        };
        if (status_class, status_detail) != (0, 0) {
            self.phase = Phase::Idle;
            self.events.push_back(Event::LoginFailed {
                class: status_class,
                detail: status_detail,
            });
            return Ok(());
        }
        if cont {
            return Err(InitiatorError::ContinuedLogin);
        }
        let keys = text::parse(&data)?;
        match step {
            Step::AuthMethod => {
                if keys.get("AuthMethod") != Some("CHAP") {
                    return Err(InitiatorError::AuthMethod(
                        keys.get("AuthMethod").map(Into::into),
                    ));
                }
                let mut out = Pairs::default();
                out.push("CHAP_A", CHAP_MD5);
                self.login_request(SECURITY, OPERATIONAL, out);
                self.phase = Phase::Login(Step::ChapAlgorithm);
            }
            Step::ChapAlgorithm => {
                let out = self.chap_answer(&keys)?;
                self.login_request(SECURITY, OPERATIONAL, out);
                self.phase = Phase::Login(Step::ChapResponse);
            }
            Step::ChapResponse => {
                self.check_target_proof(&keys)?;
                if !transit || nsg != OPERATIONAL {
                    return Err(InitiatorError::StayedInSecurity);
                }
                let mut out = Pairs::default();
                for (k, v) in &self.config.offer {
                    out.push(k.clone(), v.clone());
                }
                self.login_request(OPERATIONAL, FULL_FEATURE, out);
                self.phase = Phase::Login(Step::Operational);
            }
            Step::Operational => {
                if !transit || nsg != FULL_FEATURE {
                    return Err(InitiatorError::NoFullFeature);
                }
                self.apply_operational(&keys)?;
                self.tsih = tsih;
                self.phase = Phase::FullFeature;
                self.events.push_back(Event::LoggedIn { tsih, keys });
            }
        }
        Ok(())
    }

    /// CHAP_N and CHAP_R for the target's challenge, plus our own
    /// challenge when we want the target to prove itself.
    fn chap_answer(&mut self, keys: &Pairs) -> Result<Pairs, InitiatorError> {
        if keys.get("CHAP_A") != Some(CHAP_MD5) {
            return Err(InitiatorError::NoChapMd5);
        }
        let id: u8 = parse_key(keys, "CHAP_I")?;
        let challenge = keys
            .get("CHAP_C")
            .and_then(decode_binary)
            .ok_or(InitiatorError::NoChapChallenge)?;
        let (user, secret) = self
            .config
            .chap
            .as_ref()
            .ok_or(InitiatorError::NoCredentials)?;
        let mut out = Pairs::default();
        out.push("CHAP_N", user.clone());
        out.push(
            "CHAP_R",
            format!("0x{}", hex::encode(chap_response(id, secret, &challenge))),
        );
        if self.config.mutual_chap.is_some() {
            let id: u8 = rand::random();
            let ours: Vec<u8> = (0..16).map(|_| rand::random()).collect();
            out.push("CHAP_I", id.to_string());
            out.push("CHAP_C", format!("0x{}", hex::encode(&ours)));
            self.our_challenge = Some((id, ours));
        }
        Ok(out)
    }

    /// With mutual CHAP, the target's CHAP_N and CHAP_R must answer our
    /// challenge with the secret we expect.
    fn check_target_proof(&mut self, keys: &Pairs) -> Result<(), InitiatorError> {
        let (Some((name, secret)), Some((id, challenge))) =
            (&self.config.mutual_chap, self.our_challenge.take())
        else {
            return Ok(());
        };
        let want = chap_response(id, secret, &challenge);
        let got = keys.get("CHAP_R").and_then(decode_binary);
        if keys.get("CHAP_N") != Some(name.as_str()) || got.as_deref() != Some(&want[..]) {
            return Err(InitiatorError::TargetNotAuthenticated);
        }
        Ok(())
    }

    /// The target's operational answers that shape what we send.
    fn apply_operational(&mut self, keys: &Pairs) -> Result<(), InitiatorError> {
        if keys.get("MaxRecvDataSegmentLength").is_some() {
            self.target_max_recv = parse_key(keys, "MaxRecvDataSegmentLength")?;
            if self.target_max_recv == 0 {
                return Err(InitiatorError::BadValue {
                    key: "MaxRecvDataSegmentLength",
                    value: "0".into(),
                });
            }
        }
        if keys.get("FirstBurstLength").is_some() {
            self.first_burst = parse_key(keys, "FirstBurstLength")?;
        }
        // Both sides must say Yes for ImmediateData, and either Yes for
        // InitialR2T (RFC 7143 13.10, 13.11); the target's answer is the
        // outcome.
        if let Some(v) = keys.get("ImmediateData") {
            self.immediate_data = v == "Yes";
        }
        if let Some(v) = keys.get("InitialR2T") {
            self.initial_r2t = v == "Yes";
        }
        self.digests = Digests {
            header: keys.get("HeaderDigest") == Some("CRC32C"),
            data: keys.get("DataDigest") == Some("CRC32C"),
        };
        Ok(())
    }
}

fn parse_key<T: std::str::FromStr>(keys: &Pairs, key: &'static str) -> Result<T, InitiatorError> {
    let v = keys.get(key).unwrap_or("");
    v.parse().map_err(|_| InitiatorError::BadValue {
        key,
        value: v.chars().take(80).collect(),
    })
}
