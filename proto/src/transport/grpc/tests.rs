#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]
use super::h2::{DataSink, Fed, H2Conn, RECV_WINDOW};
use super::*;

fn hx(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    hex::decode(s).unwrap()
}

/// A client frame, written out field by field (independent of `h2::frame`).
fn fr(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let l = payload.len();
    let mut v = vec![(l >> 16) as u8, (l >> 8) as u8, l as u8, ty, flags];
    v.extend_from_slice(&stream.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// What sing-box 1.14.4's gun client (grpc-go user agent, golang.org/x/net/http2) sent to a
/// plain TCP listener for a VLESS connection to 127.0.0.1:80 that wrote "hello": preface,
/// SETTINGS (ENABLE_PUSH 0, INITIAL_WINDOW_SIZE 4 MiB, MAX_FRAME_SIZE 1 MiB,
/// MAX_HEADER_LIST_SIZE 10 MiB), WINDOW_UPDATE(0, 1073676289), HEADERS on stream 1
/// (HPACK, Huffman: :authority 127.0.0.1:45385, :method POST, :path /gun/Tun, :scheme https,
/// user-agent grpc-go/1.48.0, te trailers, content-type application/grpc — decoded by
/// Python's `hpack` too), then two DATA frames: the VLESS request header in one Hunk, "hello"
/// in another.
const SING_BOX_CAPTURE: &str = "505249202a20485454502f322e300d0a0d0a534d0d0a0d0a000018040000000000000200000000000400400000000500100000000600a000000000040800000000004000000000003c010400000001418b089d5c0b8170dc69b65e6f834587626b6a637db57f877a8a9acac8b4c7602bb4f2e040027465864d833505b11f5f8b1d75d0620d263d4c4d6564000021000000000001000000001c0a1a00705d4adafc3248de951c2ab9d5765ce000010050017f00000100000c00000000000100000000070a0568656c6c6f";

/// Our answer to it, derived by hand from RFC 9113 / RFC 7541: SETTINGS (HEADER_TABLE_SIZE
/// 1024, MAX_CONCURRENT_STREAMS 1, INITIAL_WINDOW_SIZE 1 MiB, MAX_HEADER_LIST_SIZE 16 KiB),
/// WINDOW_UPDATE(0, 1 MiB - 65535), SETTINGS ACK, HEADERS(stream 1, END_HEADERS) `88`
/// (:status 200, static index 8) and `0f 10` (literal without indexing, name index 31 =
/// content-type) `10 application/grpc`.
const OUR_REPLY: &str = "000018 04 00 00000000 0001 00000400 0003 00000001 0004 00100000 0006 00004000
    000004 08 00 00000000 000f0001
    000000 04 01 00000000
    000014 01 04 00000001 88 0f10 10 6170706c69636174696f6e2f67727063";

fn vless_header() -> Vec<u8> {
    hx("00705d4adafc3248de951c2ab9d5765ce000010050017f000001")
}

fn settings() -> GrpcSettings {
    GrpcSettings {
        service_name: "gun".into(),
        multi_mode: false,
    }
}

/// Runs the handshake over `parts`, then the codec over what is left; returns the reply and
/// the stream bytes.
fn run(parts: &[&[u8]]) -> (Vec<u8>, Vec<u8>) {
    let mut h = GrpcHandshake::new(&settings());
    let mut i = 0;
    let up = loop {
        match h.feed(parts[i]).unwrap() {
            Upgrade::NeedMore => i += 1,
            Upgrade::Done(up) => break up,
            Upgrade::Reject(_) => panic!("rejected"),
        }
    };
    let mut framing = up.framing.unwrap();
    let mut out = up.early;
    assert_eq!(framing.open(&up.rest, &mut out).unwrap(), up.rest.len());
    for p in &parts[i + 1..] {
        assert_eq!(framing.open(p, &mut out).unwrap(), p.len());
    }
    (up.reply, out)
}

#[test]
fn sing_box_request_at_every_split() {
    let cap = hx(SING_BOX_CAPTURE);
    let mut want = vless_header();
    want.extend_from_slice(b"hello");
    for cut in 0..=cap.len() {
        let (a, b) = cap.split_at(cut);
        let (reply, out) = run(&[a, b]);
        assert_eq!(reply, hx(OUR_REPLY), "cut {cut}");
        assert_eq!(out, want, "cut {cut}");
    }
    // Byte by byte.
    let parts: Vec<&[u8]> = cap.chunks(1).collect();
    let (_, out) = run(&parts);
    assert_eq!(out, want);
}

/// Handshake + codec for the capture, the codec returned for more input.
fn gun_codec(extra_client_settings: &[u8]) -> (Box<dyn StreamCodec>, Vec<u8>) {
    let mut cap = hx(SING_BOX_CAPTURE);
    // Insert extra client SETTINGS right after the preface+SETTINGS (before HEADERS).
    let at = 24 + 9 + 24 + 13;
    let tail = cap.split_off(at);
    cap.extend_from_slice(extra_client_settings);
    cap.extend_from_slice(&tail);
    let mut h = GrpcHandshake::new(&settings());
    let Upgrade::Done(up) = h.feed(&cap).unwrap() else {
        panic!("not done")
    };
    let mut f = up.framing.unwrap();
    let mut out = Vec::new();
    f.open(&up.rest, &mut out).unwrap();
    (f, up.reply)
}

#[test]
fn server_paths_follow_xray() {
    let p = |s: &str| paths(s);
    assert_eq!(p("gun"), ("/gun/Tun".into(), "/gun/TunMulti".into()));
    assert_eq!(
        p("a b/c"),
        ("/a%20b%2Fc/Tun".into(), "/a%20b%2Fc/TunMulti".into())
    );
    assert_eq!(p("/a/b/Tun|TunM"), ("/a/b/Tun".into(), "/a/b/TunM".into()));
    assert_eq!(p("/a/b/x"), ("/a/b/x".into(), "/a/b/x".into()));
    assert_eq!(p("/my"), ("//my".into(), "//my".into()));
    assert_eq!(p(""), ("//Tun".into(), "//TunMulti".into()));
}

#[test]
fn wrong_path_gets_grpc_unimplemented_and_close() {
    let mut cap = hx(SING_BOX_CAPTURE);
    let mut h = GrpcHandshake::new(&GrpcSettings {
        service_name: "other".into(),
        multi_mode: false,
    });
    let Upgrade::Reject(reply) = h.feed(&cap).unwrap() else {
        panic!("accepted a wrong path")
    };
    // Preface, ack, then HEADERS with END_STREAM|END_HEADERS carrying grpc-status 12.
    let headers = hx("01 05 00000001");
    let at = reply.windows(6).position(|w| w == headers).unwrap();
    assert!(reply[at..].windows(15).any(|w| w == b"\x0bgrpc-status\x0212"));
    // Not HTTP/2 at all: closed without a reply.
    cap[0] = b'G';
    let mut h = GrpcHandshake::new(&settings());
    let Upgrade::Reject(reply) = h.feed(&cap).unwrap() else {
        panic!()
    };
    assert!(reply.is_empty());
}

/// RFC 7541 Appendix C.4: requests with Huffman coding, the later ones indexing the dynamic
/// table the first one filled. The first is served; the next two are refused with
/// RST_STREAM(REFUSED_STREAM) but still decoded, keeping the table in step.
#[test]
fn rfc7541_c4_request_blocks_and_refused_streams() {
    let mut c = H2Conn::default();
    let mut wire = h2::PREFACE.to_vec();
    wire.extend(fr(4, 0, 0, &[]));
    let c41 = hx("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff");
    // Split over HEADERS + CONTINUATION.
    wire.extend(fr(1, 0, 1, &c41[..5]));
    wire.extend(fr(9, 4, 1, &c41[5..]));
    let mut none = NoData;
    assert_eq!(c.feed(&wire, &mut none).unwrap(), Fed::Request(wire.len()));
    let req = c.take_request().unwrap();
    let want: Vec<(Vec<u8>, Vec<u8>)> = [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "www.example.com"),
    ]
    .iter()
    .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
    .collect();
    assert_eq!(req, want);
    let mut out = Vec::new();
    let mut sink = GunSinkForTest(&mut out);
    let mut more = fr(1, 4 | 1, 3, &hx("8286 84be 5886 a8eb 1064 9cbf"));
    more.extend(fr(
        1,
        4 | 1,
        5,
        &hx("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"),
    ));
    assert_eq!(c.feed(&more, &mut sink).unwrap(), Fed::All);
    // SETTINGS ACK first, then the two refusals.
    let mut want = hx("000000 04 01 00000000");
    want.extend(hx("000004 03 00 00000003 00000007"));
    want.extend(hx("000004 03 00 00000005 00000007"));
    let mut ctl = Vec::new();
    c.take_control(&mut ctl);
    assert_eq!(ctl, want);
    // A block that indexes past the table is an error, not a panic.
    let bad = fr(1, 4, 7, &hx("ff ff 7f"));
    assert!(c.feed(&bad, &mut sink).is_err());
}

struct GunSinkForTest<'a>(&'a mut Vec<u8>);

impl DataSink for GunSinkForTest<'_> {
    fn data(&mut self, b: &[u8]) -> Result<(), WireError> {
        self.0.extend_from_slice(b);
        Ok(())
    }
}

/// gRPC messages (written by hand) over DATA frames: a Hunk, a MultiHunk with two pieces and
/// an unknown varint field, an empty message, one spanning two frames, a padded frame.
#[test]
fn gun_messages_split_at_every_byte() {
    let m1 = hx("00 00000007 0a05 68656c6c6f"); // Hunk "hello"
    let m2 = hx("00 0000000d 0a03 616263 109601 0a03 646566"); // MultiHunk abc, def; field 2 = 150
    let m3 = hx("00 00000000");
    let big: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
    let mut m4 = hx("00 0000012f 0aac02"); // 1 + 2 + 300 = 303
    m4.extend_from_slice(&big);
    let mut stream = Vec::new();
    stream.extend(&m1);
    stream.extend(&m2);
    stream.extend(&m3);
    stream.extend(&m4);
    let (a, b) = stream.split_at(m1.len() + m2.len() + m3.len() + 100);
    let mut wire = fr(0, 0, 1, a);
    // Padded: pad length 3, then data, then 3 zero bytes.
    let mut padded = vec![3u8];
    padded.extend_from_slice(b);
    padded.extend_from_slice(&[0, 0, 0]);
    wire.extend(fr(0, 0x8, 1, &padded));
    // Unknown frame type 0x42 and PRIORITY are ignored.
    wire.extend(fr(0x42, 0, 0, b"xyz"));
    wire.extend(fr(2, 0, 1, &[0, 0, 0, 0, 16]));
    let mut want = b"helloabcdef".to_vec();
    want.extend_from_slice(&big);
    for cut in 0..=wire.len() {
        let (mut f, _) = gun_codec(&[]);
        let mut out = Vec::new();
        f.open(&wire[..cut], &mut out).unwrap();
        f.open(&wire[cut..], &mut out).unwrap();
        assert_eq!(out, want, "cut {cut}");
    }
}

#[test]
fn malformed_gun_and_h2_input_is_an_error() {
    let cases: Vec<Vec<u8>> = vec![
        fr(0, 0, 1, &hx("01 00000002 0a00")),      // compressed
        fr(0, 0, 1, &hx("00 00000003 0a05 6868")), // field longer than its message
        fr(0, 0, 1, &hx("00 00000002 0f00")),      // wire type 7
        fr(0, 0, 1, &hx("00 00000001 0a 00")),     // message ends inside a field
        fr(3, 0, 1, &hx("00000008")),              // RST_STREAM on our stream
        fr(7, 0, 0, &hx("00000001 00000002")),     // GOAWAY with an error
        fr(6, 0, 0, b"short"),                     // bad PING
        fr(8, 0, 1, &hx("00000000")),              // WINDOW_UPDATE of 0
        fr(5, 4, 1, &hx("00000002 82")),           // PUSH_PROMISE
        fr(0, 0x8, 1, &hx("05 00")),               // padding longer than the frame
        fr(9, 4, 1, &hx("82")),                    // CONTINUATION without HEADERS
        fr(4, 0, 0, &hx("0005 00000010")),         // MAX_FRAME_SIZE below 16384
        hx("ffffff 00 00 00000001"),               // frame over our max size
    ];
    for (i, c) in cases.iter().enumerate() {
        let (mut f, _) = gun_codec(&[]);
        let mut out = Vec::new();
        assert!(f.open(c, &mut out).is_err(), "case {i}");
    }
    // GOAWAY with NO_ERROR: the stream goes on.
    let (mut f, _) = gun_codec(&[]);
    let mut out = Vec::new();
    f.open(&fr(7, 0, 0, &hx("00000001 00000000")), &mut out).unwrap();
    f.open(&fr(0, 0, 1, &hx("00 00000003 0a01 41")), &mut out)
        .unwrap();
    assert_eq!(out, b"A");
}

#[test]
fn ping_is_answered_and_settings_acked() {
    let (mut f, _) = gun_codec(&[]);
    let mut out = Vec::new();
    f.open(&fr(6, 0, 0, b"12345678"), &mut out).unwrap();
    f.open(&fr(6, 1, 0, b"abcdefgh"), &mut out).unwrap(); // an ACK: no answer
    f.open(&fr(4, 0, 0, &[]), &mut out).unwrap();
    assert!(f.has_control());
    let mut ctl = Vec::new();
    f.take_control(&mut ctl).unwrap();
    let mut want = hx("000008 06 01 00000000");
    want.extend_from_slice(b"12345678");
    want.extend(hx("000000 04 01 00000000"));
    assert_eq!(ctl, want);
    assert!(!f.has_control());
}

/// Every DATA byte received is given back: WINDOW_UPDATE for connection and stream once half
/// of our 1 MiB window is used; a client that overruns the window is an error.
#[test]
fn receive_window_updates_and_overrun() {
    let (mut f, _) = gun_codec(&[]);
    // Frames of exactly 16384 bytes: one gRPC message each (5 + 1 + 2 + 16376).
    let mut msg = hx("00 00003ffb 0a f87f");
    msg.extend(std::iter::repeat_n(7u8, 16376));
    let frame = fr(0, 0, 1, &msg);
    let mut out = Vec::new();
    // The capture's two DATA frames already used 33 + 12 bytes.
    let used0 = 33 + 12;
    let n = (RECV_WINDOW as usize / 2 - used0).div_ceil(16384);
    for _ in 0..n {
        f.open(&frame, &mut out).unwrap();
    }
    assert_eq!(out.len(), n * 16376);
    let inc = (used0 + n * 16384) as u32;
    let mut want = fr(8, 0, 0, &inc.to_be_bytes());
    want.extend(fr(8, 0, 1, &inc.to_be_bytes()));
    let mut ctl = Vec::new();
    f.take_control(&mut ctl).unwrap();
    assert_eq!(ctl, want);
    // An honest client (reading our updates) goes on past the first window.
    for _ in 0..3 * n {
        f.open(&frame, &mut out).unwrap();
        f.take_control(&mut ctl).unwrap();
    }
    // Overrun: more than 1 MiB before any update could have been sent.
    let (mut g, _) = gun_codec(&[]);
    let burst = frame.repeat(RECV_WINDOW as usize / 16384 + 1);
    assert!(g.open(&burst, &mut out).is_err());
}

/// What we send respects the client's windows and frame size; held bytes go out as control
/// once WINDOW_UPDATE opens the window, and the codec reports itself blocked meanwhile.
#[test]
fn send_side_flow_control() {
    // Client: INITIAL_WINDOW_SIZE 10 (after its 4 MiB), MAX_FRAME_SIZE default.
    let (mut f, _) = gun_codec(&fr(4, 0, 0, &hx("0004 0000000a")));
    let plain = vec![0x55u8; 100];
    let mut out = Vec::new();
    f.seal(&plain, &mut out).unwrap();
    let mut msg = Vec::new();
    write_message(&plain, &mut msg);
    assert_eq!(msg.len(), 5 + 1 + 1 + 100);
    let data: Vec<u8> = out.split_off(out.len() - (9 + 10));
    assert_eq!(data, fr(0, 0, 1, &msg[..10]));
    assert!(f.send_blocked());
    // Stream window +50: 50 more bytes, as control.
    f.open(&fr(8, 0, 1, &50u32.to_be_bytes()), &mut out).unwrap();
    assert!(f.has_control());
    let mut ctl = Vec::new();
    f.take_control(&mut ctl).unwrap();
    assert_eq!(ctl, fr(0, 0, 1, &msg[10..60]));
    assert!(f.send_blocked());
    f.open(&fr(8, 0, 1, &1000u32.to_be_bytes()), &mut out).unwrap();
    let mut ctl = Vec::new();
    f.take_control(&mut ctl).unwrap();
    assert_eq!(ctl, fr(0, 0, 1, &msg[60..]));
    assert!(!f.send_blocked());

    // Frame size and connection window: the capture's client has a 4 MiB stream window and
    // a 1 GiB connection window but MAX_FRAME_SIZE 1 MiB; lower it back to 16384 frames.
    let (mut f, _) = gun_codec(&fr(4, 0, 0, &hx("0005 00004000")));
    let plain = vec![1u8; 40_000];
    let mut out = Vec::new();
    f.seal(&plain, &mut out).unwrap();
    let mut msg = Vec::new();
    write_message(&plain, &mut msg);
    // DATA frames of 16384, 16384, rest (the SETTINGS ACK went with the reply).
    let mut rest = &out[..];
    let mut got = Vec::new();
    while !rest.is_empty() {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        assert!(len <= 16384);
        assert_eq!(rest[3], 0);
        got.extend_from_slice(&rest[9..9 + len]);
        rest = &rest[9 + len..];
    }
    assert_eq!(got, msg);
}

#[test]
fn connection_window_limits_sending() {
    // A client that never raised the connection window (65535) but has a big stream window.
    let mut wire = h2::PREFACE.to_vec();
    wire.extend(fr(4, 0, 0, &hx("0004 00400000")));
    // :method POST (83), :path (static 4) and content-type (static 31) as literals without
    // indexing, no Huffman.
    let mut block = hx("83 04 08");
    block.extend_from_slice(b"/gun/Tun");
    block.extend(hx("0f10 10"));
    block.extend_from_slice(b"application/grpc");
    wire.extend(fr(1, 4, 1, &block));
    let mut h = GrpcHandshake::new(&settings());
    let up = match h.feed(&wire).unwrap() {
        Upgrade::Done(up) => up,
        Upgrade::Reject(r) => panic!("rejected {r:x?}"),
        Upgrade::NeedMore => panic!("need more"),
    };
    let mut f = up.framing.unwrap();
    let mut out = Vec::new();
    f.seal(&vec![9u8; 100_000], &mut out).unwrap();
    let mut rest = &out[..];
    let mut sent = 0;
    while !rest.is_empty() {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        if rest[3] == 0 {
            sent += len;
        }
        rest = &rest[9 + len..];
    }
    assert_eq!(sent, 65535);
    assert!(f.send_blocked());
    f.open(&fr(8, 0, 0, &1_000_000u32.to_be_bytes()), &mut out)
        .unwrap();
    assert!(!f.send_blocked());
    let mut ctl = Vec::new();
    f.take_control(&mut ctl).unwrap();
    assert_eq!(ctl.len(), 100_000 + 5 + 1 + 3 - 65535 + 9 * 3);
}

/// What waits for a client that neither opens its window nor reads is bounded.
#[test]
fn held_and_control_bytes_are_bounded() {
    let (mut f, _) = gun_codec(&fr(4, 0, 0, &hx("0004 00000000")));
    let chunk = vec![0u8; 1 << 20];
    let mut out = Vec::new();
    let mut results = Vec::new();
    for _ in 0..5 {
        results.push(f.seal(&chunk, &mut out).is_ok());
    }
    assert_eq!(results, [true, true, true, false, false]);
    assert!(out.is_empty());
    // A PING flood whose answers are never taken: GOAWAY ENHANCE_YOUR_CALM, and the codec
    // over budget until it has left; then the connection ends.
    let (mut f, _) = gun_codec(&[]);
    let ping = fr(6, 0, 0, b"12345678");
    for _ in 0..(h2::MAX_CONTROL / 17 / 100 + 2) {
        f.open(&ping.repeat(100), &mut out).unwrap();
    }
    assert!(f.output_over_budget());
    let mut ctl = Vec::new();
    f.take_control(&mut ctl).unwrap();
    assert!(ctl.len() <= 17 * (h2::FLOOD_FRAMES as usize + 1), "{}", ctl.len());
    assert!(ctl.ends_with(&hx("000008 07 00 00000000 00000001 0000000b")));
    assert!(!f.output_over_budget());
    assert!(f.open(&ping, &mut out).is_err());
}

/// Gun over the capture's connection, with the request done: DATA frames for stream 1
/// carrying one gRPC message each.
fn hunk(data: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    write_message(data, &mut m);
    fr(0, 0, 1, &m)
}

/// Frames that carry nothing for the tunnel, each sent past the flood limit within one
/// window: GOAWAY(last stream 1, ENHANCE_YOUR_CALM), nothing else answered after it, and the
/// next read is an error. Today's main answered (or ignored) every one of them for ever.
#[test]
fn control_frame_floods_end_with_goaway_enhance_your_calm() {
    let floods: [(&str, Vec<u8>); 8] = [
        ("SETTINGS", fr(4, 0, 0, &[])),
        ("SETTINGS ACK", fr(4, 1, 0, &[])),
        ("PING", fr(6, 0, 0, b"12345678")),
        ("PING ACK", fr(6, 1, 0, b"12345678")),
        ("WINDOW_UPDATE", fr(8, 0, 0, &hx("00000001"))),
        ("RST_STREAM", fr(3, 0, 3, &hx("00000008"))),
        ("PRIORITY", fr(2, 0, 3, &hx("00000000 10"))),
        ("empty DATA", fr(0, 0, 1, &[])),
    ];
    let goaway = hx("000008 07 00 00000000 00000001 0000000b");
    for (name, frame) in floods {
        let (mut f, _) = gun_codec(&[]);
        let mut out = Vec::new();
        let mut ctl = Vec::new();
        // In reads of 100 frames, the client never reading our answers.
        for _ in 0..(h2::FLOOD_FRAMES as usize / 100 + 2) {
            f.open(&frame.repeat(100), &mut out).unwrap();
        }
        assert!(out.is_empty(), "{name}");
        assert!(
            f.output_over_budget(),
            "{name}: GOAWAY must leave before more is read"
        );
        f.take_control(&mut ctl).unwrap();
        assert!(
            ctl.ends_with(&goaway),
            "{name}: {:02x?}",
            &ctl[ctl.len().saturating_sub(40)..]
        );
        assert!(
            ctl.len() <= 17 * (h2::FLOOD_FRAMES as usize + 1),
            "{name}: {}",
            ctl.len()
        );
        assert!(f.open(&frame, &mut out).is_err(), "{name}");
    }
    // Refused streams (HEADERS `82`: :method GET on streams 3, 5, …) count too.
    let (mut f, _) = gun_codec(&[]);
    let mut wire = Vec::new();
    for i in 0..(h2::FLOOD_FRAMES + 1) {
        wire.extend(fr(1, 4 | 1, 3 + 2 * i, &hx("82")));
    }
    f.open(&wire, &mut Vec::new()).unwrap();
    let mut ctl = Vec::new();
    f.take_control(&mut ctl).unwrap();
    assert!(ctl.ends_with(&goaway));
    // Before the request: our SETTINGS then GOAWAY, and the handshake ends.
    let mut wire = hx(SING_BOX_CAPTURE)[..24 + 9 + 24].to_vec();
    wire.extend(fr(6, 0, 0, b"12345678").repeat(h2::FLOOD_FRAMES as usize + 1));
    let mut h = GrpcHandshake::new(&settings());
    let Upgrade::Reject(reply) = h.feed(&wire).unwrap() else {
        panic!("a PING flood before the request was not refused")
    };
    assert!(reply.starts_with(&hx("000018 04 00 00000000")));
    assert!(reply.ends_with(&hx("000008 07 00 00000000 00000000 0000000b")));
}

/// What a real client sends alongside traffic is no flood: a WINDOW_UPDATE (connection and
/// stream) for every 4 KiB we sent, a PING after each DATA (grpc-go's BDP probe), and a few
/// control frames spread over time.
#[test]
fn control_frames_with_traffic_are_no_flood() {
    let (mut f, _) = gun_codec(&fr(4, 0, 0, &hx("0004 7fffffff")));
    let mut out = Vec::new();
    let mut wire = Vec::new();
    for _ in 0..4 * h2::FLOOD_FRAMES {
        f.seal(&[7u8; 16 * 1024], &mut wire).unwrap();
        let mut up = Vec::new();
        for _ in 0..4 {
            up.extend(fr(8, 0, 0, &hx("00001000")));
            up.extend(fr(8, 0, 1, &hx("00001000")));
        }
        up.extend(fr(6, 0, 0, b"bdp-ping"));
        f.open(&up, &mut out).unwrap();
        f.take_control(&mut Vec::new()).unwrap();
    }
    f.open(&hunk(b"still here"), &mut out).unwrap();
    assert_eq!(out, b"still here");
    // Pings and SETTINGS changes without traffic, below the limit in every window.
    let mut c = H2Conn::default();
    let mut wire = h2::PREFACE.to_vec();
    wire.extend(fr(1, 4, 1, &hx("83")));
    assert!(matches!(c.feed(&wire, &mut NoData).unwrap(), Fed::Request(_)));
    c.take_request().unwrap();
    for _ in 0..10 {
        let mut up = fr(6, 0, 0, b"keepaliv").repeat(h2::FLOOD_FRAMES as usize / 2);
        up.extend(fr(4, 0, 0, &hx("0004 7fffffff")));
        assert_eq!(c.feed(&up, &mut NoData).unwrap(), Fed::All);
        assert!(!c.flooded());
        c.take_control(&mut Vec::new());
        // Time passes: the next frames fall in a new window.
        c.age_flood_window();
    }
}

/// PING answers queued for a client that sends DATA but does not read put the codec over its
/// output budget (the relay then stops reading from it) before they reach 2 budgets.
#[test]
fn unread_answers_put_the_codec_over_budget() {
    let (mut f, _) = gun_codec(&[]);
    let mut out = Vec::new();
    let mut n = 0;
    while !f.output_over_budget() {
        let mut up = hunk(b"x");
        up.extend(fr(6, 0, 0, b"12345678"));
        f.open(&up, &mut out).unwrap();
        n += 1;
        assert!(n < 10_000, "never over budget");
    }
    let mut ctl = Vec::new();
    f.take_control(&mut ctl).unwrap();
    assert!(ctl.len() > h2::CONTROL_BUDGET && ctl.len() < 2 * h2::CONTROL_BUDGET);
    assert!(!f.output_over_budget());
    assert_eq!(out.len(), n);
}

/// An HPACK bomb: one 4000-byte header inserted into the dynamic table, then referenced
/// (one byte each) for the rest of a 16 KiB HEADERS frame — 12,000 references, ~48 MB
/// decoded (today's main decoded all of it: 235 MiB for a 64 KiB block). Decoding stops once
/// the list passes SETTINGS_MAX_HEADER_LIST_SIZE, after a handful of fields.
#[test]
fn hpack_bomb_stops_at_the_header_list_limit() {
    let mut block = vec![0x40, 0x01, b'x', 0x7f];
    // Value length 4000 = 127 + 3873: 3873 = 0x21 + 0x1e * 128 → a1 1e.
    block.extend_from_slice(&[0xa1, 0x1e]);
    block.extend(std::iter::repeat_n(b'v', 4000));
    block.extend(std::iter::repeat_n(0xbe, 16 * 1024 - 9 - block.len()));
    let mut decoded = 0usize;
    let mut hpack = loona_hpack::Decoder::new();
    let r = h2::decode_bounded(&mut hpack, &block, h2::MAX_HEADER_LIST, |n, v| {
        decoded += n.len() + v.len() + 32;
    });
    assert!(r.is_err());
    assert!(decoded <= h2::MAX_HEADER_LIST, "{decoded}");
    // Through the connection: an error (the handshake closes without a word).
    let mut c = H2Conn::default();
    let mut wire = h2::PREFACE.to_vec();
    wire.extend(fr(4, 0, 0, &[]));
    wire.extend(fr(1, 4 | 1, 1, &block[..block.len()]));
    assert!(c.feed(&wire, &mut NoData).is_err());
    let mut h = GrpcHandshake::new(&settings());
    assert!(matches!(h.feed(&wire).unwrap(), Upgrade::Reject(r) if r.is_empty()));
    // The same fields within the limit decode, Huffman and size updates included (the
    // RFC 7541 C.4 and C.6 blocks are covered above and by the capture).
    let mut hpack = loona_hpack::Decoder::new();
    let mut got = Vec::new();
    let ok = [&[0x20u8, 0x3f, 0xe1, 0x1f][..], &block[..4006], &[0xbe, 0xbe]].concat();
    h2::decode_bounded(&mut hpack, &ok, h2::MAX_HEADER_LIST, |n, v| {
        got.push((n.to_vec(), v.len()))
    })
    .unwrap();
    assert_eq!(got, vec![(b"x".to_vec(), 4000); 3]);
    // Truncated representations are errors.
    for bad in [&[0x40, 0x01][..], &[0xff], &[0x00, 0x85, b'a'], &[0x3f, 0xe1]] {
        assert!(h2::decode_bounded(&mut loona_hpack::Decoder::new(), bad, 1 << 20, |_, _| {}).is_err());
    }
}

/// A header block in more frames than a request needs (a CONTINUATION flood) is refused, as
/// is one larger than 16 KiB.
#[test]
fn continuation_floods_are_bounded() {
    let mut c = H2Conn::default();
    let mut wire = h2::PREFACE.to_vec();
    wire.extend(fr(1, 0, 1, &hx("82")));
    for _ in 0..h2::MAX_BLOCK_FRAMES {
        wire.extend(fr(9, 0, 1, &[]));
    }
    assert!(c.feed(&wire, &mut NoData).is_err());
    let mut c = H2Conn::default();
    let mut wire = h2::PREFACE.to_vec();
    wire.extend(fr(1, 0, 1, &[0x82; 16 * 1024]));
    wire.extend(fr(9, 4, 1, &[0x82]));
    assert!(c.feed(&wire, &mut NoData).is_err());
}

/// The client's END_STREAM is its half-close; our end is the trailers `grpc-status: 0`
/// (HEADERS, END_HEADERS | END_STREAM, stream 1; `00 0b grpc-status 01 30`: literal without
/// indexing, new name), sent once.
#[test]
fn end_stream_and_trailers() {
    let (mut f, _) = gun_codec(&[]);
    assert!(!f.input_ended());
    let mut out = Vec::new();
    f.open(&fr(0, 0x1, 1, &hx("00 00000003 0a01 21")), &mut out)
        .unwrap();
    assert_eq!(out, b"!");
    assert!(f.input_ended());
    let mut tr = Vec::new();
    f.close_output(&mut tr).unwrap();
    assert_eq!(tr, hx("00000f 01 05 00000001 00 0b 677270632d737461747573 01 30"));
    let mut again = Vec::new();
    f.close_output(&mut again).unwrap();
    assert!(again.is_empty());
}
