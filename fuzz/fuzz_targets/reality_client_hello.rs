//! REALITY's ClientHello reassembly (records) and parser, and the authenticator check on
//! whatever parses, with a fixed server key.
#![no_main]
use libfuzzer_sys::fuzz_target;
use v2sp_dataplane::tls::reality::{authenticate, hello};

const PRIVATE_KEY: [u8; 32] = [0x42; 32];

fuzz_target!(|data: &[u8]| {
    let _ = hello::parse(data);
    let _ = authenticate(&PRIVATE_KEY, &["v2sp.test".to_string()], &[[0u8; 8]], 0, data, 0);
    if let Ok(Some(msg)) = hello::reassemble(data) {
        let _ = hello::parse(&msg);
        let _ = authenticate(
            &PRIVATE_KEY,
            &["v2sp.test".to_string()],
            &[[0u8; 8]],
            60_000,
            &msg,
            v2sp_fuzz::NOW * 1000,
        );
    }
});
