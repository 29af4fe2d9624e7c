//! VLESS request header (version, uuid, addons protobuf, command, address), in hostile chunks.
#![no_main]
use libfuzzer_sys::fuzz_target;
use v2sp_dataplane::proto::fixture::StaticAuth;
use v2sp_dataplane::proto::vless::{addons_flow, parse_request, VlessHandshake};
use v2sp_shared::cred::CredKind;

fuzz_target!(|data: &[u8]| {
    let _ = parse_request(data);
    let _ = addons_flow(data);
    let ctx = StaticAuth::new(CredKind::VlessUuid, &v2sp_fuzz::UUIDS, v2sp_fuzz::NOW);
    v2sp_fuzz::drive(Box::new(VlessHandshake::default()), data, &ctx);
});
