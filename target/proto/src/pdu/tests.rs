//! PDU codec tests: round trips, framing limits, hostile bytes.

use super::*;
use proptest::prelude::*;

fn frame_one(buf: &[u8], digests: Digests) -> Result<RawPdu, PduError> {
    let len = frame_len(buf, digests, 1 << 24)?.ok_or(PduError::Malformed("incomplete"))?;
    RawPdu::parse(Bytes::copy_from_slice(&buf[..len]), digests)
}

fn round_trip(req: &Request, digests: Digests) -> Result<Request, PduError> {
    let mut out = BytesMut::new();
    req.encode(&mut out, digests);
    let raw = frame_one(&out, digests)?;
    Request::decode(&raw)
}

fn arb_bytes(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn arb_request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (
            any::<bool>(),
            0u64..256,
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            arb_bytes(64)
        )
            .prop_map(|(immediate, lun, itt, ttt, cmd_sn, exp_stat_sn, data)| {
                Request::NopOut(NopOutPdu {
                    immediate,
                    lun,
                    itt,
                    ttt,
                    cmd_sn,
                    exp_stat_sn,
                    data,
                })
            }),
        (
            any::<[bool; 4]>(),
            0u8..8,
            0u64..16384,
            any::<[u32; 4]>(),
            16usize..40,
            arb_bytes(100)
        )
            .prop_map(|(b, attr, lun, n, cdb_len, data)| {
                let cdb: Vec<u8> = (0..cdb_len).map(|i| i as u8 ^ n[0] as u8).collect();
                Request::ScsiCommand(ScsiCommandPdu {
                    immediate: b[0],
                    final_: b[1],
                    read: b[2],
                    write: b[3],
                    attr,
                    lun,
                    itt: n[0],
                    expected_len: n[1],
                    cmd_sn: n[2],
                    exp_stat_sn: n[3],
                    cdb: Bytes::from(cdb),
                    data,
                })
            }),
        (any::<bool>(), 0u8..128, 0u64..256, any::<[u32; 5]>()).prop_map(
            |(immediate, function, lun, n)| Request::TaskMgmt(TaskMgmtPdu {
                immediate,
                function,
                lun,
                itt: n[0],
                referenced_itt: n[1],
                cmd_sn: n[2],
                exp_stat_sn: n[3],
                ref_cmd_sn: n[4],
            })
        ),
        (
            any::<[bool; 2]>(),
            0u8..4,
            0u8..4,
            any::<[u8; 6]>(),
            any::<u16>(),
            any::<[u32; 3]>(),
            any::<u16>(),
            arb_bytes(200)
        )
            .prop_map(|(b, csg, nsg, isid, tsih, n, cid, data)| Request::Login(
                LoginRequest {
                    transit: b[0],
                    cont: b[1],
                    csg,
                    nsg,
                    version_max: 0,
                    version_min: 0,
                    isid,
                    tsih,
                    itt: n[0],
                    cid,
                    cmd_sn: n[1],
                    exp_stat_sn: n[2],
                    data,
                }
            )),
        (any::<[bool; 3]>(), any::<[u32; 4]>(), arb_bytes(200)).prop_map(|(b, n, data)| {
            Request::Text(TextPdu {
                immediate: b[0],
                final_: b[1],
                cont: b[2],
                itt: n[0],
                ttt: n[1],
                cmd_sn: n[2],
                exp_stat_sn: n[3],
                data,
            })
        }),
        (any::<bool>(), 0u64..256, any::<[u32; 5]>(), arb_bytes(300)).prop_map(
            |(final_, lun, n, data)| Request::DataOut(DataOutPdu {
                final_,
                lun,
                itt: n[0],
                ttt: n[1],
                exp_stat_sn: n[2],
                data_sn: n[3],
                buffer_offset: n[4],
                data,
            })
        ),
        (any::<bool>(), 0u8..128, any::<[u32; 3]>(), any::<u16>()).prop_map(
            |(immediate, reason, n, cid)| Request::Logout(LogoutPdu {
                immediate,
                reason,
                itt: n[0],
                cid,
                cmd_sn: n[1],
                exp_stat_sn: n[2],
            })
        ),
    ]
}

proptest! {
    #[test]
    fn requests_round_trip(req in arb_request(), hd in any::<bool>(), dd in any::<bool>()) {
        let got = round_trip(&req, Digests { header: hd, data: dd });
        // Logins always carry the I bit, so compare all but that.
        prop_assert_eq!(got, Ok(req));
    }

    #[test]
    fn hostile_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400), hd in any::<bool>(), dd in any::<bool>()) {
        let digests = Digests { header: hd, data: dd };
        if let Ok(Some(len)) = frame_len(&data, digests, 8192) {
            if let Ok(raw) = RawPdu::parse(Bytes::copy_from_slice(&data[..len]), digests) {
                let _ = Request::decode(&raw);
            }
        }
    }
}

#[test]
fn frame_limits() {
    let mut h = [0u8; BHS_LEN];
    h[5..8].copy_from_slice(&[0x00, 0x20, 0x01]); // 8193 bytes
    assert_eq!(
        frame_len(&h, Digests::default(), 8192),
        Err(PduError::SegmentTooLong {
            len: 8193,
            max: 8192
        })
    );
    h[5..8].copy_from_slice(&[0, 0, 5]);
    // 48 + 5 + 3 padding.
    assert_eq!(frame_len(&h, Digests::default(), 8192), Ok(None));
    let mut full = h.to_vec();
    full.resize(56, 0);
    assert_eq!(frame_len(&full, Digests::default(), 8192), Ok(Some(56)));
    assert_eq!(
        frame_len(
            &full,
            Digests {
                header: true,
                data: true
            },
            8192
        ),
        Ok(None)
    );
}

#[test]
fn digests_are_checked() -> Result<(), PduError> {
    let req = Request::NopOut(NopOutPdu {
        immediate: true,
        lun: 0,
        itt: 7,
        ttt: RESERVED_TAG,
        cmd_sn: 1,
        exp_stat_sn: 1,
        data: Bytes::from_static(b"ping"),
    });
    let d = Digests {
        header: true,
        data: true,
    };
    let mut out = BytesMut::new();
    req.encode(&mut out, d);
    let mut bad = out.to_vec();
    bad[20] ^= 1;
    assert_eq!(frame_one(&bad, d), Err(PduError::HeaderDigest));
    let mut bad = out.to_vec();
    let n = bad.len();
    bad[n - 6] ^= 1;
    assert_eq!(frame_one(&bad, d), Err(PduError::DataDigest));
    assert_eq!(Request::decode(&frame_one(&out, d)?)?, req);
    Ok(())
}

#[test]
fn lun_encoding() {
    for lun in [0u64, 1, 255, 256, 16383] {
        assert_eq!(decode_lun(encode_lun(lun)), lun);
    }
    assert_eq!(decode_lun([0xC0, 0, 0, 0, 0, 0, 0, 0]), u64::MAX);
}

#[test]
fn response_layout() {
    let mut out = BytesMut::new();
    Response::DataIn {
        final_: true,
        lun: 0,
        itt: 9,
        data_sn: 2,
        buffer_offset: 4096,
        status: Some((0, false, true, 512)),
        seq: SeqNums {
            stat_sn: 5,
            exp_cmd_sn: 6,
            max_cmd_sn: 40,
        },
        data: Bytes::from_static(&[1, 2, 3]),
    }
    .encode(&mut out, Digests::default());
    assert_eq!(out.len(), 48 + 4);
    assert_eq!(out[0], op::DATA_IN);
    assert_eq!(out[1], 0x80 | 0x01 | 0x02);
    assert_eq!(&out[5..8], &[0, 0, 3]);
    assert_eq!(&out[24..28], &5u32.to_be_bytes());
    assert_eq!(&out[36..40], &2u32.to_be_bytes());
    assert_eq!(&out[40..44], &4096u32.to_be_bytes());
    assert_eq!(&out[44..48], &512u32.to_be_bytes());
    assert_eq!(&out[48..52], &[1, 2, 3, 0]);
}
