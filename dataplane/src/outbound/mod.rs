//! Direct outbound: resolve (hickory, one resolver per core), refuse private destinations,
//! bind `SendIP`, connect with a timeout, `TCP_NODELAY`.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{LookupIpStrategy, NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;
use tokio::net::{TcpSocket, TcpStream};

use crate::proto::Destination;
use v2sp_shared::audit::{AuditRules, Target};

/// Xray's `domainStrategy` values for the freedom outbound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DnsStrategy {
    #[default]
    AsIs,
    UseIp,
    UseIpv4,
    UseIpv6,
    PreferIpv4,
    PreferIpv6,
}

impl DnsStrategy {
    pub fn parse(s: &str) -> Self {
        match s.trim().to_ascii_lowercase().as_str() {
            "useip" => Self::UseIp,
            "useipv4" | "ipv4_only" => Self::UseIpv4,
            "useipv6" | "ipv6_only" => Self::UseIpv6,
            "preferipv4" | "prefer_ipv4" => Self::PreferIpv4,
            "preferipv6" | "prefer_ipv6" => Self::PreferIpv6,
            _ => Self::AsIs,
        }
    }
}

/// Orders (and filters) resolved addresses by strategy. `AsIs`/`UseIp` keep resolver order.
pub fn order_addrs(strategy: DnsStrategy, mut addrs: Vec<IpAddr>) -> Vec<IpAddr> {
    match strategy {
        DnsStrategy::AsIs | DnsStrategy::UseIp => addrs,
        DnsStrategy::UseIpv4 => addrs.into_iter().filter(IpAddr::is_ipv4).collect(),
        DnsStrategy::UseIpv6 => addrs.into_iter().filter(IpAddr::is_ipv6).collect(),
        DnsStrategy::PreferIpv4 => {
            addrs.sort_by_key(|a| !a.is_ipv4());
            addrs
        }
        DnsStrategy::PreferIpv6 => {
            addrs.sort_by_key(|a| !a.is_ipv6());
            addrs
        }
    }
}

/// True for destinations a public proxy must not reach: private, loopback, link-local,
/// unique-local, unspecified/"this network", multicast, broadcast, reserved and CGNAT ranges,
/// including their IPv4-mapped / IPv4-compatible / NAT64 IPv6 forms.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, _, _] = ip.octets();
    ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || a == 0 // "this network" incl. unspecified
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64/10
        || a >= 240 // reserved
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
}

fn forbidden_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    let s = ip.segments();
    // IPv4-compatible (::a.b.c.d, deprecated) and NAT64 well-known prefix 64:ff9b::/96
    if (s[..6] == [0; 6] && !ip.is_unspecified() && !ip.is_loopback()) || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
    {
        let o = ip.octets();
        return forbidden_v4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x0100 && s[1..4] == [0, 0, 0]) // discard-only
}

/// Why an outbound connection failed (upstream's fault unless `Forbidden`).
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("destination {0} is in a private/reserved range")]
    Forbidden(IpAddr),
    #[error("DNS resolution of {0} failed: {1}")]
    Resolve(String, String),
    #[error("{0} has no usable address for the DNS strategy")]
    NoAddress(String),
    #[error("connect to {0} failed: {1}")]
    Connect(SocketAddr, io::Error),
    #[error("connect timed out")]
    Timeout,
    /// The client's fault: the node's audit rules refuse this destination.
    #[error("{0} is blocked by audit rule {1}")]
    Blocked(String, i64),
}

/// Per-node outbound settings.
#[derive(Clone, Debug)]
pub struct ConnectOpts {
    pub strategy: DnsStrategy,
    pub send_ip: Option<IpAddr>,
    pub timeout: Duration,
    pub allow_private: bool,
    /// The node's audit (block) rules; `None` when it has none.
    pub audit: Option<Arc<AuditRules>>,
    /// The node's DNS routes (names → server), first match wins; empty = system resolver.
    pub dns_routes: Arc<[(AuditRules, SocketAddr)]>,
}

/// Compiles a node's DNS routes (patterns were validated by the control plane; any that still
/// do not compile are left out).
pub fn dns_routes(routes: &[v2sp_shared::dpconfig::DnsRoute]) -> Arc<[(AuditRules, SocketAddr)]> {
    routes
        .iter()
        .filter_map(|r| {
            let (m, _) = AuditRules::compile(r.domains.iter().map(|d| (r.id, d.as_str())));
            (!m.is_empty()).then_some((m, r.server))
        })
        .collect()
}

impl ConnectOpts {
    /// The audit rule that refuses `dest` as the client named it, if any.
    pub fn blocked_dest(&self, dest: &Destination) -> Option<i64> {
        let a = self.audit.as_ref()?;
        match dest {
            Destination::Ip(sa) => a.blocks(Target::Ip(sa.ip())),
            Destination::Domain(d, _) => match d.parse::<IpAddr>() {
                Ok(ip) => a.blocks(Target::Ip(ip)),
                Err(_) => a.blocks(Target::Domain(d)),
            },
        }
    }

    /// The audit rule that refuses an address (a resolved one too: an IP network rule holds
    /// however the client reached the address), if any.
    pub fn blocked_ip(&self, ip: IpAddr) -> Option<i64> {
        self.audit.as_ref()?.blocks(Target::Ip(ip))
    }
}

/// One per core: the resolver (built on first use; it caches answers).
#[derive(Default)]
pub struct Outbound {
    resolver: std::cell::RefCell<Option<TokioResolver>>,
    /// One resolver per DNS-route server (each caches its own answers).
    routed: std::cell::RefCell<std::collections::HashMap<SocketAddr, TokioResolver>>,
}

impl Outbound {
    fn resolver(&self) -> TokioResolver {
        if let Some(r) = self.resolver.borrow().as_ref() {
            return r.clone();
        }
        let mut b = match TokioResolver::builder_tokio() {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("no system DNS config ({e}); using defaults");
                TokioResolver::builder_with_config(
                    ResolverConfig::default(),
                    TokioConnectionProvider::default(),
                )
            }
        };
        b.options_mut().ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        let r = b.build();
        *self.resolver.borrow_mut() = Some(r.clone());
        r
    }

    /// The resolver for `name`: its DNS route's server, or the system's.
    fn resolver_for(&self, name: &str, opts: &ConnectOpts) -> TokioResolver {
        let Some(server) = opts
            .dns_routes
            .iter()
            .find(|(m, _)| m.blocks(Target::Domain(name)).is_some())
            .map(|(_, s)| *s)
        else {
            return self.resolver();
        };
        if let Some(r) = self.routed.borrow().get(&server) {
            return r.clone();
        }
        let group = NameServerConfigGroup::from_ips_clear(&[server.ip()], server.port(), true);
        let mut b = TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, vec![], group),
            TokioConnectionProvider::default(),
        );
        b.options_mut().ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        let r = b.build();
        self.routed.borrow_mut().insert(server, r.clone());
        r
    }

    /// Candidate addresses for `dest`, already filtered by the private-range rule.
    pub async fn resolve(
        &self,
        dest: &Destination,
        opts: &ConnectOpts,
    ) -> Result<Vec<SocketAddr>, OutboundError> {
        if let Some(rule) = opts.blocked_dest(dest) {
            return Err(OutboundError::Blocked(dest.to_string(), rule));
        }
        let (ips, port, name) = match dest {
            Destination::Ip(a) => (vec![a.ip()], a.port(), a.to_string()),
            Destination::Domain(d, p) => match d.parse::<IpAddr>() {
                Ok(ip) => (vec![ip], *p, d.clone()),
                Err(_) => {
                    let r = self.resolver_for(d, opts);
                    let lk = r
                        .lookup_ip(d.as_str())
                        .await
                        .map_err(|e| OutboundError::Resolve(d.clone(), e.to_string()))?;
                    (order_addrs(opts.strategy, lk.iter().collect()), *p, d.clone())
                }
            },
        };
        if ips.is_empty() {
            return Err(OutboundError::NoAddress(name));
        }
        let mut out = Vec::with_capacity(ips.len());
        let mut refused = None;
        let mut blocked = None;
        for ip in ips {
            if !opts.allow_private && is_forbidden(ip) {
                refused = Some(ip);
                continue;
            }
            if let Some(rule) = opts.blocked_ip(ip) {
                blocked = Some(rule);
                continue;
            }
            out.push(SocketAddr::new(ip, port));
        }
        match (out.is_empty(), blocked, refused) {
            (true, Some(rule), _) => Err(OutboundError::Blocked(name, rule)),
            (true, None, Some(ip)) => Err(OutboundError::Forbidden(ip)),
            (true, None, None) => Err(OutboundError::NoAddress(name)),
            _ => Ok(out),
        }
    }

    /// Resolves and connects (addresses tried in order within one overall timeout).
    pub async fn connect(&self, dest: &Destination, opts: &ConnectOpts) -> Result<TcpStream, OutboundError> {
        let fut = async {
            let addrs = self.resolve(dest, opts).await?;
            let mut last = None;
            for a in addrs {
                match connect_one(a, opts.send_ip).await {
                    Ok(s) => return Ok(s),
                    Err(e) => last = Some(OutboundError::Connect(a, e)),
                }
            }
            Err(last.unwrap_or(OutboundError::Timeout))
        };
        match tokio::time::timeout(opts.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(OutboundError::Timeout),
        }
    }
}

async fn connect_one(addr: SocketAddr, send_ip: Option<IpAddr>) -> io::Result<TcpStream> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = send_ip {
        if ip.is_ipv4() == addr.is_ipv4() {
            sock.bind(SocketAddr::new(ip, 0))?;
        }
    }
    let s = sock.connect(addr).await?;
    crate::net::tune_stream(&s);
    Ok(s)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn f(s: &str) -> bool {
        is_forbidden(s.parse().unwrap())
    }

    #[test]
    fn private_ranges_are_refused() {
        for s in [
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "127.0.0.1",
            "127.9.9.9",
            "169.254.1.1",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "239.1.1.1",
            "255.255.255.255",
            "100.64.0.1",
            "100.127.255.254",
            "240.0.0.1",
            "::",
            "::1",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "::ffff:100.64.1.1",
            "64:ff9b::a00:1",
            "::10.0.0.1",
            "fec0::1",
        ] {
            assert!(f(s), "{s} must be forbidden");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for s in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.0",
            "172.32.0.1",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
            "64:ff9b::101:101",
        ] {
            assert!(!f(s), "{s} must be allowed");
        }
    }

    #[test]
    fn strategy_orders_and_filters() {
        let v4: IpAddr = "1.1.1.1".parse().unwrap();
        let v6: IpAddr = "2606:4700::1111".parse().unwrap();
        assert_eq!(order_addrs(DnsStrategy::PreferIpv4, vec![v6, v4]), vec![v4, v6]);
        assert_eq!(order_addrs(DnsStrategy::PreferIpv6, vec![v4, v6]), vec![v6, v4]);
        assert_eq!(order_addrs(DnsStrategy::UseIpv4, vec![v6, v4]), vec![v4]);
        assert_eq!(order_addrs(DnsStrategy::UseIpv6, vec![v6, v4]), vec![v6]);
        assert_eq!(order_addrs(DnsStrategy::AsIs, vec![v6, v4]), vec![v6, v4]);
        assert_eq!(DnsStrategy::parse("PreferIPv6"), DnsStrategy::PreferIpv6);
        assert_eq!(DnsStrategy::parse(""), DnsStrategy::AsIs);
    }

    #[test]
    fn audit_rules_refuse_before_and_after_resolution() {
        crate::runtime::run_local(async {
            let o = Outbound::default();
            let (rules, skipped) = AuditRules::compile([
                (7, "domain:blocked.test"),
                (8, "127.0.0.2/32"),
                (9, "regexp:^127\\.0\\.0\\.3"),
            ]);
            assert!(skipped.is_empty());
            let opts = ConnectOpts {
                strategy: DnsStrategy::AsIs,
                send_ip: None,
                timeout: Duration::from_secs(3),
                allow_private: true,
                audit: Some(Arc::new(rules)),
                dns_routes: Arc::from([]),
            };
            let blocked = |r: Result<Vec<SocketAddr>, OutboundError>| match r {
                Err(OutboundError::Blocked(_, rule)) => Some(rule),
                _ => None,
            };
            // Refused by name, before any DNS query (the name does not exist).
            let d = Destination::Domain("www.blocked.test".into(), 80);
            assert_eq!(blocked(o.resolve(&d, &opts).await), Some(7));
            let d = Destination::Ip("127.0.0.2:80".parse().unwrap());
            assert_eq!(blocked(o.resolve(&d, &opts).await), Some(8));
            let d = Destination::Domain("127.0.0.3".into(), 80);
            assert_eq!(blocked(o.resolve(&d, &opts).await), Some(9));
            let d = Destination::Ip("127.0.0.1:80".parse().unwrap());
            assert!(o.resolve(&d, &opts).await.is_ok());
            // A network rule also holds for the addresses a name resolves to.
            let (rules, _) = AuditRules::compile([(5, "127.0.0.0/8"), (6, "::1/128")]);
            let opts = ConnectOpts {
                audit: Some(Arc::new(rules)),
                ..opts
            };
            let d = Destination::Domain("localhost".into(), 80);
            let r = o.resolve(&d, &opts).await;
            assert!(matches!(r, Err(OutboundError::Blocked(_, 5 | 6))), "{r:?}");
        });
    }

    #[test]
    fn resolve_refuses_private_after_resolution() {
        crate::runtime::run_local(async {
            let o = Outbound::default();
            let opts = ConnectOpts {
                strategy: DnsStrategy::AsIs,
                send_ip: None,
                timeout: Duration::from_secs(3),
                allow_private: false,
                audit: None,
                dns_routes: Arc::from([]),
            };
            let d = Destination::Ip("127.0.0.1:80".parse().unwrap());
            assert!(matches!(
                o.resolve(&d, &opts).await,
                Err(OutboundError::Forbidden(_))
            ));
            let d = Destination::Domain("localhost".into(), 80);
            let r = o.resolve(&d, &opts).await;
            assert!(matches!(r, Err(OutboundError::Forbidden(_))), "{r:?}");
            let ok = ConnectOpts {
                allow_private: true,
                ..opts
            };
            let d = Destination::Domain("127.0.0.1".into(), 80);
            assert_eq!(
                o.resolve(&d, &ok).await.unwrap(),
                vec!["127.0.0.1:80".parse().unwrap()]
            );
        });
    }
}
