//! Issue "data plane" done-when: the real sing-box client and shadowsocks-rust's `sslocal` move
//! data through v2sp (control plane + data plane, fed by the panel simulator) for every cipher,
//! TCP and UDP, sha256-checked; the panel receives exactly the bytes moved, for the right user
//! and nothing for the others. Runs on whichever I/O backend `V2SP_IO` selects.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use serde_json::json;
use v2sp_testsupport::harness::{
    free_port, payload, sing_box_ss, sslocal, tcp_echo_through, udp_echo_through, Echo, NodeSpec, Totals,
    V2sp,
};
use v2sp_testsupport::panel_sim::users;

const UUIDS: [&str; 3] = [
    "705d4ada-fc32-48de-951c-2ab9d5765ce0",
    "0c6a030a-1aa1-4938-9cd7-d5ec4d9aee4e",
    "9a3e1d52-7b64-4c1f-8e0a-5d2f6b9c1e47",
];

struct Cipher {
    method: &'static str,
    /// Server PSK length for 2022 ciphers (0 = AEAD-2017).
    psk_len: usize,
}

const CIPHERS: [Cipher; 6] = [
    Cipher {
        method: "aes-128-gcm",
        psk_len: 0,
    },
    Cipher {
        method: "aes-256-gcm",
        psk_len: 0,
    },
    Cipher {
        method: "chacha20-ietf-poly1305",
        psk_len: 0,
    },
    Cipher {
        method: "2022-blake3-aes-128-gcm",
        psk_len: 16,
    },
    Cipher {
        method: "2022-blake3-aes-256-gcm",
        psk_len: 32,
    },
    Cipher {
        method: "2022-blake3-chacha20-poly1305",
        psk_len: 32,
    },
];

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn server_key(c: &Cipher) -> Option<String> {
    (c.psk_len > 0).then(|| b64(&payload(c.psk_len, c.psk_len as u64 * 31)))
}

/// The password a panel hands user `i` for this node (spec §F.5).
fn password(c: &Cipher, i: usize) -> String {
    let uuid = UUIDS[i];
    match c.psk_len {
        0 => uuid.to_string(),
        n => {
            let user_key = b64(&uuid.as_bytes()[..n]);
            // Identity headers exist for the AES variants only; chacha users use their own key.
            if c.method.contains("chacha") {
                user_key
            } else {
                format!("{}:{user_key}", server_key(c).unwrap())
            }
        }
    }
}

#[test]
fn sslocal_and_sing_box_through_every_cipher_with_exact_accounting() {
    let echo = Echo::start().unwrap();
    let nodes: Vec<NodeSpec> = CIPHERS
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let port = free_port();
            NodeSpec {
                node_id: i as u32 + 1,
                port,
                info: json!({"node_type": "shadowsocks", "server_port": port, "cipher": c.method,
                             "server_key": server_key(c), "base_config": {"push_interval": 1, "pull_interval": 1}}),
                users: users(&UUIDS),
            }
        })
        .collect();
    let v = V2sp::start(nodes, json!({})).unwrap();
    let mut failures = Vec::new();
    let mut expected: Totals = BTreeMap::new();
    for (i, c) in CIPHERS.iter().enumerate() {
        let node = &v.nodes[i];
        // sslocal as user 1, sing-box as user 2; user 3 never connects and must see nothing.
        for (who, uidx) in [("sslocal", 0usize), ("sing-box", 1usize)] {
            let pw = password(c, uidx);
            let client = match who {
                "sslocal" => sslocal(node.port, c.method, &pw, v.dir.path()),
                _ => sing_box_ss(node.port, c.method, &pw, v.dir.path()),
            };
            let (proc_, socks) = match client {
                Ok(x) => x,
                Err(e) => panic!("{who}: {e:#}"),
            };
            let data = payload(1 << 20, (i * 10 + uidx) as u64);
            let e = expected
                .entry(node.node_id)
                .or_default()
                .entry(uidx as u32 + 1)
                .or_default();
            match tcp_echo_through(socks, echo.port, &data) {
                Ok(n) => {
                    e.0 += n;
                    e.1 += n;
                }
                Err(err) => failures.push(format!("{who} {} TCP: {err:#}\n{}", c.method, proc_.log())),
            }
            match udp_echo_through(socks, echo.port, 8, 1200) {
                Ok(n) => {
                    e.0 += n;
                    e.1 += n;
                }
                Err(err) => failures.push(format!("{who} {} UDP: {err:#}\n{}", c.method, proc_.log())),
            }
            drop(proc_);
        }
    }
    if !failures.is_empty() {
        panic!(
            "{} failures:\n{}\n--- v2sp log ---\n{}",
            failures.len(),
            failures.join("\n"),
            v.agent.log()
        );
    }
    for (node, exp) in &expected {
        let exp: BTreeMap<u32, (u64, u64)> = exp
            .iter()
            .filter(|(_, v)| v.0 + v.1 > 0)
            .map(|(k, v)| (*k, *v))
            .collect();
        v.wait_totals(*node, &exp, Duration::from_secs(20)).unwrap();
    }
}
