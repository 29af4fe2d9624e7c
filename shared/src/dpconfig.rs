//! What the data plane needs to serve the nodes: built by the control plane from the local
//! config file and the panel's node info, published through the `config` shm segment as JSON
//! (read only when its generation changes, never on the per-byte path).

use serde::{Deserialize, Serialize};

use crate::cred::CredKind;

/// The whole data-plane configuration, one generation.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct DataplaneConfig {
    /// Worker threads; 0 = one per allowed CPU.
    pub workers: u32,
    /// `auto`, `uring` or `epoll` (the `V2SP_IO` environment variable wins).
    pub io: String,
    /// Allow proxying to private, loopback, link-local and unique-local destinations.
    pub allow_private_destinations: bool,
    pub timeouts: Timeouts,
    /// Caps on connections still in their handshake (flood and slow-client protection).
    pub handshake_limits: HandshakeLimits,
    /// After an upgrade, how long the replaced process keeps serving open connections
    /// (`Dataplane.DrainSeconds`); absent in a blob from an older control plane.
    pub drain_seconds: Option<u32>,
    pub nodes: Vec<NodeConfig>,
}

/// `Dataplane.DrainSeconds` when the config does not say.
pub const DEFAULT_DRAIN_SECONDS: u32 = 600;

/// How many accepted connections may be in their handshake at once, per data-plane worker
/// (0 = no cap). Beyond a cap a new connection is closed at once: a flood of connections that
/// never finish (scanners, slowloris) cannot exhaust memory, and one source address cannot
/// take the whole budget.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct HandshakeLimits {
    pub per_worker: u32,
    pub per_ip: u32,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        HandshakeLimits {
            per_worker: 4096,
            per_ip: 256,
        }
    }
}

/// Connection policy timeouts in seconds (Xray's policy defaults).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Timeouts {
    pub handshake: u32,
    pub conn_idle: u32,
    pub uplink_only: u32,
    pub downlink_only: u32,
    pub connect: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            handshake: 4,
            conn_idle: 300,
            uplink_only: 2,
            downlink_only: 5,
            connect: 10,
        }
    }
}

/// One node = one listener speaking one protocol.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NodeConfig {
    /// Index of this node's slot in the control segment (stable for the node's lifetime).
    pub slot: u16,
    /// Human-readable tag, e.g. `[https://panel]-shadowsocks:26`.
    pub tag: String,
    pub listen_ip: String,
    pub port: u16,
    pub protocol: Protocol,
    pub cred_kind: CredKind,
    /// Node-wide per-user cap in Mbps (`LimitConfig.SpeedLimit`), 0 = none.
    #[serde(default)]
    pub speed_limit_mbps: u32,
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Balancers allowed to send a PROXY header (`ProxyProtocolFrom`): `ip` or `ip/len`
    /// entries. Empty with `proxy_protocol` on = loopback only. Connections from other
    /// addresses are served as direct clients.
    #[serde(default)]
    pub proxy_protocol_from: Vec<String>,
    /// Proxies whose `X-Forwarded-For`/`X-Real-IP` is believed on HTTP transports
    /// (`TrustedProxies`): `ip` or `ip/len` entries; empty = none.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Source address for outbound connections (`SendIP`), empty = any.
    #[serde(default)]
    pub send_ip: String,
    /// `AsIs`, `UseIP`, `UseIPv4`, `UseIPv6`, `PreferIPv4`, `PreferIPv6`.
    #[serde(default)]
    pub dns_strategy: String,
    #[serde(default)]
    pub shadowsocks: Option<ShadowsocksSettings>,
    /// Stream transport between TLS and the protocol (panel `network`/`networkSettings`);
    /// plain TCP by default.
    #[serde(default)]
    pub transport: Transport,
    /// TLS terminated by the data plane (`None`: plaintext listener, e.g. behind an external
    /// terminator with `CertMode: none`).
    #[serde(default)]
    pub tls: Option<TlsSettings>,
    /// Where Trojan/VLESS connections that are not the protocol go (xray fallbacks, local
    /// `EnableFallback` + `FallBackConfigs`); empty = hold and close like a web server.
    #[serde(default)]
    pub fallbacks: Vec<FallbackTarget>,
    /// VLESS flow every user of the node must use (`xtls-rprx-vision`), empty = none.
    #[serde(default)]
    pub flow: String,
    /// Audit (block) rules from the panel's `routes`, normalized and validated by the control
    /// plane (`crate::audit`); every destination a user asks for is checked against them.
    #[serde(default)]
    pub block_rules: Vec<BlockRule>,
    /// DNS routes from the panel's `routes` (`action: "dns"`): names matching a route are
    /// resolved by its server instead of the system resolver; first match wins.
    #[serde(default)]
    pub dns_routes: Vec<DnsRoute>,
    /// Routing rules in the order they are tried (`custom_routes` or the local route file,
    /// then the panel's `direct`/`proxy` routes), validated by the control plane
    /// (`crate::route`). The panel's `block` routes are `block_rules`, checked before these.
    #[serde(default)]
    pub route_rules: Vec<crate::route::RouteRule>,
    /// Outbounds the rules name by tag (`custom_outbounds` or the local outbound file).
    #[serde(default)]
    pub outbounds: Vec<crate::route::OutboundSpec>,
    /// AnyTLS padding scheme, one `key=value` line each (panel `padding_scheme`); empty = the
    /// reference implementation's default scheme.
    #[serde(default)]
    pub padding_scheme: Vec<String>,
    /// Hysteria 2 settings from the panel (`None` for other protocols; configs written before
    /// Hysteria 2 was served have none).
    #[serde(default)]
    pub hysteria2: Option<Hysteria2Settings>,
    /// TUIC settings from the panel (`None` for other protocols).
    #[serde(default)]
    pub tuic: Option<TuicSettings>,
}

/// A TUIC v5 node's panel settings (Xboard: `congestion_control`, `zero_rtt_handshake`,
/// `heartbeat`, `auth_timeout`; spec §2).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct TuicSettings {
    /// `cubic` (also when empty), `new_reno` or `bbr`.
    pub congestion_control: String,
    /// How often the server sends a heartbeat datagram, in milliseconds.
    pub heartbeat_ms: u32,
    /// 0-RTT asked for by the panel (served as 1-RTT: see the node's notes).
    pub zero_rtt_handshake: bool,
}

impl Default for TuicSettings {
    fn default() -> Self {
        TuicSettings {
            congestion_control: "cubic".to_string(),
            heartbeat_ms: 3000,
            zero_rtt_handshake: false,
        }
    }
}

/// A Hysteria 2 node's panel settings (spec §B.4: `up_mbps`, `down_mbps`,
/// `ignore_client_bandwidth`, `obfs`, `obfs-password`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Hysteria2Settings {
    /// The server's upload bandwidth in Mbps (0 = not given): caps the fixed rate (Brutal)
    /// the server sends at to a client that declared its receive rate.
    pub up_mbps: u32,
    /// The server's download bandwidth in Mbps (0 = not given); told to clients as the
    /// server's receive rate unless `ignore_client_bandwidth`.
    pub down_mbps: u32,
    /// Tell clients to run their own congestion control (`Hysteria-CC-RX: auto`).
    pub ignore_client_bandwidth: bool,
    /// Obfuscation type: empty = none, `salamander` (the data plane refuses anything else).
    pub obfs: String,
    /// The Salamander password, byte for byte as the panel sent it; non-empty with
    /// `salamander`, empty without obfuscation.
    pub obfs_password: String,
    /// Port hopping: the local config's `HopPorts` (the panel never sends a range). The
    /// control plane redirects these UDP ports to the node's port with firewall rules of its
    /// own; the data plane serves the node's port only (a hopping client's packets reach the
    /// core that holds its connection whatever socket they land on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hop_ports: Option<PortRange>,
    /// What answers HTTP/3 requests that are not an authenticated Hysteria 2 client (any
    /// other request, a wrong password): the local config's `Masquerade`. `None`: a 404, as
    /// the reference server and sing-box without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub masquerade: Option<Masquerade>,
}

/// A Hysteria 2 node's masquerade (`Masquerade` in the local config, sing-box's URL form):
/// `file:///var/www` serves a directory, `http://…`/`https://…` proxies to a web server,
/// `string:…` answers every request with that text.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Masquerade {
    /// Static files under this absolute directory.
    File { dir: String },
    /// A reverse proxy to `host:port`, over TLS (certificate checked against the web PKI
    /// roots, SNI = `host`) when `tls`; request paths are appended to `base` (no trailing
    /// `/`); the `Host` header becomes `authority`.
    Proxy {
        tls: bool,
        host: String,
        port: u16,
        base: String,
        authority: String,
    },
    /// Status 200, `text/plain; charset=utf-8`, this body.
    String { content: String },
}

impl Masquerade {
    /// Parses the config's string: `file://` + an absolute path, `http(s)://host[:port][/path]`
    /// (no user info, query or fragment), or `string:` + the text.
    pub fn parse(s: &str) -> Result<Masquerade, String> {
        let want = "expected file:///dir, http(s)://host[:port][/path] or string:text";
        if let Some(text) = s.strip_prefix("string:") {
            return Ok(Masquerade::String {
                content: text.to_string(),
            });
        }
        if let Some(dir) = s.strip_prefix("file://") {
            if !dir.starts_with('/') {
                return Err(format!(
                    "{s:?}: file:// needs an absolute directory (file:///var/www)"
                ));
            }
            let dir = dir.trim_end_matches('/');
            return Ok(Masquerade::File {
                dir: if dir.is_empty() {
                    "/".to_string()
                } else {
                    dir.to_string()
                },
            });
        }
        let (tls, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!("{s:?}: {want}"));
        };
        if rest.contains(['?', '#', '@', ' ']) {
            return Err(format!(
                "{s:?}: no user info, query, fragment or spaces in a masquerade URL"
            ));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = match authority.strip_prefix('[') {
            // [v6] or [v6]:port
            Some(r) => {
                let (h, after) = r
                    .split_once(']')
                    .ok_or_else(|| format!("{s:?}: unclosed [ in the host"))?;
                let port = match after {
                    "" => default_port,
                    p => p
                        .strip_prefix(':')
                        .and_then(|p| p.parse::<u16>().ok())
                        .ok_or_else(|| format!("{s:?}: bad port"))?,
                };
                (h.to_string(), port)
            }
            None => match authority.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse::<u16>().map_err(|_| format!("{s:?}: bad port"))?,
                ),
                None => (authority.to_string(), default_port),
            },
        };
        if host.is_empty() || port == 0 {
            return Err(format!("{s:?}: {want}"));
        }
        Ok(Masquerade::Proxy {
            tls,
            host,
            port,
            base: path.trim_end_matches('/').to_string(),
            authority: authority.to_string(),
        })
    }
}

/// An inclusive range of ports, `first-last` in the config (`HopPorts: "20000-50000"`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// Parses `a-b` with 1 ≤ a ≤ b ≤ 65535 (spaces around the numbers allowed). A single port
    /// is not a range to hop over and is refused, as are other separators, so that a typo is
    /// not read as something else.
    pub fn parse(s: &str) -> Result<PortRange, String> {
        let want = "a port range \"first-last\" with 1 ≤ first ≤ last ≤ 65535, e.g. \"20000-50000\"";
        let (a, b) = s.split_once('-').ok_or_else(|| format!("{s:?} is not {want}"))?;
        let port = |p: &str| p.trim().parse::<u16>().ok().filter(|&p| p != 0);
        match (port(a), port(b)) {
            (Some(first), Some(last)) if first <= last => Ok(PortRange { first, last }),
            _ => Err(format!("{s:?} is not {want}")),
        }
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// One panel `dns` route: the names it covers and the server that resolves them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DnsRoute {
    /// The route's `id`.
    pub id: i64,
    /// Domain patterns in normal form (`crate::audit::Pattern::to_entry`).
    pub domains: Vec<String>,
    /// Plain DNS over UDP/TCP at this address (`ip:port`).
    pub server: std::net::SocketAddr,
}

/// One usable entry of a panel `block` route.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlockRule {
    /// The route's `id` (logged when it blocks).
    pub id: i64,
    /// The entry in normal form (`crate::audit::Pattern::to_entry`).
    pub pattern: String,
}

/// One fallback (xray semantics): the first entry whose `sni`, `alpn` and `path` match — each
/// compared exactly, an empty value matching when no entry names the connection's value —
/// receives the connection with every byte already read.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct FallbackTarget {
    /// TLS server name sent by the client ("" = any).
    pub sni: String,
    /// Negotiated ALPN ("" = any).
    pub alpn: String,
    /// HTTP/1 request path ("" = any), e.g. `/ws`.
    pub path: String,
    /// `port` (loopback), `host:port` or `[v6]:port`.
    pub dest: String,
    /// PROXY protocol header version sent to `dest` first (0 = none, 1, 2).
    pub xver: u8,
}

/// Server-side TLS of one node. The control plane resolves the local `CertConfig` into files
/// (generating a self-signed pair for `CertMode: self`); the data plane only loads PEM files
/// and reloads them when their mtime changes.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct TlsSettings {
    /// `file`, `self`, `http`, `dns` (informational: where the files come from).
    pub cert_mode: String,
    /// PEM certificate chain.
    pub cert_file: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
    /// Expected SNI (the panel's `server_name` or `CertDomain`); empty = any.
    pub server_name: String,
    /// Refuse handshakes whose SNI is not `server_name` (`RejectUnknownSni`).
    pub reject_unknown_sni: bool,
    /// ALPN protocols offered, in preference order; empty = no ALPN.
    pub alpn: Vec<String>,
    /// REALITY instead of a certificate (VLESS, panel `tls: 2`): the certificate fields are
    /// then unused.
    pub reality: Option<RealitySettings>,
    /// `CertMode: tls` (ACME TLS-ALPN-01, RFC 8737): the PEM file (challenge certificate, then
    /// its key) that the control plane writes while a validation runs and removes after it.
    /// The data plane serves it only to a ClientHello whose ALPN offers `acme-tls/1` and
    /// nothing else, and closes such a connection after the handshake. Empty = never.
    pub acme_tls_alpn_file: String,
}

/// Server-side REALITY of one node (spec §F.3).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct RealitySettings {
    /// `host:port` that unauthenticated clients are relayed to (and whose certificate they see).
    pub dest: String,
    /// SNI values a REALITY client may use (exact, case-insensitive).
    pub server_names: Vec<String>,
    /// X25519 private key, base64url (no padding; padding tolerated).
    pub private_key: String,
    /// Accepted short ids, hex, up to 16 digits each ("" = all zeros).
    pub short_ids: Vec<String>,
    /// PROXY protocol version sent to `dest` (0 = none, 1 or 2).
    pub xver: u8,
    /// Largest accepted client clock difference in milliseconds (0 = not checked).
    pub max_time_diff_ms: u64,
}

/// The stream transport of a node (xray's `network`), for the stream protocols (Trojan, VLESS,
/// VMess). Shadowsocks is always plain TCP.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "network", rename_all = "lowercase")]
pub enum Transport {
    /// Raw TCP (the protocol right after TLS).
    #[default]
    Tcp,
    /// WebSocket (RFC 6455) after an HTTP/1.1 Upgrade; early data in `Sec-WebSocket-Protocol`.
    Ws(HttpPathSettings),
    /// An HTTP/1.1 Upgrade request answered with 101, then raw bytes.
    HttpUpgrade(HttpPathSettings),
    /// Raw TCP behind xray's `header.type = "http"` obfuscation: one fake request head read
    /// and discarded, one fake response head sent.
    TcpHttp(TcpHttpSettings),
    /// gRPC "gun" (xray `grpc`): one HTTP/2 stream per connection, payload in protobuf
    /// `Hunk`/`MultiHunk` messages.
    Grpc(GrpcSettings),
    /// XHTTP (xray `xhttp`, formerly `splithttp`): a stream carried by HTTP requests (HTTP/1.1
    /// or HTTP/2): one streaming GET down and either POSTs of numbered packets or one streaming
    /// POST up, joined into one session by an id in the path.
    Xhttp(XhttpSettings),
}

impl Transport {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Ws(_) => "ws",
            Self::HttpUpgrade(_) => "httpupgrade",
            Self::TcpHttp(_) => "tcp+http",
            Self::Grpc(_) => "grpc",
            Self::Xhttp(_) => "xhttp",
        }
    }
    /// ALPN protocols a TLS node offers for this transport (empty: none).
    pub fn alpn(&self) -> Vec<String> {
        match self {
            Self::Tcp | Self::TcpHttp(_) => Vec::new(),
            Self::Ws(_) | Self::HttpUpgrade(_) => vec!["http/1.1".to_string()],
            Self::Grpc(_) => vec!["h2".to_string()],
            // Xray's client speaks HTTP/2 over TLS whatever ALPN says (and HTTP/1.1 when told
            // `http/1.1` only); the server reads the connection preface to know which.
            Self::Xhttp(_) => vec!["h2".to_string(), "http/1.1".to_string()],
        }
    }
}

/// xray's `grpcSettings`, server side.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct GrpcSettings {
    /// `serviceName` as the panel sent it (xray: a name starting with `/` is a custom path,
    /// `/a/b/Tun|TunMulti`).
    pub service_name: String,
    /// `multiMode` (a client setting; the server accepts both streams either way).
    pub multi_mode: bool,
}

/// xray's `xhttpSettings`, server side: where requests are accepted, the mode, and the `extra`
/// settings that change what the server accepts or sends (Xray's names and defaults).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct XhttpSettings {
    /// Base path, starting and ending with `/` (a request's path is this, then the session id,
    /// then `/seq` for a packet).
    pub path: String,
    /// When non-empty, the request's Host (port ignored, case-insensitive) must equal this.
    pub host: String,
    /// `auto`, `packet-up`, `stream-up` or `stream-one`: which uploads are accepted.
    pub mode: String,
    /// `xPaddingBytes`: the length range of the padding a client may send (`x_padding` in the
    /// query or the Referer's query) and of the `X-Padding` header we answer with.
    pub padding_min: u32,
    pub padding_max: u32,
    /// `scMaxEachPostBytes`: the largest packet-up POST body.
    pub max_each_post_bytes: u32,
    /// `scMaxBufferedPosts`: packets held out of order per session.
    pub max_buffered_posts: u32,
    /// `noSSEHeader`: no `Content-Type: text/event-stream` on the download.
    pub no_sse_header: bool,
}

impl Default for XhttpSettings {
    fn default() -> Self {
        XhttpSettings {
            path: "/".to_string(),
            host: String::new(),
            mode: "auto".to_string(),
            padding_min: 100,
            padding_max: 1000,
            max_each_post_bytes: 1_000_000,
            max_buffered_posts: 30,
            no_sse_header: false,
        }
    }
}

/// xray's tcp `header` of type `http`, server side.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct TcpHttpSettings {
    /// Accepted request paths (`request.path`; xray's default `["/"]`).
    pub paths: Vec<String>,
    /// Response status line, e.g. `HTTP/1.1 200 OK`.
    pub status_line: String,
    /// Response header lines (`Name: value`); a `Date` is added unless one is given.
    pub headers: Vec<String>,
}

/// Where an HTTP-based transport accepts requests.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct HttpPathSettings {
    /// Request path that must match exactly (query string ignored), starting with `/`.
    pub path: String,
    /// When non-empty, the request's Host (port ignored, case-insensitive) must equal this.
    pub host: String,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Shadowsocks,
    Vless,
    Vmess,
    Trojan,
    Hysteria2,
    Anytls,
    Tuic,
}

impl Protocol {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "shadowsocks" | "ss" => Self::Shadowsocks,
            "vless" => Self::Vless,
            "vmess" | "v2ray" => Self::Vmess,
            "trojan" => Self::Trojan,
            "hysteria2" | "hysteria" | "hy2" => Self::Hysteria2,
            "anytls" => Self::Anytls,
            "tuic" => Self::Tuic,
            _ => return None,
        })
    }
    /// Which sockets a node of this protocol listens on: (TCP, UDP). UDP over Trojan, VLESS,
    /// VMess and AnyTLS travels inside their TCP connections.
    pub fn sockets(self) -> (bool, bool) {
        match self {
            Self::Shadowsocks => (true, true),
            Self::Hysteria2 | Self::Tuic => (false, true),
            Self::Vless | Self::Vmess | Self::Trojan | Self::Anytls => (true, false),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Shadowsocks => "shadowsocks",
            Self::Vless => "vless",
            Self::Vmess => "vmess",
            Self::Trojan => "trojan",
            Self::Hysteria2 => "hysteria2",
            Self::Anytls => "anytls",
            Self::Tuic => "tuic",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShadowsocksSettings {
    /// Canonical cipher name, e.g. `aes-128-gcm`, `2022-blake3-aes-256-gcm`.
    pub cipher: String,
    /// SS-2022 server PSK (base64), empty for AEAD-2017.
    #[serde(default)]
    pub server_key: String,
    /// Replay (salt) check on; `DisableIVCheck` turns it off for AEAD-2017.
    #[serde(default = "yes")]
    pub replay_check: bool,
}

fn yes() -> bool {
    true
}

/// Nodes that would listen where a node of a lower slot already listens: `(refused, kept)`
/// pairs. TCP and UDP are separate: a Hysteria 2 node (UDP only) may share 443 with a
/// Trojan or VLESS node (TCP only), a common deployment; a Shadowsocks node uses both. Every listener is bound with `SO_REUSEPORT`, so the kernel would accept a second
/// node on the same port without complaint and then hand each new connection to either of
/// them at random: half the clients would fail their handshake with no error anywhere. Two
/// nodes conflict when their ports are equal and their addresses overlap (equal, or either is
/// a wildcard; `::` is dual-stack and overlaps IPv4 too). The lower slot (the node configured
/// first) keeps the port, so a node that serves is never displaced by one added later.
pub fn listen_conflicts(nodes: &[NodeConfig]) -> Vec<(u16, u16)> {
    let mut by_slot: Vec<&NodeConfig> = nodes.iter().collect();
    by_slot.sort_by_key(|n| n.slot);
    let mut kept: Vec<&NodeConfig> = Vec::with_capacity(by_slot.len());
    let mut refused = Vec::new();
    for n in by_slot {
        match kept.iter().find(|k| {
            let ((kt, ku), (nt, nu)) = (k.protocol.sockets(), n.protocol.sockets());
            k.port == n.port && ((kt && nt) || (ku && nu)) && addresses_overlap(&k.listen_ip, &n.listen_ip)
        }) {
            Some(k) => refused.push((n.slot, k.slot)),
            None => kept.push(n),
        }
    }
    refused
}

fn addresses_overlap(a: &str, b: &str) -> bool {
    use std::net::IpAddr;
    let parse = |s: &str| -> Option<IpAddr> {
        let s = s.trim().trim_start_matches('[').trim_end_matches(']');
        if s.is_empty() {
            // An empty listen_ip is the dual-stack wildcard.
            return Some(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
        }
        s.parse().ok()
    };
    match (parse(a), parse(b)) {
        (Some(x), Some(y)) => {
            let wild = |ip: IpAddr| match ip {
                // `::` overlaps everything; `0.0.0.0` every IPv4 address (and `::`).
                IpAddr::V6(v6) if v6.is_unspecified() => Some(true),
                IpAddr::V4(v4) if v4.is_unspecified() => Some(false),
                _ => None,
            };
            match (wild(x), wild(y)) {
                (Some(true), _) | (_, Some(true)) => true,
                (Some(false), _) => y.is_ipv4() || y.to_canonical().is_ipv4(),
                (_, Some(false)) => x.is_ipv4() || x.to_canonical().is_ipv4(),
                _ => x.to_canonical() == y.to_canonical(),
            }
        }
        // Unparseable addresses are refused later with their own error; compare as written.
        _ => a.trim() == b.trim(),
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod listen_conflict_tests {
    use super::*;

    fn node(slot: u16, ip: &str, port: u16) -> NodeConfig {
        let mut n: NodeConfig = serde_json::from_value(serde_json::json!({
            "slot": slot, "tag": format!("n{slot}"), "listen_ip": ip, "port": port,
            "protocol": "trojan", "cred_kind": "TrojanSha224"
        }))
        .expect("minimal node");
        n.slot = slot;
        n
    }

    #[test]
    fn same_port_same_address_keeps_the_lower_slot() {
        let nodes = [
            node(3, "0.0.0.0", 443),
            node(1, "0.0.0.0", 443),
            node(2, "0.0.0.0", 8443),
        ];
        assert_eq!(listen_conflicts(&nodes), vec![(3, 1)]);
    }

    #[test]
    fn wildcards_overlap_specific_addresses() {
        assert_eq!(
            listen_conflicts(&[node(1, "", 443), node(2, "127.0.0.1", 443)]),
            vec![(2, 1)]
        );
        assert_eq!(
            listen_conflicts(&[node(1, "::", 443), node(2, "::1", 443)]),
            vec![(2, 1)]
        );
        assert_eq!(
            listen_conflicts(&[node(1, "0.0.0.0", 443), node(2, "10.0.0.1", 443)]),
            vec![(2, 1)]
        );
        assert_eq!(
            listen_conflicts(&[node(1, "10.0.0.1", 443), node(2, "0.0.0.0", 443)]),
            vec![(2, 1)]
        );
        assert_eq!(
            listen_conflicts(&[node(1, "::ffff:10.0.0.1", 443), node(2, "10.0.0.1", 443)]),
            vec![(2, 1)]
        );
    }

    #[test]
    fn tcp_and_udp_nodes_share_a_port_unless_both_use_the_same_transport() {
        let mut hy2 = node(2, "0.0.0.0", 443);
        hy2.protocol = Protocol::Hysteria2;
        assert!(listen_conflicts(&[node(1, "0.0.0.0", 443), hy2.clone()]).is_empty());
        let mut ss = node(1, "0.0.0.0", 443);
        ss.protocol = Protocol::Shadowsocks;
        assert_eq!(listen_conflicts(&[ss, hy2.clone()]), vec![(2, 1)]);
        let mut hy2b = hy2.clone();
        hy2b.slot = 3;
        assert_eq!(listen_conflicts(&[hy2, hy2b]), vec![(3, 2)]);
    }

    #[test]
    fn distinct_addresses_or_ports_do_not_conflict() {
        assert!(listen_conflicts(&[node(1, "10.0.0.1", 443), node(2, "10.0.0.2", 443)]).is_empty());
        assert!(listen_conflicts(&[node(1, "0.0.0.0", 443), node(2, "::1", 443)]).is_empty());
        assert!(listen_conflicts(&[node(1, "0.0.0.0", 443), node(2, "0.0.0.0", 444)]).is_empty());
    }
}
