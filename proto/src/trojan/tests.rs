#![allow(clippy::unwrap_used, clippy::panic)]

use sha2::{Digest, Sha224};

use super::*;
use crate::fixture::OneKey as Ctx;

const PASSWORD: &str = "a7b4b8ab-42d7-4c48-a0c5-91fd4bd53c37";

fn ctx() -> Ctx {
    Ctx::with(&Sha224::digest(PASSWORD.as_bytes()), 7)
}

/// Known answer: SHA-224("password") (trojan-gfw's documented example) and a full request to
/// example.com:443 followed by payload.
#[test]
fn known_answer_request() {
    let hex_pw = "d63dc919e201d7bc4c825630d2cf25fdc93d4b2f0d46706d29038d01";
    assert_eq!(hex::encode(Sha224::digest(b"password")), hex_pw);
    let mut wire = hex_pw.as_bytes().to_vec();
    wire.extend_from_slice(b"\r\n\x01\x03\x0bexample.com\x01\xbb\r\nGET /");
    let r = parse_request(&wire).unwrap().unwrap();
    assert_eq!(r.cmd, 1);
    assert_eq!(r.dest, Destination::Domain("example.com".into(), 443));
    assert_eq!(&wire[r.len..], b"GET /");
    assert_eq!(hex::encode(r.hash), hex_pw);
    // IPv4 and IPv6.
    let mut v4 = hex_pw.as_bytes().to_vec();
    v4.extend_from_slice(b"\r\n\x01\x01\x7f\x00\x00\x01\x00\x50\r\n");
    let r = parse_request(&v4).unwrap().unwrap();
    assert_eq!(r.dest, Destination::Ip("127.0.0.1:80".parse().unwrap()));
    assert_eq!(r.len, v4.len());
    let mut v6 = hex_pw.to_uppercase().into_bytes();
    v6.extend_from_slice(b"\r\n\x01\x04");
    v6.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x1f, 0x90]);
    v6.extend_from_slice(b"\r\n");
    let r = parse_request(&v6).unwrap().unwrap();
    assert_eq!(r.dest, Destination::Ip("[::1]:8080".parse().unwrap()));
}

fn request(payload: &[u8]) -> Vec<u8> {
    let mut w = hex::encode(Sha224::digest(PASSWORD.as_bytes())).into_bytes();
    w.extend_from_slice(b"\r\n\x01\x03\x09localhost\x1f\x90\r\n");
    w.extend_from_slice(payload);
    w
}

#[test]
fn header_split_at_every_byte_gives_the_same_result() {
    let wire = request(b"hello");
    for cut in 0..wire.len() {
        let mut hs = TrojanHandshake::default();
        let c = ctx();
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
                assert_eq!(user.user_id, 7);
                assert_eq!([&initial_upload[..], later].concat(), b"hello");
                assert!(reply.is_empty() && codec.is_none());
            }
            _ => panic!("cut {cut}: not forwarded"),
        }
    }
}

#[test]
fn wrong_password_and_garbage_are_rejected_without_a_reply() {
    let c = ctx();
    let mut w = hex::encode(Sha224::digest(b"wrong")).into_bytes();
    w.extend_from_slice(b"\r\n\x01\x01\x7f\x00\x00\x01\x00\x50\r\n");
    let mut hs = TrojanHandshake::default();
    // Rejected as soon as the hash is in, before the rest of the header.
    assert!(matches!(
        hs.feed(&w[..58], &c).unwrap(),
        Step::Done(Next::Fallback {
            error: WireError::Auth(_),
            ..
        })
    ));
    let mut hs = TrojanHandshake::default();
    assert!(matches!(
        hs.feed(&[b'z'; 80], &c).unwrap(),
        Step::Done(Next::Fallback { .. })
    ));
    // Right password, bad command / atyp / missing CRLF.
    for bad in [
        &b"\r\n\x02\x01\x7f\x00\x00\x01\x00\x50\r\n"[..],
        b"\r\n\x01\x09",
        b"\r\n\x01\x01\x7f\x00\x00\x01\x00\x50xx",
    ] {
        let mut w = hex::encode(Sha224::digest(PASSWORD.as_bytes())).into_bytes();
        w.extend_from_slice(bad);
        let mut hs = TrojanHandshake::default();
        assert!(matches!(
            hs.feed(&w, &c).unwrap(),
            Step::Done(Next::Fallback { .. })
        ));
    }
}

/// An HTTP probe goes to the fallback at its first byte, with every byte it sent, split
/// across feeds as it came.
#[test]
fn http_probe_goes_to_the_fallback_with_all_its_bytes() {
    let c = ctx();
    let mut hs = TrojanHandshake::default();
    // "abc" are hex digits: still possibly a hash.
    assert!(matches!(hs.feed(b"abc", &c).unwrap(), Step::NeedMore(_)));
    match hs.feed(b"GET / HTTP/1.1\r\n", &c).unwrap() {
        Step::Done(Next::Fallback { consumed, .. }) => assert_eq!(consumed, b"abcGET / HTTP/1.1\r\n"),
        _ => panic!("expected fallback"),
    }
    // A wrong but well-formed hash: all 58 bytes and what followed.
    let mut w = hex::encode(Sha224::digest(b"wrong")).into_bytes();
    w.extend_from_slice(b"\r\n\x01");
    match TrojanHandshake::default().feed(&w, &c).unwrap() {
        Step::Done(Next::Fallback { consumed, .. }) => assert_eq!(consumed, w),
        _ => panic!("expected fallback"),
    }
}

proptest::proptest! {
    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..400), cut in 0usize..400) {
        let _ = parse_request(&data);
        let c = ctx();
        let mut hs = TrojanHandshake::default();
        let cut = cut.min(data.len());
        if let Ok(Step::NeedMore(_)) = hs.feed(&data[..cut], &c) {
            let _ = hs.feed(&data[cut..], &c);
        }
        // Random tails after a valid hash exercise the request parser.
        let mut w = request(b"");
        w.truncate(58);
        w.extend_from_slice(&data);
        let _ = TrojanHandshake::default().feed(&w, &c);
    }
}

mod udp_associate {
    use super::*;
    use crate::{DatagramStreamCodec, StreamDatagram};

    /// Known answer (trojan-gfw protocol doc): UDP ASSOCIATE header, then a packet to
    /// 127.0.0.1:53 carrying "abc", written by hand.
    #[test]
    fn udp_associate_and_packets_known_answer() {
        let mut w = hex::encode(Sha224::digest(PASSWORD.as_bytes())).into_bytes();
        w.extend_from_slice(b"\r\n\x03\x01\x00\x00\x00\x00\x00\x00\r\n");
        // ATYP 1, 127.0.0.1, port 53, length 3, CRLF, "abc"; then half of the next packet.
        let pkt = b"\x01\x7f\x00\x00\x01\x00\x35\x00\x03\r\nabc";
        w.extend_from_slice(pkt);
        w.extend_from_slice(b"\x03\x0bexample.com\x01\xbb\x00\x02\r\nh");
        let mut hs = TrojanHandshake::default();
        let (user, mut codec, initial) = match hs.feed(&w, &ctx()).unwrap() {
            Step::Done(Next::UdpOverStream {
                user,
                reply,
                initial,
                codec,
                ..
            }) => {
                assert!(reply.is_empty());
                (user, codec, initial)
            }
            _ => panic!("not a UDP association"),
        };
        assert_eq!(user.user_id, 7);
        let mut out = Vec::new();
        let mut reply = Vec::new();
        let used = codec.open(&initial, &mut out, &mut reply).unwrap();
        assert_eq!(used, pkt.len());
        assert_eq!(
            out,
            vec![StreamDatagram::Packet {
                flow: 0,
                dest: Destination::Ip("127.0.0.1:53".parse().unwrap()),
                payload: b"abc".to_vec()
            }]
        );
        // The rest of the second packet arrives.
        let mut rest = initial[used..].to_vec();
        rest.push(b'i');
        out.clear();
        assert_eq!(codec.open(&rest, &mut out, &mut reply).unwrap(), rest.len());
        assert_eq!(
            out,
            vec![StreamDatagram::Packet {
                flow: 0,
                dest: Destination::Domain("example.com".into(), 443),
                payload: b"hi".to_vec()
            }]
        );
        assert!(reply.is_empty());
        // Reply from [::1]:5353 and from 10.0.0.1:53.
        let mut sealed = Vec::new();
        codec
            .seal(0, "10.0.0.1:53".parse().unwrap(), b"xy", &mut sealed)
            .unwrap();
        assert_eq!(sealed, b"\x01\x0a\x00\x00\x01\x00\x35\x00\x02\r\nxy");
        sealed.clear();
        codec
            .seal(0, "[::1]:5353".parse().unwrap(), b"", &mut sealed)
            .unwrap();
        let mut want = vec![4u8];
        want.extend_from_slice(&[0; 15]);
        want.extend_from_slice(&[1, 0x14, 0xe9, 0, 0, b'\r', b'\n']);
        assert_eq!(sealed, want);
    }

    #[test]
    fn malformed_packets_are_errors() {
        let mut c = udp::TrojanUdp;
        let (mut out, mut reply) = (Vec::new(), Vec::new());
        assert!(c
            .open(b"\x01\x7f\x00\x00\x01\x00\x35\x00\x03xxabc", &mut out, &mut reply)
            .is_err());
        assert!(c.open(b"\x09", &mut out, &mut reply).is_err());
        assert!(c.open(b"\x03\x00", &mut out, &mut reply).is_err());
        assert_eq!(c.open(b"\x01\x7f", &mut out, &mut reply).unwrap(), 0);
    }

    proptest::proptest! {
        #[test]
        fn random_packets_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let (mut out, mut reply) = (Vec::new(), Vec::new());
            let _ = udp::TrojanUdp.open(&data, &mut out, &mut reply);
        }
    }
}
