#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Known answers from `testdata/vectors.json` (made by `testdata/gen_vectors.py`, hashlib and
//! `cryptography`, independent of this code), round trips and garbage input.

use std::cell::RefCell;
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

use proptest::prelude::*;
use v2sp_shared::shm::UserRef;

use super::body::*;
use super::client::ClientRequest;
use super::crypto::*;
use super::*;
use crate::{DatagramStreamCodec, StreamDatagram};
use users::UserKeys;

const VECTORS: &str = include_str!("testdata/vectors.json");

fn v(name: &str) -> serde_json::Value {
    let all: serde_json::Value = serde_json::from_str(VECTORS).unwrap();
    all.get(name)
        .cloned()
        .unwrap_or_else(|| panic!("no vector {name}"))
}

fn vh(name: &str) -> Vec<u8> {
    hex::decode(v(name).as_str().unwrap()).unwrap()
}

pub(crate) struct Ctx {
    users: Vec<UserRef>,
    now: u64,
    seen: RefCell<HashSet<Vec<u8>>>,
    gen: Option<u64>,
    peer: Option<IpAddr>,
}

pub(crate) fn user(uuid: &[u8], id: u32) -> UserRef {
    let mut secret = [0u8; 32];
    secret[..16].copy_from_slice(uuid);
    UserRef {
        node: 0,
        slot: id,
        user_id: id,
        gen: 1,
        secret,
        secret_len: 16,
        speed_limit_mbps: 0,
        device_limit: 0,
    }
}

impl Ctx {
    fn new(users: Vec<UserRef>, now: u64) -> Self {
        Ctx {
            users,
            now,
            seen: RefCell::new(HashSet::new()),
            gen: Some(1),
            peer: None,
        }
    }
}

impl AuthContext for Ctx {
    fn lookup(&self, _: &[u8]) -> Option<UserRef> {
        None
    }
    fn for_each_user(&self, f: &mut dyn FnMut(&UserRef) -> bool) {
        for u in &self.users {
            if !f(u) {
                break;
            }
        }
    }
    fn check_replay(&self, nonce: &[u8]) -> bool {
        self.seen.borrow_mut().insert(nonce.to_vec())
    }
    fn now_unix(&self) -> u64 {
        self.now
    }
    fn users_gen(&self) -> Option<u64> {
        self.gen
    }
    fn peer_ip(&self) -> Option<IpAddr> {
        self.peer
    }
}

fn uuid() -> Vec<u8> {
    vh("uuid")
}

fn time() -> u64 {
    v("time").as_u64().unwrap()
}

#[test]
fn kdf_known_answers() {
    assert_eq!(kdf(b"abc", &[]).to_vec(), vh("kdf_root_abc"));
    assert_eq!(
        kdf(b"key", &[b"label1", b"label2"]).to_vec(),
        vh("kdf_two_labels")
    );
    assert_eq!(cmd_key(&uuid()).to_vec(), vh("cmd_key"));
    assert_eq!(
        kdf16(&cmd_key(&uuid()), &[AUTH_ID_KEY]).to_vec(),
        vh("auth_id_key")
    );
}

#[test]
fn auth_id_known_answer() {
    let c = auth_id_cipher(&cmd_key(&uuid()));
    let r: [u8; 4] = vh("rand").try_into().unwrap();
    let id = create_auth_id(&c, time(), r);
    assert_eq!(id.to_vec(), vh("auth_id"));
    assert_eq!(open_auth_id(&c, &id), Some(time()));
    let other = auth_id_cipher(&cmd_key(&[9u8; 16]));
    assert_eq!(open_auth_id(&other, &id), None);
}

fn vector_request() -> ClientRequest {
    let h = vh("header_plain");
    ClientRequest {
        cmd_key: cmd_key(&uuid()),
        time: time(),
        auth_rand: vh("rand").try_into().unwrap(),
        conn_nonce: vh("conn_nonce").try_into().unwrap(),
        iv: h[1..17].try_into().unwrap(),
        key: h[17..33].try_into().unwrap(),
        v: 0x5A,
        options: OPT_CHUNK_STREAM | OPT_CHUNK_MASKING,
        security: SEC_AES128_GCM,
        cmd: CMD_TCP,
        padding: vec![0xAA, 0xBB, 0xCC],
        dest: Destination::Domain("example.com".into(), 443),
    }
}

#[test]
fn client_seals_the_known_request() {
    let r = vector_request();
    assert_eq!(r.header_plain(), vh("header_plain"));
    assert_eq!(r.seal().unwrap(), vh("request_prefix"));
}

#[test]
fn header_parses() {
    let req = parse_header(&vh("header_plain")).unwrap();
    assert_eq!(req.v, 0x5A);
    assert_eq!(req.security, SEC_AES128_GCM);
    assert_eq!(req.dest, Some(Destination::Domain("example.com".into(), 443)));
    let mut bad = vh("header_plain");
    let n = bad.len();
    bad[n - 1] ^= 1;
    assert!(parse_header(&bad).is_err());
}

/// What a successful handshake returned: destination, user, initial upload, reply, codec.
type Forwarded = (
    Destination,
    UserRef,
    Vec<u8>,
    Vec<u8>,
    Option<Box<dyn StreamCodec>>,
);

fn forward(step: Step) -> Forwarded {
    match step {
        Step::Done(Next::Forward {
            dest,
            user,
            initial_upload,
            reply,
            codec,
        }) => (dest, user, initial_upload, reply, codec),
        Step::Done(Next::Reject { error, .. }) => panic!("rejected: {error}"),
        Step::Done(_) => panic!("neither forwarded nor rejected"),
        Step::NeedMore(_) => panic!("needs more"),
    }
}

fn rejected(step: Step) -> WireError {
    match step {
        Step::Done(Next::Reject { error, policy }) => {
            let RejectPolicy::DrainThenClose(n) = policy else {
                panic!("VMess rejects drain a bounded amount, got {policy:?}");
            };
            assert!(n < 54 + 3266 + 64, "drain length {n}");
            error
        }
        _ => panic!("not rejected"),
    }
}

#[test]
fn server_opens_the_known_request_and_answers_the_known_response() {
    let ctx = Ctx::new(vec![user(&[7u8; 16], 1), user(&uuid(), 42)], time() + 5);
    let inbound = VmessInbound::new();
    let mut wire = vh("request_prefix");
    wire.extend_from_slice(&vh("request_body"));
    let (dest, user, up, reply, codec) = forward(inbound.handshake().feed(&wire, &ctx).unwrap());
    assert_eq!(dest, Destination::Domain("example.com".into(), 443));
    assert_eq!(user.user_id, 42);
    assert_eq!(up, b"helloworld!!");
    assert_eq!(reply, vh("response_header"));
    assert!(codec.is_some());
}

#[test]
fn byte_by_byte_feeding_gives_the_same_result() {
    let ctx = Ctx::new(vec![user(&uuid(), 42)], time());
    let inbound = VmessInbound::new();
    let mut hs = inbound.handshake();
    let wire = vh("request_prefix");
    let body = vh("request_body");
    let mut last = None;
    for (i, b) in wire.iter().enumerate() {
        match hs.feed(&[*b], &ctx).unwrap() {
            Step::NeedMore(_) => assert!(i + 1 < wire.len()),
            s => last = Some(s),
        }
    }
    let (_, _, up, _, codec) = forward(last.unwrap());
    assert!(up.is_empty());
    let mut codec = codec.unwrap();
    let mut out = Vec::new();
    let mut used = 0;
    for i in 0..body.len() {
        used += codec.open(&body[used..=i], &mut out).unwrap();
    }
    assert_eq!(out, b"helloworld!!");
}

#[test]
fn request_body_known_answer_and_end_chunk() {
    let h = vh("header_plain");
    let p = BodyParams {
        security: Security::Aead(AeadKind::Aes128Gcm),
        options: OPT_CHUNK_STREAM | OPT_CHUNK_MASKING,
        request_key: h[17..33].try_into().unwrap(),
        request_iv: h[1..17].try_into().unwrap(),
    };
    let mut r = ChunkReader::new(&p, &p.request_key, &p.request_iv).unwrap();
    let mut out = Vec::new();
    let body = vh("request_body");
    assert_eq!(r.open(&body, &mut out).unwrap(), body.len());
    assert_eq!(out, b"helloworld!!");
    assert!(r.finished());
    // Our writer produces the same bytes (no padding, so deterministic).
    let mut w = ChunkWriter::new(&p, &p.request_key, &p.request_iv).unwrap();
    let mut sealed = Vec::new();
    w.seal(b"hello", &mut sealed).unwrap();
    w.seal(b"world!!", &mut sealed).unwrap();
    w.seal(b"", &mut sealed).unwrap();
    assert_eq!(sealed, body);
}

#[test]
fn shake_masks_known_answer() {
    use sha3::digest::{ExtendableOutput, Update, XofReader};
    let h = vh("header_plain");
    let mut s = sha3::Shake128::default();
    s.update(&h[1..17]);
    let mut o = [0u8; 8];
    s.finalize_xof().read(&mut o);
    assert_eq!(o.to_vec(), vh("shake_iv_8"));
}

#[test]
fn chacha_padded_response_chunk_known_answer() {
    let h = vh("header_plain");
    let key: [u8; 16] = h[17..33].try_into().unwrap();
    let iv: [u8; 16] = h[1..17].try_into().unwrap();
    let p = BodyParams {
        security: Security::Aead(AeadKind::ChaCha20Poly1305),
        options: OPT_CHUNK_STREAM | OPT_CHUNK_MASKING | OPT_GLOBAL_PADDING,
        request_key: key,
        request_iv: iv,
    };
    let (rk, ri) = (sha256_16(&key), sha256_16(&iv));
    let mut w = ChunkWriter::new(&p, &rk, &ri).unwrap();
    let mut out = Vec::new();
    w.seal(b"response payload", &mut out).unwrap();
    let pad = v("chacha_response_padding").as_u64().unwrap() as usize;
    let prefix = vh("chacha_response_chunk_prefix");
    assert_eq!(out.len(), prefix.len() + pad);
    assert_eq!(out[..prefix.len()], prefix[..]);
    let mut r = ChunkReader::new(&p, &rk, &ri).unwrap();
    let mut plain = Vec::new();
    assert_eq!(r.open(&out, &mut plain).unwrap(), out.len());
    assert_eq!(plain, b"response payload");
}

#[test]
fn authenticated_length_known_answer() {
    let h = vh("header_plain");
    let p = BodyParams {
        security: Security::Aead(AeadKind::Aes128Gcm),
        options: OPT_CHUNK_STREAM | OPT_CHUNK_MASKING | OPT_AUTHENTICATED_LENGTH,
        request_key: h[17..33].try_into().unwrap(),
        request_iv: h[1..17].try_into().unwrap(),
    };
    let mut r = ChunkReader::new(&p, &p.request_key, &p.request_iv).unwrap();
    let mut out = Vec::new();
    let c = vh("authlen_request_chunk");
    assert_eq!(r.open(&c, &mut out).unwrap(), c.len());
    assert_eq!(out, b"response payload");
    let mut w = ChunkWriter::new(&p, &p.request_key, &p.request_iv).unwrap();
    let mut sealed = Vec::new();
    w.seal(b"response payload", &mut sealed).unwrap();
    assert_eq!(sealed, c);
    // The server's response direction: size sealed under the request key and iv.
    let (rk, ri) = (sha256_16(&p.request_key), sha256_16(&p.request_iv));
    let mut w = ChunkWriter::new(&p, &rk, &ri).unwrap();
    let mut sealed = Vec::new();
    w.seal(b"response payload", &mut sealed).unwrap();
    assert_eq!(sealed, vh("authlen_response_chunk"));
}

fn round_trip(security: u8, options: u8) {
    let id = [0x11u8; 16];
    let ctx = Ctx::new(vec![user(&[1u8; 16], 1), user(&id, 2)], 1_800_000_000);
    let mut req = ClientRequest::tcp(
        cmd_key(&id),
        1_800_000_000 - 100,
        security,
        Destination::Ip("127.0.0.1:80".parse().unwrap()),
    );
    req.options = options;
    req.padding = vec![1, 2, 3, 4, 5];
    let mut wire = req.seal().unwrap();
    let mut cb = req.body().unwrap();
    let big: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
    match cb.as_mut() {
        Some(b) => b.writer.seal(&big, &mut wire).unwrap(),
        None => wire.extend_from_slice(&big),
    }
    let (_, u, up, reply, codec) = forward(VmessInbound::new().handshake().feed(&wire, &ctx).unwrap());
    assert_eq!(u.user_id, 2);
    assert_eq!(up, big, "security {security} options {options:#x}");
    assert_eq!(req.open_response(&reply).unwrap(), Some(reply.len()));
    match (codec, cb) {
        (Some(mut c), Some(mut b)) => {
            let mut down = Vec::new();
            c.seal(&big, &mut down).unwrap();
            let mut plain = Vec::new();
            assert_eq!(b.reader.open(&down, &mut plain).unwrap(), down.len());
            assert_eq!(plain, big);
        }
        (None, None) => {}
        _ => panic!("codec presence differs"),
    }
}

#[test]
fn round_trips_every_security_and_option() {
    for sec in [SEC_AES128_GCM, SEC_CHACHA20_POLY1305, SEC_NONE] {
        for opt in [
            OPT_CHUNK_STREAM,
            OPT_CHUNK_STREAM | OPT_CHUNK_MASKING,
            OPT_CHUNK_STREAM | OPT_CHUNK_MASKING | OPT_GLOBAL_PADDING,
            OPT_CHUNK_STREAM | OPT_CHUNK_MASKING | OPT_AUTHENTICATED_LENGTH,
            OPT_CHUNK_STREAM | OPT_CHUNK_MASKING | OPT_GLOBAL_PADDING | OPT_AUTHENTICATED_LENGTH,
        ] {
            round_trip(sec, opt);
        }
    }
    round_trip(SEC_NONE, 0);
}

#[test]
fn unknown_user_stale_time_and_replay_are_drained() {
    let mut wire = vh("request_prefix");
    wire.extend_from_slice(&vh("request_body"));
    let stranger = Ctx::new(vec![user(&[3u8; 16], 1)], time());
    let e = rejected(VmessInbound::new().handshake().feed(&wire, &stranger).unwrap());
    assert!(matches!(e, WireError::Auth(_)));
    let late = Ctx::new(vec![user(&uuid(), 1)], time() + 121);
    assert_eq!(
        rejected(VmessInbound::new().handshake().feed(&wire, &late).unwrap()),
        WireError::Timestamp
    );
    let early = Ctx::new(vec![user(&uuid(), 1)], time() - 121);
    assert_eq!(
        rejected(VmessInbound::new().handshake().feed(&wire, &early).unwrap()),
        WireError::Timestamp
    );
    let ctx = Ctx::new(vec![user(&uuid(), 1)], time() + 120);
    let inbound = VmessInbound::new();
    forward(inbound.handshake().feed(&wire, &ctx).unwrap());
    assert_eq!(
        rejected(inbound.handshake().feed(&wire, &ctx).unwrap()),
        WireError::Replay
    );
}

#[test]
fn tampered_header_is_rejected() {
    let ctx = Ctx::new(vec![user(&uuid(), 1)], time());
    let wire = vh("request_prefix");
    for i in [16, 20, 34, 40, 45, wire.len() - 1] {
        let mut w = wire.clone();
        w[i] ^= 0x80;
        let ctx = Ctx::new(ctx.users.clone(), time());
        let step = VmessInbound::new().handshake().feed(&w, &ctx).unwrap();
        match step {
            Step::NeedMore(_) => {}
            s => {
                rejected(s);
            }
        }
    }
}

#[test]
fn hinted_user_is_tried_first_and_cache_follows_generations() {
    let mut users: Vec<UserRef> = (0..50u32).map(|i| user(&[i as u8 + 100; 16], i)).collect();
    users.push(user(&uuid(), 77));
    let mut ctx = Ctx::new(users, time());
    ctx.peer = Some("10.0.0.9".parse().unwrap());
    let mut keys = UserKeys::default();
    keys.refresh(&ctx);
    let id: [u8; 16] = vh("auth_id").try_into().unwrap();
    let f = keys.find(&id, ctx.peer).unwrap();
    assert_eq!(keys.get(f.index).unwrap().user.user_id, 77);
    keys.hint(ctx.peer, f.index);
    assert_eq!(keys.find(&id, ctx.peer).unwrap().index, f.index);
    // A new generation without that user: it is no longer found.
    ctx.users.pop();
    ctx.gen = Some(2);
    keys.refresh(&ctx);
    assert!(keys.find(&id, ctx.peer).is_none());
}

#[test]
fn mux_and_udp_without_chunk_stream_are_refused() {
    for (cmd, options) in [(CMD_MUX, 0), (CMD_UDP, 0)] {
        let ctx = Ctx::new(vec![user(&uuid(), 1)], time());
        let mut r = vector_request();
        r.cmd = cmd;
        r.options = options;
        r.security = SEC_NONE;
        let e = rejected(
            VmessInbound::new()
                .handshake()
                .feed(&r.seal().unwrap(), &ctx)
                .unwrap(),
        );
        assert!(
            matches!(e, WireError::Unsupported(_) | WireError::Malformed(_)),
            "{e}"
        );
    }
}

/// What a successful UDP handshake returned: user, reply, initial bytes, codec.
fn udp_over_stream(step: Step) -> (UserRef, Vec<u8>, Vec<u8>, Box<dyn DatagramStreamCodec>) {
    match step {
        Step::Done(Next::UdpOverStream {
            user,
            reply,
            initial,
            codec,
            framing,
        }) => {
            assert!(framing.is_none());
            (user, reply, initial, codec)
        }
        Step::Done(Next::Reject { error, .. }) => panic!("rejected: {error}"),
        Step::Done(_) => panic!("not a datagram stream"),
        Step::NeedMore(_) => panic!("needs more"),
    }
}

fn udp_dest() -> Destination {
    Destination::Ip("127.0.0.1:53".parse().unwrap())
}

fn packet(payload: &[u8]) -> StreamDatagram {
    StreamDatagram::Packet {
        flow: 0,
        dest: udp_dest(),
        payload: payload.to_vec(),
    }
}

/// The known TCP body vector (chunks "hello", "world!!", end) read as UDP: one datagram per
/// chunk, then the end of the flow.
#[test]
fn udp_chunks_of_the_known_body_are_datagrams() {
    let h = vh("header_plain");
    let p = BodyParams {
        security: Security::Aead(AeadKind::Aes128Gcm),
        options: OPT_CHUNK_STREAM | OPT_CHUNK_MASKING,
        request_key: h[17..33].try_into().unwrap(),
        request_iv: h[1..17].try_into().unwrap(),
    };
    let body = vh("request_body");
    let mk = || {
        udp::VmessUdp::new(
            udp_dest(),
            ChunkReader::new(&p, &p.request_key, &p.request_iv).unwrap(),
            ChunkWriter::new(&p, &[0; 16], &[0; 16]).unwrap(),
        )
    };
    let mut c = mk();
    let mut ev = Vec::new();
    let mut reply = Vec::new();
    assert_eq!(c.open(&body, &mut ev, &mut reply).unwrap(), body.len());
    assert_eq!(
        ev,
        vec![
            packet(b"hello"),
            packet(b"world!!"),
            StreamDatagram::End { flow: 0 }
        ]
    );
    assert!(reply.is_empty());
    // Byte by byte, as the engine presents what it keeps.
    let mut c = mk();
    let mut ev = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    for b in &body {
        pending.push(*b);
        let n = c.open(&pending, &mut ev, &mut reply).unwrap();
        pending.drain(..n);
    }
    assert_eq!(
        ev,
        vec![
            packet(b"hello"),
            packet(b"world!!"),
            StreamDatagram::End { flow: 0 }
        ]
    );
    // Our writer seals one chunk per datagram: the same bytes as the TCP writer's chunks.
    let mut w = ChunkWriter::new(&p, &p.request_key, &p.request_iv).unwrap();
    let mut sealed = Vec::new();
    w.seal_chunk(b"hello", &mut sealed).unwrap();
    w.seal_chunk(b"world!!", &mut sealed).unwrap();
    w.seal(b"", &mut sealed).unwrap();
    assert_eq!(sealed, body);
}

fn udp_round_trip(security: u8, options: u8) {
    let id = [0x22u8; 16];
    let ctx = Ctx::new(vec![user(&[1u8; 16], 1), user(&id, 5)], 1_800_000_000);
    let mut req = ClientRequest::tcp(cmd_key(&id), 1_800_000_000 - 10, security, udp_dest());
    req.cmd = CMD_UDP;
    req.options = options;
    let mut wire = req.seal().unwrap();
    let mut cb = req.body().unwrap().unwrap();
    // Datagrams larger than a TCP chunk (8 KiB) stay one chunk each.
    let grams: Vec<Vec<u8>> = [1usize, 100, 1400, 9000, 60_000]
        .iter()
        .map(|&n| (0..n).map(|i| (i * 7 + n) as u8).collect())
        .collect();
    cb.writer.seal_chunk(&grams[0], &mut wire).unwrap();
    let (u, reply, initial, mut codec) =
        udp_over_stream(VmessInbound::new().handshake().feed(&wire, &ctx).unwrap());
    assert_eq!(u.user_id, 5);
    assert_eq!(req.open_response(&reply).unwrap(), Some(reply.len()));
    let mut later = Vec::new();
    for g in &grams[1..] {
        cb.writer.seal_chunk(g, &mut later).unwrap();
    }
    let mut all = initial;
    all.extend_from_slice(&later);
    let mut ev = Vec::new();
    let mut r = Vec::new();
    // In two pieces, cut inside a chunk.
    let cut = all.len() / 2 + 3;
    let n = codec.open(&all[..cut], &mut ev, &mut r).unwrap();
    let mut rest = all[n..cut].to_vec();
    rest.extend_from_slice(&all[cut..]);
    assert_eq!(codec.open(&rest, &mut ev, &mut r).unwrap(), rest.len());
    let want: Vec<StreamDatagram> = grams.iter().map(|g| packet(g)).collect();
    assert_eq!(ev, want, "security {security} options {options:#x}");
    // Replies: one chunk each, opened one at a time by the client.
    let from: SocketAddr = "127.0.0.1:53".parse().unwrap();
    let mut down = Vec::new();
    for g in &grams {
        codec.seal(0, from, g, &mut down).unwrap();
    }
    // Neither an empty nor an oversized datagram can be a chunk; refusing them keeps the
    // stream in step.
    assert!(codec.seal(0, from, &[], &mut down).is_err());
    assert!(codec.seal(0, from, &vec![0u8; 65_500], &mut down).is_err());
    let mut at = 0;
    for g in &grams {
        let mut plain = Vec::new();
        let (n, whole) = cb.reader.open_chunk(&down[at..], &mut plain).unwrap();
        assert!(whole);
        at += n;
        assert_eq!(&plain, g);
    }
    assert_eq!(at, down.len());
    // The client's end chunk ends flow 0; later bytes are ignored.
    let mut end = Vec::new();
    cb.writer.seal(b"", &mut end).unwrap();
    end.extend_from_slice(b"trailing");
    let mut ev = Vec::new();
    assert_eq!(codec.open(&end, &mut ev, &mut r).unwrap(), end.len());
    assert_eq!(ev, vec![StreamDatagram::End { flow: 0 }]);
}

#[test]
fn udp_round_trips_every_security_and_option() {
    for sec in [SEC_AES128_GCM, SEC_CHACHA20_POLY1305, SEC_NONE] {
        for opt in [
            OPT_CHUNK_STREAM,
            OPT_CHUNK_STREAM | OPT_CHUNK_MASKING,
            OPT_CHUNK_STREAM | OPT_CHUNK_MASKING | OPT_GLOBAL_PADDING,
            OPT_CHUNK_STREAM | OPT_CHUNK_MASKING | OPT_AUTHENTICATED_LENGTH,
            OPT_CHUNK_STREAM | OPT_CHUNK_MASKING | OPT_GLOBAL_PADDING | OPT_AUTHENTICATED_LENGTH,
        ] {
            udp_round_trip(sec, opt);
        }
    }
}

/// Command 3 (Mux.Cool, as v2ray 4.34's VMess outbound with `mux` sends it): no address in
/// the header; the body's chunks carry Mux.Cool frames (bytes per v2ray-core's
/// common/mux/frame.go, built by a separate script): New TCP sub-stream 7 to 127.0.0.1:80
/// with "hi", then Keep "abc". Replies are Keep/End frames inside response chunks.
#[cfg(feature = "vless")]
#[test]
fn mux_command_carries_tcp_substreams() {
    for sec in [SEC_AES128_GCM, SEC_CHACHA20_POLY1305, SEC_NONE] {
        let id = [0x33u8; 16];
        let ctx = Ctx::new(vec![user(&id, 4)], 1_800_000_000);
        let mut req = ClientRequest::tcp(cmd_key(&id), 1_800_000_000 - 5, sec, udp_dest());
        req.cmd = CMD_MUX;
        req.options = OPT_CHUNK_STREAM | OPT_CHUNK_MASKING;
        let mut wire = req.seal().unwrap();
        let mut cb = req.body().unwrap().unwrap();
        let frames =
            hex::decode("000c00070101010050017f000001000268690004000702010003616263000400070300").unwrap();
        cb.writer.seal(&frames[..20], &mut wire).unwrap();
        let (u, reply, initial, mut codec) =
            udp_over_stream(VmessInbound::new().handshake().feed(&wire, &ctx).unwrap());
        assert_eq!(u.user_id, 4);
        assert_eq!(req.open_response(&reply).unwrap(), Some(reply.len()));
        let mut all = initial;
        cb.writer.seal(&frames[20..], &mut all).unwrap();
        let (mut ev, mut r) = (Vec::new(), Vec::new());
        assert_eq!(codec.open(&all, &mut ev, &mut r).unwrap(), all.len());
        assert_eq!(
            ev,
            vec![
                StreamDatagram::StreamOpen {
                    flow: 7,
                    dest: Destination::Ip("127.0.0.1:80".parse().unwrap()),
                    data: b"hi".to_vec()
                },
                StreamDatagram::StreamData {
                    flow: 7,
                    data: b"abc".to_vec()
                },
                StreamDatagram::End { flow: 7 },
            ],
            "security {sec}"
        );
        assert!(r.is_empty());
        let mut down = Vec::new();
        codec.seal_stream(7, b"xyz", &mut down).unwrap();
        codec.seal_end(7, false, &mut down).unwrap();
        let mut plain = Vec::new();
        assert_eq!(cb.reader.open(&down, &mut plain).unwrap(), down.len());
        assert_eq!(plain, hex::decode("000400070201000378797a000400070300").unwrap());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600), split in 0usize..600) {
        let ctx = Ctx::new(vec![user(&uuid(), 1)], time());
        let mut hs = VmessInbound::new().handshake();
        let (a, b) = data.split_at(split.min(data.len()));
        let _ = hs.feed(a, &ctx);
        let _ = hs.feed(b, &ctx);
    }

    #[test]
    fn mutated_requests_never_panic(pos in 0usize..400, bit in 0u8..8, body_cut in 0usize..80) {
        let ctx = Ctx::new(vec![user(&uuid(), 1)], time());
        let mut wire = vh("request_prefix");
        wire.extend_from_slice(&vh("request_body"));
        let p = pos % wire.len();
        wire[p] ^= 1 << bit;
        wire.truncate(wire.len() - body_cut.min(wire.len()));
        if let Ok(Step::Done(Next::Forward { codec: Some(mut c), .. })) =
            VmessInbound::new().handshake().feed(&wire, &ctx)
        {
            let mut out = Vec::new();
            let _ = c.open(&wire, &mut out);
        }
    }

    #[test]
    fn random_chunks_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2000), opt in 0u8..32, sec in 0u8..3) {
        let security = match sec {
            0 => Security::Aead(AeadKind::Aes128Gcm),
            1 => Security::Aead(AeadKind::ChaCha20Poly1305),
            _ => Security::None,
        };
        let p = BodyParams { security, options: opt | OPT_CHUNK_STREAM, request_key: [1; 16], request_iv: [2; 16] };
        let mut r = ChunkReader::new(&p, &[1; 16], &[2; 16]).unwrap();
        let mut out = Vec::new();
        let _ = r.open(&data, &mut out);
    }

    /// Random Mux.Cool bytes inside valid chunks (every security): decoded or refused, never a
    /// panic; replies seal.
    #[cfg(feature = "vless")]
    #[test]
    fn random_mux_frames_in_chunks_never_panic(data in proptest::collection::vec(any::<u8>(), 0..3000), sec in 0u8..3, split in 0usize..3000) {
        let security = match sec {
            0 => Security::Aead(AeadKind::Aes128Gcm),
            1 => Security::Aead(AeadKind::ChaCha20Poly1305),
            _ => Security::None,
        };
        let p = BodyParams { security, options: OPT_CHUNK_STREAM | OPT_CHUNK_MASKING, request_key: [1; 16], request_iv: [2; 16] };
        let mut client = ChunkWriter::new(&p, &[1; 16], &[2; 16]).unwrap();
        let mut wire = Vec::new();
        client.seal(&data, &mut wire).unwrap();
        let mut c = mux::VmessMux::new(
            ChunkReader::new(&p, &[1; 16], &[2; 16]).unwrap(),
            ChunkWriter::new(&p, &[3; 16], &[4; 16]).unwrap(),
        );
        let (a, b) = wire.split_at(split.min(wire.len()));
        let (mut ev, mut r) = (Vec::new(), Vec::new());
        if let Ok(n) = c.open(a, &mut ev, &mut r) {
            prop_assert!(n <= a.len());
            let mut rest = a[n..].to_vec();
            rest.extend_from_slice(b);
            if let Ok(m) = c.open(&rest, &mut ev, &mut r) {
                prop_assert!(m <= rest.len());
            }
        }
        let mut out = Vec::new();
        prop_assert!(c.seal_stream(1, &data, &mut out).is_ok());
        prop_assert!(c.seal_end(1, true, &mut out).is_ok());
    }

    #[test]
    fn random_udp_stream_never_panics(data in proptest::collection::vec(any::<u8>(), 0..3000), opt in 0u8..32, sec in 0u8..3, split in 0usize..3000) {
        let security = match sec {
            0 => Security::Aead(AeadKind::Aes128Gcm),
            1 => Security::Aead(AeadKind::ChaCha20Poly1305),
            _ => Security::None,
        };
        let p = BodyParams { security, options: opt | OPT_CHUNK_STREAM, request_key: [1; 16], request_iv: [2; 16] };
        let mut c = udp::VmessUdp::new(
            udp_dest(),
            ChunkReader::new(&p, &[1; 16], &[2; 16]).unwrap(),
            ChunkWriter::new(&p, &[3; 16], &[4; 16]).unwrap(),
        );
        let (a, b) = data.split_at(split.min(data.len()));
        let mut ev = Vec::new();
        let mut r = Vec::new();
        if let Ok(n) = c.open(a, &mut ev, &mut r) {
            prop_assert!(n <= a.len());
            let mut rest = a[n..].to_vec();
            rest.extend_from_slice(b);
            if let Ok(m) = c.open(&rest, &mut ev, &mut r) {
                prop_assert!(m <= rest.len());
            }
        }
        let mut out = Vec::new();
        let _ = c.seal(0, "127.0.0.1:1".parse().unwrap(), &data, &mut out);
    }

    #[test]
    fn mutated_udp_requests_never_panic(pos in 0usize..400, bit in 0u8..8) {
        let ctx = Ctx::new(vec![user(&uuid(), 1)], time());
        let mut r = vector_request();
        r.cmd = CMD_UDP;
        let mut wire = r.seal().unwrap();
        wire.extend_from_slice(&vh("request_body"));
        let p = pos % wire.len();
        wire[p] ^= 1 << bit;
        if let Ok(Step::Done(Next::UdpOverStream { mut codec, initial, .. })) =
            VmessInbound::new().handshake().feed(&wire, &ctx)
        {
            let mut ev = Vec::new();
            let mut reply = Vec::new();
            let _ = codec.open(&initial, &mut ev, &mut reply);
        }
    }
}

/// Xray's answer to a bad auth id: read 54 + base + r more bytes (base < 3266 fixed per
/// server, r < 64 per connection), counting what was already read past the auth id, then close.
#[test]
fn bad_auth_id_drains_a_bounded_amount_like_xray() {
    let stranger = Ctx::new(vec![user(&[3u8; 16], 1)], time());
    let drain = |extra: usize| {
        let wire: Vec<u8> = (0..16 + extra).map(|i| (i * 7 + 1) as u8).collect();
        match VmessInbound::new().handshake().feed(&wire, &stranger).unwrap() {
            Step::Done(Next::Reject {
                policy: RejectPolicy::DrainThenClose(n),
                ..
            }) => n,
            _ => panic!("not a bounded drain"),
        }
    };
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..64 {
        let n = drain(0);
        assert!((54..54 + 3266 + 64).contains(&n), "{n}");
        seen.insert(n);
    }
    // One base per process, a small per-connection spread on top of it.
    let (lo, hi) = (*seen.first().unwrap(), *seen.last().unwrap());
    assert!(hi - lo < 64 && seen.len() > 1, "{seen:?}");
    // Bytes already read count against it: 1000 extra → 1000 fewer (none left when the
    // process's base is small); 5000 → close now.
    let after = drain(1000);
    assert!(after <= (hi + 63).saturating_sub(1000), "{after} vs {lo}..={hi}");
    assert!(after >= lo.saturating_sub(1000 + 63), "{after} vs {lo}..={hi}");
    assert_eq!(drain(5000), 0);
}

/// An idle VMess connection keeps one `ServerBody` (boxed as the relay's codec): two keys, two
/// mask streams. It was 1,032 bytes with sha3's reader; keep it in mimalloc's 768-byte class.
#[test]
fn server_body_stays_small() {
    assert!(size_of::<ServerBody>() <= 768, "{}", size_of::<ServerBody>());
}
