//! The real sing-box client as the load generator's SOCKS5 front end: a SOCKS5 inbound on
//! loopback and one outbound (the suite's protocol to the server under test). It inherits the
//! bench's pinning, so it runs on the load generator's CPUs and is counted with it. Used by the
//! QUIC suites (`client::quic`) and the `X@sing-box` suites (`client::front`).

use std::path::Path;
use std::process::Command;

use serde_json::json;

use super::front_process::{spawn_front, FrontProcess};

/// Starts sing-box with a SOCKS5 inbound on a free port and `outbound`.
pub fn start(
    bin: &Path,
    outbound: serde_json::Value,
    dir: &Path,
    threads: usize,
) -> anyhow::Result<FrontProcess> {
    spawn_front("sing-box", dir, |port, stem| {
        let c = json!({
            "log": { "level": "error" },
            "inbounds": [{ "type": "socks", "tag": "in", "listen": "127.0.0.1", "listen_port": port }],
            "outbounds": [outbound.clone()]
        });
        let cfg = dir.join(format!("{stem}.json"));
        std::fs::write(&cfg, serde_json::to_vec_pretty(&c)?)?;
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .arg("-c")
            .arg(&cfg)
            .env("GOMAXPROCS", threads.max(1).to_string())
            .env("NO_COLOR", "1");
        Ok(cmd)
    })
}
