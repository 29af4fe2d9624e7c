//! Mux.Cool TCP sub-streams: Debian's v2ray 4.34 as a client with `mux: {enabled: true,
//! concurrency: 8}` sends every TCP connection as a sub-stream of one VLESS or VMess
//! connection (command 3, destination v1.mux.cool).
//!
//! Six concurrent SOCKS connections, 1-2 MiB each, echo through one mux (a recording proxy in
//! front of the node shows fewer client connections than sub-streams), sha256-checked both
//! ways, over VMess (plain TCP), VMess + TLS and VLESS + TLS; the panel receives exactly the
//! bytes moved, per user; a sub-stream to a closed port fails alone. UDP through the same mux
//! (a UDP sub-session) comes back intact and is counted too. sing-box's VMess with
//! `packet_encoding: "xudp"` (command 3, UDP only) works the same way. Removing the user closes
//! the mux and every sub-stream's destination connection.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use v2sp_testsupport::harness::{
    expect, free_port, payload, peer, rss_bytes, self_signed_certs, tcp_echo_through, udp_echo_through,
    wait_tcp, Echo, NodeSpec, Proc, Recorder, Totals, V2sp,
};
use v2sp_testsupport::panel_sim::{user, users};

const UUIDS: [&str; 3] = [
    "705d4ada-fc32-48de-951c-2ab9d5765ce0",
    "0c6a030a-1aa1-4938-9cd7-d5ec4d9aee4e",
    "9a3e1d52-7b64-4c1f-8e0a-5d2f6b9c1e47",
];
const DOMAIN: &str = "v2sp.test";
/// Concurrent TCP connections through one client.
const STREAMS: usize = 6;

/// v2ray 4.34 with a SOCKS inbound (UDP on) and a muxed `protocol` outbound to `port`.
fn v2ray_mux(protocol: &str, port: u16, uuid: &str, tls: bool, dir: &Path) -> (Proc, u16) {
    let bin = peer("v2ray").unwrap();
    let users = if protocol == "vless" {
        json!([{"id": uuid, "encryption": "none"}])
    } else {
        json!([{"id": uuid, "alterId": 0, "security": "aes-128-gcm"}])
    };
    let stream: Value = if tls {
        json!({"network": "tcp", "security": "tls",
               "tlsSettings": {"serverName": DOMAIN, "allowInsecure": true}})
    } else {
        json!({"network": "tcp"})
    };
    for _ in 0..5 {
        let socks = free_port();
        let cfg = json!({
            "log": {"loglevel": "warning"},
            "inbounds": [{"listen": "127.0.0.1", "port": socks, "protocol": "socks",
                          "settings": {"auth": "noauth", "udp": true, "ip": "127.0.0.1"}}],
            "outbounds": [{"protocol": protocol,
                           "settings": {"vnext": [{"address": "127.0.0.1", "port": port, "users": users}]},
                           "streamSettings": stream,
                           "mux": {"enabled": true, "concurrency": 8}}],
        });
        let path = dir.join(format!("v2ray-mux-{socks}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
        let mut cmd = Command::new(&bin);
        cmd.arg("-config").arg(&path);
        let p = Proc::spawn("v2ray", cmd, dir.join(format!("v2ray-mux-{socks}.log"))).unwrap();
        if wait_tcp(socks, Duration::from_secs(10)).is_ok() {
            return (p, socks);
        }
    }
    panic!("v2ray never listened");
}

#[test]
fn v2ray_mux_tcp_substreams_with_exact_accounting() {
    let echo = Echo::start().unwrap();
    let certs = tempfile::tempdir().unwrap();
    // (protocol, tls)
    let kinds = [("vmess", false), ("vmess", true), ("vless", true)];
    let nodes: Vec<NodeSpec> = kinds
        .iter()
        .enumerate()
        .map(|(i, (p, tls))| {
            let port = free_port();
            NodeSpec {
                node_id: i as u32 + 1,
                port,
                info: json!({"node_type": p, "server_port": port, "tls": u8::from(*tls), "network": "tcp",
                             "tls_settings": {"server_name": DOMAIN},
                             "base_config": {"push_interval": 1, "pull_interval": 1}}),
                users: users(&UUIDS),
            }
        })
        .collect();
    let cert_cfg = self_signed_certs(certs.path(), DOMAIN);
    let v = V2sp::start(nodes, cert_cfg).unwrap();
    let mut failures = Vec::new();
    let mut expected: Totals = BTreeMap::new();
    for (i, (p, tls)) in kinds.iter().enumerate() {
        let n = &v.nodes[i];
        let what = format!("{p} tls={tls} (node {})", n.node_id);
        let uidx = i % 2;
        // Counts the client's connections to the node.
        let rec = Recorder::start(n.port).unwrap();
        let (proc_, socks) = v2ray_mux(p, rec.port, UUIDS[uidx], *tls, v.dir.path());
        let threads: Vec<_> = (0..STREAMS)
            .map(|k| {
                let data = payload((1 << 20) + k * 99_991 + i * 7, (i * 100 + k) as u64);
                let port = echo.port;
                std::thread::spawn(move || tcp_echo_through(socks, port, &data))
            })
            .collect();
        let mut moved = 0u64;
        for (k, t) in threads.into_iter().enumerate() {
            match t.join().unwrap() {
                Ok(b) => moved += b,
                Err(e) => failures.push(format!("{what} stream {k}: {e:#}\n{}", proc_.log())),
            }
        }
        // A sub-stream whose destination refuses the connection ends with an error and moves
        // nothing; the mux goes on serving the next one.
        let closed = free_port();
        if tcp_echo_through(socks, closed, &payload(4096, 5)).is_ok() {
            failures.push(format!("{what}: data went through to a closed port"));
        }
        match tcp_echo_through(socks, echo.port, &payload(70_000, 6)) {
            Ok(b) => moved += b,
            Err(e) => failures.push(format!(
                "{what} after a refused sub-stream: {e:#}\n{}",
                proc_.log()
            )),
        }
        // UDP through the same mux (a UDP sub-session).
        match udp_echo_through(socks, echo.port, 12, 700 + i) {
            Ok(b) => moved += b,
            Err(e) => failures.push(format!("{what} udp: {e:#}\n{}", proc_.log())),
        }
        expect(&mut expected, n.node_id, uidx as u32 + 1, moved, moved);
        let conns = rec.captured.lock().unwrap().len();
        eprintln!("{what}: {STREAMS} TCP streams + UDP over {conns} client connection(s)");
        if conns == 0 || conns >= STREAMS {
            failures.push(format!(
                "{what}: {conns} client connections for {STREAMS} streams: not muxed"
            ));
        }
        drop(proc_);
    }
    v.finish(&failures, &expected);
}

/// The user's speed limit holds across a mux's sub-streams (one budget for the user), and
/// backpressure works end to end: three sub-streams upload as fast as they can to a sink
/// through a 16 Mbps user, so the node's per-sub-stream queues fill and it stops reading the
/// mux connection; the measured rate is the limit (±15 %), and once the client closes, the
/// panel's upload total is exactly what reached the sink.
#[test]
fn v2ray_mux_speed_limit_and_backpressure() {
    use std::io::Write;
    use std::time::Instant;
    use v2sp_testsupport::harness::{socks5_connect, Sink};

    let sink = Sink::start().unwrap();
    let port = free_port();
    let node = NodeSpec {
        node_id: 1,
        port,
        info: json!({"node_type": "vmess", "server_port": port, "tls": 0, "network": "tcp",
                     "base_config": {"push_interval": 1, "pull_interval": 1}}),
        users: vec![json!({"id": 1, "uuid": UUIDS[0], "speed_limit": 16, "device_limit": null})],
    };
    let v = V2sp::start(vec![node], json!({})).unwrap();
    let (proc_, socks) = v2ray_mux("vmess", port, UUIDS[0], false, v.dir.path());
    let stop = Instant::now() + Duration::from_secs(7);
    let writers: Vec<_> = (0..3)
        .map(|k| {
            let mut s = socks5_connect(socks, sink.port).unwrap();
            std::thread::spawn(move || {
                let chunk = payload(32 * 1024, 40 + k);
                while Instant::now() < stop {
                    if s.write_all(&chunk).is_err() {
                        break;
                    }
                }
            })
        })
        .collect();
    // Skip the burst the bucket starts with, then measure 4 s.
    let rate = sink.rate_after(Duration::from_millis(1500), Duration::from_secs(4));
    eprintln!("mux upload through a 16 Mbps user: {rate:.0} B/s");
    for w in writers {
        w.join().unwrap();
    }
    let limit = 16e6 / 8.0;
    assert!(
        (rate - limit).abs() <= 0.15 * limit,
        "measured {rate:.0} B/s through the mux, limit {limit} B/s\n{}",
        proc_.log()
    );
    // The sockets are closed: v2ray ends the sub-streams, the node flushes what it queued.
    // Upload total = bytes at the sink, exactly (once both settle).
    v.wait_upload_settles(&sink, 1, 1, Duration::from_secs(30));
    drop(proc_);
}

/// VMess command 3 also carries XUDP: sing-box's VMess with `packet_encoding: "xudp"` (plain
/// TCP and TLS) sends UDP as Mux.Cool UDP sub-sessions; every datagram comes back intact and
/// the panel receives exactly the payload bytes.
#[test]
fn sing_box_vmess_xudp_with_exact_accounting() {
    use v2sp_testsupport::harness::sing_box_outbound;
    let echo = Echo::start().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let nodes: Vec<NodeSpec> = [0u8, 1]
        .iter()
        .map(|&tls| {
            let port = free_port();
            NodeSpec {
                node_id: u32::from(tls) + 1,
                port,
                info: json!({"node_type": "vmess", "server_port": port, "tls": tls, "network": "tcp",
                             "tls_settings": {"server_name": DOMAIN},
                             "base_config": {"push_interval": 1, "pull_interval": 1}}),
                users: vec![user(1, UUIDS[0]), user(2, UUIDS[1])],
            }
        })
        .collect();
    let cert_cfg = self_signed_certs(certs.path(), DOMAIN);
    let v = V2sp::start(nodes, cert_cfg).unwrap();
    let mut failures = Vec::new();
    let mut expected: Totals = BTreeMap::new();
    for (ni, n) in v.nodes.iter().enumerate() {
        let uidx = ni % 2;
        let mut out = json!({"type": "vmess", "server": "127.0.0.1", "server_port": n.port,
                             "uuid": UUIDS[uidx], "security": "aes-128-gcm", "alter_id": 0,
                             "packet_encoding": "xudp"});
        if ni == 1 {
            out["tls"] = json!({"enabled": true, "server_name": DOMAIN, "insecure": true});
        }
        let (proc_, socks) = sing_box_outbound(out, v.dir.path()).unwrap();
        match udp_echo_through(socks, echo.port, 15, 900 + ni) {
            Ok(b) => {
                expect(&mut expected, n.node_id, uidx as u32 + 1, b, b);
            }
            Err(e) => failures.push(format!(
                "sing-box vmess xudp node {}: {e:#}\n{}",
                n.node_id,
                proc_.log()
            )),
        }
        drop(proc_);
    }
    v.finish(&failures, &expected);
}

/// A removed user's mux connection closes, and with it every sub-stream's destination
/// connection: two sub-streams are open to a listener that holds them; after the user leaves
/// the panel, both destination sockets see EOF within a few seconds.
#[test]
fn v2ray_mux_substreams_close_when_the_user_is_removed() {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    use std::time::Instant;
    use v2sp_testsupport::harness::socks5_connect;

    let (dport, closed) = v2sp_testsupport::harness::eof_counter(Duration::from_secs(20)).unwrap();
    let port = free_port();
    let node = NodeSpec {
        node_id: 1,
        port,
        info: json!({"node_type": "vmess", "server_port": port, "tls": 0, "network": "tcp",
                     "base_config": {"push_interval": 1, "pull_interval": 1}}),
        users: vec![user(1, UUIDS[0]), user(2, UUIDS[1])],
    };
    let v = V2sp::start(vec![node], json!({})).unwrap();
    let (proc_, socks) = v2ray_mux("vmess", port, UUIDS[1], false, v.dir.path());
    let mut conns = Vec::new();
    for _ in 0..2 {
        let mut s = socks5_connect(socks, dport).unwrap();
        s.write_all(b"hi").unwrap();
        let mut b = [0u8; 2];
        s.read_exact(&mut b)
            .unwrap_or_else(|e| panic!("{e}\n{}\n{}", proc_.log(), v.agent.log()));
        assert_eq!(&b, b"ok");
        conns.push(s);
    }
    assert_eq!(closed.load(Ordering::SeqCst), 0);
    v.sim.set_users(1, vec![user(1, UUIDS[0])]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while closed.load(Ordering::SeqCst) < 2 {
        assert!(
            Instant::now() < deadline,
            "destination connections still open after the user's removal\n{}",
            v.agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(conns);
    drop(proc_);
}

/// A raw VLESS request (plaintext node) with command `cmd`: version 0, the uuid, no addons,
/// then the command's destination (none for Mux.Cool).
fn vless_header(uuid: &str, cmd: u8, dest_port: Option<u16>) -> Vec<u8> {
    let hex: String = uuid.chars().filter(|c| *c != '-').collect();
    let mut h = vec![0u8];
    h.extend((0..16).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap()));
    h.extend([0, cmd]);
    if let Some(p) = dest_port {
        h.extend(p.to_be_bytes());
        h.extend([1, 127, 0, 0, 1]);
    }
    h
}

/// A Mux.Cool "New TCP sub-stream with data" frame to 127.0.0.1:`port`.
fn mux_new(sid: u16, port: u16, data: &[u8]) -> Vec<u8> {
    let mut meta = sid.to_be_bytes().to_vec();
    meta.extend([0x01, 0x01, 0x01]);
    meta.extend(port.to_be_bytes());
    meta.extend([0x01, 127, 0, 0, 1]);
    let mut f = (meta.len() as u16).to_be_bytes().to_vec();
    f.extend(meta);
    f.extend((data.len() as u16).to_be_bytes());
    f.extend_from_slice(data);
    f
}

/// Issue 11, mux flood: one VLESS Mux.Cool connection opens 2000 TCP sub-streams, each with
/// 16 KiB for the echo server, and never reads what comes back. At most 128 sub-streams are
/// open (more get End + error) and the replies wait on the client's socket, so the data
/// plane's RSS grows by under 32 MiB; another user's plain VLESS connection keeps working.
#[test]
fn raw_mux_substream_flood_rss_under_32mib() {
    use std::io::{Read, Write};
    const SUBSTREAMS: u16 = 2000;
    const BOUND: u64 = 32 << 20;
    let echo = Echo::start().unwrap();
    let port = free_port();
    let node = NodeSpec {
        node_id: 1,
        port,
        info: json!({"node_type": "vless", "server_port": port, "tls": 0, "network": "tcp",
                     "base_config": {"push_interval": 1, "pull_interval": 1}}),
        users: users(&UUIDS),
    };
    let v = V2sp::start(vec![node], json!({})).unwrap();
    let pid = v.dataplane_pid();
    // A plain VLESS TCP echo of 4 KiB (response header: version, addons length).
    let plain_echo = |seed: u64| -> Result<(), String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let data = payload(4096, seed);
        let mut req = vless_header(UUIDS[1], 1, Some(echo.port));
        req.extend(&data);
        s.write_all(&req).map_err(|e| e.to_string())?;
        let mut back = vec![0u8; 2 + data.len()];
        s.read_exact(&mut back).map_err(|e| e.to_string())?;
        (back[2..] == data[..])
            .then_some(())
            .ok_or_else(|| "altered".to_string())
    };
    plain_echo(1).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_bytes(pid);
    let mut flood = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    flood.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    flood.write_all(&vless_header(UUIDS[0], 3, None)).unwrap();
    let chunk = payload(16 << 10, 9);
    let mut sent = 0u16;
    for sid in 1..=SUBSTREAMS {
        if flood.write_all(&mux_new(sid, echo.port, &chunk)).is_err() {
            break; // the server stopped reading us: back-pressure, as it should
        }
        sent += 1;
    }
    std::thread::sleep(Duration::from_secs(2));
    let growth = rss_bytes(pid).saturating_sub(before);
    let other = plain_echo(2);
    eprintln!(
        "mux flood: {sent} sub-streams written, data plane RSS +{} KiB, {} echo connections",
        growth / 1024,
        echo.connections()
    );
    other.unwrap_or_else(|e| {
        panic!(
            "another user's connection during the flood: {e}\n{}",
            v.agent.log()
        )
    });
    assert!(
        echo.connections() <= 2 + 128,
        "more than 128 sub-streams reached the destination"
    );
    assert!(
        growth < BOUND,
        "RSS grew by {} KiB (bound {} KiB)",
        growth / 1024,
        BOUND / 1024
    );
    drop(flood);
}
