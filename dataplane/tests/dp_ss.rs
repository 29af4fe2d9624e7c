//! End to end: the real sing-box Shadowsocks client → v2sp engine (default protocol factory,
//! shared replay filter) → echo on 127.0.0.1, for AEAD-2017 and 2022 (EIH multi-user).
//! Peer: /opt/v2sp-peers/bin/sing-box, installed by scripts/install-test-deps.sh.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod dp_common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use dp_common::*;
use v2sp_dataplane::node::{default_protocols, Engine, EngineOpts, Shared};
use v2sp_dataplane::stats::mem::{MemBackend, MemUser};
use v2sp_dataplane::stats::CorePort;
use v2sp_shared::cred::{lookup_key, secret_for, CredKind};
use v2sp_shared::dpconfig::{Protocol, ShadowsocksSettings};
use v2sp_shared::shm::UserRef;

const SING_BOX: &str = "/opt/v2sp-peers/bin/sing-box";
const UUID: &str = "5f1d6b0e-8d0a-4c55-9a5e-0f6b7c2d9e11";

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ss_user(node: u16, kind: CredKind) -> MemUser {
    let secret = secret_for(kind, UUID).unwrap();
    let key = lookup_key(kind, secret.as_slice())
        .map(|k| k.as_slice().to_vec())
        .unwrap_or_default();
    let mut s = [0u8; 32];
    let sl = secret.as_slice();
    s[..sl.len()].copy_from_slice(sl);
    MemUser {
        key,
        user: UserRef {
            node,
            slot: 0,
            user_id: 77,
            gen: 1,
            secret: s,
            secret_len: sl.len() as u8,
            speed_limit_mbps: 0,
            device_limit: 0,
        },
        alive_elsewhere: 0,
    }
}

fn socks_connect(socks: u16, target_port: u16) -> TcpStream {
    let mut s = None;
    for _ in 0..100 {
        if let Ok(c) = TcpStream::connect(("127.0.0.1", socks)) {
            s = Some(c);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut s = s.expect("sing-box did not start listening");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&[5, 1, 0]).unwrap();
    let mut b = [0u8; 2];
    s.read_exact(&mut b).unwrap();
    assert_eq!(b, [5, 0]);
    let mut req = vec![5, 1, 0, 1, 127, 0, 0, 1];
    req.extend_from_slice(&target_port.to_be_bytes());
    s.write_all(&req).unwrap();
    let mut r = [0u8; 10];
    s.read_exact(&mut r).unwrap();
    assert_eq!(r[1], 0, "socks connect failed");
    s
}

fn run(cipher: &str, kind: CredKind, server_key: Option<[u8; 16]>) {
    assert!(
        std::path::Path::new(SING_BOX).exists(),
        "{SING_BOX} is missing: run scripts/install-test-deps.sh"
    );
    let b64 = base64::engine::general_purpose::STANDARD;
    let port = free_port();
    let mut n = node(1, port);
    n.protocol = Protocol::Shadowsocks;
    n.cred_kind = kind;
    n.shadowsocks = Some(ShadowsocksSettings {
        cipher: cipher.into(),
        server_key: server_key.map(|k| b64.encode(k)).unwrap_or_default(),
        replay_check: true,
    });
    let backend = MemBackend::new();
    backend.set_users(1, vec![ss_user(1, kind)]);
    let b2 = backend.clone();
    let engine = Engine::start(
        EngineOpts {
            workers: 2,
            grace: Duration::from_secs(1),
            tick: Duration::from_millis(50),
        },
        Arc::new(move |core| Ok(Box::new(b2.port(core)) as Box<dyn CorePort>)),
        Shared::new(default_protocols()),
        Arc::new(config(vec![n])),
    )
    .unwrap();
    assert!(engine.wait_ready(Duration::from_secs(10)));
    let password = match server_key {
        Some(k) => format!(
            "{}:{}",
            b64.encode(k),
            b64.encode(secret_for(kind, UUID).unwrap().as_slice())
        ),
        None => UUID.to_string(),
    };
    let socks = free_port();
    let cfg = serde_json::json!({
        "log": {"level": "error"},
        "inbounds": [{"type": "mixed", "listen": "127.0.0.1", "listen_port": socks}],
        "outbounds": [{"type": "shadowsocks", "server": "127.0.0.1", "server_port": port,
                       "method": cipher, "password": password}]
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sb.json");
    std::fs::write(&path, cfg.to_string()).unwrap();
    let _sb = Kill(
        Command::new(SING_BOX)
            .arg("run")
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let echo = echo_peer(4);
    let mut total = 0u64;
    for round in 0..2u64 {
        let mut c = socks_connect(socks, echo);
        let msg = data(300_000, 9 + round);
        let w = {
            let mut c2 = c.try_clone().unwrap();
            let m = msg.clone();
            std::thread::spawn(move || c2.write_all(&m).unwrap())
        };
        let mut got = vec![0u8; msg.len()];
        c.read_exact(&mut got).unwrap();
        w.join().unwrap();
        assert_eq!(sha(&got), sha(&msg), "{cipher} round {round}");
        total += msg.len() as u64;
    }
    assert!(
        wait_until(Duration::from_secs(3), || backend.traffic(1, 77)
            == (total, total)),
        "{cipher}: counted {:?}, want ({total}, {total})",
        backend.traffic(1, 77)
    );
    engine.shutdown();
}

#[test]
fn dp_ss_sing_box_aes_128_gcm() {
    run("aes-128-gcm", CredKind::SsLegacy16, None);
}

#[test]
fn dp_ss_sing_box_2022_blake3_aes_128_gcm_multi_user() {
    run(
        "2022-blake3-aes-128-gcm",
        CredKind::Ss2022Psk16,
        Some(*b"0123456789abcdef"),
    );
}

/// SOCKS5 UDP ASSOCIATE through sing-box → SS UDP → v2sp → UDP echo; exact counts.
fn run_udp(cipher: &str, kind: CredKind, server_key: Option<[u8; 16]>) {
    assert!(
        std::path::Path::new(SING_BOX).exists(),
        "{SING_BOX} is missing: run scripts/install-test-deps.sh"
    );
    let b64 = base64::engine::general_purpose::STANDARD;
    let port = free_port();
    let mut n = node(1, port);
    n.protocol = Protocol::Shadowsocks;
    n.cred_kind = kind;
    n.shadowsocks = Some(ShadowsocksSettings {
        cipher: cipher.into(),
        server_key: server_key.map(|k| b64.encode(k)).unwrap_or_default(),
        replay_check: true,
    });
    let backend = MemBackend::new();
    backend.set_users(1, vec![ss_user(1, kind)]);
    let b2 = backend.clone();
    let engine = Engine::start(
        EngineOpts {
            workers: 2,
            grace: Duration::from_secs(1),
            tick: Duration::from_millis(50),
        },
        Arc::new(move |core| Ok(Box::new(b2.port(core)) as Box<dyn CorePort>)),
        Shared::new(default_protocols()),
        Arc::new(config(vec![n])),
    )
    .unwrap();
    assert!(engine.wait_ready(Duration::from_secs(10)));
    let password = match server_key {
        Some(k) => format!(
            "{}:{}",
            b64.encode(k),
            b64.encode(secret_for(kind, UUID).unwrap().as_slice())
        ),
        None => UUID.to_string(),
    };
    let socks = free_port();
    let cfg = serde_json::json!({
        "log": {"level": "error"},
        "inbounds": [{"type": "mixed", "listen": "127.0.0.1", "listen_port": socks}],
        "outbounds": [{"type": "shadowsocks", "server": "127.0.0.1", "server_port": port,
                       "method": cipher, "password": password}]
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sb.json");
    std::fs::write(&path, cfg.to_string()).unwrap();
    let _sb = Kill(
        Command::new(SING_BOX)
            .arg("run")
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    // UDP echo
    let echo = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let echo_port = echo.local_addr().unwrap().port();
    echo.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done2 = done.clone();
    let echo_t = std::thread::spawn(move || {
        let mut b = [0u8; 2048];
        for _ in 0..100 {
            if done2.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            if let Ok((n, from)) = echo.recv_from(&mut b) {
                let _ = echo.send_to(&b[..n], from);
            }
        }
    });
    // SOCKS5 UDP ASSOCIATE
    let mut ctl = None;
    for _ in 0..100 {
        if let Ok(c) = TcpStream::connect(("127.0.0.1", socks)) {
            ctl = Some(c);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut ctl = ctl.expect("sing-box did not start listening");
    ctl.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    ctl.write_all(&[5, 1, 0]).unwrap();
    let mut b = [0u8; 2];
    ctl.read_exact(&mut b).unwrap();
    ctl.write_all(&[5, 3, 0, 1, 0, 0, 0, 0, 0, 0]).unwrap();
    let mut r = [0u8; 10];
    ctl.read_exact(&mut r).unwrap();
    assert_eq!(r[1], 0, "UDP associate refused");
    let relay_port = u16::from_be_bytes([r[8], r[9]]);
    let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    u.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut ok = 0u64;
    let mut bytes = 0u64;
    for i in 0..20u8 {
        let payload = data(1000 + usize::from(i), u64::from(i) + 100);
        let mut d = vec![0, 0, 0, 1, 127, 0, 0, 1];
        d.extend_from_slice(&echo_port.to_be_bytes());
        d.extend_from_slice(&payload);
        u.send_to(&d, ("127.0.0.1", relay_port)).unwrap();
        let mut rb = [0u8; 4096];
        if let Ok((n, _)) = u.recv_from(&mut rb) {
            assert!(n >= 10);
            assert_eq!(&rb[10..n], &payload[..], "echoed datagram {i}");
            ok += 1;
            bytes += payload.len() as u64;
        }
    }
    assert!(ok >= 15, "only {ok}/20 datagrams came back");
    // every echoed datagram was counted both ways (lost ones may have been counted up only)
    assert!(wait_until(Duration::from_secs(3), || {
        let (up, down) = backend.traffic(1, 77);
        down == bytes && up >= bytes
    }));
    drop(ctl);
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    echo_t.join().unwrap();
    engine.shutdown();
}

#[test]
fn dp_ss_udp_sing_box_aes_128_gcm() {
    run_udp("aes-128-gcm", CredKind::SsLegacy16, None);
}

#[test]
fn dp_ss_udp_sing_box_2022_blake3_aes_128_gcm() {
    run_udp(
        "2022-blake3-aes-128-gcm",
        CredKind::Ss2022Psk16,
        Some(*b"0123456789abcdef"),
    );
}
