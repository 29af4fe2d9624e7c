//! Audit (block) rules end to end: the panel's `routes` reach the data plane through the
//! control plane, and real clients (shadowsocks-rust's `sslocal`, sing-box) asking for a
//! blocked destination get their connection closed with nothing relayed or counted, while
//! everything else passes. A bad pattern from the panel is skipped, not fatal. Runs on
//! whichever I/O backend `V2SP_IO` selects.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use serde_json::json;
use v2sp_testsupport::harness::{
    dnsmasq, free_port, payload, sing_box_ss, socks5_connect, socks5_connect_domain, sslocal, Echo, NodeSpec,
    Totals, V2sp,
};
use v2sp_testsupport::panel_sim::users;

const UUIDS: [&str; 2] = [
    "705d4ada-fc32-48de-951c-2ab9d5765ce0",
    "0c6a030a-1aa1-4938-9cd7-d5ec4d9aee4e",
];

/// Echo `data` over an open tunnel (`harness::echo_or_refused`).
fn echo(mut s: std::net::TcpStream, data: &[u8]) -> anyhow::Result<bool> {
    v2sp_testsupport::harness::echo_or_refused(&mut s, data)
}

/// A minimal TLS 1.3 ClientHello naming `name` in its server_name extension.
fn client_hello(name: &str) -> Vec<u8> {
    let n = name.as_bytes();
    let be16 = |v: usize| (v as u16).to_be_bytes();
    let mut ext = vec![0, 0];
    ext.extend_from_slice(&be16(n.len() + 5));
    ext.extend_from_slice(&be16(n.len() + 3));
    ext.push(0);
    ext.extend_from_slice(&be16(n.len()));
    ext.extend_from_slice(n);
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7; 32]);
    body.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
    body.extend_from_slice(&be16(ext.len()));
    body.extend_from_slice(&ext);
    let mut hs = vec![1, 0];
    hs.extend_from_slice(&be16(body.len()));
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 3, 1];
    rec.extend_from_slice(&be16(hs.len()));
    rec.extend_from_slice(&hs);
    rec
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            for d in it.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn blocked_destinations_are_refused_and_nothing_else() {
    let echo_srv = Echo::start().unwrap();
    let port = free_port();
    let routes = json!([
        {"id": 1, "match": ["domain:blocked.test", "regexp:^evil\\."], "action": "block", "action_value": ""},
        {"id": 2, "match": ["127.0.0.2/32"], "action": "block"},
        // Skipped with a warning; the node still serves.
        {"id": 3, "match": ["regexp:(unclosed"], "action": "block"},
        // Checked against the client's first bytes.
        {"id": 5, "match": ["protocol:bittorrent"], "action": "block"},
        // Not a block route: ignored.
        {"id": 4, "match": ["localhost"], "action": "direct"},
    ]);
    let node = NodeSpec {
        node_id: 1,
        port,
        info: json!({"node_type": "shadowsocks", "server_port": port, "cipher": "aes-128-gcm",
                     "routes": routes, "base_config": {"push_interval": 1, "pull_interval": 1}}),
        users: users(&UUIDS),
    };
    let v = V2sp::start(vec![node], json!({})).unwrap();
    let mut failures = Vec::new();
    let mut expected: Totals = BTreeMap::new();
    for (who, uidx) in [("sslocal", 0usize), ("sing-box", 1usize)] {
        let (proc_, socks) = match who {
            "sslocal" => sslocal(port, "aes-128-gcm", UUIDS[uidx], v.dir.path()),
            _ => sing_box_ss(port, "aes-128-gcm", UUIDS[uidx], v.dir.path()),
        }
        .unwrap();
        let data = payload(64 << 10, uidx as u64);
        // Allowed: by name (resolved by the data plane) and by address.
        for (what, conn) in [
            (
                "localhost by name",
                socks5_connect_domain(socks, "localhost", echo_srv.port),
            ),
            ("127.0.0.1", socks5_connect(socks, echo_srv.port)),
        ] {
            match conn.and_then(|s| echo(s, &data)) {
                Ok(true) => {
                    let e = expected.entry(1).or_default().entry(uidx as u32 + 1).or_default();
                    e.0 += data.len() as u64;
                    e.1 += data.len() as u64;
                }
                Ok(false) => failures.push(format!("{who}: {what} was refused\n{}", proc_.log())),
                Err(e) => failures.push(format!("{who}: {what}: {e:#}\n{}", proc_.log())),
            }
        }
        // Blocked: by domain suffix, by regex, by network.
        for host in ["www.blocked.test", "blocked.test", "evil.example", "127.0.0.2"] {
            match socks5_connect_domain(socks, host, echo_srv.port).and_then(|s| echo(s, &data)) {
                Ok(false) | Err(_) => {}
                Ok(true) => failures.push(format!("{who}: {host} was not blocked")),
            }
        }
        // Blocked by what the first bytes say, though the client asked for an allowed IP:
        // an HTTP Host and a TLS SNI under a blocked domain, a BitTorrent handshake.
        let mut bt = vec![19u8];
        bt.extend_from_slice(b"BitTorrent protocol");
        bt.extend_from_slice(&[0u8; 48]);
        for (what, first) in [
            (
                "HTTP Host",
                b"GET / HTTP/1.1\r\nHost: www.blocked.test\r\n\r\n".to_vec(),
            ),
            ("TLS SNI", client_hello("cdn.blocked.test")),
            ("BitTorrent", bt),
        ] {
            match socks5_connect(socks, echo_srv.port).and_then(|s| echo(s, &first)) {
                Ok(false) | Err(_) => {}
                Ok(true) => failures.push(format!("{who}: {what} to 127.0.0.1 was not blocked")),
            }
        }
        // The same HTTP request naming an allowed host passes (and is counted).
        let ok = b"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n".to_vec();
        match socks5_connect(socks, echo_srv.port).and_then(|s| echo(s, &ok)) {
            Ok(true) => {
                let e = expected.entry(1).or_default().entry(uidx as u32 + 1).or_default();
                e.0 += ok.len() as u64;
                e.1 += ok.len() as u64;
            }
            Ok(false) => failures.push(format!("{who}: HTTP to allowed.test was refused")),
            Err(e) => failures.push(format!("{who}: HTTP to allowed.test: {e:#}")),
        }
        drop(proc_);
    }
    // The log is colored: drop the escape sequences before looking for `rule=N`.
    let log = strip_ansi(&v.agent.log());
    for want in [
        "destination blocked by audit rule",
        "rule=1",
        "rule=2",
        "rule=5",
        "sniffed=http www.blocked.test",
        "sniffed=tls cdn.blocked.test",
        "audit rule entry skipped",
    ] {
        if !log.contains(want) {
            failures.push(format!("the v2sp log has no {want:?}"));
        }
    }
    // Only the allowed transfers are counted, exactly.
    v.finish(&failures, &expected);
}

/// The panel's `dns` routes: names under a route are resolved by its server (Debian's dnsmasq
/// here, answering `routed.test` and everything under it with 127.0.0.1), other names by the
/// system resolver (which knows no `*.test` name).
#[test]
fn dns_routes_resolve_through_the_routes_server() {
    let echo_srv = Echo::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (dns, dns_port) = dnsmasq("routed.test", dir.path()).unwrap();
    let port = free_port();
    let routes = json!([
        {"id": 7, "match": ["domain:routed.test"], "action": "dns", "action_value": format!("127.0.0.1:{dns_port}")},
    ]);
    let node = NodeSpec {
        node_id: 1,
        port,
        info: json!({"node_type": "shadowsocks", "server_port": port, "cipher": "aes-128-gcm",
                     "routes": routes, "base_config": {"push_interval": 1, "pull_interval": 1}}),
        users: users(&UUIDS),
    };
    let v = V2sp::start(vec![node], json!({})).unwrap();
    let (client, socks) = sslocal(port, "aes-128-gcm", UUIDS[0], v.dir.path()).unwrap();
    let data = payload(32 << 10, 9);
    let mut failures = Vec::new();
    let mut expected: Totals = BTreeMap::new();
    match socks5_connect_domain(socks, "www.routed.test", echo_srv.port).and_then(|s| echo(s, &data)) {
        Ok(true) => {
            expected.insert(1, BTreeMap::from([(1, (data.len() as u64, data.len() as u64))]));
        }
        Ok(false) => failures.push(format!("www.routed.test was not reached\n{}", client.log())),
        Err(e) => failures.push(format!("www.routed.test: {e:#}\n{}", client.log())),
    }
    if let Ok(true) =
        socks5_connect_domain(socks, "www.unrouted.test", echo_srv.port).and_then(|s| echo(s, &data))
    {
        failures.push("www.unrouted.test resolved: it should have gone to the system resolver".into());
    }
    let log = dns.log();
    if !log.contains("www.routed.test") {
        failures.push(format!("dnsmasq never saw www.routed.test:\n{log}"));
    }
    if log.contains("unrouted") {
        failures.push(format!("dnsmasq was asked for a name outside its route:\n{log}"));
    }
    drop(client);
    v.finish(&failures, &expected);
}
