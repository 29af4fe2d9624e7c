//! `action=config`: the node description a panel returns (spec §B.4, §J.6).
//!
//! One flat JSON object; which keys matter depends on the node type. Shapes accepted beyond
//! what v2sp HEAD accepts (all observed in real panels or v2sp's own history):
//! * `server_port` as integer or numeric string; `"20000-50000"` (hysteria2 port hopping) gives
//!   the first port plus [`NodeInfo::server_port_range`].
//! * `node_type`, else Xboard's `protocol`.
//! * `networkSettings` wins over `network_settings` when it is present and non-empty; the same
//!   rule for `tlsSettings` over `tls_settings`. PHP's empty array `[]` counts as empty.
//! * `tls` as 0/1/2 integer or string; `tls_settings.server_port` and `xver` as string or number.
//! * `obfs-password` (Xboard) or `obfs_password` (v2sp mid-history).
//! * `routes[].match` as array, comma-separated string, or PHP array-with-holes object.
//! * `base_config` intervals as int, float or numeric string; missing or ≤ 0 → 60 s.
//!
//! Keys not listed in [`KNOWN_KEYS`] are kept in [`NodeInfo::extra`]; the complete object is
//! kept in [`NodeInfo::raw`].

use serde_json::{Map, Value};

use super::fields::{self, Fields};
use super::DecodeError;

const WHAT: &str = "node config";

/// Interval used when the panel's `base_config` lacks one or gives a value ≤ 0.
pub const DEFAULT_INTERVAL_SECS: u64 = 60;

/// Security layer of vmess/vless (`tls` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// `0` or absent.
    #[default]
    None,
    /// `1`: TLS with a certificate (local cert mode).
    Tls,
    /// `2`: REALITY from `tls_settings`.
    Reality,
}

/// `tls_settings` / `tlsSettings`: REALITY parameters (tls = 2) or TLS hints (tls = 1).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TlsSettings {
    pub server_name: Option<String>,
    /// REALITY handshake target host; Xboard does not send it (→ [`Self::reality_dest`]).
    pub dest: Option<String>,
    /// REALITY target port (a string in v2sp's struct; numbers accepted too).
    pub server_port: Option<u16>,
    pub private_key: Option<String>,
    pub public_key: Option<String>,
    pub short_id: Option<String>,
    /// PROXY protocol version towards `dest` (0 when absent).
    pub xver: u64,
    /// `mldsa65Seed`.
    pub mldsa65_seed: Option<String>,
    pub allow_insecure: bool,
    /// Keys not decoded above (e.g. Xboard's `ech`).
    pub extra: Map<String, Value>,
}

impl TlsSettings {
    /// `"<dest or server_name>:<server_port>"` as REALITY wants it (spec §F.3); `None` when the
    /// host or the port is missing.
    pub fn reality_dest(&self) -> Option<String> {
        let host = self.dest.as_deref().or(self.server_name.as_deref())?;
        // A dest that already carries a port ("example.com:443") is used as is.
        if host
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && !h.ends_with(':') && p.parse::<u16>().is_ok())
        {
            return Some(host.to_string());
        }
        let port = self.server_port?;
        Some(format!("{host}:{port}"))
    }
}

/// One entry of `routes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub id: i64,
    /// Match entries in panel order, empty strings dropped.
    pub matches: Vec<String>,
    /// `block`, `dns`, `direct`, `proxy`, … (lower-cased).
    pub action: String,
    pub action_value: Option<String>,
}

/// `base_config`: intervals in seconds, always > 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseConfig {
    pub push_interval_secs: u64,
    pub pull_interval_secs: u64,
}

impl Default for BaseConfig {
    fn default() -> Self {
        BaseConfig {
            push_interval_secs: DEFAULT_INTERVAL_SECS,
            pull_interval_secs: DEFAULT_INTERVAL_SECS,
        }
    }
}

/// Decoded `action=config` reply.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeInfo {
    /// `node_type`, else `protocol`; trimmed, lower-cased; `None` when neither is sent.
    pub node_type: Option<String>,
    pub server_port: u16,
    /// `Some((first, last))` when `server_port` was a range such as `"20000-50000"`.
    pub server_port_range: Option<(u16, u16)>,
    pub listen_ip: Option<String>,
    pub host: Option<String>,
    pub server_name: Option<String>,
    /// `tcp`, `ws`, `grpc`, `httpupgrade`, … as sent (lower-cased); `None` when absent/empty.
    pub network: Option<String>,
    /// Transport settings, raw (camel-case key wins when non-empty). `None` when absent/null/empty.
    pub network_settings: Option<Value>,
    pub tls: TlsMode,
    pub tls_settings: Option<TlsSettings>,
    /// vless
    pub flow: Option<String>,
    pub encryption: Option<String>,
    pub encryption_settings: Option<Value>,
    pub decryption: Option<String>,
    /// shadowsocks
    pub cipher: Option<String>,
    /// shadowsocks-2022 server PSK (base64); `None` also when the panel sends `null`.
    pub server_key: Option<String>,
    /// hysteria / hysteria2
    pub up_mbps: Option<u64>,
    pub down_mbps: Option<u64>,
    pub ignore_client_bandwidth: bool,
    pub obfs: Option<String>,
    pub obfs_password: Option<String>,
    /// tuic
    pub congestion_control: Option<String>,
    pub zero_rtt_handshake: bool,
    /// anytls
    pub padding_scheme: Option<Vec<String>>,
    pub routes: Vec<Route>,
    pub base_config: BaseConfig,
    /// Keys this decoder does not interpret (e.g. Xboard's `custom_outbounds`, `cert_config`).
    pub extra: Map<String, Value>,
    /// The whole object as received.
    pub raw: Value,
}

/// Top-level keys interpreted by [`NodeInfo::decode`]; everything else goes to `extra`.
pub const KNOWN_KEYS: &[&str] = &[
    "node_type",
    "protocol",
    "server_port",
    "listen_ip",
    "host",
    "server_name",
    "network",
    "network_settings",
    "networkSettings",
    "tls",
    "tls_settings",
    "tlsSettings",
    "flow",
    "encryption",
    "encryption_settings",
    "decryption",
    "cipher",
    "server_key",
    "up_mbps",
    "down_mbps",
    "ignore_client_bandwidth",
    "obfs",
    "obfs-password",
    "obfs_password",
    "congestion_control",
    "zero_rtt_handshake",
    "padding_scheme",
    "routes",
    "base_config",
];

const TLS_KNOWN_KEYS: &[&str] = &[
    "server_name",
    "dest",
    "server_port",
    "private_key",
    "public_key",
    "short_id",
    "xver",
    "mldsa65Seed",
    "allow_insecure",
];

/// Non-empty: not null, not `{}`/`[]`/`""`.
fn non_empty(v: Option<&Value>) -> Option<&Value> {
    match v {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) if m.is_empty() => None,
        Some(Value::Array(a)) if a.is_empty() => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(v) => Some(v),
    }
}

/// `camel` when present and non-empty, else `snake` when non-empty; with the key chosen.
fn camel_or_snake<'a>(
    map: &'a Map<String, Value>,
    camel: &'static str,
    snake: &'static str,
) -> Option<(&'static str, &'a Value)> {
    non_empty(map.get(camel))
        .map(|v| (camel, v))
        .or_else(|| non_empty(map.get(snake)).map(|v| (snake, v)))
}

impl NodeInfo {
    /// Decode a `config` reply body.
    pub fn decode(bytes: &[u8]) -> Result<NodeInfo, DecodeError> {
        let v = fields::parse_json(bytes, WHAT)?;
        NodeInfo::from_value(v)
    }

    /// Decode an already parsed node object (the file panel stores several in one file).
    pub fn from_value(v: Value) -> Result<NodeInfo, DecodeError> {
        let map = match &v {
            Value::Object(m) => m,
            other => {
                return Err(DecodeError {
                    what: WHAT,
                    path: "$".into(),
                    problem: format!("expected a JSON object, got {}", fields::show(other)),
                })
            }
        };
        let f = Fields::new(map, "", WHAT);

        let node_type = match f.opt_nonempty_str("node_type")? {
            Some(t) => Some(t),
            None => f.opt_nonempty_str("protocol")?,
        }
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty());

        let (server_port, server_port_range) = decode_port(&f)?;

        let network_settings =
            camel_or_snake(map, "networkSettings", "network_settings").map(|(_, v)| v.clone());

        let tls = match f.opt_uint("tls", u64::MAX)? {
            None | Some(0) => TlsMode::None,
            Some(1) => TlsMode::Tls,
            Some(2) => TlsMode::Reality,
            Some(n) => {
                return Err(f.err(
                    "tls",
                    format!("expected 0 (none), 1 (TLS) or 2 (REALITY), got {n}"),
                ))
            }
        };

        let tls_settings = match camel_or_snake(map, "tlsSettings", "tls_settings") {
            None => None,
            Some((key, Value::Object(m))) => Some(decode_tls_settings(m, key)?),
            Some((key, other)) => {
                return Err(f.err(key, format!("expected an object, got {}", fields::show(other))));
            }
        };

        let obfs_password = match f.opt_nonempty_str("obfs-password")? {
            Some(p) => Some(p),
            None => f.opt_nonempty_str("obfs_password")?,
        };

        let padding_scheme = match f.get("padding_scheme") {
            None => None,
            Some(v) => Some(decode_string_list(v).map_err(|p| f.err("padding_scheme", p))?),
        };

        let extra: Map<String, Value> = map
            .iter()
            .filter(|(k, _)| !KNOWN_KEYS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();

        let info = NodeInfo {
            node_type,
            server_port,
            server_port_range,
            listen_ip: f.opt_nonempty_str("listen_ip")?,
            host: f.opt_nonempty_str("host")?,
            server_name: f.opt_nonempty_str("server_name")?,
            network: f
                .opt_nonempty_str("network")?
                .map(|n| n.trim().to_ascii_lowercase()),
            network_settings,
            tls,
            tls_settings,
            flow: f.opt_nonempty_str("flow")?,
            encryption: f.opt_nonempty_str("encryption")?,
            encryption_settings: non_empty(map.get("encryption_settings")).cloned(),
            decryption: f.opt_nonempty_str("decryption")?,
            cipher: f.opt_nonempty_str("cipher")?,
            server_key: f.opt_nonempty_str("server_key")?,
            up_mbps: f.opt_uint("up_mbps", u64::from(u32::MAX))?,
            down_mbps: f.opt_uint("down_mbps", u64::from(u32::MAX))?,
            ignore_client_bandwidth: f.opt_bool("ignore_client_bandwidth")?.unwrap_or(false),
            obfs: f.opt_nonempty_str("obfs")?,
            obfs_password,
            congestion_control: f.opt_nonempty_str("congestion_control")?,
            zero_rtt_handshake: f.opt_bool("zero_rtt_handshake")?.unwrap_or(false),
            padding_scheme,
            routes: decode_routes(&f)?,
            base_config: decode_base_config(&f)?,
            extra,
            raw: Value::Null,
        };
        Ok(NodeInfo { raw: v, ..info })
    }
}

fn decode_port(f: &Fields<'_>) -> Result<(u16, Option<(u16, u16)>), DecodeError> {
    let v = f
        .get("server_port")
        .ok_or_else(|| f.err("server_port", "missing (the port this node listens on)"))?;
    if let Value::String(s) = v {
        if let Some((a, b)) = s.split_once('-') {
            let parse = |x: &str| x.trim().parse::<u16>().ok().filter(|p| *p != 0);
            return match (parse(a), parse(b)) {
                (Some(a), Some(b)) if a <= b => Ok((a, Some((a, b)))),
                _ => Err(f.err("server_port", format!("invalid port range {}", fields::show(v)))),
            };
        }
    }
    match fields::uint_of(v, 65535) {
        Ok(Some(p)) if p != 0 => Ok((p as u16, None)),
        Ok(_) => Err(f.err(
            "server_port",
            format!("expected a port 1-65535, got {}", fields::show(v)),
        )),
        Err(p) => Err(f.err("server_port", p)),
    }
}

fn decode_tls_settings(m: &Map<String, Value>, key: &str) -> Result<TlsSettings, DecodeError> {
    let f = Fields::new(m, key, WHAT);
    let server_port = match f.opt_uint("server_port", 65535)? {
        Some(0) | None => None,
        Some(p) => Some(p as u16),
    };
    Ok(TlsSettings {
        server_name: f.opt_nonempty_str("server_name")?,
        dest: f.opt_nonempty_str("dest")?,
        server_port,
        private_key: f.opt_nonempty_str("private_key")?,
        public_key: f.opt_nonempty_str("public_key")?,
        // An empty short id is a valid REALITY short id; keep it.
        short_id: f.opt_str("short_id")?,
        xver: f.opt_uint("xver", 2)?.unwrap_or(0),
        mldsa65_seed: f.opt_nonempty_str("mldsa65Seed")?,
        allow_insecure: f.opt_bool("allow_insecure")?.unwrap_or(false),
        extra: m
            .iter()
            .filter(|(k, _)| !TLS_KNOWN_KEYS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    })
}

fn decode_string_list(v: &Value) -> Result<Vec<String>, String> {
    match v {
        Value::String(s) => Ok(s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()),
        other => {
            let items = fields::list_of(other).ok_or_else(|| {
                format!(
                    "expected an array of strings or a comma-separated string, got {}",
                    fields::show(other)
                )
            })?;
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                match item {
                    Value::String(s) if s.is_empty() => {}
                    Value::String(s) => out.push(s.clone()),
                    Value::Null => {}
                    other => return Err(format!("[{i}]: expected a string, got {}", fields::show(other))),
                }
            }
            Ok(out)
        }
    }
}

fn decode_routes(f: &Fields<'_>) -> Result<Vec<Route>, DecodeError> {
    let v = match f.get("routes") {
        None => return Ok(Vec::new()),
        Some(v) => v,
    };
    let items = fields::list_of(v).ok_or_else(|| {
        f.err(
            "routes",
            format!("expected an array of route objects, got {}", fields::show(v)),
        )
    })?;
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let key = format!("routes[{i}]");
        let m = match item {
            Value::Object(m) => m,
            other => {
                return Err(f.err(
                    &key,
                    format!("expected a route object, got {}", fields::show(other)),
                ))
            }
        };
        let rf = Fields::new(m, f.child_path(&key), WHAT);
        let id = match rf.get("id") {
            None => 0,
            Some(v) => fields::int_of(v)
                .ok_or_else(|| rf.err("id", format!("expected an integer, got {}", fields::show(v))))?,
        };
        let matches = match rf.get("match") {
            None => Vec::new(),
            Some(v) => decode_string_list(v).map_err(|p| rf.err("match", p))?,
        };
        out.push(Route {
            id,
            matches,
            action: rf
                .opt_str("action")?
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase(),
            action_value: rf.opt_str("action_value")?,
        });
    }
    Ok(out)
}

fn decode_base_config(f: &Fields<'_>) -> Result<BaseConfig, DecodeError> {
    let m = match f.get("base_config") {
        None => return Ok(BaseConfig::default()),
        Some(Value::Object(m)) => m,
        Some(Value::Array(a)) if a.is_empty() => return Ok(BaseConfig::default()),
        Some(other) => {
            return Err(f.err(
                "base_config",
                format!("expected an object, got {}", fields::show(other)),
            ))
        }
    };
    let bf = Fields::new(m, f.child_path("base_config"), WHAT);
    let interval = |key: &str| -> Result<u64, DecodeError> {
        let v = match bf.get(key) {
            None => return Ok(DEFAULT_INTERVAL_SECS),
            Some(v) => v,
        };
        // Any number (int or float, possibly negative) or numeric string; ≤ 0 → default.
        let secs = match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) if s.trim().is_empty() => return Ok(DEFAULT_INTERVAL_SECS),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        }
        .filter(|f| f.is_finite())
        .ok_or_else(|| {
            bf.err(
                key,
                format!("expected a number of seconds, got {}", fields::show(v)),
            )
        })?;
        if secs < 1.0 {
            Ok(DEFAULT_INTERVAL_SECS)
        } else {
            // Whole seconds; a day is the most any panel plausibly means.
            Ok((secs as u64).min(86_400))
        }
    };
    Ok(BaseConfig {
        push_interval_secs: interval("push_interval")?,
        pull_interval_secs: interval("pull_interval")?,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode(v: Value) -> Result<NodeInfo, DecodeError> {
        NodeInfo::decode(v.to_string().as_bytes())
    }

    /// v2sp custom-panel style (spec §B.4 example), vless REALITY.
    #[test]
    fn v2sp_custom_panel_vless_reality() {
        let n = decode(json!({
            "node_type": "vless", "server_port": 443, "tls": 2, "flow": "xtls-rprx-vision",
            "network": "tcp", "networkSettings": null,
            "tls_settings": {"server_name": "www.example.com", "server_port": "443",
                "private_key": "cHJpdmF0ZQ", "short_id": "ab12", "xver": "0"},
            "routes": [{"id": 1, "match": ["regexp:(.+\\.|^)example\\.(com|net)", "protocol:bittorrent"],
                "action": "block", "action_value": ""}],
            "base_config": {"push_interval": 60, "pull_interval": 60}
        }))
        .unwrap();
        assert_eq!(n.node_type.as_deref(), Some("vless"));
        assert_eq!(n.server_port, 443);
        assert_eq!(n.tls, TlsMode::Reality);
        assert_eq!(n.flow.as_deref(), Some("xtls-rprx-vision"));
        assert_eq!(n.network.as_deref(), Some("tcp"));
        assert_eq!(n.network_settings, None);
        let t = n.tls_settings.as_ref().unwrap();
        assert_eq!(t.server_port, Some(443));
        assert_eq!(t.xver, 0);
        assert_eq!(t.short_id.as_deref(), Some("ab12"));
        assert_eq!(t.reality_dest().as_deref(), Some("www.example.com:443"));
        assert_eq!(n.routes.len(), 1);
        assert_eq!(n.routes[0].matches.len(), 2);
        assert_eq!(n.routes[0].action, "block");
        assert_eq!(n.base_config, BaseConfig::default());
        assert!(n.extra.is_empty());
    }

    /// Xboard HEAD vless REALITY: `protocol` instead of `node_type`, no dest/xver, extra keys,
    /// `decryption`, `multiplex`, public_key.
    #[test]
    fn xboard_vless_reality() {
        let n = decode(json!({
            "protocol": "vless", "listen_ip": "0.0.0.0", "server_port": 8443, "network": "grpc",
            "networkSettings": {"serviceName": "grpc"},
            "tls": 2, "flow": "", "decryption": null,
            "tls_settings": {"server_name": "www.apple.com", "server_port": "443",
                "public_key": "cHVi", "private_key": "cHJpdg", "short_id": "", "allow_insecure": false},
            "multiplex": {"enabled": false},
            "base_config": {"push_interval": 60, "pull_interval": 60},
            "custom_outbounds": [], "custom_routes": [], "cert_config": {"cert_mode": "none"}
        }))
        .unwrap();
        assert_eq!(n.node_type.as_deref(), Some("vless"));
        assert_eq!(n.listen_ip.as_deref(), Some("0.0.0.0"));
        assert_eq!(n.network_settings, Some(json!({"serviceName": "grpc"})));
        assert_eq!(n.flow, None);
        let t = n.tls_settings.as_ref().unwrap();
        assert_eq!(t.dest, None);
        assert_eq!(t.short_id.as_deref(), Some(""));
        assert_eq!(t.public_key.as_deref(), Some("cHVi"));
        assert_eq!(t.reality_dest().as_deref(), Some("www.apple.com:443"));
        for k in ["multiplex", "custom_outbounds", "custom_routes", "cert_config"] {
            assert!(n.extra.contains_key(k), "{k} kept in extra");
        }
        assert!(!n.extra.contains_key("protocol"));
        assert_eq!(n.raw["multiplex"], json!({"enabled": false}));
    }

    /// Xboard shadowsocks 2022 chacha: `server_key: null`; and the aes variant with a key.
    #[test]
    fn xboard_shadowsocks() {
        let n = decode(json!({"protocol": "shadowsocks", "server_port": "8388", "cipher": "2022-blake3-chacha20-poly1305",
            "server_key": null, "plugin": null, "plugin_opts": null, "network": null, "networkSettings": null,
            "base_config": {"push_interval": "60", "pull_interval": 30.0}}))
        .unwrap();
        assert_eq!(n.server_port, 8388);
        assert_eq!(n.server_key, None);
        assert_eq!(n.cipher.as_deref(), Some("2022-blake3-chacha20-poly1305"));
        assert_eq!(n.base_config.pull_interval_secs, 30);
        let n = decode(
            json!({"protocol": "shadowsocks", "server_port": 8388, "cipher": "2022-blake3-aes-128-gcm",
            "server_key": "MDEyMzQ1Njc4OWFiY2RlZg=="}),
        )
        .unwrap();
        assert_eq!(n.server_key.as_deref(), Some("MDEyMzQ1Njc4OWFiY2RlZg=="));
    }

    /// Xboard hysteria2 (`obfs-password` with a hyphen) and v2sp mid-history `obfs_password`,
    /// port-hopping range.
    #[test]
    fn hysteria2_obfs_and_ranges() {
        let n = decode(json!({"protocol": "hysteria", "version": 2, "server_port": 443, "up_mbps": 100, "down_mbps": "200",
            "obfs": "salamander", "obfs-password": "secret", "tls_settings": {"server_name": "hy.example", "allow_insecure": 1}}))
        .unwrap();
        assert_eq!(n.node_type.as_deref(), Some("hysteria"));
        assert_eq!((n.up_mbps, n.down_mbps), (Some(100), Some(200)));
        assert_eq!(n.obfs_password.as_deref(), Some("secret"));
        assert!(n.tls_settings.as_ref().unwrap().allow_insecure);
        assert_eq!(n.extra.get("version"), Some(&json!(2)));
        let n = decode(
            json!({"node_type": "hysteria2", "server_port": "20000-50000", "obfs_password": "x",
            "ignore_client_bandwidth": true}),
        )
        .unwrap();
        assert_eq!(n.server_port, 20000);
        assert_eq!(n.server_port_range, Some((20000, 50000)));
        assert_eq!(n.obfs_password.as_deref(), Some("x"));
        assert!(n.ignore_client_bandwidth);
    }

    /// wyx2685/v2board vless with encryption settings; trojan with networkSettings; anytls.
    #[test]
    fn wyx2685_shapes() {
        let n = decode(json!({"server_port": 443, "network": "ws", "networkSettings": {"path": "/ws"},
            "tls": "1", "flow": "xtls-rprx-vision", "encryption": "mlkem768x25519plus",
            "encryption_settings": {"mode": "native", "ticket": "600s", "server_padding": "", "private_key": "k"},
            "tlsSettings": {"server_name": "a.example"},
            "base_config": {"push_interval": 0, "pull_interval": -5}}))
        .unwrap();
        assert_eq!(n.node_type, None);
        assert_eq!(n.tls, TlsMode::Tls);
        assert_eq!(n.encryption.as_deref(), Some("mlkem768x25519plus"));
        assert_eq!(n.encryption_settings.as_ref().unwrap()["mode"], "native");
        assert_eq!(
            n.tls_settings.as_ref().unwrap().server_name.as_deref(),
            Some("a.example")
        );
        assert_eq!(n.base_config, BaseConfig::default());
        let n = decode(
            json!({"server_port": 443, "server_name": "t.example", "padding_scheme": ["stop=8", "0=30-30"]}),
        )
        .unwrap();
        assert_eq!(n.padding_scheme.as_ref().map(Vec::len), Some(2));
    }

    /// v2board/v2board trojan: `{host, server_port, server_name}` only — must decode (v2sp fails).
    #[test]
    fn v2board_trojan_minimal() {
        let n = decode(json!({"host": "t.example", "server_port": 443, "server_name": "t.example"})).unwrap();
        assert_eq!(n.network, None);
        assert_eq!(n.network_settings, None);
        assert_eq!(n.routes, vec![]);
        assert_eq!(n.base_config, BaseConfig::default());
    }

    #[test]
    fn camel_wins_when_non_empty() {
        let n = decode(json!({"server_port": 1, "network_settings": {"path": "/snake"}, "networkSettings": {"path": "/camel"},
            "tls_settings": {"server_name": "snake"}, "tlsSettings": {"server_name": "camel"}}))
        .unwrap();
        assert_eq!(n.network_settings, Some(json!({"path": "/camel"})));
        assert_eq!(n.tls_settings.unwrap().server_name.as_deref(), Some("camel"));
        let n = decode(
            json!({"server_port": 1, "network_settings": {"path": "/snake"}, "networkSettings": [],
            "tls_settings": {"server_name": "snake"}, "tlsSettings": null}),
        )
        .unwrap();
        assert_eq!(n.network_settings, Some(json!({"path": "/snake"})));
        assert_eq!(n.tls_settings.unwrap().server_name.as_deref(), Some("snake"));
    }

    #[test]
    fn reality_numbers_accepted() {
        let n = decode(
            json!({"server_port": 443, "tls": 2, "tls_settings": {"server_name": "s", "dest": "d.example",
            "server_port": 8443, "xver": 1, "mldsa65Seed": "seed"}}),
        )
        .unwrap();
        let t = n.tls_settings.unwrap();
        assert_eq!((t.server_port, t.xver), (Some(8443), 1));
        assert_eq!(t.mldsa65_seed.as_deref(), Some("seed"));
        assert_eq!(t.reality_dest().as_deref(), Some("d.example:8443"));
    }

    #[test]
    fn route_match_shapes() {
        let n = decode(json!({"server_port": 1, "routes": [
            {"id": "2", "match": "a.com, b.com,,", "action": "BLOCK"},
            {"id": 3, "match": {"0": "x", "3": "y"}, "action": "dns", "action_value": "8.8.8.8:53"},
            {"id": 4, "match": ["main", "{\"servers\":[]}"], "action": "dns", "action_value": null}
        ]}))
        .unwrap();
        assert_eq!(n.routes[0].id, 2);
        assert_eq!(n.routes[0].matches, vec!["a.com", "b.com"]);
        assert_eq!(n.routes[0].action, "block");
        assert_eq!(n.routes[1].matches, vec!["x", "y"]);
        assert_eq!(n.routes[1].action_value.as_deref(), Some("8.8.8.8:53"));
        assert_eq!(n.routes[2].action_value, None);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (json!({}), "server_port"),
            (json!({"server_port": "abc"}), "server_port"),
            (json!({"server_port": 0}), "server_port"),
            (json!({"server_port": 1, "tls": 3}), "tls"),
            (
                json!({"server_port": 1, "tls_settings": {"server_port": "x"}}),
                "tls_settings.server_port",
            ),
            (
                json!({"server_port": 1, "tlsSettings": {"xver": "a"}}),
                "tlsSettings.xver",
            ),
            (json!({"server_port": 1, "tls_settings": "nope"}), "tls_settings"),
            (
                json!({"server_port": 1, "routes": [{"match": [1]}]}),
                "routes[0].match",
            ),
            (json!({"server_port": 1, "routes": "x"}), "routes"),
            (
                json!({"server_port": 1, "base_config": {"pull_interval": "soon"}}),
                "base_config.pull_interval",
            ),
            (json!([1, 2]), "$"),
        ];
        for (v, path) in cases {
            let e = decode(v.clone()).unwrap_err();
            assert_eq!(e.path, path, "{v} → {e}");
            assert_eq!(e.what, "node config");
        }
        let e = NodeInfo::decode(b"<!DOCTYPE html><html>").unwrap_err();
        assert_eq!(e.path, "$");
    }
}
