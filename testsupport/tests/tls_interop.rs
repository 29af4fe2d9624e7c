//! Issue "TLS protocols", first slice: the real sing-box client moves 1 MiB through v2sp's
//! Trojan and VLESS (TCP; TLS 1.3 and 1.2 terminated by the data plane with a `CertMode: self`
//! certificate, and VLESS in plaintext when the panel says `tls: 0`) to the echo server,
//! sha256-checked; the panel receives exactly the bytes moved, for the right user and nothing
//! for the others; a wrong password / unknown uuid gets no data through and is never accounted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use serde_json::{json, Value};
use v2sp_testsupport::harness::{
    free_port, payload, self_signed_certs, sing_box_tls, tcp_echo_through, Echo, NodeSpec, Totals, V2sp,
};
use v2sp_testsupport::panel_sim::users;

const UUIDS: [&str; 3] = [
    "705d4ada-fc32-48de-951c-2ab9d5765ce0",
    "0c6a030a-1aa1-4938-9cd7-d5ec4d9aee4e",
    "9a3e1d52-7b64-4c1f-8e0a-5d2f6b9c1e47",
];
const DOMAIN: &str = "v2sp.test";

/// sing-box `tls` object for user `uidx`: user 1 negotiates TLS 1.3, user 2 is held to 1.2.
fn client_tls(uidx: usize) -> Value {
    let max = if uidx == 0 { "1.3" } else { "1.2" };
    json!({"enabled": true, "server_name": DOMAIN, "insecure": true, "max_version": max})
}

#[test]
fn sing_box_trojan_and_vless_with_exact_accounting() {
    let echo = Echo::start().unwrap();
    let certs = tempfile::tempdir().unwrap();
    // (protocol, panel tls field)
    let kinds = [("trojan", 1), ("vless", 1), ("vless", 0)];
    let nodes: Vec<NodeSpec> = kinds
        .iter()
        .enumerate()
        .map(|(i, (p, tls))| {
            let port = free_port();
            NodeSpec {
                node_id: i as u32 + 1,
                port,
                info: json!({"node_type": p, "server_port": port, "tls": tls, "network": "tcp",
                             "tls_settings": {"server_name": DOMAIN},
                             "base_config": {"push_interval": 1, "pull_interval": 1}}),
                users: users(&UUIDS),
            }
        })
        .collect();
    let cert_cfg = self_signed_certs(certs.path(), DOMAIN);
    let v = V2sp::start(nodes, cert_cfg).unwrap();
    assert!(
        certs.path().join("v2sp.test.crt").exists(),
        "self-signed certificate not written"
    );
    let mut failures = Vec::new();
    let mut expected: Totals = BTreeMap::new();
    for (i, (p, tls)) in kinds.iter().enumerate() {
        let node = &v.nodes[i];
        let tls_for = |uidx: usize| (*tls == 1).then(|| client_tls(uidx));
        // Users 1 and 2 move data; user 3 never connects and must see nothing.
        for uidx in [0usize, 1] {
            let (proc_, socks) = sing_box_tls(node.port, p, UUIDS[uidx], tls_for(uidx), v.dir.path())
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
                    "sing-box {p} (tls {tls}) user {}: {err:#}\n{}",
                    uidx + 1,
                    proc_.log()
                )),
            }
            drop(proc_);
        }
        // Not a user of this node: nothing comes back, nothing is accounted.
        let stranger = "11111111-2222-4333-8444-555555555555";
        let (proc_, socks) = sing_box_tls(node.port, p, stranger, tls_for(0), v.dir.path())
            .unwrap_or_else(|e| panic!("sing-box: {e:#}"));
        if tcp_echo_through(socks, echo.port, &payload(4096, 99)).is_ok() {
            failures.push(format!(
                "{p} (tls {tls}): data went through for an unknown credential"
            ));
        }
        drop(proc_);
    }
    v.finish(&failures, &expected);
}

/// Issue 14: with no `CertMode` in the local config, the panel's `cert_config` (Xboard sends one
/// per node) decides: `self-signed` makes a certificate in `<StateDir>/certs` and sing-box
/// moves data through the Trojan node over it.
#[test]
fn panel_cert_config_serves_tls_when_the_local_config_says_nothing() {
    let echo = Echo::start().unwrap();
    let port = free_port();
    let node = NodeSpec {
        node_id: 1,
        port,
        info: json!({"node_type": "trojan", "server_port": port, "tls": 1, "network": "tcp",
                     "tls_settings": {"server_name": DOMAIN},
                     "cert_config": {"cert_mode": "self-signed", "domain": DOMAIN},
                     "base_config": {"push_interval": 1, "pull_interval": 1}}),
        users: users(&UUIDS),
    };
    let v = V2sp::start(vec![node], json!({})).unwrap();
    assert!(
        v.dir
            .path()
            .join("state/certs")
            .join(format!("{DOMAIN}.crt"))
            .exists(),
        "no certificate in the state directory\n{}",
        v.agent.log()
    );
    let (proc_, socks) = sing_box_tls(port, "trojan", UUIDS[0], Some(client_tls(0)), v.dir.path())
        .unwrap_or_else(|e| panic!("sing-box: {e:#}"));
    let data = payload(256 << 10, 77);
    let n = tcp_echo_through(socks, echo.port, &data)
        .unwrap_or_else(|e| panic!("{e:#}\n{}\n--- v2sp ---\n{}", proc_.log(), v.agent.log()));
    let mut expected: Totals = BTreeMap::new();
    expected.entry(1).or_default().insert(1, (n, n));
    v.finish(&[], &expected);
}
