#![allow(clippy::unwrap_used, clippy::panic)]
use crate::fixture::OneKey as Ctx;

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
        Step::Done(Next::Fallback {
            error: WireError::Auth(_),
            ..
        })
    ));
    // A probe: every byte to the fallback.
    match VlessHandshake::default().feed(b"GET / HTTP/1.1\r\n", &c).unwrap() {
        Step::Done(Next::Fallback { consumed, .. }) => assert_eq!(consumed, b"GET / HTTP/1.1\r\n"),
        _ => panic!("expected fallback"),
    }
    let mut pb = vec![0x0a, 16];
    pb.extend_from_slice(b"xtls-rprx-vision");
    for w in [
        request(&pb, CMD_TCP, &[0, 80, 1, 127, 0, 0, 1]),
        request(&[], 9, &[0, 80, 1, 127, 0, 0, 1]),
        request(&[], CMD_TCP, &[0, 80, 7, 127, 0, 0, 1]),
        b"\x05\x01\x00".to_vec(),
    ] {
        let mut hs = VlessHandshake::default();
        assert!(matches!(
            hs.feed(&w, &c).unwrap(),
            Step::Done(Next::Fallback { .. })
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

mod datagrams {
    use super::*;
    use crate::{DatagramStreamCodec, StreamDatagram};

    fn open_stream(wire: &[u8]) -> (Box<dyn DatagramStreamCodec>, Vec<u8>) {
        match VlessHandshake::default().feed(wire, &ctx()).unwrap() {
            Step::Done(Next::UdpOverStream {
                user,
                reply,
                initial,
                codec,
                ..
            }) => {
                assert_eq!(user.user_id, 9);
                assert_eq!(reply, [0, 0]);
                (codec, initial)
            }
            _ => panic!("not a datagram stream"),
        }
    }

    /// Known answer: command 0x02 to 127.0.0.1:53, then length-prefixed packets.
    #[test]
    fn udp_command_known_answer() {
        let mut w = request(&[], CMD_UDP, &[0x00, 0x35, 1, 127, 0, 0, 1]);
        w.extend_from_slice(b"\x00\x03abc\x00\x00\x00\x05he");
        let (mut c, initial) = open_stream(&w);
        let (mut out, mut reply) = (Vec::new(), Vec::new());
        let used = c.open(&initial, &mut out, &mut reply).unwrap();
        assert_eq!(used, 7);
        let dest = Destination::Ip("127.0.0.1:53".parse().unwrap());
        assert_eq!(
            out,
            vec![
                StreamDatagram::Packet {
                    flow: 0,
                    dest: dest.clone(),
                    payload: b"abc".to_vec()
                },
                StreamDatagram::Packet {
                    flow: 0,
                    dest,
                    payload: Vec::new()
                },
            ]
        );
        let mut sealed = Vec::new();
        c.seal(0, "127.0.0.1:53".parse().unwrap(), b"xyz", &mut sealed)
            .unwrap();
        assert_eq!(sealed, b"\x00\x03xyz");
    }

    /// Known answer for XUDP as sing-box writes it (New with data, no global id; Keep with
    /// address) and as Xray writes it (New with an 8-byte global id), frame layout per Xray's
    /// common/mux/frame.go.
    #[test]
    fn xudp_known_answer() {
        let mut w = request(&[], CMD_MUX, &[]);
        // New, session 0, option data, UDP, port 53, IPv4 127.0.0.1; data "abc".
        w.extend_from_slice(b"\x00\x0c\x00\x00\x01\x01\x02\x00\x35\x01\x7f\x00\x00\x01\x00\x03abc");
        let (mut c, initial) = open_stream(&w);
        let (mut out, mut reply) = (Vec::new(), Vec::new());
        assert_eq!(c.open(&initial, &mut out, &mut reply).unwrap(), initial.len());
        assert_eq!(
            out,
            vec![StreamDatagram::Packet {
                flow: 0,
                dest: Destination::Ip("127.0.0.1:53".parse().unwrap()),
                payload: b"abc".to_vec()
            }]
        );
        // Keep, session 0, data, UDP to example.com:443 ("de"); Keep without address ("f");
        // Xray's New for session 1 with a global id and no data; KeepAlive; End of session 0.
        let mut more = Vec::new();
        more.extend_from_slice(b"\x00\x14\x00\x00\x02\x01\x02\x01\xbb\x02\x0bexample.com\x00\x02de");
        more.extend_from_slice(b"\x00\x04\x00\x00\x02\x01\x00\x01f");
        more.extend_from_slice(
            b"\x00\x14\x00\x01\x01\x00\x02\x00\x35\x01\x0a\x00\x00\x01\x01\x02\x03\x04\x05\x06\x07\x08",
        );
        more.extend_from_slice(b"\x00\x04\x00\x00\x04\x00");
        more.extend_from_slice(b"\x00\x04\x00\x00\x03\x00");
        // Split at every byte: nothing is decoded twice or lost.
        for cut in 0..more.len() {
            let mut c2 = udp::Xudp::default();
            let (mut o, mut r) = (Vec::new(), Vec::new());
            let first = c2.open(&initial, &mut o, &mut r).unwrap();
            assert_eq!(first, initial.len());
            o.clear();
            let used = c2.open(&more[..cut], &mut o, &mut r).unwrap();
            let mut rest = more[used..cut].to_vec();
            rest.extend_from_slice(&more[cut..]);
            assert_eq!(c2.open(&rest, &mut o, &mut r).unwrap(), rest.len(), "cut {cut}");
            assert_eq!(
                o,
                vec![
                    StreamDatagram::Packet {
                        flow: 0,
                        dest: Destination::Domain("example.com".into(), 443),
                        payload: b"de".to_vec()
                    },
                    StreamDatagram::Packet {
                        flow: 0,
                        dest: Destination::Ip("127.0.0.1:53".parse().unwrap()),
                        payload: b"f".to_vec()
                    },
                    StreamDatagram::End { flow: 0 },
                ],
                "cut {cut}"
            );
            assert!(r.is_empty());
        }
        // Reply: Keep with option data, UDP, source address, then length and payload.
        let mut sealed = Vec::new();
        c.seal(1, "10.0.0.1:53".parse().unwrap(), b"xy", &mut sealed)
            .unwrap();
        assert_eq!(
            sealed,
            b"\x00\x0c\x00\x01\x02\x01\x02\x00\x35\x01\x0a\x00\x00\x01\x00\x02xy"
        );
        sealed.clear();
        c.seal(2, "[::1]:80".parse().unwrap(), b"", &mut sealed).unwrap();
        let mut want = b"\x00\x18\x00\x02\x02\x01\x02\x00\x50\x03".to_vec();
        want.extend_from_slice(&[0; 15]);
        want.extend_from_slice(&[1, 0, 0]);
        assert_eq!(sealed, want);
    }

    /// Known answer for Mux.Cool TCP sub-streams as v2ray 4.34's mux client writes them (frame
    /// layout per v2ray-core common/mux/frame.go and writer.go; bytes built by a separate
    /// script): New with data to 127.0.0.1:80 (session 7), New without data to example.com:443
    /// (session 8), Keep with data on both, End of 7, then a late Keep for 7.
    #[test]
    fn mux_tcp_substreams_known_answer() {
        let wire = hex::decode(
            "000c00070101010050017f000001000268690014000801000101bb020b6578616d706c652e636f6d\
             00040007020100036162630004000802010005474554202f00040007030000040007020100046c617465",
        )
        .unwrap();
        let want = vec![
            StreamDatagram::StreamOpen {
                flow: 7,
                dest: Destination::Ip("127.0.0.1:80".parse().unwrap()),
                data: b"hi".to_vec(),
            },
            StreamDatagram::StreamOpen {
                flow: 8,
                dest: Destination::Domain("example.com".into(), 443),
                data: Vec::new(),
            },
            StreamDatagram::StreamData {
                flow: 7,
                data: b"abc".to_vec(),
            },
            StreamDatagram::StreamData {
                flow: 8,
                data: b"GET /".to_vec(),
            },
            StreamDatagram::End { flow: 7 },
        ];
        // Split at every byte: nothing is decoded twice or lost.
        for cut in 0..wire.len() {
            let mut c = udp::Xudp::default();
            let (mut out, mut reply) = (Vec::new(), Vec::new());
            let used = c.open(&wire[..cut], &mut out, &mut reply).unwrap();
            let mut rest = wire[used..cut].to_vec();
            rest.extend_from_slice(&wire[cut..]);
            assert_eq!(
                c.open(&rest, &mut out, &mut reply).unwrap(),
                rest.len(),
                "cut {cut}"
            );
            assert_eq!(out, want, "cut {cut}");
            // The late Keep for the ended session 7: End with the error option back.
            assert_eq!(reply, hex::decode("000400070302").unwrap(), "cut {cut}");
        }
        // Server side: 20000 bytes on session 8 as Keep frames of at most 16 KiB, no address.
        let mut c = udp::Xudp::default();
        let (mut out, mut reply) = (Vec::new(), Vec::new());
        c.open(&wire, &mut out, &mut reply).unwrap();
        let data: Vec<u8> = (0..20000u32).map(|i| (i % 251) as u8).collect();
        let mut sealed = Vec::new();
        c.seal_stream(8, &data, &mut sealed).unwrap();
        let mut want = hex::decode("0004000802014000").unwrap();
        want.extend_from_slice(&data[..16384]);
        want.extend_from_slice(&hex::decode("0004000802010e20").unwrap());
        want.extend_from_slice(&data[16384..]);
        assert_eq!(sealed, want);
        // Its end (no error, then with error on another session): End frames.
        sealed.clear();
        c.seal_end(8, false, &mut sealed).unwrap();
        assert_eq!(sealed, hex::decode("000400080300").unwrap());
        sealed.clear();
        c.seal_end(9, true, &mut sealed).unwrap();
        assert_eq!(sealed, hex::decode("000400090302").unwrap());
        // Session 8 is forgotten: its data now gets End + error.
        out.clear();
        reply.clear();
        let late = hex::decode("0004000802010001ff").unwrap();
        assert_eq!(c.open(&late, &mut out, &mut reply).unwrap(), late.len());
        assert!(out.is_empty());
        assert_eq!(reply, hex::decode("000400080302").unwrap());
        // Oversized metadata and unknown status are errors; so is New for an open sub-stream.
        assert!(c.open(b"\x02\x01", &mut out, &mut reply).is_err());
        assert!(c.open(b"\x00\x04\x00\x00\x09\x00", &mut out, &mut reply).is_err());
        let mut c = udp::Xudp::default();
        let new = hex::decode("000c0007010001005001 7f000001".replace(' ', "")).unwrap();
        c.open(&new, &mut out, &mut reply).unwrap();
        assert!(c.open(&new, &mut out, &mut reply).is_err());
    }

    /// At most `MAX_STREAMS` TCP sub-streams: the next New gets End + error, and a freed
    /// slot is usable again.
    #[test]
    fn mux_tcp_substreams_are_bounded() {
        let mut c = udp::Xudp::default();
        let (mut out, mut reply) = (Vec::new(), Vec::new());
        let new = |sid: u16| {
            let mut f = vec![0x00, 0x0c];
            f.extend_from_slice(&sid.to_be_bytes());
            f.extend_from_slice(&[0x01, 0x00, 0x01, 0x00, 0x50, 0x01, 127, 0, 0, 1]);
            f
        };
        for sid in 0..udp::MAX_STREAMS as u16 {
            c.open(&new(sid), &mut out, &mut reply).unwrap();
        }
        assert_eq!(out.len(), udp::MAX_STREAMS);
        assert!(reply.is_empty());
        out.clear();
        c.open(&new(1000), &mut out, &mut reply).unwrap();
        assert!(out.is_empty());
        assert_eq!(reply, hex::decode("000403e80302").unwrap());
        // Session 0 ends (client End): session 1001 may open.
        c.open(&hex::decode("000400000300").unwrap(), &mut out, &mut reply)
            .unwrap();
        assert_eq!(out, vec![StreamDatagram::End { flow: 0 }]);
        out.clear();
        c.open(&new(1001), &mut out, &mut reply).unwrap();
        assert!(matches!(
            out.as_slice(),
            [StreamDatagram::StreamOpen { flow: 1001, .. }]
        ));
    }

    proptest::proptest! {
        #[test]
        fn random_frames_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let (mut out, mut reply) = (Vec::new(), Vec::new());
            let _ = udp::Xudp::default().open(&data, &mut out, &mut reply);
            let mut c = udp::VlessUdp { dest: Destination::Domain("x".into(), 1) };
            let _ = c.open(&data, &mut out, &mut reply);
            // After a valid New frame.
            let mut w = b"\x00\x0c\x00\x00\x01\x00\x02\x00\x35\x01\x7f\x00\x00\x01".to_vec();
            w.extend_from_slice(&data);
            let _ = udp::Xudp::default().open(&w, &mut out, &mut reply);
        }
    }
}
