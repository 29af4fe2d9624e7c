//! Soak, bounded: real clients (shadowsocks-rust's `sslocal`; sing-box for Trojan over TLS and
//! VMess) move short and long transfers from several threads through three nodes for
//! `V2SP_SOAK_SECS` seconds (30 by default, as CI runs it) while the panel keeps changing:
//! users that no client uses come and go, and the node settings change (a block rule is added
//! and removed), which the data plane applies with connections open. One connection stays open
//! through all of it.
//!
//! Then: every byte moved is at the panel, exactly, for the right user; no connection is left
//! registered in the data plane; its RSS after the run is within a few MiB of what it was after
//! warm-up (a per-connection leak over thousands of connections would show); the long-lived
//! connection survived every change. Runs on whichever I/O backend `V2SP_IO` selects.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use v2sp_testsupport::harness::{
    free_port, payload, self_signed_certs, sing_box_outbound, sing_box_tls, socks5_connect, sslocal,
    tcp_echo_through, Echo, NodeSpec, Totals, V2sp,
};
use v2sp_testsupport::panel_sim::{user, users};

const UUIDS: [&str; 3] = [
    "705d4ada-fc32-48de-951c-2ab9d5765ce0",
    "0c6a030a-1aa1-4938-9cd7-d5ec4d9aee4e",
    "9a3e1d52-7b64-4c1f-8e0a-5d2f6b9c1e47",
];
/// Users the panel adds and removes during the run; no client uses them.
const CHURN: [&str; 2] = [
    "3b241101-e2bb-4255-8caf-4136c566a962",
    "c4a760a8-dbcf-4e14-9f39-645a8e933d6c",
];
const DOMAIN: &str = "v2sp.test";

fn soak_secs() -> u64 {
    std::env::var("V2SP_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn open_conns(v: &V2sp) -> u64 {
    v2sp_shared::shm::ControlShm::open_existing(&v.shm_dir())
        .map(|s| s.status().cores.iter().map(|c| c.open_conns).sum())
        .unwrap_or(u64::MAX)
}

fn node_info(i: usize, port: u16, block: bool) -> Value {
    let routes = if block {
        json!([{"id": 9, "match": ["domain:never.test"], "action": "block"}])
    } else {
        json!([])
    };
    let base = json!({"push_interval": 1, "pull_interval": 1});
    match i {
        0 => json!({"node_type": "shadowsocks", "server_port": port, "cipher": "aes-128-gcm",
                    "routes": routes, "base_config": base}),
        1 => json!({"node_type": "trojan", "server_port": port, "network": "tcp",
                    "tls_settings": {"server_name": DOMAIN}, "routes": routes, "base_config": base}),
        _ => json!({"node_type": "vmess", "server_port": port, "tls": 0, "network": "tcp",
                    "routes": routes, "base_config": base}),
    }
}

#[test]
fn soak_with_panel_churn_and_hot_reload() {
    let echo = Echo::start().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let nodes: Vec<NodeSpec> = (0..3)
        .map(|i| {
            let port = free_port();
            NodeSpec {
                node_id: i as u32 + 1,
                port,
                info: node_info(i, port, false),
                users: users(&UUIDS),
            }
        })
        .collect();
    let v = V2sp::start(nodes, self_signed_certs(certs.path(), DOMAIN)).unwrap();
    let dir = v.dir.path().to_path_buf();
    // Node i is used by user i + 1 only.
    let (ss, ss_socks) = sslocal(v.nodes[0].port, "aes-128-gcm", UUIDS[0], &dir).unwrap();
    let tls = json!({"enabled": true, "server_name": DOMAIN, "insecure": true});
    let (tj, tj_socks) = sing_box_tls(v.nodes[1].port, "trojan", UUIDS[1], Some(tls), &dir).unwrap();
    let (vm, vm_socks) = sing_box_outbound(
        json!({"type": "vmess", "server": "127.0.0.1", "server_port": v.nodes[2].port,
               "uuid": UUIDS[2], "security": "aes-128-gcm", "alter_id": 0}),
        &dir,
    )
    .unwrap();
    let socks = [ss_socks, tj_socks, vm_socks];

    let expected: Arc<Mutex<Totals>> = Arc::new(Mutex::new(BTreeMap::new()));
    let failures: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let transfers = Arc::new(AtomicU64::new(0));
    let count = |exp: &Mutex<Totals>, node: usize, n: u64| {
        let mut e = exp.lock().unwrap();
        let t = e
            .entry(node as u32 + 1)
            .or_default()
            .entry(node as u32 + 1)
            .or_default();
        t.0 += n;
        t.1 += n;
    };

    // The long-lived connection (Shadowsocks): one small echo a second through every change.
    let long = {
        let (exp, fail, stop) = (expected.clone(), failures.clone(), stop.clone());
        let port = echo.port;
        std::thread::spawn(move || {
            let mut s = match socks5_connect(socks[0], port) {
                Ok(s) => s,
                Err(e) => {
                    fail.lock().unwrap().push(format!("long-lived connection: {e:#}"));
                    return;
                }
            };
            let msg = payload(1000, 77);
            let mut back = vec![0u8; msg.len()];
            while !stop.load(Ordering::Relaxed) {
                let ok = s.write_all(&msg).is_ok() && s.read_exact(&mut back).is_ok() && back == msg;
                if !ok {
                    fail.lock()
                        .unwrap()
                        .push("the long-lived connection broke".into());
                    return;
                }
                count(&exp, 0, msg.len() as u64);
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };

    // Two workers per node: 1 KiB, 64 KiB and 512 KiB transfers, each on a new connection.
    let mut workers = Vec::new();
    for node in 0..3 {
        for w in 0..2u64 {
            let (exp, fail, stop, n) = (
                expected.clone(),
                failures.clone(),
                stop.clone(),
                transfers.clone(),
            );
            let (port, socks) = (echo.port, socks[node]);
            workers.push(std::thread::spawn(move || {
                let sizes = [1 << 10, 64 << 10, 512 << 10];
                let mut i = w;
                while !stop.load(Ordering::Relaxed) {
                    let data = payload(sizes[(i % 3) as usize], i);
                    match tcp_echo_through(socks, port, &data) {
                        Ok(moved) => {
                            count(&exp, node, moved);
                            n.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => fail
                            .lock()
                            .unwrap()
                            .push(format!("node {} transfer {i}: {e:#}", node + 1)),
                    }
                    i += 2;
                }
            }));
        }
    }

    // The panel keeps changing while that runs.
    let secs = soak_secs();
    let start = Instant::now();
    let warm_pid = v.dataplane_pid();
    std::thread::sleep(Duration::from_secs(3));
    let rss_warm = rss_kib(warm_pid);
    let mut round = 0u32;
    while start.elapsed() < Duration::from_secs(secs) {
        round += 1;
        for (i, n) in v.nodes.iter().enumerate() {
            let mut us = users(&UUIDS);
            if round % 2 == 1 {
                us.extend(CHURN.iter().enumerate().map(|(k, u)| user(10 + k as u32, u)));
            }
            v.sim.set_users(n.node_id, us);
            v.sim.set_node(n.node_id, node_info(i, n.port, round % 3 == 1));
        }
        std::thread::sleep(Duration::from_millis(2500));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    long.join().unwrap();
    drop((ss, tj, vm));

    let mut failures = std::mem::take(&mut *failures.lock().unwrap());
    let done = transfers.load(Ordering::Relaxed);
    if done < 30 {
        failures.push(format!("only {done} transfers in {secs} s"));
    }
    // Every connection ends: nothing stays registered.
    let deadline = Instant::now() + Duration::from_secs(15);
    while open_conns(&v) != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let left = open_conns(&v);
    if left != 0 {
        failures.push(format!(
            "{left} connections still registered after every client closed"
        ));
    }
    std::thread::sleep(Duration::from_secs(1));
    let rss_end = rss_kib(warm_pid);
    eprintln!(
        "soak: {done} transfers in {secs} s over {round} panel rounds; data plane RSS {rss_warm} KiB after warm-up, {rss_end} KiB at the end"
    );
    // Buffer pools are already at working size after warm-up; 16 MiB of slack covers
    // allocator noise, not a leak of a few KiB per connection over thousands.
    if rss_warm == 0 || rss_end > rss_warm + 16 * 1024 {
        failures.push(format!(
            "data plane RSS grew from {rss_warm} KiB to {rss_end} KiB"
        ));
    }
    if warm_pid != v.dataplane_pid() {
        failures.push("the data plane restarted during the run".into());
    }
    let expected = expected.lock().unwrap().clone();
    v.finish(&failures, &expected);
}
