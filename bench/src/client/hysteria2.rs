//! Hysteria 2's shapes for the QUIC suite `hysteria2` (see `client::quic`): password = the
//! user's uuid, no obfuscation, no bandwidths (the client's and servers' own congestion
//! control).

use serde_json::{json, Value};

use super::ss::USER_UUID;
use super::tls::SERVER_NAME;

pub const HYSTERIA2: &str = "hysteria2";

/// The sing-box client's `hysteria2` outbound (without server and TLS).
pub fn client_outbound() -> Value {
    json!({ "type": HYSTERIA2, "password": USER_UUID })
}

/// sing-box's `hysteria2` inbound: one user.
pub fn sing_box_inbound(inb: &mut Value) {
    inb["users"] = json!([{ "name": "bench", "password": USER_UUID }]);
}

/// Xboard's shape: type `hysteria`, version 2, no bandwidths, no obfuscation.
pub fn panel_node(node: &mut Value) {
    node["protocol"] = json!("hysteria");
    node["version"] = json!(2);
    node["server_name"] = json!(SERVER_NAME);
    node["up_mbps"] = json!(0);
    node["down_mbps"] = json!(0);
    node["obfs"] = json!(null);
}

/// shoes' `hysteria2` protocol block (inside its `quic` listener).
pub fn shoes_protocol() -> Vec<String> {
    vec![
        format!("type: {HYSTERIA2}"),
        format!("password: \"{USER_UUID}\""),
        "udp_enabled: false".into(),
    ]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::quic::Quic;
    use super::super::tls::TlsMaterial;
    use super::*;

    #[test]
    fn shoes_yaml_is_quic_hysteria2() {
        let tls = TlsMaterial::generate().unwrap();
        let y = Quic::Hysteria2.shoes_server_yaml(&tls, 4433);
        assert!(
            y.starts_with("- address: \"127.0.0.1:4433\"\n  transport: quic\n"),
            "{y}"
        );
        assert!(
            y.contains(&format!(
                "    type: hysteria2\n    password: \"{USER_UUID}\"\n    udp_enabled: false\n"
            )),
            "{y}"
        );
        assert!(y.contains(&tls.cert_file.display().to_string()), "{y}");
    }

    #[test]
    fn client_server_and_panel_shapes() {
        let tls = TlsMaterial::generate().unwrap();
        let o = Quic::Hysteria2.client_outbound(&tls, 1);
        assert_eq!(
            (o["type"].as_str(), o["password"].as_str()),
            (Some("hysteria2"), Some(USER_UUID))
        );
        let mut inb = json!({});
        Quic::Hysteria2.sing_box_inbound(&mut inb);
        assert_eq!(inb["users"][0]["password"], USER_UUID);
        let mut node = json!({});
        Quic::Hysteria2.panel_node(&mut node);
        assert_eq!(
            (node["protocol"].as_str(), node["version"].as_u64()),
            (Some("hysteria"), Some(2))
        );
    }
}
