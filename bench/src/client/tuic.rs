//! TUIC v5's shapes for the QUIC suite `tuic` (see `client::quic`): uuid = password = the
//! user's uuid (as Xboard hands them out), congestion control cubic on every side (shoes has no
//! setting: quinn's default, cubic), UDP relay mode `native` on the client (no UDP is sent),
//! no 0-RTT.

use serde_json::{json, Value};

use super::ss::USER_UUID;
use super::tls::SERVER_NAME;

pub const TUIC: &str = "tuic";

/// The congestion control the client, sing-box's server and v2sp's node are given.
pub const CONGESTION: &str = "cubic";

/// The sing-box client's `tuic` outbound (without server and TLS).
pub fn client_outbound() -> Value {
    json!({
        "type": TUIC, "uuid": USER_UUID, "password": USER_UUID,
        "congestion_control": CONGESTION, "udp_relay_mode": "native"
    })
}

/// sing-box's `tuic` inbound: one user, cubic, no 0-RTT.
pub fn sing_box_inbound(inb: &mut Value) {
    inb["users"] = json!([{ "name": "bench", "uuid": USER_UUID, "password": USER_UUID }]);
    inb["congestion_control"] = json!(CONGESTION);
    inb["auth_timeout"] = json!("3s");
    inb["zero_rtt_handshake"] = json!(false);
}

/// Xboard's shape of a TUIC node: version 5 and its constants (`auth_timeout`,
/// `zero_rtt_handshake`, `heartbeat`), congestion control cubic.
pub fn panel_node(node: &mut Value) {
    node["protocol"] = json!(TUIC);
    node["version"] = json!(5);
    node["server_name"] = json!(SERVER_NAME);
    node["congestion_control"] = json!(CONGESTION);
    node["heartbeat"] = json!("3s");
    node["zero_rtt_handshake"] = json!(false);
    node["auth_timeout"] = json!("3s");
}

/// shoes' `tuic` (v5) protocol block (inside its `quic` listener).
pub fn shoes_protocol() -> Vec<String> {
    vec![
        format!("type: {TUIC}"),
        format!("uuid: \"{USER_UUID}\""),
        format!("password: \"{USER_UUID}\""),
        "zero_rtt_handshake: false".into(),
    ]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::quic::Quic;
    use super::super::tls::TlsMaterial;
    use super::*;

    #[test]
    fn shoes_yaml_is_quic_tuic() {
        let tls = TlsMaterial::generate().unwrap();
        let y = Quic::Tuic.shoes_server_yaml(&tls, 4433);
        assert!(
            y.starts_with("- address: \"127.0.0.1:4433\"\n  transport: quic\n"),
            "{y}"
        );
        assert!(
            y.ends_with(&format!(
                "  protocol:\n    type: tuic\n    uuid: \"{USER_UUID}\"\n    password: \"{USER_UUID}\"\n    zero_rtt_handshake: false\n"
            )),
            "{y}"
        );
    }

    #[test]
    fn client_outbound_is_tuic_v5_cubic_native() {
        let tls = TlsMaterial::generate().unwrap();
        let o = Quic::Tuic.client_outbound(&tls, 4433);
        assert_eq!(o["type"], "tuic");
        assert_eq!(
            (o["uuid"].as_str(), o["password"].as_str()),
            (Some(USER_UUID), Some(USER_UUID))
        );
        assert_eq!(o["congestion_control"], "cubic");
        assert_eq!(o["udp_relay_mode"], "native");
        assert_eq!(o["tls"]["alpn"], json!(["h3"]));
    }

    #[test]
    fn sing_box_inbound_and_panel_node() {
        let mut inb = json!({ "type": "tuic" });
        Quic::Tuic.sing_box_inbound(&mut inb);
        assert_eq!(
            inb["users"],
            json!([{ "name": "bench", "uuid": USER_UUID, "password": USER_UUID }])
        );
        assert_eq!(inb["congestion_control"], "cubic");
        let mut node = json!({ "node_type": "tuic", "server_port": 1 });
        Quic::Tuic.panel_node(&mut node);
        assert_eq!(
            node,
            json!({
                "node_type": "tuic", "server_port": 1, "protocol": "tuic", "version": 5,
                "server_name": SERVER_NAME, "congestion_control": "cubic", "heartbeat": "3s",
                "zero_rtt_handshake": false, "auth_timeout": "3s"
            })
        );
    }
}
