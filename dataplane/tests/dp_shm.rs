//! The `v2sp-dataplane` binary against real shared memory created by `ControlShm` (the control
//! plane's side): attach, serve a Shadowsocks node to the real sing-box client, traffic
//! harvested exactly from the banks, Online event in the ring, user removal closes the
//! connection, SIGTERM drains and exits 0. Peer: /opt/v2sp-peers/bin/sing-box.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod dp_common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dp_common::*;
use v2sp_shared::cred::{secret_for, CredKind};
use v2sp_shared::dpconfig::{DataplaneConfig, Protocol, ShadowsocksSettings};
use v2sp_shared::shm::{ControlShm, UserEntry};

const SING_BOX: &str = "/opt/v2sp-peers/bin/sing-box";
const UUID: &str = "0c0ffee0-8d0a-4c55-9a5e-0f6b7c2d9e11";

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn entry(id: u32) -> UserEntry {
    UserEntry {
        user_id: id,
        secret: secret_for(CredKind::SsLegacy16, UUID).unwrap(),
        speed_limit_mbps: 0,
        device_limit: 0,
        alive_elsewhere: 0,
    }
}

fn socks(socks: u16, port: u16) -> TcpStream {
    let mut s = None;
    for _ in 0..100 {
        if let Ok(c) = TcpStream::connect(("127.0.0.1", socks)) {
            s = Some(c);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut s = s.expect("sing-box did not listen");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&[5, 1, 0]).unwrap();
    let mut b = [0u8; 2];
    s.read_exact(&mut b).unwrap();
    let mut req = vec![5, 1, 0, 1, 127, 0, 0, 1];
    req.extend_from_slice(&port.to_be_bytes());
    s.write_all(&req).unwrap();
    let mut r = [0u8; 10];
    s.read_exact(&mut r).unwrap();
    assert_eq!(r[1], 0);
    s
}

#[test]
fn dp_binary_serves_from_shared_memory_and_drains_on_sigterm() {
    assert!(
        std::path::Path::new(SING_BOX).exists(),
        "{SING_BOX} is missing: run scripts/install-test-deps.sh"
    );
    let dir = tempfile::tempdir().unwrap();
    let ctl = ControlShm::create_or_attach(dir.path()).unwrap();
    let port = free_port();
    let mut n = node(1, port);
    n.protocol = Protocol::Shadowsocks;
    n.cred_kind = CredKind::SsLegacy16;
    n.shadowsocks = Some(ShadowsocksSettings {
        cipher: "aes-128-gcm".into(),
        server_key: String::new(),
        replay_check: true,
    });
    let cfg = DataplaneConfig {
        allow_private_destinations: true,
        nodes: vec![n],
        ..Default::default()
    };
    ctl.publish_config(&cfg).unwrap();
    ctl.publish_users(
        1,
        CredKind::SsLegacy16,
        &[entry(77), entry(78)],
        Duration::from_secs(2),
    )
    .unwrap();

    let dp = Kill(
        Command::new(env!("CARGO_BIN_EXE_v2sp-dataplane"))
            .args([
                "--shm-dir",
                dir.path().to_str().unwrap(),
                "--workers",
                "2",
                "--grace-secs",
                "2",
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    assert!(wait_until(Duration::from_secs(20), || TcpStream::connect((
        "127.0.0.1",
        port
    ))
    .is_ok()));

    let sport = free_port();
    let sb_cfg = serde_json::json!({
        "log": {"level": "error"},
        "inbounds": [{"type": "mixed", "listen": "127.0.0.1", "listen_port": sport}],
        "outbounds": [{"type": "shadowsocks", "server": "127.0.0.1", "server_port": port,
                       "method": "aes-128-gcm", "password": UUID}]
    });
    let p = dir.path().join("sb.json");
    std::fs::write(&p, sb_cfg.to_string()).unwrap();
    let _sb = Kill(
        Command::new(SING_BOX)
            .arg("run")
            .arg("-c")
            .arg(&p)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let echo = echo_peer(4);
    let mut c = socks(sport, echo);
    let msg = data(200_000, 5);
    let w = {
        let mut c2 = c.try_clone().unwrap();
        let m = msg.clone();
        std::thread::spawn(move || c2.write_all(&m).unwrap())
    };
    let mut got = vec![0u8; msg.len()];
    c.read_exact(&mut got).unwrap();
    w.join().unwrap();
    assert_eq!(sha(&got), sha(&msg));

    // Harvest until the bytes show up (a flip may land between two adds).
    let want = msg.len() as u64;
    let (mut up, mut down) = (0u64, 0u64);
    let end = Instant::now() + Duration::from_secs(10);
    while (up, down) != (want, want) && Instant::now() < end {
        let banks = ctl.harvest(Duration::from_secs(2)).unwrap_or_default();
        for b in banks {
            for d in &b.entries {
                if d.node == 1 && d.user_id == 77 {
                    up += d.up;
                    down += d.down;
                }
            }
            ctl.clear_bank(b.instance_id, b.core, b.epoch).unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!((up, down), (want, want), "harvested traffic");
    let (events, dropped) = ctl.drain_events(1000);
    assert_eq!(dropped, 0);
    assert!(
        events
            .iter()
            .any(|(_, e)| e.online && e.user_id == 77 && e.node == 1),
        "{events:?}"
    );

    // Remove the user: its open connection is closed within a tick or two.
    ctl.publish_users(1, CredKind::SsLegacy16, &[entry(78)], Duration::from_secs(2))
        .unwrap();
    let t = Instant::now();
    let (_, _) = read_to_end(&mut c);
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "removed user's connection closed"
    );

    // SIGTERM: drain and exit 0.
    let mut dp = dp;
    let st = Command::new("kill")
        .args(["-TERM", &dp.0.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let end = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = dp.0.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > end {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.is_some_and(|s| s.success()), "exit status {status:?}");
}
