//! Issue "TLS protocols", first slice: the real sing-box client moves 1 MiB through v2sp's
//! Trojan and VLESS (TCP, TLS terminated by the data plane with a `CertMode: self`
//! certificate) to the echo server, sha256-checked; the panel receives exactly the bytes moved,
//! for the right user and nothing for the others; a wrong password / unknown uuid gets no data
//! through and is never accounted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use v2sp_testsupport::harness::{free_port, payload, sing_box_tls, tcp_echo_through, Echo, NodeSpec, V2sp};
use v2sp_testsupport::panel_sim::user;

const UUIDS: [&str; 3] = [
    "705d4ada-fc32-48de-951c-2ab9d5765ce0",
    "0c6a030a-1aa1-4938-9cd7-d5ec4d9aee4e",
    "9a3e1d52-7b64-4c1f-8e0a-5d2f6b9c1e47",
];
const DOMAIN: &str = "v2sp.test";

#[test]
fn sing_box_trojan_and_vless_over_tls_with_exact_accounting() {
    let echo = Echo::start().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let protocols = ["trojan", "vless"];
    let nodes: Vec<NodeSpec> = protocols
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let port = free_port();
            NodeSpec {
                node_id: i as u32 + 1,
                port,
                info: json!({"node_type": p, "server_port": port, "tls": 1, "network": "tcp",
                             "tls_settings": {"server_name": DOMAIN},
                             "base_config": {"push_interval": 1, "pull_interval": 1}}),
                users: UUIDS
                    .iter()
                    .enumerate()
                    .map(|(u, id)| user(u as u32 + 1, id))
                    .collect(),
            }
        })
        .collect();
    let cert_cfg = json!({"CertConfig": {"CertMode": "self", "CertDomain": DOMAIN,
        "CertFile": certs.path().join("{domain}.crt"), "KeyFile": certs.path().join("{domain}.key")}});
    let v = V2sp::start(nodes, cert_cfg).unwrap();
    assert!(
        certs.path().join("v2sp.test.crt").exists(),
        "self-signed certificate not written"
    );
    let mut failures = Vec::new();
    let mut expected: BTreeMap<u32, BTreeMap<u32, (u64, u64)>> = BTreeMap::new();
    for (i, p) in protocols.iter().enumerate() {
        let node = &v.nodes[i];
        // Users 1 and 2 move data; user 3 never connects and must see nothing.
        for uidx in [0usize, 1] {
            let (proc_, socks) = sing_box_tls(node.port, p, UUIDS[uidx], DOMAIN, v.dir.path())
                .unwrap_or_else(|e| panic!("sing-box: {e:#}"));
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
                Err(err) => failures.push(format!(
                    "sing-box {p} user {}: {err:#}\n{}",
                    uidx + 1,
                    proc_.log()
                )),
            }
            drop(proc_);
        }
        // Not a user of this node: nothing comes back, nothing is accounted.
        let stranger = "11111111-2222-4333-8444-555555555555";
        let (proc_, socks) = sing_box_tls(node.port, p, stranger, DOMAIN, v.dir.path())
            .unwrap_or_else(|e| panic!("sing-box: {e:#}"));
        if tcp_echo_through(socks, echo.port, &payload(4096, 99)).is_ok() {
            failures.push(format!("{p}: data went through for an unknown credential"));
        }
        drop(proc_);
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
        v.wait_totals(*node, exp, Duration::from_secs(20)).unwrap();
    }
}
