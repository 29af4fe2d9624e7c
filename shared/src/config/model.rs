//! The typed configuration. Field names are Rust names; the `serde(rename)`s give the Go key
//! names, used by [`Config::masked_json`] so that `v2sp config check` prints keys operators
//! recognise from their files.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use serde::Serialize;

pub use crate::dpconfig::Timeouts;

/// Default location of v2sp's own state (accounting journal, ledgers).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/v2sp";
/// Default directory of the shared-memory files between control and data plane.
pub const DEFAULT_SHM_DIR: &str = "/dev/shm/v2sp";
/// Default `ApiHost` of a node entry.
pub const DEFAULT_API_HOST: &str = "http://127.0.0.1";
/// Default per-attempt panel request timeout, seconds.
pub const DEFAULT_TIMEOUT_SECS: u64 = 30;
/// What a `Timeout` ≤ 0 becomes (Go v2sp behaviour).
pub const NONPOSITIVE_TIMEOUT_SECS: u64 = 5;

/// The whole local configuration (`/etc/v2sp/config.json`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Config {
    #[serde(rename = "Log")]
    pub log: LogConfig,
    /// `Cores`: accepted for compatibility and shown by `config check`; v2sp runs one engine,
    /// so nothing here changes behaviour except `XrayConnectionConfig` (see
    /// [`DataplaneSettings::timeouts`]).
    #[serde(rename = "Cores")]
    pub cores: Vec<CoreConfig>,
    #[serde(rename = "Nodes")]
    pub nodes: Vec<NodeEntry>,
    /// v2sp extension, top-level `"StateDir"` (default `/var/lib/v2sp`): where the control
    /// plane keeps its accounting journal and standalone-mode ledgers.
    #[serde(rename = "StateDir")]
    pub state_dir: PathBuf,
    /// v2sp extension, top-level `"Dataplane"` object.
    #[serde(rename = "Dataplane")]
    pub dataplane: DataplaneSettings,
    /// v2sp extension, top-level `"Metrics"` object.
    #[serde(rename = "Metrics")]
    pub metrics: MetricsSettings,
}

/// Top-level `Metrics`: a Prometheus scrape endpoint served by the control plane.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MetricsSettings {
    /// `Listen`: `host:port` for `GET /metrics` (text format 0.0.4); absent or `""` = off.
    /// It has no authentication: keep it on loopback or a private network (a public address
    /// is accepted with a warning).
    #[serde(rename = "Listen")]
    pub listen: Option<std::net::SocketAddr>,
    /// `TopUsers`: also export `v2sp_user_traffic_bytes_total{node,user,direction}` for the
    /// this many users with the most bytes since the control plane started; 0 (default) = off.
    /// Bounded so that a node with many users does not flood Prometheus with series; the
    /// control plane keeps one small counter per active user while it is on.
    #[serde(rename = "TopUsers")]
    pub top_users: u32,
}

/// Top-level `Log`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LogConfig {
    /// `Level`: `debug`/`info`/`warn`/`error` (case-insensitive; `warning` = `warn`);
    /// anything else is a warning and means `info`.
    #[serde(rename = "Level")]
    pub level: LogLevel,
    /// `Output`: append log lines to this file; `""` or `stderr` = stderr (journald),
    /// `stdout` = stdout.
    #[serde(rename = "Output")]
    pub output: String,
    /// v2sp extension `Format`: `text` (default) or `json` (one JSON object per line).
    #[serde(rename = "Format")]
    pub format: LogFormat,
}

/// `Log.Format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }

    /// `text`/`json`, case-insensitive; `None` for anything else.
    pub fn parse(s: &str) -> Option<LogFormat> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" | "plain" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: LogLevel::Info,
            output: String::new(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// One entry of `Cores`. The keys of all three historical core types are accepted in one
/// object (the Go code decoded the same object into the type's struct).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CoreConfig {
    /// `Type`, lower-cased: `xray` (also when empty), `sing` or `hysteria2`.
    #[serde(rename = "Type")]
    pub core_type: String,
    /// `Name`, for `CoreName` selection in multi-core setups.
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Log")]
    pub log: CoreLog,
    /// xray `AssetPath` (default `/etc/v2sp/` for xray).
    #[serde(rename = "AssetPath")]
    pub asset_path: String,
    #[serde(rename = "DnsConfigPath")]
    pub dns_config_path: String,
    #[serde(rename = "RouteConfigPath")]
    pub route_config_path: String,
    #[serde(rename = "InboundConfigPath")]
    pub inbound_config_path: String,
    #[serde(rename = "OutboundConfigPath")]
    pub outbound_config_path: String,
    /// xray `XrayConnectionConfig` when present (its missing keys take xray's defaults).
    #[serde(rename = "XrayConnectionConfig", skip_serializing_if = "Option::is_none")]
    pub connection: Option<XrayConnectionConfig>,
    /// sing `OriginalPath`.
    #[serde(rename = "OriginalPath")]
    pub original_path: String,
    /// sing `NTP`.
    #[serde(rename = "NTP", skip_serializing_if = "Option::is_none")]
    pub ntp: Option<NtpConfig>,
    /// hysteria2 (subprocess era) `BinaryPath`.
    #[serde(rename = "BinaryPath")]
    pub binary_path: String,
    /// hysteria2 (subprocess era) `ConfigDir`.
    #[serde(rename = "ConfigDir")]
    pub config_dir: String,
}

impl CoreConfig {
    /// Defaults for a core of the given (lower-cased) type.
    pub fn defaults_for(core_type: &str) -> Self {
        let xray = core_type == "xray";
        CoreConfig {
            core_type: core_type.to_owned(),
            name: String::new(),
            log: CoreLog {
                level: if xray { "warning" } else { "error" }.to_owned(),
                timestamp: true,
                ..CoreLog::default()
            },
            asset_path: if xray {
                "/etc/v2sp/".to_owned()
            } else {
                String::new()
            },
            dns_config_path: String::new(),
            route_config_path: String::new(),
            inbound_config_path: String::new(),
            outbound_config_path: String::new(),
            connection: None,
            original_path: String::new(),
            ntp: None,
            binary_path: String::new(),
            config_dir: String::new(),
        }
    }
}

/// A core's `Log` (union of the xray, sing and hysteria2 forms).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CoreLog {
    #[serde(rename = "Level")]
    pub level: String,
    #[serde(rename = "AccessPath")]
    pub access_path: String,
    #[serde(rename = "ErrorPath")]
    pub error_path: String,
    #[serde(rename = "Output")]
    pub output: String,
    #[serde(rename = "Disable")]
    pub disable: bool,
    #[serde(rename = "Timestamp")]
    pub timestamp: bool,
}

/// xray's policy level 0 (seconds; `bufferSize` in KiB).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct XrayConnectionConfig {
    #[serde(rename = "handshake")]
    pub handshake: u32,
    #[serde(rename = "connIdle")]
    pub conn_idle: u32,
    #[serde(rename = "uplinkOnly")]
    pub uplink_only: u32,
    #[serde(rename = "downlinkOnly")]
    pub downlink_only: u32,
    #[serde(rename = "bufferSize")]
    pub buffer_size: i32,
}

impl Default for XrayConnectionConfig {
    fn default() -> Self {
        XrayConnectionConfig {
            handshake: 4,
            conn_idle: 30,
            uplink_only: 2,
            downlink_only: 4,
            buffer_size: 64,
        }
    }
}

/// sing `NTP`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NtpConfig {
    #[serde(rename = "Enable")]
    pub enable: bool,
    #[serde(rename = "Server")]
    pub server: String,
    #[serde(rename = "ServerPort")]
    pub server_port: u16,
}

impl Default for NtpConfig {
    fn default() -> Self {
        NtpConfig {
            enable: false,
            server: "time.apple.com".to_owned(),
            server_port: 0,
        }
    }
}

/// v2sp extension: top-level `Dataplane`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DataplaneSettings {
    /// `Workers`: data-plane threads; 0 = one per allowed CPU.
    #[serde(rename = "Workers")]
    pub workers: u32,
    /// `IO`: `auto`, `uring` or `epoll`.
    #[serde(rename = "IO")]
    pub io: IoMode,
    /// `ShmDir` (default `/dev/shm/v2sp`).
    #[serde(rename = "ShmDir")]
    pub shm_dir: PathBuf,
    /// `AllowPrivateDestinations` (default false): allow proxying to private, loopback,
    /// link-local and unique-local destinations.
    #[serde(rename = "AllowPrivateDestinations")]
    pub allow_private_destinations: bool,
    /// `Timeouts {Handshake, ConnIdle, UplinkOnly, DownlinkOnly, Connect}` in seconds. When
    /// absent, the first core's `XrayConnectionConfig` provides handshake/connIdle/uplinkOnly/
    /// downlinkOnly; otherwise 4/300/2/5 and Connect 10.
    #[serde(rename = "Timeouts")]
    pub timeouts: Timeouts,
    /// Where [`Self::timeouts`] came from.
    #[serde(rename = "TimeoutsFrom")]
    pub timeouts_from: TimeoutsSource,
    /// `MaxHandshakes` (default 4096) and `MaxHandshakesPerIP` (default 256): connections in
    /// their handshake at once, per data-plane worker; 0 = no cap.
    #[serde(rename = "HandshakeLimits")]
    pub handshake_limits: crate::dpconfig::HandshakeLimits,
    /// `DrainSeconds` (default 600): after `v2sp upgrade`, how long the replaced data plane
    /// keeps serving its open connections before it closes the rest and exits.
    #[serde(rename = "DrainSeconds")]
    pub drain_seconds: u32,
}

impl Default for DataplaneSettings {
    fn default() -> Self {
        DataplaneSettings {
            workers: 0,
            io: IoMode::Auto,
            shm_dir: PathBuf::from(DEFAULT_SHM_DIR),
            allow_private_destinations: false,
            timeouts: Timeouts::default(),
            timeouts_from: TimeoutsSource::Default,
            handshake_limits: crate::dpconfig::HandshakeLimits::default(),
            drain_seconds: crate::dpconfig::DEFAULT_DRAIN_SECONDS,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IoMode {
    Auto,
    Uring,
    Epoll,
}

impl IoMode {
    pub fn as_str(self) -> &'static str {
        match self {
            IoMode::Auto => "auto",
            IoMode::Uring => "uring",
            IoMode::Epoll => "epoll",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum TimeoutsSource {
    /// Built-in defaults.
    Default,
    /// `Dataplane.Timeouts`.
    Dataplane,
    /// `Cores[i].XrayConnectionConfig` (index of the core).
    XrayConnectionConfig(usize),
}

/// Which panel API dialect a node speaks (v2sp extension, per node `"ApiDialect"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiDialect {
    /// Let the control plane probe the panel.
    #[default]
    Auto,
    /// v2sp's single endpoint: `<ApiHost>?action=<action>&…`.
    Single,
    /// Stock Xboard/v2board: `<ApiHost>/api/v1/server/UniProxy/<action>`.
    #[serde(rename = "uniproxy")]
    UniProxy,
}

impl ApiDialect {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiDialect::Auto => "auto",
            ApiDialect::Single => "single",
            ApiDialect::UniProxy => "uniproxy",
        }
    }
}

/// Which Xboard node API version a node uses (per node `"ApiVersion"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiVersion {
    /// v2 when `POST <ApiHost>/api/v2/server/handshake` answers with JSON, else v1.
    #[default]
    Auto,
    /// `config`/`user`/`alivelist`/`push`/`alive` in the node's `ApiDialect`.
    V1,
    /// `/api/v2/server/*`: one `report` replaces push/alive/status; WebSocket when offered.
    V2,
}

impl ApiVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiVersion::Auto => "auto",
            ApiVersion::V1 => "v1",
            ApiVersion::V2 => "v2",
        }
    }
}

/// Where a node entry was written (for messages from later stages).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NodeOrigin {
    /// The file holding the node's keys (the `Include`d file for an include).
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// Index in the top-level `Nodes` array.
    pub index: usize,
}

/// One entry of `Nodes`, with the API part and the Options part merged (flat, nested
/// `ApiConfig`/`Options` and `Include` forms all end up here).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeEntry {
    // ----- API part -----
    /// `ApiHost` (default `http://127.0.0.1`): panel URL, or `file:///path/nodes.json` for
    /// standalone mode.
    #[serde(rename = "ApiHost")]
    pub api_host: String,
    /// `ApiKey`, sent as `token`.
    #[serde(rename = "ApiKey")]
    pub api_key: String,
    /// `NodeID`; 0 when absent (only allowed when validation is not reached).
    #[serde(rename = "NodeID")]
    pub node_id: i64,
    /// `NodeType` lower-cased, `v2ray` → `vmess`; `""` = let the panel say.
    #[serde(rename = "NodeType")]
    pub node_type: String,
    /// `Timeout` seconds per panel request attempt (default 30; ≤ 0 → 5).
    #[serde(rename = "Timeout")]
    pub timeout_secs: u64,
    /// `ApiSendIP`: local source address for panel requests.
    #[serde(rename = "ApiSendIP")]
    pub api_send_ip: Option<String>,
    /// `ApiCAFile` (v2sp extension): a PEM file of CA certificates that alone are trusted for
    /// an `https://`/`wss://` panel (a private CA, or the panel's own self-signed certificate),
    /// like `curl --cacert`; unset = the web PKI roots. A relative path is read from the
    /// directory of the file that declared the node.
    #[serde(rename = "ApiCAFile", skip_serializing_if = "Option::is_none")]
    pub api_ca_file: Option<String>,
    /// `ApiDialect` (v2sp extension): `auto` (default), `single`, `uniproxy`.
    #[serde(rename = "ApiDialect")]
    pub api_dialect: ApiDialect,
    /// `MachineID` (Xboard machine mode): `ApiKey` is the machine's token and the entry, which
    /// has no `NodeID`, serves every node the panel's `machine/nodes` lists.
    #[serde(rename = "MachineID", skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<u32>,
    /// `ApiVersion`: `auto` (default), `v1`, `v2`.
    #[serde(rename = "ApiVersion")]
    pub api_version: ApiVersion,
    /// `RuleListPath` (unused, kept for compatibility).
    #[serde(rename = "RuleListPath")]
    pub rule_list_path: Option<String>,

    // ----- Options part -----
    /// `Name`: node tag override.
    #[serde(rename = "Name")]
    pub name: Option<String>,
    /// `Core`: `""` or `xray` (informational).
    #[serde(rename = "Core")]
    pub core: String,
    /// `CoreName` (informational).
    #[serde(rename = "CoreName")]
    pub core_name: String,
    /// `ListenIP` (default 0.0.0.0).
    #[serde(rename = "ListenIP")]
    pub listen_ip: IpAddr,
    /// `SendIP` (default 0.0.0.0): source address of outbound connections.
    #[serde(rename = "SendIP")]
    pub send_ip: IpAddr,
    /// `DeviceOnlineMinTraffic` in KB (×1000 bytes).
    #[serde(rename = "DeviceOnlineMinTraffic")]
    pub device_online_min_traffic_kb: u64,
    /// `ReportMinTraffic` in KB (×1024 bytes).
    #[serde(rename = "ReportMinTraffic")]
    pub report_min_traffic_kb: u64,
    #[serde(rename = "EnableProxyProtocol")]
    pub enable_proxy_protocol: bool,
    /// `ProxyProtocolFrom` (v2sp extension): the balancers (`ip` or `ip/len`) whose
    /// connections start with a PROXY header; everyone else is a direct client. Absent with
    /// `EnableProxyProtocol: true`: loopback only (a warning says so).
    #[serde(rename = "ProxyProtocolFrom")]
    pub proxy_protocol_from: Vec<String>,
    /// `TrustedProxies` (v2sp extension): CDN or reverse-proxy addresses (`ip` or `ip/len`)
    /// whose `X-Forwarded-For`/`X-Real-IP` names the client on HTTP transports (XHTTP); device
    /// limits and online IPs then count that address. Empty (the default): never trusted.
    #[serde(rename = "TrustedProxies")]
    pub trusted_proxies: Vec<String>,
    #[serde(rename = "EnableDNS")]
    pub enable_dns: bool,
    /// `DNSType` (default `AsIs`): `AsIs`/`UseIP`/`UseIPv4`/`UseIPv6`; see
    /// [`NodeEntry::outbound_domain_strategy`].
    #[serde(rename = "DNSType")]
    pub dns_type: String,
    #[serde(rename = "EnableTFO")]
    pub enable_tfo: bool,
    /// `EnableUot` (unused).
    #[serde(rename = "EnableUot")]
    pub enable_uot: bool,
    #[serde(rename = "DisableIVCheck")]
    pub disable_iv_check: bool,
    #[serde(rename = "DisableSniffing")]
    pub disable_sniffing: bool,
    #[serde(rename = "EnableFallback")]
    pub enable_fallback: bool,
    /// `FallBackConfigs`, both the xray list form and the sing object form.
    #[serde(rename = "FallBackConfigs")]
    pub fallbacks: Vec<Fallback>,
    /// sing `EnableSniff` (parsed, unused).
    #[serde(rename = "EnableSniff")]
    pub enable_sniff: bool,
    /// sing `SniffOverrideDestination` (default true; parsed, unused).
    #[serde(rename = "SniffOverrideDestination")]
    pub sniff_override_destination: bool,
    /// sing `DomainStrategy` (parsed, unused).
    #[serde(rename = "DomainStrategy")]
    pub domain_strategy: String,
    /// sing `MultiplexConfig`.
    #[serde(rename = "MultiplexConfig", skip_serializing_if = "Option::is_none")]
    pub multiplex: Option<MultiplexConfig>,
    /// seed hysteria2 core `Hysteria2ConfigPath`.
    #[serde(rename = "Hysteria2ConfigPath")]
    pub hysteria2_config_path: Option<String>,
    /// `HopPorts` (v2sp extension, Hysteria 2 only): UDP ports redirected to the node's port
    /// for clients that hop (`"20000-50000"`); the range may contain the node's port.
    #[serde(rename = "HopPorts", skip_serializing_if = "Option::is_none")]
    pub hop_ports: Option<crate::dpconfig::PortRange>,
    /// `Masquerade` (v2sp extension, Hysteria 2 only; sing-box's URL form): what answers HTTP/3
    /// requests that are not an authenticated client — `file:///var/www`, `https://host/`,
    /// `string:text`. Absent: a 404.
    #[serde(rename = "Masquerade", skip_serializing_if = "Option::is_none")]
    pub masquerade: Option<crate::dpconfig::Masquerade>,
    #[serde(rename = "LimitConfig")]
    pub limit: LimitConfig,
    #[serde(rename = "CertConfig")]
    pub cert: CertConfig,
    /// Where the entry was written.
    #[serde(skip)]
    pub origin: NodeOrigin,
}

impl Default for NodeEntry {
    fn default() -> Self {
        NodeEntry {
            api_host: DEFAULT_API_HOST.to_owned(),
            api_key: String::new(),
            node_id: 0,
            node_type: String::new(),
            timeout_secs: DEFAULT_TIMEOUT_SECS,
            api_send_ip: None,
            api_ca_file: None,
            api_dialect: ApiDialect::Auto,
            api_version: ApiVersion::Auto,
            machine_id: None,
            rule_list_path: None,
            name: None,
            core: String::new(),
            core_name: String::new(),
            listen_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            send_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            device_online_min_traffic_kb: 0,
            report_min_traffic_kb: 0,
            enable_proxy_protocol: false,
            proxy_protocol_from: Vec::new(),
            trusted_proxies: Vec::new(),
            enable_dns: false,
            dns_type: "AsIs".to_owned(),
            enable_tfo: false,
            enable_uot: false,
            disable_iv_check: false,
            disable_sniffing: false,
            enable_fallback: false,
            fallbacks: Vec::new(),
            enable_sniff: false,
            sniff_override_destination: true,
            domain_strategy: String::new(),
            multiplex: None,
            hysteria2_config_path: None,
            hop_ports: None,
            masquerade: None,
            limit: LimitConfig::default(),
            cert: CertConfig::default(),
            origin: NodeOrigin::default(),
        }
    }
}

impl NodeEntry {
    /// The node tag: `Name` when set, else `[<ApiHost>]-<NodeType>:<NodeID>` (spec J.11).
    /// With an empty `NodeType` the panel decides the type; use [`Self::tag_with_type`] once
    /// it is known.
    pub fn tag(&self) -> String {
        self.tag_with_type(&self.node_type)
    }

    /// The node tag with the given protocol type (the panel-detected one when `NodeType` is
    /// empty). `Name` still wins.
    pub fn tag_with_type(&self, node_type: &str) -> String {
        match (&self.name, self.machine_id) {
            (Some(name), Some(_)) if self.node_id != 0 => format!("{name}:{}", self.node_id),
            (Some(name), _) => name.clone(),
            (None, Some(m)) if self.node_id == 0 => format!("[{}]-machine:{m}", self.api_host),
            (None, _) => format!("[{}]-{}:{}", self.api_host, node_type, self.node_id),
        }
    }

    /// A machine-mode entry (`MachineID` without `NodeID`): the agent expands it into one node
    /// per entry of the panel's `machine/nodes`.
    pub fn is_machine(&self) -> bool {
        self.machine_id.is_some() && self.node_id == 0
    }

    /// Standalone mode: for `ApiHost = file:///abs/path.json` that path; for
    /// `file://rel/path.json` the path relative to the directory of the file the node was
    /// written in (`origin.file`). `None` for http(s) panels.
    pub fn standalone_file(&self) -> Option<PathBuf> {
        let scheme = self.api_host.get(..7)?;
        if !scheme.eq_ignore_ascii_case("file://") {
            return None;
        }
        let path = self.api_host.get(7..).filter(|p| !p.is_empty())?;
        if path.starts_with('/') {
            return Some(PathBuf::from(path));
        }
        let dir = self
            .origin
            .file
            .parent()
            .unwrap_or_else(|| std::path::Path::new(""));
        Some(dir.join(path))
    }

    /// `ApiCAFile` as a path: relative ones from the directory of the file that declared the
    /// node.
    pub fn api_ca_path(&self) -> Option<PathBuf> {
        let p = PathBuf::from(self.api_ca_file.as_deref().filter(|p| !p.is_empty())?);
        if p.is_absolute() {
            return Some(p);
        }
        Some(
            self.origin
                .file
                .parent()
                .unwrap_or_else(|| std::path::Path::new(""))
                .join(p),
        )
    }

    /// Freedom-outbound domain strategy: `AsIs` unless `EnableDNS`, then `DNSType`
    /// (an explicitly empty `DNSType` means `UseIP`).
    pub fn outbound_domain_strategy(&self) -> &str {
        if !self.enable_dns {
            "AsIs"
        } else if self.dns_type.is_empty() {
            "UseIP"
        } else {
            &self.dns_type
        }
    }

    /// `ReportMinTraffic` in bytes (KB × 1024).
    pub fn report_min_traffic_bytes(&self) -> u64 {
        self.report_min_traffic_kb.saturating_mul(1024)
    }

    /// `DeviceOnlineMinTraffic` in bytes (KB × 1000).
    pub fn device_online_min_traffic_bytes(&self) -> u64 {
        self.device_online_min_traffic_kb.saturating_mul(1000)
    }
}

/// One fallback. The xray form gives all fields; the sing form
/// `{FallBack:{Server,ServerPort}, FallBackForALPN:{<alpn>:{…}}}` becomes one entry per
/// target with `dest = "server:port"` and `alpn` set for the per-ALPN ones.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Fallback {
    #[serde(rename = "SNI")]
    pub sni: String,
    #[serde(rename = "Alpn")]
    pub alpn: String,
    #[serde(rename = "Path")]
    pub path: String,
    /// `Dest`: `port`, `host:port` or a unix socket path (required).
    #[serde(rename = "Dest")]
    pub dest: String,
    #[serde(rename = "ProxyProtocolVer")]
    pub proxy_protocol_ver: u64,
}

/// sing `MultiplexConfig`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MultiplexConfig {
    #[serde(rename = "Enable")]
    pub enable: bool,
    #[serde(rename = "Padding")]
    pub padding: bool,
    #[serde(rename = "Brutal")]
    pub brutal: BrutalConfig,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BrutalConfig {
    #[serde(rename = "Enable")]
    pub enable: bool,
    #[serde(rename = "UpMbps")]
    pub up_mbps: u64,
    #[serde(rename = "DownMbps")]
    pub down_mbps: u64,
}

/// `LimitConfig`. Only `SpeedLimit` has an effect in Go v2sp; the rest is parsed so that
/// existing files load (and so that the control plane can choose to honour them).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LimitConfig {
    #[serde(rename = "EnableRealtime")]
    pub enable_realtime: bool,
    /// `SpeedLimit` in Mbps, node-wide per-user cap; 0 = none.
    #[serde(rename = "SpeedLimit")]
    pub speed_limit_mbps: u64,
    /// `DeviceLimit` (alias `IPLimit`); 0 = none.
    #[serde(rename = "DeviceLimit")]
    pub device_limit: u64,
    /// `ConnLimit`; 0 = none.
    #[serde(rename = "ConnLimit")]
    pub conn_limit: u64,
    #[serde(rename = "EnableIpRecorder")]
    pub enable_ip_recorder: bool,
    /// `IpRecorderConfig`, kept as raw JSON (unused; secrets masked in `masked_json`).
    #[serde(rename = "IpRecorderConfig", skip_serializing_if = "Option::is_none")]
    pub ip_recorder: Option<serde_json::Value>,
    #[serde(rename = "EnableDynamicSpeedLimit")]
    pub enable_dynamic_speed_limit: bool,
    #[serde(rename = "DynamicSpeedLimitConfig", skip_serializing_if = "Option::is_none")]
    pub dynamic_speed_limit: Option<DynamicSpeedLimitConfig>,
}

/// `LimitConfig.DynamicSpeedLimitConfig` (non-functional in Go v2sp).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DynamicSpeedLimitConfig {
    /// `Periodic`, seconds.
    #[serde(rename = "Periodic")]
    pub periodic_secs: u64,
    /// `Traffic` threshold.
    #[serde(rename = "Traffic")]
    pub traffic: u64,
    /// `SpeedLimit`, Mbps.
    #[serde(rename = "SpeedLimit")]
    pub speed_limit_mbps: u64,
    /// `ExpireTime`, minutes.
    #[serde(rename = "ExpireTime")]
    pub expire_time_min: u64,
}

/// `CertConfig`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CertConfig {
    #[serde(rename = "CertMode")]
    pub cert_mode: CertMode,
    /// Whether the local config says `CertMode` (even `none`). When it does not, the panel's
    /// `cert_config` decides (Xboard sends one per node).
    #[serde(skip)]
    pub mode_set: bool,
    #[serde(rename = "CertDomain")]
    pub cert_domain: String,
    /// `CertFile`; `{domain}`/`{email}` placeholders are kept verbatim here.
    #[serde(rename = "CertFile")]
    pub cert_file: String,
    #[serde(rename = "KeyFile")]
    pub key_file: String,
    /// lego DNS provider name (`cloudflare`, `alidns`, …).
    #[serde(rename = "Provider")]
    pub provider: String,
    #[serde(rename = "Email")]
    pub email: String,
    /// Environment for the DNS-01 provider (secrets; masked in `masked_json`).
    #[serde(rename = "DNSEnv")]
    pub dns_env: BTreeMap<String, String>,
    #[serde(rename = "RejectUnknownSni")]
    pub reject_unknown_sni: bool,
    /// v2sp extension, `ACMEDirectory`: the ACME server's directory URL for the ACME modes
    /// (`http`, `dns`, `tls`; empty = [`DEFAULT_ACME_DIRECTORY`], Let's Encrypt production).
    #[serde(rename = "ACMEDirectory", skip_serializing_if = "String::is_empty")]
    pub acme_directory: String,
    /// v2sp extension, `ACMERootCA`: a PEM file with the root(s) that the ACME server's TLS
    /// certificate chains to, for private CAs (pebble, step-ca); when set it is trusted instead
    /// of Mozilla's roots for ACME requests. Empty = Mozilla's roots.
    #[serde(rename = "ACMERootCA", skip_serializing_if = "String::is_empty")]
    pub acme_root_ca: String,
    /// v2sp extension, `ACMEHTTPListen`: where the HTTP-01 responder listens while an order
    /// is validated (`None` = [`DEFAULT_ACME_HTTP_LISTEN`]).
    #[serde(rename = "ACMEHTTPListen", skip_serializing_if = "Option::is_none")]
    pub acme_http_listen: Option<std::net::SocketAddr>,
}

/// Let's Encrypt's production ACME directory (the default `ACMEDirectory`).
pub const DEFAULT_ACME_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// The default `ACMEHTTPListen`: HTTP-01 validation always comes to port 80.
pub const DEFAULT_ACME_HTTP_LISTEN: &str = "0.0.0.0:80";

impl CertConfig {
    /// `ACMEDirectory`, defaulted.
    pub fn acme_directory(&self) -> &str {
        match self.acme_directory.trim() {
            "" => DEFAULT_ACME_DIRECTORY,
            d => d,
        }
    }

    /// `ACMEHTTPListen`, defaulted.
    pub fn acme_http_listen(&self) -> std::net::SocketAddr {
        self.acme_http_listen
            .unwrap_or(std::net::SocketAddr::from(([0, 0, 0, 0], 80)))
    }
}

/// `CertConfig.CertMode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CertMode {
    /// `none` or `""`: no TLS on this node (TLS terminated in front of it).
    #[default]
    None,
    /// `file`: `CertFile` + `KeyFile`.
    File,
    /// `self`: self-signed for `CertDomain`.
    #[serde(rename = "self")]
    SelfSigned,
    /// `http`: ACME HTTP-01.
    Http,
    /// `dns`: ACME DNS-01 via `Provider` + `DNSEnv`.
    Dns,
    /// `tls`: ACME TLS-ALPN-01 (RFC 8737), answered on the node's own port.
    Tls,
}

impl CertMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CertMode::None => "none",
            CertMode::File => "file",
            CertMode::SelfSigned => "self",
            CertMode::Http => "http",
            CertMode::Dns => "dns",
            CertMode::Tls => "tls",
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            log: LogConfig::default(),
            cores: Vec::new(),
            nodes: Vec::new(),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            dataplane: DataplaneSettings::default(),
            metrics: MetricsSettings::default(),
        }
    }
}
