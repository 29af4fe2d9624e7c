//! Outbounds. Direct: resolve (hickory, one resolver per core), refuse private destinations,
//! bind `SendIP`, connect with a timeout, `TCP_NODELAY`. Routed ([`Outbound::open`]): the
//! node's rules (`route.rs`) pick direct, a blackhole, or a proxy outbound (SOCKS5, HTTP
//! CONNECT: `proxy.rs`; Shadowsocks: a destination-side codec for the relay).

pub mod proxy;
pub mod route;
pub mod tls;

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
            "useip" | "forceip" => Self::UseIp,
            "useipv4" | "ipv4_only" | "forceipv4" => Self::UseIpv4,
            // Xray's "both, this family first" forms.
            "useipv4v6" | "forceipv4v6" => Self::PreferIpv4,
            "useipv6v4" | "forceipv6v4" => Self::PreferIpv6,
            "useipv6" | "ipv6_only" | "forceipv6" => Self::UseIpv6,
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
    /// A routing rule sends the destination to a blackhole.
    #[error("{0} is routed to a blackhole by {1}")]
    Routed(String, String),
    /// The proxy outbound's server failed the handshake.
    #[error("outbound {0}: {1}")]
    Proxy(String, String),
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
    /// The node's routing rules and outbounds (empty: everything goes direct).
    pub routing: Arc<route::Routing>,
}

/// What a connection is routed on besides its destination.
#[derive(Clone, Copy, Debug)]
pub struct RouteCtx<'a> {
    pub node_tag: &'a str,
    pub user_id: u32,
    /// The user's uuid (text) on nodes whose credential is one.
    pub user_uuid: Option<&'a str>,
    pub source: Option<IpAddr>,
    /// From the client's first bytes: the protocol, and the name (TLS SNI, HTTP Host).
    pub sniffed_protocol: Option<&'a str>,
    pub sniffed_domain: Option<&'a str>,
}

/// A connected destination: the stream, and the codec an encrypting proxy outbound needs
/// between it and the relay (`None`: the bytes pass unchanged, the relay may splice).
pub struct Upstream {
    pub stream: TcpStream,
    pub codec: Option<Box<dyn crate::proto::UpstreamCodec>>,
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

    /// Where the node's rules send `dest` (`Route::Default` when it has none).
    pub fn route(
        &self,
        dest: &Destination,
        network: v2sp_shared::route::Network,
        ctx: &RouteCtx<'_>,
    ) -> route::Route<'_> {
        if self.routing.is_empty() {
            return route::Route::Default;
        }
        let (ip, port, name) = match dest {
            Destination::Ip(a) => (Some(a.ip()), a.port(), None),
            Destination::Domain(d, p) => match d.parse::<IpAddr>() {
                Ok(ip) => (Some(ip), *p, None),
                Err(_) => (None, *p, Some(d.as_str())),
            },
        };
        self.routing.route(&v2sp_shared::route::RouteQuery {
            node_tag: ctx.node_tag,
            user_id: ctx.user_id,
            user_uuid: ctx.user_uuid,
            domain: name.or(ctx.sniffed_domain),
            ip,
            port,
            network,
            protocol: ctx.sniffed_protocol,
            source: ctx.source,
        })
    }

    /// These options with a direct route's changes: a freedom outbound's strategy and source
    /// address, and private destinations allowed when the rule named the destination.
    pub fn for_direct(&self, r: &route::Route<'_>) -> Option<ConnectOpts> {
        match *r {
            route::Route::Direct {
                strategy,
                send_ip,
                names_destination,
                ..
            } => Some(ConnectOpts {
                strategy: strategy.unwrap_or(self.strategy),
                send_ip: send_ip.or(self.send_ip),
                allow_private: self.allow_private || names_destination,
                ..self.clone()
            }),
            _ => None,
        }
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

impl Outbound {
    /// Routes `dest` by the node's rules and connects: direct (as [`Outbound::connect`]),
    /// refused (a blackhole), or through a proxy outbound (its server dialed within the
    /// connect timeout, the handshake within the same deadline).
    pub async fn open(
        &self,
        dest: &Destination,
        opts: &ConnectOpts,
        ctx: &RouteCtx<'_>,
    ) -> Result<Upstream, OutboundError> {
        let r = opts.route(dest, v2sp_shared::route::Network::Tcp, ctx);
        let (rule, tag, outbound, names_destination) = match r {
            route::Route::Default => {
                let stream = self.connect(dest, opts).await?;
                return Ok(Upstream { stream, codec: None });
            }
            route::Route::Direct { .. } => {
                let direct = opts.for_direct(&r).unwrap_or_else(|| opts.clone());
                let stream = self.connect(dest, &direct).await?;
                return Ok(Upstream { stream, codec: None });
            }
            route::Route::Block { rule } => {
                return Err(OutboundError::Routed(dest.to_string(), rule.to_string()))
            }
            route::Route::Proxy {
                rule,
                tag,
                outbound,
                names_destination,
            } => (rule, tag, outbound, names_destination),
        };
        // The audit rules hold whatever the route (checked on the name here: the proxy, not
        // us, resolves it).
        if let Some(rule) = opts.blocked_dest(dest) {
            return Err(OutboundError::Blocked(dest.to_string(), rule));
        }
        let dest_ip = match dest {
            Destination::Ip(a) => Some(a.ip()),
            Destination::Domain(d, _) => d.parse::<IpAddr>().ok(),
        };
        if let Some(ip) = dest_ip.filter(|&ip| !opts.allow_private && !names_destination && is_forbidden(ip))
        {
            return Err(OutboundError::Forbidden(ip));
        }
        tracing::trace!(%dest, rule, tag, "routed to a proxy outbound");
        let fut = self.open_proxy(dest, opts, tag, outbound);
        match tokio::time::timeout(opts.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(OutboundError::Timeout),
        }
    }

    /// As [`Outbound::open`] for streams the data plane relays itself (mux sub-streams,
    /// QUIC and XHTTP streams): bytes must pass unchanged, so an outbound that re-frames them
    /// (Shadowsocks) is refused there, with the reason.
    pub async fn open_plain(
        &self,
        dest: &Destination,
        opts: &ConnectOpts,
        ctx: &RouteCtx<'_>,
    ) -> Result<TcpStream, OutboundError> {
        match self.open(dest, opts, ctx).await? {
            Upstream { stream, codec: None } => Ok(stream),
            Upstream { codec: Some(_), .. } => Err(OutboundError::Proxy(
                "shadowsocks".into(),
                "this outbound is served on TCP connections only (not on mux, QUIC or XHTTP streams)".into(),
            )),
        }
    }

    async fn open_proxy(
        &self,
        dest: &Destination,
        opts: &ConnectOpts,
        tag: &str,
        outbound: &route::OutboundRt,
    ) -> Result<Upstream, OutboundError> {
        use route::OutboundRt;
        let server = match outbound {
            OutboundRt::Socks { server, .. } | OutboundRt::Http { server, .. } => server,
            #[cfg(feature = "shadowsocks")]
            OutboundRt::Shadowsocks { server, .. } => server,
            #[cfg(feature = "vmess")]
            OutboundRt::Vmess { server, .. } => server,
            #[cfg(feature = "vless")]
            OutboundRt::Vless { server, .. } => server,
            OutboundRt::Trojan { server, .. } => server,
            OutboundRt::Freedom { .. } | OutboundRt::Blackhole => {
                return Err(OutboundError::Proxy(tag.to_string(), "not a proxy".into()))
            }
        };
        let server_dest = route::server_destination(server)
            .ok_or_else(|| OutboundError::Proxy(tag.to_string(), format!("bad server {server:?}")))?;
        // The admin named this server: it may be private (a proxy on the same host or LAN),
        // and the users' audit rules are not about it.
        let server_opts = ConnectOpts {
            allow_private: true,
            audit: None,
            routing: Arc::default(),
            ..opts.clone()
        };
        let mut stream = self.connect(&server_dest, &server_opts).await?;
        let fail = |e: io::Error| OutboundError::Proxy(tag.to_string(), e.to_string());
        match outbound {
            OutboundRt::Socks { auth: a, .. } => {
                proxy::socks5(&mut stream, dest, auth(a)).await.map_err(fail)?;
                Ok(Upstream { stream, codec: None })
            }
            OutboundRt::Http { auth: a, .. } => {
                proxy::http_connect(&mut stream, dest, auth(a))
                    .await
                    .map_err(fail)?;
                Ok(Upstream { stream, codec: None })
            }
            #[cfg(feature = "shadowsocks")]
            OutboundRt::Shadowsocks { ss, .. } => {
                use tokio::io::AsyncWriteExt as _;
                let wire = |e: crate::proto::WireError| OutboundError::Proxy(tag.to_string(), e.to_string());
                let (codec, head) = ss_codec(ss, dest).map_err(wire)?;
                // The request header goes now: a destination that speaks first (SMTP, SSH)
                // must not wait for the client's first bytes.
                stream.write_all(&head).await.map_err(fail)?;
                Ok(Upstream {
                    stream,
                    codec: Some(codec),
                })
            }
            #[cfg(feature = "vmess")]
            OutboundRt::Vmess {
                cmd_key,
                security,
                tls,
                ..
            } => {
                let wire = |e: crate::proto::WireError| OutboundError::Proxy(tag.to_string(), e.to_string());
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let (codec, head) =
                    crate::proto::vmess::client::ClientStream::new(*cmd_key, *security, dest.clone(), now)
                        .map_err(wire)?;
                framed(stream, tls.as_ref(), head, Some(Box::new(codec)), tag).await
            }
            #[cfg(feature = "vless")]
            OutboundRt::Vless { uuid, tls, .. } => {
                let wire = |e: crate::proto::WireError| OutboundError::Proxy(tag.to_string(), e.to_string());
                let head = crate::proto::vless::client::request(uuid, dest).map_err(wire)?;
                let codec = crate::proto::vless::client::ClientStream::default();
                framed(stream, tls.as_ref(), head, Some(Box::new(codec)), tag).await
            }
            OutboundRt::Trojan { hash, tls, .. } => {
                // hex(SHA224(password)) CRLF | 01 (CONNECT) | SOCKS address | CRLF, then raw.
                let mut head = hash.as_bytes().to_vec();
                head.extend_from_slice(b"\r\n\x01");
                head.extend_from_slice(
                    proxy::socks5_connect(dest)
                        .map_err(fail)?
                        .get(3..)
                        .unwrap_or_default(),
                );
                head.extend_from_slice(b"\r\n");
                framed(stream, tls.as_ref(), head, None, tag).await
            }
            OutboundRt::Freedom { .. } | OutboundRt::Blackhole => {
                Err(OutboundError::Proxy(tag.to_string(), "not a proxy".into()))
            }
        }
    }
}

/// A Shadowsocks client stream to `dest`, and its request header (salt and address; for 2022
/// the fixed and variable headers with random padding, since no payload goes with them).
#[cfg(feature = "shadowsocks")]
fn ss_codec(
    ss: &route::SsOutbound,
    dest: &Destination,
) -> Result<(Box<dyn crate::proto::UpstreamCodec>, Vec<u8>), crate::proto::WireError> {
    use crate::proto::ss::{address, aead::Aead2017Client, ss2022::Ss2022Client};
    let mut head = Vec::new();
    if ss.method.is_2022() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let padding = 1 + usize::from(rand::random::<u8>()) % 64;
        let mut c = Ss2022Client::new(
            ss.method.aead(),
            ss.identity.as_deref(),
            &ss.key,
            dest,
            &[],
            padding,
            now,
        )?;
        c.seal(&[], &mut head)?;
        Ok((Box::new(c), head))
    } else {
        let mut c = Aead2017Client::new(ss.method.aead(), &ss.key)?;
        let mut addr = Vec::new();
        address::write(dest, &mut addr)?;
        c.seal(&addr, &mut head)?;
        Ok((Box::new(c), head))
    }
}

/// Sends a proxy protocol's request header `head` (through TLS when the outbound has it; the
/// handshake first) and returns the stream with the codec the relay needs: the protocol's
/// framing inside the TLS session, or `None` when bytes pass unchanged (Trojan without TLS).
async fn framed(
    mut stream: TcpStream,
    tls: Option<&tls::TlsClient>,
    head: Vec<u8>,
    inner: Option<Box<dyn crate::proto::UpstreamCodec>>,
    tag: &str,
) -> Result<Upstream, OutboundError> {
    use tokio::io::AsyncWriteExt as _;
    let fail = |e: String| OutboundError::Proxy(tag.to_string(), e);
    let (wire, codec): (Vec<u8>, Option<Box<dyn crate::proto::UpstreamCodec>>) = match tls {
        Some(t) => {
            let mut session = t
                .handshake(&mut stream)
                .await
                .map_err(|e| fail(format!("TLS: {e}")))?
                .with_inner(inner);
            let mut wire = Vec::new();
            session
                .seal_raw(&head, &mut wire)
                .map_err(|e| fail(e.to_string()))?;
            (wire, Some(Box::new(session)))
        }
        None => (head, inner),
    };
    // The request header goes now: a destination that speaks first (SMTP, SSH) must not wait
    // for the client's first bytes.
    stream.write_all(&wire).await.map_err(|e| fail(e.to_string()))?;
    Ok(Upstream { stream, codec })
}

fn auth(a: &Option<(String, String)>) -> Option<(&str, &str)> {
    a.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
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
                routing: Arc::default(),
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
                routing: Arc::default(),
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
