//! Shadowsocks UDP packets (AEAD-2017 and 2022), opened in place.
#![no_main]
use libfuzzer_sys::fuzz_target;
use v2sp_dataplane::proto::fixture::StaticAuth;
use v2sp_dataplane::proto::ss::{Method, SsInbound};

const METHODS: [&str; 4] = ["aes-128-gcm", "chacha20-ietf-poly1305", "2022-blake3-aes-128-gcm", "2022-blake3-chacha20-poly1305"];

fuzz_target!(|data: &[u8]| {
    let Some((sel, rest)) = data.split_first() else { return };
    let Some(method) = Method::from_name(METHODS[usize::from(*sel) % METHODS.len()]) else { return };
    let psk = vec![7u8; method.aead().key_len()];
    let Ok(inbound) = SsInbound::new(method, Some(&psk)) else { return };
    let Ok(codec) = inbound.udp_codec() else { return };
    let ctx = StaticAuth::new(method.cred_kind(), &v2sp_fuzz::UUIDS, v2sp_fuzz::NOW).without_replay_memory();
    let mut pkt = rest.to_vec();
    if let Ok(p) = codec.open_packet(&mut pkt, None, &ctx) {
        if let Ok(mut session) = codec.new_session(&p) {
            let _ = session.accept(&p);
            let mut out = Vec::new();
            let _ = session.seal(&p.dest, pkt.get(p.payload.clone()).unwrap_or_default(), &mut out);
        }
    }
});
