//! Pure functions from "what the panel said" + "what the local config says" to what the data
//! plane serves, tested directly. The I/O: `CertMode: self` writes a self-signed pair when its
//! files are missing ([`ensure_self_signed`]); `CertMode: http` obtains (or renews) an ACME
//! certificate when needed ([`crate::acme::ensure`]).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use v2sp_shared::audit::Pattern;
use v2sp_shared::config::{CertConfig, CertMode, NodeEntry};
use v2sp_shared::cred::{secret_for, CredKind};
use v2sp_shared::dpconfig::{
    BlockRule, DnsRoute, FallbackTarget, GrpcSettings, HttpPathSettings, Hysteria2Settings, NodeConfig,
    Protocol, RealitySettings, ShadowsocksSettings, TcpHttpSettings, TlsSettings, Transport, TuicSettings,
    XhttpSettings,
};
use v2sp_shared::panel::{NodeInfo, PanelUser, Route, TlsMode};
use v2sp_shared::shm::UserEntry;

/// Why a node cannot be served with what the panel sent (the panel's or the operator's fault).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildError {
    #[error("node type unknown: set NodeType locally or have the panel send node_type/protocol")]
    NoType,
    #[error("the panel's cert_config: {0}")]
    PanelCert(String),
    #[error("node type {0:?} is not supported")]
    Unsupported(String),
    #[error("panel sent server_port 0")]
    NoPort,
    #[error("shadowsocks node without a cipher")]
    NoCipher,
    #[error("shadowsocks cipher {0:?} is not supported")]
    BadCipher(String),
    #[error("cipher {0} needs a server_key (base64 PSK) from the panel")]
    NoServerKey(String),
    #[error("this build of v2sp does not serve {0} yet")]
    NotServedYet(&'static str),
    #[error("this build of v2sp does not serve the {0:?} transport yet (tcp, ws, httpupgrade, grpc, xhttp)")]
    TransportNotServedYet(String),
    #[error("this build of v2sp does not serve VLESS flow {0:?} yet (set no flow on the panel)")]
    FlowNotServedYet(String),
    #[error("REALITY node: {0}")]
    Reality(&'static str),
    #[error("hysteria2 node: {0}")]
    Hysteria2(String),
    #[error("tuic node: {0}")]
    Tuic(String),
    #[error("CertMode self: cannot write the self-signed certificate: {0}")]
    SelfSigned(String),
    #[error("CertMode {0}: no certificate to serve: {1} (retried on the next pull)")]
    Acme(&'static str, crate::acme::AcmeError),
    #[error("CertMode tls: {0}")]
    TlsAlpn(String),
}

/// Canonical cipher name and credential kind.
pub fn ss_cipher(name: &str) -> Option<(&'static str, CredKind)> {
    Some(match name.trim().to_ascii_lowercase().as_str() {
        "aes-128-gcm" | "aead_aes_128_gcm" => ("aes-128-gcm", CredKind::SsLegacy16),
        "aes-256-gcm" | "aead_aes_256_gcm" => ("aes-256-gcm", CredKind::SsLegacy32),
        "chacha20-ietf-poly1305" | "chacha20-poly1305" | "aead_chacha20_poly1305" => {
            ("chacha20-ietf-poly1305", CredKind::SsLegacy32)
        }
        "2022-blake3-aes-128-gcm" => ("2022-blake3-aes-128-gcm", CredKind::Ss2022Psk16),
        "2022-blake3-aes-256-gcm" => ("2022-blake3-aes-256-gcm", CredKind::Ss2022Psk32),
        "2022-blake3-chacha20-poly1305" => ("2022-blake3-chacha20-poly1305", CredKind::Ss2022Psk32),
        _ => return None,
    })
}

/// The protocol a node speaks: local `NodeType` wins, else the panel's `node_type`/`protocol`.
pub fn node_protocol(entry: &NodeEntry, info: &NodeInfo) -> Result<Protocol, BuildError> {
    let t = if entry.node_type.trim().is_empty() {
        info.node_type.clone().ok_or(BuildError::NoType)?
    } else {
        entry.node_type.clone()
    };
    Protocol::parse(&t).ok_or(BuildError::Unsupported(t))
}

/// Build the data-plane config of one node.
pub fn node_config(
    slot: u16,
    tag: &str,
    entry: &NodeEntry,
    info: &NodeInfo,
) -> Result<NodeConfig, BuildError> {
    let protocol = node_protocol(entry, info)?;
    if info.server_port == 0 {
        return Err(BuildError::NoPort);
    }
    let (cred_kind, shadowsocks) = match protocol {
        Protocol::Shadowsocks => {
            let raw = info.cipher.as_deref().ok_or(BuildError::NoCipher)?;
            let (cipher, kind) = ss_cipher(raw).ok_or_else(|| BuildError::BadCipher(raw.to_string()))?;
            let server_key = info.server_key.clone().unwrap_or_default();
            // The AES 2022 ciphers carry users in identity headers under the server PSK; the
            // chacha variant has no identity headers (users are tried by their own keys), and
            // Xboard sends `server_key: null` for it.
            if cipher.starts_with("2022-blake3-aes") && server_key.trim().is_empty() {
                return Err(BuildError::NoServerKey(cipher.to_string()));
            }
            let ss = ShadowsocksSettings {
                cipher: cipher.to_string(),
                server_key: server_key.trim().to_string(),
                replay_check: !entry.disable_iv_check,
            };
            (kind, Some(ss))
        }
        Protocol::Vless => (CredKind::VlessUuid, None),
        Protocol::Vmess => (CredKind::VmessUuid, None),
        Protocol::Trojan => (CredKind::TrojanSha224, None),
        // The password is the user's uuid, found by its SHA-256 like AnyTLS.
        Protocol::Hysteria2 => (CredKind::Sha256Password, None),
        Protocol::Anytls => (CredKind::Sha256Password, None),
        // The uuid identifies the user (16 bytes, looked up like VLESS); the password the
        // clients get is the same uuid, checked through the TLS exporter.
        Protocol::Tuic => (CredKind::VlessUuid, None),
    };
    let hysteria2 = match protocol {
        Protocol::Hysteria2 => Some(Hysteria2Settings {
            // Only the local config has a range (the panel never sends one).
            hop_ports: entry.hop_ports,
            masquerade: entry.masquerade.clone(),
            ..hysteria2_settings(info)?
        }),
        _ => None,
    };
    let tuic = match protocol {
        Protocol::Tuic => Some(tuic_settings(info)?),
        _ => None,
    };
    let tls = match protocol {
        Protocol::Shadowsocks => None,
        Protocol::Trojan | Protocol::Vless | Protocol::Vmess => {
            if let Some(flow) = info.flow.as_deref().map(str::trim).filter(|f| !f.is_empty()) {
                // Vision is served over TLS and REALITY (checked below); other flows are not.
                if protocol == Protocol::Vless && flow != VISION {
                    return Err(BuildError::FlowNotServedYet(flow.to_string()));
                }
            }
            if protocol == Protocol::Vless {
                let enc = info.encryption.as_deref().map(str::trim).unwrap_or("");
                if !enc.is_empty() && !enc.eq_ignore_ascii_case("none") {
                    return Err(BuildError::NotServedYet("VLESS encryption"));
                }
            }
            // Trojan is always TLS, or REALITY when the panel says `tls: 2` (Xboard then sends
            // the REALITY object as `tls_settings`, as for VLESS; the Go v2sp ignored it and
            // served its own certificate, §B.4); VLESS and VMess when the panel says `tls: 1`;
            // REALITY (`tls: 2`) for VLESS and Trojan.
            let wants_tls = matches!((protocol, info.tls), (Protocol::Trojan, _) | (_, TlsMode::Tls));
            if protocol == Protocol::Vmess && info.tls == TlsMode::Reality {
                return Err(BuildError::NotServedYet("REALITY"));
            }
            if matches!(protocol, Protocol::Vless | Protocol::Trojan) && info.tls == TlsMode::Reality {
                Some(reality_tls(info)?)
            } else if wants_tls {
                node_tls(&entry.cert, info)?
            } else {
                None
            }
        }
        // AnyTLS is always TLS (spec §F.1); `CertMode: none` serves it in plaintext behind an
        // external terminator, as for the other TLS protocols.
        Protocol::Anytls => node_tls(&entry.cert, info)?,
        // QUIC always carries TLS 1.3: there is no plaintext mode to put behind a terminator
        // (the Go hy2 core refuses `CertMode: none` too, spec §F.1).
        // TLS-ALPN-01 is answered by the TCP handshake on the node's port; QUIC has none.
        Protocol::Hysteria2 | Protocol::Tuic if entry.cert.cert_mode == CertMode::Tls => {
            let why = "CertMode tls (TLS-ALPN-01) is answered over TCP; a QUIC node needs CertMode http, dns, self or file".to_string();
            return Err(if protocol == Protocol::Tuic {
                BuildError::Tuic(why)
            } else {
                BuildError::Hysteria2(why)
            });
        }
        Protocol::Hysteria2 | Protocol::Tuic => match node_tls(&entry.cert, info)? {
            Some(mut t) => {
                // Hysteria 2 is HTTP/3; TUIC clients from Xboard's subscriptions offer h3.
                t.alpn = vec!["h3".to_string()];
                Some(t)
            }
            None if protocol == Protocol::Tuic => {
                return Err(BuildError::Tuic(
                    "QUIC needs a certificate: CertMode none cannot serve it".to_string(),
                ))
            }
            None => {
                return Err(BuildError::Hysteria2(
                    "QUIC needs a certificate: CertMode none cannot serve it".to_string(),
                ))
            }
        },
    };
    let fallbacks = node_fallbacks(entry, protocol);
    let transport = match protocol {
        // AnyTLS and Hysteria 2 have no transports (sing-box's inbounds have none either).
        Protocol::Shadowsocks | Protocol::Anytls | Protocol::Hysteria2 | Protocol::Tuic => Transport::Tcp,
        _ => node_transport(info)?,
    };
    let is_xhttp = matches!(transport, Transport::Xhttp(_));
    // ALPN: the fallbacks' values first (server preference picks them for clients that offer
    // them), then what the transport needs.
    let tls = tls.map(|mut t| {
        if matches!(protocol, Protocol::Hysteria2 | Protocol::Tuic) {
            return t;
        }
        let mut alpn = fallback_alpn(&fallbacks);
        for a in transport.alpn() {
            if !alpn.contains(&a) {
                alpn.push(a);
            }
        }
        t.alpn = alpn;
        t
    });
    let send_ip = if entry.send_ip.is_unspecified() {
        String::new()
    } else {
        entry.send_ip.to_string()
    };
    let (route_rules, outbounds) =
        crate::routing::node_routing(tag, info, &crate::routing::LocalRouting::default());
    Ok(NodeConfig {
        slot,
        tag: tag.to_string(),
        listen_ip: entry.listen_ip.to_string(),
        port: info.server_port,
        protocol,
        cred_kind,
        speed_limit_mbps: u32::try_from(entry.limit.speed_limit_mbps).unwrap_or(u32::MAX),
        proxy_protocol: entry.enable_proxy_protocol,
        proxy_protocol_from: entry.proxy_protocol_from.clone(),
        trusted_proxies: entry.trusted_proxies.clone(),
        send_ip,
        dns_strategy: entry.outbound_domain_strategy().to_string(),
        shadowsocks,
        flow: match (protocol, &tls) {
            // Vision needs the TLS records on the wire; inside XHTTP's requests there are none
            // (Xray's clients send no flow there either).
            (Protocol::Vless, _) if is_xhttp => String::new(),
            (Protocol::Vless, Some(_)) => vless_flow(info),
            (Protocol::Vless, None) if !vless_flow(info).is_empty() => {
                return Err(BuildError::NotServedYet("VLESS flow without TLS or REALITY"))
            }
            _ => String::new(),
        },
        transport,
        padding_scheme: match protocol {
            Protocol::Anytls => anytls_padding(info),
            _ => Vec::new(),
        },
        hysteria2,
        tuic,
        tls,
        fallbacks,
        block_rules: block_rules(tag, &info.routes),
        dns_routes: dns_routes(tag, &info.routes),
        // The panel's alone here; the node worker adds the local files (`routing::node_routing`).
        route_rules,
        outbounds,
    })
}

/// The panel's `block` routes as the data plane takes them: each `match` entry validated and
/// normalized; entries that cannot be used are logged and left out (one bad pattern never
/// blocks everything or stops the node). `dns` routes are [`dns_routes`]; other actions are
/// ignored, as the Go agents do.
fn block_rules(tag: &str, routes: &[Route]) -> Vec<BlockRule> {
    let mut out = Vec::new();
    for r in routes.iter().filter(|r| r.action == "block") {
        for m in &r.matches {
            match Pattern::parse(m) {
                Ok(p) => out.push(BlockRule {
                    id: r.id,
                    pattern: p.to_entry(),
                }),
                Err(why) => {
                    tracing::warn!(node = %tag, route = r.id, entry = %m, "audit rule entry skipped: {why}")
                }
            }
        }
    }
    out
}

/// The panel's `dns` routes (spec §E.1): `match` = the names, `action_value` = the server
/// (`ip` or `ip:port`, port 53 by default). What Go agents wrote into an xray DNS file is served
/// by the data plane's own resolver. Skipped with a warning: the `main` form (a whole xray DNS
/// config), servers that are not a plain IP (DoH/DoT URLs, names), unusable patterns.
fn dns_routes(tag: &str, routes: &[Route]) -> Vec<DnsRoute> {
    let mut out = Vec::new();
    for r in routes.iter().filter(|r| r.action == "dns") {
        if r.matches.first().map(String::as_str) == Some("main") {
            tracing::warn!(node = %tag, route = r.id, "dns route \"main\" (a whole xray DNS config) is not supported: skipped");
            continue;
        }
        let value = r.action_value.as_deref().unwrap_or("").trim();
        let server = value
            .parse::<SocketAddr>()
            .ok()
            .or_else(|| value.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)));
        let Some(server) = server else {
            tracing::warn!(node = %tag, route = r.id, server = %value, "dns route skipped: the server must be an IP or ip:port");
            continue;
        };
        let mut domains = Vec::new();
        for m in &r.matches {
            match Pattern::parse_dns_domain(m) {
                Ok(p) => domains.push(p.to_entry()),
                Err(why) => {
                    tracing::warn!(node = %tag, route = r.id, entry = %m, "dns route entry skipped: {why}")
                }
            }
        }
        if !domains.is_empty() {
            out.push(DnsRoute {
                id: r.id,
                domains,
                server,
            });
        }
    }
    out
}

/// A Hysteria 2 node's settings from the panel (spec §B.4, §F.6). Refused: Hysteria v1
/// (`version` other than 2).
///
/// Obfuscation (Xboard: `obfs` = the type, `salamander`, when the admin turned it on, else
/// null; `obfs-password` = its password, sent even while `obfs` is null):
/// * `obfs` null, empty or `plain`: none, whatever `obfs-password` says (Xboard keeps the
///   password of a switched-off obfuscation).
/// * `obfs: salamander` (any case): Salamander with `obfs-password`; refused without one (the
///   reference server refuses it too; sing-box would take the word `salamander` itself as the
///   password, which no admin means).
/// * any other `obfs` without `obfs-password`: sing-box's reading (V2bX), a lone `obfs` is the
///   Salamander password; served that way.
/// * any other `obfs` with `obfs-password`: an obfuscation type v2sp does not know; refused.
///
/// Passwords are used byte for byte as the panel sends them: clients get the same string.
fn hysteria2_settings(info: &NodeInfo) -> Result<Hysteria2Settings, BuildError> {
    if let Some(v) = info.extra.get("version") {
        let two = v.as_u64() == Some(2) || v.as_str().map(str::trim) == Some("2");
        if !two {
            return Err(BuildError::Hysteria2(format!(
                "panel version {v} is Hysteria v1, which v2sp does not serve (only version 2)"
            )));
        }
    }
    let mbps = |v: Option<u64>| u32::try_from(v.unwrap_or(0)).unwrap_or(u32::MAX);
    let raw_obfs = info.obfs.as_deref().unwrap_or("");
    let obfs = raw_obfs.trim().to_ascii_lowercase();
    let password = info.obfs_password.as_deref().unwrap_or("");
    let obfs_password = match obfs.as_str() {
        "" | "plain" => None,
        "salamander" if password.is_empty() => {
            return Err(BuildError::Hysteria2(
                "obfs salamander without obfs-password: set the obfuscation password on the panel"
                    .to_string(),
            ))
        }
        "salamander" => Some(password),
        // sing-box reads a lone `obfs` as the Salamander password (spec §F.6).
        _ if password.is_empty() => Some(raw_obfs),
        other => {
            return Err(BuildError::Hysteria2(format!(
                "unsupported obfuscation type {other:?} (none or salamander)"
            )))
        }
    };
    Ok(Hysteria2Settings {
        up_mbps: mbps(info.up_mbps),
        down_mbps: mbps(info.down_mbps),
        ignore_client_bandwidth: info.ignore_client_bandwidth,
        obfs: obfs_password
            .map(|_| "salamander".to_string())
            .unwrap_or_default(),
        obfs_password: obfs_password.unwrap_or_default().to_string(),
        hop_ports: None,
        masquerade: None,
    })
}

/// A TUIC node's settings from the panel: version 5 only (v4 clients are gone from every
/// maintained client), its congestion control, its heartbeat (`"3s"`; Xboard's constant).
fn tuic_settings(info: &NodeInfo) -> Result<TuicSettings, BuildError> {
    if let Some(v) = info.extra.get("version") {
        let five = v.as_u64() == Some(5) || v.as_str().map(str::trim) == Some("5") || v.is_null();
        if !five {
            return Err(BuildError::Tuic(format!(
                "panel version {v} is not TUIC v5, the only version v2sp serves"
            )));
        }
    }
    let cc = info.congestion_control.as_deref().map(str::trim).unwrap_or("");
    let congestion_control = match cc.to_ascii_lowercase().as_str() {
        "" | "cubic" => "cubic",
        "new_reno" | "newreno" => "new_reno",
        "bbr" => "bbr",
        other => {
            return Err(BuildError::Tuic(format!(
                "unknown congestion_control {other:?} (cubic, new_reno or bbr)"
            )))
        }
    }
    .to_string();
    let heartbeat_ms = match info.extra.get("heartbeat") {
        None | Some(serde_json::Value::Null) => 3000,
        Some(v) => {
            let text = v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
            go_duration_ms(&text)
                .filter(|&ms| ms > 0)
                .ok_or_else(|| BuildError::Tuic(format!("heartbeat {v} is not a duration such as \"3s\"")))?
        }
    };
    Ok(TuicSettings {
        congestion_control,
        heartbeat_ms,
        zero_rtt_handshake: info.zero_rtt_handshake,
    })
}

/// A Go duration string with one unit (`"3s"`, `"500ms"`, `"1m"`; a bare number is
/// seconds) in milliseconds, at most one hour.
fn go_duration_ms(s: &str) -> Option<u32> {
    let s = s.trim().trim_matches('"');
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let per = match unit {
        "ms" => 1.0,
        "" | "s" => 1000.0,
        "m" => 60_000.0,
        _ => return None,
    };
    let ms = n * per;
    (ms.is_finite() && ms <= 3_600_000.0).then_some(ms as u32)
}

/// The panel's AnyTLS `padding_scheme` lines, trimmed, blank lines dropped (empty: the data
/// plane uses the reference default scheme).
fn anytls_padding(info: &NodeInfo) -> Vec<String> {
    info.padding_scheme
        .iter()
        .flatten()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// ALPN the TLS server offers so that fallbacks by ALPN can match (xray needs the same in its
/// TLS settings): the fallbacks' ALPN values in order, then `http/1.1` (so a client offering
/// both still negotiates); nothing when no fallback names an ALPN.
fn fallback_alpn(fallbacks: &[FallbackTarget]) -> Vec<String> {
    let mut alpn: Vec<String> = Vec::new();
    for f in fallbacks.iter().filter(|f| !f.alpn.is_empty()) {
        if !alpn.contains(&f.alpn) {
            alpn.push(f.alpn.clone());
        }
    }
    if !alpn.is_empty() && !alpn.iter().any(|a| a == "http/1.1") {
        alpn.push("http/1.1".to_string());
    }
    alpn
}

/// xray fallbacks (`EnableFallback` + `FallBackConfigs`) for Trojan and VLESS nodes.
fn node_fallbacks(entry: &NodeEntry, protocol: Protocol) -> Vec<FallbackTarget> {
    if !entry.enable_fallback || !matches!(protocol, Protocol::Trojan | Protocol::Vless | Protocol::Anytls) {
        return Vec::new();
    }
    entry
        .fallbacks
        .iter()
        .map(|f| FallbackTarget {
            sni: f.sni.trim().to_string(),
            alpn: f.alpn.trim().to_string(),
            path: f.path.trim().to_string(),
            dest: f.dest.trim().to_string(),
            xver: u8::try_from(f.proxy_protocol_ver).unwrap_or(0),
        })
        .collect()
}

/// The panel's `network` and `networkSettings` (xray field names, spec §F.6) as the data
/// plane's transport.
pub fn node_transport(info: &NodeInfo) -> Result<Transport, BuildError> {
    let network = info.network.as_deref().unwrap_or("tcp");
    let settings = info.network_settings.as_ref();
    let text = |key: &str| -> String {
        settings
            .and_then(|s| s.get(key))
            .and_then(|v| v.as_str())
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    match network {
        "tcp" | "raw" => {
            let header = settings
                .and_then(|s| s.get("header"))
                .and_then(|h| h.get("type"))
                .and_then(|t| t.as_str())
                .unwrap_or("none");
            if header.eq_ignore_ascii_case("none") || header.is_empty() {
                Ok(Transport::Tcp)
            } else if header.eq_ignore_ascii_case("http") {
                let h = settings.and_then(|s| s.get("header"));
                Ok(Transport::TcpHttp(tcp_http(h)))
            } else {
                Err(BuildError::TransportNotServedYet(format!(
                    "tcp with header type {header}"
                )))
            }
        }
        "ws" | "websocket" | "httpupgrade" => {
            // xray: the `ed` query parameter is the client's early-data size, stripped from the
            // path the server matches; any other query never matches a request path.
            let raw = text("path");
            let path = raw.split('?').next().unwrap_or_default();
            let path = match path {
                "" => "/".to_string(),
                p if p.starts_with('/') => p.to_string(),
                p => format!("/{p}"),
            };
            let mut host = text("host");
            if host.is_empty() && network != "httpupgrade" {
                // Deprecated in xray: a Host in `headers` when `host` is unset.
                if let Some(h) = settings
                    .and_then(|s| s.get("headers"))
                    .and_then(|h| h.as_object())
                {
                    host = h
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("host"))
                        .and_then(|(_, v)| v.as_str())
                        .map(|v| v.trim().to_string())
                        .unwrap_or_default();
                }
            }
            let s = HttpPathSettings { path, host };
            Ok(if network == "httpupgrade" {
                Transport::HttpUpgrade(s)
            } else {
                Transport::Ws(s)
            })
        }
        "grpc" | "gun" => {
            // xray field names (`serviceName`, `multiMode`); snake case tolerated.
            let mut service_name = text("serviceName");
            if service_name.is_empty() {
                service_name = text("service_name");
            }
            let multi = settings
                .and_then(|s| s.get("multiMode").or_else(|| s.get("multi_mode")))
                .is_some_and(|v| v.as_bool().unwrap_or_else(|| v.as_str() == Some("true")));
            Ok(Transport::Grpc(GrpcSettings {
                service_name,
                multi_mode: multi,
            }))
        }
        "xhttp" | "splithttp" => xhttp(settings),
        other => Err(BuildError::TransportNotServedYet(other.to_string())),
    }
}

/// xray's `xhttpSettings` (`path`, `host`, `mode`, `extra`; spec §F.6): the base path gets
/// Xray's normal form (leading and trailing `/`, query dropped); `extra` (an object, or the
/// same as a JSON string) may change the padding range, the packet-up limits and the SSE
/// header; client-only keys in it (`xmux`, `downloadSettings`, …) are ignored.
fn xhttp(settings: Option<&serde_json::Value>) -> Result<Transport, BuildError> {
    let bad = |why: String| BuildError::TransportNotServedYet(format!("xhttp: {why}"));
    let text =
        |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).unwrap_or_default().trim().to_string();
    let mut x = XhttpSettings::default();
    let path = text(settings.and_then(|s| s.get("path")));
    let path = path.split('?').next().unwrap_or_default();
    x.path = match (path.starts_with('/'), path.ends_with('/')) {
        (true, true) => path.to_string(),
        (true, false) => format!("{path}/"),
        (false, _) if path.is_empty() => "/".to_string(),
        (false, true) => format!("/{path}"),
        (false, false) => format!("/{path}/"),
    };
    x.host = text(settings.and_then(|s| s.get("host")));
    let mode = text(settings.and_then(|s| s.get("mode")));
    x.mode = match mode.as_str() {
        "" | "auto" => "auto".to_string(),
        "packet-up" | "stream-up" | "stream-one" => mode,
        other => {
            return Err(bad(format!(
                "unknown mode {other:?} (auto, packet-up, stream-up, stream-one)"
            )))
        }
    };
    let parsed;
    let extra = match settings.and_then(|s| s.get("extra")) {
        Some(serde_json::Value::String(t)) if !t.trim().is_empty() => {
            parsed = serde_json::from_str::<serde_json::Value>(t).map_err(|e| bad(format!("extra: {e}")))?;
            Some(&parsed)
        }
        Some(v @ serde_json::Value::Object(_)) => Some(v),
        _ => None,
    };
    // Xray's defaults apply to a key that is absent or whose range ends at 0.
    if let Some(e) = extra {
        if let Some((lo, hi)) =
            rand_range(e.get("xPaddingBytes")).map_err(|w| bad(format!("xPaddingBytes: {w}")))?
        {
            (x.padding_min, x.padding_max) = (lo, hi);
        }
        if let Some((_, hi)) =
            rand_range(e.get("scMaxEachPostBytes")).map_err(|w| bad(format!("scMaxEachPostBytes: {w}")))?
        {
            x.max_each_post_bytes = hi;
        }
        if let Some((_, hi)) =
            rand_range(e.get("scMaxBufferedPosts")).map_err(|w| bad(format!("scMaxBufferedPosts: {w}")))?
        {
            x.max_buffered_posts = hi;
        }
        x.no_sse_header = e.get("noSSEHeader").is_some_and(|v| v.as_bool().unwrap_or(false));
    }
    Ok(Transport::Xhttp(x))
}

/// One of Xray's `RandRangeConfig` values: a number, `"a-b"`, `"a"`, or `{"from":a,"to":b}`;
/// `None` when absent, null or ending at 0 (Xray then uses its default).
fn rand_range(v: Option<&serde_json::Value>) -> Result<Option<(u32, u32)>, String> {
    let num = |v: &serde_json::Value| -> Result<u32, String> {
        match v {
            serde_json::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            serde_json::Value::String(t) => t.trim().parse().ok(),
            _ => None,
        }
        .ok_or_else(|| format!("{v} is not a count"))
    };
    let (lo, hi) = match v {
        None | Some(serde_json::Value::Null) => return Ok(None),
        Some(serde_json::Value::String(t)) => match t.split_once('-') {
            Some((a, b)) => (
                num(&serde_json::Value::String(a.to_string()))?,
                num(&serde_json::Value::String(b.to_string()))?,
            ),
            None => {
                let n = num(&serde_json::Value::String(t.clone()))?;
                (n, n)
            }
        },
        Some(o @ serde_json::Value::Object(_)) => (
            o.get("from").map(num).transpose()?.unwrap_or(0),
            o.get("to").map(num).transpose()?.unwrap_or(0),
        ),
        Some(n) => {
            let n = num(n)?;
            (n, n)
        }
    };
    if lo > hi {
        return Err(format!("range {lo}-{hi} is backwards"));
    }
    Ok((hi != 0).then_some((lo, hi)))
}

/// xray's tcp `header` (`{"type":"http","request":{"path":[..]},"response":{..}}`) with
/// xray's defaults (path `/`, `HTTP/1.1 200 OK`, its five response headers); a header given as
/// a list answers with its first value.
fn tcp_http(header: Option<&serde_json::Value>) -> TcpHttpSettings {
    let strings = |v: Option<&serde_json::Value>| -> Vec<String> {
        match v {
            Some(serde_json::Value::String(s)) => vec![s.clone()],
            Some(serde_json::Value::Array(a)) => {
                a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect()
            }
            _ => Vec::new(),
        }
    };
    let req = header.and_then(|h| h.get("request"));
    let resp = header.and_then(|h| h.get("response"));
    let mut paths = strings(req.and_then(|r| r.get("path")));
    if paths.is_empty() {
        paths.push("/".to_string());
    }
    let field = |k: &str, d: &str| {
        resp.and_then(|r| r.get(k))
            .and_then(|v| v.as_str())
            .filter(|v| !v.is_empty())
            .unwrap_or(d)
            .to_string()
    };
    let status_line = format!(
        "HTTP/{} {} {}",
        field("version", "1.1"),
        field("status", "200"),
        field("reason", "OK")
    );
    let mut headers: Vec<String> = match resp.and_then(|r| r.get("headers")).and_then(|h| h.as_object()) {
        Some(map) if !map.is_empty() => {
            let mut names: Vec<&String> = map.keys().collect();
            names.sort();
            names
                .into_iter()
                .filter_map(|k| {
                    strings(map.get(k))
                        .into_iter()
                        .next()
                        .map(|v| format!("{k}: {v}"))
                })
                .collect()
        }
        _ => [
            "Content-Type: application/octet-stream",
            "Transfer-Encoding: chunked",
            "Connection: keep-alive",
            "Pragma: no-cache",
            "Cache-Control: private",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    };
    headers.retain(|h| !h.contains(['\r', '\n']));
    TcpHttpSettings {
        paths,
        status_line,
        headers,
    }
}

/// The VLESS flow every user of the node uses (spec §F.4); only Vision passes the build.
pub const VISION: &str = "xtls-rprx-vision";

fn vless_flow(info: &NodeInfo) -> String {
    info.flow.as_deref().map(str::trim).unwrap_or("").to_string()
}

/// REALITY for a VLESS or Trojan node with `tls: 2` (spec §F.3): dest = `dest` or `server_name`, with
/// `server_port`; one server name and one short id from the panel; no time check (xray leaves
/// `maxTimeDiff` unset).
pub fn reality_tls(info: &NodeInfo) -> Result<TlsSettings, BuildError> {
    let t = info
        .tls_settings
        .as_ref()
        .ok_or(BuildError::Reality("no tls_settings"))?;
    let dest = t
        .reality_dest()
        .ok_or(BuildError::Reality("no dest/server_name with a server_port"))?;
    let private_key = t
        .private_key
        .clone()
        .filter(|k| !k.trim().is_empty())
        .ok_or(BuildError::Reality("no private_key"))?;
    let server_names: Vec<String> = t
        .server_name
        .iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if server_names.is_empty() {
        return Err(BuildError::Reality("no server_name"));
    }
    Ok(TlsSettings {
        cert_mode: "reality".into(),
        server_name: server_names.first().cloned().unwrap_or_default(),
        reality: Some(RealitySettings {
            dest,
            server_names,
            private_key: private_key.trim().to_string(),
            short_ids: vec![t.short_id.clone().unwrap_or_default().trim().to_string()],
            xver: u8::try_from(t.xver).unwrap_or(0),
            max_time_diff_ms: 0,
        }),
        ..TlsSettings::default()
    })
}

/// The node's settings with the panel's `cert_config` applied when the local `CertConfig`
/// leaves `CertMode` unset (Xboard sends one per node, spec §2; the local file wins when it
/// says anything, `none` included). The panel's keys: `cert_mode` (`mode` in older rows)
/// `none|http|dns|tls|self|self-signed|file|content`, `domain`, `email`, `dns_provider`,
/// `dns_env`, `http_port`, `cert_file`, `key_file`, `cert_content`, `key_content`. Files the
/// panel does not name go to `cert_dir` (`<domain>.crt`/`.key`); `content` is written there
/// (key 0600), rewritten only when it changes. The local ACME directory, root CA and
/// listen address stay.
pub fn with_panel_cert<'a>(
    entry: &'a NodeEntry,
    info: &NodeInfo,
    cert_dir: &Path,
) -> Result<std::borrow::Cow<'a, NodeEntry>, BuildError> {
    use serde_json::Value;
    use std::borrow::Cow;
    if entry.cert.mode_set {
        return Ok(Cow::Borrowed(entry));
    }
    let Some(pc) = info.extra.get("cert_config").and_then(Value::as_object) else {
        return Ok(Cow::Borrowed(entry));
    };
    let s = |k: &str| {
        pc.get(k)
            .and_then(|v| match v {
                Value::String(s) => Some(s.trim().to_string()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .unwrap_or_default()
    };
    let raw = match s("cert_mode") {
        m if m.is_empty() => s("mode"),
        m => m,
    }
    .to_ascii_lowercase();
    let mode = match raw.as_str() {
        "" | "none" => return Ok(Cow::Borrowed(entry)),
        "http" => CertMode::Http,
        "dns" => CertMode::Dns,
        "tls" => CertMode::Tls,
        "self" | "self-signed" | "selfsigned" => CertMode::SelfSigned,
        "file" | "content" => CertMode::File,
        other => return Err(BuildError::PanelCert(format!("unknown cert_mode {other:?}"))),
    };
    let mut e = entry.clone();
    let c = &mut e.cert;
    c.cert_mode = mode;
    if !s("domain").is_empty() {
        c.cert_domain = s("domain");
    }
    if !s("email").is_empty() {
        c.email = s("email");
    }
    if !s("dns_provider").is_empty() {
        c.provider = s("dns_provider");
    }
    if let Some(env) = pc.get("dns_env").and_then(Value::as_object) {
        c.dns_env = env
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect();
    }
    if let Ok(port) = s("http_port").parse::<u16>() {
        if port != 0 {
            c.acme_http_listen = Some(SocketAddr::from(([0, 0, 0, 0], port)));
        }
    }
    let domain = c.cert_domain.trim().to_string();
    if domain.is_empty() && mode != CertMode::File {
        return Err(BuildError::PanelCert(format!("cert_mode {raw:?} needs a domain")));
    }
    // The file names: the panel's, else the local ones, else `<cert_dir>/<name>.crt/.key`.
    let name = if domain.is_empty() {
        format!("node-{}", info.server_port)
    } else {
        domain.clone()
    };
    let default = |ext: &str| {
        cert_dir
            .join(format!("{name}.{ext}"))
            .to_string_lossy()
            .into_owned()
    };
    for (field, key, ext) in [
        (&mut c.cert_file, "cert_file", "crt"),
        (&mut c.key_file, "key_file", "key"),
    ] {
        if !s(key).is_empty() {
            *field = s(key);
        } else if field.trim().is_empty() || raw == "content" {
            *field = default(ext);
        }
    }
    if raw == "content" {
        // PEM as the panel holds it (not trimmed: a PEM file ends with a newline).
        let raw_str = |k: &str| pc.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let (cert_pem, key_pem) = (raw_str("cert_content"), raw_str("key_content"));
        if cert_pem.trim().is_empty() || key_pem.trim().is_empty() {
            return Err(BuildError::PanelCert(
                "cert_mode \"content\" needs cert_content and key_content".into(),
            ));
        }
        write_if_changed(cert_dir, Path::new(&c.cert_file), cert_pem.as_bytes(), 0o644)?;
        write_if_changed(cert_dir, Path::new(&c.key_file), key_pem.as_bytes(), 0o600)?;
    } else if c.cert_file.starts_with(cert_dir.to_string_lossy().as_ref()) {
        // ACME and self-signed write their files here: the directory must exist.
        std::fs::create_dir_all(cert_dir)
            .map_err(|e| BuildError::PanelCert(format!("{}: {e}", cert_dir.display())))?;
    }
    Ok(Cow::Owned(e))
}

/// Writes `data` to `path` (in `dir`, created 0700) unless it already holds exactly that.
fn write_if_changed(dir: &Path, path: &Path, data: &[u8], mode: u32) -> Result<(), BuildError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let err = |e: std::io::Error| BuildError::PanelCert(format!("{}: {e}", path.display()));
    if std::fs::read(path).is_ok_and(|old| old == data) {
        return Ok(());
    }
    match std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) => return Err(err(e)),
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(err)?;
    std::io::Write::write_all(&mut f, data).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// `CertFile`/`KeyFile` with the `{domain}`/`{email}` placeholders filled in.
fn cert_path(template: &str, cert: &CertConfig) -> String {
    template
        .replace("{domain}", cert.cert_domain.trim())
        .replace("{email}", cert.email.trim())
}

/// The data plane's TLS for a node that needs TLS: `None` when TLS is terminated in front of
/// v2sp (`CertMode: none`); files for `file`; a self-signed pair (written if missing) for
/// `self`; an ACME certificate (ordered when missing or within 30 days of expiry, at most
/// [`crate::acme::ORDER_TIME`], plus the propagation timeout for DNS-01) for `http` and
/// `dns`. `tls` (TLS-ALPN-01) is answered on the node's own port, so its order runs once the
/// node listens (the node worker's certificate check); until the first one, a short-lived
/// self-signed pair is served ([`crate::acme::placeholder_if_unusable`]).
pub fn node_tls(cert: &CertConfig, info: &NodeInfo) -> Result<Option<TlsSettings>, BuildError> {
    let mode = match cert.cert_mode {
        CertMode::None => return Ok(None),
        m => m.as_str(),
    };
    let cert_file = cert_path(&cert.cert_file, cert);
    let key_file = cert_path(&cert.key_file, cert);
    let mut acme_tls_alpn_file = String::new();
    match cert.cert_mode {
        CertMode::SelfSigned => ensure_self_signed(
            Path::new(&cert_file),
            Path::new(&key_file),
            cert.cert_domain.trim(),
        )?,
        CertMode::Http | CertMode::Dns => log_acme(
            &cert_file,
            crate::acme::ensure(cert, Path::new(&cert_file), Path::new(&key_file), None)
                .map_err(|e| BuildError::Acme(mode, e))?,
        ),
        CertMode::Tls => {
            crate::acme::placeholder_if_unusable(
                Path::new(&cert_file),
                Path::new(&key_file),
                cert.cert_domain.trim(),
            )
            .map_err(BuildError::TlsAlpn)?;
            acme_tls_alpn_file = crate::acme::tlsalpn::challenge_file(Path::new(&cert_file))
                .to_string_lossy()
                .into_owned();
        }
        CertMode::None | CertMode::File => {}
    }
    let server_name = info
        .tls_settings
        .as_ref()
        .and_then(|t| t.server_name.clone())
        .or_else(|| info.server_name.clone())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| cert.cert_domain.trim().to_string());
    Ok(Some(TlsSettings {
        cert_mode: mode.to_string(),
        cert_file,
        key_file,
        server_name,
        reject_unknown_sni: cert.reject_unknown_sni,
        alpn: Vec::new(),
        reality: None,
        acme_tls_alpn_file,
    }))
}

/// Logs what [`crate::acme::ensure`] did (an order that failed while an older certificate
/// is still there is a warning: that one keeps being served).
pub fn log_acme(cert_file: &str, outcome: crate::acme::Outcome) {
    use crate::acme::Outcome;
    match outcome {
        Outcome::Current { days_left } => {
            tracing::debug!(cert = cert_file, days_left, "ACME certificate is current")
        }
        Outcome::Issued { days_left } => {
            tracing::info!(cert = cert_file, days_left, "ACME certificate obtained")
        }
        Outcome::Kept { days_left, error } => tracing::warn!(
            cert = cert_file,
            days_left,
            %error,
            "ACME renewal failed; serving the existing certificate until a renewal succeeds"
        ),
    }
}

/// Writes a self-signed certificate for `domain` (and its key, mode 0600) unless both files
/// exist already (a restart keeps the same certificate, so pinned clients keep working).
///
/// Nodes sync on their own threads and often share one certificate path: generation is
/// serialised process-wide and re-checked under the lock, or two nodes would each write a
/// pair and leave one's certificate next to the other's key. Each file is written under a
/// temporary name and renamed, so the data plane never loads a half-written file.
pub fn ensure_self_signed(cert_file: &Path, key_file: &Path, domain: &str) -> Result<(), BuildError> {
    static GENERATE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _g = GENERATE.lock().unwrap_or_else(|p| p.into_inner());
    if cert_file.exists() && key_file.exists() {
        return Ok(());
    }
    let err = |e: &dyn std::fmt::Display| BuildError::SelfSigned(e.to_string());
    let names = vec![if domain.is_empty() {
        "localhost".to_string()
    } else {
        domain.to_string()
    }];
    let pair = rcgen::generate_simple_self_signed(names).map_err(|e| err(&e))?;
    crate::certfiles::write_pair(
        cert_file,
        &pair.cert.pem(),
        key_file,
        &pair.signing_key.serialize_pem(),
    )
    .map_err(|e| err(&e))
}

/// Panel users → table entries. Users whose uuid cannot make a credential are skipped and
/// returned with the reason (logged by the caller; one bad user never blocks the others).
pub fn user_entries(kind: CredKind, users: &[PanelUser]) -> (Vec<UserEntry>, Vec<(u32, String)>) {
    let mut ok = Vec::with_capacity(users.len());
    let mut bad = Vec::new();
    for u in users {
        match secret_for(kind, &u.uuid) {
            Ok(secret) => ok.push(UserEntry {
                user_id: u.id,
                secret,
                speed_limit_mbps: u.speed_limit,
                device_limit: u.device_limit,
                alive_elsewhere: 0,
            }),
            Err(e) => bad.push((u.id, e.to_string())),
        }
    }
    (ok, bad)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use std::path::Path;

    fn entry(node_type: &str) -> NodeEntry {
        let text = format!(
            r#"{{"Nodes":[{{"ApiHost":"http://127.0.0.1:1","ApiKey":"k","NodeID":1,"NodeType":"{node_type}","LimitConfig":{{"SpeedLimit":50}}}}]}}"#
        );
        v2sp_shared::config::parse_str(&text, Path::new("t.json"))
            .unwrap()
            .config
            .nodes
            .remove(0)
    }

    fn info(json: &str) -> NodeInfo {
        NodeInfo::decode(json.as_bytes()).unwrap()
    }

    /// Xboard's `routes` (the spec's example, a wildcard, a comma string as seed panels send,
    /// a broken regex, a dns and a direct route): block entries normalized, the rest dropped.
    #[test]
    fn block_routes_become_normalized_rules() {
        let i = info(
            r#"{"protocol":"shadowsocks","server_port":8388,"cipher":"aes-128-gcm","routes":[
                {"id":1,"match":["regexp:(.+\\.|^)example\\.(com|net)","protocol:bittorrent"],"action":"block","action_value":""},
                {"id":2,"match":"*.google.com,10.0.0.0/8","action":"block"},
                {"id":3,"match":["regexp:(unclosed"],"action":"block"},
                {"id":4,"match":["geosite:cn"],"action":"dns","action_value":"223.5.5.5"},
                {"id":5,"match":["x.com"],"action":"direct"}]}"#,
        );
        let c = node_config(3, "t", &entry(""), &i).unwrap();
        let got: Vec<(i64, &str)> = c.block_rules.iter().map(|b| (b.id, b.pattern.as_str())).collect();
        assert_eq!(
            got,
            [
                (1, "regexp:(.+\\.|^)example\\.(com|net)"),
                (1, "protocol:bittorrent"),
                (2, "domain:google.com"),
                (2, "cidr:10.0.0.0/8"),
            ]
        );
    }

    /// `dns` routes: names + server (port 53 by default); `main`, DoH URLs and geo lists
    /// are skipped.
    #[test]
    fn dns_routes_from_the_panel() {
        let i = info(
            r#"{"protocol":"shadowsocks","server_port":8388,"cipher":"aes-128-gcm","routes":[
                {"id":1,"match":["domain:netflix.com","nflxvideo","geosite:netflix"],"action":"dns","action_value":"10.0.0.53"},
                {"id":2,"match":["full:a.io"],"action":"dns","action_value":"127.0.0.1:5353"},
                {"id":3,"match":["x.io"],"action":"dns","action_value":"https://dns.example/dns-query"},
                {"id":4,"match":["main","{\"servers\":[]}"],"action":"dns","action_value":""}]}"#,
        );
        let c = node_config(3, "t", &entry(""), &i).unwrap();
        assert_eq!(
            c.dns_routes,
            [
                DnsRoute {
                    id: 1,
                    domains: vec!["domain:netflix.com".into(), "keyword:nflxvideo".into()],
                    server: "10.0.0.53:53".parse().unwrap(),
                },
                DnsRoute {
                    id: 2,
                    domains: vec!["full:a.io".into()],
                    server: "127.0.0.1:5353".parse().unwrap(),
                },
            ]
        );
        assert!(c.block_rules.is_empty());
    }

    #[test]
    fn shadowsocks_2022_from_xboard_reply() {
        let i = info(
            r#"{"protocol":"shadowsocks","server_port":"8388","cipher":"2022-blake3-aes-128-gcm","server_key":"AAAAAAAAAAAAAAAAAAAAAA=="}"#,
        );
        let c = node_config(3, "t", &entry(""), &i).unwrap();
        assert_eq!(c.port, 8388);
        assert_eq!(c.cred_kind, CredKind::Ss2022Psk16);
        assert_eq!(c.speed_limit_mbps, 50);
        assert_eq!(c.shadowsocks.unwrap().server_key, "AAAAAAAAAAAAAAAAAAAAAA==");
    }

    #[test]
    fn aes_2022_without_server_key_is_a_clear_error_chacha_is_fine() {
        let i = info(r#"{"server_port":1,"cipher":"2022-blake3-aes-256-gcm","server_key":null}"#);
        assert_eq!(
            node_config(0, "t", &entry("shadowsocks"), &i),
            Err(BuildError::NoServerKey("2022-blake3-aes-256-gcm".into()))
        );
        // Xboard's reply for the chacha variant.
        let i = info(r#"{"server_port":1,"cipher":"2022-blake3-chacha20-poly1305","server_key":null}"#);
        assert!(node_config(0, "t", &entry("shadowsocks"), &i).is_ok());
    }

    #[test]
    fn fallbacks_from_the_config_file_only_when_enabled() {
        let text = r#"{"Nodes":[{"ApiHost":"http://127.0.0.1:1","ApiKey":"k","NodeID":1,"NodeType":"vless",
            "EnableFallback":true,"FallBackConfigs":[{"SNI":"a.example","Path":"/ws","Dest":"8080","ProxyProtocolVer":2},{"Dest":"127.0.0.1:80"}]}]}"#;
        let mut e = v2sp_shared::config::parse_str(text, Path::new("t.json"))
            .unwrap()
            .config
            .nodes
            .remove(0);
        let i = info(r#"{"protocol":"vless","server_port":443,"tls":0}"#);
        let c = node_config(0, "t", &e, &i).unwrap();
        assert_eq!(
            c.fallbacks,
            vec![
                FallbackTarget {
                    sni: "a.example".into(),
                    alpn: String::new(),
                    path: "/ws".into(),
                    dest: "8080".into(),
                    xver: 2
                },
                FallbackTarget {
                    dest: "127.0.0.1:80".into(),
                    ..FallbackTarget::default()
                }
            ]
        );
        e.enable_fallback = false;
        assert!(node_config(0, "t", &e, &i).unwrap().fallbacks.is_empty());
        let fb = |alpn: &str| FallbackTarget {
            alpn: alpn.into(),
            dest: "80".into(),
            ..FallbackTarget::default()
        };
        assert!(fallback_alpn(&[fb("")]).is_empty());
        assert_eq!(fallback_alpn(&[fb("h2"), fb(""), fb("h2")]), ["h2", "http/1.1"]);
        assert_eq!(fallback_alpn(&[fb("http/1.1"), fb("h2")]), ["http/1.1", "h2"]);
    }

    #[test]
    fn aliases_and_unknown_ciphers() {
        assert_eq!(ss_cipher("AEAD_AES_128_GCM").unwrap().0, "aes-128-gcm");
        assert!(ss_cipher("rc4-md5").is_none());
        let i = info(r#"{"server_port":1,"cipher":"rc4-md5"}"#);
        assert!(matches!(
            node_config(0, "t", &entry("shadowsocks"), &i),
            Err(BuildError::BadCipher(_))
        ));
    }

    /// Issue 14: the panel's `cert_config` decides when the local file leaves `CertMode` unset,
    /// in the shapes Xboard sends (aliases, a numeric `http_port`, inline PEM).
    #[test]
    fn panel_cert_config_applies_when_the_local_mode_is_unset() {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        let panel = |cc: &str| info(&format!(r#"{{"server_port":443,"cert_config":{cc}}}"#));
        let local = entry("trojan");
        // No cert_config, or `none`: nothing changes.
        let i = info(r#"{"server_port":443}"#);
        assert!(matches!(
            with_panel_cert(&local, &i, &certs).unwrap(),
            std::borrow::Cow::Borrowed(_)
        ));
        let i = panel(r#"{"cert_mode":"none"}"#);
        assert_eq!(
            with_panel_cert(&local, &i, &certs).unwrap().cert.cert_mode,
            CertMode::None
        );
        // http with the panel's port and domain; files in the cert directory.
        let i = panel(r#"{"cert_mode":"http","domain":"n.example","email":"a@b.c","http_port":8080}"#);
        let e = with_panel_cert(&local, &i, &certs).unwrap();
        assert_eq!(e.cert.cert_mode, CertMode::Http);
        assert_eq!(e.cert.cert_domain, "n.example");
        assert_eq!(
            e.cert.acme_http_listen,
            Some(SocketAddr::from(([0, 0, 0, 0], 8080)))
        );
        assert_eq!(e.cert.cert_file, certs.join("n.example.crt").to_string_lossy());
        // `mode` (older rows) and the UI's `self-signed`: a certificate is made and served.
        let i = panel(r#"{"mode":"self-signed","domain":"s.example"}"#);
        let e = with_panel_cert(&local, &i, &certs).unwrap();
        assert_eq!(e.cert.cert_mode, CertMode::SelfSigned);
        let t = node_tls(&e.cert, &i).unwrap().unwrap();
        assert!(Path::new(&t.cert_file).exists() && Path::new(&t.key_file).exists());
        // Inline PEM: written once (key 0600), rewritten only on change, served as files.
        let (cert_pem, key_pem) = (
            std::fs::read_to_string(&t.cert_file).unwrap(),
            std::fs::read_to_string(&t.key_file).unwrap(),
        );
        let cc = serde_json::json!({"cert_mode": "content", "domain": "c.example", "cert_content": cert_pem, "key_content": key_pem});
        let i = panel(&cc.to_string());
        let e = with_panel_cert(&local, &i, &certs).unwrap();
        assert_eq!(e.cert.cert_mode, CertMode::File);
        assert_eq!(std::fs::read_to_string(&e.cert.key_file).unwrap(), key_pem);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&e.cert.key_file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(node_tls(&e.cert, &i).unwrap().is_some());
        // Broken shapes are refused with a clear error, the node keeps its last config.
        let i = panel(r#"{"cert_mode":"acme-magic","domain":"x"}"#);
        assert!(with_panel_cert(&local, &i, &certs)
            .unwrap_err()
            .to_string()
            .contains("acme-magic"));
        let i = panel(r#"{"cert_mode":"http"}"#);
        assert!(with_panel_cert(&local, &i, &certs)
            .unwrap_err()
            .to_string()
            .contains("domain"));
        let i = panel(r#"{"cert_mode":"content","domain":"c"}"#);
        assert!(with_panel_cert(&local, &i, &certs).is_err());
        // A local CertMode (here `self`) wins over the panel.
        let mine = tls_entry("trojan", "self", dir.path());
        let i = panel(r#"{"cert_mode":"http","domain":"n.example"}"#);
        assert_eq!(
            with_panel_cert(&mine, &i, &certs).unwrap().cert.cert_mode,
            CertMode::SelfSigned
        );
    }

    fn tls_entry(node_type: &str, mode: &str, dir: &Path) -> NodeEntry {
        let text = format!(
            r#"{{"Nodes":[{{"ApiHost":"http://127.0.0.1:1","ApiKey":"k","NodeID":1,"NodeType":"{node_type}",
            "CertConfig":{{"CertMode":"{mode}","CertDomain":"node.example","CertFile":"{d}/{{domain}}.crt","KeyFile":"{d}/{{domain}}.key"}}}}]}}"#,
            d = dir.display()
        );
        v2sp_shared::config::parse_str(&text, Path::new("t.json"))
            .unwrap()
            .config
            .nodes
            .remove(0)
    }

    #[test]
    fn concurrent_nodes_sharing_a_certificate_path_get_one_pair() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("d.crt"), dir.path().join("d.key"));
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| ensure_self_signed(&c, &k, "d.test").unwrap());
            }
        });
        let (cert, key) = (std::fs::read(&c).unwrap(), std::fs::read(&k).unwrap());
        // Generated exactly once: every later call keeps both files byte for byte.
        ensure_self_signed(&c, &k, "d.test").unwrap();
        assert_eq!(std::fs::read(&c).unwrap(), cert);
        assert_eq!(std::fs::read(&k).unwrap(), key);
        assert!(
            std::fs::read_dir(dir.path()).unwrap().count() == 2,
            "no temporary files left"
        );
    }

    #[test]
    fn cert_mode_dns_without_provider_settings_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let cert = CertConfig {
            cert_mode: CertMode::Dns,
            cert_domain: "node.example".into(),
            provider: "rfc2136".into(),
            cert_file: dir.path().join("a.crt").display().to_string(),
            key_file: dir.path().join("a.key").display().to_string(),
            // Unreachable: the provider's settings are checked before the CA is asked.
            acme_directory: "http://127.0.0.1:9/dir".into(),
            ..CertConfig::default()
        };
        let e = node_tls(&cert, &info(r#"{"server_port":443}"#)).unwrap_err();
        assert!(matches!(e, BuildError::Acme("dns", _)), "{e}");
        assert!(e.to_string().contains("DNSEnv needs RFC2136_NAMESERVER"), "{e}");
    }

    #[test]
    fn cert_mode_tls_serves_a_placeholder_and_names_the_challenge_file() {
        let dir = tempfile::tempdir().unwrap();
        let cert = CertConfig {
            cert_mode: CertMode::Tls,
            cert_domain: "node.example".into(),
            cert_file: dir.path().join("{domain}.crt").display().to_string(),
            key_file: dir.path().join("{domain}.key").display().to_string(),
            ..CertConfig::default()
        };
        let t = node_tls(&cert, &info(r#"{"server_port":443}"#)).unwrap().unwrap();
        assert_eq!(t.cert_mode, "tls");
        assert!(Path::new(&t.cert_file).exists() && Path::new(&t.key_file).exists());
        assert_eq!(
            t.acme_tls_alpn_file,
            dir.path()
                .join("acme/node.example.crt.tls-alpn-01.pem")
                .display()
                .to_string()
        );
        assert!(crate::acme::renewal_due(
            Path::new(&t.cert_file),
            Path::new(&t.key_file)
        ));
    }

    #[test]
    fn trojan_self_signed_is_generated_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let e = tls_entry("trojan", "self", dir.path());
        let c = node_config(1, "t", &e, &info(r#"{"server_port":443}"#)).unwrap();
        assert_eq!(c.cred_kind, CredKind::TrojanSha224);
        let tls = c.tls.unwrap();
        assert_eq!(
            tls.cert_file,
            format!("{}/node.example.crt", dir.path().display())
        );
        assert_eq!(tls.server_name, "node.example");
        let pem = std::fs::read(&tls.cert_file).unwrap();
        assert!(pem.starts_with(b"-----BEGIN CERTIFICATE-----"));
        // A second build keeps the same certificate.
        node_config(1, "t", &e, &info(r#"{"server_port":443}"#)).unwrap();
        assert_eq!(std::fs::read(&tls.cert_file).unwrap(), pem);
    }

    #[test]
    fn vless_tls_follows_the_panel_and_cert_mode() {
        let dir = tempfile::tempdir().unwrap();
        let e = tls_entry("vless", "self", dir.path());
        let plain = node_config(1, "t", &e, &info(r#"{"server_port":443,"tls":0}"#)).unwrap();
        assert!(plain.tls.is_none());
        assert_eq!(plain.cred_kind, CredKind::VlessUuid);
        let i = info(r#"{"server_port":443,"tls":1,"tls_settings":{"server_name":"sni.example"}}"#);
        let c = node_config(1, "t", &e, &i).unwrap();
        assert_eq!(c.tls.unwrap().server_name, "sni.example");
        // CertMode none: TLS is terminated in front of v2sp.
        let none = node_config(1, "t", &entry("trojan"), &info(r#"{"server_port":443}"#)).unwrap();
        assert!(none.tls.is_none());
    }

    #[test]
    fn anytls_maps_from_the_panel() {
        let dir = tempfile::tempdir().unwrap();
        let e = tls_entry("anytls", "self", dir.path());
        // Xboard/wyx2685 shape: server_name, tls_settings, padding_scheme; unknown keys tolerated.
        let i = info(
            r#"{"server_port":443,"server_name":"a.example","tls_settings":{"server_name":"b.example"},
                "padding_scheme":["stop=2"," 0=30-30 ","","1=100-200"],"network":"ws","custom_x":1}"#,
        );
        let c = node_config(1, "t", &e, &i).unwrap();
        assert_eq!(c.protocol, Protocol::Anytls);
        assert_eq!(c.cred_kind, CredKind::Sha256Password);
        assert_eq!(c.tls.as_ref().unwrap().server_name, "b.example");
        assert_eq!(c.transport, Transport::Tcp);
        assert_eq!(c.padding_scheme, vec!["stop=2", "0=30-30", "1=100-200"]);
        // No padding_scheme: empty (the data plane's default); server_name alone is the SNI.
        let c = node_config(
            1,
            "t",
            &e,
            &info(r#"{"server_port":443,"server_name":"a.example"}"#),
        )
        .unwrap();
        assert!(c.padding_scheme.is_empty());
        assert_eq!(c.tls.unwrap().server_name, "a.example");
        // The panel's protocol name selects it too.
        let c = node_config(
            1,
            "t",
            &entry(""),
            &info(r#"{"protocol":"anytls","server_port":443}"#),
        )
        .unwrap();
        assert_eq!(c.protocol, Protocol::Anytls);
    }

    #[test]
    fn hysteria2_maps_from_the_panel() {
        let dir = tempfile::tempdir().unwrap();
        let e = tls_entry("hysteria2", "self", dir.path());
        // Xboard shape: type `hysteria`, version 2, bandwidths, obfs null.
        let i = info(
            r#"{"protocol":"hysteria","version":2,"server_port":443,"server_name":"h.example",
                "up_mbps":100,"down_mbps":"200","obfs":null,"obfs-password":null}"#,
        );
        let c = node_config(1, "t", &e, &i).unwrap();
        assert_eq!(c.protocol, Protocol::Hysteria2);
        assert_eq!(c.cred_kind, CredKind::Sha256Password);
        let tls = c.tls.as_ref().unwrap();
        assert_eq!(tls.server_name, "h.example");
        assert_eq!(tls.alpn, vec!["h3"]);
        assert_eq!(
            c.hysteria2,
            Some(Hysteria2Settings {
                up_mbps: 100,
                down_mbps: 200,
                ..Hysteria2Settings::default()
            })
        );
        // wyx2685: ignore_client_bandwidth; `plain` obfs is none; no version = 2.
        let i = info(r#"{"server_port":443,"ignore_client_bandwidth":true,"obfs":"plain"}"#);
        let c = node_config(1, "t", &e, &i).unwrap();
        assert!(c.hysteria2.unwrap().ignore_client_bandwidth);
        // Other protocols carry no Hysteria 2 settings.
        let a = node_config(1, "t", &tls_entry("anytls", "self", dir.path()), &i).unwrap();
        assert_eq!(a.hysteria2, None);
    }

    #[test]
    fn tuic_maps_from_the_panel_and_refuses_what_it_cannot_serve() {
        let dir = tempfile::tempdir().unwrap();
        let e = tls_entry("tuic", "self", dir.path());
        // Xboard shape: version 5, congestion control, its constants.
        let i = info(
            r#"{"protocol":"tuic","version":5,"server_port":443,"server_name":"t.example",
                "congestion_control":"bbr","auth_timeout":"3s","zero_rtt_handshake":false,
                "heartbeat":"3s"}"#,
        );
        let c = node_config(1, "t", &e, &i).unwrap();
        assert_eq!(c.protocol, Protocol::Tuic);
        assert_eq!(c.cred_kind, CredKind::VlessUuid);
        assert_eq!(c.tls.as_ref().unwrap().alpn, vec!["h3"]);
        assert_eq!(
            c.tuic,
            Some(TuicSettings {
                congestion_control: "bbr".into(),
                heartbeat_ms: 3000,
                zero_rtt_handshake: false
            })
        );
        // Nothing but the port: cubic, 3 s.
        let c = node_config(1, "t", &e, &info(r#"{"server_port":443}"#)).unwrap();
        assert_eq!(c.tuic, Some(TuicSettings::default()));
        let c = node_config(1, "t", &e, &info(r#"{"server_port":443,"heartbeat":"500ms"}"#)).unwrap();
        assert_eq!(c.tuic.unwrap().heartbeat_ms, 500);
        let refused = |json: &str| match node_config(1, "t", &e, &info(json)) {
            Err(BuildError::Tuic(why)) => why,
            other => panic!("{json}: {other:?}"),
        };
        assert!(refused(r#"{"server_port":443,"version":4}"#).contains("v5"));
        assert!(refused(r#"{"server_port":443,"congestion_control":"brutal"}"#).contains("brutal"));
        assert!(refused(r#"{"server_port":443,"heartbeat":"soon"}"#).contains("heartbeat"));
        assert!(refused(r#"{"server_port":443,"heartbeat":"0s"}"#).contains("heartbeat"));
        // QUIC always needs a certificate.
        let none = tls_entry("tuic", "none", dir.path());
        assert!(matches!(
            node_config(1, "t", &none, &info(r#"{"server_port":443}"#)),
            Err(BuildError::Tuic(_))
        ));
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration_ms("3s"), Some(3000));
        assert_eq!(go_duration_ms("\"10s\""), Some(10_000));
        assert_eq!(go_duration_ms("250ms"), Some(250));
        assert_eq!(go_duration_ms("1m"), Some(60_000));
        assert_eq!(go_duration_ms("1.5s"), Some(1500));
        assert_eq!(go_duration_ms("5"), Some(5000));
        assert_eq!(go_duration_ms("2h"), None);
        assert_eq!(go_duration_ms("-1s"), None);
        assert_eq!(go_duration_ms("99999m"), None);
    }

    #[test]
    fn hysteria2_refuses_what_it_cannot_serve() {
        let dir = tempfile::tempdir().unwrap();
        let e = tls_entry("hysteria2", "self", dir.path());
        let refused = |json: &str, e: &NodeEntry| match node_config(1, "t", e, &info(json)) {
            Err(BuildError::Hysteria2(why)) => why,
            other => panic!("{json}: {other:?}"),
        };
        assert!(refused(r#"{"server_port":443,"version":1}"#, &e).contains("v1"));
        for no_password in [
            r#"{"server_port":443,"obfs":"salamander"}"#,
            r#"{"server_port":443,"obfs":"salamander","obfs-password":""}"#,
            r#"{"server_port":443,"obfs":"Salamander","obfs-password":null}"#,
        ] {
            assert!(
                refused(no_password, &e).contains("without obfs-password"),
                "{no_password}"
            );
        }
        assert!(
            refused(r#"{"server_port":443,"obfs":"xor","obfs-password":"x"}"#, &e)
                .contains("unsupported obfuscation")
        );
        let none = tls_entry("hysteria2", "none", dir.path());
        assert!(refused(r#"{"server_port":443}"#, &none).contains("CertMode none"));
        let tls_alpn = tls_entry("hysteria2", "tls", dir.path());
        assert!(refused(r#"{"server_port":443}"#, &tls_alpn).contains("TLS-ALPN-01"));
    }

    #[test]
    fn hysteria2_obfuscation_from_the_panel() {
        let dir = tempfile::tempdir().unwrap();
        let e = tls_entry("hysteria2", "self", dir.path());
        let obfs = |json: &str| {
            let h = node_config(1, "t", &e, &info(json)).unwrap().hysteria2.unwrap();
            (h.obfs, h.obfs_password)
        };
        let none = (String::new(), String::new());
        let salamander = |p: &str| ("salamander".to_string(), p.to_string());
        // Xboard with obfuscation on: the type and its password (used as sent, not trimmed).
        assert_eq!(
            obfs(r#"{"server_port":443,"obfs":"salamander","obfs-password":" s3cret"}"#),
            salamander(" s3cret")
        );
        assert_eq!(
            obfs(r#"{"server_port":443,"obfs":" SALAMANDER ","obfs-password":"pw"}"#),
            salamander("pw")
        );
        // v2sp mid-history spelling of the password.
        assert_eq!(
            obfs(r#"{"server_port":443,"obfs":"salamander","obfs_password":"pw"}"#),
            salamander("pw")
        );
        // Xboard with obfuscation off still sends its password: none.
        assert_eq!(
            obfs(r#"{"server_port":443,"obfs":null,"obfs-password":"pw"}"#),
            none
        );
        assert_eq!(
            obfs(r#"{"server_port":443,"obfs":"plain","obfs-password":"pw"}"#),
            none
        );
        assert_eq!(obfs(r#"{"server_port":443,"obfs":""}"#), none);
        assert_eq!(obfs(r#"{"server_port":443}"#), none);
        // sing-box's reading: a lone obfs is the Salamander password, kept as written.
        assert_eq!(
            obfs(r#"{"server_port":443,"obfs":"Secret"}"#),
            salamander("Secret")
        );
    }

    #[test]
    fn reality_maps_from_the_panel() {
        // Xboard style: no dest (server_name), string server_port, one short id.
        let i = info(
            r#"{"server_port":443,"tls":2,"tls_settings":{"server_name":"www.example.com",
                "server_port":"8443","private_key":"UuMBgl7MXTPx9inmQp2UC7Jcnwc6XYbwDNebonM-FCc",
                "short_id":"0123abcd","xver":"1"}}"#,
        );
        let c = node_config(1, "t", &entry("vless"), &i).unwrap();
        let r = c.tls.unwrap().reality.unwrap();
        assert_eq!(r.dest, "www.example.com:8443");
        assert_eq!(r.server_names, vec!["www.example.com".to_string()]);
        assert_eq!(r.short_ids, vec!["0123abcd".to_string()]);
        assert_eq!(r.xver, 1);
        assert_eq!(r.max_time_diff_ms, 0);
        assert!(c.flow.is_empty());
        // A Trojan node with `tls: 2` is served over REALITY with the same settings.
        let t = node_config(1, "t", &entry("trojan"), &i).unwrap();
        assert_eq!(t.tls.unwrap().reality.unwrap().dest, "www.example.com:8443");
        // dest wins over server_name; a numeric port works too.
        let i = info(
            r#"{"server_port":443,"tls":2,"tls_settings":{"server_name":"a.example","dest":"127.0.0.1",
                "server_port":9443,"private_key":"UuMBgl7MXTPx9inmQp2UC7Jcnwc6XYbwDNebonM-FCc"}}"#,
        );
        let r = node_config(1, "t", &entry("vless"), &i)
            .unwrap()
            .tls
            .unwrap()
            .reality
            .unwrap();
        assert_eq!(r.dest, "127.0.0.1:9443");
        assert_eq!(r.short_ids, vec![String::new()]);
        let i = info(
            r#"{"server_port":443,"tls":2,"tls_settings":{"server_name":"a.example","server_port":"1"}}"#,
        );
        assert_eq!(
            node_config(1, "t", &entry("vless"), &i),
            Err(BuildError::Reality("no private_key"))
        );
    }

    #[test]
    fn unserved_transports_flows_and_reality_are_clear_errors() {
        let i = info(r#"{"server_port":443,"network":"kcp"}"#);
        assert_eq!(
            node_config(1, "t", &entry("trojan"), &i),
            Err(BuildError::TransportNotServedYet("kcp".into()))
        );
        let i = info(r#"{"server_port":443,"flow":"xtls-rprx-vision"}"#);
        assert_eq!(
            node_config(1, "t", &entry("vless"), &i),
            Err(BuildError::NotServedYet("VLESS flow without TLS or REALITY"))
        );
        let i = info(r#"{"server_port":443,"flow":"xtls-rprx-splice"}"#);
        assert!(matches!(
            node_config(1, "t", &entry("vless"), &i),
            Err(BuildError::FlowNotServedYet(_))
        ));
        let i = info(r#"{"server_port":443,"tls":2}"#);
        assert_eq!(
            node_config(1, "t", &entry("vless"), &i),
            Err(BuildError::Reality("no tls_settings"))
        );
        // Trojan with tls 2 is REALITY too, and needs its settings.
        assert_eq!(
            node_config(1, "t", &entry("trojan"), &i),
            Err(BuildError::Reality("no tls_settings"))
        );
        let i = info(r#"{"server_port":443,"encryption":"mlkem768x25519plus"}"#);
        assert_eq!(
            node_config(1, "t", &entry("vless"), &i),
            Err(BuildError::NotServedYet("VLESS encryption"))
        );
        let i = info(r#"{"server_port":443,"encryption":"none"}"#);
        assert!(node_config(1, "t", &entry("vless"), &i).is_ok());
    }

    #[test]
    fn vmess_follows_the_panel_tls_and_network() {
        let dir = tempfile::tempdir().unwrap();
        let plain = node_config(1, "t", &entry("vmess"), &info(r#"{"server_port":1}"#)).unwrap();
        assert_eq!(plain.cred_kind, CredKind::VmessUuid);
        assert!(plain.tls.is_none());
        let e = tls_entry("vmess", "self", dir.path());
        let i = info(r#"{"server_port":443,"tls":1,"tls_settings":{"server_name":"v.example"}}"#);
        assert!(node_config(1, "t", &e, &i).unwrap().tls.is_some());
        let i = info(r#"{"server_port":443,"tls":2}"#);
        assert_eq!(
            node_config(1, "t", &entry("vmess"), &i),
            Err(BuildError::NotServedYet("REALITY"))
        );
        // Transports apply to VMess as to Trojan and VLESS.
        let i = info(r#"{"server_port":443,"network":"ws","networkSettings":{"path":"/v"}}"#);
        assert!(matches!(
            node_config(1, "t", &entry("vmess"), &i).map(|c| c.transport),
            Ok(Transport::Ws(_))
        ));
        let i = info(r#"{"server_port":443,"network":"kcp"}"#);
        assert_eq!(
            node_config(1, "t", &entry("vmess"), &i),
            Err(BuildError::TransportNotServedYet("kcp".into()))
        );
    }

    #[test]
    fn grpc_from_panel_network_settings() {
        let t = |j: &str| node_config(1, "t", &entry("trojan"), &info(j)).map(|c| c.transport);
        let g = |name: &str, multi: bool| {
            Ok(Transport::Grpc(GrpcSettings {
                service_name: name.into(),
                multi_mode: multi,
            }))
        };
        // Xboard / v2board: xray's grpcSettings object.
        assert_eq!(
            t(r#"{"server_port":1,"network":"grpc","networkSettings":{"serviceName":"gun"}}"#),
            g("gun", false)
        );
        assert_eq!(
            t(
                r#"{"server_port":1,"network":"grpc","networkSettings":{"serviceName":" /a/b/Tun|TunM ","multiMode":true}}"#
            ),
            g("/a/b/Tun|TunM", true)
        );
        // Tolerated: snake case, a string bool, null settings.
        assert_eq!(
            t(
                r#"{"server_port":1,"network":"grpc","networkSettings":{"service_name":"s","multi_mode":"true"}}"#
            ),
            g("s", true)
        );
        assert_eq!(
            t(r#"{"server_port":1,"network":"grpc","networkSettings":null}"#),
            g("", false)
        );
        // VMess and VLESS too; a TLS node offers h2.
        let i = info(r#"{"server_port":443,"network":"grpc","networkSettings":{"serviceName":"v"}}"#);
        assert_eq!(
            node_config(1, "t", &entry("vmess"), &i).map(|c| c.transport),
            g("v", false)
        );
        let dir = tempfile::tempdir().unwrap();
        let e = tls_entry("trojan", "self", dir.path());
        let c = node_config(1, "t", &e, &i).unwrap();
        assert_eq!(c.tls.unwrap().alpn, vec!["h2".to_string()]);
    }

    #[test]
    fn xhttp_from_panel_network_settings() {
        let t = |j: &str| node_config(1, "t", &entry("vless"), &info(j)).map(|c| c.transport);
        assert_eq!(
            t(r#"{"server_port":1,"network":"xhttp"}"#),
            Ok(Transport::Xhttp(XhttpSettings::default()))
        );
        let Ok(Transport::Xhttp(x)) = t(
            r#"{"server_port":1,"network":"xhttp","networkSettings":{"path":"x/y?ed=1","host":" h.example ","mode":"packet-up",
                "extra":{"xPaddingBytes":"10-20","scMaxEachPostBytes":500000,"scMaxBufferedPosts":{"from":5,"to":8},
                "noSSEHeader":true,"xmux":{"maxConcurrency":"16-32"}}}}"#,
        ) else {
            panic!("xhttp")
        };
        assert_eq!(
            (x.path.as_str(), x.host.as_str(), x.mode.as_str()),
            ("/x/y/", "h.example", "packet-up")
        );
        assert_eq!(
            (
                x.padding_min,
                x.padding_max,
                x.max_each_post_bytes,
                x.max_buffered_posts
            ),
            (10, 20, 500_000, 8)
        );
        assert!(x.no_sse_header);
        // `extra` as a JSON string, and a range ending at 0 keeps Xray's default.
        let Ok(Transport::Xhttp(x)) = t(
            r#"{"server_port":1,"network":"splithttp","networkSettings":{"path":"/p/","extra":"{\"xPaddingBytes\":0}"}}"#,
        ) else {
            panic!("xhttp")
        };
        assert_eq!(
            (x.path.as_str(), x.padding_min, x.padding_max),
            ("/p/", 100, 1000)
        );
        for bad in [
            r#"{"server_port":1,"network":"xhttp","networkSettings":{"mode":"stream-all"}}"#,
            r#"{"server_port":1,"network":"xhttp","networkSettings":{"extra":{"xPaddingBytes":"20-10"}}}"#,
            r#"{"server_port":1,"network":"xhttp","networkSettings":{"extra":{"scMaxEachPostBytes":"lots"}}}"#,
            r#"{"server_port":1,"network":"xhttp","networkSettings":{"extra":"{not json"}}"#,
        ] {
            assert!(
                matches!(t(bad), Err(BuildError::TransportNotServedYet(_))),
                "{bad}"
            );
        }
        // A Vision flow is dropped on XHTTP (there are no TLS records inside its requests).
        let i = info(r#"{"server_port":443,"network":"xhttp","flow":"xtls-rprx-vision","tls":1}"#);
        assert_eq!(
            node_config(1, "t", &entry("vless"), &i).map(|c| c.flow),
            Ok(String::new())
        );
    }

    #[test]
    fn transports_from_panel_network_settings() {
        let t = |j: &str| node_config(1, "t", &entry("vless"), &info(j)).map(|c| c.transport);
        assert_eq!(t(r#"{"server_port":1}"#), Ok(Transport::Tcp));
        assert_eq!(
            t(r#"{"server_port":1,"network":"tcp","networkSettings":{"header":{"type":"none"}}}"#),
            Ok(Transport::Tcp)
        );
        assert!(matches!(
            t(r#"{"server_port":1,"network":"tcp","networkSettings":{"header":{"type":"srtp"}}}"#),
            Err(BuildError::TransportNotServedYet(_))
        ));
        let Ok(Transport::TcpHttp(h)) =
            t(r#"{"server_port":1,"network":"tcp","networkSettings":{"header":{"type":"http"}}}"#)
        else {
            panic!("tcp http header")
        };
        assert_eq!(h.paths, vec!["/".to_string()]);
        assert_eq!(h.status_line, "HTTP/1.1 200 OK");
        assert_eq!(h.headers[0], "Content-Type: application/octet-stream");
        let Ok(Transport::TcpHttp(h)) = t(
            r#"{"server_port":1,"network":"tcp","networkSettings":{"header":{"type":"http",
              "request":{"path":["/a","/b"]},"response":{"status":"404","reason":"Not Found","headers":{"X":["1","2"],"A":"z"}}}}}"#,
        ) else {
            panic!("tcp http header")
        };
        assert_eq!(h.paths, vec!["/a".to_string(), "/b".to_string()]);
        assert_eq!(h.status_line, "HTTP/1.1 404 Not Found");
        assert_eq!(h.headers, vec!["A: z".to_string(), "X: 1".to_string()]);
        assert_eq!(
            t(
                r#"{"server_port":1,"network":"ws","networkSettings":{"path":"/ray?ed=2048","headers":{"Host":"cdn.example"}}}"#
            ),
            Ok(Transport::Ws(HttpPathSettings {
                path: "/ray".into(),
                host: "cdn.example".into()
            }))
        );
        assert_eq!(
            t(r#"{"server_port":1,"network":"ws","networkSettings":null}"#),
            Ok(Transport::Ws(HttpPathSettings {
                path: "/".into(),
                host: String::new()
            }))
        );
        assert_eq!(
            t(
                r#"{"server_port":1,"network":"httpupgrade","networkSettings":{"path":"up","host":"h.example"}}"#
            ),
            Ok(Transport::HttpUpgrade(HttpPathSettings {
                path: "/up".into(),
                host: "h.example".into()
            }))
        );
        // A TLS node offers http/1.1 for the HTTP transports.
        let dir = tempfile::tempdir().unwrap();
        let e = tls_entry("trojan", "self", dir.path());
        let c = node_config(1, "t", &e, &info(r#"{"server_port":443,"network":"ws"}"#)).unwrap();
        assert_eq!(c.tls.unwrap().alpn, vec!["http/1.1".to_string()]);
        // Shadowsocks is always tcp.
        let i = info(r#"{"server_port":1,"cipher":"aes-128-gcm","network":"ws"}"#);
        assert_eq!(
            node_config(0, "t", &entry("shadowsocks"), &i).unwrap().transport,
            Transport::Tcp
        );
    }

    #[test]
    fn users_with_bad_uuids_are_skipped_not_fatal() {
        let users = vec![
            PanelUser {
                id: 1,
                uuid: "a7b4b8ab-42d7-4c48-a0c5-91fd4bd53c37".into(),
                speed_limit: 0,
                device_limit: 2,
            },
            PanelUser {
                id: 2,
                uuid: "short".into(),
                speed_limit: 0,
                device_limit: 0,
            },
        ];
        let (ok, bad) = user_entries(CredKind::Ss2022Psk32, &users);
        assert_eq!(ok.len(), 1);
        assert_eq!(bad[0].0, 2);
    }
}
