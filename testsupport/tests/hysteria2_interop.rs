//! Hysteria 2: the real sing-box client (1.14, its `hysteria2` outbound, password = the user's
//! uuid) against v2sp's Hysteria 2 node over QUIC, configured through the panel simulator
//! (`CertMode: self`).
//!
//! * TCP echo transfers of several MiB, sha256-checked both ways, one after another and
//!   concurrently (streams of one QUIC connection), for two users: the panel receives exactly
//!   the payload bytes per user, both directions.
//! * UDP through sing-box (QUIC datagrams; large packets fragmented both ways) comes back
//!   intact and is counted exactly.
//! * A stream to a closed port fails alone (TCP response with an error) and the next works.
//! * A wrong password gets nothing through (the server answers 404) and is never accounted.
//! * A user removed on the panel is cut off: the QUIC connection is closed, its streams'
//!   destination connections see EOF, and a new connection is refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use v2sp_testsupport::harness::{
    eof_counter, expect, free_port, payload, self_signed_certs, sing_box_outbound, socks5_connect,
    tcp_echo_through, udp_echo_through, Echo, NodeSpec, Totals, V2sp,
};
use v2sp_testsupport::panel_sim::{user, users};

const UUIDS: [&str; 3] = [
    "705d4ada-fc32-48de-951c-2ab9d5765ce0",
    "0c6a030a-1aa1-4938-9cd7-d5ec4d9aee4e",
    "9a3e1d52-7b64-4c1f-8e0a-5d2f6b9c1e47",
];
const STRANGER: &str = "11111111-2222-4333-8444-555555555555";
const DOMAIN: &str = "v2sp.test";

/// Xboard's shape of a Hysteria 2 node (`hysteria`, version 2).
fn hy2_node(node_id: u32, info_extra: Value) -> NodeSpec {
    let port = free_port();
    let mut info = json!({"node_type": "hysteria2", "protocol": "hysteria", "version": 2,
                          "server_port": port, "server_name": DOMAIN,
                          "up_mbps": 0, "down_mbps": 0, "obfs": null,
                          "base_config": {"push_interval": 1, "pull_interval": 1}});
    if let (Some(m), Some(x)) = (info.as_object_mut(), info_extra.as_object()) {
        for (k, v) in x {
            m.insert(k.clone(), v.clone());
        }
    }
    NodeSpec {
        node_id,
        port,
        info,
        users: users(&UUIDS),
    }
}

fn sing_box_hy2(port: u16, password: &str, dir: &std::path::Path) -> (v2sp_testsupport::harness::Proc, u16) {
    let out = json!({"type": "hysteria2", "server": "127.0.0.1", "server_port": port, "password": password,
                     "tls": {"enabled": true, "server_name": DOMAIN, "insecure": true, "alpn": ["h3"]}});
    sing_box_outbound(out, dir).unwrap_or_else(|e| panic!("sing-box: {e:#}"))
}

fn start(nodes: Vec<NodeSpec>, certs: &std::path::Path) -> V2sp {
    V2sp::start(nodes, self_signed_certs(certs, DOMAIN)).unwrap()
}

#[test]
fn sing_box_hysteria2_tcp_with_exact_accounting() {
    let echo = Echo::start().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let v = start(vec![hy2_node(1, json!({}))], certs.path());
    let n = &v.nodes[0];
    let mut failures = Vec::new();
    let mut expected: Totals = BTreeMap::new();
    for uidx in [0usize, 1] {
        let what = format!("sing-box hysteria2 user {}", uidx + 1);
        let (proc_, socks) = sing_box_hy2(n.port, UUIDS[uidx], v.dir.path());
        let mut moved = 0u64;
        for k in 0..3 {
            let data = payload((3 << 20) + k * 4099 + uidx, (uidx * 100 + k) as u64);
            match tcp_echo_through(socks, echo.port, &data) {
                Ok(b) => moved += b,
                Err(e) => failures.push(format!("{what} sequential {k}: {e:#}\n{}", proc_.log())),
            }
        }
        let threads: Vec<_> = (0..4)
            .map(|k| {
                let data = payload((1 << 20) + k * 77_777, (uidx * 1000 + k) as u64);
                let port = echo.port;
                std::thread::spawn(move || tcp_echo_through(socks, port, &data))
            })
            .collect();
        for (k, t) in threads.into_iter().enumerate() {
            match t.join().unwrap() {
                Ok(b) => moved += b,
                Err(e) => failures.push(format!("{what} concurrent {k}: {e:#}\n{}", proc_.log())),
            }
        }
        // A destination that refuses: that stream fails alone, the next one works.
        let closed = free_port();
        if tcp_echo_through(socks, closed, &payload(4096, 5)).is_ok() {
            failures.push(format!("{what}: data went through to a closed port"));
        }
        match tcp_echo_through(socks, echo.port, &payload(70_000, 6)) {
            Ok(b) => moved += b,
            Err(e) => failures.push(format!("{what} after a refused stream: {e:#}\n{}", proc_.log())),
        }
        // UDP in QUIC datagrams; 3000-byte packets are fragmented both ways.
        let (count, size) = if uidx == 0 { (20, 1000) } else { (7, 3000) };
        match udp_echo_through(socks, echo.port, count, size) {
            Ok(b) => moved += b,
            Err(e) => failures.push(format!("{what} udp: {e:#}\n{}", proc_.log())),
        }
        expect(&mut expected, n.node_id, uidx as u32 + 1, moved, moved);
        drop(proc_);
    }
    // Not a user: nothing comes back, nothing is accounted.
    let (proc_, socks) = sing_box_hy2(n.port, STRANGER, v.dir.path());
    if tcp_echo_through(socks, echo.port, &payload(4096, 99)).is_ok() {
        failures.push("hysteria2: data went through for an unknown password".to_string());
    }
    let log = proc_.log();
    if !log.contains("404") {
        failures.push(format!(
            "hysteria2: the unknown password was not answered with 404; sing-box log:\n{log}"
        ));
    }
    drop(proc_);
    v.finish(&failures, &expected);
}

#[test]
fn removed_user_is_cut_off() {
    let certs = tempfile::tempdir().unwrap();
    let v = start(vec![hy2_node(1, json!({}))], certs.path());
    let n = &v.nodes[0];
    let (hport, hclosed) = eof_counter(Duration::from_secs(60)).unwrap();
    let (proc_, socks) = sing_box_hy2(n.port, UUIDS[2], v.dir.path());
    let mut s = socks5_connect(socks, hport).unwrap();
    s.write_all(b"hi").unwrap();
    let mut ok = [0u8; 2];
    s.read_exact(&mut ok)
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", proc_.log(), v.agent.log()));
    assert_eq!(&ok, b"ok");
    let mut expected: Totals = BTreeMap::new();
    expect(&mut expected, n.node_id, 3, 2, 2);
    v.wait_totals(n.node_id, &expected[&n.node_id], Duration::from_secs(20))
        .unwrap();
    v.sim
        .set_users(n.node_id, vec![user(1, UUIDS[0]), user(2, UUIDS[1])]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while hclosed.load(Ordering::SeqCst) < 1 {
        assert!(
            Instant::now() < deadline,
            "destination still open after the user's removal\n{}",
            v.agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 16];
    assert!(matches!(s.read(&mut b), Ok(0) | Err(_)), "stream still open");
    // A new connection of the removed user is refused.
    let echo = Echo::start().unwrap();
    assert!(
        tcp_echo_through(socks, echo.port, &payload(1000, 1)).is_err(),
        "removed user still served"
    );
    drop(proc_);
    v.finish(&[], &expected);
}
