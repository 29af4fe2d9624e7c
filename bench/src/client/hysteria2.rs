//! Hysteria 2 (QUIC), measured like the Vision suites: through a real client used as a SOCKS5
//! front end. The load generator speaks plain TCP to the bench's target through the sing-box
//! client (SOCKS5 inbound on loopback, `hysteria2` outbound, password = the user's uuid, TLS
//! trusting the run's certificate), which runs on the load generator's CPUs (it inherits the
//! bench's pinning). Only the server's CPU is measured. Bulk download only.
//!
//! ```text
//! bench ─SOCKS5─▶ sing-box client ─Hysteria 2 over QUIC─▶ server ─▶ target
//! ```

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;

use super::ss::USER_UUID;
use super::tls::{TlsMaterial, SERVER_NAME};

pub const HYSTERIA2: &str = "hysteria2";

/// The shoes server config: a QUIC listener on `port` with the run's certificate, ALPN `h3`,
/// Hysteria 2 inside (password = the user's uuid).
pub fn shoes_server_yaml(tls: &TlsMaterial, port: u16) -> String {
    format!(
        "- address: \"127.0.0.1:{port}\"\n  transport: quic\n  quic_settings:\n    cert: \"{}\"\n    key: \"{}\"\n    alpn_protocols: [\"h3\"]\n  protocol:\n    type: hysteria2\n    password: \"{USER_UUID}\"\n    udp_enabled: false\n",
        tls.cert_file.display(),
        tls.key_file.display()
    )
}

/// Whether some process has a UDP socket bound to `port` (`/proc/net/udp`, `udp6`).
pub fn udp_bound(port: u16) -> bool {
    let want = format!(":{port:04X} ");
    ["/proc/net/udp", "/proc/net/udp6"].iter().any(|t| {
        std::fs::read_to_string(t)
            .unwrap_or_default()
            .lines()
            .skip(1)
            .any(|l| {
                l.split_whitespace()
                    .nth(1)
                    .is_some_and(|local| format!("{local} ").ends_with(&want))
            })
    })
}

/// Wait (≤ `within`) until the server's QUIC socket is bound.
pub fn wait_udp(port: u16, within: Duration) -> anyhow::Result<()> {
    let t = Instant::now();
    while t.elapsed() < within {
        if udp_bound(port) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("no UDP socket is bound to port {port} after {within:?}")
}

/// The sing-box client process (load generator side), killed on drop.
pub struct SingBoxClient {
    child: Child,
    pub socks: SocketAddr,
}

impl SingBoxClient {
    /// Start sing-box with a SOCKS5 inbound on a free port and a `hysteria2` outbound to
    /// `server_port`, and wait (≤ 5 s per try, 3 tries) until it listens.
    pub fn start(
        bin: &Path,
        tls: &TlsMaterial,
        server_port: u16,
        dir: &Path,
        threads: usize,
    ) -> anyhow::Result<SingBoxClient> {
        let out = json!({
            "type": "hysteria2", "tag": "hy2", "server": "127.0.0.1", "server_port": server_port,
            "password": USER_UUID,
            "tls": {
                "enabled": true, "server_name": SERVER_NAME, "alpn": ["h3"],
                "certificate_path": tls.cert_file
            }
        });
        Self::start_with(bin, out, dir, threads)
    }

    /// Start sing-box with a SOCKS5 inbound on a free port and `outbound`, and wait (≤ 5 s per
    /// try, 3 tries) until it listens.
    pub fn start_with(
        bin: &Path,
        outbound: serde_json::Value,
        dir: &Path,
        threads: usize,
    ) -> anyhow::Result<SingBoxClient> {
        let mut last = String::new();
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let c = json!({
                "log": { "level": "error" },
                "inbounds": [{ "type": "socks", "tag": "in", "listen": "127.0.0.1", "listen_port": port }],
                "outbounds": [outbound.clone()]
            });
            let cfg = dir.join(format!("sing-box-client-{port}.json"));
            std::fs::write(&cfg, serde_json::to_vec_pretty(&c)?)?;
            let log_path = dir.join(format!("sing-box-client-{port}.log"));
            let log = std::fs::File::create(&log_path)?;
            let child = Command::new(bin)
                .arg("run")
                .arg("-c")
                .arg(&cfg)
                .env("GOMAXPROCS", threads.max(1).to_string())
                .env("NO_COLOR", "1")
                .current_dir(dir)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("spawn sing-box client {}", bin.display()))?;
            let mut c = SingBoxClient {
                child,
                socks: SocketAddr::from(([127, 0, 0, 1], port)),
            };
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(5) {
                if std::net::TcpStream::connect(c.socks).is_ok() {
                    crate::procstat::LOADGEN_HELPER_PID.store(c.child.id(), Ordering::Relaxed);
                    return Ok(c);
                }
                if !matches!(c.child.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            last = std::fs::read_to_string(&log_path).unwrap_or_default();
            drop(c);
        }
        bail!("the sing-box client never listened; log:\n{last}")
    }
}

impl Drop for SingBoxClient {
    fn drop(&mut self) {
        let _ = crate::procstat::LOADGEN_HELPER_PID.compare_exchange(
            self.child.id(),
            0,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn shoes_yaml_is_quic_hysteria2() {
        let tls = TlsMaterial::generate().unwrap();
        let y = shoes_server_yaml(&tls, 4433);
        assert!(
            y.starts_with("- address: \"127.0.0.1:4433\"\n  transport: quic\n"),
            "{y}"
        );
        assert!(
            y.contains(&format!("    type: hysteria2\n    password: \"{USER_UUID}\"\n")),
            "{y}"
        );
        assert!(y.contains(&tls.cert_file.display().to_string()), "{y}");
    }

    #[test]
    fn udp_bound_sees_a_bound_socket() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = s.local_addr().unwrap().port();
        assert!(udp_bound(port));
        drop(s);
    }
}
