//! The XHTTP suites (issue 13): VLESS over XHTTP over TLS, `vless-xhttp-packet-up` and
//! `vless-xhttp-stream-up`, measured through the real Xray client (24.11.21) used as a SOCKS5
//! front end, against v2sp and Xray as a server. The load generator speaks plain TCP to the
//! bench's target through the client; every bench connection is one XHTTP session (packet-up:
//! a GET for the download and POSTs for the upload; stream-up: a GET and one streaming POST),
//! multiplexed by the client over its HTTP/2 connections (Xray's default `xmux`). The client
//! runs on the load generator's CPUs (it inherits the bench's pinning) and is counted with it;
//! only the server's CPU is measured.
//!
//! ```text
//! bench ─SOCKS5─▶ Xray client ─VLESS over XHTTP (h2, TLS)─▶ server ─▶ target
//! ```
//!
//! Xray comes from a third-party repackaging (`scripts/install-test-deps.sh --with-xray`) and
//! runs only inside a network namespace that has nothing but loopback: `v2sp-bench` re-runs
//! itself under `unshare --net` when an XHTTP suite or the `xray` server is asked for
//! ([`reexec_in_loopback_netns`]), and [`start_xray_client`] and the `xray` server refuse to start
//! anywhere else ([`in_loopback_only_netns`]).

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::front_process::{spawn_front, FrontProcess};
use super::ss::USER_UUID;
use super::tls::{TlsMaterial, SERVER_NAME};

pub use v2sp_testsupport::harness::in_loopback_only_netns;

pub const PACKET_UP: &str = "vless-xhttp-packet-up";
pub const STREAM_UP: &str = "vless-xhttp-stream-up";
/// The XHTTP path on every server and the client.
pub const PATH: &str = "/xhttp-bench";
/// Packets a server holds out of order per session (`scMaxBufferedPosts`; Xray's default is
/// 30), the same on both servers. At the default, with the server pinned to one busy CPU,
/// packet-up uploads failed on every server: the 24.11 client sends its POSTs (up to 1 MB,
/// one per 30 ms) concurrently, one of them lags while 30 later ones arrive, and the session is
/// dropped (Xray: "packet queue is too large"; v2sp: the same bound). The stream-up suite
/// carries it too, where it has no effect.
pub const MAX_BUFFERED_POSTS: u32 = 300;
/// Set in the re-run inside the namespace.
const NETNS_ENV: &str = "V2SP_BENCH_IN_NETNS";

/// How the client uploads: one POST per chunk (`packet-up`) or one streaming POST
/// (`stream-up`); the download is one streaming GET response in both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XhttpMode {
    PacketUp,
    StreamUp,
}

impl XhttpMode {
    pub const ALL: [XhttpMode; 2] = [XhttpMode::PacketUp, XhttpMode::StreamUp];

    /// The suite (report row) name.
    pub fn name(self) -> &'static str {
        match self {
            XhttpMode::PacketUp => PACKET_UP,
            XhttpMode::StreamUp => STREAM_UP,
        }
    }

    /// Xray's (and the panel's) `mode`.
    pub fn mode(self) -> &'static str {
        match self {
            XhttpMode::PacketUp => "packet-up",
            XhttpMode::StreamUp => "stream-up",
        }
    }

    pub fn parse(name: &str) -> Option<XhttpMode> {
        XhttpMode::ALL.into_iter().find(|m| m.name() == name.trim())
    }

    /// `xhttpSettings` as the Xray client reads them (and the base of the servers').
    pub fn settings(self) -> Value {
        json!({ "path": PATH, "host": SERVER_NAME, "mode": self.mode() })
    }

    /// The Xray client's VLESS outbound to the server on `port`: XHTTP in this mode over TLS
    /// (HTTP/2, Xray's default ALPN for XHTTP over TLS). The certificate is not verified
    /// (`allowInsecure`, as in the interop tests): the handshake and the record layer cost
    /// the same, and the client's CPU is not measured.
    pub fn client_outbound(self, port: u16) -> Value {
        json!({
            "tag": "out",
            "protocol": "vless",
            "settings": { "vnext": [{ "address": "127.0.0.1", "port": port,
                "users": [{ "id": USER_UUID, "encryption": "none" }] }] },
            "streamSettings": {
                "network": "xhttp", "security": "tls",
                "xhttpSettings": self.settings(),
                "tlsSettings": { "serverName": SERVER_NAME, "allowInsecure": true }
            }
        })
    }

    /// The Xray server config: a VLESS inbound on `port` with the same `xhttpSettings`, TLS
    /// with the run's certificate, a `freedom` outbound.
    pub fn xray_server(self, tls: &TlsMaterial, port: u16) -> Value {
        json!({
            "log": { "loglevel": "error" },
            "inbounds": [{
                "listen": "127.0.0.1", "port": port, "protocol": "vless",
                "settings": { "clients": [{ "id": USER_UUID }], "decryption": "none" },
                "streamSettings": {
                    "network": "xhttp", "security": "tls",
                    "xhttpSettings": {
                        "path": PATH, "host": SERVER_NAME, "mode": self.mode(),
                        "scMaxBufferedPosts": MAX_BUFFERED_POSTS
                    },
                    "tlsSettings": {
                        "serverName": SERVER_NAME,
                        "certificates": [{ "certificateFile": tls.cert_file, "keyFile": tls.key_file }]
                    }
                }
            }],
            "outbounds": [{ "protocol": "freedom" }]
        })
    }

    /// The v2sp panel node's protocol fields (Xboard's shape): VLESS, TLS (`tls: 1`, the
    /// certificate in the node's `CertConfig`), `network: xhttp` with the same settings
    /// (`scMaxBufferedPosts` in `extra`, where the panel carries it).
    pub fn panel_node(self, node: &mut Value) {
        node["tls"] = json!(1);
        node["network"] = json!("xhttp");
        node["networkSettings"] = self.settings();
        node["networkSettings"]["extra"] = json!({ "scMaxBufferedPosts": MAX_BUFFERED_POSTS });
        node["tls_settings"] = json!({ "server_name": SERVER_NAME });
    }
}

/// Fail unless this process is in a loopback-only network namespace (where Xray may run).
pub fn require_loopback_netns() -> anyhow::Result<()> {
    if !in_loopback_only_netns() {
        bail!(
            "Xray runs only inside a network namespace that has nothing but loopback; v2sp-bench re-runs \
             itself there (unshare --net) when an XHTTP suite or the xray server is selected"
        );
    }
    Ok(())
}

/// Whether `unshare --net` works here (root or CAP_SYS_ADMIN): the XHTTP suites need it.
pub fn netns_available() -> bool {
    in_loopback_only_netns()
        || Command::new("unshare")
            .args(["--net", "--", "true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// Re-run this process (same arguments) in a fresh network namespace with only loopback, up,
/// and exit with its status; returns at once when already in one.
pub fn reexec_in_loopback_netns() -> anyhow::Result<()> {
    if std::env::var_os(NETNS_ENV).is_some() {
        return require_loopback_netns();
    }
    if in_loopback_only_netns() {
        return Ok(());
    }
    eprintln!("note: the XHTTP suites run Xray: re-running v2sp-bench in a loopback-only network namespace");
    let st = Command::new("unshare")
        .args(["--net", "--", "sh", "-c"])
        .arg(r#"ip link set lo up && exec "$0" "$@""#)
        .arg(std::env::current_exe()?)
        .args(std::env::args_os().skip(1))
        .env(NETNS_ENV, "1")
        .status()
        .context("unshare (util-linux) and ip (iproute2) are needed to run Xray in a network namespace")?;
    std::process::exit(st.code().unwrap_or(1));
}

/// Starts Xray with a SOCKS5 inbound on a free port and `outbound`. Refuses outside a
/// loopback-only network namespace.
pub fn start_xray_client(
    bin: &Path,
    outbound: Value,
    dir: &Path,
    threads: usize,
) -> anyhow::Result<FrontProcess> {
    require_loopback_netns()?;
    spawn_front("Xray", dir, |port, stem| {
        let c = json!({
            "log": { "loglevel": "error" },
            "inbounds": [{ "listen": "127.0.0.1", "port": port, "protocol": "socks",
                           "settings": { "auth": "noauth", "udp": false } }],
            "outbounds": [outbound.clone()]
        });
        let cfg = dir.join(format!("{stem}.json"));
        std::fs::write(&cfg, serde_json::to_vec_pretty(&c)?)?;
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .arg("-c")
            .arg(&cfg)
            .env("GOMAXPROCS", threads.max(1).to_string());
        Ok(cmd)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_every_side_agrees() {
        let tls = TlsMaterial::generate().unwrap();
        for m in XhttpMode::ALL {
            assert_eq!(XhttpMode::parse(m.name()), Some(m));
            let c = m.client_outbound(4433);
            let s = m.xray_server(&tls, 4433);
            let mut n = json!({});
            m.panel_node(&mut n);
            let want = json!({ "path": PATH, "host": SERVER_NAME, "mode": m.mode() });
            assert_eq!(c["streamSettings"]["xhttpSettings"], want);
            let xs = &s["inbounds"][0]["streamSettings"]["xhttpSettings"];
            let ns = &n["networkSettings"];
            for k in ["path", "host", "mode"] {
                assert_eq!((&xs[k], &ns[k]), (&want[k], &want[k]), "{k}");
            }
            assert_eq!(xs["scMaxBufferedPosts"], MAX_BUFFERED_POSTS);
            assert_eq!(ns["extra"]["scMaxBufferedPosts"], MAX_BUFFERED_POSTS);
            assert_eq!(c["streamSettings"]["security"], "tls");
            assert_eq!(n["network"], "xhttp");
            assert_eq!(
                s["inbounds"][0]["streamSettings"]["tlsSettings"]["certificates"][0]["certificateFile"]
                    .as_str(),
                Some(tls.cert_file.to_str().unwrap())
            );
            assert_eq!(c["settings"]["vnext"][0]["port"], 4433);
        }
        assert_eq!(XhttpMode::parse("vless-xhttp"), None);
    }
}
