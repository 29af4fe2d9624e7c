//! Issue 11 ("an attacker gets nothing but bounded cost"), the resource-bound half: attacks
//! from the project's own clients against the real processes, on loopback only and bounded in
//! count and time. Each test names the bound it asserts on the data plane's RSS growth and
//! checks that a legitimate client (sing-box) still gets through during the attack.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use v2sp_testsupport::harness::{
    free_port, payload, self_signed_certs, sing_box_tls, tcp_echo_through, Echo, NodeSpec, V2sp,
};
use v2sp_testsupport::panel_sim::users;

const UUIDS: [&str; 1] = ["705d4ada-fc32-48de-951c-2ab9d5765ce0"];
const DOMAIN: &str = "v2sp.test";
const MIB: u64 = 1 << 20;

/// VmRSS of `pid` in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A TCP connection to `127.0.0.1:port` from `src`.
fn connect_from(src: IpAddr, port: u16) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&SocketAddr::new(src, 0).into())?;
    s.connect_timeout(
        &SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into(),
        Duration::from_secs(2),
    )?;
    Ok(s.into())
}

/// A Trojan-over-TLS node, with the handshake deadline long enough that the attack's
/// connections are all still pending when RSS is measured.
fn trojan_tls(certs: &std::path::Path, dataplane: Value) -> V2sp {
    let port = free_port();
    let node = NodeSpec {
        node_id: 1,
        port,
        info: json!({"node_type": "trojan", "server_port": port, "tls": 1, "network": "tcp",
                     "tls_settings": {"server_name": DOMAIN},
                     "base_config": {"push_interval": 1, "pull_interval": 1}}),
        users: users(&UUIDS),
    };
    V2sp::start_with(vec![node], self_signed_certs(certs, DOMAIN), dataplane).unwrap()
}

/// One legitimate transfer through sing-box (Trojan over TLS): bytes echoed, or why not.
fn legit_transfer(v: &V2sp, echo: &Echo, seed: u64) -> Result<u64, String> {
    let tls = json!({"enabled": true, "server_name": DOMAIN, "insecure": true});
    let (proc_, socks) = sing_box_tls(v.nodes[0].port, "trojan", UUIDS[0], Some(tls), v.dir.path())
        .map_err(|e| format!("sing-box: {e:#}"))?;
    let r = tcp_echo_through(socks, echo.port, &payload(256 << 10, seed));
    r.map_err(|e| format!("{e:#}\n{}", proc_.log()))
}

/// 3000 pending TLS handshakes from 12 source addresses (250 each: under the per-IP cap of
/// 256, so none is refused): each sends the start of a ClientHello record and then nothing.
/// Each pending handshake may hold a few KiB (no 16 KiB record buffer, no TLS session before
/// the first byte): growth stays under 32 MiB where it was ~75 MiB (25 KiB each).
#[test]
fn slowloris_3000_from_12_ips_rss_under_32mib() {
    const CONNS: usize = 3000;
    const IPS: u8 = 12;
    const BOUND: u64 = 32 * MIB;
    let echo = Echo::start().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let v = trojan_tls(certs.path(), json!({"Timeouts": {"Handshake": 30}}));
    let pid = v.dataplane_pid();
    // Warm up (pools, TLS config, the first connection's allocations), then the baseline.
    legit_transfer(&v, &echo, 1).unwrap_or_else(|e| panic!("before the attack: {e}\n{}", v.agent.log()));
    std::thread::sleep(Duration::from_millis(300));
    let before = rss(pid);
    let started = Instant::now();
    // A TLS handshake record announcing 512 bytes, of which 64 come.
    let mut partial = vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03];
    partial.resize(64, 0x5a);
    let mut held = Vec::with_capacity(CONNS);
    let mut refused = 0usize;
    for i in 0..CONNS {
        let src = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % usize::from(IPS)) as u8));
        match connect_from(src, v.nodes[0].port).and_then(|mut s| s.write_all(&partial).map(|()| s)) {
            Ok(s) => held.push(s),
            Err(_) => refused += 1,
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "attack setup took too long"
        );
    }
    // Let the data plane accept and read them all.
    std::thread::sleep(Duration::from_millis(1500));
    let during = rss(pid);
    let growth = during.saturating_sub(before);
    let legit = legit_transfer(&v, &echo, 2);
    eprintln!(
        "slowloris: {} held, {refused} refused; data plane RSS {} -> {} KiB (+{} KiB, {} B per connection)",
        held.len(),
        before / 1024,
        during / 1024,
        growth / 1024,
        growth / CONNS as u64
    );
    drop(held);
    if let Err(e) = legit {
        panic!("a legitimate client failed during the attack: {e}");
    }
    assert!(
        growth < BOUND,
        "data plane RSS grew by {} KiB under {CONNS} pending handshakes (bound {} KiB)",
        growth / 1024,
        BOUND / 1024
    );
}
