//! Issue 4 slices: UDP over the TLS-family streams and fallbacks.
//!
//! * The real sing-box client sends UDP through its SOCKS inbound over v2sp's Trojan (UDP
//!   ASSOCIATE), VLESS with `packet_encoding: "xudp"` (mux command, XUDP frames; also
//!   sing-box's default) and `""` (UDP command) to a loopback UDP echo server: every datagram comes back intact and
//!   the panel receives exactly the payload bytes, for the right user.
//! * Probe resistance: a plain TLS client (curl) sending HTTP to a Trojan or VLESS node gets
//!   the configured fallback's answer (chosen by path; PROXY header when `ProxyProtocolVer`
//!   is set), never accounted as user traffic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use v2sp_testsupport::harness::{
    expect, free_port, peer, self_signed_certs, sing_box_outbound, udp_echo_through, wait_tcp, Echo,
    NodeSpec, Proc, Totals, V2sp,
};
use v2sp_testsupport::panel_sim::users;

const UUIDS: [&str; 2] = [
    "705d4ada-fc32-48de-951c-2ab9d5765ce0",
    "0c6a030a-1aa1-4938-9cd7-d5ec4d9aee4e",
];
const DOMAIN: &str = "v2sp.test";

fn node(node_id: u32, protocol: &str) -> NodeSpec {
    let port = free_port();
    NodeSpec {
        node_id,
        port,
        info: json!({"node_type": protocol, "server_port": port, "tls": 1, "network": "tcp",
                     "tls_settings": {"server_name": DOMAIN},
                     "base_config": {"push_interval": 1, "pull_interval": 1}}),
        users: users(&UUIDS),
    }
}

fn cert_cfg(dir: &std::path::Path) -> Value {
    self_signed_certs(dir, DOMAIN)
}

#[test]
fn sing_box_udp_over_trojan_and_vless_with_exact_accounting() {
    let echo = Echo::start().unwrap();
    let certs = tempfile::tempdir().unwrap();
    // (protocol, vless packet_encoding): "xudp" = mux command with XUDP frames, "" = disabled
    // (UDP command, length-prefixed packets), absent = sing-box's default (xudp).
    let kinds = [
        ("trojan", None),
        ("vless", Some("xudp")),
        ("vless", Some("")),
        ("vless", None),
    ];
    let nodes: Vec<NodeSpec> = kinds
        .iter()
        .enumerate()
        .map(|(i, (p, _))| node(i as u32 + 1, p))
        .collect();
    let v = V2sp::start(nodes, cert_cfg(certs.path())).unwrap();
    let mut failures = Vec::new();
    let mut expected: Totals = BTreeMap::new();
    for (i, (p, enc)) in kinds.iter().enumerate() {
        let n = &v.nodes[i];
        for uidx in [0usize, 1] {
            let mut out = json!({"type": p, "tag": "out", "server": "127.0.0.1", "server_port": n.port,
                "tls": {"enabled": true, "server_name": DOMAIN, "insecure": true}});
            let o = out.as_object_mut().unwrap();
            if *p == "vless" {
                o.insert("uuid".into(), json!(UUIDS[uidx]));
                if let Some(e) = enc {
                    o.insert("packet_encoding".into(), json!(e));
                }
            } else {
                o.insert("password".into(), json!(UUIDS[uidx]));
            }
            let (proc_, socks) =
                sing_box_outbound(out, v.dir.path()).unwrap_or_else(|e| panic!("sing-box: {e:#}"));
            // Different sizes per user so a mix-up shows in the totals.
            let (count, size) = if uidx == 0 { (20, 1200) } else { (7, 333) };
            match udp_echo_through(socks, echo.port, count, size) {
                Ok(bytes) => {
                    expect(&mut expected, n.node_id, uidx as u32 + 1, bytes, bytes);
                }
                Err(err) => failures.push(format!(
                    "sing-box {p} ({enc:?}) user {}: {err:#}\n{}",
                    uidx + 1,
                    proc_.log()
                )),
            }
            drop(proc_);
        }
    }
    v.finish(&failures, &expected);
}

/// Debian's v2ray 4.34 (v2fly) as a second client: Trojan UDP and VLESS UDP command (it has
/// no XUDP), through its SOCKS inbound.
#[test]
fn v2ray_udp_over_trojan_and_vless_with_exact_accounting() {
    let echo = Echo::start().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let kinds = ["trojan", "vless"];
    let nodes: Vec<NodeSpec> = kinds
        .iter()
        .enumerate()
        .map(|(i, p)| node(i as u32 + 1, p))
        .collect();
    let v = V2sp::start(nodes, cert_cfg(certs.path())).unwrap();
    let bin = peer("v2ray").unwrap();
    let mut expected: Totals = BTreeMap::new();
    for (i, p) in kinds.iter().enumerate() {
        let n = &v.nodes[i];
        let settings = if *p == "trojan" {
            json!({"servers": [{"address": "127.0.0.1", "port": n.port, "password": UUIDS[0]}]})
        } else {
            json!({"vnext": [{"address": "127.0.0.1", "port": n.port,
                              "users": [{"id": UUIDS[0], "encryption": "none"}]}]})
        };
        let socks = free_port();
        let cfg = json!({
            "log": {"loglevel": "warning"},
            "inbounds": [{"listen": "127.0.0.1", "port": socks, "protocol": "socks",
                          "settings": {"udp": true, "ip": "127.0.0.1"}}],
            "outbounds": [{"protocol": p, "settings": settings,
                           "streamSettings": {"security": "tls",
                               "tlsSettings": {"serverName": DOMAIN, "allowInsecure": true}}}],
        });
        let path = v.dir.path().join(format!("v2ray-{socks}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
        let mut cmd = Command::new(&bin);
        cmd.arg("-config").arg(&path);
        let proc_ = Proc::spawn("v2ray", cmd, v.dir.path().join(format!("v2ray-{socks}.log"))).unwrap();
        wait_tcp(socks, Duration::from_secs(10)).unwrap_or_else(|e| panic!("v2ray: {e:#}\n{}", proc_.log()));
        let bytes = udp_echo_through(socks, echo.port, 10, 900).unwrap_or_else(|e| {
            panic!(
                "v2ray {p}: {e:#}\n{}\n--- v2sp ---\n{}",
                proc_.log(),
                v.agent.log()
            )
        });
        expected.entry(n.node_id).or_default().insert(1, (bytes, bytes));
        drop(proc_);
    }
    for (node, exp) in &expected {
        v.wait_totals(*node, exp, Duration::from_secs(20)).unwrap();
    }
}

/// A tiny HTTP/1.1 server: answers every request with `name`, the request path and the PROXY
/// protocol line that preceded it (if any), then closes.
fn http_server(name: &'static str) -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                s.set_read_timeout(Some(Duration::from_secs(5))).ok();
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 65536 {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&req).to_string();
                let (proxy, rest) = match text.strip_prefix("PROXY ") {
                    Some(r) => {
                        let (line, rest) = r.split_once("\r\n").unwrap_or((r, ""));
                        (line.to_string(), rest.to_string())
                    }
                    None => ("none".to_string(), text.clone()),
                };
                let path = rest.split(' ').nth(1).unwrap_or("?").to_string();
                let body = format!("{name} path={path} proxy={proxy}");
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    port
}

fn curl(port: u16, path: &str) -> String {
    let out = Command::new("curl")
        .args(["-sk", "--http1.1", "-m", "10", "--resolve"])
        .arg(format!("{DOMAIN}:{port}:127.0.0.1"))
        .arg(format!("https://{DOMAIN}:{port}{path}"))
        .output()
        .expect("curl must be installed for the probe test");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// `openssl s_client` offering one ALPN value, sending `req` and reading until the server closes.
fn s_client_alpn(port: u16, alpn: &str, req: &str) -> String {
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-ign_eof",
            "-servername",
            DOMAIN,
            "-alpn",
            alpn,
            "-connect",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl must be installed for the probe test");
    child.stdin.take().unwrap().write_all(req.as_bytes()).unwrap();
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if matches!(child.try_wait(), Ok(Some(_))) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn http_probe_gets_the_fallback_site() {
    let certs = tempfile::tempdir().unwrap();
    let (site, ws, h2) = (http_server("site"), http_server("ws"), http_server("h2"));
    let nodes = vec![node(1, "trojan"), node(2, "vless")];
    let mut extra = cert_cfg(certs.path());
    let o = extra.as_object_mut().unwrap();
    o.insert("EnableFallback".into(), json!(true));
    o.insert(
        "FallBackConfigs".into(),
        json!([{"Dest": site.to_string()}, {"Path": "/ws", "Dest": format!("127.0.0.1:{ws}"), "ProxyProtocolVer": 1},
               {"Alpn": "h2", "Dest": h2.to_string()}]),
    );
    let v = V2sp::start(nodes, extra).unwrap();
    let mut failures = Vec::new();
    for n in &v.nodes {
        let got = curl(n.port, "/index.html");
        if got != "site path=/index.html proxy=none" {
            failures.push(format!("node {} /index.html: {got:?}", n.node_id));
        }
        let got = curl(n.port, "/ws?x=1");
        if !(got.starts_with("ws path=/ws?x=1 proxy=TCP4 127.0.0.1 127.0.0.1 ")
            && got.ends_with(&format!(" {}", n.port)))
        {
            failures.push(format!("node {} /ws: {got:?}", n.node_id));
        }
        // A client negotiating h2 goes to the h2 fallback (the server offers the fallbacks'
        // ALPN values); the tiny server answers whatever it is sent.
        let got = s_client_alpn(n.port, "h2", "GET /alpn HTTP/1.1\r\n\r\n");
        if !got.contains("h2 path=/alpn proxy=none") {
            failures.push(format!("node {} alpn h2: {got:?}", n.node_id));
        }
    }
    if !failures.is_empty() {
        panic!("{}\n--- v2sp log ---\n{}", failures.join("\n"), v.agent.log());
    }
    // Fallback traffic is nobody's: after a few push intervals the panel has nothing.
    std::thread::sleep(Duration::from_secs(3));
    for n in &v.nodes {
        assert!(
            v.sim.totals(n.node_id).is_empty(),
            "fallback traffic was accounted"
        );
    }
}
