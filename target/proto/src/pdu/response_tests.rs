//! Target PDUs: encode -> frame -> decode gives back the same response,
//! and hostile bytes never make the decoder panic.

use super::*;
use proptest::prelude::*;

fn decode_one(buf: &[u8], digests: Digests) -> Result<Response, PduError> {
    let len = frame_len(buf, digests, 1 << 24)?.ok_or(PduError::Malformed("incomplete"))?;
    Response::decode(&RawPdu::parse(
        Bytes::copy_from_slice(&buf[..len]),
        digests,
    )?)
}

fn arb_bytes(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn arb_seq() -> impl Strategy<Value = SeqNums> {
    any::<[u32; 3]>().prop_map(|s| SeqNums {
        stat_sn: s[0],
        exp_cmd_sn: s[1],
        max_cmd_sn: s[2],
    })
}

/// Residuals are only on the wire with O or U set: 0 otherwise.
fn residual(over: bool, under: bool, r: u32) -> u32 {
    if over || under {
        r
    } else {
        0
    }
}

fn arb_response() -> impl Strategy<Value = Response> {
    prop_oneof![
        (
            any::<[bool; 2]>(),
            0u8..4,
            0u8..4,
            any::<[u8; 6]>(),
            any::<u16>(),
            any::<[u32; 1]>(),
            any::<[u8; 2]>(),
            arb_seq(),
            arb_bytes(100)
        )
            .prop_map(|(b, csg, nsg, isid, tsih, n, st, seq, data)| {
                Response::Login {
                    transit: b[0],
                    cont: b[1],
                    csg,
                    nsg,
                    isid,
                    tsih,
                    itt: n[0],
                    status_class: st[0],
                    status_detail: st[1],
                    seq,
                    data,
                }
            }),
        (
            any::<[bool; 2]>(),
            any::<[u32; 2]>(),
            arb_seq(),
            arb_bytes(100)
        )
            .prop_map(|(b, n, seq, data)| Response::Text {
                final_: b[0],
                cont: b[1],
                itt: n[0],
                ttt: n[1],
                seq,
                data,
            }),
        (
            any::<[u8; 2]>(),
            any::<[bool; 2]>(),
            any::<[u32; 3]>(),
            arb_seq(),
            proptest::option::of(arb_bytes(96))
        )
            .prop_map(|(rs, b, n, seq, sense)| Response::ScsiResponse {
                itt: n[0],
                response: rs[0],
                status: rs[1],
                overflow: b[0],
                underflow: b[1],
                residual: residual(b[0], b[1], n[1]),
                exp_data_sn: n[2],
                seq,
                sense,
            }),
        (
            any::<bool>(),
            0u64..16384,
            any::<[u32; 4]>(),
            proptest::option::of((any::<u8>(), any::<[bool; 2]>())),
            arb_seq(),
            arb_bytes(200)
        )
            .prop_map(|(final_, lun, n, st, mut seq, data)| {
                let status = st.map(|(s, b)| (s, b[0], b[1], residual(b[0], b[1], n[3])));
                if status.is_none() {
                    seq.stat_sn = 0;
                }
                Response::DataIn {
                    final_,
                    lun,
                    itt: n[0],
                    data_sn: n[1],
                    buffer_offset: n[2],
                    status,
                    seq,
                    data,
                }
            }),
        (0u64..16384, any::<[u32; 5]>(), arb_seq()).prop_map(|(lun, n, seq)| Response::R2t {
            lun,
            itt: n[0],
            ttt: n[1],
            r2t_sn: n[2],
            buffer_offset: n[3],
            desired_len: n[4],
            seq,
        }),
        (0u64..16384, any::<[u32; 2]>(), arb_seq(), arb_bytes(64)).prop_map(
            |(lun, n, seq, data)| Response::NopIn {
                lun,
                itt: n[0],
                ttt: n[1],
                seq,
                data,
            }
        ),
        (any::<u32>(), any::<u8>(), arb_seq())
            .prop_map(|(itt, response, seq)| { Response::TaskMgmt { itt, response, seq } }),
        (any::<u32>(), any::<u8>(), any::<[u16; 2]>(), arb_seq()).prop_map(
            |(itt, response, t, seq)| Response::Logout {
                itt,
                response,
                time2wait: t[0],
                time2retain: t[1],
                seq,
            }
        ),
        (any::<u8>(), arb_seq(), any::<[u8; 16]>()).prop_map(|(reason, seq, h)| {
            let mut header = [0u8; BHS_LEN];
            header[..16].copy_from_slice(&h);
            Response::Reject {
                reason,
                seq,
                header,
            }
        }),
        (any::<u8>(), any::<[u16; 3]>(), arb_seq()).prop_map(|(event, p, seq)| {
            Response::Async {
                event,
                param1: p[0],
                param2: p[1],
                param3: p[2],
                seq,
            }
        }),
    ]
}

proptest! {
    #[test]
    fn responses_round_trip(resp in arb_response(), hd in any::<bool>(), dd in any::<bool>()) {
        let digests = Digests { header: hd, data: dd };
        let mut out = BytesMut::new();
        resp.encode(&mut out, digests);
        prop_assert_eq!(decode_one(&out, digests), Ok(resp));
    }

    #[test]
    fn hostile_target_bytes_never_panic(
        data in proptest::collection::vec(any::<u8>(), 0..400),
        hd in any::<bool>(),
        dd in any::<bool>(),
    ) {
        let _ = decode_one(&data, Digests { header: hd, data: dd });
    }
}

#[test]
fn short_sense_and_reject_are_refused() {
    let mut bhs = [0u8; BHS_LEN];
    bhs[0] = op::SCSI_RESPONSE;
    let raw = |bhs: [u8; BHS_LEN], data: &'static [u8]| RawPdu {
        bhs,
        ahs: Bytes::new(),
        data: Bytes::from_static(data),
    };
    // SenseLength 18 with 4 bytes behind it.
    assert!(Response::decode(&raw(bhs, &[0, 18, 0x70, 0, 5, 0])).is_err());
    assert!(Response::decode(&raw(bhs, &[0])).is_err());
    bhs[0] = op::REJECT;
    assert!(Response::decode(&raw(bhs, &[0u8; 47])).is_err());
    // Initiator opcodes are not responses.
    bhs[0] = op::SCSI_COMMAND;
    assert_eq!(
        Response::decode(&raw(bhs, &[])),
        Err(PduError::NotATargetPdu(op::SCSI_COMMAND))
    );
}
