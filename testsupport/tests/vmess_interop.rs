//! VMess AEAD inbound: the real sing-box client and Debian's v2ray 4.34 client (alterId 0)
//! move data through v2ray's VMess node over plain TCP and over TLS (panel `tls: 1`,
//! `CertMode: self`) with aes-128-gcm, chacha20-poly1305 and none (sing-box also with global
//! padding and authenticated length) to the echo server, sha256-checked; the panel receives
//! exactly the bytes moved, per user; an unknown uuid gets nothing through and is never
//! accounted. VMess UDP also runs over WebSocket (with and without TLS).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use v2sp_testsupport::harness::{
    expect, free_port, payload, peer, self_signed_certs, sing_box_outbound, tcp_echo_through,
    udp_echo_through, v2ray_outbound, wait_tcp, Echo, NodeSpec, Proc, Totals, V2sp,
};
use v2sp_testsupport::panel_sim::users;

const UUIDS: [&str; 3] = [
    "b831381d-6324-4d53-ad4f-8cda48b30811",
    "0c6a030a-1aa1-4938-9cd7-d5ec4d9aee4e",
    "9a3e1d52-7b64-4c1f-8e0a-5d2f6b9c1e47",
];
const DOMAIN: &str = "v2sp.test";

#[derive(Clone, Copy, Debug)]
enum Client {
    SingBox,
    /// sing-box with global padding and authenticated length.
    SingBoxPadded,
    V2ray,
}

fn start_client(
    c: Client,
    port: u16,
    uuid: &str,
    security: &str,
    tls: bool,
    dir: &std::path::Path,
) -> (Proc, u16) {
    let r = match c {
        Client::SingBox | Client::SingBoxPadded => {
            let mut out = json!({"type": "vmess", "server": "127.0.0.1", "server_port": port,
                                 "uuid": uuid, "security": security, "alter_id": 0});
            if matches!(c, Client::SingBoxPadded) {
                out["global_padding"] = json!(true);
                out["authenticated_length"] = json!(true);
            }
            if tls {
                out["tls"] = json!({"enabled": true, "server_name": DOMAIN, "insecure": true});
            }
            sing_box_outbound(out, dir)
        }
        Client::V2ray => {
            let mut out = json!({"protocol": "vmess", "settings": {"vnext": [{
                "address": "127.0.0.1", "port": port,
                "users": [{"id": uuid, "alterId": 0, "security": security}]}]}});
            out["streamSettings"] = if tls {
                json!({"network": "tcp", "security": "tls",
                       "tlsSettings": {"serverName": DOMAIN, "allowInsecure": true}})
            } else {
                json!({"network": "tcp"})
            };
            v2ray_outbound(out, dir)
        }
    };
    r.unwrap_or_else(|e| panic!("{c:?}: {e:#}"))
}

fn node(node_id: u32, tls: u8) -> NodeSpec {
    let port = free_port();
    NodeSpec {
        node_id,
        port,
        info: json!({"node_type": "vmess", "server_port": port, "tls": tls, "network": "tcp",
                     "tls_settings": {"server_name": DOMAIN},
                     "base_config": {"push_interval": 1, "pull_interval": 1}}),
        users: users(&UUIDS),
    }
}

#[test]
fn sing_box_and_v2ray_vmess_with_exact_accounting() {
    let echo = Echo::start().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let nodes = vec![node(1, 0), node(2, 1)];
    let cert_cfg = self_signed_certs(certs.path(), DOMAIN);
    let v = V2sp::start(nodes, cert_cfg).unwrap();
    let mut failures = Vec::new();
    let mut expected: Totals = BTreeMap::new();
    let cases: Vec<(Client, &str)> = vec![
        (Client::SingBox, "aes-128-gcm"),
        (Client::SingBox, "chacha20-poly1305"),
        (Client::SingBox, "none"),
        (Client::SingBoxPadded, "aes-128-gcm"),
        (Client::SingBoxPadded, "chacha20-poly1305"),
        (Client::V2ray, "aes-128-gcm"),
        (Client::V2ray, "chacha20-poly1305"),
        (Client::V2ray, "none"),
    ];
    for (ni, tls) in [(0usize, false), (1, true)] {
        let n = &v.nodes[ni];
        for (ci, (client, security)) in cases.iter().enumerate() {
            // Users 1 and 2 alternate; user 3 never connects and must see nothing.
            let uidx = ci % 2;
            let (proc_, socks) = start_client(*client, n.port, UUIDS[uidx], security, tls, v.dir.path());
            let data = payload(512 * 1024 + ci * 777, (ni * 100 + ci) as u64);
            match tcp_echo_through(socks, echo.port, &data) {
                Ok(b) => {
                    expect(&mut expected, n.node_id, uidx as u32 + 1, b, b);
                }
                Err(err) => failures.push(format!(
                    "{client:?} {security} tls={tls} user {}: {err:#}\n{}",
                    uidx + 1,
                    proc_.log()
                )),
            }
            drop(proc_);
        }
        let stranger = "11111111-2222-4333-8444-555555555555";
        let (proc_, socks) = start_client(
            Client::SingBox,
            n.port,
            stranger,
            "aes-128-gcm",
            tls,
            v.dir.path(),
        );
        if tcp_echo_through(socks, echo.port, &payload(4096, 99)).is_ok() {
            failures.push(format!("tls={tls}: data went through for an unknown uuid"));
        }
        drop(proc_);
    }
    v.finish(&failures, &expected);
}

/// VMess UDP (command 2, one datagram per body chunk): the real sing-box client sends UDP
/// through its SOCKS inbound over v2sp's VMess (plain TCP and TLS) to a loopback UDP echo,
/// with `packet_encoding` absent (sing-box's VMess default: plain VMess UDP) and `""`, over
/// every security (and with padding and authenticated length), and Debian's v2ray 4.34 (VMess
/// UDP is all it has); every datagram comes back intact and the panel receives exactly the
/// payload bytes, for the right user.
#[test]
fn sing_box_vmess_udp_with_exact_accounting() {
    let echo = Echo::start().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let nodes = vec![node(1, 0), node(2, 1)];
    let cert_cfg = self_signed_certs(certs.path(), DOMAIN);
    let v = V2sp::start(nodes, cert_cfg).unwrap();
    let mut failures = Vec::new();
    let mut expected: Totals = BTreeMap::new();
    // (security, padded, packet_encoding)
    let cases: [(&str, bool, Option<&str>); 4] = [
        ("aes-128-gcm", false, None),
        ("chacha20-poly1305", true, Some("")),
        ("none", false, Some("")),
        ("aes-128-gcm", true, None),
    ];
    for (ni, tls) in [(0usize, false), (1, true)] {
        let n = &v.nodes[ni];
        for (ci, (security, padded, enc)) in cases.iter().enumerate() {
            let uidx = ci % 2;
            let mut out = json!({"type": "vmess", "server": "127.0.0.1", "server_port": n.port,
                                 "uuid": UUIDS[uidx], "security": security, "alter_id": 0});
            if *padded {
                out["global_padding"] = json!(true);
                out["authenticated_length"] = json!(true);
            }
            if let Some(e) = enc {
                out["packet_encoding"] = json!(e);
            }
            if tls {
                out["tls"] = json!({"enabled": true, "server_name": DOMAIN, "insecure": true});
            }
            let (proc_, socks) =
                sing_box_outbound(out, v.dir.path()).unwrap_or_else(|e| panic!("sing-box: {e:#}"));
            // Different sizes per user so a mix-up shows in the totals.
            let (count, size) = if uidx == 0 { (20, 1200) } else { (7, 333) };
            match udp_echo_through(socks, echo.port, count, size) {
                Ok(b) => {
                    expect(&mut expected, n.node_id, uidx as u32 + 1, b, b);
                }
                Err(err) => failures.push(format!(
                    "sing-box vmess udp {security} padded={padded} enc={enc:?} tls={tls} user {}: {err:#}\n{}",
                    uidx + 1,
                    proc_.log()
                )),
            }
            drop(proc_);
        }
        // Debian's v2ray 4.34 (no XUDP: always command 2) as a second client, user 1.
        let (proc_, socks) = v2ray_udp_client(n.port, UUIDS[0], tls, v.dir.path());
        match udp_echo_through(socks, echo.port, 10, 900) {
            Ok(b) => {
                expect(&mut expected, n.node_id, 1, b, b);
            }
            Err(err) => failures.push(format!("v2ray vmess udp tls={tls}: {err:#}\n{}", proc_.log())),
        }
        drop(proc_);
    }
    v.finish(&failures, &expected);
}

/// v2ray with a UDP-enabled SOCKS inbound and a VMess (aes-128-gcm) outbound.
fn v2ray_udp_client(port: u16, uuid: &str, tls: bool, dir: &std::path::Path) -> (Proc, u16) {
    let bin = peer("v2ray").unwrap();
    let socks = free_port();
    let stream = if tls {
        json!({"network": "tcp", "security": "tls",
               "tlsSettings": {"serverName": DOMAIN, "allowInsecure": true}})
    } else {
        json!({"network": "tcp"})
    };
    let cfg = json!({
        "log": {"loglevel": "warning"},
        "inbounds": [{"listen": "127.0.0.1", "port": socks, "protocol": "socks",
                      "settings": {"udp": true, "ip": "127.0.0.1"}}],
        "outbounds": [{"protocol": "vmess", "settings": {"vnext": [{
            "address": "127.0.0.1", "port": port,
            "users": [{"id": uuid, "alterId": 0, "security": "aes-128-gcm"}]}]},
            "streamSettings": stream}],
    });
    let path = dir.join(format!("v2ray-{socks}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    let mut cmd = Command::new(&bin);
    cmd.arg("-config").arg(&path);
    let proc_ = Proc::spawn("v2ray", cmd, dir.join(format!("v2ray-{socks}.log"))).unwrap();
    wait_tcp(socks, Duration::from_secs(10)).unwrap_or_else(|e| panic!("v2ray: {e:#}\n{}", proc_.log()));
    (proc_, socks)
}

/// VMess UDP over WebSocket: the real sing-box client's UDP (plain VMess UDP, and
/// `packet_encoding: ""`) through v2sp's VMess node with `network: ws`, without and with TLS,
/// to a loopback UDP echo; every datagram comes back intact and the panel receives exactly the
/// payload bytes, per user.
#[test]
fn sing_box_vmess_udp_over_ws_with_exact_accounting() {
    let echo = Echo::start().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let ws_node = |node_id: u32, tls: u8| {
        let mut n = node(node_id, tls);
        n.info["network"] = json!("ws");
        n.info["networkSettings"] = json!({"path": "/vmws", "headers": {"Host": DOMAIN}});
        n
    };
    let nodes = vec![ws_node(1, 0), ws_node(2, 1)];
    let cert_cfg = self_signed_certs(certs.path(), DOMAIN);
    let v = V2sp::start(nodes, cert_cfg).unwrap();
    let mut failures = Vec::new();
    let mut expected: Totals = BTreeMap::new();
    // (security, packet_encoding)
    let cases: [(&str, Option<&str>); 3] = [
        ("aes-128-gcm", None),
        ("chacha20-poly1305", Some("")),
        ("none", None),
    ];
    for (ni, tls) in [(0usize, false), (1, true)] {
        let n = &v.nodes[ni];
        for (ci, (security, enc)) in cases.iter().enumerate() {
            let uidx = ci % 2;
            let mut out = json!({"type": "vmess", "server": "127.0.0.1", "server_port": n.port,
                                 "uuid": UUIDS[uidx], "security": security, "alter_id": 0,
                                 "transport": {"type": "ws", "path": "/vmws", "headers": {"Host": DOMAIN}}});
            if let Some(e) = enc {
                out["packet_encoding"] = json!(e);
            }
            if tls {
                out["tls"] = json!({"enabled": true, "server_name": DOMAIN, "insecure": true});
            }
            let (proc_, socks) =
                sing_box_outbound(out, v.dir.path()).unwrap_or_else(|e| panic!("sing-box: {e:#}"));
            let (count, size) = if uidx == 0 { (20, 1200) } else { (9, 517) };
            match udp_echo_through(socks, echo.port, count, size) {
                Ok(b) => {
                    expect(&mut expected, n.node_id, uidx as u32 + 1, b, b);
                }
                Err(err) => failures.push(format!(
                    "sing-box vmess+ws udp {security} enc={enc:?} tls={tls} user {}: {err:#}\n{}",
                    uidx + 1,
                    proc_.log()
                )),
            }
            drop(proc_);
        }
    }
    v.finish(&failures, &expected);
}

/// A prober sending a bad auth id sees what Xray's VMess server does: the server reads a
/// bounded amount more (54 + a per-process base below 3266 + up to 63 bytes) and then closes,
/// well before the handshake timeout, with nothing ever written back; nothing is accounted.
#[test]
fn bad_auth_id_is_read_a_bounded_amount_then_closed() {
    use std::io::{Read, Write};
    let v = V2sp::start(vec![node(1, 0)], json!({})).unwrap();
    let port = v.nodes[0].port;
    let mut failures = Vec::new();
    for round in 0..3u8 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        s.write_all(&[round ^ 0x5a; 16]).unwrap();
        let started = std::time::Instant::now();
        let mut written = 0usize;
        let mut closed_after = None;
        for _ in 0..60 {
            if s.write_all(&[0xa5; 100]).is_err() {
                closed_after = Some(written);
                break;
            }
            written += 100;
            let mut b = [0u8; 64];
            match s.read(&mut b) {
                Ok(0) => {
                    closed_after = Some(written);
                    break;
                }
                Ok(n) => failures.push(format!("round {round}: the server answered {n} bytes")),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => {
                    closed_after = Some(written);
                    break;
                }
            }
        }
        match closed_after {
            Some(n) if (54..=3266 + 54 + 64 + 200).contains(&n) => {}
            other => failures.push(format!(
                "round {round}: closed after {other:?} bytes, {:?} (want 54..3500 bytes, then close)",
                started.elapsed()
            )),
        }
    }
    v.finish(&failures, &BTreeMap::new());
}
