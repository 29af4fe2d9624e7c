//! Third-party proxy servers as the upstreams of v2sp's proxy outbounds (routing tests):
//! sing-box with SOCKS5, HTTP CONNECT and Shadowsocks inbounds, shadowsocks-rust's `ssserver`.
//! Each listens on free loopback ports and reaches destinations directly.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{free_port, peer, wait_tcp, Proc};

/// sing-box serving `inbounds` (sing-box inbound objects; `listen` and `listen_port` are set
/// here) with a direct outbound and info logs (one line per connection, naming its
/// destination). Returns the process and each inbound's port, in order.
pub fn sing_box_server(inbounds: Vec<Value>, dir: &Path) -> anyhow::Result<(Proc, Vec<u16>)> {
    let bin = peer("sing-box")?;
    let mut ports = Vec::new();
    let mut ins = Vec::new();
    for (i, mut inb) in inbounds.into_iter().enumerate() {
        let port = free_port();
        if let Some(o) = inb.as_object_mut() {
            o.insert("listen".into(), json!("127.0.0.1"));
            o.insert("listen_port".into(), json!(port));
            o.entry("tag").or_insert(json!(format!("in{i}")));
        }
        ports.push(port);
        ins.push(inb);
    }
    let cfg = json!({
        "log": {"level": "info"},
        "inbounds": ins,
        "outbounds": [{"type": "direct", "tag": "direct"}],
    });
    let name = format!("sing-box-server-{}", ports.first().copied().unwrap_or(0));
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg)?)?;
    let mut cmd = Command::new(bin);
    cmd.arg("run").arg("-c").arg(&path).current_dir(dir);
    let p = Proc::spawn("sing-box", cmd, dir.join(format!("{name}.log")))?;
    for &port in &ports {
        wait_tcp(port, Duration::from_secs(10)).map_err(|e| anyhow::anyhow!("{e}\n{}", p.log()))?;
    }
    Ok((p, ports))
}

/// shadowsocks-rust's `ssserver` (TCP and UDP) with one method and password, verbose (its
/// log names each tunnel's destination). Returns the process and its port.
pub fn ssserver(method: &str, password: &str, dir: &Path) -> anyhow::Result<(Proc, u16)> {
    let port = free_port();
    let mut cmd = Command::new(peer("ssserver")?);
    cmd.args([
        "-s",
        &format!("127.0.0.1:{port}"),
        "-m",
        method,
        "-k",
        password,
        "-U",
        "-vv",
    ]);
    let p = Proc::spawn("ssserver", cmd, dir.join(format!("ssserver-{port}.log")))?;
    wait_tcp(port, Duration::from_secs(10)).map_err(|e| anyhow::anyhow!("{e}\n{}", p.log()))?;
    Ok((p, port))
}
