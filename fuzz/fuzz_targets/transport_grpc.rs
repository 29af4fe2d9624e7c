//! The grpc (gun) transport: the HTTP/2 request stage, then the stream codec (frames, HPACK,
//! gRPC messages, flow control) in hostile chunks, with seals and control output interleaved.
//! The client preface is prepended for half the inputs so the fuzzer starts past it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use v2sp_dataplane::transport::grpc::{h2, GrpcHandshake};
use v2sp_dataplane::transport::{TransportHandshake, Upgrade};
use v2sp_shared::dpconfig::GrpcSettings;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let mut input = Vec::new();
    if sel & 1 != 0 {
        input.extend_from_slice(h2::PREFACE);
        // Empty SETTINGS, then HEADERS for stream 1 (POST /gun/Tun, application/grpc) unless
        // the fuzzer asks to write its own.
        input.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        if sel & 2 != 0 {
            let mut block = vec![0x83, 0x04, 0x08];
            block.extend_from_slice(b"/gun/Tun");
            block.extend_from_slice(&[0x0f, 0x10, 0x10]);
            block.extend_from_slice(b"application/grpc");
            h2::frame(&mut input, h2::T_HEADERS, h2::F_END_HEADERS, 1, &block);
        }
    }
    input.extend_from_slice(rest);
    let settings = GrpcSettings {
        service_name: if sel & 4 != 0 { "/gun/Tun|M".into() } else { "gun".into() },
        multi_mode: false,
    };
    let mut hs = GrpcHandshake::new(&settings);
    let mut parts = v2sp_fuzz::chunks(&input);
    let mut up = None;
    for part in parts.by_ref() {
        match hs.feed(part) {
            Ok(Upgrade::NeedMore) => continue,
            Ok(Upgrade::Done(u)) => {
                up = Some(u);
                break;
            }
            Ok(Upgrade::Reject(_)) | Err(_) => return,
        }
    }
    let Some(up) = up else { return };
    let Some(mut codec) = up.framing else { return };
    let mut out = Vec::new();
    if codec.open(&up.rest, &mut out).is_err() {
        return;
    }
    for part in parts {
        if codec.open(part, &mut out).is_err() {
            return;
        }
        let mut wire = Vec::new();
        if codec.has_control() {
            let _ = codec.take_control(&mut wire);
        }
        if !codec.send_blocked() {
            let _ = codec.seal(&out, &mut wire);
        }
        out.clear();
    }
});
