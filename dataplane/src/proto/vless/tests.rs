#![allow(clippy::unwrap_used, clippy::panic)]
use crate::proto::trojan::tests::Ctx;

use super::*;

const UUID: [u8; 16] = [
    0xa7, 0xb4, 0xb8, 0xab, 0x42, 0xd7, 0x4c, 0x48, 0xa0, 0xc5, 0x91, 0xfd, 0x4b, 0xd5, 0x3c, 0x37,
];

fn ctx() -> Ctx {
    Ctx::with(&UUID, 9)
}

fn request(addons: &[u8], cmd: u8, tail: &[u8]) -> Vec<u8> {
    let mut w = vec![0];
    w.extend_from_slice(&UUID);
    w.push(addons.len() as u8);
    w.extend_from_slice(addons);
    w.push(cmd);
    w.extend_from_slice(tail);
    w
}

/// Known answer: uuid a7b4b8ab-42d7-4c48-a0c5-91fd4bd53c37, TCP to example.com:443, payload.
#[test]
fn known_answer_request() {
    let wire = hex::decode(
        "00a7b4b8ab42d74c48a0c591fd4bd53c370001\
         01bb020b6578616d706c652e636f6d\
         474554",
    )
    .unwrap();
    let r = parse_request(&wire).unwrap().unwrap();
    assert_eq!(r.uuid, UUID);
    assert_eq!(r.cmd, CMD_TCP);
    assert_eq!(r.flow, "");
    assert_eq!(r.dest, Some(Destination::Domain("example.com".into(), 443)));
    assert_eq!(&wire[r.len..], b"GET");
    let v4 = request(&[], CMD_TCP, &[0x00, 0x50, 1, 127, 0, 0, 1]);
    let r = parse_request(&v4).unwrap().unwrap();
    assert_eq!(r.dest, Some(Destination::Ip("127.0.0.1:80".parse().unwrap())));
    let mut v6 = vec![0x1f, 0x90, 3];
    v6.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    let r = parse_request(&request(&[], CMD_TCP, &v6)).unwrap().unwrap();
    assert_eq!(r.dest, Some(Destination::Ip("[::1]:8080".parse().unwrap())));
    // Addons with flow = "xtls-rprx-vision" (field 1, length 16).
    let mut pb = vec![0x0a, 16];
    pb.extend_from_slice(b"xtls-rprx-vision");
    assert_eq!(addons_flow(&pb).unwrap(), "xtls-rprx-vision");
    assert!(addons_flow(&[0x0a, 5, b'x']).is_err());
}

#[test]
fn header_split_at_every_byte_and_response_header() {
    let wire = request(&[], CMD_TCP, b"\x1f\x90\x02\x09localhosthello");
    for cut in 0..wire.len() {
        let c = ctx();
        let mut hs = VlessHandshake::default();
        let (step, later) = match hs.feed(&wire[..cut], &c).unwrap() {
            Step::NeedMore(_) => (hs.feed(&wire[cut..], &c).unwrap(), &[][..]),
            // Done on the first piece: the rest is relayed later as stream data.
            done => (done, &wire[cut..]),
        };
        match step {
            Step::Done(Next::Forward {
                dest,
                user,
                initial_upload,
                reply,
                codec,
            }) => {
                assert_eq!(dest, Destination::Domain("localhost".into(), 8080));
                assert_eq!(user.user_id, 9);
                assert_eq!([&initial_upload[..], later].concat(), b"hello");
                assert_eq!(reply, [0, 0]);
                assert!(codec.is_none());
            }
            _ => panic!("cut {cut}: not forwarded"),
        }
    }
}

#[test]
fn unknown_uuid_flows_udp_and_garbage_are_rejected() {
    let c = ctx();
    let mut other = request(&[], CMD_TCP, &[0, 80, 1, 127, 0, 0, 1]);
    other[5] ^= 1;
    let mut hs = VlessHandshake::default();
    assert!(matches!(
        hs.feed(&other[..17], &c).unwrap(),
        Step::Done(Next::Reject {
            error: WireError::Auth(_),
            policy: RejectPolicy::DrainUntilTimeout
        })
    ));
    let mut pb = vec![0x0a, 16];
    pb.extend_from_slice(b"xtls-rprx-vision");
    for w in [
        request(&pb, CMD_TCP, &[0, 80, 1, 127, 0, 0, 1]),
        request(&[], CMD_UDP, &[0, 53, 1, 127, 0, 0, 1]),
        request(&[], CMD_MUX, &[]),
        request(&[], 9, &[0, 80, 1, 127, 0, 0, 1]),
        request(&[], CMD_TCP, &[0, 80, 7, 127, 0, 0, 1]),
        b"\x05\x01\x00".to_vec(),
    ] {
        let mut hs = VlessHandshake::default();
        assert!(matches!(
            hs.feed(&w, &c).unwrap(),
            Step::Done(Next::Reject { .. })
        ));
    }
}

proptest::proptest! {
    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..600), cut in 0usize..600) {
        let _ = parse_request(&data);
        let _ = addons_flow(&data);
        let c = ctx();
        let mut hs = VlessHandshake::default();
        let cut = cut.min(data.len());
        if let Ok(Step::NeedMore(_)) = hs.feed(&data[..cut], &c) {
            let _ = hs.feed(&data[cut..], &c);
        }
        let mut w = request(&[], CMD_TCP, &[]);
        w.truncate(17);
        w.extend_from_slice(&data);
        let _ = VlessHandshake::default().feed(&w, &c);
    }
}
