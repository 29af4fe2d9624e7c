//! AnyTLS authentication header and session frames (TCP streams, UDP-over-TCP), fed in hostile
//! chunk sizes; the replies are sealed too. Each input runs twice: as it is (authentication
//! parsing, fallback) and behind a valid authentication header (the session's frame parser,
//! which random bytes would never reach past a SHA-256).
#![no_main]
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};
use v2sp_dataplane::proto::anytls::{AnytlsHandshake, PaddingScheme};
use v2sp_dataplane::proto::fixture::StaticAuth;
use v2sp_shared::cred::CredKind;

fuzz_target!(|data: &[u8]| {
    let ctx = StaticAuth::new(CredKind::Sha256Password, &v2sp_fuzz::UUIDS, v2sp_fuzz::NOW);
    let scheme = Arc::new(PaddingScheme::default());
    v2sp_fuzz::drive(Box::new(AnytlsHandshake::new(scheme.clone())), data, &ctx);
    // The first byte picks the chunk sizes (see `v2sp_fuzz::chunks`); the header goes after it.
    let (first, rest) = data.split_first().map_or((0, &[][..]), |(f, r)| (*f, r));
    let mut authed = vec![first];
    authed.extend_from_slice(&Sha256::digest(v2sp_fuzz::UUIDS[0].as_bytes()));
    authed.extend_from_slice(&[0, 0]);
    authed.extend_from_slice(rest);
    v2sp_fuzz::drive(Box::new(AnytlsHandshake::new(scheme)), &authed, &ctx);
});
