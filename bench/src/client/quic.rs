//! The QUIC suites, Hysteria 2 (`hysteria2`) and TUIC v5 (`tuic`), measured as users meet them:
//! through the real sing-box client used as a SOCKS5 front end (`client::sing_box`). The load
//! generator speaks plain TCP to the bench's target through it; every bench connection is one
//! stream of the client's single QUIC connection. The client runs on the load generator's CPUs
//! (it inherits the bench's pinning) and is counted with it; only the server's CPU is measured.
//! Both directions, like every suite that is not the headline.
//!
//! ```text
//! bench ─SOCKS5─▶ sing-box client ─<protocol> over QUIC─▶ server ─▶ target
//! ```
//!
//! Each protocol's shapes live in its own module (`hysteria2`, `tuic`): the sing-box outbound
//! (the client) and inbound (a server), the v2sp panel node (Xboard's shape) and the shoes
//! protocol block. What they share is here: TLS with the run's certificate and ALPN `h3` on
//! every side, shoes' `transport: quic` listener, and waiting for the server's UDP socket (the
//! servers listen on UDP only, so the usual TCP connect check cannot tell when they are up).

use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{json, Value};

use super::tls::{TlsMaterial, SERVER_NAME};
use super::{hysteria2, tuic};

/// The ALPN every side of a QUIC suite uses (v2sp's control plane sets it for both protocols).
pub const ALPN: &str = "h3";

/// A QUIC protocol measured through the sing-box client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quic {
    Hysteria2,
    Tuic,
}

impl Quic {
    pub const ALL: [Quic; 2] = [Quic::Hysteria2, Quic::Tuic];

    /// The suite (report row) name; also sing-box's inbound/outbound type and v2sp's node type.
    pub fn name(self) -> &'static str {
        match self {
            Quic::Hysteria2 => hysteria2::HYSTERIA2,
            Quic::Tuic => tuic::TUIC,
        }
    }

    /// For the report's headings.
    pub fn title(self) -> &'static str {
        match self {
            Quic::Hysteria2 => "Hysteria 2",
            Quic::Tuic => "TUIC v5",
        }
    }

    pub fn parse(name: &str) -> Option<Quic> {
        Quic::ALL.into_iter().find(|q| q.name() == name.trim())
    }

    /// The sing-box client's outbound to the server on `port`, trusting the run's certificate.
    pub fn client_outbound(self, tls: &TlsMaterial, port: u16) -> Value {
        let mut o = match self {
            Quic::Hysteria2 => hysteria2::client_outbound(),
            Quic::Tuic => tuic::client_outbound(),
        };
        o["tag"] = json!("out");
        o["server"] = json!("127.0.0.1");
        o["server_port"] = json!(port);
        o["tls"] = json!({
            "enabled": true, "server_name": SERVER_NAME, "alpn": [ALPN],
            "certificate_path": tls.cert_file
        });
        o
    }

    /// The sing-box server's inbound: `type`, `listen`, `listen_port` and `tls` are set by the
    /// caller (`servers`); this adds the users and the protocol's settings.
    pub fn sing_box_inbound(self, inb: &mut Value) {
        match self {
            Quic::Hysteria2 => hysteria2::sing_box_inbound(inb),
            Quic::Tuic => tuic::sing_box_inbound(inb),
        }
    }

    /// The v2sp panel node's protocol fields (Xboard's shape); the caller sets `node_type`,
    /// `server_port` and `base_config`, and the certificate goes into the node's `CertConfig`.
    pub fn panel_node(self, node: &mut Value) {
        match self {
            Quic::Hysteria2 => hysteria2::panel_node(node),
            Quic::Tuic => tuic::panel_node(node),
        }
    }

    /// The shoes server config: a QUIC listener on `port` with the run's certificate and ALPN
    /// `h3`, the protocol inside.
    pub fn shoes_server_yaml(self, tls: &TlsMaterial, port: u16) -> String {
        let protocol = match self {
            Quic::Hysteria2 => hysteria2::shoes_protocol(),
            Quic::Tuic => tuic::shoes_protocol(),
        };
        format!(
            "- address: \"127.0.0.1:{port}\"\n  transport: quic\n  quic_settings:\n    cert: \"{}\"\n    key: \"{}\"\n    alpn_protocols: [\"{ALPN}\"]\n  protocol:\n    {}\n",
            tls.cert_file.display(),
            tls.key_file.display(),
            protocol.join("\n    ")
        )
    }
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for q in Quic::ALL {
            assert_eq!(Quic::parse(q.name()), Some(q));
        }
        assert_eq!(Quic::parse("hysteria"), None);
    }

    #[test]
    fn every_client_trusts_the_run_certificate_with_h3() {
        let tls = TlsMaterial::generate().unwrap();
        for q in Quic::ALL {
            let o = q.client_outbound(&tls, 4433);
            assert_eq!(o["type"], q.name());
            assert_eq!(
                (o["server"].as_str(), o["server_port"].as_u64()),
                (Some("127.0.0.1"), Some(4433))
            );
            assert_eq!(o["tls"]["alpn"], json!(["h3"]));
            assert_eq!(o["tls"]["server_name"], SERVER_NAME);
            assert_eq!(
                o["tls"]["certificate_path"].as_str(),
                Some(tls.cert_file.to_str().unwrap())
            );
            let y = q.shoes_server_yaml(&tls, 4433);
            assert!(
                y.starts_with("- address: \"127.0.0.1:4433\"\n  transport: quic\n"),
                "{y}"
            );
            assert!(y.contains("    alpn_protocols: [\"h3\"]\n"), "{y}");
            assert!(y.contains(&tls.cert_file.display().to_string()), "{y}");
            assert!(
                y.contains(&format!("  protocol:\n    type: {}\n", q.name())),
                "{y}"
            );
        }
    }

    #[test]
    fn udp_bound_sees_a_bound_socket() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = s.local_addr().unwrap().port();
        assert!(udp_bound(port));
        drop(s);
    }
}
