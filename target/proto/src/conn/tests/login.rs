//! Login: keys answered, failure statuses, CHAP one-way and mutual, and
//! answers that do not reveal which targets exist.

use super::*;

#[test]
fn login_without_auth_answers_only_offered_keys() -> Result<(), ConnError> {
    let mut h = Harness::new(None);
    let r = h.full_login(&[
        ("MaxRecvDataSegmentLength", "8192"),
        ("ImmediateData", "No"),
        ("X-com.example", "1"),
    ])?;
    assert_eq!(r.opcode(), op::LOGIN_RESPONSE);
    assert_eq!(login_flags(&r) & 0x83, 0x83, "T bit and NSG=3");
    assert!(matches!(r, Response::Login { tsih: 5, .. }), "TSIH");
    let keys = keys(&r);
    assert_eq!(keys.get("TargetPortalGroupTag"), Some("1"));
    assert_eq!(keys.get("ImmediateData"), Some("No"));
    assert_eq!(keys.get("MaxRecvDataSegmentLength"), Some("65536"));
    assert_eq!(keys.get("X-com.example"), Some("NotUnderstood"));
    assert_eq!(keys.get("FirstBurstLength"), None, "never propose keys");
    assert!(matches!(h.conn.poll_event(), Some(Event::LoggedIn(i)) if i.tsih == 5));
    Ok(())
}

#[test]
fn login_failures_have_the_right_status() -> Result<(), ConnError> {
    type Keys<'a> = &'a [(&'a str, &'a str)];
    let cases: [(Keys, (u8, u8)); 4] = [
        (&[("TargetName", "iqn.t")], (2, 7)),
        // Unknown target and refused initiator: the same authentication
        // failure a CHAP target gives without credentials (no probing).
        (
            &[("InitiatorName", "iqn.i"), ("TargetName", "iqn.nope")],
            (2, 1),
        ),
        (
            &[("InitiatorName", "iqn.bad"), ("TargetName", "iqn.t")],
            (2, 1),
        ),
        (&[("InitiatorName", "iqn.i")], (2, 7)),
    ];
    for (keys, status) in cases {
        let mut h = Harness::new(None);
        let mut p = Pairs::default();
        for (k, v) in keys {
            p.push(*k, *v);
        }
        let mut buf = BytesMut::new();
        Request::Login(LoginRequest {
            transit: true,
            cont: false,
            csg: 1,
            nsg: 3,
            version_max: 0,
            version_min: 0,
            isid: [0; 6],
            tsih: 0,
            itt: 1,
            cid: 0,
            cmd_sn: 1,
            exp_stat_sn: 0,
            data: p.encode(),
        })
        .encode(&mut buf, Digests::default());
        assert!(h.conn.handle_input(&mut buf, &h.dir, h.now).is_err());
        let pdus = h.drain();
        assert_eq!(login_status(&pdus[0]), status, "{keys:?}");
        assert!(h.conn.is_closed());
    }
    Ok(())
}

/// The bytes of a first Login request for `target` from "iqn.i", offering
/// CHAP or none, straight to the operational stage.
fn first_login(target: &str) -> BytesMut {
    let mut p = Pairs::default();
    p.push("InitiatorName", "iqn.i");
    p.push("TargetName", target);
    p.push("AuthMethod", "CHAP,None");
    let mut buf = BytesMut::new();
    Request::Login(LoginRequest {
        transit: true,
        cont: false,
        csg: 0,
        nsg: 1,
        version_max: 0,
        version_min: 0,
        isid: [0x80, 0, 0, 0, 0, 9],
        tsih: 0,
        itt: 7,
        cid: 0,
        cmd_sn: 1,
        exp_stat_sn: 0,
        data: p.encode(),
    })
    .encode(&mut buf, Digests::default());
    buf
}

/// A target about to be served here (a takeover under way): the first login
/// PDU is answered "service unavailable" (0x0301, a target error initiators
/// retry), with no text, and the connection closes; nothing is negotiated.
#[test]
fn a_coming_target_is_answered_service_unavailable() -> Result<(), ConnError> {
    let mut h = Harness::new(Some(creds(false)));
    let mut buf = first_login("iqn.coming");
    let e = h.conn.handle_input(&mut buf, &h.dir, h.now);
    assert!(
        matches!(e, Err(ConnError::Login(LoginError::Unavailable { ref target })) if target == "iqn.coming"),
        "{e:?}"
    );
    let wire = h.conn.poll_transmit().unwrap_or_default();
    assert_eq!(wire[0] & 0x3f, op::LOGIN_RESPONSE);
    assert_eq!((wire[36], wire[37]), (3, 1));
    assert_eq!(&wire[5..8], &[0, 0, 0], "no text");
    assert!(h.conn.is_closed());
    Ok(())
}

/// A target served elsewhere: the first login PDU is answered with
/// "target moved temporarily" (0x0101) and a TargetAddress with an explicit
/// port and the portal group tag, on the wire as RFC 7143 11.13 lays it
/// out; then the connection closes. Nothing is negotiated or authenticated.
#[test]
fn a_moved_target_is_answered_with_a_redirect() -> Result<(), ConnError> {
    for (target, address) in [
        ("iqn.moved", "192.0.2.7:3261,1"),
        ("iqn.moved6", "[2001:db8::7]:3262,1"),
    ] {
        let mut h = Harness::new(Some(creds(false)));
        let mut buf = first_login(target);
        let e = h.conn.handle_input(&mut buf, &h.dir, h.now);
        assert!(
            matches!(e, Err(ConnError::Login(LoginError::Moved { .. }))),
            "{e:?}"
        );
        // The raw bytes: status class and detail at 36 and 37, the text
        // after the 48-byte header.
        let wire = h.conn.poll_transmit().unwrap_or_default();
        assert_eq!(wire[0] & 0x3f, op::LOGIN_RESPONSE);
        assert_eq!((wire[36], wire[37]), (1, 1), "{target}");
        let text = format!("TargetAddress={address}\0");
        let len = usize::from(wire[5]) << 16 | usize::from(wire[6]) << 8 | usize::from(wire[7]);
        assert_eq!(len, text.len());
        assert_eq!(&wire[BHS_LEN..BHS_LEN + len], text.as_bytes());
        assert!(h.conn.is_closed());
    }
    Ok(())
}

pub(super) fn creds(mutual: bool) -> ChapCredentials {
    ChapCredentials {
        user: "alice".into(),
        secret: b"secretsecret".to_vec(),
        mutual: mutual.then(|| ("target".into(), b"targetsecret".to_vec())),
    }
}

fn chap_login(
    h: &mut Harness,
    secret: &[u8],
    mutual: Option<&[u8]>,
) -> Result<Response, ConnError> {
    chap_login_as(h, "iqn.i", "iqn.t", secret, mutual)
}

fn chap_login_as(
    h: &mut Harness,
    initiator: &str,
    target: &str,
    secret: &[u8],
    mutual: Option<&[u8]>,
) -> Result<Response, ConnError> {
    let r = h.login(
        0,
        1,
        true,
        &[
            ("InitiatorName", initiator),
            ("TargetName", target),
            ("AuthMethod", "CHAP,None"),
        ],
    )?;
    assert_eq!(keys(&r).get("AuthMethod"), Some("CHAP"));
    assert_eq!(login_flags(&r) & 0x80, 0, "no transit before CHAP");
    let r = h.login(0, 1, false, &[("CHAP_A", "7,5")])?;
    let k = keys(&r);
    assert_eq!(k.get("CHAP_A"), Some("5"));
    let id: u8 = k
        .get("CHAP_I")
        .and_then(|i| i.parse().ok())
        .unwrap_or_default();
    let challenge = crate::login::decode_binary(k.get("CHAP_C").unwrap_or("")).unwrap_or_default();
    assert_eq!(challenge.len(), 16);
    let resp = format!("0x{}", hex::encode(chap_response(id, secret, &challenge)));
    let mut keys = vec![("CHAP_N", "alice"), ("CHAP_R", resp.as_str())];
    if mutual.is_some() {
        keys.push(("CHAP_I", "77"));
        keys.push(("CHAP_C", "0x0102030405060708"));
    }
    h.login(0, 1, true, &keys)
}

#[test]
fn chap_one_way_and_mutual() -> Result<(), ConnError> {
    let mut h = Harness::new(Some(creds(false)));
    let r = chap_login(&mut h, b"secretsecret", None)?;
    assert_eq!(login_status(&r), (0, 0));
    assert_eq!(login_flags(&r) & 0x83, 0x81, "transit to operational");

    let mut h = Harness::new(Some(creds(true)));
    let r = chap_login(&mut h, b"secretsecret", Some(b"targetsecret"))?;
    let k = keys(&r);
    assert_eq!(k.get("CHAP_N"), Some("target"));
    let want = chap_response(77, b"targetsecret", &[1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(
        k.get("CHAP_R").and_then(crate::login::decode_binary),
        Some(want.to_vec())
    );
    let r = h.login(1, 3, true, &[])?;
    assert_eq!(login_flags(&r) & 0x83, 0x83);
    Ok(())
}

#[test]
fn chap_wrong_secret_or_skipped_is_refused() {
    let mut h = Harness::new(Some(creds(false)));
    assert!(chap_login(&mut h, b"wrongwrongwr", None).is_err());
    let pdus = h.drain();
    assert!(pdus.is_empty() || login_status(&pdus[0]) == (2, 1));

    // Going straight to the operational stage without CHAP.
    let mut h = Harness::new(Some(creds(false)));
    let r = h.login(
        1,
        3,
        true,
        &[("InitiatorName", "iqn.i"), ("TargetName", "iqn.t")],
    );
    assert!(r.is_err());
    let pdus = h.drain();
    assert_eq!(login_status(&pdus[0]), (2, 1));
}

#[test]
fn unknown_targets_look_like_wrong_credentials() -> Result<(), ConnError> {
    // The same steps (CHAP agreed, a 16-byte challenge) and the same final
    // status for: wrong secret, unknown target, initiator not allowed.
    for (initiator, target, secret) in [
        ("iqn.i", "iqn.t", &b"wrongwrongwr"[..]),
        ("iqn.i", "iqn.nope", &b"secretsecret"[..]),
        ("iqn.bad", "iqn.t", &b"secretsecret"[..]),
    ] {
        let mut h = Harness::new(Some(creds(false)));
        assert!(chap_login_as(&mut h, initiator, target, secret, None).is_err());
        let pdus = h.drain();
        assert_eq!(login_status(&pdus[0]), (2, 1), "{initiator} {target}");
        assert!(keys(&pdus[0]).is_empty());
    }
    // Without CHAP offered: the answer a CHAP target gives.
    for target in ["iqn.t", "iqn.nope"] {
        let mut h = Harness::new(Some(creds(false)));
        let r = h.login(
            0,
            1,
            true,
            &[
                ("InitiatorName", "iqn.i"),
                ("TargetName", target),
                ("AuthMethod", "None"),
            ],
        );
        assert!(r.is_err());
        let pdus = h.drain();
        assert_eq!(login_status(&pdus[0]), (2, 1), "{target}");
    }
    Ok(())
}

/// The reason reaches the driver typed, with the wire status it implies.
#[test]
fn login_failures_keep_their_reason() {
    let mut h = Harness::new(None);
    let e = h.login(
        1,
        3,
        true,
        &[("InitiatorName", "iqn.i"), ("SessionType", "Boot")],
    );
    match e {
        Err(ConnError::Login(LoginError::SessionType(t))) => assert_eq!(t, "Boot"),
        other => panic!("expected an unsupported session type, got {other:?}"),
    }
    assert_eq!(login_status(&h.drain()[0]), (2, 9));

    let mut h = Harness::new(None);
    let e = h.login(1, 3, true, &[("InitiatorName", "iqn.i")]);
    let Err(e) = e else {
        panic!("a login without TargetName succeeded")
    };
    assert!(matches!(e, ConnError::Login(LoginError::NoTargetName)));
    assert_eq!(e.to_string(), "login failed: no TargetName");
}
