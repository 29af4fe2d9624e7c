//! The servers under test, started as child processes pinned to the server CPUs:
//!
//! * `v2sp-epoll`, `v2sp-uring`: `v2sp run -c <dir>/config.json` — the real control plane, which
//!   spawns and supervises `v2sp-dataplane` (found next to `v2sp`), with a `file://` nodes file
//!   (one node, one user) in a temporary directory, shm and state in the same directory, and
//!   `V2SP_IO=epoll|uring`. Both processes are counted (CPU and RSS).
//! * `ssserver` (shadowsocks-rust): `ssserver -c <dir>/ss.json --worker-threads N`, TCP only,
//!   `no_delay` on (v2sp and sing-box set TCP_NODELAY too).
//! * `sing-box`: a `shadowsocks` / `trojan` / `vless` / `vmess` / `anytls` inbound and a `direct` outbound,
//!   `GOMAXPROCS=N`.
//! * `v2ray` (Debian's 4.34; Trojan, VLESS and VMess): a `trojan` / `vless` / `vmess` (alterId 0)
//!   inbound with `streamSettings.security: "tls"` (none for plain `vmess`) and a `freedom`
//!   outbound, `GOMAXPROCS=N`. It has neither Vision nor REALITY nor AnyTLS.
//! * `sing-box` also serves `vless-tls-vision` (a `vless` inbound, user `flow:
//!   xtls-rprx-vision`, TLS); not `vless-reality-vision`: the registry build lacks uTLS, which
//!   its REALITY server needs.
//! * The QUIC suites (`client::quic`), Hysteria 2 (`hysteria2`) and TUIC v5 (`tuic`): a panel
//!   node in Xboard's shape on v2sp (`hysteria`, `version: 2`, no obfuscation; `tuic`,
//!   `version: 5`, cubic), the protocol's inbound on sing-box (TUIC: cubic), a
//!   `quic` listener around it on shoes; the run's certificate and ALPN `h3` everywhere. The
//!   servers listen on UDP only, so `run` waits for the socket in `/proc/net/udp` before it
//!   starts the sing-box client.
//! * `shoes` 0.3.x: `--threads N`, a `vmess` / `shadowsocks` inbound, or a `tls` inbound with
//!   `tls_targets` (the run's certificate) around `trojan` / `vless` / `vmess` / `anytls`, or REALITY/TLS +
//!   Vision around `vless` (`client::vision`). Shadowsocks: not the 2022 AES methods, which the
//!   bench runs with an identity header (multi-user), which shoes does not take.
//!
//! * `xray` (Xray 24.11.21, XHTTP suites only, `client::xhttp`): a `vless` inbound with
//!   `streamSettings: {network: xhttp, xhttpSettings: {path, host, mode}, security: tls}` (the
//!   run's certificate) and a `freedom` outbound, `GOMAXPROCS=N`; started only inside a
//!   loopback-only network namespace. v2sp's node for these: `network: xhttp` with the same
//!   `networkSettings`, `tls: 1`.
//!
//! All get the same method (or protocol), the same single user (see `client::ss`) and, for
//! the TLS suites, the run's certificate (see `client::tls`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;

use crate::client::ss::USER_UUID;
use crate::client::tls::SERVER_NAME;
use crate::client::Suite;
use crate::procstat;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServerKind {
    V2spEpoll,
    V2spUring,
    SsServer,
    SingBox,
    V2ray,
    /// shoes 0.3.x: Trojan, VLESS, VMess, AnyTLS, Vision, single-user Shadowsocks.
    Shoes,
    /// Xray 24.11.21: the XHTTP suites (only inside a loopback-only network namespace).
    Xray,
}

impl ServerKind {
    pub const ALL: [ServerKind; 7] = [
        ServerKind::V2spEpoll,
        ServerKind::V2spUring,
        ServerKind::SsServer,
        ServerKind::SingBox,
        ServerKind::V2ray,
        ServerKind::Shoes,
        ServerKind::Xray,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ServerKind::V2spEpoll => "v2sp-epoll",
            ServerKind::V2spUring => "v2sp-uring",
            ServerKind::SsServer => "ssserver",
            ServerKind::SingBox => "sing-box",
            ServerKind::V2ray => "v2ray",
            ServerKind::Shoes => "shoes",
            ServerKind::Xray => "xray",
        }
    }

    pub fn parse(s: &str) -> anyhow::Result<ServerKind> {
        ServerKind::ALL
            .into_iter()
            .find(|k| k.label() == s.trim())
            .with_context(|| {
                format!(
                    "unknown server {s:?} (v2sp-epoll, v2sp-uring, ssserver, sing-box, v2ray, shoes, xray)"
                )
            })
    }

    /// Whether this server speaks `suite` (ssserver: Shadowsocks only; v2ray: here, Trojan,
    /// VLESS and VMess — its Shadowsocks lacks the 2022 methods, and it has no Vision and no
    /// AnyTLS; sing-box:
    /// everything but REALITY; shoes: everything but the multi-user (identity header)
    /// Shadowsocks 2022 AES methods; v2sp: everything). QUIC suites: v2sp, sing-box, shoes.
    /// XHTTP suites: v2sp and Xray only (measured against Xray alone, which serves nothing
    /// else here).
    pub fn serves(self, suite: &Suite) -> bool {
        let suite = suite.base();
        let vision = suite.vision();
        let xhttp = suite.xhttp().is_some();
        match self {
            ServerKind::SsServer => suite.is_ss(),
            ServerKind::V2ray => {
                !suite.is_ss()
                    && vision.is_none()
                    && !matches!(suite, Suite::Anytls(_) | Suite::Quic(..) | Suite::Xhttp(..))
            }
            ServerKind::SingBox => !vision.is_some_and(|v| v.reality) && !xhttp,
            ServerKind::Shoes => !suite.ss().is_some_and(|c| c.uses_eih()) && !xhttp,
            ServerKind::Xray => xhttp,
            ServerKind::V2spEpoll | ServerKind::V2spUring => true,
        }
    }

    pub fn is_v2sp(self) -> bool {
        matches!(self, ServerKind::V2spEpoll | ServerKind::V2spUring)
    }
}

/// Where the binaries are.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub v2sp: PathBuf,
    pub ssserver: PathBuf,
    pub singbox: PathBuf,
    pub v2ray: PathBuf,
    /// shoes: server of the Vision suites, and their client (load generator side) everywhere.
    pub shoes: PathBuf,
    /// Xray 24.11.21: the XHTTP suites' client (always) and a peer server (`xray`).
    pub xray: PathBuf,
}

impl Binaries {
    pub fn path(&self, k: ServerKind) -> &Path {
        match k {
            ServerKind::V2spEpoll | ServerKind::V2spUring => &self.v2sp,
            ServerKind::SsServer => &self.ssserver,
            ServerKind::SingBox => &self.singbox,
            ServerKind::V2ray => &self.v2ray,
            ServerKind::Shoes => &self.shoes,
            ServerKind::Xray => &self.xray,
        }
    }
}

/// The shoes server config for the non-Vision suites: the protocol on `port`, inside a `tls`
/// inbound with the run's certificate where the suite has TLS.
pub fn shoes_server_yaml(suite: &Suite, port: u16) -> anyhow::Result<String> {
    // The protocol block, indented for its place (top level: 4 spaces; in a TLS target: 8).
    let inner: Vec<String> = match suite {
        Suite::Ss(creds) => {
            if creds.uses_eih() {
                bail!("shoes takes no Shadowsocks 2022 identity headers (multi-user)");
            }
            let password = if creds.method.is_2022() {
                creds.user_key_b64()
            } else {
                creds.password_2017().to_string()
            };
            vec![
                "type: shadowsocks".into(),
                format!("cipher: {}", creds.method.name()),
                format!("password: \"{password}\""),
                "udp_enabled: false".into(),
            ]
        }
        Suite::Trojan(_) => vec!["type: trojan".into(), format!("password: \"{USER_UUID}\"")],
        Suite::Vless(_) => vec![
            "type: vless".into(),
            format!("user_id: \"{USER_UUID}\""),
            "udp_enabled: false".into(),
        ],
        Suite::Vmess(_) => vec![
            "type: vmess".into(),
            format!("cipher: {}", crate::client::vmess::SECURITY),
            format!("user_id: \"{USER_UUID}\""),
            "udp_enabled: false".into(),
        ],
        Suite::Anytls(_) => vec![
            "type: anytls".into(),
            format!("users: [{{ name: bench, password: \"{USER_UUID}\" }}]"),
            "udp_enabled: false".into(),
        ],
        Suite::Vision(_) => bail!("the Vision suites have their own shoes config"),
        Suite::Quic(q, t) => return Ok(q.shoes_server_yaml(t, port)),
        Suite::Xhttp(..) => bail!("shoes has no XHTTP"),
        Suite::SingBox(f) => return shoes_server_yaml(&f.inner, port),
    };
    Ok(match suite.tls() {
        None => format!(
            "- address: \"127.0.0.1:{port}\"\n  protocol:\n    {}\n",
            inner.join("\n    ")
        ),
        Some(t) => format!(
            "- address: \"127.0.0.1:{port}\"\n  protocol:\n    type: tls\n    tls_targets:\n      \"{SERVER_NAME}\":\n        cert: \"{}\"\n        key: \"{}\"\n        protocol:\n          {}\n",
            t.cert_file.display(),
            t.key_file.display(),
            inner.join("\n          ")
        ),
    })
}

/// A running server under test.
pub struct Server {
    pub kind: ServerKind,
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
    /// The data plane pid seen at the first measurement (v2sp): a change means it restarted.
    dataplane_pid: Option<u32>,
}

/// Drop terminal colour sequences (ESC [ … letter) from a log.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            for d in it.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn free_port() -> anyhow::Result<u16> {
    Ok(v2sp_testsupport::ports::claim())
}

/// The panel's node config (`config` reply, Xboard shape) with which v2sp serves `suite` on
/// `port`; `interval`: its push and pull intervals in seconds.
pub fn v2sp_panel_node(suite: &Suite, port: u16, interval: u64) -> anyhow::Result<serde_json::Value> {
    let proto = suite_protocol(suite)?;
    let mut node = json!({
        "protocol": proto, "node_type": proto, "server_port": port,
        "base_config": { "push_interval": interval, "pull_interval": interval }
    });
    match suite {
        Suite::Ss(creds) => {
            node["cipher"] = json!(creds.method.name());
            node["server_key"] = json!(creds.server_psk_b64());
        }
        Suite::Vmess(None) => {
            node["tls"] = json!(0);
            node["network"] = json!("tcp");
        }
        Suite::Trojan(_) | Suite::Vless(_) | Suite::Vmess(Some(_)) | Suite::Anytls(_) => {
            node["tls"] = json!(1);
            node["network"] = json!("tcp");
            node["tls_settings"] = json!({ "server_name": SERVER_NAME });
        }
        Suite::Vision(v) if v.reality => {
            let dest = v.target()?;
            node["tls"] = json!(2);
            node["network"] = json!("tcp");
            node["flow"] = json!("xtls-rprx-vision");
            node["tls_settings"] = json!({
                "server_name": SERVER_NAME, "dest": dest.ip().to_string(),
                "server_port": dest.port().to_string(), "private_key": v.private_key,
                "short_id": crate::client::vision::SHORT_ID, "xver": "0"
            });
        }
        Suite::Vision(_) => {
            node["tls"] = json!(1);
            node["network"] = json!("tcp");
            node["flow"] = json!("xtls-rprx-vision");
            node["tls_settings"] = json!({ "server_name": SERVER_NAME });
        }
        Suite::SingBox(_) => bail!("a front-end suite's server is its inner suite's"),
        Suite::Quic(q, _) => q.panel_node(&mut node),
        Suite::Xhttp(m, _) => m.panel_node(&mut node),
    }
    Ok(node)
}

/// The protocol name panels use for `suite`'s server.
pub fn suite_protocol(suite: &Suite) -> anyhow::Result<&'static str> {
    Ok(match suite {
        Suite::Ss(_) => "shadowsocks",
        Suite::Trojan(_) => "trojan",
        Suite::Vless(_) | Suite::Vision(_) | Suite::Xhttp(..) => "vless",
        Suite::Vmess(_) => "vmess",
        Suite::Anytls(_) => "anytls",
        Suite::Quic(q, _) => q.name(),
        Suite::SingBox(_) => bail!("a front-end suite's server is its inner suite's"),
    })
}

impl Server {
    /// Spawn `kind` on `cpus` (taskset list; `None` = unpinned) with `workers` threads.
    pub fn start(
        kind: ServerKind,
        suite: &Suite,
        bins: &Binaries,
        workers: usize,
        cpus: Option<&str>,
    ) -> anyhow::Result<Server> {
        // A front-end suite's server is set up as for the suite behind it.
        let suite = suite.base();
        let dir = tempfile::Builder::new().prefix("v2sp-bench-").tempdir()?;
        let port = free_port()?;
        let bin = bins.path(kind);
        if !bin.exists() {
            bail!(
                "{} not found at {} (v2sp: cargo build --release -p v2sp-control -p v2sp-dataplane; \
                 peers: scripts/install-test-deps.sh)",
                kind.label(),
                bin.display()
            );
        }
        let tls = suite.tls();
        let proto = suite_protocol(suite)?;
        let mut args: Vec<String> = Vec::new();
        let mut envs: Vec<(&str, String)> = Vec::new();
        match kind {
            ServerKind::V2spEpoll | ServerKind::V2spUring => {
                let io = if kind == ServerKind::V2spEpoll {
                    "epoll"
                } else {
                    "uring"
                };
                let node = v2sp_panel_node(suite, port, 60)?;
                let nodes = json!({
                    "nodes": { "1": node },
                    "users": { "1": [
                        { "id": 1, "uuid": USER_UUID, "speed_limit": 0, "device_limit": 0 }
                    ]}
                });
                fs::write(dir.path().join("nodes.json"), serde_json::to_vec_pretty(&nodes)?)?;
                let mut cfg = json!({
                    "Log": { "Level": "warn", "Output": "" },
                    "Cores": [{ "Type": "xray" }],
                    "StateDir": dir.path().join("state"),
                    "Dataplane": {
                        "Workers": workers, "IO": io,
                        "ShmDir": dir.path().join("shm"),
                        "AllowPrivateDestinations": true
                    },
                    "Nodes": [{
                        "ApiHost": "file://nodes.json", "ApiKey": "bench", "NodeID": 1,
                        "NodeType": proto, "ListenIP": "127.0.0.1"
                    }]
                });
                if let Some(t) = tls {
                    cfg["Nodes"][0]["CertConfig"] = json!({
                        "CertMode": "file", "CertDomain": SERVER_NAME,
                        "CertFile": t.cert_file, "KeyFile": t.key_file
                    });
                }
                let p = dir.path().join("config.json");
                fs::write(&p, serde_json::to_vec_pretty(&cfg)?)?;
                args.extend(["run".into(), "-c".into(), p.display().to_string()]);
                envs.push(("V2SP_IO", io.to_string()));
            }
            ServerKind::SsServer => {
                let creds = suite.ss().context("ssserver serves Shadowsocks only")?;
                let method = creds.method.name();
                let mut c = json!({
                    "server": "127.0.0.1", "server_port": port, "method": method,
                    "mode": "tcp_only", "no_delay": true,
                });
                if creds.uses_eih() {
                    c["password"] = json!(creds.server_psk_b64());
                    c["users"] = json!([{ "name": "bench", "password": creds.user_key_b64() }]);
                } else if creds.method.is_2022() {
                    c["password"] = json!(creds.user_key_b64());
                } else {
                    c["password"] = json!(creds.password_2017());
                }
                // Multi-user (SIP023) is only read from the `servers` array form.
                let c = json!({ "servers": [c] });
                let p = dir.path().join("ss.json");
                fs::write(&p, serde_json::to_vec_pretty(&c)?)?;
                args.extend([
                    "-c".into(),
                    p.display().to_string(),
                    "--worker-threads".into(),
                    workers.max(1).to_string(),
                ]);
            }
            ServerKind::SingBox => {
                let mut inb = json!({
                    "type": proto, "listen": "127.0.0.1", "listen_port": port,
                });
                match suite {
                    Suite::Ss(creds) => {
                        inb["method"] = json!(creds.method.name());
                        if creds.uses_eih() {
                            inb["password"] = json!(creds.server_psk_b64());
                            inb["users"] = json!([{ "name": "bench", "password": creds.user_key_b64() }]);
                        } else if creds.method.is_2022() {
                            inb["password"] = json!(creds.user_key_b64());
                        } else {
                            inb["password"] = json!(creds.password_2017());
                        }
                    }
                    Suite::Trojan(_) | Suite::Anytls(_) => {
                        inb["users"] = json!([{ "name": "bench", "password": USER_UUID }]);
                    }
                    Suite::Vless(_) => {
                        inb["users"] = json!([{ "name": "bench", "uuid": USER_UUID }]);
                    }
                    Suite::Vmess(_) => {
                        inb["users"] = json!([{ "name": "bench", "uuid": USER_UUID, "alterId": 0 }]);
                    }
                    Suite::Quic(q, _) => q.sing_box_inbound(&mut inb),
                    Suite::Xhttp(..) => bail!("sing-box has no XHTTP"),
                    Suite::SingBox(_) => bail!("a front-end suite's server is its inner suite's"),
                    Suite::Vision(v) if v.reality => {
                        bail!("sing-box (registry build, no uTLS) has no REALITY server")
                    }
                    Suite::Vision(_) => {
                        inb["users"] =
                            json!([{ "name": "bench", "uuid": USER_UUID, "flow": "xtls-rprx-vision" }]);
                    }
                }
                if let Some(t) = tls {
                    inb["tls"] = json!({
                        "enabled": true, "server_name": SERVER_NAME,
                        "certificate_path": t.cert_file, "key_path": t.key_file
                    });
                    if suite.quic().is_some() {
                        inb["tls"]["alpn"] = json!([crate::client::quic::ALPN]);
                    }
                }
                let c = json!({
                    "log": { "level": "error" },
                    "inbounds": [inb],
                    "outbounds": [{ "type": "direct", "tag": "direct" }]
                });
                let p = dir.path().join("sing-box.json");
                fs::write(&p, serde_json::to_vec_pretty(&c)?)?;
                args.extend(["run".into(), "-c".into(), p.display().to_string()]);
                envs.push(("GOMAXPROCS", workers.max(1).to_string()));
            }
            ServerKind::V2ray => {
                let settings = match suite {
                    Suite::Trojan(_) => json!({ "clients": [{ "password": USER_UUID }] }),
                    Suite::Vless(_) => json!({ "clients": [{ "id": USER_UUID }], "decryption": "none" }),
                    Suite::Vmess(_) => json!({ "clients": [{ "id": USER_UUID, "alterId": 0 }] }),
                    _ => bail!("v2ray is benchmarked with Trojan, VLESS and VMess only"),
                };
                let stream = match tls {
                    Some(t) => json!({
                        "network": "tcp", "security": "tls",
                        "tlsSettings": {
                            "serverName": SERVER_NAME,
                            "certificates": [{ "certificateFile": t.cert_file, "keyFile": t.key_file }]
                        }
                    }),
                    None => json!({ "network": "tcp" }),
                };
                let c = json!({
                    "log": { "loglevel": "error" },
                    "inbounds": [{
                        "listen": "127.0.0.1", "port": port, "protocol": proto,
                        "settings": settings,
                        "streamSettings": stream
                    }],
                    "outbounds": [{ "protocol": "freedom" }]
                });
                let p = dir.path().join("v2ray.json");
                fs::write(&p, serde_json::to_vec_pretty(&c)?)?;
                args.extend(["-config".into(), p.display().to_string()]);
                envs.push(("GOMAXPROCS", workers.max(1).to_string()));
            }
            ServerKind::Xray => {
                let (Suite::Xhttp(m, t), true) = (suite, crate::client::xhttp::in_loopback_only_netns())
                else {
                    bail!(
                        "xray is benchmarked with the XHTTP suites only, inside a loopback-only network namespace"
                    );
                };
                let p = dir.path().join("xray.json");
                fs::write(&p, serde_json::to_vec_pretty(&m.xray_server(t, port))?)?;
                args.extend(["run".into(), "-c".into(), p.display().to_string()]);
                envs.push(("GOMAXPROCS", workers.max(1).to_string()));
            }
            ServerKind::Shoes => {
                let yaml = match suite.vision() {
                    Some(v) => v.shoes_server_yaml(port, v.target()?),
                    None => shoes_server_yaml(suite, port)?,
                };
                let p = dir.path().join("shoes.yaml");
                fs::write(&p, yaml)?;
                args.extend([
                    "--threads".into(),
                    workers.max(1).to_string(),
                    "--no-reload".into(),
                    p.display().to_string(),
                ]);
                envs.push(("RUST_LOG", "error".to_string()));
            }
        }
        let log = fs::File::create(dir.path().join("server.log"))?;
        let mut cmd = match cpus {
            Some(list) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(list).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(&args)
            .envs(envs)
            .env("NO_COLOR", "1")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd.spawn().with_context(|| format!("spawn {}", bin.display()))?;
        Ok(Server {
            kind,
            port,
            child,
            dir,
            dataplane_pid: None,
        })
    }

    /// The server's temporary directory (configs and logs of this run).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The server's log so far (for error messages).
    pub fn log_tail(&self) -> String {
        let s = strip_ansi(&fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default());
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Whether the main process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// All processes to count: the server, and for v2sp its data plane child.
    pub fn pids(&mut self) -> Vec<u32> {
        let main = self.child.id();
        let mut v = vec![main];
        if self.kind.is_v2sp() {
            if let Some((dp, _)) = procstat::children_of(main)
                .into_iter()
                .find(|(_, comm)| comm.starts_with("v2sp-dataplane"))
            {
                v.push(dp);
                if self.dataplane_pid.is_none() {
                    self.dataplane_pid = Some(dp);
                }
            }
        }
        v
    }

    /// True once v2sp's data plane process exists (always true for the peers).
    pub fn has_all_processes(&mut self) -> bool {
        !self.kind.is_v2sp() || self.pids().len() == 2
    }

    /// Whether v2sp's data plane was restarted since the first look (counts would be wrong).
    pub fn dataplane_restarted(&mut self) -> bool {
        let first = self.dataplane_pid;
        let now = self.pids().get(1).copied();
        matches!((first, now), (Some(a), Some(b)) if a != b)
    }

    /// CPU seconds of all counted processes.
    pub fn cpu_s(&mut self) -> f64 {
        self.pids().into_iter().filter_map(procstat::proc_cpu_s).sum()
    }

    /// RSS of all counted processes, KiB.
    pub fn rss_kib(&mut self) -> u64 {
        self.pids().into_iter().filter_map(procstat::proc_rss_kib).sum()
    }

    /// SIGTERM, then SIGKILL after 5 s. v2sp: the data plane drains for its full grace period
    /// (10 s) on TERM even with no connection open, so once the control plane has the TERM the
    /// data plane is killed (nothing is measured after this point).
    pub fn stop(mut self) {
        let pids = self.pids();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        if pids.len() > 1 {
            std::thread::sleep(Duration::from_millis(100));
            for dp in pids.iter().skip(1) {
                let _ = Command::new("kill").arg("-KILL").arg(dp.to_string()).status();
            }
        }
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if !self.alive() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.alive() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // v2sp's control plane stops its data plane on TERM; give it 3 s, then kill it by pid.
        for dp in pids.into_iter().skip(1) {
            let t = Instant::now();
            while procstat::is_running(dp) && t.elapsed() < Duration::from_secs(3) {
                std::thread::sleep(Duration::from_millis(20));
            }
            if procstat::is_running(dp) {
                let _ = Command::new("kill").arg("-KILL").arg(dp.to_string()).status();
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::client::tls::TlsMaterial;

    #[test]
    fn shoes_yaml_plain_vmess_and_tls_trojan() {
        let y = shoes_server_yaml(&Suite::Vmess(None), 1234).unwrap();
        assert_eq!(
            y,
            format!(
                "- address: \"127.0.0.1:1234\"\n  protocol:\n    type: vmess\n    cipher: aes-128-gcm\n    user_id: \"{USER_UUID}\"\n    udp_enabled: false\n"
            )
        );
        let tls = Arc::new(TlsMaterial::generate().unwrap());
        let y = shoes_server_yaml(&Suite::Trojan(tls.clone()), 1).unwrap();
        assert!(y.contains("    tls_targets:\n      \"v2sp.bench\":\n"), "{y}");
        assert!(
            y.contains(&format!(
                "        protocol:\n          type: trojan\n          password: \"{USER_UUID}\"\n"
            )),
            "{y}"
        );
        assert!(y.contains(&tls.cert_file.display().to_string()));
        let y = shoes_server_yaml(&Suite::Anytls(tls.clone()), 1).unwrap();
        assert!(
            y.contains(&format!(
                "        protocol:\n          type: anytls\n          users: [{{ name: bench, password: \"{USER_UUID}\" }}]\n          udp_enabled: false\n"
            )),
            "{y}"
        );
    }

    #[test]
    fn who_serves_what() {
        let tls = Arc::new(TlsMaterial::generate().unwrap());
        let eih = Suite::parse("2022-blake3-aes-128-gcm", &tls).unwrap();
        let chacha22 = Suite::parse("2022-blake3-chacha20-poly1305", &tls).unwrap();
        let reality = Suite::parse("vless-reality-vision", &tls).unwrap();
        let tls_vision = Suite::parse("vless-tls-vision", &tls).unwrap();
        let vmess = Suite::parse("vmess", &tls).unwrap();
        let anytls = Suite::parse("anytls", &tls).unwrap();
        let hy2 = Suite::parse("hysteria2", &tls).unwrap();
        let tuic = Suite::parse("tuic", &tls).unwrap();
        for q in [&hy2, &tuic] {
            assert!(!ServerKind::V2ray.serves(q) && !ServerKind::SsServer.serves(q));
            assert!(ServerKind::SingBox.serves(q) && ServerKind::Shoes.serves(q));
        }
        assert!(!ServerKind::V2ray.serves(&anytls) && !ServerKind::SsServer.serves(&anytls));
        assert!(ServerKind::SingBox.serves(&anytls) && ServerKind::Shoes.serves(&anytls));
        assert!(!ServerKind::Shoes.serves(&eih) && ServerKind::Shoes.serves(&chacha22));
        assert!(!ServerKind::SingBox.serves(&reality) && ServerKind::SingBox.serves(&tls_vision));
        assert!(!ServerKind::V2ray.serves(&tls_vision) && ServerKind::V2ray.serves(&vmess));
        // XHTTP: v2sp and Xray, nobody else; Xray serves nothing but XHTTP.
        for name in ["vless-xhttp-packet-up", "vless-xhttp-stream-up"] {
            let x = Suite::parse(name, &tls).unwrap();
            let who: Vec<ServerKind> = ServerKind::ALL.into_iter().filter(|k| k.serves(&x)).collect();
            assert_eq!(
                who,
                [ServerKind::V2spEpoll, ServerKind::V2spUring, ServerKind::Xray]
            );
        }
        for s in [&eih, &reality, &tls_vision, &vmess, &anytls, &hy2] {
            assert!(!ServerKind::Xray.serves(s), "{s:?}");
        }
        // Every suite: v2sp and at least one peer; every suite but REALITY: two or more.
        for s in [
            &eih,
            &chacha22,
            &reality,
            &tls_vision,
            &vmess,
            &anytls,
            &hy2,
            &tuic,
        ] {
            let peers = ServerKind::ALL
                .into_iter()
                .filter(|k| !k.is_v2sp() && k.serves(s))
                .count();
            assert!(
                peers >= if s.name() == "vless-reality-vision" { 1 } else { 2 },
                "{s:?}"
            );
        }
    }
}
