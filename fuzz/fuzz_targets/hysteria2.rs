//! Hysteria 2 parsers, which read what a QUIC client sends: TCP request headers (also behind a
//! valid request type, so the length fields are reached), HTTP/3 request heads and QPACK field
//! sections (also inside a HEADERS frame with a valid prefix), UDP messages and the fragment
//! reassembly they feed.
#![no_main]
use libfuzzer_sys::fuzz_target;
use v2sp_dataplane::proto::hysteria2::{self as hy2, h3, udp};

fuzz_target!(|data: &[u8]| {
    let _ = hy2::parse_tcp_request(data);
    let mut req = vec![0x44, 0x01];
    req.extend_from_slice(data);
    let _ = hy2::parse_tcp_request(&req);
    if let Ok(Some(r)) = h3::parse_request(data) {
        let _ = hy2::AuthRequest::from_request(&r);
    }
    let mut block = vec![0x00, 0x00];
    block.extend_from_slice(data);
    let _ = h3::decode_fields(&block);
    let mut frame = Vec::new();
    h3::put_frame(&mut frame, h3::FRAME_HEADERS, &block);
    if let Ok(Some(r)) = h3::parse_request(&frame) {
        let _ = hy2::AuthRequest::from_request(&r);
    }
    // Datagrams: the input cut at every 0xff byte, all fed to one reassembler.
    let mut defrag = udp::Defragmenter::default();
    for d in data.split(|b| *b == 0xff) {
        if let Ok(m) = udp::decode(d) {
            let _ = defrag.feed(&m, d);
        }
    }
});
