//! Issue 4: the shoes client (cfal/shoes 0.3.2) as an interop peer for Trojan, VLESS and VMess.
//!
//! shoes' SOCKS inbound forwards through its client chain to v2sp:
//!
//! * Trojan over TLS and over TLS + WebSocket;
//! * VLESS over TLS and over TLS + WebSocket;
//! * VMess AEAD with aes-128-gcm, chacha20-poly1305, `any` (shoes then asks for
//!   chacha20-poly1305) and none, over plain TCP, TLS, WebSocket and TLS + WebSocket;
//!
//! each case moving 2-3 MiB to the echo server and back (sha256-checked both ways). UDP (shoes'
//! VLESS and VMess clients send the UDP command; its Trojan client has no UDP): datagrams over
//! VLESS + TLS, VMess + TLS and VMess + WebSocket come back intact. The panel receives exactly
//! the bytes moved, per node and per user (users alternate; a third user never connects and
//! must not appear); a stranger's uuid gets nothing through.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use serde_json::{json, Value};
use v2sp_testsupport::harness::{
    expect, free_port, payload, self_signed_certs, tcp_echo_through, udp_echo_through, Echo, NodeSpec,
    Totals, V2sp,
};
use v2sp_testsupport::panel_sim::users;
use v2sp_testsupport::peers::shoes;

const UUIDS: [&str; 3] = [
    "705d4ada-fc32-48de-951c-2ab9d5765ce0",
    "0c6a030a-1aa1-4938-9cd7-d5ec4d9aee4e",
    "9a3e1d52-7b64-4c1f-8e0a-5d2f6b9c1e47",
];
const STRANGER: &str = "11111111-2222-4333-8444-555555555555";
const DOMAIN: &str = "v2sp.test";
const WS_PATH: &str = "/shoes";

/// One v2sp node and what shoes does through it.
struct NodeCase {
    protocol: &'static str,
    tls: bool,
    ws: bool,
    /// TCP runs: the inner protocol object for a user's secret (one run per entry, users
    /// alternating 1, 2, 1, …).
    tcp: Vec<fn(&str) -> Value>,
    /// Also send UDP (user 2).
    udp: bool,
    /// Also try a stranger's uuid (must get nothing through, nothing accounted).
    stranger: bool,
}

fn cases() -> Vec<NodeCase> {
    vec![
        NodeCase {
            protocol: "trojan",
            tls: true,
            ws: false,
            tcp: vec![shoes::trojan, shoes::trojan],
            udp: false,
            stranger: true,
        },
        NodeCase {
            protocol: "trojan",
            tls: true,
            ws: true,
            tcp: vec![shoes::trojan, shoes::trojan],
            udp: false,
            stranger: false,
        },
        NodeCase {
            protocol: "vless",
            tls: true,
            ws: false,
            tcp: vec![shoes::vless, shoes::vless],
            udp: true,
            stranger: true,
        },
        NodeCase {
            protocol: "vless",
            tls: true,
            ws: true,
            tcp: vec![shoes::vless, shoes::vless],
            udp: false,
            stranger: false,
        },
        NodeCase {
            protocol: "vmess",
            tls: false,
            ws: false,
            tcp: vec![
                |u| shoes::vmess("aes-128-gcm", u),
                |u| shoes::vmess("chacha20-poly1305", u),
                |u| shoes::vmess("none", u),
                |u| shoes::vmess("any", u),
            ],
            udp: false,
            stranger: true,
        },
        NodeCase {
            protocol: "vmess",
            tls: true,
            ws: false,
            tcp: vec![|u| shoes::vmess("chacha20-poly1305", u), |u| {
                shoes::vmess("aes-128-gcm", u)
            }],
            udp: true,
            stranger: false,
        },
        NodeCase {
            protocol: "vmess",
            tls: false,
            ws: true,
            tcp: vec![|u| shoes::vmess("aes-128-gcm", u), |u| {
                shoes::vmess("chacha20-poly1305", u)
            }],
            udp: true,
            stranger: false,
        },
        NodeCase {
            protocol: "vmess",
            tls: true,
            ws: true,
            tcp: vec![|u| shoes::vmess("any", u), |u| shoes::vmess("aes-128-gcm", u)],
            udp: false,
            stranger: false,
        },
    ]
}

/// The shoes chain around `inner` for this node's transport and security.
fn chain(c: &NodeCase, inner: Value) -> Value {
    let inner = if c.ws {
        shoes::ws(WS_PATH, Some(DOMAIN), inner)
    } else {
        inner
    };
    if c.tls {
        shoes::tls(DOMAIN, inner)
    } else {
        inner
    }
}

#[test]
fn shoes_trojan_vless_vmess_with_exact_accounting() {
    let echo = Echo::start().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let cases = cases();
    let nodes: Vec<NodeSpec> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let port = free_port();
            let mut info = json!({"node_type": c.protocol, "server_port": port, "tls": u8::from(c.tls),
                                  "network": "tcp", "tls_settings": {"server_name": DOMAIN},
                                  "base_config": {"push_interval": 1, "pull_interval": 1}});
            if c.ws {
                info["network"] = json!("ws");
                info["networkSettings"] = json!({"path": WS_PATH, "headers": {"Host": DOMAIN}});
            }
            NodeSpec {
                node_id: i as u32 + 1,
                port,
                info,
                users: users(&UUIDS),
            }
        })
        .collect();
    let cert_cfg = self_signed_certs(certs.path(), DOMAIN);
    let v = V2sp::start(nodes, cert_cfg).unwrap();
    let mut failures = Vec::new();
    let mut expected: Totals = BTreeMap::new();
    let mut add = |node: u32, uidx: usize, n: u64| {
        expect(&mut expected, node, uidx as u32 + 1, n, n);
    };
    for (i, c) in cases.iter().enumerate() {
        let n = &v.nodes[i];
        let what = format!(
            "{}{}{} (node {})",
            c.protocol,
            if c.tls { " + tls" } else { "" },
            if c.ws { " + ws" } else { "" },
            n.node_id
        );
        for (ri, inner) in c.tcp.iter().enumerate() {
            let uidx = ri % 2;
            let (proc_, socks) = shoes::client(n.port, chain(c, inner(UUIDS[uidx])), v.dir.path())
                .unwrap_or_else(|e| panic!("shoes: {e:#}"));
            // 2-3 MiB, a different size per run so a mix-up shows in the totals.
            let data = payload((2 << 20) + (i * 4 + ri) * 65_537, (i * 10 + ri) as u64);
            match tcp_echo_through(socks, echo.port, &data) {
                Ok(b) => add(n.node_id, uidx, b),
                Err(e) => failures.push(format!(
                    "{what} tcp run {ri} user {}: {e:#}\n--- shoes ---\n{}",
                    uidx + 1,
                    proc_.log()
                )),
            }
            drop(proc_);
        }
        if c.udp {
            let inner = match c.protocol {
                "vless" => shoes::vless(UUIDS[1]),
                _ => shoes::vmess("aes-128-gcm", UUIDS[1]),
            };
            let (proc_, socks) = shoes::client(n.port, chain(c, inner), v.dir.path())
                .unwrap_or_else(|e| panic!("shoes: {e:#}"));
            match udp_echo_through(socks, echo.port, 16, 1000 + i) {
                Ok(b) => add(n.node_id, 1, b),
                Err(e) => failures.push(format!(
                    "{what} udp user 2: {e:#}\n--- shoes ---\n{}",
                    proc_.log()
                )),
            }
            drop(proc_);
        }
        if c.stranger {
            let secret = if c.protocol == "trojan" {
                "not-a-user"
            } else {
                STRANGER
            };
            let inner = c.tcp.first().map(|f| f(secret)).unwrap();
            let (proc_, socks) = shoes::client(n.port, chain(c, inner), v.dir.path())
                .unwrap_or_else(|e| panic!("shoes: {e:#}"));
            if tcp_echo_through(socks, echo.port, &payload(4096, 99)).is_ok() {
                failures.push(format!("{what}: data went through for a stranger"));
            }
            drop(proc_);
        }
    }
    v.finish(&failures, &expected);
}
