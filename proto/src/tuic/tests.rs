#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

const UUID: [u8; 16] = [
    0xa7, 0xb4, 0xb8, 0xab, 0x42, 0xd7, 0x4c, 0x48, 0xa0, 0xc5, 0x91, 0xfd, 0x4b, 0xd5, 0x3c, 0x37,
];

fn inbound() -> TuicInbound {
    TuicInbound::new(Congestion::Bbr, Duration::from_secs(3), Vec::new())
}

#[test]
fn connect_known_answer_and_every_prefix_is_incomplete() {
    // VER 5, Connect, domain "example.com", port 443, then payload.
    let mut wire = vec![5, 1, 0, 11];
    wire.extend_from_slice(b"example.com");
    wire.extend_from_slice(&443u16.to_be_bytes());
    wire.extend_from_slice(b"GET /");
    let t = inbound();
    let StreamHead::Connect { dest, used } = t.bidi_head(&wire, true).unwrap() else {
        panic!("not a connect")
    };
    assert_eq!(dest, Destination::Domain("example.com".into(), 443));
    assert_eq!(&wire[used..], b"GET /");
    for cut in 0..used {
        assert_eq!(
            t.bidi_head(&wire[..cut], true).unwrap(),
            StreamHead::NeedMore,
            "{cut}"
        );
    }
    // IPv4 and IPv6 forms.
    let v4 = [5, 1, 1, 127, 0, 0, 1, 0x1f, 0x90];
    assert_eq!(
        t.bidi_head(&v4, false).unwrap(),
        StreamHead::Connect {
            dest: Destination::Ip("127.0.0.1:8080".parse().unwrap()),
            used: 9
        }
    );
    let mut v6 = vec![5, 1, 2];
    v6.extend_from_slice(&"::1".parse::<Ipv6Addr>().unwrap().octets());
    v6.extend_from_slice(&53u16.to_be_bytes());
    assert_eq!(
        t.bidi_head(&v6, false).unwrap(),
        StreamHead::Connect {
            dest: Destination::Ip("[::1]:53".parse().unwrap()),
            used: 21
        }
    );
    // Wrong version, wrong command, no address, unknown address type.
    assert!(t.bidi_head(&[4, 1, 1], true).is_err());
    assert!(t.bidi_head(&[5, 2, 1], true).is_err());
    assert!(t.bidi_head(&[5, 1, 0xff], true).is_err());
    assert!(t.bidi_head(&[5, 1, 7], true).is_err());
    assert!(t.bidi_head(&[5, 1, 0, 0, 0, 80], true).is_err());
}

#[test]
fn authenticate_is_checked_with_the_exporter_and_the_uuid_string() {
    let t = inbound();
    let mut wire = vec![5, 0];
    wire.extend_from_slice(&UUID);
    wire.extend_from_slice(&[0x11; 32]);
    for cut in 0..wire.len() {
        assert_eq!(t.uni_head(&wire[..cut], false).unwrap(), StreamHead::NeedMore);
    }
    let StreamHead::Auth { key, token, rx, .. } = t.uni_head(&wire, false).unwrap() else {
        panic!("not an auth")
    };
    assert_eq!(key, UUID);
    assert_eq!(rx, 0, "TUIC declares no receive rate");
    assert_eq!(t.send_rate(rx), None);
    let token = token.unwrap();
    // The exporter is asked for label = the 16 raw uuid bytes, context = the uuid string.
    let seen = std::cell::RefCell::new(Vec::new());
    let mut export = |label: &[u8], ctx: &[u8], out: &mut [u8; 32]| {
        seen.borrow_mut()
            .push((label.to_vec(), String::from_utf8(ctx.to_vec()).unwrap()));
        *out = if ctx == b"a7b4b8ab-42d7-4c48-a0c5-91fd4bd53c37" {
            [0x11; 32]
        } else {
            [0; 32]
        };
        true
    };
    assert!(t.verify(&key, Some(&token), &UUID, &mut export));
    assert_eq!(
        seen.borrow()[0],
        (UUID.to_vec(), "a7b4b8ab-42d7-4c48-a0c5-91fd4bd53c37".to_string())
    );
    // Another token, another user's secret, no token, a failing exporter: refused.
    assert!(!t.verify(&key, Some(&[0x12; 32]), &UUID, &mut export));
    let mut other = UUID;
    other[0] ^= 1;
    assert!(!t.verify(&key, Some(&token), &other, &mut export));
    assert!(!t.verify(&key, None, &UUID, &mut export));
    assert!(!t.verify(
        &key,
        Some(&token),
        &UUID,
        &mut |_: &[u8], _: &[u8], _: &mut [u8; 32]| false
    ));
    // The uppercase form of the uuid is accepted too.
    let mut upper = |_: &[u8], ctx: &[u8], out: &mut [u8; 32]| {
        *out = if ctx == b"A7B4B8AB-42D7-4C48-A0C5-91FD4BD53C37" {
            [0x11; 32]
        } else {
            [0; 32]
        };
        true
    };
    assert!(t.verify(&key, Some(&token), &UUID, &mut upper));
}

#[test]
fn packets_round_trip_on_streams_and_datagrams() {
    let from: SocketAddr = "1.2.3.4:53".parse().unwrap();
    let mut out = Vec::new();
    assert!(encode_packet(&mut out, 7, 9, from, b"hello", 1200));
    let d = &out[0];
    // Known answer: VER CMD | assoc 7 | pkt 9 | total 1 | id 0 | size 5 | IPv4 1.2.3.4:53 | hello
    assert_eq!(
        d,
        &[5, 2, 0, 7, 0, 9, 1, 0, 0, 5, 1, 1, 2, 3, 4, 0, 53, b'h', b'e', b'l', b'l', b'o']
    );
    let t = inbound();
    // On a uni stream (relay mode quic).
    let StreamHead::Packet(p) = t.uni_head(d, true).unwrap() else {
        panic!("not a packet")
    };
    assert_eq!(
        p,
        Packet {
            assoc: 7,
            dest: Destination::Ip(from),
            payload: b"hello".to_vec()
        }
    );
    for cut in 0..d.len() {
        assert_eq!(t.uni_head(&d[..cut], true).unwrap(), StreamHead::NeedMore);
    }
    // As a datagram (relay mode native).
    let mut c = TuicConn::default();
    assert_eq!(c.datagram(d).unwrap(), Some(p));
    // A heartbeat is nothing; a size that does not match the datagram is refused.
    assert_eq!(c.datagram(&[5, 4]).unwrap(), None);
    assert!(c.datagram(&d[..d.len() - 1]).is_err());
    assert!(c.datagram(&[5]).is_err());
    assert!(c.datagram(&[5, 1, 0]).is_err());
    // Dissociate.
    assert_eq!(
        t.uni_head(&[5, 3, 0, 7], true).unwrap(),
        StreamHead::Dissociate { assoc: 7 }
    );
}

#[test]
fn fragments_reassemble_with_the_address_of_the_first() {
    let from: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
    let payload: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
    let mut frags = Vec::new();
    assert!(encode_packet(&mut frags, 1, 42, from, &payload, 1000));
    assert_eq!(frags.len(), 4);
    assert!(frags.iter().all(|f| f.len() <= 1000));
    // As sing-box sends them: "none" as the address after the first fragment.
    let stripped: Vec<Vec<u8>> = frags
        .iter()
        .enumerate()
        .map(|(i, f)| {
            if i == 0 {
                return f.clone();
            }
            let mut g = f[..10].to_vec();
            g.push(0xff);
            g.extend_from_slice(&f[10 + 19..]);
            g
        })
        .collect();
    let mut c = TuicConn::default();
    let mut done = None;
    for f in stripped.iter().rev() {
        assert!(done.is_none());
        done = c.datagram(f).unwrap();
    }
    let p = done.unwrap();
    assert_eq!((p.assoc, p.dest, p.payload), (1, Destination::Ip(from), payload));
    // The reply side fragments to the datagram size and a stream reply is one message.
    let mut out = Vec::new();
    assert!(c.seal_reply(1, from, &[7; 3000], PacketPath::Datagram, 1200, &mut out));
    assert_eq!(out.len(), 3);
    let mut one = Vec::new();
    assert!(c.seal_reply(1, from, &[7; 3000], PacketPath::Stream, 1200, &mut one));
    assert_eq!(one.len(), 1);
    // Too small a datagram for any payload, an association id beyond u16.
    assert!(!c.seal_reply(1, from, b"x", PacketPath::Datagram, 20, &mut Vec::new()));
    assert!(!c.seal_reply(70_000, from, b"x", PacketPath::Datagram, 1200, &mut Vec::new()));
}

#[test]
fn a_first_fragment_must_name_its_destination() {
    let wire = [0, 1, 0, 1, 2, 0, 0, 1, 0xff, b'x'];
    assert!(parse_packet(&wire).is_err());
    // Fragment id outside its total.
    let wire = [0, 1, 0, 1, 1, 1, 0, 1, 1, 1, 2, 3, 4, 0, 53, b'x'];
    assert!(parse_packet(&wire).is_err());
}

proptest::proptest! {
    #[test]
    fn garbage_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
        let t = inbound();
        let _ = t.bidi_head(&data, true);
        let _ = t.uni_head(&data, true);
        let _ = TuicConn::default().datagram(&data);
        let mut with_header = vec![5, 2];
        with_header.extend_from_slice(&data);
        let _ = TuicConn::default().datagram(&with_header);
        let _ = t.uni_head(&with_header, true);
    }
}
