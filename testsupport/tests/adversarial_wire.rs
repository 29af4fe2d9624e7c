//! Issue 11 "hardening", the wire half: the project's own attacker clients against a real
//! v2sp (panel simulator, `v2sp run`, data plane) on loopback, each attack from 8 connections
//! at full speed for [`ATTACK`] (reconnecting whenever the data plane closes one):
//!
//! * WebSocket PING flood, the client never reading (half the connections before
//!   authentication, half after a valid VLESS request);
//! * HPACK bomb on grpc: one 64 KiB header block inserting a 4000-byte header and referencing
//!   it 61,475 times (~235 MiB decoded);
//! * HTTP/2 SETTINGS, WINDOW_UPDATE, RST_STREAM and PING floods after an authenticated gun
//!   request, never reading.
//!
//! Each asserts that the data plane's RSS (VmRSS, sampled every 50 ms) grows less than the
//! bound in the test's name above what it was before the attack, and that a legitimate
//! connection through the real sing-box client (VLESS over the same transport) moves 256 KiB
//! through the echo server during the attack and after it. Each prints its figures (RSS growth,
//! data-plane CPU seconds, bytes the attacker got in) on stderr (`--nocapture`). Runs on
//! whichever I/O backend `V2SP_IO` selects. TLS KeyUpdate floods are covered at the record
//! layer (`dataplane/src/tls/tests.rs`), where the attacker can write records rustls' client
//! would not.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;
use v2sp_testsupport::harness::{
    free_port, payload, sing_box_transport, tcp_echo_through, Echo, NodeSpec, Proc, V2sp,
};
use v2sp_testsupport::panel_sim::users;

const UUID: &str = "705d4ada-fc32-48de-951c-2ab9d5765ce0";
const UUID_BYTES: [u8; 16] = [
    0x70, 0x5d, 0x4a, 0xda, 0xfc, 0x32, 0x48, 0xde, 0x95, 0x1c, 0x2a, 0xb9, 0xd5, 0x76, 0x5c, 0xe0,
];
const DOMAIN: &str = "v2sp.test";
/// How long each attack runs.
const ATTACK: Duration = Duration::from_secs(10);
/// Attacking connections (each reconnects when closed).
const CONNS: usize = 8;
const MIB: u64 = 1 << 20;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Ws,
    Grpc,
}

/// A v2sp with one VLESS node on `t` (no TLS), the echo server, and a sing-box client for it.
struct Target {
    v: V2sp,
    echo: Echo,
    client: Proc,
    socks: u16,
    port: u16,
}

impl Target {
    fn start(t: Transport) -> Target {
        let echo = Echo::start().unwrap();
        let port = free_port();
        let (network, settings, transport) = match t {
            Transport::Ws => (
                "ws",
                json!({"path": "/ray", "headers": {"Host": DOMAIN}}),
                json!({"type": "ws", "path": "/ray", "headers": {"Host": DOMAIN}}),
            ),
            Transport::Grpc => (
                "grpc",
                json!({"serviceName": "gun", "multiMode": false}),
                json!({"type": "grpc", "service_name": "gun"}),
            ),
        };
        let node = NodeSpec {
            node_id: 1,
            port,
            info: json!({"node_type": "vless", "server_port": port, "tls": 0,
                         "network": network, "networkSettings": settings,
                         "base_config": {"push_interval": 1, "pull_interval": 1}}),
            users: users(&[UUID]),
        };
        let v = V2sp::start(vec![node], json!({})).unwrap();
        let (client, socks) =
            sing_box_transport(port, "vless", UUID, None, Some(transport), v.dir.path()).unwrap();
        let me = Target {
            v,
            echo,
            client,
            socks,
            port,
        };
        // Warm up: pools, the first relay, sing-box's connection.
        me.legit().unwrap();
        me
    }

    fn legit(&self) -> anyhow::Result<u64> {
        tcp_echo_through(self.socks, self.echo.port, &payload(256 * 1024, 7))
    }

    /// The VLESS request header for a TCP connection to the echo server.
    fn vless_request(&self) -> Vec<u8> {
        let mut h = vec![0u8];
        h.extend_from_slice(&UUID_BYTES);
        h.extend_from_slice(&[0, 1]);
        h.extend_from_slice(&self.echo.port.to_be_bytes());
        h.extend_from_slice(&[1, 127, 0, 0, 1]);
        h
    }
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU seconds of `pid` (clock ticks of 1/100 s, Linux's USER_HZ).
fn cpu_secs(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which ends with the last ')'): state is field 3, utime 14.
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    ticks as f64 / 100.0
}

/// Writes `data` in full unless the connection fails or `stop` is set; the socket's write
/// timeout lets a stalled write (the data plane stopped reading) notice `stop`. Returns the
/// bytes written and whether the connection is still usable.
fn push(s: &mut TcpStream, data: &[u8], stop: &AtomicBool) -> (u64, bool) {
    let mut off = 0;
    while off < data.len() && !stop.load(Ordering::Relaxed) {
        match s.write(&data[off..]) {
            Ok(0) => return (off as u64, false),
            Ok(n) => off += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (off as u64, false),
        }
    }
    (off as u64, true)
}

fn connect(port: u16) -> Option<TcpStream> {
    let s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_write_timeout(Some(Duration::from_millis(100))).ok()?;
    s.set_nodelay(true).ok()?;
    Some(s)
}

/// Runs `attack` (one attacking connection's script: until `stop`, reconnecting after the
/// data plane closes it; returns the bytes it got in) from [`CONNS`] threads for [`ATTACK`]
/// while sampling the data plane, checks a legitimate connection mid-attack and after it, and
/// asserts RSS growth under `bound_mib`.
fn run(name: &str, t: Transport, bound_mib: u64, attack: impl Fn(&Target, &AtomicBool) -> u64 + Sync) {
    let target = Target::start(t);
    let pid = target.v.dataplane_pid();
    assert_ne!(pid, 0);
    let base = rss_kib(pid);
    let cpu0 = cpu_secs(pid);
    let stop = AtomicBool::new(false);
    let peak = AtomicU64::new(base);
    let sent = AtomicU64::new(0);
    let mut failures = Vec::new();
    let mut cpu = 0.0;
    std::thread::scope(|sc| {
        for _ in 0..CONNS {
            sc.spawn(|| sent.fetch_add(attack(&target, &stop), Ordering::Relaxed));
        }
        sc.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        // The legitimate connection starts halfway through (it may finish after the attack).
        let during = sc.spawn(|| {
            std::thread::sleep(ATTACK / 2);
            target.legit()
        });
        std::thread::sleep(ATTACK);
        cpu = cpu_secs(pid) - cpu0;
        stop.store(true, Ordering::Relaxed);
        if let Err(e) = during.join().unwrap_or_else(|_| Err(anyhow::anyhow!("panicked"))) {
            failures.push(format!("legitimate connection during the attack: {e:#}"));
        }
    });
    if let Err(e) = target.legit() {
        failures.push(format!("legitimate connection after the attack: {e:#}"));
    }
    let after = rss_kib(pid);
    let peak = peak.load(Ordering::Relaxed).max(after);
    let growth = peak.saturating_sub(base);
    let io = std::env::var("V2SP_IO").unwrap_or_else(|_| "auto".into());
    eprintln!(
        "ATTACK {name} (V2SP_IO={io}): rss base {:.1} MiB, peak growth {:.1} MiB, after {:.1} MiB; \
         data plane {cpu:.2} CPU-s in {}s; attacker wrote {:.1} MiB (into its socket buffers)",
        base as f64 / 1024.0,
        growth as f64 / 1024.0,
        after as f64 / 1024.0,
        ATTACK.as_secs(),
        sent.load(Ordering::Relaxed) as f64 / MIB as f64,
    );
    if growth * 1024 > bound_mib * MIB {
        failures.push(format!(
            "RSS grew by {:.1} MiB (bound {bound_mib} MiB)",
            growth as f64 / 1024.0
        ));
    }
    if !failures.is_empty() {
        panic!(
            "{name}:\n{}\n--- v2sp log ---\n{}",
            failures.join("\n"),
            target.v.agent.log()
        );
    }
    drop(target.client);
}

/// A masked client frame.
fn ws_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut f = vec![0x80 | opcode];
    match payload.len() {
        n @ 0..=125 => f.push(0x80 | n as u8),
        n => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

const WS_UPGRADE: &[u8] =
    b"GET /ray HTTP/1.1\r\nHost: v2sp.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

#[test]
fn ws_ping_flood_rss_under_64mib() {
    let authed = AtomicU64::new(0);
    run("ws ping flood", Transport::Ws, 64, |t, stop| {
        // Half the connections authenticate first (a VLESS request in a binary frame).
        let auth = authed.fetch_add(1, Ordering::Relaxed).is_multiple_of(2);
        let pings = ws_frame(9, &[b'p'; 125]).repeat(500);
        let mut sent = 0;
        while !stop.load(Ordering::Relaxed) {
            let Some(mut s) = connect(t.port) else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            let mut first = WS_UPGRADE.to_vec();
            if auth {
                first.extend(ws_frame(2, &t.vless_request()));
            }
            let (n, mut ok) = push(&mut s, &first, stop);
            sent += n;
            while ok && !stop.load(Ordering::Relaxed) {
                let (n, still) = push(&mut s, &pings, stop);
                sent += n;
                ok = still;
            }
        }
        sent
    });
}

/// An HTTP/2 frame.
fn h2_frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let l = payload.len();
    let mut v = vec![(l >> 16) as u8, (l >> 8) as u8, l as u8, ty, flags];
    v.extend_from_slice(&stream.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A 64 KiB header block that adds `x: <4000 bytes>` to the HPACK table once, then
/// references it (index 62, one byte) 61,475 times, as HEADERS + CONTINUATIONs of 16 KiB.
fn hpack_bomb() -> Vec<u8> {
    let mut block = vec![0x40, 0x01, b'x', 0x7f, 0xa1, 0x1e];
    block.extend(std::iter::repeat_n(b'v', 4000));
    block.extend(std::iter::repeat_n(0xbe, 61_475));
    let mut wire = PREFACE.to_vec();
    wire.extend(h2_frame(4, 0, 0, &[]));
    let chunks: Vec<&[u8]> = block.chunks(16 * 1024).collect();
    for (i, c) in chunks.iter().enumerate() {
        let ty = if i == 0 { 1 } else { 9 };
        let flags = if i + 1 == chunks.len() { 4 } else { 0 };
        wire.extend(h2_frame(ty, flags, 1, c));
    }
    wire
}

#[test]
fn grpc_hpack_bomb_rss_under_64mib() {
    let bomb = hpack_bomb();
    run("grpc HPACK bomb", Transport::Grpc, 64, |t, stop| {
        let mut sent = 0;
        while !stop.load(Ordering::Relaxed) {
            let Some(mut s) = connect(t.port) else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            let (n, _) = push(&mut s, &bomb, stop);
            sent += n;
            // Wait for the data plane's verdict (it closes), as a real attacker would before
            // the next bomb; bounded by the read timeout.
            s.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let mut sink = [0u8; 4096];
            while !stop.load(Ordering::Relaxed) {
                match s.read(&mut sink) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
        sent
    });
}

/// An authenticated gun stream: our request on stream 1, then the VLESS request in a gun
/// message; `flood` repeated after it.
fn h2_flood(name: &str, flood: Vec<u8>) {
    run(name, Transport::Grpc, 64, |t, stop| {
        let mut first = PREFACE.to_vec();
        first.extend(h2_frame(4, 0, 0, &[]));
        // :method POST (static 3), :scheme http (static 6), :path /gun/Tun (name index 4),
        // content-type application/grpc (name index 31), literals without indexing.
        let mut block = vec![0x83, 0x86, 0x04, 8];
        block.extend_from_slice(b"/gun/Tun");
        block.extend_from_slice(&[0x0f, 0x10, 16]);
        block.extend_from_slice(b"application/grpc");
        first.extend(h2_frame(1, 4, 1, &block));
        let req = t.vless_request();
        let mut msg = vec![0u8];
        msg.extend_from_slice(&((req.len() + 2) as u32).to_be_bytes());
        msg.extend_from_slice(&[0x0a, req.len() as u8]);
        msg.extend_from_slice(&req);
        first.extend(h2_frame(0, 0, 1, &msg));
        let mut sent = 0;
        while !stop.load(Ordering::Relaxed) {
            let Some(mut s) = connect(t.port) else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            let (n, mut ok) = push(&mut s, &first, stop);
            sent += n;
            while ok && !stop.load(Ordering::Relaxed) {
                let (n, still) = push(&mut s, &flood, stop);
                sent += n;
                ok = still;
            }
        }
        sent
    });
}

#[test]
fn h2_settings_flood_rss_under_64mib() {
    h2_flood("h2 SETTINGS flood", h2_frame(4, 0, 0, &[]).repeat(4000));
}

#[test]
fn h2_window_update_flood_rss_under_64mib() {
    h2_flood(
        "h2 WINDOW_UPDATE flood",
        h2_frame(8, 0, 0, &1u32.to_be_bytes()).repeat(4000),
    );
}

#[test]
fn h2_rst_stream_flood_rss_under_64mib() {
    let mut flood = Vec::new();
    for i in 0..4000u32 {
        flood.extend(h2_frame(3, 0, 3 + 2 * i, &8u32.to_be_bytes()));
    }
    h2_flood("h2 RST_STREAM flood", flood);
}

#[test]
fn h2_ping_flood_rss_under_64mib() {
    h2_flood("h2 PING flood", h2_frame(6, 0, 0, b"12345678").repeat(4000));
}
