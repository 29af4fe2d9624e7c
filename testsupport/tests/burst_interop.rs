//! Issue 17 §2 and §3: no connection lost at start or in a burst.
//!
//! Each test starts a node whose panel refuses the first user pull (so the node's config is
//! known before its users are), then, as soon as the node's port accepts connections, has the
//! real sing-box client open 1000 connections through it, 50 in flight, each a 1-byte echo to
//! a local target — what a browser or an app does when it opens. Every connection must be
//! served (a node listens only when every core has its users; a burst never stalls a
//! connection), and the panel must receive exactly 1000 bytes each way for the user.
//! REALITY (through shoes) is in `reality_interop.rs`. Runs on whichever I/O backend `V2SP_IO`
//! selects; `scripts/test.sh` runs it on both.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use v2sp_shared::panel::Action;
use v2sp_testsupport::harness::{
    echo_burst, expect, free_port, payload, self_signed_certs, sing_box_outbound, sing_box_ss, sing_box_tls,
    Echo, NodeSpec, Proc, Totals, V2sp,
};
use v2sp_testsupport::panel_sim::{users, Fault};

const UUIDS: [&str; 2] = [
    "705d4ada-fc32-48de-951c-2ab9d5765ce0",
    "0c6a030a-1aa1-4938-9cd7-d5ec4d9aee4e",
];
const DOMAIN: &str = "v2sp.test";
const TOTAL: usize = 1000;
const IN_FLIGHT: usize = 50;

/// Starts the node (first user pull refused), the client from `client(port, dir)`, and runs the
/// burst; fails with every lost connection and checks the panel's totals to the byte.
fn burst_case(info: Value, extra: Value, client: &dyn Fn(u16, &Path) -> (Proc, u16)) {
    let echo = Echo::start().unwrap();
    let port = free_port();
    let mut info = info;
    info["server_port"] = json!(port);
    info["base_config"] = json!({"push_interval": 1, "pull_interval": 1});
    let node = NodeSpec {
        node_id: 1,
        port,
        info,
        users: users(&UUIDS),
    };
    // The config arrives, the users do not (yet): the node must not listen until they do.
    let v = V2sp::start_with_sim(vec![node], extra, json!({}), &|sim| {
        sim.set_fault_times(Action::User, Fault::Status(500), 1)
    })
    .unwrap();
    let (_client, socks) = client(port, v.dir.path());
    let failures = echo_burst(socks, echo.port, TOTAL, IN_FLIGHT, 1, Duration::from_secs(10));
    let failures: Vec<String> = if failures.is_empty() {
        failures
    } else {
        let mut f = vec![format!("{} of {TOTAL} connections failed", failures.len())];
        f.extend(failures.into_iter().take(20));
        f
    };
    let mut expected: Totals = BTreeMap::new();
    expect(&mut expected, 1, 1, TOTAL as u64, TOTAL as u64);
    v.finish(&failures, &expected);
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[test]
fn burst_shadowsocks_aead_through_sing_box() {
    burst_case(
        json!({"node_type": "shadowsocks", "cipher": "aes-128-gcm"}),
        json!({}),
        &|port, dir| sing_box_ss(port, "aes-128-gcm", UUIDS[0], dir).unwrap(),
    );
}

#[test]
fn burst_shadowsocks_2022_through_sing_box() {
    let server_key = b64(&payload(16, 16 * 31));
    let user_key = b64(&UUIDS[0].as_bytes()[..16]);
    let password = format!("{server_key}:{user_key}");
    burst_case(
        json!({"node_type": "shadowsocks", "cipher": "2022-blake3-aes-128-gcm", "server_key": server_key}),
        json!({}),
        &|port, dir| sing_box_ss(port, "2022-blake3-aes-128-gcm", &password, dir).unwrap(),
    );
}

#[test]
fn burst_vmess_through_sing_box() {
    burst_case(
        json!({"node_type": "vmess", "tls": 0, "network": "tcp"}),
        json!({}),
        &|port, dir| {
            sing_box_outbound(
                json!({"type": "vmess", "server": "127.0.0.1", "server_port": port,
                       "uuid": UUIDS[0], "security": "aes-128-gcm", "alter_id": 0}),
                dir,
            )
            .unwrap()
        },
    );
}

fn tls_case(protocol: &str) {
    let certs = tempfile::tempdir().unwrap();
    let client_tls = json!({"enabled": true, "server_name": DOMAIN, "insecure": true});
    burst_case(
        json!({"node_type": protocol, "tls": 1, "network": "tcp", "tls_settings": {"server_name": DOMAIN}}),
        self_signed_certs(certs.path(), DOMAIN),
        &|port, dir| sing_box_tls(port, protocol, UUIDS[0], Some(client_tls.clone()), dir).unwrap(),
    );
}

#[test]
fn burst_trojan_tls_through_sing_box() {
    tls_case("trojan");
}

#[test]
fn burst_vless_tls_through_sing_box() {
    tls_case("vless");
}
