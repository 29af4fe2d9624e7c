//! Issue "transports": real clients through v2sp's ws and httpupgrade transports.
//!
//! * sing-box (trojan and vless) over WebSocket with and without TLS, with xray-style early
//!   data (`Sec-WebSocket-Protocol`), and over httpupgrade with and without TLS;
//! * Debian's V2Ray 4.34 (vless and trojan) over WebSocket + TLS;
//!
//! each moving 1 MiB to the echo server, sha256-checked; the panel receives exactly the bytes
//! moved per user, nothing for a stranger (whose data never gets through).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use v2sp_testsupport::harness::{
    expect, free_port, payload, self_signed_certs, sing_box_transport, tcp_echo_through, v2ray_client, Echo,
    NodeSpec, Recorder, Totals, V2sp,
};
use v2sp_testsupport::panel_sim::{user, users};

const UUIDS: [&str; 3] = [
    "705d4ada-fc32-48de-951c-2ab9d5765ce0",
    "0c6a030a-1aa1-4938-9cd7-d5ec4d9aee4e",
    "9a3e1d52-7b64-4c1f-8e0a-5d2f6b9c1e47",
];
const DOMAIN: &str = "v2sp.test";

struct Case {
    protocol: &'static str,
    tls: u8,
    network: &'static str,
    /// Panel `networkSettings`.
    settings: Value,
    /// sing-box `transport`.
    client: Value,
    /// V2Ray 4.34 `streamSettings` for user 3 (None: user 3 stays idle).
    v2ray: Option<Value>,
    /// Record the client's bytes (plaintext nodes) to check the early data went in the header.
    check_early: bool,
}

fn cases() -> Vec<Case> {
    let ws_client = json!({"type": "ws", "path": "/ray", "headers": {"Host": DOMAIN}});
    let ws_early = json!({"type": "ws", "path": "/ray", "headers": {"Host": DOMAIN},
                          "max_early_data": 2048, "early_data_header_name": "Sec-WebSocket-Protocol"});
    let ws_panel = json!({"path": "/ray?ed=2048", "headers": {"Host": DOMAIN}});
    let v2ray_ws = json!({"network": "ws", "security": "tls",
                          "tlsSettings": {"serverName": DOMAIN, "allowInsecure": true},
                          "wsSettings": {"path": "/ray", "headers": {"Host": DOMAIN}}});
    vec![
        Case {
            protocol: "trojan",
            tls: 1,
            network: "ws",
            settings: ws_panel.clone(),
            client: ws_client.clone(),
            v2ray: Some(v2ray_ws.clone()),
            check_early: false,
        },
        Case {
            protocol: "vless",
            tls: 1,
            network: "ws",
            settings: ws_panel.clone(),
            client: ws_early.clone(),
            v2ray: Some(v2ray_ws),
            check_early: false,
        },
        Case {
            protocol: "vless",
            tls: 0,
            network: "ws",
            settings: ws_panel,
            client: ws_early,
            v2ray: None,
            check_early: true,
        },
        Case {
            protocol: "trojan",
            tls: 1,
            network: "httpupgrade",
            settings: json!({"path": "/up", "host": DOMAIN}),
            client: json!({"type": "httpupgrade", "path": "/up", "host": DOMAIN}),
            v2ray: None,
            check_early: false,
        },
        Case {
            protocol: "vless",
            tls: 0,
            network: "httpupgrade",
            settings: json!({"path": "/up"}),
            client: json!({"type": "httpupgrade", "path": "/up"}),
            v2ray: None,
            check_early: false,
        },
    ]
}

#[test]
fn sing_box_and_v2ray_over_ws_and_httpupgrade_with_exact_accounting() {
    let echo = Echo::start().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let cases = cases();
    let nodes: Vec<NodeSpec> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let port = free_port();
            NodeSpec {
                node_id: i as u32 + 1,
                port,
                info: json!({"node_type": c.protocol, "server_port": port, "tls": c.tls,
                             "network": c.network, "networkSettings": c.settings,
                             "tls_settings": {"server_name": DOMAIN},
                             "base_config": {"push_interval": 1, "pull_interval": 1}}),
                users: users(&UUIDS),
            }
        })
        .collect();
    let cert_cfg = self_signed_certs(certs.path(), DOMAIN);
    let v = V2sp::start(nodes, cert_cfg).unwrap();
    let mut failures = Vec::new();
    let mut expected: Totals = BTreeMap::new();
    for (i, c) in cases.iter().enumerate() {
        let node = &v.nodes[i];
        let what = format!("{} over {} (tls {})", c.protocol, c.network, c.tls);
        let tls = (c.tls == 1).then(|| json!({"enabled": true, "server_name": DOMAIN, "insecure": true}));
        let recorder = c.check_early.then(|| Recorder::start(node.port).unwrap());
        let target = recorder.as_ref().map_or(node.port, |r| r.port);
        let mut add = |uidx: usize, n: u64| {
            expect(&mut expected, node.node_id, uidx as u32 + 1, n, n);
        };
        for uidx in [0usize, 1] {
            let (proc_, socks) = sing_box_transport(
                target,
                c.protocol,
                UUIDS[uidx],
                tls.clone(),
                Some(c.client.clone()),
                v.dir.path(),
            )
            .unwrap_or_else(|e| panic!("sing-box: {e:#}"));
            let data = payload(1 << 20, (i * 10 + uidx) as u64);
            match tcp_echo_through(socks, echo.port, &data) {
                Ok(n) => add(uidx, n),
                Err(err) => failures.push(format!(
                    "sing-box {what} user {}: {err:#}\n{}",
                    uidx + 1,
                    proc_.log()
                )),
            }
            drop(proc_);
        }
        if let Some(r) = &recorder {
            let cap = r.captured.lock().unwrap();
            let first =
                String::from_utf8_lossy(cap.first().map(Vec::as_slice).unwrap_or_default()).to_string();
            if !first.contains("Sec-WebSocket-Protocol: ") {
                failures.push(format!("{what}: the client sent no early data header"));
            }
        }
        if let Some(stream) = &c.v2ray {
            let (proc_, socks) = v2ray_client(node.port, c.protocol, UUIDS[2], stream.clone(), v.dir.path())
                .unwrap_or_else(|e| panic!("v2ray: {e:#}"));
            let data = payload(1 << 20, (i * 10 + 2) as u64);
            match tcp_echo_through(socks, echo.port, &data) {
                Ok(n) => add(2, n),
                Err(err) => failures.push(format!("v2ray {what}: {err:#}\n{}", proc_.log())),
            }
            drop(proc_);
        }
        // Not a user of this node: nothing comes back, nothing is accounted.
        let stranger = "11111111-2222-4333-8444-555555555555";
        let (proc_, socks) = sing_box_transport(
            node.port,
            c.protocol,
            stranger,
            tls.clone(),
            Some(c.client.clone()),
            v.dir.path(),
        )
        .unwrap_or_else(|e| panic!("sing-box: {e:#}"));
        if tcp_echo_through(socks, echo.port, &payload(4096, 99)).is_ok() {
            failures.push(format!("{what}: data went through for an unknown credential"));
        }
        drop(proc_);
    }
    v.finish(&failures, &expected);
}

/// A request for another path, or plain garbage, gets no tunnel: the ws node answers 404 and
/// closes, and nothing is accounted.
#[test]
fn wrong_path_is_refused_like_xray() {
    use std::io::{Read, Write};
    let port = free_port();
    let nodes = vec![NodeSpec {
        node_id: 1,
        port,
        info: json!({"node_type": "vless", "server_port": port, "tls": 0, "network": "ws",
                     "networkSettings": {"path": "/ray"},
                     "base_config": {"push_interval": 1, "pull_interval": 1}}),
        users: vec![user(1, UUIDS[0])],
    }];
    let v = V2sp::start(nodes, json!({})).unwrap();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /other HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    assert!(
        reply.starts_with(b"HTTP/1.1 404 Not Found\r\n"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    // The right path is upgraded.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /ray HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{head}");
    assert!(
        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{head}"
    );
    drop(v);
}

/// V2Ray 4.34 (VLESS, plaintext) behind xray's tcp `header.type = "http"` obfuscation.
#[test]
fn v2ray_vless_over_tcp_http_header() {
    let echo = Echo::start().unwrap();
    let port = free_port();
    let header = json!({"type": "http", "request": {"path": ["/video", "/"]}});
    let nodes = vec![NodeSpec {
        node_id: 1,
        port,
        info: json!({"node_type": "vless", "server_port": port, "tls": 0, "network": "tcp",
                     "networkSettings": {"header": header},
                     "base_config": {"push_interval": 1, "pull_interval": 1}}),
        users: vec![user(1, UUIDS[0]), user(2, UUIDS[1])],
    }];
    let v = V2sp::start(nodes, json!({})).unwrap();
    let stream = json!({"network": "tcp", "security": "none",
        "tcpSettings": {"header": {"type": "http", "request": {"path": ["/video"]}}}});
    let (proc_, socks) = v2ray_client(port, "vless", UUIDS[1], stream, v.dir.path()).unwrap();
    let data = payload(1 << 20, 77);
    let n = tcp_echo_through(socks, echo.port, &data)
        .unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", proc_.log(), v.agent.log()));
    drop(proc_);
    // A client asking for a path the node does not list gets nothing through.
    let stream = json!({"network": "tcp", "security": "none",
        "tcpSettings": {"header": {"type": "http", "request": {"path": ["/elsewhere"]}}}});
    let (proc_, socks) = v2ray_client(port, "vless", UUIDS[0], stream, v.dir.path()).unwrap();
    assert!(tcp_echo_through(socks, echo.port, &payload(4096, 1)).is_err());
    drop(proc_);
    let expected = BTreeMap::from([(2u32, (n, n))]);
    v.wait_totals(1, &expected, Duration::from_secs(20)).unwrap();
}

/// Reads one server frame (unmasked, payload < 126 bytes): (opcode, payload).
fn read_frame(s: &mut std::net::TcpStream) -> (u8, Vec<u8>) {
    use std::io::Read;
    let mut h = [0u8; 2];
    s.read_exact(&mut h).unwrap();
    assert!(h[1] < 126, "small frames only here");
    let mut p = vec![0u8; usize::from(h[1])];
    s.read_exact(&mut p).unwrap();
    (h[0] & 0x0f, p)
}

/// A hand-made client: VLESS over ws to the echo server; a ping mid-stream is answered with
/// a pong by the relay (the client-bound side sends the codec's control frames), data keeps
/// flowing (a fragmented text message too), and a close is echoed.
#[test]
fn ws_ping_gets_pong_through_the_relay() {
    use std::io::{Read, Write};
    let echo = Echo::start().unwrap();
    let port = free_port();
    let nodes = vec![NodeSpec {
        node_id: 1,
        port,
        info: json!({"node_type": "vless", "server_port": port, "tls": 0, "network": "ws",
                     "networkSettings": {"path": "/ray"},
                     "base_config": {"push_interval": 1, "pull_interval": 1}}),
        users: vec![user(1, UUIDS[0])],
    }];
    let v = V2sp::start(nodes, json!({})).unwrap();
    let frame = |op: u8, payload: &[u8]| {
        let mask = [9u8, 8, 7, 6];
        let mut f = vec![0x80 | op, 0x80 | payload.len() as u8];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    };
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /ray HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    // VLESS: version 0, uuid, no addons, TCP to 127.0.0.1:echo, then "hi".
    let mut req = vec![0u8];
    req.extend_from_slice(&hex::decode(UUIDS[0].replace('-', "")).unwrap());
    req.extend_from_slice(&[0, 1]);
    req.extend_from_slice(&echo.port.to_be_bytes());
    req.extend_from_slice(&[1, 127, 0, 0, 1]);
    req.extend_from_slice(b"hi");
    s.write_all(&frame(2, &req)).unwrap();
    assert_eq!(read_frame(&mut s), (2, vec![0, 0]), "VLESS response header");
    assert_eq!(read_frame(&mut s), (2, b"hi".to_vec()));
    s.write_all(&frame(9, b"ping!")).unwrap();
    assert_eq!(read_frame(&mut s), (10, b"ping!".to_vec()), "pong");
    let mut two = frame(1, b"ab");
    two[0] &= 0x7f; // FIN off: a fragmented text message
    two.extend_from_slice(&frame(0, b"cd"));
    s.write_all(&two).unwrap();
    let mut got = Vec::new();
    while got.len() < 4 {
        let (op, p) = read_frame(&mut s);
        assert_eq!(op, 2);
        got.extend_from_slice(&p);
    }
    assert_eq!(got, b"abcd");
    s.write_all(&frame(8, &[0x03, 0xe8])).unwrap();
    assert_eq!(read_frame(&mut s), (8, vec![0x03, 0xe8]), "close echoed");
    drop(s);
    let expected = BTreeMap::from([(1u32, (6, 6))]);
    v.wait_totals(1, &expected, Duration::from_secs(20)).unwrap();
}
