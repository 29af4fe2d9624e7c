//! A node's routing as one core runs it: the rule table (`v2sp_shared::route`, the policy)
//! and the outbounds it names, compiled once per node config. A config change builds a new
//! `NodeRt` and with it a new table: new connections take it, open ones keep the one they were
//! routed with (nothing is dropped).

use std::collections::HashMap;
use std::net::IpAddr;

use v2sp_shared::dpconfig::NodeConfig;
use v2sp_shared::route::{OutboundKind, RouteHit, RouteQuery, RouteTable, RouteTarget};

use super::tls::TlsClient;
use super::DnsStrategy;

/// One compiled outbound.
#[derive(Debug)]
pub enum OutboundRt {
    /// Direct; `None` fields take the node's.
    Freedom {
        strategy: Option<DnsStrategy>,
        send_ip: Option<IpAddr>,
    },
    Blackhole,
    Socks {
        server: String,
        auth: Option<(String, String)>,
    },
    Http {
        server: String,
        auth: Option<(String, String)>,
    },
    #[cfg(feature = "shadowsocks")]
    Shadowsocks {
        server: String,
        ss: SsOutbound,
    },
    /// VMess: the user's command key and the body security (`SEC_*`).
    #[cfg(feature = "vmess")]
    Vmess {
        server: String,
        cmd_key: [u8; 16],
        security: u8,
        tls: Option<TlsClient>,
    },
    #[cfg(feature = "vless")]
    Vless {
        server: String,
        uuid: [u8; 16],
        tls: Option<TlsClient>,
    },
    /// Trojan: the password's hex SHA-224 (the request's first 56 bytes).
    Trojan {
        server: String,
        hash: String,
        tls: Option<TlsClient>,
    },
}

impl OutboundRt {
    pub fn kind(&self) -> &'static str {
        match self {
            OutboundRt::Freedom { .. } => "freedom",
            OutboundRt::Blackhole => "blackhole",
            OutboundRt::Socks { .. } => "socks",
            OutboundRt::Http { .. } => "http",
            #[cfg(feature = "shadowsocks")]
            OutboundRt::Shadowsocks { .. } => "shadowsocks",
            #[cfg(feature = "vmess")]
            OutboundRt::Vmess { .. } => "vmess",
            #[cfg(feature = "vless")]
            OutboundRt::Vless { .. } => "vless",
            OutboundRt::Trojan { .. } => "trojan",
        }
    }
}

/// A Shadowsocks outbound's method and keys.
#[cfg(feature = "shadowsocks")]
pub struct SsOutbound {
    pub method: crate::proto::ss::Method,
    /// AEAD 2017: the EVP_BytesToKey key of the password; 2022: the user PSK.
    pub key: Vec<u8>,
    /// 2022 with an identity header (`iPSK:uPSK`).
    pub identity: Option<Vec<u8>>,
}

#[cfg(feature = "shadowsocks")]
impl std::fmt::Debug for SsOutbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SsOutbound")
            .field("method", &self.method.name())
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "shadowsocks")]
impl SsOutbound {
    fn new(method: &str, password: &str) -> Result<SsOutbound, String> {
        use crate::proto::ss::Method;
        use base64::Engine as _;
        let method =
            Method::from_name(method).ok_or_else(|| format!("method {method:?} is not supported"))?;
        let len = method.aead().key_len();
        if !method.is_2022() {
            let key = v2sp_shared::cred::evp_bytes_to_key(password.as_bytes(), len);
            return Ok(SsOutbound {
                method,
                key,
                identity: None,
            });
        }
        let decode = |k: &str| {
            base64::engine::general_purpose::STANDARD
                .decode(k.trim())
                .ok()
                .filter(|b| b.len() == len)
                .ok_or_else(|| format!("a {} key is {len} bytes in base64", method.name()))
        };
        match password.split_once(':') {
            Some((i, u)) => Ok(SsOutbound {
                method,
                key: decode(u)?,
                identity: Some(decode(i)?),
            }),
            None => Ok(SsOutbound {
                method,
                key: decode(password)?,
                identity: None,
            }),
        }
    }
}

/// Where one connection goes.
#[derive(Debug)]
pub enum Route<'a> {
    /// No rule matched: the node's own direct outbound.
    Default,
    /// A rule sent it to a direct outbound (the node's, or a freedom outbound's settings).
    Direct {
        rule: &'a str,
        strategy: Option<DnsStrategy>,
        send_ip: Option<IpAddr>,
        names_destination: bool,
    },
    Block {
        rule: &'a str,
    },
    Proxy {
        rule: &'a str,
        tag: &'a str,
        outbound: &'a OutboundRt,
        names_destination: bool,
    },
}

/// A node's compiled rules and outbounds.
#[derive(Debug, Default)]
pub struct Routing {
    table: RouteTable,
    outbounds: HashMap<String, OutboundRt>,
}

impl Routing {
    /// Compiles the node's published rules and outbounds. The control plane validated them
    /// (and logged what it skipped); anything that still does not compile here is left out
    /// with a warning.
    pub fn compile(n: &NodeConfig) -> Routing {
        let (table, skipped) = RouteTable::compile(&n.route_rules);
        for (name, why) in skipped {
            tracing::warn!(node = n.slot, rule = %name, "route skipped: {why}");
        }
        let mut outbounds = HashMap::new();
        for o in &n.outbounds {
            match compile_outbound(&o.kind) {
                Ok(rt) => {
                    outbounds.insert(o.tag.clone(), rt);
                }
                Err(why) => tracing::warn!(node = n.slot, outbound = %o.tag, "outbound skipped: {why}"),
            }
        }
        Routing { table, outbounds }
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Whether routing needs the connection's first bytes (see `RouteTable::wants_sniff`).
    pub fn wants_sniff(&self, dest_is_ip: bool) -> bool {
        self.table.wants_sniff(dest_is_ip)
    }

    pub fn route(&self, q: &RouteQuery<'_>) -> Route<'_> {
        let Some(hit) = self.table.decide(q) else {
            return Route::Default;
        };
        self.resolve(hit)
    }

    fn resolve<'a>(&'a self, hit: RouteHit<'a>) -> Route<'a> {
        let RouteHit {
            name: rule,
            target,
            names_destination,
        } = hit;
        let direct = Route::Direct {
            rule,
            strategy: None,
            send_ip: None,
            names_destination,
        };
        match target {
            RouteTarget::Direct => direct,
            RouteTarget::Block => Route::Block { rule },
            RouteTarget::Tag(tag) => match self.outbounds.get(tag) {
                Some(OutboundRt::Freedom { strategy, send_ip }) => Route::Direct {
                    rule,
                    strategy: *strategy,
                    send_ip: *send_ip,
                    names_destination,
                },
                Some(OutboundRt::Blackhole) => Route::Block { rule },
                Some(outbound) => Route::Proxy {
                    rule,
                    tag,
                    outbound,
                    names_destination,
                },
                // The implicit tags (also when their outbound was skipped).
                None if tag == "direct" => direct,
                // `block`, and a tag whose outbound could not be built: refusing is the safe
                // reading of a rule we cannot follow.
                None => Route::Block { rule },
            },
        }
    }
}

fn compile_outbound(k: &OutboundKind) -> Result<OutboundRt, String> {
    let auth = |u: &str, p: &str| (!u.is_empty() || !p.is_empty()).then(|| (u.to_string(), p.to_string()));
    Ok(match k {
        OutboundKind::Freedom {
            send_through,
            domain_strategy,
        } => OutboundRt::Freedom {
            strategy: (!domain_strategy.is_empty()).then(|| DnsStrategy::parse(domain_strategy)),
            send_ip: match send_through.trim() {
                "" => None,
                s => Some(s.parse().map_err(|_| format!("sendThrough {s:?} is not an IP"))?),
            },
        },
        OutboundKind::Blackhole => OutboundRt::Blackhole,
        OutboundKind::Socks { server, user, pass } => OutboundRt::Socks {
            server: server.clone(),
            auth: auth(user, pass),
        },
        OutboundKind::Http { server, user, pass } => OutboundRt::Http {
            server: server.clone(),
            auth: auth(user, pass),
        },
        #[cfg(feature = "shadowsocks")]
        OutboundKind::Shadowsocks {
            server,
            method,
            password,
        } => OutboundRt::Shadowsocks {
            server: server.clone(),
            ss: SsOutbound::new(method, password)?,
        },
        #[cfg(not(feature = "shadowsocks"))]
        OutboundKind::Shadowsocks { .. } => {
            return Err("Shadowsocks is not built into this data plane".into())
        }
        #[cfg(feature = "vmess")]
        OutboundKind::Vmess {
            server,
            uuid,
            security,
            tls,
        } => {
            use crate::proto::vmess::{SEC_AES128_GCM, SEC_CHACHA20_POLY1305, SEC_NONE};
            let id = v2sp_shared::cred::parse_uuid(uuid).map_err(|e| e.to_string())?;
            OutboundRt::Vmess {
                server: server.clone(),
                cmd_key: crate::proto::vmess::crypto::cmd_key(&id),
                security: match security.as_str() {
                    "chacha20-poly1305" => SEC_CHACHA20_POLY1305,
                    "none" => SEC_NONE,
                    _ => SEC_AES128_GCM,
                },
                tls: tls.as_ref().map(TlsClient::new).transpose()?,
            }
        }
        #[cfg(not(feature = "vmess"))]
        OutboundKind::Vmess { .. } => return Err("VMess is not built into this data plane".into()),
        #[cfg(feature = "vless")]
        OutboundKind::Vless { server, uuid, tls } => OutboundRt::Vless {
            server: server.clone(),
            uuid: v2sp_shared::cred::parse_uuid(uuid).map_err(|e| e.to_string())?,
            tls: tls.as_ref().map(TlsClient::new).transpose()?,
        },
        OutboundKind::Trojan {
            server,
            password,
            tls,
        } => OutboundRt::Trojan {
            server: server.clone(),
            hash: {
                use sha2::Digest as _;
                hex::encode(sha2::Sha224::digest(password.as_bytes()))
            },
            tls: tls.as_ref().map(TlsClient::new).transpose()?,
        },
        #[cfg(not(feature = "vless"))]
        OutboundKind::Vless { .. } => return Err("VLESS is not built into this data plane".into()),
    })
}

/// `host:port` (IPv6 in brackets) as a destination.
pub fn server_destination(server: &str) -> Option<crate::proto::Destination> {
    let (host, port) = server.rsplit_once(':')?;
    let port = port.parse::<u16>().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some(match host.parse::<IpAddr>() {
        Ok(ip) => crate::proto::Destination::Ip(std::net::SocketAddr::new(ip, port)),
        Err(_) => crate::proto::Destination::Domain(host.to_string(), port),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;
    use v2sp_shared::route::{outbound_from_xray, rule_from_xray, Network};

    fn node(rules: serde_json::Value, outbounds: serde_json::Value) -> NodeConfig {
        let mut n: NodeConfig = serde_json::from_value(json!({
            "slot": 1, "tag": "n", "listen_ip": "", "port": 1, "protocol": "shadowsocks",
            "cred_kind": "SsLegacy16",
        }))
        .unwrap();
        n.route_rules = rules
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, r)| rule_from_xray(r, &i.to_string()).unwrap())
            .collect();
        n.outbounds = outbounds
            .as_array()
            .unwrap()
            .iter()
            .map(|o| outbound_from_xray(o).unwrap())
            .collect();
        n
    }

    fn q(port: u16) -> RouteQuery<'static> {
        RouteQuery {
            node_tag: "n",
            user_id: 1,
            user_uuid: None,
            domain: None,
            ip: Some("192.0.2.1".parse().unwrap()),
            port,
            network: Network::Tcp,
            protocol: None,
            source: None,
        }
    }

    #[test]
    fn targets_resolve_to_outbounds_and_implicit_tags() {
        let n = node(
            json!([{"port": "1", "outboundTag": "socks"}, {"port": "2", "outboundTag": "v6"},
                   {"port": "3", "outboundTag": "hole"}, {"port": "4", "outboundTag": "direct"},
                   {"port": "5", "outboundTag": "block"}, {"port": "6", "outboundTag": "ss"}]),
            json!([{"tag": "socks", "protocol": "socks", "settings": {"address": "127.0.0.1", "port": 1080}},
                   {"tag": "v6", "protocol": "freedom", "sendThrough": "::1", "settings": {"domainStrategy": "UseIPv6"}},
                   {"tag": "hole", "protocol": "blackhole"},
                   {"tag": "ss", "protocol": "shadowsocks", "settings": {"address": "127.0.0.1", "port": 1,
                    "method": "2022-blake3-aes-128-gcm", "password": "AAAAAAAAAAAAAAAAAAAAAA=="}}]),
        );
        let r = Routing::compile(&n);
        assert!(matches!(
            r.route(&q(1)),
            Route::Proxy {
                tag: "socks",
                outbound: OutboundRt::Socks { .. },
                ..
            }
        ));
        match r.route(&q(2)) {
            Route::Direct {
                strategy, send_ip, ..
            } => {
                assert_eq!(strategy, Some(DnsStrategy::UseIpv6));
                assert_eq!(send_ip, Some("::1".parse().unwrap()));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(r.route(&q(3)), Route::Block { .. }));
        assert!(matches!(
            r.route(&q(4)),
            Route::Direct {
                strategy: None,
                send_ip: None,
                ..
            }
        ));
        assert!(matches!(r.route(&q(5)), Route::Block { .. }));
        #[cfg(feature = "shadowsocks")]
        assert!(matches!(
            r.route(&q(6)),
            Route::Proxy {
                outbound: OutboundRt::Shadowsocks { .. },
                ..
            }
        ));
        assert!(matches!(r.route(&q(7)), Route::Default));
    }

    #[test]
    fn server_addresses() {
        assert_eq!(
            server_destination("[::1]:1080").unwrap().to_string(),
            "[::1]:1080"
        );
        assert_eq!(
            server_destination("up.test:8388").unwrap().to_string(),
            "up.test:8388"
        );
        assert!(server_destination("up.test").is_none());
    }
}
