//! What the client's first plaintext bytes speak, for audit rules (`protocol:` rules, and
//! domain rules when the client asked for an IP): a TLS ClientHello (the SNI), an HTTP/1
//! request (the Host), a BitTorrent handshake. The names are Xray's sniffer names, which is
//! what panels' `protocol:` rules are written against.
//!
//! ```text
//! tls:        16 03 xx | len 2 | 01 (ClientHello) ...        server_name extension → domain
//! http:       METHOD SP target SP HTTP/1.x CRLF ... Host: h  Host without the port → domain
//! bittorrent: 13 "BitTorrent protocol"
//! ```

use crate::tls::sni::client_hello_sni;
use crate::transport::http::parse_request;

/// A sniffed protocol and the domain it names, if any.
#[derive(Debug, PartialEq, Eq)]
pub struct Sniffed {
    pub protocol: &'static str,
    pub domain: Option<String>,
}

const METHODS: [&str; 9] = [
    "GET ", "POST ", "HEAD ", "PUT ", "DELETE ", "OPTIONS ", "PATCH ", "CONNECT ", "TRACE ",
];

/// Sniffs `first`; `None` when it is none of the above (or too short to tell).
pub fn sniff(first: &[u8]) -> Option<Sniffed> {
    match first {
        [0x16, 0x03, ..] => Some(Sniffed {
            protocol: "tls",
            domain: client_hello_sni(first),
        }),
        [19, rest @ ..] if rest.starts_with(b"BitTorrent protocol") => Some(Sniffed {
            protocol: "bittorrent",
            domain: None,
        }),
        _ if METHODS.iter().any(|m| first.starts_with(m.as_bytes())) => {
            let host = match parse_request(first) {
                Ok(Some(req)) => req.header("host").map(host_without_port),
                _ => None,
            };
            Some(Sniffed {
                protocol: "http",
                domain: host.filter(|h| !h.is_empty()),
            })
        }
        _ => None,
    }
}

/// `example.com:8080` → `example.com`; `[::1]:80` → `::1`.
fn host_without_port(h: &str) -> String {
    let h = h.trim();
    if let Some(rest) = h.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default().to_string();
    }
    match h.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name.to_string()
        }
        _ => h.to_string(),
    }
}

/// Whether the audit rules need a stream's first bytes to judge `dest`: `protocol:` rules
/// always, domain rules when the client named an IP (the sniffed name is then what they see).
pub(super) fn wanted(a: &v2sp_shared::audit::AuditRules, dest: &crate::proto::Destination) -> bool {
    let dest_is_ip = match dest {
        crate::proto::Destination::Ip(_) => true,
        crate::proto::Destination::Domain(d, _) => d.parse::<std::net::IpAddr>().is_ok(),
    };
    a.wants_sniff(dest_is_ip)
}

/// The audit verdict on a stream's first bytes: `Some((rule, what was sniffed))` when a
/// `protocol:` rule or a rule on the sniffed domain blocks it.
pub(super) fn verdict(a: &v2sp_shared::audit::AuditRules, first: &[u8]) -> Option<(i64, String)> {
    let s = sniff(first)?;
    if let Some(rule) = a.blocks_protocol(s.protocol) {
        return Some((rule, s.protocol.to_string()));
    }
    let d = s.domain?;
    let rule = a.blocks(v2sp_shared::audit::Target::Domain(&d))?;
    Some((rule, format!("{} {d}", s.protocol)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn http_with_host() {
        let s = sniff(b"GET /x HTTP/1.1\r\nHost: Example.com:8080\r\nAccept: */*\r\n\r\n").unwrap();
        assert_eq!(s.protocol, "http");
        assert_eq!(s.domain.as_deref(), Some("Example.com"));
        // An incomplete head is still HTTP, without a host.
        let s = sniff(b"POST /upload HTTP/1.1\r\nHo").unwrap();
        assert_eq!((s.protocol, s.domain), ("http", None));
        assert_eq!(host_without_port("[::1]:80"), "::1");
        assert_eq!(host_without_port("a.io"), "a.io");
    }

    #[test]
    fn tls_client_hello_gives_the_sni() {
        // A ClientHello made by rustls for "blocked.test".
        let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let mut c = rustls::ClientConnection::new(
            std::sync::Arc::new(cfg),
            rustls::pki_types::ServerName::try_from("blocked.test").unwrap(),
        )
        .unwrap();
        let mut hello = Vec::new();
        c.write_tls(&mut hello).unwrap();
        let s = sniff(&hello).unwrap();
        assert_eq!(s.protocol, "tls");
        assert_eq!(s.domain.as_deref(), Some("blocked.test"));
    }

    proptest::proptest! {
        /// Client bytes: anything sniffs to something or nothing, never a panic.
        #[test]
        fn never_panics(prefix in proptest::sample::select(vec![&b"\x16\x03"[..], b"GET ", b"\x13BitTorrent protocol", b""]),
                        rest in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let mut b = prefix.to_vec();
            b.extend_from_slice(&rest);
            let _ = sniff(&b);
        }
    }

    #[test]
    fn bittorrent_and_others() {
        let mut bt = vec![19u8];
        bt.extend_from_slice(b"BitTorrent protocol");
        bt.extend_from_slice(&[0; 8]);
        assert_eq!(sniff(&bt).unwrap().protocol, "bittorrent");
        assert_eq!(sniff(b"SSH-2.0-OpenSSH_9.2\r\n"), None);
        assert_eq!(sniff(b""), None);
        assert_eq!(sniff(&[0x16]), None);
    }
}
