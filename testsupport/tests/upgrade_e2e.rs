//! Issue 15: `v2sp upgrade` replaces the data plane without dropping a connection.
//!
//! `v2sp run` starts the data plane from a copy of its binary in the test's directory. Under
//! continuous load through the real sing-box client (Shadowsocks) — new 1-byte echo
//! connections every few milliseconds, and long-lived connections that keep echoing 16 KiB
//! messages — the copy is replaced and `v2sp upgrade` is run twice (the second time while the
//! first predecessor still drains its long-lived connections), then once more with a binary
//! that exits at start. Every connection must be served, every long-lived connection must
//! stay intact to the end, the broken binary must leave the serving process in place, the
//! replaced processes must exit once their connections are done, and the panel must hold
//! exactly the bytes the connections moved. Runs on whichever I/O backend `V2SP_IO` selects;
//! `scripts/test.sh` runs it on both.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use v2sp_testsupport::harness::{
    alive, bin_dir, expect, free_port, payload, self_signed_certs, sing_box_outbound, sing_box_ss,
    socks5_connect, Echo, NodeSpec, Sink, Totals, V2sp,
};
use v2sp_testsupport::panel_sim::users;

const UUID: &str = "705d4ada-fc32-48de-951c-2ab9d5765ce0";
const LONG_LIVED: usize = 4;
const MESSAGE: usize = 16 * 1024;

/// Replaces `path` as a package manager does: a new file renamed over the old one (the running
/// process keeps the old inode, `/proc/<pid>/exe` then says "(deleted)").
fn install(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn upgrade(shm: &Path) -> (bool, String) {
    v2sp_testsupport::harness::upgrade_at(shm)
}

#[test]
fn upgrade_under_load_loses_no_connection_and_no_byte() {
    let echo = Echo::start().unwrap();
    let port = free_port();
    let bin = tempfile::tempdir().unwrap();
    let dp_bin = bin.path().join("v2sp-dataplane");
    let real = std::fs::read(bin_dir().join("v2sp-dataplane")).unwrap();
    install(&dp_bin, &real);
    let node = NodeSpec {
        node_id: 1,
        port,
        info: json!({"node_type": "shadowsocks", "cipher": "aes-128-gcm", "server_port": port,
                     "base_config": {"push_interval": 1, "pull_interval": 1}}),
        users: users(&[UUID]),
    };
    // Every online IP is reported each interval, whatever its traffic.
    let extra = json!({"DeviceOnlineMinTraffic": 0});
    let v = V2sp::start_with_bin(vec![node], extra, json!({"DrainSeconds": 60}), &|_| {}, &dp_bin).unwrap();
    let (_client, socks) = sing_box_ss(port, "aes-128-gcm", UUID, v.dir.path()).unwrap();
    let first = v.dataplane_pid();

    let stop = Arc::new(AtomicBool::new(false));
    let stop_openers = Arc::new(AtomicBool::new(false));
    let moved = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    // Long-lived connections: opened before the first upgrade, echoing until the end.
    let mut threads = Vec::new();
    for c in 0..LONG_LIVED {
        let mut s = socks5_connect(socks, echo.port).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let (stop, moved, failures) = (stop.clone(), moved.clone(), failures.clone());
        threads.push(std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let data = payload(MESSAGE, (c as u64) << 32 | i);
                let mut back = vec![0u8; MESSAGE];
                let r = s.write_all(&data).and_then(|()| s.read_exact(&mut back));
                if let Err(e) = r {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("long-lived {c}, message {i}: {e}"));
                    return;
                }
                if back != data {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("long-lived {c}, message {i}: altered"));
                    return;
                }
                moved.fetch_add(MESSAGE as u64, Ordering::SeqCst);
                i += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        }));
    }
    // New connections every few milliseconds (4 openers), each a 1-byte echo.
    let opened = Arc::new(AtomicUsize::new(0));
    for t in 0..4u64 {
        let (stop, moved, failures, opened) = (
            stop_openers.clone(),
            moved.clone(),
            failures.clone(),
            opened.clone(),
        );
        let target = echo.port;
        threads.push(std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let data = payload(1, t << 32 | i);
                let r = (|| -> anyhow::Result<()> {
                    let mut s = socks5_connect(socks, target)?;
                    s.set_read_timeout(Some(Duration::from_secs(10)))?;
                    s.write_all(&data)?;
                    let mut back = [0u8; 1];
                    s.read_exact(&mut back)?;
                    anyhow::ensure!(back[..] == data[..], "altered");
                    Ok(())
                })();
                opened.fetch_add(1, Ordering::SeqCst);
                match r {
                    Ok(()) => {
                        moved.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => failures
                        .lock()
                        .unwrap()
                        .push(format!("opener {t}, connection {i}: {e:#}")),
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        }));
    }

    std::thread::sleep(Duration::from_secs(1));
    let (ok, text) = upgrade(&v.shm_dir());
    assert!(ok, "first upgrade: {text}\n--- v2sp log ---\n{}", v.agent.log());
    let second = v.dataplane_pid();
    assert!(
        second != first && second != 0,
        "a new data plane serves: {first} → {second}"
    );
    assert!(
        alive(first),
        "the first data plane drains its long-lived connections"
    );

    std::thread::sleep(Duration::from_secs(1));
    install(&dp_bin, &real);
    let (ok, text) = upgrade(&v.shm_dir());
    assert!(ok, "second upgrade: {text}\n--- v2sp log ---\n{}", v.agent.log());
    let third = v.dataplane_pid();
    assert!(
        third != second && third != first && third != 0,
        "{second} → {third}"
    );

    std::thread::sleep(Duration::from_secs(1));
    install(&dp_bin, b"#!/bin/sh\necho broken >&2\nexit 3\n");
    let (ok, text) = upgrade(&v.shm_dir());
    assert!(!ok, "an upgrade to a broken binary fails: {text}");
    assert!(text.contains("goes on serving"), "{text}");
    assert_eq!(v.dataplane_pid(), third, "the serving data plane stays");

    std::thread::sleep(Duration::from_secs(1));
    // Only the first data plane still holds connections (the long-lived ones); the serving one
    // saw all of its connections from the same address close. The address is still online.
    // (An IP that went offline is reported once more, for the period it was seen in; after
    // that, a node with no IP online sends no alive report.)
    stop_openers.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(2500));
    let before = v.sim.alive_reports(1).len();
    std::thread::sleep(Duration::from_millis(2500));
    let reports = v.sim.alive_reports(1);
    let last = reports.last().cloned().unwrap_or_default();
    assert!(
        reports.len() > before && last.get(&1) == Some(&vec!["127.0.0.1".to_string()]),
        "the draining data plane's client is still reported online: {} reports, then {}, the last {last:?}",
        before,
        reports.len()
    );
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    let n = opened.load(Ordering::SeqCst);
    assert!(n > 100, "the openers kept opening connections ({n})");
    // The long-lived connections are closed: the predecessors have nothing left to drain.
    let deadline = Instant::now() + Duration::from_secs(20);
    while (alive(first) || alive(second)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !alive(first) && !alive(second),
        "the replaced data planes exit once drained"
    );
    let total = moved.load(Ordering::SeqCst);
    let mut expected: Totals = BTreeMap::new();
    expect(&mut expected, 1, 1, total, total);
    eprintln!("{n} new connections during three upgrades, {total} bytes each way");
    v.finish(&failures, &expected);
}

/// A user's speed limit is one budget across the two data planes of an upgrade: one upload
/// stays on the process being replaced (it drains), a second one goes to its successor, and
/// together they get the limit, not the limit twice (each process's buckets draw on the same
/// clock in the shm directory's `rates` file).
#[test]
fn a_speed_limit_is_one_budget_across_an_upgrade() {
    const MBPS: u32 = 16;
    let limit = f64::from(MBPS) * 1e6 / 8.0;
    let sink = Sink::start().unwrap();
    let port = free_port();
    let node = NodeSpec {
        node_id: 1,
        port,
        info: json!({"node_type": "shadowsocks", "cipher": "aes-128-gcm", "server_port": port,
                     "base_config": {"push_interval": 1, "pull_interval": 1}}),
        users: vec![json!({"id": 1, "uuid": UUID, "speed_limit": MBPS, "device_limit": 0})],
    };
    let v = V2sp::start_with(vec![node], json!({}), json!({"DrainSeconds": 60})).unwrap();
    let (_client, socks) = sing_box_ss(port, "aes-128-gcm", UUID, v.dir.path()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let upload = || {
        let mut s = socks5_connect(socks, sink.port).unwrap();
        let handle = s.try_clone().unwrap();
        let stop = stop.clone();
        let t = std::thread::spawn(move || {
            let chunk = payload(64 * 1024, 5);
            while !stop.load(Ordering::SeqCst) && s.write_all(&chunk).is_ok() {}
        });
        (t, handle)
    };
    let old_upload = upload();
    std::thread::sleep(Duration::from_millis(1500));
    let first = v.dataplane_pid();
    let (ok, text) = upgrade(&v.shm_dir());
    assert!(ok, "upgrade: {text}\n--- v2sp log ---\n{}", v.agent.log());
    let second = v.dataplane_pid();
    assert!(
        second != first && second != 0,
        "a new data plane serves: {first} → {second}"
    );
    let new_upload = upload();
    std::thread::sleep(Duration::from_millis(1500));
    let b0 = sink.bytes.load(Ordering::SeqCst);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(4));
    let rate = (sink.bytes.load(Ordering::SeqCst) - b0) as f64 / t0.elapsed().as_secs_f64();
    assert!(
        alive(first),
        "the first upload kept the replaced data plane draining"
    );
    stop.store(true, Ordering::SeqCst);
    for (t, s) in [old_upload, new_upload] {
        let _ = s.shutdown(std::net::Shutdown::Both);
        let _ = t.join();
    }
    // SIGTERM reaches the successor (it was blocked in every data plane `v2sp run` started,
    // whose stop then ended in SIGKILL after the control plane's 15 s): it stops within its
    // 10 s grace (sing-box still pushes the upload's buffered bytes, at the limit).
    let t = Instant::now();
    Command::new("kill")
        .arg("-TERM")
        .arg(second.to_string())
        .status()
        .unwrap();
    while alive(second) && t.elapsed() < Duration::from_secs(12) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(second), "the successor ignored SIGTERM\n{}", v.agent.log());
    assert!(v.agent.log().contains("stopping: draining open connections"));
    eprintln!("successor stopped {:?} after SIGTERM", t.elapsed());
    drop(v);
    eprintln!("two uploads on two data planes: {rate:.0} B/s together, limit {limit:.0} B/s");
    assert!(
        rate <= 1.2 * limit,
        "two data planes gave one user {rate:.0} B/s, limit {limit:.0} B/s"
    );
    assert!(
        rate >= 0.5 * limit,
        "the uploads stalled: {rate:.0} B/s, limit {limit:.0} B/s"
    );
}

/// An open QUIC connection (TUIC, through sing-box) across an upgrade (issue 15): the
/// successor reads the node's socket and hands the packets of the predecessor's connection back
/// to it (`quic_handoff`), so a stream opened before the upgrade goes on echoing after it, and
/// new streams of the same connection work at once. Before, the connection was reset at the
/// hand-over (and its client redialled the successor).
#[test]
fn an_open_quic_connection_survives_the_upgrade() {
    let port = free_port();
    quic_connection_across_an_upgrade(
        port,
        json!({"node_type": "tuic", "protocol": "tuic", "version": 5, "server_port": port,
               "server_name": QUIC_DOMAIN, "congestion_control": "cubic",
               "base_config": {"push_interval": 1, "pull_interval": 1}}),
        json!({"type": "tuic", "server": "127.0.0.1", "server_port": port, "uuid": UUID,
               "password": UUID, "heartbeat": "10s",
               "tls": {"enabled": true, "server_name": QUIC_DOMAIN, "insecure": true, "alpn": ["h3"]}}),
    );
}

/// The same for Hysteria 2 with Salamander: the successor opens the obfuscation before it
/// reads the connection id, the predecessor obfuscates what it sends through the shared socket.
#[test]
fn an_open_salamander_connection_survives_the_upgrade() {
    let port = free_port();
    quic_connection_across_an_upgrade(
        port,
        json!({"node_type": "hysteria2", "protocol": "hysteria", "version": 2, "server_port": port,
               "server_name": QUIC_DOMAIN, "up_mbps": 0, "down_mbps": 0, "obfs": "salamander", "obfs-password": "upgrade-obfs",
               "base_config": {"push_interval": 1, "pull_interval": 1}}),
        json!({"type": "hysteria2", "server": "127.0.0.1", "server_port": port, "password": UUID,
               "obfs": {"type": "salamander", "password": "upgrade-obfs"},
               "tls": {"enabled": true, "server_name": QUIC_DOMAIN, "insecure": true, "alpn": ["h3"]}}),
    );
}

const QUIC_DOMAIN: &str = "v2sp.test";

fn quic_connection_across_an_upgrade(port: u16, info: serde_json::Value, out: serde_json::Value) {
    let echo = Echo::start().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let node = NodeSpec {
        node_id: 1,
        port,
        info,
        users: users(&[UUID]),
    };
    let v = V2sp::start_with(
        vec![node],
        self_signed_certs(certs.path(), QUIC_DOMAIN),
        json!({"DrainSeconds": 30}),
    )
    .unwrap();
    let (client, socks) = sing_box_outbound(out, v.dir.path()).unwrap();
    let round = |s: &mut std::net::TcpStream, seed: u64| -> anyhow::Result<u64> {
        let msg = payload(1000, seed);
        s.write_all(&msg)?;
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back)?;
        anyhow::ensure!(back == msg, "echo differs");
        Ok(msg.len() as u64)
    };
    let mut held = socks5_connect(socks, echo.port).unwrap();
    held.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut moved = round(&mut held, 1)
        .unwrap_or_else(|e| panic!("before the upgrade: {e:#}\n{}\n{}", client.log(), v.agent.log()));
    let first = v.dataplane_pid();
    let (ok, text) = v.upgrade();
    assert!(ok, "upgrade: {text}\n{}", v.agent.log());
    assert_ne!(v.dataplane_pid(), first);
    // The stream opened before the upgrade, several times over a few seconds: each round's
    // packets reach the successor's socket and are handed back.
    for i in 0..5 {
        moved += round(&mut held, 10 + i).unwrap_or_else(|e| {
            panic!(
                "round {i} on the stream opened before the upgrade: {e:#}\n{}\n{}",
                client.log(),
                v.agent.log()
            )
        });
        std::thread::sleep(Duration::from_millis(300));
    }
    // A new stream of the same connection, at once.
    let mut fresh = socks5_connect(socks, echo.port).unwrap();
    fresh.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    moved += round(&mut fresh, 20)
        .unwrap_or_else(|e| panic!("a new stream: {e:#}\n{}\n{}", client.log(), v.agent.log()));
    assert!(alive(first), "the predecessor still drains its connection");
    drop((held, fresh, client));
    let mut expected: Totals = BTreeMap::new();
    expect(&mut expected, 1, 1, moved, moved);
    v.finish(&[], &expected);
}
