#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use std::net::SocketAddr;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use v2sp_shared::cred::CredKind;

use super::session::*;
use super::*;
use crate::fixture::StaticAuth;
use crate::{DatagramStreamCodec, StreamDatagram};

const UUIDS: [&str; 2] = [
    "a7b4b8ab-42d7-4c48-a0c5-91fd4bd53c37",
    "0f0e0d0c-0b0a-0908-0706-050403020100",
];

fn ctx() -> StaticAuth {
    StaticAuth::new(CredKind::Sha256Password, &UUIDS, 0)
}

fn auth(uuid: &str, pad: usize) -> Vec<u8> {
    let mut v = Sha256::digest(uuid.as_bytes()).to_vec();
    v.extend_from_slice(&(pad as u16).to_be_bytes());
    v.extend(std::iter::repeat_n(0u8, pad));
    v
}

fn frame(cmd: u8, sid: u32, data: &[u8]) -> Vec<u8> {
    let mut v = vec![cmd];
    v.extend_from_slice(&sid.to_be_bytes());
    v.extend_from_slice(&(data.len() as u16).to_be_bytes());
    v.extend_from_slice(data);
    v
}

fn settings(v: u32, md5: &str) -> Vec<u8> {
    frame(
        CMD_SETTINGS,
        0,
        format!("v={v}\nclient=sing-box/1.14.4\npadding-md5={md5}").as_bytes(),
    )
}

fn socks_domain(d: &str, port: u16) -> Vec<u8> {
    let mut v = vec![3, d.len() as u8];
    v.extend_from_slice(d.as_bytes());
    v.extend_from_slice(&port.to_be_bytes());
    v
}

/// Frames out of server output: (cmd, sid, data).
fn parse_frames(mut b: &[u8]) -> Vec<(u8, u32, Vec<u8>)> {
    let mut v = Vec::new();
    while b.len() >= HEADER {
        let len = usize::from(u16::from_be_bytes([b[5], b[6]]));
        v.push((
            b[0],
            u32::from_be_bytes([b[1], b[2], b[3], b[4]]),
            b[7..7 + len].to_vec(),
        ));
        b = &b[7 + len..];
    }
    assert!(b.is_empty(), "trailing bytes");
    v
}

/// Feeds `wire` to the handshake in pieces of `step` bytes, then the rest to the session as the
/// core does (unconsumed bytes stay pending). Returns the user id, events, reply and session.
fn run(wire: &[u8], step: usize) -> (u32, Vec<StreamDatagram>, Vec<u8>, Session) {
    let scheme = Arc::new(PaddingScheme::default());
    let mut hs = AnytlsHandshake::new(scheme.clone());
    let c = ctx();
    let mut chunks = wire.chunks(step.max(1));
    let (user, mut pending) = loop {
        let part = chunks.next().expect("handshake never finished");
        match hs.feed(part, &c).unwrap() {
            Step::NeedMore(_) => {}
            Step::Done(Next::UdpOverStream {
                user, initial, reply, ..
            }) => {
                assert!(reply.is_empty());
                break (user.user_id, initial);
            }
            Step::Done(_) => panic!("not a session"),
        }
    };
    let mut s = Session::new(scheme);
    let mut events = Vec::new();
    let mut reply = Vec::new();
    for part in std::iter::once(&[][..]).chain(chunks) {
        pending.extend_from_slice(part);
        let used = s.open(&pending, &mut events, &mut reply).unwrap();
        pending.drain(..used);
    }
    assert!(pending.is_empty(), "bytes left over");
    (user, events, reply, s)
}

/// Joins consecutive data events of each flow (splits cut payload into pieces).
fn merged(events: Vec<StreamDatagram>) -> Vec<StreamDatagram> {
    let mut out: Vec<StreamDatagram> = Vec::new();
    for e in events {
        match (out.last_mut(), e) {
            (
                Some(StreamDatagram::StreamOpen { flow: a, data, .. }),
                StreamDatagram::StreamData { flow: b, data: d },
            )
            | (
                Some(StreamDatagram::StreamData { flow: a, data }),
                StreamDatagram::StreamData { flow: b, data: d },
            ) if *a == b => data.extend_from_slice(&d),
            (_, e) => out.push(e),
        }
    }
    out
}

fn default_md5() -> String {
    PaddingScheme::default().md5_hex
}

#[test]
fn default_scheme_md5_is_the_reference() {
    // md5 of anytls-go's / sing-anytls' DefaultPaddingScheme bytes.
    let s = PaddingScheme::from_lines(&[]).unwrap();
    assert_eq!(s.raw, DEFAULT_PADDING_SCHEME.as_bytes());
    assert_eq!(s.md5_hex.len(), 32);
    let lines: Vec<String> = DEFAULT_PADDING_SCHEME.lines().map(str::to_string).collect();
    assert_eq!(PaddingScheme::from_lines(&lines).unwrap(), s);
    assert!(PaddingScheme::from_lines(&["0=30-30".to_string()]).is_err());
    assert!(PaddingScheme::from_lines(&["stop=x".to_string()]).is_err());
}

#[test]
fn tcp_stream_split_at_every_byte() {
    let mut wire = auth(UUIDS[1], 30);
    wire.extend(settings(2, &default_md5()));
    wire.extend(frame(CMD_SYN, 1, &[]));
    let mut first = socks_domain("example.com", 443);
    first.extend_from_slice(b"hello");
    wire.extend(frame(CMD_PSH, 1, &first));
    wire.extend(frame(CMD_WASTE, 0, &[0; 40]));
    wire.extend(frame(CMD_PSH, 1, b" world"));
    wire.extend(frame(CMD_HEART_REQUEST, 9, &[]));
    wire.extend(frame(CMD_FIN, 1, &[]));
    for step in 1..wire.len() {
        let (user, events, reply, s) = run(&wire, step);
        assert_eq!(user, 101);
        let events = merged(events);
        assert_eq!(
            events,
            vec![
                StreamDatagram::StreamOpen {
                    flow: 0,
                    dest: Destination::Domain("example.com".into(), 443),
                    data: b"hello world".to_vec()
                },
                StreamDatagram::End { flow: 0 }
            ],
            "step {step}"
        );
        // Same md5: no scheme update; v2: serverSettings; heartbeat answered.
        assert_eq!(
            parse_frames(&reply),
            vec![
                (CMD_SERVER_SETTINGS, 0, b"v=2".to_vec()),
                (CMD_HEART_RESPONSE, 9, vec![])
            ]
        );
        assert_eq!(s.open_streams(), 0);
    }
}

#[test]
fn padding_update_and_v1() {
    let mut wire = auth(UUIDS[0], 0);
    wire.extend(settings(1, "00112233"));
    let (user, events, reply, mut s) = run(&wire, 1000);
    assert_eq!(user, 100);
    assert!(events.is_empty());
    assert_eq!(
        parse_frames(&reply),
        vec![(CMD_UPDATE_PADDING, 0, DEFAULT_PADDING_SCHEME.as_bytes().to_vec())]
    );
    // v1: no synack, ever.
    let mut out = Vec::new();
    let mut ev = Vec::new();
    let mut r = Vec::new();
    let mut w = frame(CMD_SYN, 5, &[]);
    w.extend(frame(CMD_PSH, 5, &[1, 127, 0, 0, 1, 0, 80]));
    assert_eq!(s.open(&w, &mut ev, &mut r).unwrap(), w.len());
    s.seal_connected(0, &mut out).unwrap();
    assert!(out.is_empty());
    s.seal_end(0, true, &mut out).unwrap();
    assert_eq!(parse_frames(&out), vec![(CMD_FIN, 5, vec![])]);
}

#[test]
fn syn_before_settings_is_alerted() {
    let mut s = Session::new(Arc::new(PaddingScheme::default()));
    let mut ev = Vec::new();
    let mut r = Vec::new();
    assert!(s.open(&frame(CMD_SYN, 1, &[]), &mut ev, &mut r).is_err());
    assert_eq!(
        parse_frames(&r),
        vec![(CMD_ALERT, 0, b"client did not send its settings".to_vec())]
    );
}

fn v2_session() -> Session {
    let mut s = Session::new(Arc::new(PaddingScheme::default()));
    let mut ev = Vec::new();
    let mut r = Vec::new();
    s.open(&settings(2, &default_md5()), &mut ev, &mut r).unwrap();
    s
}

#[test]
fn synack_follows_connect_and_replies_are_framed() {
    let mut s = v2_session();
    let (mut ev, mut r) = (Vec::new(), Vec::new());
    let mut w = frame(CMD_SYN, 7, &[]);
    w.extend(frame(
        CMD_PSH,
        7,
        &[4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 22],
    ));
    w.extend(frame(CMD_SYN, 8, &[]));
    w.extend(frame(CMD_PSH, 8, &[1, 10, 0, 0, 1, 0, 22]));
    s.open(&w, &mut ev, &mut r).unwrap();
    assert!(r.is_empty());
    assert_eq!(ev.len(), 2);
    let mut out = Vec::new();
    s.seal_connected(0, &mut out).unwrap();
    s.seal_connected(0, &mut out).unwrap();
    let big = vec![7u8; 70000];
    s.seal_stream(0, &big, &mut out).unwrap();
    s.seal_end(0, false, &mut out).unwrap();
    // Flow 1 failed to connect: synack with the error, then fin.
    s.seal_end(1, true, &mut out).unwrap();
    // Late bytes for a closed stream: nothing.
    s.seal_stream(0, b"late", &mut out).unwrap();
    let f = parse_frames(&out);
    assert_eq!(f[0], (CMD_SYNACK, 7, vec![]));
    assert_eq!((f[1].0, f[1].1, f[1].2.len()), (CMD_PSH, 7, 65535));
    assert_eq!((f[2].0, f[2].1, f[2].2.len()), (CMD_PSH, 7, 70000 - 65535));
    assert_eq!(f[3], (CMD_FIN, 7, vec![]));
    assert_eq!((f[4].0, f[4].1), (CMD_SYNACK, 8));
    assert!(!f[4].2.is_empty());
    assert_eq!(f[5], (CMD_FIN, 8, vec![]));
    assert_eq!(f.len(), 6);
    assert_eq!(s.open_streams(), 0);
}

#[test]
fn bad_destination_refuses_only_that_stream() {
    let mut s = v2_session();
    let (mut ev, mut r) = (Vec::new(), Vec::new());
    let mut w = frame(CMD_SYN, 1, &[]);
    w.extend(frame(CMD_PSH, 1, &[9, 1, 2, 3]));
    w.extend(frame(CMD_PSH, 1, b"more"));
    w.extend(frame(CMD_SYN, 2, &[]));
    w.extend(frame(CMD_PSH, 2, &socks_domain(UOT_LEGACY, 0)));
    s.open(&w, &mut ev, &mut r).unwrap();
    assert!(ev.is_empty());
    let f = parse_frames(&r);
    assert_eq!(
        f.iter().map(|x| (x.0, x.1)).collect::<Vec<_>>(),
        vec![(CMD_SYNACK, 1), (CMD_FIN, 1), (CMD_SYNACK, 2), (CMD_FIN, 2)]
    );
    assert_eq!(s.open_streams(), 0);
}

#[test]
fn streams_are_capped() {
    let mut s = v2_session();
    let (mut ev, mut r) = (Vec::new(), Vec::new());
    let mut w = Vec::new();
    for sid in 1..=(MAX_STREAMS as u32 + 1) {
        w.extend(frame(CMD_SYN, sid, &[]));
    }
    s.open(&w, &mut ev, &mut r).unwrap();
    assert_eq!(s.open_streams(), MAX_STREAMS);
    let f = parse_frames(&r);
    let last = MAX_STREAMS as u32 + 1;
    assert_eq!(
        f.iter().map(|x| (x.0, x.1)).collect::<Vec<_>>(),
        vec![(CMD_SYNACK, last), (CMD_FIN, last)]
    );
}

#[test]
fn udp_over_tcp_split_at_every_byte() {
    let mut wire = auth(UUIDS[0], 3);
    wire.extend(settings(2, &default_md5()));
    wire.extend(frame(CMD_SYN, 3, &[]));
    let mut s = socks_domain(UOT_MAGIC, 0);
    s.push(0); // not connect
    s.extend([1, 127, 0, 0, 1, 0, 53]); // request destination (SOCKS)
                                        // Packet 1 to 10.0.0.1:53 (uot IPv4 = 0), packet 2 to a domain (2).
    s.extend([0, 10, 0, 0, 1, 0, 53, 0, 3, b'a', b'b', b'c']);
    wire.extend(frame(CMD_PSH, 3, &s));
    let mut p2 = vec![2, 3, b'x', b'.', b'y', 1, 0, 0, 2];
    p2.extend_from_slice(b"zz");
    wire.extend(frame(CMD_PSH, 3, &p2[..4]));
    wire.extend(frame(CMD_PSH, 3, &p2[4..]));
    wire.extend(frame(CMD_FIN, 3, &[]));
    for step in 1..wire.len() {
        let (_, events, reply, _) = run(&wire, step);
        assert_eq!(
            events,
            vec![
                StreamDatagram::Packet {
                    flow: 0,
                    dest: Destination::Ip("10.0.0.1:53".parse().unwrap()),
                    payload: b"abc".to_vec()
                },
                StreamDatagram::Packet {
                    flow: 0,
                    dest: Destination::Domain("x.y".into(), 256),
                    payload: b"zz".to_vec()
                },
                StreamDatagram::End { flow: 0 }
            ],
            "step {step}"
        );
        let f = parse_frames(&reply);
        assert_eq!(f[1], (CMD_SYNACK, 3, vec![]), "step {step}");
    }
}

#[test]
fn udp_over_tcp_replies() {
    for connect in [false, true] {
        let mut s = v2_session();
        let (mut ev, mut r) = (Vec::new(), Vec::new());
        let mut d = socks_domain(UOT_MAGIC, 0);
        d.push(u8::from(connect));
        d.extend([1, 127, 0, 0, 1, 0, 53]);
        let mut w = frame(CMD_SYN, 4, &[]);
        w.extend(frame(CMD_PSH, 4, &d));
        s.open(&w, &mut ev, &mut r).unwrap();
        let from: SocketAddr = "[::ffff:10.1.2.3]:5353".parse().unwrap();
        let mut out = Vec::new();
        s.seal(0, from, b"pong", &mut out).unwrap();
        let f = parse_frames(&out);
        let mut want = Vec::new();
        if !connect {
            want.extend([0, 10, 1, 2, 3, 0x14, 0xe9]);
        }
        want.extend([0, 4]);
        want.extend_from_slice(b"pong");
        assert_eq!(f, vec![(CMD_PSH, 4, want)]);
        // Not a datagram flow / closed: an error (the core drops the reply, uncounted).
        assert!(s.seal(9, from, b"x", &mut out).is_err());
    }
}

#[test]
fn wrong_password_falls_back_with_every_byte() {
    let c = ctx();
    let mut wire = auth("11111111-2222-4333-8444-555555555555", 5);
    wire.extend(b"more");
    for step in 1..wire.len() {
        let mut hs = AnytlsHandshake::new(Arc::new(PaddingScheme::default()));
        let mut fed = Vec::new();
        let mut result = None;
        for part in wire.chunks(step) {
            fed.extend_from_slice(part);
            match hs.feed(part, &c).unwrap() {
                Step::NeedMore(_) => {}
                Step::Done(Next::Fallback { consumed, .. }) => {
                    result = Some(consumed);
                    break;
                }
                Step::Done(_) => panic!("accepted a wrong password"),
            }
        }
        assert_eq!(result.unwrap(), fed, "step {step}");
        assert!(fed.len() >= 32);
    }
    // A short HTTP request goes to the fallback at once.
    let mut hs = AnytlsHandshake::new(Arc::new(PaddingScheme::default()));
    match hs.feed(b"GET / HTTP/1.1\r\n\r\n", &c).unwrap() {
        Step::Done(Next::Fallback { consumed, .. }) => assert_eq!(consumed, b"GET / HTTP/1.1\r\n\r\n"),
        _ => panic!("probe not sent to the fallback"),
    }
    // A partial one waits.
    let mut hs = AnytlsHandshake::new(Arc::new(PaddingScheme::default()));
    assert!(matches!(
        hs.feed(b"GET / HTTP/1.1\r\n", &c).unwrap(),
        Step::NeedMore(_)
    ));
}

#[test]
fn large_padding_is_skipped_without_buffering() {
    let mut wire = auth(UUIDS[0], 65535);
    wire.extend(settings(2, &default_md5()));
    let (_, events, reply, _) = run(&wire, 4096);
    assert!(events.is_empty());
    assert_eq!(
        parse_frames(&reply),
        vec![(CMD_SERVER_SETTINGS, 0, b"v=2".to_vec())]
    );
}

proptest::proptest! {
    /// Arbitrary session bytes after a valid settings frame: never a panic, consumption within
    /// the input, bounded state.
    #[test]
    fn session_never_panics(input in proptest::collection::vec(proptest::num::u8::ANY, 0..4096), step in 1usize..64) {
        let mut s = v2_session();
        let mut pending = Vec::new();
        let (mut ev, mut r) = (Vec::new(), Vec::new());
        for part in input.chunks(step) {
            pending.extend_from_slice(part);
            match s.open(&pending, &mut ev, &mut r) {
                Ok(used) => { proptest::prop_assert!(used <= pending.len()); pending.drain(..used); }
                Err(_) => break,
            }
        }
        proptest::prop_assert!(s.open_streams() <= MAX_STREAMS);
        let mut out = Vec::new();
        let _ = s.seal(0, "127.0.0.1:1".parse().unwrap(), b"x", &mut out);
        let _ = s.seal_stream(0, b"x", &mut out);
        let _ = s.seal_end(0, true, &mut out);
    }
}
