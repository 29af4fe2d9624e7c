#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::type_complexity
)]
//! The chain: transport upgrade, framing, then an unmodified protocol handshake (VLESS).

use base64::Engine as _;
use v2sp_shared::dpconfig::{HttpPathSettings, Transport};

use super::*;
use crate::fixture::OneKey as Ctx;
use crate::vless::VlessHandshake;
use crate::Destination;

/// uuid a7b4b8ab-42d7-4c48-a0c5-91fd4bd53c37, TCP to example.com:443, then "GET" (the VLESS
/// module's known-answer request).
const VLESS_REQ: &str = "00a7b4b8ab42d74c48a0c591fd4bd53c37000101bb020b6578616d706c652e636f6d474554";
const UUID: [u8; 16] = [
    0xa7, 0xb4, 0xb8, 0xab, 0x42, 0xd7, 0x4c, 0x48, 0xa0, 0xc5, 0x91, 0xfd, 0x4b, 0xd5, 0x3c, 0x37,
];

fn ws() -> Transport {
    Transport::Ws(HttpPathSettings {
        path: "/ray".into(),
        host: String::new(),
    })
}

fn upgrade_request(extra: &str) -> Vec<u8> {
    format!(
        "GET /ray HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
    .into_bytes()
}

/// A masked client frame built by hand from RFC 6455's layout (payload < 126 bytes).
fn client_frame(payload: &[u8]) -> Vec<u8> {
    let mask = [0xa1, 0xb2, 0xc3, 0xd4];
    let mut f = vec![0x82, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

fn forward(step: Step) -> (Destination, Vec<u8>, Vec<u8>, Option<Box<dyn StreamCodec>>) {
    match step {
        Step::Done(Next::Forward {
            dest,
            initial_upload,
            reply,
            codec,
            ..
        }) => (dest, initial_upload, reply, codec),
        Step::Done(Next::Reject { error, .. }) => panic!("rejected: {error}"),
        Step::Done(_) => panic!("neither forwarded nor rejected"),
        Step::NeedMore(_) => panic!("need more"),
    }
}

#[test]
fn ws_then_vless_in_frames_reply_framed_codec_layered() {
    let ctx = Ctx::with(&UUID, 9);
    let mut chain = Chain::new(&ws(), Box::new(VlessHandshake::default()));
    let mut send = Vec::new();
    // The request alone: the 101 goes out, the protocol still waits.
    let step = chain.feed(&upgrade_request(""), &ctx, &mut send).unwrap();
    assert!(matches!(step, Step::NeedMore(_)));
    assert!(send.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
    // The VLESS request split over two frames, the second split over two reads.
    let req = hex::decode(VLESS_REQ).unwrap();
    let mut wire = client_frame(&req[..10]);
    wire.extend_from_slice(&client_frame(&req[10..]));
    let (a, b) = wire.split_at(20);
    let mut send = Vec::new();
    assert!(matches!(
        chain.feed(a, &ctx, &mut send).unwrap(),
        Step::NeedMore(_)
    ));
    let (dest, up, reply, codec) = forward(chain.feed(b, &ctx, &mut send).unwrap());
    assert!(send.is_empty());
    assert_eq!(dest, Destination::Domain("example.com".into(), 443));
    assert_eq!(up, b"GET");
    // VLESS's response header [0, 0] in one server binary frame.
    assert_eq!(reply, [0x82, 0x02, 0x00, 0x00]);
    let mut codec = codec.expect("ws framing for the relay");
    let mut out = Vec::new();
    codec.open(&client_frame(b"more"), &mut out).unwrap();
    assert_eq!(out, b"more");
    let mut sealed = Vec::new();
    codec.seal(b"back", &mut sealed).unwrap();
    assert_eq!(sealed, [0x82, 0x04, b'b', b'a', b'c', b'k']);
}

#[test]
fn ws_early_data_reaches_the_protocol() {
    let ctx = Ctx::with(&UUID, 9);
    let req = hex::decode(VLESS_REQ).unwrap();
    let ed = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&req);
    let mut chain = Chain::new(&ws(), Box::new(VlessHandshake::default()));
    let mut send = Vec::new();
    let step = chain
        .feed(
            &upgrade_request(&format!("Sec-WebSocket-Protocol: {ed}\r\n")),
            &ctx,
            &mut send,
        )
        .unwrap();
    let (_, up, reply, _) = forward(step);
    assert_eq!(up, b"GET");
    assert_eq!(reply, [0x82, 0x02, 0x00, 0x00]);
    assert!(String::from_utf8(send)
        .unwrap()
        .contains(&format!("Sec-WebSocket-Protocol: {ed}\r\n")));
}

#[test]
fn httpupgrade_passes_raw_bytes_and_keeps_splice() {
    let ctx = Ctx::with(&UUID, 9);
    let t = Transport::HttpUpgrade(HttpPathSettings {
        path: "/up".into(),
        host: String::new(),
    });
    let mut chain = Chain::new(&t, Box::new(VlessHandshake::default()));
    let mut wire =
        b"GET /up HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n".to_vec();
    wire.extend_from_slice(&hex::decode(VLESS_REQ).unwrap());
    let mut send = Vec::new();
    let (_, up, reply, codec) = forward(chain.feed(&wire, &ctx, &mut send).unwrap());
    assert_eq!(send, httpupgrade::REPLY);
    assert_eq!(up, b"GET");
    assert_eq!(reply, [0, 0]);
    assert!(codec.is_none(), "raw stream: splice-eligible");
}

#[test]
fn tcp_is_the_protocol_alone_and_refusals_close() {
    let ctx = Ctx::with(&UUID, 9);
    let mut chain = Chain::new(&Transport::Tcp, Box::new(VlessHandshake::default()));
    let mut send = Vec::new();
    let (_, up, reply, codec) = forward(
        chain
            .feed(&hex::decode(VLESS_REQ).unwrap(), &ctx, &mut send)
            .unwrap(),
    );
    assert!(send.is_empty());
    assert_eq!((up.as_slice(), reply.as_slice()), (&b"GET"[..], &[0u8, 0][..]));
    assert!(codec.is_none());
    // Wrong path: 404 to send, then close.
    let mut chain = Chain::new(&ws(), Box::new(VlessHandshake::default()));
    let bad = String::from_utf8(upgrade_request(""))
        .unwrap()
        .replace("/ray", "/nope");
    let step = chain.feed(bad.as_bytes(), &ctx, &mut send).unwrap();
    assert!(matches!(
        step,
        Step::Done(Next::Reject {
            policy: RejectPolicy::Close,
            ..
        })
    ));
    assert!(send.starts_with(b"HTTP/1.1 404 Not Found\r\n"));
}

#[test]
fn layered_forwards_pongs() {
    let mut l = Layered::new(Box::new(ws::WsCodec::default()), None);
    let mut out = Vec::new();
    // Masked ping "Hello" (RFC 6455 §5.7 masked bytes, opcode 9).
    l.open(
        &[0x89, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58],
        &mut out,
    )
    .unwrap();
    assert!(out.is_empty() && l.has_control());
    let mut ctl = Vec::new();
    l.take_control(&mut ctl).unwrap();
    assert_eq!(ctl, [0x8a, 0x05, b'H', b'e', b'l', b'l', b'o']);
}

/// Before authenticating, a client that only sends control frames (pings here) is cut off
/// after [`MAX_IDLE_FRAMING`] bytes instead of having each parsed until the handshake
/// deadline; a few pings before a real request are fine.
#[test]
fn control_frames_before_the_handshake_are_bounded() {
    let ctx = Ctx::with(&UUID, 9);
    let ping = {
        let mut f = client_frame(&[b'p'; 125]);
        f[0] = 0x89;
        f
    };
    let mut chain = Chain::new(&ws(), Box::new(VlessHandshake::default()));
    let mut send = Vec::new();
    chain.feed(&upgrade_request(""), &ctx, &mut send).unwrap();
    let mut r = Ok(Step::NeedMore(0));
    let mut fed = 0;
    while r.is_ok() && fed <= 2 * MAX_IDLE_FRAMING {
        r = chain.feed(&ping.repeat(10), &ctx, &mut send);
        fed += 10 * ping.len();
    }
    assert!(r.is_err(), "{fed} bytes of pings accepted");
    assert!(fed <= MAX_IDLE_FRAMING + 10 * ping.len());
    // Three pings, then the request: served.
    let mut chain = Chain::new(&ws(), Box::new(VlessHandshake::default()));
    let mut wire = upgrade_request("");
    wire.extend(ping.repeat(3));
    assert!(matches!(
        chain.feed(&wire, &ctx, &mut send).unwrap(),
        Step::NeedMore(_)
    ));
    let req = hex::decode(VLESS_REQ).unwrap();
    let (dest, ..) = forward(chain.feed(&client_frame(&req), &ctx, &mut send).unwrap());
    assert_eq!(dest, Destination::Domain("example.com".into(), 443));
}
