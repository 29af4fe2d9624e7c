#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::h3::{self, Request};
use super::udp::{self, Defragmenter};
use super::*;

#[test]
fn varints_match_rfc9000_examples() {
    // RFC 9000 Appendix A.1.
    let cases: [(&[u8], u64); 5] = [
        (
            &[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c],
            151_288_809_941_952_652,
        ),
        (&[0x9d, 0x7f, 0x3e, 0x7d], 494_878_333),
        (&[0x7b, 0xbd], 15_293),
        (&[0x25], 37),
        (&[0x40, 0x25], 37),
    ];
    for (wire, v) in cases {
        assert_eq!(varint(wire), Some((v, wire.len())), "{wire:02x?}");
    }
    for v in [0u64, 63, 64, 16_383, 16_384, (1 << 30) - 1, 1 << 30, VARINT_MAX] {
        let mut out = Vec::new();
        put_varint(&mut out, v);
        assert_eq!(varint(&out), Some((v, out.len())));
    }
    let mut out = Vec::new();
    put_varint(&mut out, 0x401);
    assert_eq!(out, [0x44, 0x01]);
    // Incomplete: nothing, or fewer bytes than the prefix says.
    assert_eq!(varint(&[]), None);
    assert_eq!(varint(&[0x9d, 0x7f]), None);
}

fn tcp_request(addr: &str, pad: usize) -> Vec<u8> {
    let mut v = Vec::new();
    put_varint(&mut v, TCP_REQUEST);
    put_varint(&mut v, addr.len() as u64);
    v.extend_from_slice(addr.as_bytes());
    put_varint(&mut v, pad as u64);
    v.extend(std::iter::repeat_n(b'p', pad));
    v
}

#[test]
fn tcp_request_known_answer_and_every_prefix_is_incomplete() {
    let mut wire = vec![0x44, 0x01, 0x0e];
    wire.extend_from_slice(b"example.com:80");
    wire.extend_from_slice(&[0x03, b'x', b'y', b'z']);
    wire.extend_from_slice(b"GET /");
    let (dest, n) = parse_tcp_request(&wire).unwrap().unwrap();
    assert_eq!(dest, Destination::Domain("example.com".into(), 80));
    assert_eq!(&wire[n..], b"GET /");
    for cut in 0..n {
        assert_eq!(
            parse_tcp_request(&wire[..cut]).unwrap(),
            None,
            "prefix of {cut} bytes"
        );
    }
}

#[test]
fn tcp_request_addresses() {
    let d = |a: &str| parse_tcp_request(&tcp_request(a, 0)).map(|r| r.unwrap().0);
    assert_eq!(
        d("1.2.3.4:443").unwrap(),
        Destination::Ip("1.2.3.4:443".parse().unwrap())
    );
    assert_eq!(
        d("[2001:db8::1]:53").unwrap(),
        Destination::Ip("[2001:db8::1]:53".parse().unwrap())
    );
    assert!(d("2001:db8::1:53").is_err());
    assert!(d("host").is_err());
    assert!(d(":80").is_err());
    assert!(d("host:99999").is_err());
    assert!(d("host:").is_err());
    // Padding at the limit is fine, beyond it refused; so are empty and over-long addresses.
    assert!(parse_tcp_request(&tcp_request("a:1", MAX_PADDING))
        .unwrap()
        .is_some());
    assert!(parse_tcp_request(&tcp_request("a:1", MAX_PADDING + 1)).is_err());
    assert!(parse_tcp_request(&tcp_request("", 0)).is_err());
    let long = format!("{}:1", "a".repeat(MAX_ADDRESS));
    assert!(parse_tcp_request(&tcp_request(&long, 0)).is_err());
    // Not a TCP request: an HTTP/3 HEADERS frame.
    assert!(parse_tcp_request(&[0x01, 0x02, 0x00, 0x00]).is_err());
    // A huge declared length is refused before its bytes arrive.
    assert!(parse_tcp_request(&[0x44, 0x01, 0xbf, 0xff, 0xff, 0xff]).is_err());
}

#[test]
fn tcp_response_layout() {
    let mut ok = Vec::new();
    put_tcp_response(&mut ok, None, 0);
    assert_eq!(ok, [0x00, 0x00, 0x00]);
    let mut err = Vec::new();
    put_tcp_response(&mut err, Some("refused"), 70);
    assert_eq!(err[0], 1);
    assert_eq!(err[1], 7);
    assert_eq!(&err[2..9], b"refused");
    assert_eq!(&err[9..11], &[0x40, 70]);
    assert_eq!(err.len(), 11 + 70);
    assert!(err[11..].iter().all(u8::is_ascii_alphanumeric));
}

#[test]
fn qpack_rfc9204_literal_with_name_reference() {
    // RFC 9204 Appendix B.1: `:path: /index.html` by static name reference.
    let mut block = vec![0x00, 0x00, 0x51, 0x0b];
    block.extend_from_slice(b"/index.html");
    assert_eq!(
        h3::decode_fields(&block).unwrap(),
        vec![(":path".to_string(), "/index.html".to_string())]
    );
}

#[test]
fn qpack_huffman_value() {
    // RFC 7541 C.4.1: "www.example.com" Huffman-coded, as the `:authority` value.
    let mut block = vec![0x00, 0x00, 0x50, 0x8c];
    block.extend_from_slice(&[
        0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
    ]);
    let f = h3::decode_fields(&block).unwrap();
    assert_eq!(f, vec![(":authority".to_string(), "www.example.com".to_string())]);
}

#[test]
fn qpack_refuses_the_dynamic_table_and_garbage() {
    // Required insert count 1.
    assert!(h3::decode_fields(&[0x01, 0x00, 0xd1]).is_err());
    // Indexed dynamic (T=0), name-ref dynamic, post-base forms.
    assert!(h3::decode_fields(&[0x00, 0x00, 0x80]).is_err());
    assert!(h3::decode_fields(&[0x00, 0x00, 0x40, 0x00]).is_err());
    assert!(h3::decode_fields(&[0x00, 0x00, 0x10]).is_err());
    assert!(h3::decode_fields(&[0x00, 0x00, 0x00]).is_err());
    // Static index past the table; truncated strings and integers.
    assert!(h3::decode_fields(&[0x00, 0x00, 0xff, 0x30]).is_err());
    assert!(h3::decode_fields(&[0x00, 0x00, 0x51, 0x05, b'/']).is_err());
    assert!(h3::decode_fields(&[0x00, 0x00, 0xff]).is_err());
    assert!(h3::decode_fields(&[
        0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
    ])
    .is_err());
}

/// The auth request as Go's HTTP/3 client encodes it: static references for the method,
/// scheme, authority and path names, literal names for the Hysteria headers.
fn auth_block(password: &str, rx: &str) -> Vec<u8> {
    let mut b = vec![0x00, 0x00, 0xd4, 0xd7, 0x50, 0x08];
    b.extend_from_slice(b"hysteria");
    b.extend_from_slice(&[0x51, 0x05]);
    b.extend_from_slice(b"/auth");
    for (n, v) in [
        ("hysteria-auth", password),
        ("hysteria-cc-rx", rx),
        ("hysteria-padding", "zzzz"),
    ] {
        b.push(0x27);
        b.push((n.len() - 7) as u8);
        b.extend_from_slice(n.as_bytes());
        b.push(v.len() as u8);
        b.extend_from_slice(v.as_bytes());
    }
    b
}

#[test]
fn auth_request_from_an_http3_request() {
    let mut stream = Vec::new();
    // A reserved (grease) frame type first: skipped.
    h3::put_frame(&mut stream, 0x21, b"grease");
    h3::put_frame(&mut stream, h3::FRAME_HEADERS, &auth_block("secret", "1250000"));
    for cut in 0..stream.len() {
        assert_eq!(h3::parse_request(&stream[..cut]).unwrap(), None, "prefix {cut}");
    }
    let req = h3::parse_request(&stream).unwrap().unwrap();
    assert_eq!(
        (req.method.as_str(), req.path.as_str(), req.authority.as_str()),
        ("POST", "/auth", "hysteria")
    );
    let a = AuthRequest::from_request(&req).unwrap();
    assert_eq!(
        a,
        AuthRequest {
            auth: "secret".into(),
            cc_rx: 1_250_000
        }
    );
    use sha2::Digest as _;
    assert_eq!(a.lookup_key(), <[u8; 32]>::from(sha2::Sha256::digest(b"secret")));
    // A rate that is not a number counts as unknown.
    let req = h3::decode_request(&auth_block("secret", "fast")).unwrap();
    assert_eq!(AuthRequest::from_request(&req).unwrap().cc_rx, 0);
}

#[test]
fn other_requests_are_not_auth() {
    let get = Request {
        method: "GET".into(),
        path: "/auth".into(),
        authority: "hysteria".into(),
        headers: vec![("hysteria-auth".into(), "x".into())],
    };
    assert_eq!(AuthRequest::from_request(&get), None);
    let other_host = Request {
        method: "POST".into(),
        authority: "example.com".into(),
        ..get
    };
    assert_eq!(AuthRequest::from_request(&other_host), None);
    let no_auth = Request {
        method: "POST".into(),
        path: "/auth".into(),
        authority: "hysteria".into(),
        headers: vec![],
    };
    assert_eq!(AuthRequest::from_request(&no_auth), None);
    // DATA before HEADERS, and a control frame on a request stream.
    assert!(h3::parse_request(&[0x00, 0x01, 0x00]).is_err());
    assert!(h3::parse_request(&[0x04, 0x00]).is_err());
    assert!(h3::parse_request(&[0x01, 0x80, 0x01, 0x00, 0x01]).is_err());
}

#[test]
fn responses_decode_back() {
    let wire = auth_ok_response(false, ServerRx::Auto);
    let (ty, n) = varint(&wire).unwrap();
    assert_eq!(ty, h3::FRAME_HEADERS);
    let (len, m) = varint(&wire[n..]).unwrap();
    assert_eq!(n + m + len as usize, wire.len());
    let fields = h3::decode_fields(&wire[n + m..]).unwrap();
    assert_eq!(fields[0], (":status".to_string(), "233".to_string()));
    assert_eq!(fields[1], ("hysteria-udp".to_string(), "false".to_string()));
    assert_eq!(fields[2], ("hysteria-cc-rx".to_string(), "auto".to_string()));
    assert_eq!(fields[3].0, "hysteria-padding");
    // :status 233 is a literal value with the static `:status` name (index 24).
    assert_eq!(
        &wire[n + m..n + m + 7],
        &[0x00, 0x00, 0x5f, 0x09, 0x03, b'2', b'3']
    );

    let nf = not_found_response();
    let (_, n) = varint(&nf).unwrap();
    let (len, m) = varint(&nf[n..]).unwrap();
    let block = &nf[n + m..n + m + len as usize];
    // :status 404 is static entry 27: one byte.
    assert_eq!(block[2], 0xc0 | 27);
    let fields = h3::decode_fields(block).unwrap();
    assert!(fields.contains(&("content-length".to_string(), "19".to_string())));
    let rest = &nf[n + m + len as usize..];
    assert_eq!(rest[0], 0x00);
    assert_eq!(&rest[2..], b"404 page not found\n");
}

#[test]
fn server_rx_from_settings() {
    assert_eq!(ServerRx::from_settings(100, false), ServerRx::Rate(12_500_000));
    assert_eq!(ServerRx::from_settings(0, false).header_value(), "0");
    assert_eq!(ServerRx::from_settings(100, true).header_value(), "auto");
}

#[test]
fn send_rate_is_the_declaration_capped_by_the_node_upload() {
    let bw = |up_mbps, ignore_client_bandwidth| Bandwidth {
        up_mbps,
        down_mbps: 50,
        ignore_client_bandwidth,
    };
    // 100 Mbps declared, no node cap: 100 Mbps; a 20 Mbps cap lowers it, never raises it.
    assert_eq!(bw(0, false).send_rate(12_500_000), Some(12_500_000));
    assert_eq!(bw(20, false).send_rate(12_500_000), Some(2_500_000));
    assert_eq!(bw(200, false).send_rate(12_500_000), Some(12_500_000));
    // Nothing declared, or declarations ignored: the node's own congestion control.
    assert_eq!(bw(20, false).send_rate(0), None);
    assert_eq!(bw(20, true).send_rate(12_500_000), None);
    // Whatever a client claims stays within the cap, and nothing overflows.
    assert_eq!(
        bw(u32::MAX, false).send_rate(u64::MAX),
        Some(mbps_to_bytes(u32::MAX))
    );
    assert_eq!(bw(0, false).send_rate(u64::MAX), Some(u64::MAX));
    assert_eq!(bw(0, false).send_rate(1), Some(1));
    // What the server answers: its download, or `auto` when it ignores clients.
    assert_eq!(bw(20, false).server_rx(), ServerRx::Rate(6_250_000));
    assert_eq!(bw(20, true).server_rx(), ServerRx::Auto);
}

#[test]
fn the_declared_rate_comes_with_the_auth_claim() {
    use crate::quic::{QuicInbound as _, StreamHead};
    let node = Hysteria2Inbound {
        bandwidth: Bandwidth {
            up_mbps: 10,
            down_mbps: 0,
            ignore_client_bandwidth: false,
        },
        obfs: None,
    };
    let claim = |rx: &str| {
        let mut stream = Vec::new();
        h3::put_frame(&mut stream, h3::FRAME_HEADERS, &auth_block("secret", rx));
        match node.bidi_head(&stream, false).unwrap() {
            StreamHead::Auth { rx, .. } => rx,
            other => panic!("not an auth: {other:?}"),
        }
    };
    assert_eq!(claim("1250000"), 1_250_000);
    assert_eq!(node.send_rate(claim("1250000")), Some(1_250_000));
    assert_eq!(node.send_rate(claim("125000000")), Some(1_250_000));
    // Garbage, negative, past u64, empty: nothing declared.
    for bad in ["fast", "-5", "18446744073709551616", "", "1e9", "0x10"] {
        assert_eq!(claim(bad), 0, "{bad:?}");
        assert_eq!(node.send_rate(claim(bad)), None, "{bad:?}");
    }
    assert_eq!(claim("18446744073709551615"), u64::MAX);
    assert_eq!(node.send_rate(u64::MAX), Some(1_250_000));
    // The answer names the node's download: 0 = the server takes whatever the client sends.
    let ok = node.auth_reply().unwrap();
    let (_, n) = varint(&ok).unwrap();
    let (_, m) = varint(&ok[n..]).unwrap();
    let fields = h3::decode_fields(&ok[n + m..]).unwrap();
    assert!(
        fields.contains(&("hysteria-cc-rx".to_string(), "0".to_string())),
        "{fields:?}"
    );
}

#[test]
fn control_stream_announces_no_dynamic_table() {
    assert_eq!(
        h3::control_stream_preface(),
        [0x00, 0x04, 0x04, 0x01, 0x00, 0x07, 0x00]
    );
}

#[test]
fn udp_message_known_answer() {
    let mut d = vec![0, 0, 0, 7, 0x01, 0x02, 0, 1, 9];
    d.extend_from_slice(b"1.2.3.4:5");
    d.extend_from_slice(b"hello");
    let m = udp::decode(&d).unwrap();
    assert_eq!((m.session, m.packet, m.frag_id, m.frag_count), (7, 0x0102, 0, 1));
    assert_eq!(&d[m.addr.clone()], b"1.2.3.4:5");
    assert_eq!(&d[m.payload.clone()], b"hello");
    let mut out = Vec::new();
    assert!(udp::encode(&mut out, 7, 0x0102, "1.2.3.4:5", b"hello", 1200));
    assert_eq!(out, vec![d.clone()]);
    // Broken headers.
    assert!(udp::decode(&d[..7]).is_err());
    assert!(udp::decode(&d[..12]).is_err());
    let mut bad = d.clone();
    bad[6] = 1; // fragment 1 of 1
    assert!(udp::decode(&bad).is_err());
    bad[6] = 0;
    bad[7] = 0; // count 0
    assert!(udp::decode(&bad).is_err());
    let mut empty_addr = d[..8].to_vec();
    empty_addr.push(0);
    assert!(udp::decode(&empty_addr).is_err());
}

#[test]
fn udp_fragments_reassemble_in_any_order_and_are_bounded() {
    let payload: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
    let mut frags = Vec::new();
    assert!(udp::encode(&mut frags, 1, 42, "[::1]:53", &payload, 1000));
    assert_eq!(frags.len(), 4);
    assert!(frags.iter().all(|f| f.len() <= 1000));
    let mut dfr = Defragmenter::default();
    let mut done = None;
    for f in frags.iter().rev() {
        let m = udp::decode(f).unwrap();
        assert!(done.is_none());
        done = dfr.feed(&m, f);
    }
    let (addr, whole) = done.unwrap();
    assert_eq!(addr, b"[::1]:53");
    assert_eq!(whole, payload);
    assert_eq!(dfr.pending(), 0);
    // A duplicate fragment is not counted twice; a newer packet replaces a partial one.
    let m0 = udp::decode(&frags[0]).unwrap();
    assert!(dfr.feed(&m0, &frags[0]).is_none());
    assert!(dfr.feed(&m0, &frags[0]).is_none());
    let mut newer = Vec::new();
    assert!(udp::encode(&mut newer, 1, 43, "[::1]:53", &payload[..1500], 1000));
    for f in &newer {
        let m = udp::decode(f).unwrap();
        if let Some((_, p)) = dfr.feed(&m, f) {
            assert_eq!(p, &payload[..1500]);
        }
    }
    assert_eq!(dfr.pending(), 0);
    // Partial packets of many sessions: at most MAX_PARTIAL kept.
    for s in 0..(udp::MAX_PARTIAL as u32 + 10) {
        let mut f = Vec::new();
        assert!(udp::encode(&mut f, s, 1, "a:1", &payload, 1000));
        let m = udp::decode(&f[0]).unwrap();
        assert!(dfr.feed(&m, &f[0]).is_none());
    }
    assert_eq!(dfr.pending(), udp::MAX_PARTIAL);
    // Too big for 255 fragments, or no room for any payload: refused.
    let mut out = Vec::new();
    assert!(!udp::encode(&mut out, 1, 1, "a:1", &vec![0u8; 300 * 20], 20));
    assert!(!udp::encode(&mut out, 1, 1, "a:1", b"x", 12));
    assert!(out.is_empty());
}

/// A fragment flood (issue 11): 64 sessions each send all but one of 255 full-size
/// fragments, interleaved. Held payload stays within
/// [`udp::MAX_PARTIAL_BYTES`] and [`udp::MAX_PARTIAL`] sessions at every step (it was 64
/// sessions x 255 fragments, ~22 MiB per connection), packets larger than a datagram are
/// never kept, and a legitimate fragmented packet still comes through after the flood.
#[test]
fn udp_fragment_flood_holds_at_most_the_byte_bound() {
    const DATAGRAM: usize = 1350;
    let mut dfr = Defragmenter::default();
    let mut peak = (0, 0);
    let mut fed = 0usize;
    // Fixed header, address length and "[::1]:53": the rest of the datagram is payload.
    let room = DATAGRAM - udp::FIXED_HEADER - 1 - 8;
    let flood: Vec<Vec<Vec<u8>>> = (0..64u32)
        .map(|session| {
            let mut frags = Vec::new();
            assert!(udp::encode(
                &mut frags,
                session,
                1,
                "[::1]:53",
                &vec![0x5a; 255 * room],
                DATAGRAM
            ));
            assert_eq!(frags.len(), 255);
            frags
        })
        .collect();
    // Interleaved, as a flood would: fragment i of every session, then i + 1. 64 sessions
    // meet the count bound first, 12 the byte bound.
    for n in [64, 12] {
        dfr = Defragmenter::default();
        for i in 0..254 {
            for frags in &flood[..n] {
                let m = udp::decode(&frags[i]).unwrap();
                assert!(
                    dfr.feed(&m, &frags[i]).is_none(),
                    "a packet larger than a datagram completed"
                );
                fed += frags[i].len();
                peak = (peak.0.max(dfr.buffered()), peak.1.max(dfr.pending()));
                assert!(
                    dfr.buffered() <= udp::MAX_PARTIAL_BYTES,
                    "{} bytes held",
                    dfr.buffered()
                );
                assert!(dfr.pending() <= udp::MAX_PARTIAL);
            }
        }
    }
    eprintln!(
        "fragment flood: {} KiB fed, at most {} KiB in {} partial packets held",
        fed >> 10,
        peak.0 >> 10,
        peak.1
    );
    // Packets that fit a datagram, 8 sessions' worth interleaved: the byte bound still holds,
    // the oldest partials make way, and each packet is whole once its last fragment is in.
    let payload: Vec<u8> = (0..60_000u32).map(|i| i as u8).collect();
    let all: Vec<Vec<Vec<u8>>> = (0..8u32)
        .map(|s| {
            let mut f = Vec::new();
            assert!(udp::encode(&mut f, 1000 + s, 7, "1.2.3.4:5", &payload, DATAGRAM));
            f
        })
        .collect();
    let mut whole = 0;
    for i in 0..all[0].len() {
        for frags in &all {
            let m = udp::decode(&frags[i]).unwrap();
            if let Some((addr, p)) = dfr.feed(&m, &frags[i]) {
                assert_eq!(
                    (addr.as_slice(), p.as_slice()),
                    (&b"1.2.3.4:5"[..], payload.as_slice())
                );
                whole += 1;
            }
            assert!(dfr.buffered() <= udp::MAX_PARTIAL_BYTES);
        }
    }
    // Four largest-size packets fit the byte bound at once; of eight interleaved, the ones
    // that lost their oldest fragments are dropped, the rest complete.
    assert!(
        (1..=4).contains(&whole),
        "{whole} of 8 interleaved packets completed"
    );
    // One packet at a time (how a client sends): every one completes.
    for s in 0..8u32 {
        let mut done = 0;
        for f in &all[s as usize] {
            let m = udp::decode(f).unwrap();
            done += usize::from(dfr.feed(&m, f).is_some());
        }
        assert_eq!(done, 1, "packet of session {s}");
    }
}

proptest::proptest! {
    /// Network input never panics any parser, whatever it is.
    #[test]
    fn parsers_take_any_bytes(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
        let _ = parse_tcp_request(&data);
        let _ = h3::parse_request(&data);
        let _ = h3::decode_fields(&data);
        let _ = parse_address(&data);
        if let Ok(m) = udp::decode(&data) {
            let _ = Defragmenter::default().feed(&m, &data);
        }
        // The same bytes behind valid prefixes reach the deeper states.
        let mut req = vec![0x44, 0x01];
        req.extend_from_slice(&data);
        let _ = parse_tcp_request(&req);
        let mut block = vec![0x00, 0x00];
        block.extend_from_slice(&data);
        let _ = h3::decode_fields(&block);
        let mut frame = Vec::new();
        h3::put_frame(&mut frame, h3::FRAME_HEADERS, &block);
        let _ = h3::parse_request(&frame);
    }
}
