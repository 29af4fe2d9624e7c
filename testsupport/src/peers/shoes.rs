//! The shoes client (cfal/shoes, `scripts/install-test-deps.sh --with-shoes`) as a peer: a
//! SOCKS5 inbound (TCP CONNECT and UDP ASSOCIATE) on a free loopback port whose every
//! connection goes through one outbound chain to v2sp.
//!
//! shoes takes YAML; YAML is a superset of JSON, so the config is built with `serde_json` and
//! written as JSON. The chain is nested `protocol` objects, outermost first, as shoes' client
//! config has them (`ClientProxyConfig`: `tls` / `reality` / `ws` wrapping `vless`, `trojan`,
//! `vmess` or `anytls`), e.g. `tls(SNI, ws("/ray", Some(SNI), vmess("aes-128-gcm", uuid)))`.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use crate::harness::{peer, spawn_listening, Proc};

/// Start the shoes client with a SOCKS inbound (UDP enabled) forwarding everything to
/// 127.0.0.1:`server_port` through `chain`. Returns the process and its SOCKS port.
pub fn client(server_port: u16, chain: Value, dir: &Path) -> anyhow::Result<(Proc, u16)> {
    let bin = peer("shoes")?;
    spawn_listening("shoes", dir, |socks| {
        let cfg = json!([{
            "address": format!("127.0.0.1:{socks}"),
            "protocol": {"type": "socks", "udp_enabled": true},
            "rules": [{"masks": "0.0.0.0/0", "action": "allow",
                       "client_proxy": {"address": format!("127.0.0.1:{server_port}"),
                                        "protocol": chain}}],
        }]);
        let path = dir.join(format!("shoes-{socks}.yaml"));
        std::fs::write(&path, serde_json::to_vec_pretty(&cfg)?)?;
        let mut cmd = Command::new(&bin);
        // One worker thread is plenty for a test; `--no-reload`: the file never changes.
        cmd.arg("--no-reload").arg(&path).current_dir(dir).env(
            "RUST_LOG",
            std::env::var("V2SP_SHOES_LOG").unwrap_or_else(|_| "info".into()),
        );
        Ok(cmd)
    })
}

/// TLS around `inner`, certificate not verified (v2sp's self-signed test certificates).
pub fn tls(sni: &str, inner: Value) -> Value {
    json!({"type": "tls", "verify": false, "sni_hostname": sni, "protocol": inner})
}

/// TLS with XTLS-Vision (the inner protocol must be VLESS).
pub fn tls_vision(sni: &str, inner: Value) -> Value {
    json!({"type": "tls", "verify": false, "sni_hostname": sni, "vision": true, "protocol": inner})
}

/// REALITY around `inner` (VLESS), optionally with Vision.
pub fn reality(public_key: &str, short_id: &str, sni: &str, vision: bool, inner: Value) -> Value {
    json!({"type": "reality", "public_key": public_key, "short_id": short_id,
           "sni_hostname": sni, "vision": vision, "protocol": inner})
}

/// WebSocket around `inner`: `GET path` with a `Host` header when given (shoes sends none
/// unless told).
pub fn ws(path: &str, host: Option<&str>, inner: Value) -> Value {
    let mut v = json!({"type": "ws", "matching_path": path, "protocol": inner});
    if let (Some(h), Some(o)) = (host, v.as_object_mut()) {
        o.insert("matching_headers".into(), json!({"Host": h}));
    }
    v
}

/// VLESS (no flow; UDP goes as the VLESS UDP command).
pub fn vless(uuid: &str) -> Value {
    json!({"type": "vless", "user_id": uuid})
}

/// Trojan (TCP only in shoes 0.3.2).
pub fn trojan(password: &str) -> Value {
    json!({"type": "trojan", "password": password})
}

/// VMess AEAD; `cipher`: `aes-128-gcm`, `chacha20-poly1305`, `none` or `any` (shoes' client
/// then asks for chacha20-poly1305). UDP goes as the VMess UDP command.
pub fn vmess(cipher: &str, uuid: &str) -> Value {
    json!({"type": "vmess", "cipher": cipher, "user_id": uuid})
}

/// AnyTLS (inside `tls`): shoes' client opens sessions and streams, and carries UDP as sing's
/// UDP-over-TCP v2 (connect mode, `sp.v2.udp-over-tcp.arpa`), default padding scheme.
pub fn anytls(password: &str) -> Value {
    json!({"type": "anytls", "password": password, "udp_enabled": true})
}
