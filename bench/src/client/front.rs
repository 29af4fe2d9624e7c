//! A TCP suite measured as users meet it: through the real sing-box client, used as a SOCKS5
//! front end, instead of the bench's own client. `aes-128-gcm@sing-box` is the server set up
//! exactly as for `aes-128-gcm`, with the load generator speaking plain TCP to the target
//! through sing-box (SOCKS5 in, the suite's protocol out). sing-box runs on the load
//! generator's CPUs and is counted with it; only the server's CPU is measured.
//!
//! ```text
//! bench ─SOCKS5─▶ sing-box client ─<suite's protocol>─▶ server ─▶ target
//! ```
//!
//! Why: our own client shows what our server costs with the writes *our* client makes; users'
//! clients write differently (record sizes, how often they flush, how they batch the first
//! bytes), and an independent measurement found the upload path behind peers only through
//! sing-box. Both directions are measured for every suite.

use anyhow::bail;
use serde_json::{json, Value};

use super::ss::USER_UUID;
use super::tls::SERVER_NAME;
use super::Suite;

/// The name suffix of a front-end suite.
pub const SUFFIX: &str = "@sing-box";

/// A suite through the sing-box client.
pub struct Fronted {
    pub inner: Suite,
    /// `<inner>@sing-box` (made once per run, when the suite list is parsed).
    pub name: &'static str,
}

impl Fronted {
    pub fn new(inner: Suite) -> anyhow::Result<Fronted> {
        if inner.through_client() {
            bail!("{} already goes through a client process", inner.name());
        }
        // Leaked once per suite name per run: the report keys rows by `&'static str`.
        let name: &'static str = Box::leak(format!("{}{SUFFIX}", inner.name()).into_boxed_str());
        Ok(Fronted { inner, name })
    }
}

/// The sing-box outbound that speaks `suite` to the server on `port`.
pub fn outbound(suite: &Suite, port: u16) -> anyhow::Result<Value> {
    let tls = |t: &super::tls::TlsMaterial| json!({"enabled": true, "server_name": SERVER_NAME, "certificate_path": t.cert_file});
    let mut o = match suite {
        Suite::Ss(c) => {
            let password = if c.method.is_2022() {
                match c.uses_eih() {
                    true => format!("{}:{}", c.server_psk_b64().unwrap_or_default(), c.user_key_b64()),
                    false => c.user_key_b64(),
                }
            } else {
                c.password_2017().to_string()
            };
            json!({"type": "shadowsocks", "method": c.method.name(), "password": password})
        }
        Suite::Trojan(t) => json!({"type": "trojan", "password": USER_UUID, "tls": tls(t)}),
        Suite::Vless(t) => json!({"type": "vless", "uuid": USER_UUID, "tls": tls(t)}),
        Suite::Vmess(t) => {
            let mut v = json!({"type": "vmess", "uuid": USER_UUID, "security": "aes-128-gcm", "alter_id": 0});
            if let Some(t) = t {
                v["tls"] = tls(t);
            }
            v
        }
        Suite::Anytls(t) => json!({"type": "anytls", "password": USER_UUID, "tls": tls(t)}),
        Suite::Vision(_) | Suite::Quic(..) | Suite::SingBox(_) | Suite::Xhttp(..) => {
            bail!("{} has its own client", suite.name())
        }
    };
    o["tag"] = json!("out");
    o["server"] = json!("127.0.0.1");
    o["server_port"] = json!(port);
    Ok(o)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn names_and_outbounds() {
        let tls = Arc::new(super::super::tls::TlsMaterial::generate().unwrap());
        let s = Suite::parse("2022-blake3-aes-128-gcm@sing-box", &tls).unwrap();
        assert_eq!(s.name(), "2022-blake3-aes-128-gcm@sing-box");
        assert!(s.through_client());
        assert_eq!(s.base().name(), "2022-blake3-aes-128-gcm");
        let o = outbound(s.base(), 4000).unwrap();
        assert_eq!(o["type"], "shadowsocks");
        assert_eq!(o["server_port"], 4000);
        let t = outbound(&Suite::parse("trojan-tls", &tls).unwrap(), 1).unwrap();
        assert_eq!(
            (t["type"].as_str(), t["tls"]["enabled"].as_bool()),
            (Some("trojan"), Some(true))
        );
        assert!(Suite::parse("hysteria2@sing-box", &tls).is_err());
    }
}
