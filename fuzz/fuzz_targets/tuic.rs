//! TUIC v5 parsers, which read what a QUIC client sends: stream heads on bidirectional and
//! unidirectional streams (before and after authentication; also behind a valid version and
//! command, so the address and packet fields are reached), datagrams and the fragment
//! reassembly they feed, and reply framing of what was parsed.
#![no_main]
use libfuzzer_sys::fuzz_target;
use v2sp_dataplane::proto::quic::{Congestion, PacketPath, QuicInbound};
use v2sp_dataplane::proto::tuic::TuicInbound;

fuzz_target!(|data: &[u8]| {
    let t = TuicInbound::new(Congestion::Cubic, std::time::Duration::from_secs(3), Vec::new());
    for authed in [false, true] {
        let _ = t.bidi_head(data, authed);
        let _ = t.uni_head(data, authed);
    }
    for cmd in [0u8, 1, 2, 3] {
        let mut w = vec![5, cmd];
        w.extend_from_slice(data);
        let _ = t.bidi_head(&w, true);
        let _ = t.uni_head(&w, true);
    }
    // Datagrams: the input cut at every 0xfe byte, each behind VER and the Packet command,
    // all fed to one connection's reassembler; what comes out is framed back.
    let mut conn = t.connection();
    for d in data.split(|b| *b == 0xfe) {
        let mut dg = vec![5, 2];
        dg.extend_from_slice(d);
        if let Ok(Some(p)) = conn.datagram(&dg) {
            let from = std::net::SocketAddr::from(([127, 0, 0, 1], 53));
            let mut out = Vec::new();
            let _ = conn.seal_reply(p.assoc, from, &p.payload, PacketPath::Datagram, 1200, &mut out);
        }
        let _ = conn.datagram(d);
    }
});
