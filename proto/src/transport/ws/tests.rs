#![allow(clippy::unwrap_used, clippy::panic)]
//! Vectors: RFC 6455 §1.3 (accept key) and §5.7 (frames); the others computed with Python's
//! hashlib/base64 (see the comments).

use super::*;
use crate::transport::{Upgrade, Upgraded};

fn cfg(host: &str) -> HttpPathSettings {
    HttpPathSettings {
        path: "/ray".into(),
        host: host.into(),
    }
}

fn upgrade(req: &[u8], host: &str) -> Result<Upgrade, WireError> {
    WsHandshake::new(&cfg(host)).feed(req)
}

fn done(u: Upgrade) -> Upgraded {
    match u {
        Upgrade::Done(u) => u,
        Upgrade::NeedMore => panic!("need more"),
        Upgrade::Reject(r) => panic!("rejected: {}", String::from_utf8_lossy(&r)),
    }
}

const RFC_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

#[test]
fn rfc6455_accept_key() {
    assert_eq!(accept_key(RFC_KEY), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

fn request(extra: &str) -> Vec<u8> {
    format!(
        "GET /ray?ed=2048 HTTP/1.1\r\nHost: cdn.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {RFC_KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
    .into_bytes()
}

#[test]
fn upgrade_reply_and_frames_after_the_request() {
    let mut req = request("");
    // RFC 6455 §5.7: a single-frame masked text message "Hello".
    req.extend_from_slice(&[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]);
    let mut h = WsHandshake::new(&cfg("cdn.example"));
    let (a, b) = req.split_at(30);
    assert!(matches!(h.feed(a).unwrap(), Upgrade::NeedMore));
    let u = done(h.feed(b).unwrap());
    assert_eq!(
        String::from_utf8(u.reply).unwrap(),
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    );
    assert!(u.early.is_empty());
    let mut framing = u.framing.unwrap();
    let mut out = Vec::new();
    assert_eq!(framing.open(&u.rest, &mut out).unwrap(), u.rest.len());
    assert_eq!(out, b"Hello");
}

#[test]
fn early_data_in_sec_websocket_protocol_is_echoed() {
    // python: base64.urlsafe_b64encode(bytes(range(40))).rstrip(b'=')
    let ed = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJw";
    let u = done(upgrade(&request(&format!("Sec-WebSocket-Protocol: {ed}\r\n")), "").unwrap());
    assert_eq!(u.early, (0u8..40).collect::<Vec<_>>());
    let reply = String::from_utf8(u.reply).unwrap();
    assert!(
        reply.ends_with(&format!("Sec-WebSocket-Protocol: {ed}\r\n\r\n")),
        "{reply}"
    );
    // Standard alphabet with padding is accepted too (xray maps it).
    assert_eq!(early_data("+/8=").unwrap(), vec![0xfb, 0xff]);
    // Not base64: no early data, no echo.
    let u = done(upgrade(&request("Sec-WebSocket-Protocol: chat, superchat\r\n"), "").unwrap());
    assert!(u.early.is_empty());
    assert!(!String::from_utf8(u.reply)
        .unwrap()
        .contains("Sec-WebSocket-Protocol"));
}

#[test]
fn refusals_like_xray() {
    let status = |u: Upgrade| match u {
        Upgrade::Reject(r) => String::from_utf8(r).unwrap(),
        _ => panic!("accepted"),
    };
    assert!(status(upgrade(&request(""), "other.example").unwrap()).starts_with("HTTP/1.1 404"));
    let wrong_path = String::from_utf8(request("")).unwrap().replace("/ray?", "/x?");
    assert!(status(upgrade(wrong_path.as_bytes(), "").unwrap()).starts_with("HTTP/1.1 404"));
    let no_version = String::from_utf8(request(""))
        .unwrap()
        .replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8");
    assert!(status(upgrade(no_version.as_bytes(), "").unwrap()).starts_with("HTTP/1.1 400"));
    let bad_key = String::from_utf8(request("")).unwrap().replace(RFC_KEY, "short");
    assert!(status(upgrade(bad_key.as_bytes(), "").unwrap()).starts_with("HTTP/1.1 400"));
    let post = String::from_utf8(request("")).unwrap().replace("GET", "POST");
    assert!(status(upgrade(post.as_bytes(), "").unwrap()).starts_with("HTTP/1.1 405"));
    assert!(upgrade(b"\x16\x03\x01", "").is_err());
}

#[test]
fn rfc6455_frame_examples() {
    // §5.7 server frames: unmasked "Hello"; 256 and 65536 bytes binary headers.
    let mut out = Vec::new();
    write_frame(OP_TEXT, b"Hello", &mut out);
    assert_eq!(out, [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
    let mut c = WsCodec::default();
    let mut out = Vec::new();
    c.seal(&[0u8; 256], &mut out).unwrap();
    assert_eq!(out[..4], [0x82, 0x7e, 0x01, 0x00]);
    assert_eq!(out.len(), 4 + 256);
    let mut out = Vec::new();
    c.seal(&vec![0u8; 65536], &mut out).unwrap();
    assert_eq!(out[..10], [0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0]);
    // Nothing to seal, nothing sent.
    let mut out = Vec::new();
    c.seal(&[], &mut out).unwrap();
    assert!(out.is_empty());
}

#[test]
fn fragmented_message_byte_by_byte() {
    // §5.7 fragmented "Hel" + "lo", masked here with 37fa213d (python: xor).
    let wire = [
        0x01, 0x83, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, // "Hel", FIN=0
        0x80, 0x82, 0x37, 0xfa, 0x21, 0x3d, 0x5b, 0x95, // "lo", continuation, FIN=1
    ];
    let mut c = WsCodec::default();
    let mut out = Vec::new();
    for b in wire {
        assert_eq!(c.open(&[b], &mut out).unwrap(), 1);
    }
    assert_eq!(out, b"Hello");
    // A continuation without a message is an error.
    let mut c = WsCodec::default();
    assert!(c.open(&wire[9..], &mut Vec::new()).is_err());
    // A new message inside a fragmented one is an error.
    let mut c = WsCodec::default();
    let mut bad = wire[..9].to_vec();
    bad.extend_from_slice(&[0x82, 0x80, 1, 2, 3, 4]);
    assert!(c.open(&bad, &mut Vec::new()).is_err());
}

#[test]
fn masked_extended_length_frame() {
    // python: 200 bytes (i*7)%256 masked with 11223344, 16-bit length.
    let payload: Vec<u8> = (0..200u32).map(|i| (i * 7 % 256) as u8).collect();
    let wire = hex::decode("82fe00c81122334411253d510d011975291d75094579512d61554dc19db1a9e5b98d85f9d5e9e19df1c5ddb1ed213955093d15692519710d41756d217d5149c599ada5d9b58981fdd1e5fd91cdc1d9b5e9dd35490539116d21150d015d716925794d453995a9a1ddb1859df1ade1f995c9fdd5a9e5d9314d01352d613d110905596d65197549413d91a5bdd18d8199f5a99df589c5f9d1ade1d5cd411d312965390d05795569611d71455d316da1b9d589bd95e9a599f18dc1f5eda1fdd1c945192d25593509017d51657d114d415935").unwrap();
    for cut in [1, 3, 7, 9, 50, 133] {
        let mut c = WsCodec::default();
        let mut out = Vec::new();
        c.open(&wire[..cut], &mut out).unwrap();
        c.open(&wire[cut..], &mut out).unwrap();
        assert_eq!(out, payload, "cut {cut}");
    }
}

#[test]
fn ping_gets_pong_close_gets_close_then_silence() {
    let mut c = WsCodec::default();
    let mut out = Vec::new();
    // Masked ping "Hello" (the §5.7 masked bytes with opcode 9).
    c.open(
        &[0x89, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58],
        &mut out,
    )
    .unwrap();
    assert!(out.is_empty());
    assert!(c.has_control());
    let mut ctl = Vec::new();
    c.take_control(&mut ctl).unwrap();
    // §5.7 pong "Hello", unmasked from the server.
    assert_eq!(ctl, [0x8a, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
    assert!(!c.has_control());
    // Unsolicited pong: ignored.
    c.open(&[0x8a, 0x80, 1, 2, 3, 4], &mut out).unwrap();
    assert!(!c.has_control());
    // Close 1000 (0x03e8 masked with 37fa213d = 3412).
    c.open(&[0x88, 0x82, 0x37, 0xfa, 0x21, 0x3d, 0x34, 0x12], &mut out)
        .unwrap();
    let mut ctl = Vec::new();
    c.take_control(&mut ctl).unwrap();
    assert_eq!(ctl, [0x88, 0x02, 0x03, 0xe8]);
    // After close, data is ignored.
    c.open(
        &[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58],
        &mut out,
    )
    .unwrap();
    assert!(out.is_empty());
}

#[test]
fn protocol_violations() {
    let bad: [&[u8]; 6] = [
        &[0x82, 0x05, b'H', b'e', b'l', b'l', b'o'], // unmasked client frame
        &[0xc2, 0x80, 0, 0, 0, 0],                   // RSV1 without an extension
        &[0x83, 0x80, 0, 0, 0, 0],                   // reserved opcode
        &[0x09, 0x80, 0, 0, 0, 0],                   // fragmented ping
        &[0x89, 0xfe, 0, 126, 0, 0, 0, 0],           // control frame > 125
        &[0x82, 0xff, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0], // 4 GiB frame
    ];
    for b in bad {
        assert!(WsCodec::default().open(b, &mut Vec::new()).is_err(), "{b:02x?}");
    }
}

#[test]
fn idle_codec_holds_no_buffers() {
    let mut c = WsCodec::default();
    let mut out = Vec::new();
    c.open(&[0x89, 0x80, 1, 2, 3, 4], &mut out).unwrap();
    c.take_control(&mut Vec::new()).unwrap();
    assert_eq!(c.ctrl.len, 0);
    assert_eq!(c.control_len(), 0);
}

/// A masked client ping carrying `payload`.
fn ping(payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0x89, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// A client that pings and never reads gets one pong, for its latest ping (RFC 6455 §5.5.3);
/// what waits for it stays bounded however many pings arrive (today's main queued every pong:
/// ~127 bytes per 131-byte ping, +1.1 GiB in seconds from 8 connections).
#[test]
fn ping_flood_is_answered_by_one_pong_for_the_latest_ping() {
    let mut c = WsCodec::default();
    let mut out = Vec::new();
    let mut wire = Vec::new();
    for i in 0..10_000u32 {
        let mut p = [b'p'; 125];
        p[..4].copy_from_slice(&i.to_be_bytes());
        wire.extend(ping(&p, [1, 2, 3, 4]));
    }
    // In several reads, with the client never taking our answers.
    for part in wire.chunks(4093) {
        assert_eq!(c.open(part, &mut out).unwrap(), part.len());
        assert!(c.control_len() <= MAX_CONTROL_OUT);
        assert!(!c.output_over_budget());
    }
    assert!(out.is_empty());
    let mut ctl = Vec::new();
    c.take_control(&mut ctl).unwrap();
    let mut want = vec![0x8a, 125];
    want.extend_from_slice(&9_999u32.to_be_bytes());
    want.extend_from_slice(&[b'p'; 121]);
    assert_eq!(ctl, want);
    assert!(!c.has_control());
    // A ping then a close: the pong goes first, then the close; later pings are ignored.
    c.open(&ping(b"last", [9, 9, 9, 9]), &mut out).unwrap();
    c.open(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8], &mut out).unwrap();
    c.open(&ping(b"after", [9, 9, 9, 9]), &mut out).unwrap();
    let mut ctl = Vec::new();
    c.take_control(&mut ctl).unwrap();
    assert_eq!(ctl, [&[0x8a, 4][..], b"last", &[0x88, 2, 0x03, 0xe8]].concat());
}

proptest::proptest! {
    #[test]
    fn random_input_never_panics(data in proptest::collection::vec(proptest::arbitrary::any::<u8>(), 0..2048), cut in 0usize..2048) {
        let mut c = WsCodec::default();
        let mut out = Vec::new();
        let cut = cut.min(data.len());
        if c.open(&data[..cut], &mut out).is_ok() {
            let _ = c.open(&data[cut..], &mut out);
        }
        let mut h = WsHandshake::new(&cfg(""));
        let _ = h.feed(&data);
        let mut req = request("");
        req.extend_from_slice(&data);
        let _ = WsHandshake::new(&cfg("")).feed(&req);
    }

    #[test]
    fn any_split_of_masked_frames_decodes(payload in proptest::collection::vec(proptest::arbitrary::any::<u8>(), 0..70000), mask in proptest::arbitrary::any::<[u8; 4]>(), cut in 0usize..80000) {
        // Client frame built from the RFC's layout (independent of our encoder).
        let mut wire = vec![0x82u8];
        let n = payload.len();
        if n < 126 { wire.push(0x80 | n as u8); }
        else if n < 65536 { wire.push(0xfe); wire.extend_from_slice(&(n as u16).to_be_bytes()); }
        else { wire.push(0xff); wire.extend_from_slice(&(n as u64).to_be_bytes()); }
        wire.extend_from_slice(&mask);
        wire.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        let cut = cut.min(wire.len());
        let mut c = WsCodec::default();
        let mut out = Vec::new();
        c.open(&wire[..cut], &mut out).unwrap();
        c.open(&wire[cut..], &mut out).unwrap();
        proptest::prop_assert_eq!(out, payload);
    }
}
