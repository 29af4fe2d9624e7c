//! Shadowsocks TCP handshake and stream framing, every method (the method is the fuzzer's choice).
#![no_main]
use libfuzzer_sys::fuzz_target;
use v2sp_dataplane::proto::fixture::StaticAuth;
use v2sp_dataplane::proto::ss::{Method, SsInbound};

const METHODS: [&str; 6] = [
    "aes-128-gcm",
    "aes-256-gcm",
    "chacha20-ietf-poly1305",
    "2022-blake3-aes-128-gcm",
    "2022-blake3-aes-256-gcm",
    "2022-blake3-chacha20-poly1305",
];

fuzz_target!(|data: &[u8]| {
    let Some((sel, rest)) = data.split_first() else { return };
    let Some(method) = Method::from_name(METHODS[usize::from(*sel) % METHODS.len()]) else { return };
    let psk = vec![7u8; method.aead().key_len()];
    let Ok(inbound) = SsInbound::new(method, Some(&psk)) else { return };
    let ctx = StaticAuth::new(method.cred_kind(), &v2sp_fuzz::UUIDS, v2sp_fuzz::NOW).without_replay_memory();
    v2sp_fuzz::drive(inbound.handshake(), rest, &ctx);
});
