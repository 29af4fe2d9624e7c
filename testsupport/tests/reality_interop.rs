//! Issue 5: VLESS + REALITY against the real shoes client (the sing-box peer is built without
//! uTLS, which its REALITY client requires).
//!
//! * REALITY: shoes authenticates, accepts v2sp's temporary certificate and moves 1 MiB
//!   sha256-checked to the echo server; the panel receives exactly the bytes moved for that
//!   user.
//! * A client with a wrong short id is relayed to `dest` (a local nginx with a self-signed
//!   certificate) and gets no data through; nothing is accounted.
//! * Probe: `openssl s_client` to the REALITY port gets the same certificate chain as from
//!   nginx directly; plain HTTP and a client silent past the handshake timeout reach nginx too.
//! * Vision (`xtls-rprx-vision`) over REALITY and over ordinary TLS: curl fetches 4 MiB over
//!   an inner TLS 1.3 connection to nginx, sha256-checked; both directions switch to direct
//!   (the data plane's debug log says so) and the panel totals equal the bytes a counting
//!   proxy in front of nginx saw each way. A client without the node's flow gets nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use v2sp_testsupport::harness::{
    free_port, payload, peer, run_in_loopback_netns, sha256, socks5_connect, tcp_echo_through, wait_tcp,
    xray_outbound, Echo, NodeSpec, Proc, V2sp,
};
use v2sp_testsupport::panel_sim::{user, users};
use v2sp_testsupport::peers::shoes;

const UUIDS: [&str; 2] = [
    "705d4ada-fc32-48de-951c-2ab9d5765ce0",
    "0c6a030a-1aa1-4938-9cd7-d5ec4d9aee4e",
];
const SNI: &str = "v2sp.test";
const SHORT_ID: &str = "0123abcd";

/// nginx serving TLS with a fresh self-signed certificate on a free port (REALITY's dest).
struct Nginx {
    port: u16,
    _proc: Proc,
}

impl Nginx {
    fn start(dir: &Path) -> Nginx {
        let d = dir.join("nginx");
        std::fs::create_dir_all(d.join("logs")).unwrap();
        let ok = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args(["-nodes", "-days", "2", "-subj", "/CN=v2sp.test"])
            .arg("-keyout")
            .arg(d.join("k.pem"))
            .arg("-out")
            .arg(d.join("c.pem"))
            .output()
            .unwrap();
        assert!(ok.status.success(), "openssl req: {ok:?}");
        std::fs::write(d.join("big.bin"), payload(4 << 20, 77)).unwrap();
        let port = free_port();
        let conf = format!(
            "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/logs/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};\n\
               uwsgi_temp_path {d}; scgi_temp_path {d};\n\
               server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {d}/c.pem; ssl_certificate_key {d}/k.pem;\n\
                 ssl_protocols TLSv1.2 TLSv1.3; location /big {{ alias {d}/big.bin; }}\n\
                 location / {{ return 200 \"dest\\n\"; }} }} }}\n",
            d = d.display()
        );
        std::fs::write(d.join("nginx.conf"), conf).unwrap();
        let mut cmd = Command::new(peer("nginx").unwrap());
        cmd.arg("-p").arg(&d).arg("-c").arg(d.join("nginx.conf"));
        let p = Proc::spawn("nginx", cmd, d.join("stdout.log")).unwrap();
        wait_tcp(port, Duration::from_secs(10)).unwrap_or_else(|e| panic!("nginx: {e:#}\n{}", p.log()));
        Nginx { port, _proc: p }
    }
}

/// `sing-box generate reality-keypair` → (private, public).
fn keypair() -> (String, String) {
    let out = Command::new(peer("sing-box").unwrap())
        .args(["generate", "reality-keypair"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {k} in {text:?}"))
    };
    (get("PrivateKey:"), get("PublicKey:"))
}

/// The PEM certificates `openssl s_client` receives from 127.0.0.1:`port` with SNI `v2sp.test`.
fn cert_chain(port: u16) -> Vec<String> {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            SNI,
            "-showcerts",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut certs = Vec::new();
    let mut cur: Option<String> = None;
    for l in text.lines() {
        if l.starts_with("-----BEGIN CERTIFICATE") {
            cur = Some(String::new());
        }
        if let Some(c) = cur.as_mut() {
            c.push_str(l);
            c.push('\n');
        }
        if l.starts_with("-----END CERTIFICATE") {
            certs.extend(cur.take());
        }
    }
    certs
}

struct Setup {
    v: V2sp,
    nginx: Nginx,
    echo: Echo,
    public_key: String,
    _tmp: tempfile::TempDir,
}

fn setup(flow: &str) -> Setup {
    setup_protocol("vless", flow)
}

fn setup_protocol(protocol: &str, flow: &str) -> Setup {
    setup_network(protocol, flow, json!({"network": "tcp"}))
}

/// As [`setup_protocol`], with the panel's `network` (and `networkSettings`) in `network`.
fn setup_network(protocol: &str, flow: &str, network: serde_json::Value) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let nginx = Nginx::start(tmp.path());
    let echo = Echo::start().unwrap();
    let (private_key, public_key) = keypair();
    let port = free_port();
    let node = NodeSpec {
        node_id: 1,
        port,
        info: {
            let mut i = json!({"node_type": protocol, "server_port": port, "tls": 2, "flow": flow,
                     "tls_settings": {"server_name": SNI, "dest": "127.0.0.1", "server_port": nginx.port.to_string(),
                                      "private_key": private_key, "short_id": SHORT_ID, "xver": "0"},
                     "base_config": {"push_interval": 1, "pull_interval": 1}});
            for (k, v) in network.as_object().into_iter().flatten() {
                i[k] = v.clone();
            }
            i
        },
        users: users(&UUIDS),
    };
    let v = V2sp::start(vec![node], json!({})).unwrap();
    Setup {
        v,
        nginx,
        echo,
        public_key,
        _tmp: tmp,
    }
}

/// Probes see dest: `openssl s_client` gets nginx's certificate chain through the REALITY
/// port, and a plain HTTP request gets nginx's own answer (raw relay, request bytes included).
#[test]
fn reality_probes_see_dest() {
    let s = setup("");
    let port = s.v.nodes[0].port;
    let direct = cert_chain(s.nginx.port);
    let via = cert_chain(port);
    assert!(!direct.is_empty(), "no certificate from nginx directly");
    assert_eq!(
        via,
        direct,
        "probe: chain via the REALITY port differs from dest's\n{}",
        s.v.agent.log()
    );
    let ask = |p: u16| {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", p)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(b"GET / HTTP/1.0\r\nHost: v2sp.test\r\n\r\n").unwrap();
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out);
        String::from_utf8_lossy(&out)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    let (d, v) = (ask(s.nginx.port), ask(port));
    assert!(d.starts_with("HTTP/1.1 400"), "nginx said {d:?}");
    assert_eq!(v, d);
    // A client silent past the handshake timeout (4 s) is not cut off: it is dest's visitor.
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    std::thread::sleep(Duration::from_secs(6));
    c.write_all(b"GET / HTTP/1.0\r\nHost: v2sp.test\r\n\r\n").unwrap();
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    let late = String::from_utf8_lossy(&out)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(late, d, "silent client after the handshake timeout");
    // Nothing was accounted for anybody.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        s.v.sim.totals(1).is_empty(),
        "fallback traffic accounted: {:?}",
        s.v.sim.totals(1)
    );
}

/// The shoes client (SOCKS on a free port) with a REALITY + VLESS outbound.
fn shoes(dir: &Path, port: u16, uuid: &str, public_key: &str, short_id: &str, vision: bool) -> (Proc, u16) {
    let chain = shoes::reality(public_key, short_id, SNI, vision, shoes::vless(uuid));
    shoes::client(port, chain, dir).unwrap_or_else(|e| panic!("shoes client: {e:#}"))
}

#[test]
fn reality_shoes_exact_accounting_and_wrong_short_id_goes_to_dest() {
    let s = setup("");
    let port = s.v.nodes[0].port;
    let mut failures = Vec::new();
    let (p, socks) = shoes(s.v.dir.path(), port, UUIDS[0], &s.public_key, SHORT_ID, false);
    let data = payload(1 << 20, 5);
    let mut moved = 0;
    match tcp_echo_through(socks, s.echo.port, &data) {
        Ok(n) => moved = n,
        Err(e) => failures.push(format!("REALITY user 1: {e:#}\n{}", p.log())),
    }
    drop(p);
    // Wrong short id: relayed to nginx, whose certificate shoes refuses; no data, no bytes.
    let (p, socks) = shoes(s.v.dir.path(), port, UUIDS[1], &s.public_key, "ffffffff", false);
    if tcp_echo_through(socks, s.echo.port, &payload(4096, 6)).is_ok() {
        failures.push(format!("data went through with a wrong short id\n{}", p.log()));
    }
    drop(p);
    if !failures.is_empty() {
        panic!("{}\n--- v2sp log ---\n{}", failures.join("\n"), s.v.agent.log());
    }
    let mut exp = BTreeMap::new();
    exp.insert(1u32, (moved, moved));
    s.v.wait_totals(1, &exp, Duration::from_secs(20)).unwrap();
    // Accounted while the connection is still open: 64 KiB echoed, totals grow by exactly that
    // before the client closes.
    let (p, socks) = shoes(s.v.dir.path(), port, UUIDS[0], &s.public_key, SHORT_ID, false);
    let mut c = socks5_connect(socks, s.echo.port).unwrap();
    let data = payload(64 << 10, 9);
    c.write_all(&data).unwrap();
    let mut back = vec![0u8; data.len()];
    c.read_exact(&mut back).unwrap();
    assert_eq!(back, data);
    exp.insert(1u32, (moved + data.len() as u64, moved + data.len() as u64));
    s.v.wait_totals(1, &exp, Duration::from_secs(20)).unwrap();
    drop(c);
    drop(p);
}

/// Issue 13: Trojan over REALITY (Xboard's `tls: 2` for a Trojan node) through shoes, exact
/// to the byte; a client with a wrong short id is relayed to dest and gets nothing through.
#[test]
fn trojan_reality_shoes_exact_accounting_and_wrong_short_id_goes_to_dest() {
    let s = setup_protocol("trojan", "");
    let port = s.v.nodes[0].port;
    let trojan = |password: &str, short_id: &str| {
        let chain = shoes::reality(&s.public_key, short_id, SNI, false, shoes::trojan(password));
        shoes::client(port, chain, s.v.dir.path()).unwrap_or_else(|e| panic!("shoes client: {e:#}"))
    };
    let mut failures = Vec::new();
    let (p, socks) = trojan(UUIDS[0], SHORT_ID);
    let data = payload(1 << 20, 15);
    let mut moved = 0;
    match tcp_echo_through(socks, s.echo.port, &data) {
        Ok(n) => moved = n,
        Err(e) => failures.push(format!("Trojan REALITY user 1: {e:#}\n{}", p.log())),
    }
    drop(p);
    let (p, socks) = trojan(UUIDS[1], "ffffffff");
    if tcp_echo_through(socks, s.echo.port, &payload(4096, 16)).is_ok() {
        failures.push(format!("data went through with a wrong short id\n{}", p.log()));
    }
    drop(p);
    if !failures.is_empty() {
        panic!("{}\n--- v2sp log ---\n{}", failures.join("\n"), s.v.agent.log());
    }
    let exp = BTreeMap::from([(1u32, (moved, moved))]);
    s.v.wait_totals(1, &exp, Duration::from_secs(20)).unwrap();
}

/// Issue 17 §3: 1000 connections through shoes' REALITY client, 50 in flight, each a 1-byte
/// echo, right after the node starts: every one served, the panel's totals exact.
#[test]
fn reality_burst_through_shoes_loses_no_connection() {
    let s = setup("");
    let port = s.v.nodes[0].port;
    let (p, socks) = shoes(s.v.dir.path(), port, UUIDS[0], &s.public_key, SHORT_ID, false);
    let failures =
        v2sp_testsupport::harness::echo_burst(socks, s.echo.port, 1000, 50, 1, Duration::from_secs(10));
    if !failures.is_empty() {
        panic!(
            "{} of 1000 connections failed; first: {:?}\n--- shoes ---\n{}\n--- v2sp log ---\n{}",
            failures.len(),
            failures.iter().take(10).collect::<Vec<_>>(),
            p.log(),
            s.v.agent.log()
        );
    }
    let exp = BTreeMap::from([(1u32, (1000u64, 1000u64))]);
    s.v.wait_totals(1, &exp, Duration::from_secs(20)).unwrap();
}

/// A TCP proxy in front of 127.0.0.1:`upstream` counting the bytes each way (what v2sp must
/// account: upload = client→upstream, download = upstream→client).
struct Counter {
    port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicU64>,
    down: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Counter {
    fn start(upstream: u16) -> Counter {
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::Arc;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let (up, down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (u0, d0) = (up.clone(), down.clone());
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let Ok(u) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                for (mut from, mut to, n) in [
                    (c.try_clone().unwrap(), u.try_clone().unwrap(), u0.clone()),
                    (u, c, d0.clone()),
                ] {
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 64 * 1024];
                        while let Ok(k) = from.read(&mut buf) {
                            if k == 0 || to.write_all(&buf[..k]).is_err() {
                                break;
                            }
                            n.fetch_add(k as u64, Ordering::SeqCst);
                        }
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        Counter { port, up, down }
    }
}

/// curl fetches nginx's 4 MiB file over TLS (an inner TLS 1.3 connection) through shoes' SOCKS
/// port and the counting proxy; panics unless it arrives intact.
fn fetch_big(socks: u16, counter: &Counter, dir: &Path, logs: &dyn Fn() -> String) {
    let out = dir.join(format!("big-{socks}.out"));
    let r = Command::new("curl")
        .args(["-sS", "-k", "--max-time", "30", "--socks5"])
        .arg(format!("127.0.0.1:{socks}"))
        .arg(format!("https://127.0.0.1:{}/big", counter.port))
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    let got = std::fs::read(&out).unwrap_or_default();
    if !r.status.success() || sha256(&got) != sha256(&payload(4 << 20, 77)) {
        panic!(
            "curl through Vision: {:?} {} ({} bytes)\n{}",
            r.status,
            String::from_utf8_lossy(&r.stderr),
            got.len(),
            logs()
        );
    }
}

/// After a Vision fetch through `counter`: both directions switched to direct (the data
/// plane's debug log), more than the 4 MiB body came down, and the panel's totals equal what
/// the counting proxy saw each way.
fn vision_went_direct_and_counted_exactly(v: &V2sp, counter: &Counter) {
    std::thread::sleep(Duration::from_millis(500));
    let log = v.agent.log();
    assert!(
        log.contains("vision: uplink direct") && log.contains("vision: downlink direct"),
        "Vision never switched both directions to direct:\n{log}"
    );
    let up = counter.up.load(std::sync::atomic::Ordering::SeqCst);
    let down = counter.down.load(std::sync::atomic::Ordering::SeqCst);
    assert!(down > 4 << 20, "counter saw {down} bytes down");
    let exp = BTreeMap::from([(1u32, (up, down))]);
    v.wait_totals(1, &exp, Duration::from_secs(20)).unwrap();
}

/// VLESS + Vision over ordinary TLS (`tls: 1`, CertMode self): the same inner-TLS fetch,
/// both directions switch to direct, exact totals.
#[test]
fn tls_vision_shoes_inner_tls_exact_accounting() {
    std::env::set_var("RUST_LOG", "info,v2sp_dataplane::tls::vision=debug");
    let tmp = tempfile::tempdir().unwrap();
    let nginx = Nginx::start(tmp.path());
    let counter = Counter::start(nginx.port);
    let port = free_port();
    let node = NodeSpec {
        node_id: 1,
        port,
        info: json!({"node_type": "vless", "server_port": port, "tls": 1, "network": "tcp",
                     "flow": "xtls-rprx-vision", "tls_settings": {"server_name": SNI},
                     "base_config": {"push_interval": 1, "pull_interval": 1}}),
        users: vec![user(1, UUIDS[0])],
    };
    let certs = tmp.path().join("certs");
    let v = V2sp::start(
        vec![node],
        json!({"CertConfig": {"CertMode": "self", "CertDomain": SNI,
            "CertFile": certs.join("{domain}.crt"), "KeyFile": certs.join("{domain}.key")}}),
    )
    .unwrap();
    let chain = shoes::tls_vision(SNI, shoes::vless(UUIDS[0]));
    let (p, socks) =
        shoes::client(port, chain, v.dir.path()).unwrap_or_else(|e| panic!("shoes client: {e:#}"));
    fetch_big(socks, &counter, v.dir.path(), &|| {
        format!("--- shoes ---\n{}\n--- v2sp ---\n{}", p.log(), v.agent.log())
    });
    drop(p);
    vision_went_direct_and_counted_exactly(&v, &counter);
}

/// VLESS + REALITY + Vision: curl fetches 4 MiB over TLS from nginx through shoes → v2sp, so
/// the tunnel carries an inner TLS 1.3 connection and Vision switches to direct; the file is
/// sha256-checked and the panel receives exactly the bytes that reached nginx and came back.
/// A user without the flow is refused.
#[test]
fn reality_vision_shoes_inner_tls_exact_accounting() {
    // The data plane logs each direction's switch to direct at debug level.
    std::env::set_var("RUST_LOG", "info,v2sp_dataplane::tls::vision=debug");
    let s = setup("xtls-rprx-vision");
    let port = s.v.nodes[0].port;
    let counter = Counter::start(s.nginx.port);
    let (p, socks) = shoes(s.v.dir.path(), port, UUIDS[0], &s.public_key, SHORT_ID, true);
    fetch_big(socks, &counter, s.v.dir.path(), &|| {
        format!("--- shoes ---\n{}\n--- v2sp ---\n{}", p.log(), s.v.agent.log())
    });
    drop(p);
    vision_went_direct_and_counted_exactly(&s.v, &counter);
    // The same user without the flow gets nothing through.
    let (p, socks) = shoes(s.v.dir.path(), port, UUIDS[0], &s.public_key, SHORT_ID, false);
    if tcp_echo_through(socks, s.echo.port, &payload(4096, 8)).is_ok() {
        panic!("a client without the node's flow got data through\n{}", p.log());
    }
}

/// Xray (the reference REALITY implementation) as the client: VLESS or Trojan over REALITY,
/// with `flow` for VLESS. Runs only inside the test's loopback-only namespace.
fn xray_reality(s: &Setup, protocol: &str, secret: &str, flow: &str, short_id: &str) -> (Proc, u16) {
    let port = s.v.nodes[0].port;
    let settings = if protocol == "vless" {
        json!({"vnext": [{"address": "127.0.0.1", "port": port,
                          "users": [{"id": secret, "encryption": "none", "flow": flow}]}]})
    } else {
        json!({"servers": [{"address": "127.0.0.1", "port": port, "password": secret}]})
    };
    let out = json!({"protocol": protocol, "settings": settings,
        "streamSettings": {"network": "tcp", "security": "reality",
            "realitySettings": {"serverName": SNI, "publicKey": s.public_key, "shortId": short_id,
                                "fingerprint": "chrome"}}});
    xray_outbound(out, s.v.dir.path()).unwrap_or_else(|e| panic!("xray: {e:#}"))
}

/// Issue 13: Xray 24.11.21 as a REALITY + Vision client (CI used only shoes before): curl over
/// an inner TLS 1.3 connection to nginx, 4 MiB sha256-checked, both directions switch to
/// direct, and the panel's totals equal what a counting proxy in front of nginx saw.
#[test]
fn xray_reality_vision_inner_tls_exact_accounting() {
    if !run_in_loopback_netns(
        "xray_reality_vision_inner_tls_exact_accounting",
        Duration::from_secs(120),
    ) {
        return;
    }
    std::env::set_var("RUST_LOG", "info,v2sp_dataplane::tls::vision=debug");
    let s = setup("xtls-rprx-vision");
    let counter = Counter::start(s.nginx.port);
    let (p, socks) = xray_reality(&s, "vless", UUIDS[0], "xtls-rprx-vision", SHORT_ID);
    fetch_big(socks, &counter, s.v.dir.path(), &|| {
        format!("--- xray ---\n{}\n--- v2sp ---\n{}", p.log(), s.v.agent.log())
    });
    drop(p);
    vision_went_direct_and_counted_exactly(&s.v, &counter);
}

/// Issue 13: Trojan over REALITY with Xray as the client: 1 MiB echoed sha256-checked both
/// ways, exact totals; a wrong short id is relayed to dest and gets nothing through.
#[test]
fn xray_trojan_reality_exact_accounting() {
    if !run_in_loopback_netns("xray_trojan_reality_exact_accounting", Duration::from_secs(120)) {
        return;
    }
    let s = setup_protocol("trojan", "");
    let (p, socks) = xray_reality(&s, "trojan", UUIDS[0], "", SHORT_ID);
    let data = payload(1 << 20, 25);
    let moved = tcp_echo_through(socks, s.echo.port, &data).unwrap_or_else(|e| {
        panic!(
            "{e:#}\n--- xray ---\n{}\n--- v2sp ---\n{}",
            p.log(),
            s.v.agent.log()
        )
    });
    drop(p);
    let (p, socks) = xray_reality(&s, "trojan", UUIDS[1], "", "ffffffff");
    assert!(
        tcp_echo_through(socks, s.echo.port, &payload(4096, 26)).is_err(),
        "data went through with a wrong short id\n{}",
        p.log()
    );
    drop(p);
    let exp = BTreeMap::from([(1u32, (moved, moved))]);
    s.v.wait_totals(1, &exp, Duration::from_secs(20)).unwrap();
}

/// Issue 13: VLESS over XHTTP over REALITY with Xray as the client (HTTP/2 inside REALITY),
/// packet-up and stream-up, 1 MiB each echoed sha256-checked, exact totals.
#[test]
fn xray_xhttp_over_reality_exact_accounting() {
    if !run_in_loopback_netns(
        "xray_xhttp_over_reality_exact_accounting",
        Duration::from_secs(120),
    ) {
        return;
    }
    let s = setup_network(
        "vless",
        "",
        json!({"network": "xhttp", "networkSettings": {"path": "/xr", "mode": "auto"}}),
    );
    let port = s.v.nodes[0].port;
    let mut exp = BTreeMap::new();
    for (uid, mode) in [(0usize, "packet-up"), (1, "stream-up")] {
        let out = json!({"protocol": "vless",
            "settings": {"vnext": [{"address": "127.0.0.1", "port": port,
                                    "users": [{"id": UUIDS[uid], "encryption": "none"}]}]},
            "streamSettings": {"network": "xhttp", "security": "reality",
                "xhttpSettings": {"path": "/xr", "mode": mode},
                "realitySettings": {"serverName": SNI, "publicKey": s.public_key, "shortId": SHORT_ID,
                                    "fingerprint": "chrome"}}});
        let (p, socks) = xray_outbound(out, s.v.dir.path()).unwrap_or_else(|e| panic!("xray: {e:#}"));
        let data = payload(1 << 20, 40 + uid as u64);
        let moved = tcp_echo_through(socks, s.echo.port, &data).unwrap_or_else(|e| {
            panic!(
                "{mode}: {e:#}\n--- xray ---\n{}\n--- v2sp ---\n{}",
                p.log(),
                s.v.agent.log()
            )
        });
        exp.insert(uid as u32 + 1, (moved, moved));
    }
    s.v.wait_totals(1, &exp, Duration::from_secs(20)).unwrap();
}
