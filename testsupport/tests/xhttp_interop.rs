//! Issue 13: VLESS and Trojan over XHTTP with Xray 24.11.21 (the reference implementation) as
//! the client, inside a loopback-only network namespace: `packet-up` and `stream-up` over TLS
//! (HTTP/2) and in plain text (Xray's client speaks HTTP/1.1 there), 1 MiB echoed and
//! sha256-checked per case, exact per-user totals, a stranger gets nothing through; and the
//! answers a prober gets (404 off the path, 400 without a session).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use v2sp_testsupport::harness::{
    expect, free_port, payload, run_in_loopback_netns, self_signed_certs, tcp_echo_through, xray_outbound,
    Echo, NodeSpec, Totals, V2sp,
};
use v2sp_testsupport::panel_sim::users;

const UUIDS: [&str; 3] = [
    "705d4ada-fc32-48de-951c-2ab9d5765ce0",
    "0c6a030a-1aa1-4938-9cd7-d5ec4d9aee4e",
    "9a3e1d52-7b64-4c1f-8e0a-5d2f6b9c1e47",
];
const DOMAIN: &str = "v2sp.test";
const PATH: &str = "/xh";

/// The nodes: (protocol, tls).
const NODES: [(&str, u8); 3] = [("vless", 1), ("vless", 0), ("trojan", 1)];

/// One VLESS node over XHTTP with TLS (path and host as [`xray_client`] sends them).
fn vless_tls_node(uuids: &[&str]) -> (V2sp, u16, tempfile::TempDir) {
    let certs = tempfile::tempdir().unwrap();
    let port = free_port();
    let nodes = vec![NodeSpec {
        node_id: 1,
        port,
        info: json!({"node_type": "vless", "server_port": port, "tls": 1,
                     "network": "xhttp", "networkSettings": {"path": PATH, "host": DOMAIN},
                     "tls_settings": {"server_name": DOMAIN},
                     "base_config": {"push_interval": 1, "pull_interval": 1}}),
        users: users(uuids),
    }];
    let v = V2sp::start(nodes, self_signed_certs(certs.path(), DOMAIN)).unwrap();
    (v, port, certs)
}

/// One VLESS node over plain XHTTP with these `networkSettings`; `extra` goes into the node's
/// local entry, `dataplane` into the data plane's settings.
fn plain_node(settings: Value, extra: Value, dataplane: Value) -> (V2sp, u16) {
    let port = free_port();
    let nodes = vec![NodeSpec {
        node_id: 1,
        port,
        info: json!({"node_type": "vless", "server_port": port, "tls": 0, "network": "xhttp",
                     "networkSettings": settings,
                     "base_config": {"push_interval": 1, "pull_interval": 1}}),
        users: users(&UUIDS),
    }];
    (V2sp::start_with(nodes, extra, dataplane).unwrap(), port)
}

/// A VLESS request head (version 0, the user's id, no addons, TCP to 127.0.0.1:`port`).
fn vless_request(uuid: &str, port: u16) -> Vec<u8> {
    let mut head = vec![0u8];
    head.extend_from_slice(&hex::decode(uuid.replace('-', "")).unwrap());
    head.extend_from_slice(&[0, 1]);
    head.extend_from_slice(&port.to_be_bytes());
    head.extend_from_slice(&[1, 127, 0, 0, 1]);
    head
}

fn xray_client(protocol: &str, port: u16, secret: &str, tls: bool, mode: &str) -> Value {
    let settings = if protocol == "vless" {
        json!({"vnext": [{"address": "127.0.0.1", "port": port,
                          "users": [{"id": secret, "encryption": "none"}]}]})
    } else {
        json!({"servers": [{"address": "127.0.0.1", "port": port, "password": secret}]})
    };
    let mut stream = json!({"network": "xhttp", "security": if tls { "tls" } else { "none" },
        "xhttpSettings": {"path": PATH, "host": DOMAIN, "mode": mode}});
    if tls {
        stream["tlsSettings"] = json!({"serverName": DOMAIN, "allowInsecure": true});
    }
    json!({"protocol": protocol, "settings": settings, "streamSettings": stream})
}

#[test]
fn xray_over_xhttp_packet_up_and_stream_up_exact_accounting() {
    if !run_in_loopback_netns(
        "xray_over_xhttp_packet_up_and_stream_up_exact_accounting",
        Duration::from_secs(240),
    ) {
        return;
    }
    let echo = Echo::start().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let nodes: Vec<NodeSpec> = NODES
        .iter()
        .enumerate()
        .map(|(i, (protocol, tls))| {
            let port = free_port();
            NodeSpec {
                node_id: i as u32 + 1,
                port,
                info: json!({"node_type": protocol, "server_port": port, "tls": tls,
                             "network": "xhttp", "networkSettings": {"path": PATH, "host": DOMAIN, "mode": "auto"},
                             "tls_settings": {"server_name": DOMAIN},
                             "base_config": {"push_interval": 1, "pull_interval": 1}}),
                users: users(&UUIDS),
            }
        })
        .collect();
    let v = V2sp::start(nodes, self_signed_certs(certs.path(), DOMAIN)).unwrap();
    let mut failures = Vec::new();
    let mut expected: Totals = BTreeMap::new();
    for (i, (protocol, tls)) in NODES.iter().enumerate() {
        let node = &v.nodes[i];
        for (uidx, mode) in [(0usize, "packet-up"), (1, "stream-up")] {
            let what = format!("{protocol} over xhttp {mode} (tls {tls})");
            let out = xray_client(protocol, node.port, UUIDS[uidx], *tls == 1, mode);
            let (p, socks) = xray_outbound(out, v.dir.path()).unwrap_or_else(|e| panic!("xray: {e:#}"));
            let data = payload(1 << 20, (i * 10 + uidx) as u64);
            match tcp_echo_through(socks, echo.port, &data) {
                Ok(n) => expect(&mut expected, node.node_id, uidx as u32 + 1, n, n),
                Err(e) => failures.push(format!("{what}: {e:#}\n--- xray ---\n{}", p.log())),
            }
            drop(p);
        }
        let stranger = "11111111-2222-4333-8444-555555555555";
        let out = xray_client(protocol, node.port, stranger, *tls == 1, "auto");
        let (p, socks) = xray_outbound(out, v.dir.path()).unwrap_or_else(|e| panic!("xray: {e:#}"));
        if tcp_echo_through(socks, echo.port, &payload(4096, 99)).is_ok() {
            failures.push(format!(
                "{protocol} (tls {tls}): data went through for a stranger"
            ));
        }
        drop(p);
    }
    if !failures.is_empty() {
        failures.push(format!("--- v2sp ---\n{}", v.agent.log()));
    }
    v.finish(&failures, &expected);
}

/// What a prober sees on a plain XHTTP node: 404 off the path or for another host, 400 for a
/// GET without a session id, 405 for other methods; padding headers on every answer.
#[test]
fn probes_get_plain_http_answers() {
    use std::io::{Read, Write};
    let (v, port) = plain_node(json!({"path": PATH, "host": DOMAIN}), json!({}), json!({}));
    let ask = |req: &str| -> String {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    let cases = [
        (format!("GET / HTTP/1.1\r\nHost: {DOMAIN}\r\n\r\n"), "404"),
        (
            format!("GET {PATH}/abc HTTP/1.1\r\nHost: other.test\r\n\r\n"),
            "404",
        ),
        (format!("GET {PATH}/ HTTP/1.1\r\nHost: {DOMAIN}\r\n\r\n"), "400"),
        (
            format!("PUT {PATH}/abc HTTP/1.1\r\nHost: {DOMAIN}\r\nContent-Length: 0\r\n\r\n"),
            "405",
        ),
    ];
    for (req, code) in cases {
        let got = ask(&req);
        assert!(
            got.starts_with(&format!("HTTP/1.1 {code} ")),
            "{req:?} → {got:?}\n{}",
            v.agent.log()
        );
        assert!(got.to_ascii_lowercase().contains("x-padding: 000"), "{got}");
    }
    drop(v);
}

/// Removing a user closes their XHTTP sessions (the destination side too) and refuses new
/// ones: Xray over TLS in packet-up mode, one session held open across the removal.
#[test]
fn removal_cuts_off_an_xhttp_session() {
    if !run_in_loopback_netns("removal_cuts_off_an_xhttp_session", Duration::from_secs(120)) {
        return;
    }
    let (v, port, _certs) = vless_tls_node(&UUIDS[..2]);
    let out = xray_client("vless", port, UUIDS[1], true, "packet-up");
    let (p, socks) = xray_outbound(out, v.dir.path()).unwrap_or_else(|e| panic!("xray: {e:#}"));
    let expected = v
        .assert_removal_cuts_off(socks, &|| p.log(), (1, 2), users(&UUIDS[..1]))
        .unwrap_or_else(|e| panic!("{e:#}\n--- v2sp ---\n{}", v.agent.log()));
    drop(p);
    v.finish(&[], &expected);
}

/// stream-one (upload and download in one POST), which Xray 24.11 cannot send: our own
/// minimal client over HTTP/1.1 with a chunked body, VLESS inside, 256 KiB echoed. Loopback is a
/// trusted proxy here, so the online IP reported is the one `X-Forwarded-For` names.
#[test]
fn stream_one_with_our_own_client() {
    use std::io::{BufRead, BufReader, Read, Write};
    let echo = Echo::start().unwrap();
    let (v, port) = plain_node(
        json!({"path": PATH, "mode": "stream-one"}),
        json!({"TrustedProxies": ["127.0.0.0/8"]}),
        json!({}),
    );
    let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = s.try_clone().unwrap();
    w.write_all(
        format!(
            "POST {PATH}/ HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.9, 203.0.113.7\r\n\
             Transfer-Encoding: chunked\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    // VLESS request: version 0, the user's id, no addons, TCP to 127.0.0.1:echo.
    let head = vless_request(UUIDS[2], echo.port);
    let data = payload(256 << 10, 5);
    let chunk = |w: &mut std::net::TcpStream, b: &[u8]| {
        w.write_all(format!("{:x}\r\n", b.len()).as_bytes()).unwrap();
        w.write_all(b).unwrap();
        w.write_all(b"\r\n").unwrap();
    };
    chunk(&mut w, &head);
    let writer = {
        let data = data.clone();
        std::thread::spawn(move || {
            for c in data.chunks(16 << 10) {
                chunk(&mut w, c);
            }
            w
        })
    };
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line:?}\n{}", v.agent.log());
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
    }
    // The chunked download: VLESS's 2-byte answer, then the echo.
    let mut body = Vec::new();
    while body.len() < 2 + data.len() {
        line.clear();
        r.read_line(&mut line).unwrap();
        let n = usize::from_str_radix(line.trim(), 16).unwrap();
        assert!(n > 0, "the download ended early after {} bytes", body.len());
        let mut c = vec![0u8; n + 2];
        r.read_exact(&mut c).unwrap();
        body.extend_from_slice(&c[..n]);
    }
    assert_eq!(&body[..2], &[0, 0]);
    assert!(body[2..] == data[..], "the echo differs");
    let mut w = writer.join().unwrap();
    w.write_all(b"0\r\n\r\n").unwrap();
    let n = data.len() as u64;
    let expected = BTreeMap::from([(3u32, (n, n))]);
    v.wait_totals(1, &expected, Duration::from_secs(20)).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !format!("{:?}", v.sim.alive_reports(1)).contains("203.0.113.7") {
        assert!(
            std::time::Instant::now() < deadline,
            "no online IP from X-Forwarded-For: {:?}\n{}",
            v.sim.alive_reports(1),
            v.agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Issue 11 on XHTTP: sessions that never authenticate, opened by GETs from one address, are
/// held at most 64 at a time (the rest are answered 503 at once), cost little memory, and
/// end at the handshake deadline, after which the address may open sessions again.
#[test]
fn unauthenticated_session_flood_is_bounded_and_expires() {
    use std::io::{Read, Write};
    const FLOOD: usize = 200;
    const PENDING_PER_IP: usize = 64;
    let (v, port) = plain_node(
        json!({"path": PATH}),
        json!({}),
        json!({"Timeouts": {"Handshake": 3}}),
    );
    let pid = v.dataplane_pid();
    let before = v2sp_testsupport::harness::rss_bytes(pid);
    let get = |i: usize| -> (std::net::TcpStream, String) {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(format!("GET {PATH}/flood-{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        let mut b = [0u8; 12];
        let n = s.read(&mut b).unwrap_or(0);
        let status = String::from_utf8_lossy(&b[..n]).to_string();
        (s, status)
    };
    let mut held = Vec::new();
    let (mut ok, mut busy) = (0, 0);
    for i in 0..FLOOD {
        let (s, status) = get(i);
        match status.as_str() {
            "HTTP/1.1 200" => ok += 1,
            "HTTP/1.1 503" => {
                busy += 1;
                held.push(s);
            }
            other => panic!("GET {i}: {other:?}\n{}", v.agent.log()),
        }
    }
    let grown = v2sp_testsupport::harness::rss_bytes(pid).saturating_sub(before);
    assert!(
        (1..=PENDING_PER_IP).contains(&ok),
        "{ok} sessions opened, {busy} refused"
    );
    assert_eq!(ok + busy, FLOOD);
    assert!(
        grown < 16 << 20,
        "RSS grew {grown} bytes for {ok} pending sessions"
    );
    // The pending sessions end at the 3 s handshake deadline; then a new one is taken. The
    // connections whose GET was refused are closed by then too (nothing on them authenticated).
    std::thread::sleep(Duration::from_secs(4));
    for mut s in held.drain(..) {
        let mut rest = Vec::new();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let r = s.read_to_end(&mut rest);
        assert!(
            r.is_ok(),
            "a refused connection is still open after the handshake deadline: {r:?}"
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_s, status) = get(FLOOD + 1);
        if status == "HTTP/1.1 200" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still refused: {status}\n{}",
            v.agent.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(held);
}

/// UDP inside XHTTP: Xray's VLESS client carries a SOCKS5 UDP association in the session
/// (XUDP), over TLS in both upload modes; 20 datagrams echoed intact, counted exactly.
#[test]
fn xray_udp_over_xhttp_exact_accounting() {
    if !run_in_loopback_netns("xray_udp_over_xhttp_exact_accounting", Duration::from_secs(120)) {
        return;
    }
    let echo = Echo::start().unwrap();
    let (v, port, _certs) = vless_tls_node(&UUIDS);
    let mut expected: Totals = BTreeMap::new();
    for (uidx, mode) in [(0usize, "packet-up"), (1, "stream-up")] {
        let out = xray_client("vless", port, UUIDS[uidx], true, mode);
        let (p, socks) = xray_outbound(out, v.dir.path()).unwrap_or_else(|e| panic!("xray: {e:#}"));
        let n = v2sp_testsupport::harness::udp_echo_through(socks, echo.port, 20, 1000).unwrap_or_else(|e| {
            panic!(
                "{mode}: {e:#}\n--- xray ---\n{}\n--- v2sp ---\n{}",
                p.log(),
                v.agent.log()
            )
        });
        expect(&mut expected, 1, uidx as u32 + 1, n, n);
        drop(p);
    }
    v.finish(&[], &expected);
}

/// Plain HTTP/2 (h2c, as behind a CDN or nginx with `grpc_pass`-style h2c upstreams): curl
/// (nghttp2) with prior knowledge opens a session's download GET on one connection and posts
/// packet 0 (a VLESS request with 64 KiB of data) on another; the echo comes back on the GET,
/// counted exactly. Xray 24.11's client speaks HTTP/1.1 without TLS, so curl stands in here.
#[test]
fn h2c_packet_up_with_curl() {
    use std::process::{Command, Stdio};
    let echo = Echo::start().unwrap();
    let (v, port) = plain_node(json!({"path": PATH, "mode": "packet-up"}), json!({}), json!({}));
    let dir = v.dir.path().to_path_buf();
    let url = format!("http://127.0.0.1:{port}{PATH}/5f1c2d3e-0000-4000-8000-00000000c0de");
    let down = dir.join("down.bin");
    let mut get = Command::new("curl")
        .args(["--http2-prior-knowledge", "-sN", "--max-time", "8", "-o"])
        .arg(&down)
        .arg(&url)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let data = payload(64 << 10, 9);
    let mut pkt = vless_request(UUIDS[0], echo.port);
    pkt.extend_from_slice(&data);
    std::fs::write(dir.join("p0.bin"), &pkt).unwrap();
    let post = Command::new("curl")
        .args([
            "--http2-prior-knowledge",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
        ])
        .args(["--max-time", "8", "--data-binary"])
        .arg(format!("@{}", dir.join("p0.bin").display()))
        .arg(format!("{url}/0"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&post.stdout),
        "200 2",
        "{}",
        v.agent.log()
    );
    // The GET's body: VLESS's answer, then the echo; curl ends at its --max-time.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(&down).map_or(0, |m| m.len()) < 2 + data.len() as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "the echo did not come back\n{}",
            v.agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = get.kill();
    let _ = get.wait();
    let got = std::fs::read(&down).unwrap();
    assert_eq!(&got[..2], &[0, 0]);
    assert!(got[2..] == data[..], "the echo differs");
    let n = data.len() as u64;
    v.wait_totals(1, &BTreeMap::from([(1u32, (n, n))]), Duration::from_secs(20))
        .unwrap();
}

/// Issue 11 on XHTTP, the two queues a client feeds once authenticated (stream-one: one POST
/// carries both directions): a client that uploads as fast as it can to a destination that
/// never reads, and a client that never reads its download while the destination sends as
/// fast as it can. Both stall at the bounds (the 2 MiB upload budget and the 4 × 64 KiB
/// download channel, plus the kernel's socket buffers) instead of growing the data plane.
#[test]
fn stalled_reader_on_either_side_is_held_at_the_bounds() {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    const CAP: usize = 256 << 20;
    const STALL: Duration = Duration::from_secs(2);
    let (v, port) = plain_node(json!({"path": PATH, "mode": "stream-one"}), json!({}), json!({}));
    let pid = v.dataplane_pid();
    // Destinations: one never reads, one writes until a write stalls for STALL.
    let sink = TcpListener::bind("127.0.0.1:0").unwrap();
    let hose = TcpListener::bind("127.0.0.1:0").unwrap();
    let (sink_port, hose_port) = (
        sink.local_addr().unwrap().port(),
        hose.local_addr().unwrap().port(),
    );
    let sink_t = std::thread::spawn(move || sink.accept().unwrap().0);
    let hose_t = std::thread::spawn(move || {
        let (mut s, _) = hose.accept().unwrap();
        s.set_write_timeout(Some(STALL)).unwrap();
        let block = vec![0x5au8; 64 << 10];
        let mut sent = 0usize;
        while sent < CAP {
            match s.write(&block) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        (s, sent)
    });
    let before = v2sp_testsupport::harness::rss_bytes(pid);
    // A stream-one POST carrying a VLESS request for `dest`; the response is never read.
    let open = |dest: u16| -> TcpStream {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(
            format!("POST {PATH}/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n").as_bytes(),
        )
        .unwrap();
        let head = vless_request(UUIDS[0], dest);
        s.write_all(format!("{:x}\r\n", head.len()).as_bytes()).unwrap();
        s.write_all(&head).unwrap();
        s.write_all(b"\r\n").unwrap();
        s
    };
    let mut down = open(hose_port);
    let mut up = open(sink_port);
    up.set_write_timeout(Some(STALL)).unwrap();
    let block = vec![0xa5u8; 64 << 10];
    let mut uploaded = 0usize;
    while uploaded < CAP {
        let chunk = [format!("{:x}\r\n", block.len()).as_bytes(), &block, b"\r\n"].concat();
        if up.write_all(&chunk).is_err() {
            break;
        }
        uploaded += block.len();
    }
    let (_hose_conn, downloaded) = hose_t.join().unwrap();
    let _sink_conn = sink_t.join().unwrap();
    let grown = v2sp_testsupport::harness::rss_bytes(pid).saturating_sub(before);
    eprintln!("stalled: {uploaded} bytes uploaded, {downloaded} sent by the destination, RSS +{grown}");
    // Without the bounds both would run to CAP. Socket buffers on both hops take ~20 MiB.
    assert!(
        uploaded < 64 << 20,
        "the upload never stalled: {uploaded} bytes\n{}",
        v.agent.log()
    );
    assert!(
        downloaded < 64 << 20,
        "the download never stalled: {downloaded} bytes\n{}",
        v.agent.log()
    );
    assert!(
        grown < 16 << 20,
        "RSS grew {grown} bytes for two stalled sessions"
    );
    // The sessions still work once read: the download side delivers what is queued.
    down.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 4096];
    assert!(
        down.read(&mut b).unwrap() > 0,
        "the stalled download delivers once read"
    );
}
