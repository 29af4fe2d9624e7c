//! Routing policy: where a user's connection goes (issue 14, "Routes and outbounds").
//!
//! Sources, in the order their rules are tried:
//! 1. the panel's `block` routes: the audit rules ([`crate::audit`]), checked first on every
//!    destination as the Go agents' dispatcher did, so no other rule can lift them;
//! 2. `custom_routes` (Xray rule objects, from the panel or the local `RouteConfigPath` file);
//! 3. the panel's `direct` and `proxy` routes, in panel order (`dns` routes choose the resolver
//!    of a direct connection, `crate::dpconfig::DnsRoute`, and are not rules here);
//! 4. nothing matched: the node's own direct (freedom) outbound.
//!
//! Outbounds come from `custom_outbounds` (Xray outbound objects, or the local
//! `OutboundConfigPath` file). A rule names one by tag; `direct` and `block` mean the node's
//! freedom outbound and a blackhole when no outbound carries those tags.
//!
//! Private destinations (loopback, RFC 1918, link-local, …) stay refused unless the rule that
//! matched names the destination (a domain or IP condition) and sends it to a direct or proxy
//! outbound: a catch-all rule (`network: "tcp,udp"` → X) does not open them.
//!
//! Everything here is pure: the control plane parses and validates (a bad rule or outbound is
//! skipped with one log line by the caller), the data plane compiles [`RouteTable`] once per
//! node config and asks [`RouteTable::decide`] per connection.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::audit::{in_network, AuditRules, Pattern, Target};

/// Caps on what a panel may make a node compile (the tables are per node, per core).
pub const MAX_RULES: usize = 1024;
pub const MAX_OUTBOUNDS: usize = 256;
pub const MAX_ENTRIES_PER_RULE: usize = 4096;
/// All entries of one node's rules together (the published config is bounded, 4 MiB for all
/// nodes).
pub const MAX_ENTRIES_PER_NODE: usize = 16384;

/// Where a rule sends a connection.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RouteTarget {
    /// The node's own freedom outbound (panel `direct`).
    Direct,
    /// Refused (panel routes never produce it: their `block` is the audit rules).
    Block,
    /// An outbound by tag (`outboundTag`, panel `proxy` with `action_value`).
    Tag(String),
}

/// One routing rule, validated and normalised (what the control plane publishes). Within a
/// condition any entry matches; all conditions given must match (Xray's semantics).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct RouteRule {
    /// For logs: `custom_routes[2]`, `route 5`, `route.json rules[0]`.
    pub name: String,
    /// Domain patterns in normal form (`Pattern::to_entry`).
    pub domain: Vec<String>,
    /// `ip/len` networks; `private` for Xray's `geoip:private`.
    pub ip: Vec<String>,
    /// The client's address (`source`): `ip/len` networks, `private`.
    pub source: Vec<String>,
    /// Destination ports, inclusive ranges.
    pub port: Vec<(u16, u16)>,
    /// `tcp`, `udp`; empty = both.
    pub network: Vec<String>,
    /// Sniffed protocol names (`http`, `tls`, `bittorrent`).
    pub protocol: Vec<String>,
    /// Users: the panel user id (decimal), or the uuid (also the `tag|uuid` email form).
    pub user: Vec<String>,
    /// Node tags (`inboundTag`).
    pub inbound_tag: Vec<String>,
    pub target: Option<RouteTarget>,
}

impl RouteRule {
    /// How many match entries the rule holds (for [`MAX_ENTRIES_PER_NODE`]).
    pub fn entries(&self) -> usize {
        self.domain.len()
            + self.ip.len()
            + self.source.len()
            + self.port.len()
            + self.protocol.len()
            + self.user.len()
            + self.inbound_tag.len()
    }
}

/// An outbound, validated (what the control plane publishes).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OutboundSpec {
    pub tag: String,
    pub kind: OutboundKind,
}

/// The outbound kinds the data plane dials.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "protocol")]
pub enum OutboundKind {
    /// Direct, with its own source address and DNS strategy (empty = the node's).
    Freedom {
        send_through: String,
        domain_strategy: String,
    },
    Blackhole,
    /// SOCKS5 CONNECT (RFC 1928), optional username/password (RFC 1929).
    Socks {
        server: String,
        user: String,
        pass: String,
    },
    /// HTTP CONNECT, optional basic authorization.
    Http {
        server: String,
        user: String,
        pass: String,
    },
    /// Shadowsocks (AEAD 2017 and 2022 methods); `password` is the 2022 base64 key(s), the
    /// `iPSK:uPSK` form included.
    Shadowsocks {
        server: String,
        method: String,
        password: String,
    },
    /// VMess (AEAD header) over plain TCP; `security`: `aes-128-gcm`, `chacha20-poly1305` or
    /// `none` (`auto` is read as `aes-128-gcm`).
    Vmess {
        server: String,
        uuid: String,
        security: String,
        #[serde(default)]
        tls: Option<OutboundTls>,
    },
    /// VLESS, no flow.
    Vless {
        server: String,
        uuid: String,
        #[serde(default)]
        tls: Option<OutboundTls>,
    },
    /// Trojan (the password in clear; hashed by the data plane).
    Trojan {
        server: String,
        password: String,
        #[serde(default)]
        tls: Option<OutboundTls>,
    },
}

/// TLS towards a proxy outbound's server (`streamSettings.security: "tls"`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OutboundTls {
    /// The name sent and verified (`tlsSettings.serverName`, else the server's address).
    pub server_name: String,
    /// `tlsSettings.allowInsecure`: no certificate verification (the admin's explicit choice).
    pub allow_insecure: bool,
    pub alpn: Vec<String>,
}

impl OutboundKind {
    pub fn name(&self) -> &'static str {
        match self {
            OutboundKind::Freedom { .. } => "freedom",
            OutboundKind::Blackhole => "blackhole",
            OutboundKind::Socks { .. } => "socks",
            OutboundKind::Http { .. } => "http",
            OutboundKind::Shadowsocks { .. } => "shadowsocks",
            OutboundKind::Vmess { .. } => "vmess",
            OutboundKind::Vless { .. } => "vless",
            OutboundKind::Trojan { .. } => "trojan",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding (control plane)

/// The entries of a list condition: a JSON array of strings, a comma-separated string, or a
/// PHP list that became an object with numeric keys.
fn string_list(v: &Value, what: &str) -> Result<Vec<String>, String> {
    let items: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        Value::Object(m) => m.values().collect(),
        Value::String(s) => {
            return Ok(s
                .split(',')
                .map(|e| e.trim().to_string())
                .filter(|e| !e.is_empty())
                .collect())
        }
        Value::Null => Vec::new(),
        other => return Err(format!("{what}: expected a list of strings, got {other}")),
    };
    let mut out = Vec::with_capacity(items.len());
    for i in items {
        match i {
            Value::String(s) if !s.trim().is_empty() => out.push(s.trim().to_string()),
            Value::String(_) => {}
            Value::Number(n) => out.push(n.to_string()),
            other => return Err(format!("{what}: expected a string, got {other}")),
        }
    }
    if out.len() > MAX_ENTRIES_PER_RULE {
        return Err(format!("{what}: more than {MAX_ENTRIES_PER_RULE} entries"));
    }
    Ok(out)
}

/// Xray's `port` / `sourcePort`: `53`, `"1000-2000"`, `"53,443,1000-2000"`.
pub fn parse_ports(v: &Value) -> Result<Vec<(u16, u16)>, String> {
    let text = match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => return Err(format!("port: expected a number or string, got {other}")),
    };
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num = |s: &str| {
            s.trim()
                .parse::<u16>()
                .map_err(|_| format!("port: bad port {s:?}"))
        };
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => {
                let p = num(part)?;
                (p, p)
            }
        };
        if a > b {
            return Err(format!("port: empty range {part:?}"));
        }
        out.push((a, b));
    }
    if out.is_empty() {
        return Err("port: no ports".into());
    }
    Ok(out)
}

/// A domain entry of an Xray rule (`domain`/`domains`): a plain string is a substring, as in
/// Xray; `geosite:`/`ext:` lists are not available.
fn xray_domain(e: &str) -> Result<String, String> {
    let p = Pattern::parse_dns_domain(e)?;
    Ok(p.to_entry())
}

/// An IP entry: `ip/len`, a bare address, or `geoip:private`; other geo lists are not
/// available.
fn ip_entry(e: &str) -> Result<String, String> {
    let e = e.trim();
    if e.eq_ignore_ascii_case("geoip:private") {
        return Ok("private".into());
    }
    if e.starts_with("geoip:") || e.starts_with("ext:") {
        return Err(format!("{e:?}: geo lists are not supported"));
    }
    let (ip, len) = crate::audit::parse_network(e)?;
    Ok(format!("{ip}/{len}"))
}

/// Keeps the usable entries of one condition; `Err` when none is left (the rule would match
/// more than it says), with every reason.
fn entries(
    list: Vec<String>,
    what: &str,
    parse: impl Fn(&str) -> Result<String, String>,
) -> Result<Vec<String>, String> {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for e in &list {
        match parse(e) {
            Ok(p) => ok.push(p),
            Err(why) => bad.push(why),
        }
    }
    if ok.is_empty() && !list.is_empty() {
        return Err(format!("{what}: no usable entry ({})", bad.join("; ")));
    }
    if !bad.is_empty() {
        // A rule with fewer entries matches less than written, never more: keep it, say so.
        tracing::warn!(condition = what, "route entries skipped: {}", bad.join("; "));
    }
    Ok(ok)
}

/// One Xray routing rule (`custom_routes` entry, `route.json` `rules` entry).
pub fn rule_from_xray(v: &Value, name: &str) -> Result<RouteRule, String> {
    let Value::Object(m) = v else {
        return Err(format!("expected a rule object, got {v}"));
    };
    let mut r = RouteRule {
        name: name.to_string(),
        ..RouteRule::default()
    };
    let mut conditions = 0;
    for (k, v) in m {
        match k.as_str() {
            "type" | "ruleTag" | "domainMatcher" => {}
            "domain" | "domains" => {
                r.domain.extend(entries(string_list(v, k)?, k, xray_domain)?);
                conditions += 1;
            }
            "ip" => {
                r.ip = entries(string_list(v, k)?, k, ip_entry)?;
                conditions += 1;
            }
            "source" | "sourceIP" => {
                r.source = entries(string_list(v, k)?, k, ip_entry)?;
                conditions += 1;
            }
            "port" => {
                r.port = parse_ports(v)?;
                conditions += 1;
            }
            "network" => {
                for n in string_list(v, k)? {
                    match n.to_ascii_lowercase().as_str() {
                        "tcp" => r.network.push("tcp".into()),
                        "udp" => r.network.push("udp".into()),
                        other => return Err(format!("network: unknown network {other:?}")),
                    }
                }
                conditions += 1;
            }
            "protocol" => {
                r.protocol = string_list(v, k)?;
                conditions += 1;
            }
            "user" => {
                r.user = string_list(v, k)?;
                conditions += 1;
            }
            "inboundTag" => {
                r.inbound_tag = string_list(v, k)?;
                conditions += 1;
            }
            "outboundTag" => match v.as_str().map(str::trim) {
                Some(t) if !t.is_empty() => r.target = Some(RouteTarget::Tag(t.to_string())),
                _ => return Err("outboundTag: expected a tag".into()),
            },
            "balancerTag" => return Err("balancers are not supported".into()),
            // Conditions we cannot evaluate: dropping them would widen the rule.
            other => return Err(format!("condition {other:?} is not supported")),
        }
    }
    if r.target.is_none() {
        return Err("no outboundTag".into());
    }
    if conditions == 0 {
        return Err("the rule has no condition".into());
    }
    Ok(r)
}

/// One entry of a panel `direct`/`proxy` route: an entry with `/` (or a bare IP) is a
/// network, else a domain suffix (`*.` stripped); `domain:`, `full:`, `keyword:`, `regexp:`
/// are honoured; `geoip:private` is the private ranges; other geo lists are refused.
fn panel_entry(e: &str) -> Result<(bool, String), String> {
    let e = e.trim();
    if e.contains('/') || e.parse::<IpAddr>().is_ok() || e.starts_with("geoip:") {
        return ip_entry(e).map(|n| (true, n));
    }
    if e.starts_with("geosite:") || e.starts_with("ext:") {
        return Err(format!("{e:?}: geo lists are not supported"));
    }
    let p = match e.split_once(':') {
        Some(("domain" | "full" | "keyword" | "regexp", _)) => Pattern::parse(e)?,
        _ => Pattern::parse(&format!("domain:{}", e.trim_start_matches("*.")))?,
    };
    Ok((false, p.to_entry()))
}

/// A panel route (`routes` entry) as a rule: `direct` → the node's freedom, `proxy` → the
/// outbound `action_value`. `Ok(None)` for the actions that are not rules here (`block`: the
/// audit rules; `dns`: resolver choice).
pub fn rule_from_panel(
    id: i64,
    matches: &[String],
    action: &str,
    action_value: Option<&str>,
) -> Result<Option<RouteRule>, String> {
    let target = match action {
        "direct" => RouteTarget::Direct,
        "proxy" => match action_value.map(str::trim).filter(|t| !t.is_empty()) {
            Some(t) => RouteTarget::Tag(t.to_string()),
            None => return Err("proxy route without an outbound tag (action_value)".into()),
        },
        "block" | "dns" => return Ok(None),
        other => return Err(format!("unknown action {other:?}")),
    };
    let mut r = RouteRule {
        name: format!("route {id}"),
        target: Some(target),
        ..RouteRule::default()
    };
    let mut bad = Vec::new();
    for m in matches {
        match panel_entry(m) {
            Ok((true, n)) => r.ip.push(n),
            Ok((false, d)) => r.domain.push(d),
            Err(why) => bad.push(why),
        }
    }
    if r.ip.is_empty() && r.domain.is_empty() {
        return Err(if bad.is_empty() {
            "no match entries".to_string()
        } else {
            format!("no usable match entry ({})", bad.join("; "))
        });
    }
    if !bad.is_empty() {
        tracing::warn!(route = id, "route entries skipped: {}", bad.join("; "));
    }
    // A panel route's entries are alternatives: a domain entry or an IP entry. Two rules keep
    // that an OR (Xray would AND `domain` and `ip` of one rule).
    Ok(Some(r))
}

/// Splits a panel rule whose entries are both domains and networks into two rules (the
/// entries are alternatives, while one rule's conditions all have to match).
pub fn split_panel_rule(r: RouteRule) -> Vec<RouteRule> {
    if r.domain.is_empty() || r.ip.is_empty() {
        return vec![r];
    }
    let ips = RouteRule {
        domain: Vec::new(),
        ..r.clone()
    };
    let domains = RouteRule { ip: Vec::new(), ..r };
    vec![domains, ips]
}

fn str_field<'a>(m: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    m.get(k)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// `address` + `port` of a server object as `host:port` (IPv6 in brackets).
fn server_addr(m: &Map<String, Value>) -> Result<String, String> {
    let host = str_field(m, "address").ok_or("no server address")?;
    let port = match m.get("port") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        _ => None,
    }
    .and_then(|p| u16::try_from(p).ok())
    .filter(|&p| p != 0)
    .ok_or("no usable server port")?;
    if host.len() > 253 {
        return Err("server address too long".into());
    }
    Ok(match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
        _ => format!("{host}:{port}"),
    })
}

/// The one server of a socks/http/shadowsocks outbound: `settings.servers[0]` (Xray's classic
/// form) or `settings` itself (the flat form of newer Xray).
fn one_server(settings: &Map<String, Value>) -> Result<&Map<String, Value>, String> {
    match settings.get("servers") {
        Some(Value::Array(a)) => match a.as_slice() {
            [Value::Object(s)] => Ok(s),
            [] => Err("no server".into()),
            [Value::Object(s), ..] => {
                tracing::warn!("outbound with several servers: only the first is used");
                Ok(s)
            }
            _ => Err("servers: expected server objects".into()),
        },
        Some(_) => Err("servers: expected an array".into()),
        None => Ok(settings),
    }
}

/// The first `users` entry's `user`/`pass` (or flat `user`/`pass`).
fn credentials(server: &Map<String, Value>) -> (String, String) {
    let from = match server.get("users") {
        Some(Value::Array(a)) => a.first().and_then(Value::as_object),
        _ => Some(server),
    };
    let get = |k| {
        from.and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    (get("user"), get("pass"))
}

/// One Xray outbound object (`custom_outbounds` entry, `custom_outbound.json` entry).
pub fn outbound_from_xray(v: &Value) -> Result<OutboundSpec, String> {
    let Value::Object(m) = v else {
        return Err(format!("expected an outbound object, got {v}"));
    };
    let tag = str_field(m, "tag").ok_or("no tag")?.to_string();
    let protocol = str_field(m, "protocol")
        .ok_or("no protocol")?
        .to_ascii_lowercase();
    if str_field(m, "proxy_tag").is_some() || m.get("proxySettings").and_then(|p| p.get("tag")).is_some() {
        return Err("chained outbounds (proxy_tag, proxySettings) are not supported".into());
    }
    let empty = Map::new();
    let settings = match m.get("settings") {
        Some(Value::Object(s)) => s,
        // PHP writes an empty map as `[]`.
        Some(Value::Array(a)) if a.is_empty() => &empty,
        None | Some(Value::Null) => &empty,
        Some(other) => return Err(format!("settings: expected an object, got {other}")),
    };
    // Our proxy outbounds speak TCP to their server, with TLS for VMess, VLESS and Trojan.
    let mut tls_settings = None;
    if !matches!(protocol.as_str(), "freedom" | "blackhole") {
        if let Some(Value::Object(ss)) = m.get("streamSettings") {
            let network = ss.get("network").and_then(Value::as_str).unwrap_or("tcp");
            let security = ss.get("security").and_then(Value::as_str).unwrap_or("none");
            let tls_ok = security == "tls" && matches!(protocol.as_str(), "vmess" | "vless" | "trojan");
            if !matches!(network, "tcp" | "raw") || !(matches!(security, "none" | "") || tls_ok) {
                return Err(format!(
                    "streamSettings network {network:?} security {security:?}: only TCP, with TLS for vmess, vless and trojan, is supported"
                ));
            }
            if tls_ok {
                tls_settings = Some(match ss.get("tlsSettings") {
                    Some(Value::Object(t)) => t.clone(),
                    _ => Map::new(),
                });
            }
        }
    }
    let tls_for = |server: &str| -> Result<Option<OutboundTls>, String> {
        let Some(t) = &tls_settings else {
            return Ok(None);
        };
        let host = server.rsplit_once(':').map_or(server, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let server_name = str_field(t, "serverName").unwrap_or(host).to_string();
        let alpn = match t.get("alpn") {
            Some(v) => string_list(v, "alpn")?,
            None => Vec::new(),
        };
        Ok(Some(OutboundTls {
            server_name,
            allow_insecure: t.get("allowInsecure").and_then(Value::as_bool).unwrap_or(false),
            alpn,
        }))
    };
    let kind = match protocol.as_str() {
        "freedom" | "direct" => {
            let send_through = str_field(m, "sendThrough").unwrap_or("").to_string();
            if !send_through.is_empty() && send_through.parse::<IpAddr>().is_err() {
                return Err(format!("sendThrough {send_through:?} is not an IP address"));
            }
            let domain_strategy = str_field(settings, "domainStrategy").unwrap_or("").to_string();
            if !domain_strategy.is_empty() && !known_strategy(&domain_strategy) {
                return Err(format!("domainStrategy {domain_strategy:?} is not known"));
            }
            if settings
                .get("redirect")
                .and_then(Value::as_str)
                .is_some_and(|r| !r.is_empty())
            {
                return Err("freedom redirect is not supported".into());
            }
            OutboundKind::Freedom {
                send_through,
                domain_strategy,
            }
        }
        "blackhole" | "block" => OutboundKind::Blackhole,
        "socks" | "http" => {
            let s = one_server(settings)?;
            let server = server_addr(s)?;
            let (user, pass) = credentials(s);
            if user.len() > 255 || pass.len() > 255 {
                return Err("user or pass longer than 255 bytes".into());
            }
            if protocol == "socks" {
                OutboundKind::Socks { server, user, pass }
            } else {
                OutboundKind::Http { server, user, pass }
            }
        }
        "shadowsocks" => {
            let s = one_server(settings)?;
            let server = server_addr(s)?;
            let method = str_field(s, "method").ok_or("no method")?.to_ascii_lowercase();
            let password = str_field(s, "password").ok_or("no password")?.to_string();
            check_ss_key(&method, &password)?;
            OutboundKind::Shadowsocks {
                server,
                method,
                password,
            }
        }
        "vmess" | "vless" => {
            // `vnext[0]` (Xray's classic form) or the flat form; the user is `users[0]`.
            let s = match settings.get("vnext") {
                Some(v) => one_server(&Map::from_iter([("servers".to_string(), v.clone())]))?.clone(),
                None => settings.clone(),
            };
            let server = server_addr(&s)?;
            let user = match s.get("users") {
                Some(Value::Array(a)) => a.first().and_then(Value::as_object).cloned().ok_or("no user")?,
                _ => s.clone(),
            };
            let uuid = str_field(&user, "id").ok_or("no user id")?.to_string();
            if crate::cred::parse_uuid(&uuid).is_err() {
                return Err(format!("user id {uuid:?} is not a uuid"));
            }
            if protocol == "vless" {
                if str_field(&user, "flow").is_some() {
                    return Err("VLESS flows need TLS: only plain VLESS is supported".into());
                }
                let enc = str_field(&user, "encryption").unwrap_or("none");
                if enc != "none" {
                    return Err(format!("VLESS encryption {enc:?} is not supported"));
                }
                let tls = tls_for(&server)?;
                OutboundKind::Vless { server, uuid, tls }
            } else {
                let security = match str_field(&user, "security")
                    .unwrap_or("auto")
                    .to_ascii_lowercase()
                    .as_str()
                {
                    "auto" | "aes-128-gcm" | "" => "aes-128-gcm".to_string(),
                    "chacha20-poly1305" => "chacha20-poly1305".to_string(),
                    "none" => "none".to_string(),
                    other => return Err(format!("VMess security {other:?} is not supported")),
                };
                let tls = tls_for(&server)?;
                OutboundKind::Vmess {
                    server,
                    uuid,
                    security,
                    tls,
                }
            }
        }
        "trojan" => {
            let s = one_server(settings)?;
            let server = server_addr(s)?;
            let password = str_field(s, "password").ok_or("no password")?.to_string();
            let tls = tls_for(&server)?;
            OutboundKind::Trojan {
                server,
                password,
                tls,
            }
        }
        other => return Err(format!("protocol {other:?} is not supported")),
    };
    Ok(OutboundSpec { tag, kind })
}

/// The Shadowsocks methods the data plane implements, and their key lengths.
fn ss_key_len(method: &str) -> Option<(bool, usize)> {
    Some(match method {
        "aes-128-gcm" | "aead_aes_128_gcm" => (false, 16),
        "aes-256-gcm"
        | "aead_aes_256_gcm"
        | "chacha20-ietf-poly1305"
        | "chacha20-poly1305"
        | "aead_chacha20_poly1305" => (false, 32),
        "2022-blake3-aes-128-gcm" => (true, 16),
        "2022-blake3-aes-256-gcm" | "2022-blake3-chacha20-poly1305" => (true, 32),
        _ => return None,
    })
}

/// A 2022 method's password is base64 keys of the method's length (`iPSK:uPSK` for AES with
/// an identity header); an AEAD 2017 password is any text.
fn check_ss_key(method: &str, password: &str) -> Result<(), String> {
    use base64::Engine as _;
    let (is_2022, len) = ss_key_len(method).ok_or_else(|| format!("method {method:?} is not supported"))?;
    if !is_2022 {
        return Ok(());
    }
    let keys: Vec<&str> = password.split(':').collect();
    if keys.len() > 2 || (keys.len() == 2 && method.ends_with("chacha20-poly1305")) {
        return Err("password: at most iPSK:uPSK, and identity headers only with AES".into());
    }
    for k in keys {
        match base64::engine::general_purpose::STANDARD.decode(k.trim()) {
            Ok(b) if b.len() == len => {}
            _ => return Err(format!("password: a {method} key is {len} bytes in base64")),
        }
    }
    Ok(())
}

fn known_strategy(s: &str) -> bool {
    matches!(
        s.to_ascii_lowercase().as_str(),
        "asis" | "useip" | "useipv4" | "useipv6" | "preferipv4" | "preferipv6" | "useipv4v6" | "useipv6v4"
    ) || s.eq_ignore_ascii_case("forceip")
        || s.to_ascii_lowercase().starts_with("forceipv")
}

/// A JSON list the panel may send as a PHP array, an object with numeric keys, or `[]`.
pub fn json_list(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(a) => a.iter().collect(),
        Value::Object(m) if m.keys().all(|k| k.parse::<u64>().is_ok()) => m.values().collect(),
        Value::Object(_) => vec![v],
        _ => Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// Decision (data plane)

/// Transport of the connection being routed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Network {
    Tcp,
    Udp,
}

/// What one connection is routed on.
#[derive(Clone, Copy, Debug)]
pub struct RouteQuery<'a> {
    pub node_tag: &'a str,
    pub user_id: u32,
    /// The user's uuid in text form when the node's credential carries it.
    pub user_uuid: Option<&'a str>,
    /// The destination name (as the client sent it, or sniffed from TLS SNI / HTTP Host).
    pub domain: Option<&'a str>,
    /// The destination address when the client named one.
    pub ip: Option<IpAddr>,
    pub port: u16,
    pub network: Network,
    /// The sniffed protocol (`http`, `tls`, `bittorrent`).
    pub protocol: Option<&'a str>,
    pub source: Option<IpAddr>,
}

/// The rule that matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteHit<'a> {
    pub name: &'a str,
    pub target: &'a RouteTarget,
    /// The rule names its destinations (a domain or IP condition): such a rule may send a
    /// private destination to a direct or proxy outbound.
    pub names_destination: bool,
}

#[derive(Debug, Default)]
struct Networks {
    nets: Vec<(IpAddr, u8)>,
    private: bool,
}

impl Networks {
    fn compile(list: &[String]) -> Result<Networks, String> {
        let mut n = Networks::default();
        for e in list {
            if e == "private" {
                n.private = true;
            } else {
                n.nets.push(crate::audit::parse_network(e)?);
            }
        }
        Ok(n)
    }
    fn contains(&self, ip: IpAddr) -> bool {
        (self.private && is_private(ip)) || self.nets.iter().any(|&(net, len)| in_network(ip, net, len))
    }
}

/// Xray's `geoip:private` (and the ranges a public proxy refuses by default).
pub fn is_private(ip: IpAddr) -> bool {
    const V4: [(u32, u8); 14] = [
        (0x0000_0000, 8),
        (0x0a00_0000, 8),
        (0x6440_0000, 10),
        (0x7f00_0000, 8),
        (0xa9fe_0000, 16),
        (0xac10_0000, 12),
        (0xc000_0000, 24),
        (0xc000_0200, 24),
        (0xc0a8_0000, 16),
        (0xc612_0000, 15),
        (0xc633_6400, 24),
        (0xcb00_7100, 24),
        (0xe000_0000, 4),
        (0xf000_0000, 4),
    ];
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            let a = u32::from(v4);
            V4.iter().any(|&(net, len)| a >> (32 - len) == net >> (32 - len))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_unspecified()
                || v6.is_loopback()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xff00) == 0xff00
        }
    }
}

#[derive(Debug)]
struct CompiledRule {
    name: String,
    target: RouteTarget,
    domain: Option<AuditRules>,
    ip: Option<Networks>,
    source: Option<Networks>,
    port: Vec<(u16, u16)>,
    tcp: bool,
    udp: bool,
    protocol: Vec<String>,
    user: Vec<String>,
    inbound_tag: Vec<String>,
}

/// One node's compiled rules, in order.
#[derive(Debug, Default)]
pub struct RouteTable {
    rules: Vec<CompiledRule>,
}

impl RouteTable {
    /// Compiles the published rules; a rule that does not compile is left out and returned
    /// with the reason (the control plane validated them, so this is a safety net).
    pub fn compile(rules: &[RouteRule]) -> (RouteTable, Vec<(String, String)>) {
        let mut t = RouteTable::default();
        let mut skipped = Vec::new();
        for r in rules.iter().take(MAX_RULES) {
            match compile_rule(r) {
                Ok(c) => t.rules.push(c),
                Err(why) => skipped.push((r.name.clone(), why)),
            }
        }
        (t, skipped)
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether a connection's first bytes must be sniffed to route it: a `protocol`
    /// condition always, domain conditions when the client named an IP.
    pub fn wants_sniff(&self, dest_is_ip: bool) -> bool {
        self.rules
            .iter()
            .any(|r| !r.protocol.is_empty() || (dest_is_ip && r.domain.is_some()))
    }

    /// The first rule that matches `q`; `None` = the node's direct outbound.
    pub fn decide(&self, q: &RouteQuery<'_>) -> Option<RouteHit<'_>> {
        self.rules.iter().find(|r| r.matches(q)).map(|r| RouteHit {
            name: &r.name,
            target: &r.target,
            names_destination: r.domain.is_some() || r.ip.is_some(),
        })
    }
}

fn compile_rule(r: &RouteRule) -> Result<CompiledRule, String> {
    let target = r.target.clone().ok_or("no target")?;
    let domain = if r.domain.is_empty() {
        None
    } else {
        let (m, skipped) = AuditRules::compile(r.domain.iter().map(|d| (0, d.as_str())));
        if let Some(s) = skipped.first() {
            return Err(format!("domain {:?}: {}", s.entry, s.why));
        }
        Some(m)
    };
    let nets = |l: &[String]| -> Result<Option<Networks>, String> {
        if l.is_empty() {
            Ok(None)
        } else {
            Networks::compile(l).map(Some)
        }
    };
    let (tcp, udp) = match r.network.as_slice() {
        [] => (true, true),
        n => (n.iter().any(|x| x == "tcp"), n.iter().any(|x| x == "udp")),
    };
    Ok(CompiledRule {
        name: r.name.clone(),
        target,
        domain,
        ip: nets(&r.ip)?,
        source: nets(&r.source)?,
        port: r.port.clone(),
        tcp,
        udp,
        protocol: r.protocol.clone(),
        user: r.user.iter().map(|u| user_key(u).to_string()).collect(),
        inbound_tag: r.inbound_tag.clone(),
    })
}

/// `tag|uuid` (the Go agents' user email) → `uuid`; other entries as they are.
fn user_key(u: &str) -> &str {
    match u.rsplit_once('|') {
        Some((_, last)) if !last.is_empty() && last.parse::<u64>().is_err() => last,
        Some((rest, _)) => rest.rsplit_once('|').map_or(rest, |(_, uuid)| uuid),
        None => u,
    }
}

impl CompiledRule {
    fn matches(&self, q: &RouteQuery<'_>) -> bool {
        let net_ok = match q.network {
            Network::Tcp => self.tcp,
            Network::Udp => self.udp,
        };
        if !net_ok {
            return false;
        }
        if !self.port.is_empty() && !self.port.iter().any(|&(a, b)| (a..=b).contains(&q.port)) {
            return false;
        }
        if !self.inbound_tag.is_empty() && !self.inbound_tag.iter().any(|t| t == q.node_tag) {
            return false;
        }
        if !self.user.is_empty() {
            let id = q.user_id.to_string();
            let hit = self
                .user
                .iter()
                .any(|u| *u == id || q.user_uuid.is_some_and(|uuid| u.eq_ignore_ascii_case(uuid)));
            if !hit {
                return false;
            }
        }
        if !self.protocol.is_empty() {
            match q.protocol {
                Some(p) if self.protocol.iter().any(|x| x.eq_ignore_ascii_case(p)) => {}
                _ => return false,
            }
        }
        if let Some(src) = &self.source {
            if !q.source.is_some_and(|ip| src.contains(ip)) {
                return false;
            }
        }
        if let Some(d) = &self.domain {
            if q.domain
                .is_none_or(|name| d.blocks(Target::Domain(name)).is_none())
            {
                return false;
            }
        }
        if let Some(n) = &self.ip {
            if !q.ip.is_some_and(|ip| n.contains(ip)) {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
#[path = "route_tests.rs"]
mod tests;
