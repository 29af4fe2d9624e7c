//! Issue 5: VLESS + REALITY (+ XTLS Vision) against the real sing-box client.
//!
//! * REALITY: sing-box (uTLS chrome fingerprint) authenticates, sees v2sp's temporary
//!   certificate and moves 1 MiB sha256-checked to the echo server; the panel receives exactly
//!   the bytes moved for that user.
//! * A client with a wrong short id is relayed to `dest` (a local nginx with a self-signed
//!   certificate): sing-box reports "reality verification failed", nothing is accounted.
//! * Probe: `openssl s_client` to the REALITY port gets the same certificate chain as from
//!   nginx directly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use v2sp_testsupport::harness::{
    free_port, payload, peer, sing_box_outbound, tcp_echo_through, wait_tcp, Echo, NodeSpec, Proc, V2sp,
};
use v2sp_testsupport::panel_sim::user;

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
        let port = free_port();
        let conf = format!(
            "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/logs/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};\n\
               uwsgi_temp_path {d}; scgi_temp_path {d};\n\
               server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {d}/c.pem; ssl_certificate_key {d}/k.pem;\n\
                 ssl_protocols TLSv1.2 TLSv1.3; location / {{ return 200 \"dest\\n\"; }} }} }}\n",
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

fn reality_out(port: u16, uuid: &str, flow: &str, public_key: &str, short_id: &str) -> Value {
    json!({"type": "vless", "server": "127.0.0.1", "server_port": port, "uuid": uuid, "flow": flow,
           "tls": {"enabled": true, "server_name": SNI,
                   "utls": {"enabled": true, "fingerprint": "chrome"},
                   "reality": {"enabled": true, "public_key": public_key, "short_id": short_id}}})
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
    let tmp = tempfile::tempdir().unwrap();
    let nginx = Nginx::start(tmp.path());
    let echo = Echo::start().unwrap();
    let (private_key, public_key) = keypair();
    let port = free_port();
    let node = NodeSpec {
        node_id: 1,
        port,
        info: json!({"node_type": "vless", "server_port": port, "tls": 2, "network": "tcp", "flow": flow,
                     "tls_settings": {"server_name": SNI, "dest": "127.0.0.1", "server_port": nginx.port.to_string(),
                                      "private_key": private_key, "short_id": SHORT_ID, "xver": "0"},
                     "base_config": {"push_interval": 1, "pull_interval": 1}}),
        users: UUIDS
            .iter()
            .enumerate()
            .map(|(u, id)| user(u as u32 + 1, id))
            .collect(),
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

#[test]
fn reality_sing_box_exact_accounting_and_fallback_to_dest() {
    let s = setup("");
    let port = s.v.nodes[0].port;
    let mut failures = Vec::new();
    let (p, socks) = sing_box_outbound(
        reality_out(port, UUIDS[0], "", &s.public_key, SHORT_ID),
        s.v.dir.path(),
    )
    .unwrap_or_else(|e| panic!("sing-box: {e:#}"));
    let data = payload(1 << 20, 5);
    let mut moved = 0;
    match tcp_echo_through(socks, s.echo.port, &data) {
        Ok(n) => moved = n,
        Err(e) => failures.push(format!("REALITY user 1: {e:#}\n{}", p.log())),
    }
    drop(p);
    // Wrong short id: relayed to nginx, sing-box refuses its certificate; no data, no bytes.
    let (p, socks) = sing_box_outbound(
        reality_out(port, UUIDS[1], "", &s.public_key, "ffffffff"),
        s.v.dir.path(),
    )
    .unwrap();
    if tcp_echo_through(socks, s.echo.port, &payload(4096, 6)).is_ok() {
        failures.push("data went through with a wrong short id".into());
    }
    std::thread::sleep(Duration::from_millis(300));
    if !p.log().contains("reality verification failed") {
        failures.push(format!(
            "wrong short id: sing-box did not see dest's certificate:\n{}",
            p.log()
        ));
    }
    drop(p);
    // Probe: same certificate chain as dest.
    let direct = cert_chain(s.nginx.port);
    let via = cert_chain(port);
    if direct.is_empty() || direct != via {
        failures.push(format!(
            "probe: chain via REALITY port {via:?} != dest's {direct:?}"
        ));
    }
    if !failures.is_empty() {
        panic!("{}\n--- v2sp log ---\n{}", failures.join("\n"), s.v.agent.log());
    }
    let mut exp = BTreeMap::new();
    exp.insert(1u32, (moved, moved));
    s.v.wait_totals(1, &exp, Duration::from_secs(20)).unwrap();
}
