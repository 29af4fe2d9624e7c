//! Trojan request header, fed in hostile chunk sizes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use v2sp_dataplane::proto::fixture::StaticAuth;
use v2sp_dataplane::proto::trojan::{parse_request, TrojanHandshake};
use v2sp_shared::cred::CredKind;

fuzz_target!(|data: &[u8]| {
    let _ = parse_request(data);
    let ctx = StaticAuth::new(CredKind::TrojanSha224, &v2sp_fuzz::UUIDS, v2sp_fuzz::NOW);
    v2sp_fuzz::drive(Box::new(TrojanHandshake::default()), data, &ctx);
});
