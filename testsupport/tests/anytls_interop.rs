//! AnyTLS: the real sing-box client (1.14, its `anytls` outbound) and a raw protocol client
//! against v2sp's AnyTLS node.
//!
//! * sing-box over TLS (`CertMode: self`): TCP echo transfers, sha256-checked both ways, one
//!   after another (sing-box reuses an idle session: stream ids 2, 3, … on one connection,
//!   which needs the v2 synack within 3 s or the client drops the session) and concurrently
//!   (one session per busy stream, as sing-box opens them); a stream to a closed port fails
//!   alone (synack with an error) and the session goes on; UDP through sing-box's
//!   UDP-over-TCP v2 comes back intact. The panel receives exactly the payload bytes per user;
//!   a wrong password gets nothing through and is never accounted.
//! * The shoes client (0.3.2, its `anytls` client inside `tls`): TCP echo transfers one after
//!   another and concurrently, sha256-checked, and UDP through its UDP-over-TCP v2 (connect
//!   mode); exact per-user totals; an unknown password gets nothing through.
//! * A raw client (plaintext node, `CertMode: none`, as behind a TLS terminator) opens several
//!   streams at once in one session with interleaved frames: settings are answered (padding
//!   scheme update, serverSettings v=2), each stream gets its synack and its own echo back,
//!   exact totals; a wrong password goes to the node's fallback with the bytes it sent; a
//!   removed user's session and its streams' destination connections are closed.
//! * The panel's `padding_scheme` is sent to sing-box, whose next session pads by it.
//! * The user's speed limit holds across one session's streams, with exact upload totals; the
//!   device limit admits sessions from exactly N source IPs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use v2sp_testsupport::harness::{
    eof_counter, expect, free_port, payload, rss_bytes, self_signed_certs, sha256, sing_box_outbound,
    socks5_connect, tcp_echo_through, udp_echo_through, Echo, NodeSpec, Recorder, Totals, V2sp,
};
use v2sp_testsupport::panel_sim::{user, users};
use v2sp_testsupport::peers::shoes;

const UUIDS: [&str; 3] = [
    "705d4ada-fc32-48de-951c-2ab9d5765ce0",
    "0c6a030a-1aa1-4938-9cd7-d5ec4d9aee4e",
    "9a3e1d52-7b64-4c1f-8e0a-5d2f6b9c1e47",
];
const STRANGER: &str = "11111111-2222-4333-8444-555555555555";
const DOMAIN: &str = "v2sp.test";

fn anytls_node(node_id: u32, info_extra: Value) -> NodeSpec {
    let port = free_port();
    let mut info = json!({"node_type": "anytls", "server_port": port, "server_name": DOMAIN,
                          "tls_settings": {"server_name": DOMAIN},
                          "base_config": {"push_interval": 1, "pull_interval": 1}});
    if let (Some(m), Some(x)) = (info.as_object_mut(), info_extra.as_object()) {
        for (k, v) in x {
            m.insert(k.clone(), v.clone());
        }
    }
    NodeSpec {
        node_id,
        port,
        info,
        users: users(&UUIDS),
    }
}

fn sing_box_anytls(
    port: u16,
    password: &str,
    dir: &std::path::Path,
) -> (v2sp_testsupport::harness::Proc, u16) {
    let out = json!({"type": "anytls", "server": "127.0.0.1", "server_port": port, "password": password,
                     "tls": {"enabled": true, "server_name": DOMAIN, "insecure": true}});
    sing_box_outbound(out, dir).unwrap_or_else(|e| panic!("sing-box: {e:#}"))
}

#[test]
fn sing_box_anytls_tcp_and_udp_with_exact_accounting() {
    let echo = Echo::start().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let v = V2sp::start(
        vec![anytls_node(1, json!({}))],
        self_signed_certs(certs.path(), DOMAIN),
    )
    .unwrap();
    let n = &v.nodes[0];
    let mut failures = Vec::new();
    let mut expected: Totals = BTreeMap::new();
    for uidx in [0usize, 1] {
        let what = format!("sing-box anytls user {}", uidx + 1);
        // Counts the client's connections (sessions) to the node.
        let rec = Recorder::start(n.port).unwrap();
        let (proc_, socks) = sing_box_anytls(rec.port, UUIDS[uidx], v.dir.path());
        let mut moved = 0u64;
        // One after another: an idle session is reused.
        const SEQUENTIAL: usize = 4;
        for k in 0..SEQUENTIAL {
            let data = payload((300 << 10) + k * 4099 + uidx, (uidx * 100 + k) as u64);
            match tcp_echo_through(socks, echo.port, &data) {
                Ok(b) => moved += b,
                Err(e) => failures.push(format!("{what} sequential {k}: {e:#}\n{}", proc_.log())),
            }
            // Let the client see the stream's end and put its session back in the pool.
            std::thread::sleep(Duration::from_millis(300));
        }
        let sessions = rec.captured.lock().unwrap().len();
        eprintln!("{what}: {SEQUENTIAL} sequential streams over {sessions} session(s)");
        if sessions == 0 || sessions >= SEQUENTIAL {
            failures.push(format!(
                "{what}: {sessions} sessions for {SEQUENTIAL} sequential streams: not reused"
            ));
        }
        // Concurrently.
        let threads: Vec<_> = (0..4)
            .map(|k| {
                let data = payload((1 << 20) + k * 77_777, (uidx * 1000 + k) as u64);
                let port = echo.port;
                std::thread::spawn(move || tcp_echo_through(socks, port, &data))
            })
            .collect();
        for (k, t) in threads.into_iter().enumerate() {
            match t.join().unwrap() {
                Ok(b) => moved += b,
                Err(e) => failures.push(format!("{what} concurrent {k}: {e:#}\n{}", proc_.log())),
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        // A destination that refuses: that stream fails alone, the next one works.
        let closed = free_port();
        if tcp_echo_through(socks, closed, &payload(4096, 5)).is_ok() {
            failures.push(format!("{what}: data went through to a closed port"));
        }
        std::thread::sleep(Duration::from_millis(300));
        match tcp_echo_through(socks, echo.port, &payload(70_000, 6)) {
            Ok(b) => moved += b,
            Err(e) => failures.push(format!("{what} after a refused stream: {e:#}\n{}", proc_.log())),
        }
        // UDP over sing-box's UDP-over-TCP v2.
        let (count, size) = if uidx == 0 { (20, 1200) } else { (7, 333) };
        match udp_echo_through(socks, echo.port, count, size) {
            Ok(b) => moved += b,
            Err(e) => failures.push(format!("{what} udp: {e:#}\n{}", proc_.log())),
        }
        expect(&mut expected, n.node_id, uidx as u32 + 1, moved, moved);
        drop(proc_);
    }
    // Not a user: nothing comes back, nothing is accounted.
    let (proc_, socks) = sing_box_anytls(n.port, STRANGER, v.dir.path());
    if tcp_echo_through(socks, echo.port, &payload(4096, 99)).is_ok() {
        failures.push("anytls: data went through for an unknown password".to_string());
    }
    drop(proc_);
    v.finish(&failures, &expected);
}

#[test]
fn shoes_anytls_tcp_and_udp_with_exact_accounting() {
    let echo = Echo::start().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let v = V2sp::start(
        vec![anytls_node(1, json!({}))],
        self_signed_certs(certs.path(), DOMAIN),
    )
    .unwrap();
    let n = &v.nodes[0];
    let client = |uuid: &str| {
        shoes::client(n.port, shoes::tls(DOMAIN, shoes::anytls(uuid)), v.dir.path())
            .unwrap_or_else(|e| panic!("shoes client: {e:#}"))
    };
    let mut failures = Vec::new();
    let mut expected: Totals = BTreeMap::new();
    for uidx in [0usize, 1] {
        let what = format!("shoes anytls user {}", uidx + 1);
        let (proc_, socks) = client(UUIDS[uidx]);
        let mut moved = 0u64;
        for k in 0..3 {
            let data = payload((200 << 10) + k * 5003 + uidx, (uidx * 100 + k) as u64);
            match tcp_echo_through(socks, echo.port, &data) {
                Ok(b) => moved += b,
                Err(e) => failures.push(format!("{what} sequential {k}: {e:#}\n{}", proc_.log())),
            }
        }
        let threads: Vec<_> = (0..3)
            .map(|k| {
                let data = payload((1 << 20) + k * 65_537, (uidx * 1000 + k) as u64);
                let port = echo.port;
                std::thread::spawn(move || tcp_echo_through(socks, port, &data))
            })
            .collect();
        for (k, t) in threads.into_iter().enumerate() {
            match t.join().unwrap() {
                Ok(b) => moved += b,
                Err(e) => failures.push(format!("{what} concurrent {k}: {e:#}\n{}", proc_.log())),
            }
        }
        let (count, size) = if uidx == 0 { (16, 1200) } else { (5, 321) };
        match udp_echo_through(socks, echo.port, count, size) {
            Ok(b) => moved += b,
            Err(e) => failures.push(format!("{what} udp: {e:#}\n{}", proc_.log())),
        }
        expect(&mut expected, n.node_id, uidx as u32 + 1, moved, moved);
        drop(proc_);
    }
    let (proc_, socks) = client(STRANGER);
    if tcp_echo_through(socks, echo.port, &payload(4096, 98)).is_ok() {
        failures.push("shoes anytls: data went through for an unknown password".to_string());
    }
    drop(proc_);
    v.finish(&failures, &expected);
}

// ---- raw client -------------------------------------------------------------------------

const SYN: u8 = 1;
const PSH: u8 = 2;
const FIN: u8 = 3;
const SETTINGS: u8 = 4;
const UPDATE_PADDING: u8 = 6;
const SYNACK: u8 = 7;
const SERVER_SETTINGS: u8 = 10;

fn frame(cmd: u8, sid: u32, data: &[u8]) -> Vec<u8> {
    let mut v = vec![cmd];
    v.extend_from_slice(&sid.to_be_bytes());
    v.extend_from_slice(&(data.len() as u16).to_be_bytes());
    v.extend_from_slice(data);
    v
}

fn auth(uuid: &str, pad: usize) -> Vec<u8> {
    let mut v = Sha256::digest(uuid.as_bytes()).to_vec();
    v.extend_from_slice(&(pad as u16).to_be_bytes());
    v.extend(std::iter::repeat_n(0u8, pad));
    v
}

fn dest_v4(port: u16) -> Vec<u8> {
    let p = port.to_be_bytes();
    vec![1, 127, 0, 0, 1, p[0], p[1]]
}

fn read_frame(s: &mut TcpStream) -> std::io::Result<(u8, u32, Vec<u8>)> {
    let mut h = [0u8; 7];
    s.read_exact(&mut h)?;
    let len = usize::from(u16::from_be_bytes([h[5], h[6]]));
    let mut data = vec![0u8; len];
    s.read_exact(&mut data)?;
    Ok((h[0], u32::from_be_bytes([h[1], h[2], h[3], h[4]]), data))
}

/// A raw session: authenticated, settings sent (v2, a padding md5 that differs from the
/// server's) and answered.
fn raw_session(port: u16, uuid: &str) -> TcpStream {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut hello = auth(uuid, 30);
    hello.extend(frame(SETTINGS, 0, b"v=2\nclient=v2sp-test/0\npadding-md5=0123"));
    s.write_all(&hello).unwrap();
    let (c, _, d) = read_frame(&mut s).unwrap();
    assert_eq!(c, UPDATE_PADDING, "scheme update expected first");
    assert!(
        String::from_utf8_lossy(&d).starts_with("stop=8\n0=30-30\n"),
        "{d:?}"
    );
    let (c, _, d) = read_frame(&mut s).unwrap();
    assert_eq!((c, d.as_slice()), (SERVER_SETTINGS, &b"v=2"[..]));
    s
}

/// A web server standing in for the fallback site: answers anything with a fixed page.
fn fallback_site() -> (u16, Arc<std::sync::Mutex<Vec<u8>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let g2 = got.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut s = s;
            s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
            let mut b = [0u8; 4096];
            while let Ok(n) = s.read(&mut b) {
                if n == 0 {
                    break;
                }
                g2.lock().unwrap().extend_from_slice(&b[..n]);
            }
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nsite");
        }
    });
    (port, got)
}

#[test]
fn raw_client_concurrent_streams_fallback_and_user_removal() {
    let echo = Echo::start().unwrap();
    let (site, site_got) = fallback_site();
    let nodes = vec![anytls_node(1, json!({}))];
    let extra = json!({"EnableFallback": true, "FallBackConfigs": [{"Dest": format!("127.0.0.1:{site}")}]});
    let v = V2sp::start(nodes, extra).unwrap();
    let port = v.nodes[0].port;
    let mut expected: Totals = BTreeMap::new();

    // Several streams at once in one session, frames interleaved.
    let mut s = raw_session(port, UUIDS[0]);
    const STREAMS: u32 = 5;
    let datas: HashMap<u32, Vec<u8>> = (1..=STREAMS)
        .map(|sid| (sid, payload(200_000 + sid as usize * 1013, u64::from(sid) + 7)))
        .collect();
    let mut opening = Vec::new();
    for sid in 1..=STREAMS {
        opening.extend(frame(SYN, sid, &[]));
        opening.extend(frame(PSH, sid, &dest_v4(echo.port)));
    }
    // One stream to a closed port.
    let closed = free_port();
    opening.extend(frame(SYN, 99, &[]));
    opening.extend(frame(PSH, 99, &dest_v4(closed)));
    s.write_all(&opening).unwrap();
    let mut w = s.try_clone().unwrap();
    let to_send = datas.clone();
    let writer = std::thread::spawn(move || {
        let mut off = 0;
        loop {
            let mut buf = Vec::new();
            for sid in 1..=STREAMS {
                let d = &to_send[&sid];
                if off < d.len() {
                    let end = (off + 7000).min(d.len());
                    buf.extend(frame(PSH, sid, &d[off..end]));
                }
            }
            if buf.is_empty() {
                break;
            }
            w.write_all(&buf).unwrap();
            off += 7000;
        }
    });
    let mut back: HashMap<u32, Vec<u8>> = HashMap::new();
    let mut acked = Vec::new();
    let mut refused = None;
    let mut closed_fin = false;
    let total: usize = datas.values().map(Vec::len).sum();
    while back.values().map(Vec::len).sum::<usize>() < total || refused.is_none() || !closed_fin {
        let (c, sid, d) = read_frame(&mut s).unwrap_or_else(|e| panic!("{e}\n{}", v.agent.log()));
        match c {
            SYNACK if sid == 99 => refused = Some(String::from_utf8_lossy(&d).to_string()),
            SYNACK => {
                assert!(
                    d.is_empty(),
                    "stream {sid} failed: {}",
                    String::from_utf8_lossy(&d)
                );
                assert!(!back.contains_key(&sid), "synack after data on {sid}");
                acked.push(sid);
            }
            PSH => {
                assert!(acked.contains(&sid), "data before synack on {sid}");
                back.entry(sid).or_default().extend_from_slice(&d);
            }
            FIN if sid == 99 => closed_fin = true,
            other => panic!("unexpected frame {other} on {sid}"),
        }
    }
    writer.join().unwrap();
    assert!(!refused.unwrap().is_empty(), "the refusal carries an error text");
    let mut moved = 0u64;
    for sid in 1..=STREAMS {
        assert_eq!(sha256(&back[&sid]), sha256(&datas[&sid]), "stream {sid}");
        moved += datas[&sid].len() as u64;
    }
    // The client closes its streams: the server sends nothing more for them.
    let mut fins = Vec::new();
    for sid in 1..=STREAMS {
        fins.extend(frame(FIN, sid, &[]));
    }
    s.write_all(&fins).unwrap();

    // A second session of user 2 holds a stream open; removing the user closes the session
    // and the stream's destination connection.
    let (hport, hclosed) = eof_counter(Duration::from_secs(30)).unwrap();
    let mut s2 = raw_session(port, UUIDS[1]);
    let mut o = frame(SYN, 1, &[]);
    let mut first = dest_v4(hport);
    first.extend_from_slice(b"hi");
    o.extend(frame(PSH, 1, &first));
    s2.write_all(&o).unwrap();
    assert_eq!(read_frame(&mut s2).unwrap(), (SYNACK, 1, vec![]));
    assert_eq!(read_frame(&mut s2).unwrap(), (PSH, 1, b"ok".to_vec()));
    expect(&mut expected, 1, 1, moved, moved);
    expect(&mut expected, 1, 2, 2, 2);
    v.wait_totals(1, &expected[&1], Duration::from_secs(20)).unwrap();
    v.sim.set_users(1, vec![user(1, UUIDS[0]), user(3, UUIDS[2])]);
    v.wait_destinations_closed(&hclosed, 1);
    s2.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 16];
    assert!(matches!(s2.read(&mut b), Ok(0) | Err(_)), "session still open");

    // A wrong password: the fallback site gets every byte sent and answers; no frame comes.
    let mut p = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    p.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut probe = auth(STRANGER, 0);
    probe.extend(frame(SETTINGS, 0, b"v=2"));
    p.write_all(&probe).unwrap();
    let mut answer = Vec::new();
    let _ = p.read_to_end(&mut answer);
    assert!(
        answer.ends_with(b"site"),
        "fallback answer: {:?}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(*site_got.lock().unwrap(), probe);
    // Totals unchanged by the fallback (user 1's session is still open, idle).
    std::thread::sleep(Duration::from_secs(3));
    v.finish(&[], &expected);
    drop(s);
}

/// The panel's `padding_scheme` reaches the client: sing-box's first session (the reference
/// default: padding0 of 30 bytes) is sent the node's scheme, and the session it opens next
/// pads its authentication by that scheme (77 bytes).
#[test]
fn sing_box_takes_the_panels_padding_scheme() {
    let echo = Echo::start().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let scheme = json!({"padding_scheme": ["stop=3", "0=77-77", "1=100-200", "2=300-400"]});
    let v = V2sp::start(
        vec![anytls_node(1, scheme)],
        self_signed_certs(certs.path(), DOMAIN),
    )
    .unwrap();
    let n = &v.nodes[0];
    let rec = Recorder::start(n.port).unwrap();
    let (proc_, socks) = sing_box_anytls(rec.port, UUIDS[0], v.dir.path());
    let mut moved = tcp_echo_through(socks, echo.port, &payload(5000, 1)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // The idle session serves one stream; while that stream is open the session is busy, so
    // the next connection must open a second session. (Two transfers started "at once" were
    // not enough: on a loaded machine the first could end before the second began.)
    let mut held = socks5_connect(socks, echo.port).unwrap();
    held.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let first = payload(300_000, 10);
    let mut back = vec![0u8; first.len()];
    for (out, inp) in first.chunks(16 * 1024).zip(back.chunks_mut(16 * 1024)).take(1) {
        held.write_all(out).unwrap();
        held.read_exact(inp).unwrap();
    }
    moved += tcp_echo_through(socks, echo.port, &payload(300_000, 11))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", proc_.log()));
    for (out, inp) in first.chunks(16 * 1024).zip(back.chunks_mut(16 * 1024)).skip(1) {
        held.write_all(out).unwrap();
        held.read_exact(inp).unwrap();
    }
    assert!(back == first, "the held stream's echo differs");
    drop(held);
    moved += first.len() as u64;
    // The Recorder sees TLS records, not the padding: the padding length shows in the size of
    // the client's second application-data record (the first is its encrypted Finished):
    // sing-box writes the authentication in one record before any frame, 32 + 2 + 30 bytes
    // in the first session, 32 + 2 + 77 in the second.
    let firsts: Vec<usize> = rec
        .captured
        .lock()
        .unwrap()
        .iter()
        .map(|c| auth_record_len(c).unwrap_or(0))
        .collect();
    eprintln!("authentication record sizes per session: {firsts:?}");
    assert_eq!(firsts.len(), 2, "sessions: {firsts:?}\n{}", proc_.log());
    // TLS 1.3 record = plaintext + 1 content-type byte + 16-byte tag.
    assert_eq!(firsts[0], 32 + 2 + 30 + 17, "{firsts:?}");
    assert_eq!(firsts[1], 32 + 2 + 77 + 17, "{firsts:?}");
    let mut expected: Totals = BTreeMap::new();
    expect(&mut expected, 1, 1, moved, moved);
    v.finish(&[], &expected);
    drop(proc_);
}

/// Length of the second TLS application-data record (type 23) a client sent.
fn auth_record_len(mut b: &[u8]) -> Option<usize> {
    let mut seen = 0;
    while b.len() >= 5 {
        let len = usize::from(u16::from_be_bytes([b[3], b[4]]));
        if b[0] == 23 {
            seen += 1;
            if seen == 2 {
                return Some(len);
            }
        }
        b = b.get(5 + len..)?;
    }
    None
}

/// One budget for the user across a session's streams, and backpressure: three streams of
/// one raw session upload as fast as they can to a sink through a 16 Mbps user; the node's
/// per-stream queues fill and it stops reading the session. The measured rate is the limit
/// (±15 %), and once the client is gone the panel's upload total is exactly what reached the
/// sink.
#[test]
fn raw_client_speed_limit_across_streams() {
    use v2sp_testsupport::harness::Sink;
    let sink = Sink::start().unwrap();
    let mut node = anytls_node(1, json!({}));
    node.users = vec![json!({"id": 1, "uuid": UUIDS[0], "speed_limit": 16, "device_limit": null})];
    let v = V2sp::start(vec![node], json!({})).unwrap();
    let mut s = raw_session(v.nodes[0].port, UUIDS[0]);
    let mut open = Vec::new();
    for sid in 1..=3 {
        open.extend(frame(SYN, sid, &[]));
        open.extend(frame(PSH, sid, &dest_v4(sink.port)));
    }
    s.write_all(&open).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let stop = Instant::now() + Duration::from_secs(7);
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = payload(16 * 1024, 3);
        let mut sid = 0;
        while Instant::now() < stop {
            sid = sid % 3 + 1;
            if w.write_all(&frame(PSH, sid, &chunk)).is_err() {
                break;
            }
        }
    });
    // Skip the burst the bucket starts with, then measure 4 s.
    let rate = sink.rate_after(Duration::from_millis(1500), Duration::from_secs(4));
    eprintln!("anytls upload through a 16 Mbps user, 3 streams in one session: {rate:.0} B/s");
    writer.join().unwrap();
    drop(s);
    let limit = 16e6 / 8.0;
    assert!(
        (rate - limit).abs() <= 0.15 * limit,
        "measured {rate:.0} B/s, limit {limit} B/s"
    );
    v.wait_upload_settles(&sink, 1, 1, Duration::from_secs(30));
}

/// A raw session from `src`, with one stream to the echo server that must answer "ping":
/// `None` when the node refuses (connection closed).
fn session_from(src: &str, port: u16, uuid: &str, echo: u16) -> Option<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).ok()?;
    let from: std::net::SocketAddr = format!("{src}:0").parse().ok()?;
    sock.bind(&from.into()).ok()?;
    let to = std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    sock.connect(&to.into()).ok()?;
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    let mut hello = auth(uuid, 0);
    hello.extend(frame(SETTINGS, 0, b"v=2\nclient=v2sp-test/0\npadding-md5=0123"));
    hello.extend(frame(SYN, 1, &[]));
    let mut first = dest_v4(echo);
    first.extend_from_slice(b"ping");
    hello.extend(frame(PSH, 1, &first));
    s.write_all(&hello).ok()?;
    let mut echoed = Vec::new();
    while echoed.len() < 4 {
        let (c, sid, d) = read_frame(&mut s).ok()?;
        if (c, sid) == (PSH, 1) {
            echoed.extend_from_slice(&d);
        }
    }
    (echoed == b"ping").then_some(s)
}

/// The user's device limit (2 IPs): sessions from two source IPs are admitted while they are
/// open, a third IP is refused, an admitted IP may open another session.
#[test]
fn raw_client_device_limit() {
    let echo = Echo::start().unwrap();
    let mut node = anytls_node(1, json!({}));
    node.users = vec![json!({"id": 1, "uuid": UUIDS[0], "speed_limit": null, "device_limit": 2})];
    let v = V2sp::start(vec![node], json!({})).unwrap();
    let port = v.nodes[0].port;
    let mut held = Vec::new();
    let mut ok = Vec::new();
    for ip in ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.2"] {
        let s = session_from(ip, port, UUIDS[0], echo.port);
        ok.push(s.is_some());
        held.push(s);
    }
    assert_eq!(ok, vec![true, true, false, true], "{}", v.agent.log());
    let mut expected: Totals = BTreeMap::new();
    expect(&mut expected, 1, 1, 12, 12);
    v.finish(&[], &expected);
}

/// Issue 11, stream flood: one authenticated session opens 2000 streams, each with 16 KiB for
/// the echo server, and never reads what comes back. A session holds at most 128 streams
/// (the others get a FIN) and buffers at most 1 MiB for a client that does not read, so the
/// data plane's RSS grows by under 32 MiB, and another user's session keeps working.
#[test]
fn raw_client_stream_flood_rss_under_32mib() {
    const STREAMS: u32 = 2000;
    const BOUND: u64 = 32 << 20;
    let echo = Echo::start().unwrap();
    let v = V2sp::start(vec![anytls_node(1, json!({}))], json!({})).unwrap();
    let port = v.nodes[0].port;
    let pid = v.dataplane_pid();
    // Warm up: one ordinary stream, echoed.
    let mut ok = raw_session(port, UUIDS[1]);
    let probe = |s: &mut TcpStream, sid: u32, seed: u64| -> Result<(), String> {
        let data = payload(4096, seed);
        let mut out = frame(SYN, sid, &[]);
        out.extend(frame(PSH, sid, &dest_v4(echo.port)));
        out.extend(frame(PSH, sid, &data));
        s.write_all(&out).map_err(|e| e.to_string())?;
        let mut got = Vec::new();
        let until = Instant::now() + Duration::from_secs(10);
        while got.len() < data.len() && Instant::now() < until {
            let (c, id, d) = read_frame(s).map_err(|e| e.to_string())?;
            if c == PSH && id == sid {
                got.extend(d);
            }
        }
        (got == data)
            .then_some(())
            .ok_or_else(|| format!("stream {sid}: {} of {} bytes back", got.len(), data.len()))
    };
    probe(&mut ok, 1, 1).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_bytes(pid);
    // The flood: streams opened as fast as the socket takes them; the reply side is never read.
    let mut flood = raw_session(port, UUIDS[0]);
    flood.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let chunk = payload(16 << 10, 9);
    let mut sent = 0u32;
    for sid in 1..=STREAMS {
        let mut out = frame(SYN, sid, &[]);
        out.extend(frame(PSH, sid, &dest_v4(echo.port)));
        out.extend(frame(PSH, sid, &chunk));
        if flood.write_all(&out).is_err() {
            break; // the server stopped reading us: back-pressure, as it should
        }
        sent += 1;
    }
    std::thread::sleep(Duration::from_secs(2));
    let growth = rss_bytes(pid).saturating_sub(before);
    let other = probe(&mut ok, 3, 2);
    eprintln!(
        "anytls stream flood: {sent} streams written, data plane RSS +{} KiB, {} echo connections",
        growth / 1024,
        echo.connections()
    );
    other.unwrap_or_else(|e| panic!("another user's session during the flood: {e}\n{}", v.agent.log()));
    assert!(
        growth < BOUND,
        "RSS grew by {} KiB (bound {} KiB)",
        growth / 1024,
        BOUND / 1024
    );
    drop(flood);
}
