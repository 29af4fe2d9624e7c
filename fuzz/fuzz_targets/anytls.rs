//! AnyTLS authentication header and session frames (TCP streams, UDP-over-TCP), fed in hostile
//! chunk sizes; the replies are sealed too.
#![no_main]
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use v2sp_dataplane::proto::anytls::{AnytlsHandshake, PaddingScheme};
use v2sp_dataplane::proto::fixture::StaticAuth;
use v2sp_shared::cred::CredKind;

fuzz_target!(|data: &[u8]| {
    let ctx = StaticAuth::new(CredKind::Sha256Password, &v2sp_fuzz::UUIDS, v2sp_fuzz::NOW);
    let hs = AnytlsHandshake::new(Arc::new(PaddingScheme::default()));
    v2sp_fuzz::drive(Box::new(hs), data, &ctx);
});
