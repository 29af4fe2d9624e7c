//! PROXY protocol v1/v2 header parser, on every prefix of the input (it is called per read).
#![no_main]
use libfuzzer_sys::fuzz_target;
use v2sp_dataplane::net::proxy_protocol::parse;

fuzz_target!(|data: &[u8]| {
    for end in 0..=data.len().min(600) {
        let _ = parse(data.get(..end).unwrap_or_default());
    }
});
