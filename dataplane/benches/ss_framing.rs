//! Shadowsocks codec micro-benchmarks: 16 KiB seal+open per method (server seals, client
//! opens — the download direction), and the cost of authenticating a new connection:
//! AEAD-2017 trial decryption over 10 / 1k / 10k users (worst case: the last user matches)
//! against SS-2022's identity-header lookup.
//!
//! `V2SP_BENCH_ITERS=N` runs each case exactly N times without criterion (for
//! `scripts/instr-count.sh`; see `bench/benches/support/instr.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

#[path = "../../bench/benches/support/instr.rs"]
mod instr;

use std::hint::black_box;

use criterion::Throughput;
use instr::Runner;
use v2sp_dataplane::proto::fixture::StaticAuth;
use v2sp_dataplane::proto::ss::address;
use v2sp_dataplane::proto::ss::aead::Aead2017Client;
use v2sp_dataplane::proto::ss::ss2022::Ss2022Client;
use v2sp_dataplane::proto::ss::{Method, SsInbound};
use v2sp_dataplane::proto::{Destination, Next, Step, StreamCodec};
use v2sp_shared::cred::secret_for;

const NOW: u64 = 1_760_000_000;

fn uuid(i: usize) -> String {
    format!("{:08x}-0d1c-4b8a-9d8e-5e3f2a1b0c9d", i)
}

/// `n` users (ids 100…); the benchmark replays the same request on purpose, so nonces are
/// not remembered.
fn ctx(m: Method, n: usize) -> StaticAuth {
    let uuids: Vec<String> = (0..n).map(uuid).collect();
    let refs: Vec<&str> = uuids.iter().map(String::as_str).collect();
    StaticAuth::new(m.cred_kind(), &refs, NOW).without_replay_memory()
}

fn psk(m: Method) -> Vec<u8> {
    vec![0x42; m.aead().key_len()]
}

enum Client {
    Old(Aead2017Client),
    New(Ss2022Client),
}

/// A request from user `i` and the client that made it.
fn request(m: Method, i: usize) -> (Vec<u8>, Client) {
    let dest = Destination::Domain("example.com".into(), 443);
    let key = secret_for(m.cred_kind(), &uuid(i)).unwrap();
    let mut wire = Vec::new();
    if m.is_2022() {
        let p = psk(m);
        let ipsk = (m != Method::Blake3ChaCha20Poly1305).then_some(&p[..]);
        let mut c = Ss2022Client::new(
            m.aead(),
            ipsk,
            key.as_slice(),
            &dest,
            b"GET / HTTP/1.1\r\n\r\n",
            0,
            NOW,
        )
        .unwrap();
        c.seal(b"", &mut wire).unwrap();
        (wire, Client::New(c))
    } else {
        let mut c = Aead2017Client::new(m.aead(), key.as_slice()).unwrap();
        let mut first = Vec::new();
        address::write(&dest, &mut first).unwrap();
        first.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        c.seal(&first, &mut wire).unwrap();
        (wire, Client::Old(c))
    }
}

fn inbound(m: Method) -> SsInbound {
    let p = psk(m);
    SsInbound::new(m, (m != Method::Blake3ChaCha20Poly1305).then_some(&p[..])).unwrap()
}

fn accept(m: Method, ctx: &StaticAuth, wire: &[u8]) -> Box<dyn StreamCodec> {
    let mut hs = inbound(m).handshake();
    match hs.feed(wire, ctx).unwrap() {
        Step::Done(Next::Forward { codec: Some(c), .. }) => c,
        _ => panic!("{m:?}: request not accepted"),
    }
}

const METHODS: [Method; 6] = [
    Method::Aes128Gcm,
    Method::Aes256Gcm,
    Method::ChaCha20Poly1305,
    Method::Blake3Aes128Gcm,
    Method::Blake3Aes256Gcm,
    Method::Blake3ChaCha20Poly1305,
];

fn framing(r: &mut Runner) {
    let plain = vec![0xa5u8; 16 * 1024];
    for m in METHODS {
        let ctx = ctx(m, 1);
        let (wire, mut client) = request(m, 0);
        let mut server = accept(m, &ctx, &wire);
        let mut out = Vec::with_capacity(64 * 1024);
        let mut got = Vec::with_capacity(64 * 1024);
        // Prime: the first seal carries the response salt/header.
        server.seal(b"x", &mut out).unwrap();
        match &mut client {
            Client::Old(cl) => cl.open(&out, &mut got).unwrap(),
            Client::New(cl) => cl.open(&out, &mut got).unwrap(),
        }
        let t = Some(Throughput::Bytes(plain.len() as u64));
        r.case("ss_seal_open_16k", m.name(), t, || {
            out.clear();
            got.clear();
            server.seal(black_box(&plain), &mut out).unwrap();
            match &mut client {
                Client::Old(cl) => cl.open(&out, &mut got).unwrap(),
                Client::New(cl) => cl.open(&out, &mut got).unwrap(),
            }
            assert_eq!(got.len(), plain.len());
        });
    }
}

fn new_connection(r: &mut Runner) {
    r.tune(
        20,
        std::time::Duration::from_secs(3),
        std::time::Duration::from_secs(5),
    );
    for m in [
        Method::Aes128Gcm,
        Method::ChaCha20Poly1305,
        Method::Blake3Aes128Gcm,
    ] {
        for n in [10usize, 1_000, 10_000] {
            let ctx = ctx(m, n);
            // Worst case for trial decryption: the last user in the table.
            let (wire, _) = request(m, n - 1);
            r.case(
                "ss_new_connection_auth",
                &format!("{}/{n}", m.name()),
                None,
                || {
                    let mut hs = inbound(m).handshake();
                    match hs.feed(black_box(&wire), &ctx).unwrap() {
                        Step::Done(Next::Forward { user, .. }) => {
                            assert_eq!(user.user_id as usize, 100 + n - 1)
                        }
                        _ => panic!("not accepted"),
                    }
                },
            );
        }
    }
}

fn main() {
    instr::main(&[framing, new_connection]);
}
