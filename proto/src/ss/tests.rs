//! Socket-free tests of the Shadowsocks codecs: known answers (AEAD-2017 vectors computed
//! independently with Python `cryptography` + `hmac`), round trips against the client-side
//! mirrors, rejection paths, and property tests on garbage input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use v2sp_shared::cred::secret_for;

use super::aead::{Aead2017Client, Aead2017Udp};
use super::cipher::AeadKind;
use super::ss2022::{client_open_reply, client_packet, PacketWindow, Ss2022Client};
use super::*;
use crate::fixture::StaticAuth;
use crate::{Destination, Next, PacketCodec, RejectPolicy, Step, StreamHandshake, WireError};

pub(super) const UUIDS: [&str; 5] = [
    "0d7a1a49-0d1c-4b8a-9d8e-5e3f2a1b0c9d",
    "6b0b1c2d-3e4f-4a5b-8c7d-9e0f1a2b3c4d",
    "a7b4b8ab-42d7-4c48-a0c5-91fd4bd53c37",
    "f0e1d2c3-b4a5-4968-8776-655443322110",
    "12345678-9abc-4def-8123-456789abcdef",
];
pub(super) const NOW: u64 = 1_760_000_000;

/// The node's users for `method` (ids 100, 101, …) at the fixed clock [`NOW`].
pub(super) type TestCtx = StaticAuth;

pub(super) fn test_ctx(method: Method, uuids: &[&str]) -> TestCtx {
    StaticAuth::new(method.cred_kind(), uuids, NOW)
}

const ALL: [Method; 6] = [
    Method::Aes128Gcm,
    Method::Aes256Gcm,
    Method::ChaCha20Poly1305,
    Method::Blake3Aes128Gcm,
    Method::Blake3Aes256Gcm,
    Method::Blake3ChaCha20Poly1305,
];

fn server_psk(m: Method) -> Vec<u8> {
    (0..m.aead().key_len() as u8)
        .map(|i| i.wrapping_mul(7).wrapping_add(1))
        .collect()
}

fn inbound(m: Method) -> SsInbound {
    SsInbound::new(m, Some(&server_psk(m))).unwrap()
}

fn user_secret(m: Method, i: usize) -> Vec<u8> {
    secret_for(m.cred_kind(), UUIDS[i]).unwrap().as_slice().to_vec()
}

/// A client for `m` as user `i` (with the server PSK as iPSK where EIH applies). The
/// AEAD-2017 variant holds its first chunk (address + initial payload) until the first seal.
enum Client {
    Old(Aead2017Client, Option<Vec<u8>>),
    New(Ss2022Client),
}

impl Client {
    fn new(m: Method, i: usize, dest: &Destination, initial: &[u8], now: u64) -> Self {
        let key = user_secret(m, i);
        if m.is_2022() {
            let psk = server_psk(m);
            let ipsk = (m.aead() != AeadKind::ChaCha20Poly1305).then_some(&psk[..]);
            let pad = if initial.is_empty() { 17 } else { 0 };
            Client::New(Ss2022Client::new(m.aead(), ipsk, &key, dest, initial, pad, now).unwrap())
        } else {
            let mut c = Aead2017Client::new(m.aead(), &key).unwrap();
            let mut first = Vec::new();
            address::write(dest, &mut first).unwrap();
            first.extend_from_slice(initial);
            let mut head = Vec::new();
            c.seal(&first, &mut head).unwrap();
            Client::Old(c, Some(head))
        }
    }

    fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) {
        match self {
            Client::Old(c, head) => {
                if let Some(h) = head.take() {
                    out.extend_from_slice(&h);
                }
                c.seal(plain, out).unwrap();
            }
            Client::New(c) => c.seal(plain, out).unwrap(),
        }
    }

    fn open(&mut self, wire: &[u8], out: &mut Vec<u8>) {
        match self {
            Client::Old(c, _) => c.open(wire, out).unwrap(),
            Client::New(c) => c.open(wire, out).unwrap(),
        }
    }
}

fn feed_all(hs: &mut dyn StreamHandshake, wire: &[u8], step: usize, ctx: &TestCtx) -> Step {
    feed_all_rest(hs, wire, step, ctx).0
}

/// Feed `wire` in pieces of `step` until the handshake finishes; also returns the bytes not
/// yet fed (they belong to the codec).
fn feed_all_rest<'a>(
    hs: &mut dyn StreamHandshake,
    wire: &'a [u8],
    step: usize,
    ctx: &TestCtx,
) -> (Step, &'a [u8]) {
    let mut last = Step::NeedMore(0);
    let mut at = 0;
    for piece in wire.chunks(step.max(1)) {
        at += piece.len();
        last = hs.feed(piece, ctx).unwrap();
        if let Step::Done(_) = last {
            return (last, &wire[at..]);
        }
    }
    (last, &[])
}

fn expect_reject(s: Step) -> WireError {
    match s {
        Step::Done(Next::Reject { error, policy }) => {
            assert_eq!(policy, RejectPolicy::DrainUntilTimeout);
            error
        }
        Step::Done(_) => panic!("expected a reject, got another next step"),
        Step::NeedMore(_) => panic!("expected a reject, got need-more"),
    }
}

fn domain() -> Destination {
    Destination::Domain("example.com".into(), 443)
}

#[test]
fn aead2017_known_answer_requests() {
    // Computed with Python: EVP_BytesToKey(uuid), HKDF-SHA1(salt = 0..n, "ss-subkey"),
    // nonce 0 for the length chunk and 1 for the payload chunk.
    let vectors = [
        (Method::Aes128Gcm, "000102030405060708090a0b0c0d0e0f82bedb566d48bd523d925e9b40e16a794af7e328974cf7387b375f42ba62061882ea84f17b3746c66c6ad052f875f86f2ed49a38550b"),
        (Method::Aes256Gcm, "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f47fed60b93c6440105f55eb55601ec3583a7694ee2cc80168db25df9bee609e96b7c75f39135070341052b7b82c6dcb33d7deafe044c"),
        (Method::ChaCha20Poly1305, "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1fb9084b90309d84abc9b69c56f3255031a7bdada34f02a5324c862b9b6183c9500790b47c88e1fd9de638e237c94070bc35315417a711"),
    ];
    for (m, hexwire) in vectors {
        let wire = hex::decode(hexwire).unwrap();
        let ctx = test_ctx(m, &UUIDS);
        let mut hs = inbound(m).handshake();
        match feed_all(hs.as_mut(), &wire, wire.len(), &ctx) {
            Step::Done(Next::Forward {
                dest,
                user,
                initial_upload,
                ..
            }) => {
                assert_eq!(dest, domain());
                assert_eq!(user.user_id, 102, "{m:?}");
                assert_eq!(initial_upload, b"GET /");
            }
            _ => panic!("{m:?}: vector not accepted"),
        }
    }
}

#[test]
fn aead2017_known_answer_datagrams() {
    let vectors = [
        (Method::Aes128Gcm, "000102030405060708090a0b0c0d0e0f83d55870703425353ecd27427cfb742ca39a75d4f634a1f7bd4d91"),
        (Method::Aes256Gcm, "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f46957f1c0112089763e0532860380b288a668674b6b97f762b14a8"),
        (Method::ChaCha20Poly1305, "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1fb863f98b0982da2fb84eb3625d9bf7e360c08d2df7cf8c4f902606"),
    ];
    for (m, h) in vectors {
        let mut pkt = hex::decode(h).unwrap();
        let ctx = test_ctx(m, &UUIDS);
        let codec = Aead2017Udp::new(m.aead());
        let p = PacketCodec::open_packet(&codec, &mut pkt, None, &ctx).unwrap();
        assert_eq!(p.user.user_id, 102);
        assert_eq!(p.dest, Destination::Ip("127.0.0.1:53".parse().unwrap()));
        assert_eq!(&pkt[p.payload], b"dns?");
    }
}

/// Chunks that arrive in the same read as the request header are decoded by the handshake
/// itself: the relay opens the codec only when the client sends more, and a client waiting for
/// the answer to those bytes would stall until the idle timeout (issue 17: SS-2022 bursts).
#[test]
fn whole_chunks_after_the_header_are_handed_over_at_once() {
    for m in ALL {
        for initial in [&b""[..], b"hi"] {
            let ctx = test_ctx(m, &UUIDS);
            let mut client = Client::new(m, 1, &domain(), initial, NOW);
            let mut wire = Vec::new();
            client.seal(b"", &mut wire);
            client.seal(b"x", &mut wire);
            let mut hs = inbound(m).handshake();
            let Step::Done(Next::Forward { initial_upload, .. }) = hs.feed(&wire, &ctx).unwrap() else {
                panic!("{m:?}: not forwarded");
            };
            let mut want = initial.to_vec();
            want.push(b'x');
            assert_eq!(initial_upload, want, "{m:?} initial {initial:?}");
        }
    }
}

#[test]
fn every_method_round_trips_for_every_feed_granularity() {
    for m in ALL {
        for step in [1usize, 7, 64, 1 << 20] {
            for initial in [&b""[..], b"hello world"] {
                let ctx = test_ctx(m, &UUIDS);
                let mut client = Client::new(m, 3, &domain(), initial, NOW);
                let mut wire = Vec::new();
                client.seal(b"", &mut wire);
                // A second chunk in the same read, and half of a third.
                client.seal(b"more data", &mut wire);
                let mut tail = Vec::new();
                client.seal(&vec![0x5a; 40_000], &mut tail);
                let split = tail.len() / 2;
                wire.extend_from_slice(&tail[..split]);
                let mut hs = inbound(m).handshake();
                let (
                    Step::Done(Next::Forward {
                        dest,
                        user,
                        initial_upload,
                        reply,
                        codec,
                    }),
                    rest,
                ) = feed_all_rest(hs.as_mut(), &wire, step, &ctx)
                else {
                    panic!("{m:?} step {step}: not forwarded");
                };
                assert_eq!(dest, domain());
                assert_eq!(user.user_id, 103);
                assert!(reply.is_empty());
                let mut codec = codec.unwrap();
                let mut up = initial_upload;
                // The handshake may finish before all fed bytes were needed (AEAD-2017 stops after
                // the address); whatever it held went into initial_upload or the codec.
                let mut pending = rest.to_vec();
                pending.extend_from_slice(&tail[split..]);
                let n = codec.open(&pending, &mut up).unwrap();
                assert_eq!(n, pending.len());
                let mut expect = initial.to_vec();
                expect.extend_from_slice(b"more data");
                expect.extend_from_slice(&vec![0x5a; 40_000]);
                assert_eq!(up.len(), expect.len(), "{m:?} step {step}");
                assert_eq!(up, expect);
                // Server → client, several seals, some above one chunk.
                let mut down = Vec::new();
                for size in [1usize, 100_000, 3] {
                    codec.seal(&vec![size as u8; size], &mut down).unwrap();
                }
                // Then in place, as the relay does once the first chunk went out: plaintext
                // read into the layout's slots, sealed where it lies.
                let l = codec.seal_layout().expect("in-place layout after the first seal");
                let mut want = 100_004;
                for n in [1usize, l.max - 1, l.max, l.max + 1, 3 * l.max + 5] {
                    let mut buf = vec![0u8; 256 * 1024];
                    let mut put = 0;
                    for (off, len) in l.slots(buf.len(), n) {
                        buf[off..off + len].fill(0xa5);
                        put += len;
                    }
                    if put < n {
                        continue; // more than one buffer (SS-2022's 64 KiB chunks)
                    }
                    let end = codec.seal_in_place(&mut buf, n, l).unwrap();
                    down.extend_from_slice(&buf[..end]);
                    want += n;
                }
                let mut got = Vec::new();
                for piece in down.chunks(999) {
                    client.open(piece, &mut got);
                }
                assert_eq!(got.len(), want, "{m:?}");
                assert!(got[100_004..].iter().all(|&b| b == 0xa5));
                if let Client::New(c) = &client {
                    let (ts, salt_ok) = c.response_checked.unwrap();
                    assert!(salt_ok && ts.abs_diff(NOW) <= 1);
                }
            }
        }
    }
}

#[test]
fn wrong_key_is_drained_not_answered() {
    for m in ALL {
        let ctx = test_ctx(m, &UUIDS[..2]);
        // User 3 is not on this node.
        let mut client = Client::new(m, 3, &domain(), b"x", NOW);
        let mut wire = Vec::new();
        client.seal(b"", &mut wire);
        let mut hs = inbound(m).handshake();
        let e = expect_reject(feed_all(hs.as_mut(), &wire, wire.len(), &ctx));
        assert!(matches!(e, WireError::Auth(_)), "{m:?}: {e:?}");
        // And it stays rejected.
        expect_reject(hs.feed(b"more", &ctx).unwrap());
    }
}

#[test]
fn replayed_handshake_is_rejected() {
    for m in ALL {
        let ctx = test_ctx(m, &UUIDS);
        let mut client = Client::new(m, 0, &domain(), b"x", NOW);
        let mut wire = Vec::new();
        client.seal(b"", &mut wire);
        let mut hs = inbound(m).handshake();
        assert!(matches!(
            feed_all(hs.as_mut(), &wire, wire.len(), &ctx),
            Step::Done(Next::Forward { .. })
        ));
        let mut hs = inbound(m).handshake();
        assert_eq!(
            expect_reject(feed_all(hs.as_mut(), &wire, wire.len(), &ctx)),
            WireError::Replay,
            "{m:?}"
        );
    }
}

#[test]
fn ss2022_timestamp_window_is_30s() {
    for m in [Method::Blake3Aes128Gcm, Method::Blake3ChaCha20Poly1305] {
        for (skew, ok) in [(0i64, true), (30, true), (-30, true), (31, false), (-31, false)] {
            let ctx = test_ctx(m, &UUIDS);
            let mut client = Client::new(m, 1, &domain(), b"x", (NOW as i64 + skew) as u64);
            let mut wire = Vec::new();
            client.seal(b"", &mut wire);
            let s = feed_all(inbound(m).handshake().as_mut(), &wire, wire.len(), &ctx);
            if ok {
                assert!(matches!(s, Step::Done(Next::Forward { .. })), "{m:?} skew {skew}");
            } else {
                assert_eq!(expect_reject(s), WireError::Timestamp);
            }
        }
    }
}

#[test]
fn ss2022_eih_is_required_with_a_server_psk() {
    let m = Method::Blake3Aes256Gcm;
    let ctx = test_ctx(m, &UUIDS);
    // Client that skips the identity header (as if talking to a single-user server).
    let key = user_secret(m, 0);
    let mut c = Ss2022Client::new(m.aead(), None, &key, &domain(), b"x", 0, NOW).unwrap();
    let mut wire = Vec::new();
    c.seal(b"", &mut wire).unwrap();
    let s = feed_all(inbound(m).handshake().as_mut(), &wire, wire.len(), &ctx);
    assert!(matches!(expect_reject(s), WireError::Auth(_)));
    // Without a server PSK the same client is found by trial decryption.
    let hs_no_psk = SsInbound::new(m, None).unwrap();
    let s = feed_all(
        hs_no_psk.handshake().as_mut(),
        &wire,
        wire.len(),
        &test_ctx(m, &UUIDS),
    );
    assert!(matches!(s, Step::Done(Next::Forward { .. })));
}

#[test]
fn ss2022_request_without_payload_or_padding_is_rejected() {
    let m = Method::Blake3Aes128Gcm;
    let ctx = test_ctx(m, &UUIDS);
    let psk = server_psk(m);
    let mut c = Ss2022Client::new(m.aead(), Some(&psk), &user_secret(m, 2), &domain(), b"", 0, NOW).unwrap();
    let mut wire = Vec::new();
    c.seal(b"", &mut wire).unwrap();
    let e = expect_reject(feed_all(inbound(m).handshake().as_mut(), &wire, wire.len(), &ctx));
    assert!(matches!(e, WireError::Malformed(_)));
}

#[test]
fn udp_round_trip_every_method() {
    for m in ALL {
        let ctx = test_ctx(m, &UUIDS);
        let codec = inbound(m).udp_codec().unwrap();
        let key = user_secret(m, 4);
        let dest = Destination::Ip("10.0.0.1:53".parse().unwrap());
        let mut pkts = Vec::new();
        for pid in 0..3u64 {
            let p = if m.is_2022() {
                let psk = server_psk(m);
                let ipsk = (m.aead() != AeadKind::ChaCha20Poly1305).then_some(&psk[..]);
                client_packet(m.aead(), ipsk, &key, 0xabcdef, pid, NOW, &dest, b"query").unwrap()
            } else {
                let mut o = Vec::new();
                aead::seal_udp(m.aead(), &key, &dest, b"query", &mut o).unwrap();
                o
            };
            pkts.push(p);
        }
        let mut session = None;
        let mut replay_copy = pkts[1].clone();
        for mut p in pkts {
            let ip = codec.open_packet(&mut p, None, &ctx).unwrap();
            assert_eq!(ip.user.user_id, 104);
            assert_eq!(ip.dest, dest);
            assert_eq!(&p[ip.payload.clone()], b"query");
            let s = session.get_or_insert_with(|| codec.new_session(&ip).unwrap());
            assert!(s.accept(&ip), "{m:?}");
        }
        let s = session.as_mut().unwrap();
        let ip = codec.open_packet(&mut replay_copy, None, &ctx).unwrap();
        if m.is_2022() {
            assert!(!s.accept(&ip), "{m:?}: replayed packet id accepted");
            assert_eq!(ip.session_id, 0xabcdef);
        }
        let mut reply = Vec::new();
        s.seal(&dest, b"answer", &mut reply).unwrap();
        if m.is_2022() {
            let (csid, from, payload) = client_open_reply(m.aead(), &key, &mut reply).unwrap();
            assert_eq!(
                (csid, from, &payload[..]),
                (0xabcdef, dest.clone(), &b"answer"[..])
            );
        } else {
            let ctx_client = test_ctx(m, &UUIDS[4..]);
            let back = Aead2017Udp::new(m.aead());
            let ip = back.open_packet(&mut reply, None, &ctx_client).unwrap();
            assert_eq!(&reply[ip.payload], b"answer");
        }
    }
}

#[test]
fn udp_wrong_user_and_stale_timestamp_are_rejected() {
    for m in [
        Method::Blake3Aes128Gcm,
        Method::Blake3ChaCha20Poly1305,
        Method::Aes256Gcm,
    ] {
        let ctx = test_ctx(m, &UUIDS[..2]);
        let codec = inbound(m).udp_codec().unwrap();
        let dest = Destination::Ip("10.0.0.1:53".parse().unwrap());
        let key = user_secret(m, 3);
        let mut p = if m.is_2022() {
            let psk = server_psk(m);
            let ipsk = (m.aead() != AeadKind::ChaCha20Poly1305).then_some(&psk[..]);
            client_packet(m.aead(), ipsk, &key, 1, 0, NOW, &dest, b"q").unwrap()
        } else {
            let mut o = Vec::new();
            aead::seal_udp(m.aead(), &key, &dest, b"q", &mut o).unwrap();
            o
        };
        assert!(
            matches!(codec.open_packet(&mut p, None, &ctx), Err(WireError::Auth(_))),
            "{m:?}"
        );
        if m.is_2022() {
            let key = user_secret(m, 0);
            let psk = server_psk(m);
            let ipsk = (m.aead() != AeadKind::ChaCha20Poly1305).then_some(&psk[..]);
            let mut p = client_packet(m.aead(), ipsk, &key, 1, 0, NOW - 31, &dest, b"q").unwrap();
            assert_eq!(
                codec.open_packet(&mut p, None, &ctx).err(),
                Some(WireError::Timestamp)
            );
        }
    }
}

#[test]
fn packet_window_accepts_each_id_once() {
    let mut w = PacketWindow::default();
    assert!(w.accept(5));
    assert!(!w.accept(5));
    assert!(w.accept(3));
    assert!(!w.accept(3));
    assert!(w.accept(2000));
    assert!(!w.accept(5), "too old");
    assert!(w.accept(2000 - 1023));
    assert!(!w.accept(2000 - 1024));
    assert!(w.accept(1999));
    assert!(w.accept(u64::MAX));
    assert!(!w.accept(u64::MAX));
}

#[test]
fn method_names_and_cred_kinds() {
    for m in ALL {
        assert_eq!(Method::from_name(m.name()), Some(m));
    }
    assert_eq!(Method::from_name("aead_aes_128_gcm"), Some(Method::Aes128Gcm));
    assert_eq!(Method::from_name("none"), None);
    assert!(SsInbound::new(Method::Blake3Aes128Gcm, Some(&[0u8; 32])).is_err());
}

fn valid_request(m: Method) -> Vec<u8> {
    let mut client = Client::new(m, 1, &domain(), b"payload", NOW);
    let mut wire = Vec::new();
    client.seal(b"", &mut wire);
    wire
}

fn method_strategy() -> impl Strategy<Value = Method> {
    prop::sample::select(ALL.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_authenticate(m in method_strategy(), data in prop::collection::vec(any::<u8>(), 0..600), step in 1usize..80) {
        let ctx = test_ctx(m, &UUIDS);
        let mut hs = inbound(m).handshake();
        let s = feed_all(hs.as_mut(), &data, step, &ctx);
        let forwarded = matches!(s, Step::Done(Next::Forward { .. }));
        prop_assert!(!forwarded);
        let codec = inbound(m).udp_codec().unwrap();
        let mut d = data.clone();
        prop_assert!(codec.open_packet(&mut d, None, &ctx).is_err());
    }

    #[test]
    fn bit_flipped_requests_never_authenticate(m in method_strategy(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let ctx = test_ctx(m, &UUIDS);
        let mut wire = valid_request(m);
        let i = pos.index(wire.len());
        wire[i] ^= 1 << bit;
        let s = feed_all(inbound(m).handshake().as_mut(), &wire, wire.len(), &ctx);
        let forwarded = matches!(s, Step::Done(Next::Forward { .. }));
        prop_assert!(!forwarded, "authenticated after a bit flip at {}", i);
    }

    #[test]
    fn truncated_requests_wait_or_reject(m in method_strategy(), cut in any::<prop::sample::Index>()) {
        let ctx = test_ctx(m, &UUIDS);
        let wire = valid_request(m);
        let n = cut.index(wire.len());
        let s = feed_all(inbound(m).handshake().as_mut(), &wire[..n], wire.len(), &ctx);
        let waiting = matches!(s, Step::NeedMore(_));
        prop_assert!(waiting);
    }

    #[test]
    fn bit_flipped_datagrams_never_authenticate(m in method_strategy(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let ctx = test_ctx(m, &UUIDS);
        let key = user_secret(m, 1);
        let dest = Destination::Ip("10.0.0.1:53".parse().unwrap());
        let mut p = if m.is_2022() {
            let psk = server_psk(m);
            let ipsk = (m.aead() != AeadKind::ChaCha20Poly1305).then_some(&psk[..]);
            client_packet(m.aead(), ipsk, &key, 9, 0, NOW, &dest, b"q").unwrap()
        } else {
            let mut o = Vec::new();
            aead::seal_udp(m.aead(), &key, &dest, b"q", &mut o).unwrap();
            o
        };
        let i = pos.index(p.len());
        p[i] ^= 1 << bit;
        let codec = inbound(m).udp_codec().unwrap();
        prop_assert!(codec.open_packet(&mut p, None, &ctx).is_err());
    }

    #[test]
    fn garbage_after_handshake_is_an_error_not_a_panic(m in method_strategy(), data in prop::collection::vec(any::<u8>(), 0..2000)) {
        let ctx = test_ctx(m, &UUIDS);
        let wire = valid_request(m);
        if let Step::Done(Next::Forward { codec: Some(mut codec), .. }) = feed_all(inbound(m).handshake().as_mut(), &wire, wire.len(), &ctx) {
            let mut out = Vec::new();
            // Garbage either errors or stays buffered as a partial chunk; it never decodes.
            if codec.open(&data, &mut out).is_ok() {
                prop_assert!(out.is_empty());
            }
        } else {
            prop_assert!(false, "valid request rejected");
        }
    }
}

#[test]
fn a_large_first_read_is_not_mistaken_for_garbage() {
    // A client that already sent a lot (here ~200 KiB) before the server's first read.
    for m in ALL {
        let ctx = test_ctx(m, &UUIDS);
        let mut client = Client::new(m, 2, &domain(), b"hi", NOW);
        let mut wire = Vec::new();
        client.seal(&vec![1u8; 200_000], &mut wire);
        let mut hs = inbound(m).handshake();
        let Step::Done(Next::Forward {
            initial_upload,
            codec,
            ..
        }) = hs.feed(&wire, &ctx).unwrap()
        else {
            panic!("{m:?}: large first read rejected");
        };
        let mut up = initial_upload;
        codec.unwrap().open(&[], &mut up).unwrap();
        assert_eq!(up.len(), 200_002, "{m:?}");
    }
}
