//! The real sing-box client as the load generator's SOCKS5 front end: a SOCKS5 inbound on
//! loopback and one outbound (the suite's protocol to the server under test). It inherits the
//! bench's pinning, so it runs on the load generator's CPUs and is counted with it. Used by the
//! QUIC suites (`client::quic`) and the `X@sing-box` suites (`client::front`).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;

/// The sing-box client process (load generator side), killed on drop.
pub struct SingBoxClient {
    child: Child,
    pub socks: SocketAddr,
}

impl SingBoxClient {
    /// Start sing-box with a SOCKS5 inbound on a free port and `outbound`, and wait (≤ 5 s per
    /// try, 3 tries) until it listens.
    pub fn start(
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
