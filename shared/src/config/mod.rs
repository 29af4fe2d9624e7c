//! The local configuration file, `/etc/v2sp/config.json`, read the way Go v2sp reads it
//! (spec §C) so that operators keep their files:
//!
//! * JSON with `//` and `/* */` comments and trailing commas before `]`/`}` (outside strings);
//!   not JSON5. Keys are case-insensitive at every level (Go json v1), the last of duplicate
//!   keys wins (with a warning), `null` keeps the default, numbers must not be quoted.
//! * `Log`, `Cores` (accepted, informational: v2sp runs one engine), `Nodes` in the flat form,
//!   the nested `{"ApiConfig": {…}, "Options": {…}}` form and `{"Include": "path"}` (read
//!   relative to the including file; `http(s)://` includes are an error).
//! * Unknown keys are warnings ([`ConfigWarning`], with file, line, column and key path).
//!   Errors ([`ConfigError`]) print as `file:line:col: key.path: message`, positions in the
//!   original file.
//!
//! v2sp extensions (not in Go v2sp):
//!
//! * top-level `"StateDir"` (default `/var/lib/v2sp`): accounting journal and ledgers;
//! * top-level `"Dataplane": {"Workers": 0, "IO": "auto"|"uring"|"epoll",
//!   "ShmDir": "/dev/shm/v2sp", "AllowPrivateDestinations": false, "DrainSeconds": 600,
//!   "Timeouts": {"Handshake": 4,
//!   "ConnIdle": 300, "UplinkOnly": 2, "DownlinkOnly": 5, "Connect": 10}}`. Without
//!   `Timeouts`, a core's `XrayConnectionConfig` (handshake, connIdle, uplinkOnly,
//!   downlinkOnly) provides them;
//! * per node `"ApiDialect": "auto"|"single"|"uniproxy"`: the panel API dialect (single
//!   endpoint with `action=`, or `/api/v1/server/UniProxy/<action>`); `auto` leaves the
//!   choice to the control plane;
//! * per node `"ApiVersion": "auto"|"v1"|"v2"`: Xboard's node API version (`auto`: v2 when
//!   `POST /api/v2/server/handshake` answers, else v1);
//! * per node `"ApiHost": "file:///path/nodes.json"` (or `file://nodes.json`, relative to
//!   the directory of the file the node is written in): standalone mode, no panel; `NodeID`
//!   names the node inside that file (see [`NodeEntry::standalone_file`]).
//!
//! Validation (errors): duplicate node tags/names, `NodeID` missing or ≤ 0, unknown
//! `NodeType`, unparsable `ApiHost`, `CertMode` without the files/domain/provider it needs,
//! bad IP addresses. Unknown `Log.Level` is a warning (means `info`).

mod decode;
mod error;
mod json;
mod model;
mod preprocess;

use std::path::Path;

pub use error::{ConfigError, ConfigWarning};
pub use model::{
    ApiDialect, ApiVersion, BrutalConfig, CertConfig, CertMode, Config, CoreConfig, CoreLog,
    DataplaneSettings, DynamicSpeedLimitConfig, Fallback, IoMode, LimitConfig, LogConfig, LogFormat,
    LogLevel, MetricsSettings, MultiplexConfig, NodeEntry, NodeOrigin, NtpConfig, Timeouts, TimeoutsSource,
    XrayConnectionConfig, DEFAULT_ACME_DIRECTORY, DEFAULT_ACME_HTTP_LISTEN, DEFAULT_API_HOST,
    DEFAULT_SHM_DIR, DEFAULT_STATE_DIR, DEFAULT_TIMEOUT_SECS, NONPOSITIVE_TIMEOUT_SECS,
};

/// Default config path (`-c`).
pub const DEFAULT_CONFIG_PATH: &str = "/etc/v2sp/config.json";

/// A successfully loaded config and what looked suspicious in it.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<ConfigWarning>,
}

/// Read and decode the config file at `path` (and the files it `Include`s).
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let text = decode::read_file(path)?;
    parse_str(&text, path)
}

/// Decode config text. `origin` is the file name used in messages and the directory
/// against which relative `Include` paths are resolved.
pub fn parse_str(text: &str, origin: &Path) -> Result<Loaded, ConfigError> {
    let (config, warnings) = decode::decode(text, origin)?;
    Ok(Loaded { config, warnings })
}

/// Blank `//` and `/* */` comments and trailing commas (outside strings) so that the result
/// is plain JSON with every byte at its original offset. For tools that want to hand a
/// config-style file to another JSON reader.
pub fn strip_comments(text: &str) -> Result<String, ConfigError> {
    preprocess::blank_comments(text).map_err(|e| {
        let (line, column) = json::LineIndex::new(text).line_col(e.offset);
        ConfigError::Syntax {
            file: "<text>".into(),
            line,
            column,
            message: "unterminated /* comment (missing */)".to_owned(),
        }
    })
}

/// `ApiKey` → first two characters + `***` (just `***` for keys of 4 characters or less).
pub fn mask_secret(secret: &str) -> String {
    if secret.is_empty() {
        return String::new();
    }
    if secret.chars().count() <= 4 {
        return "***".to_owned();
    }
    let head: String = secret.chars().take(2).collect();
    format!("{head}***")
}

impl Config {
    /// The files a reload should watch (spec §C.4): the main file, every `Include`d node
    /// file and each core's `DnsConfigPath`, without duplicates, in that order.
    pub fn watched_files(&self, main: &Path) -> Vec<std::path::PathBuf> {
        let mut out: Vec<std::path::PathBuf> = vec![main.to_path_buf()];
        let includes = self.nodes.iter().map(|n| n.origin.file.clone());
        let dns = self
            .cores
            .iter()
            .filter(|c| !c.dns_config_path.is_empty())
            .map(|c| c.dns_config_path.clone().into());
        for p in includes.chain(dns) {
            if !out.contains(&p) {
                out.push(p);
            }
        }
        out
    }

    /// The effective configuration (defaults filled in, Go key names) as pretty JSON with
    /// secrets masked: `ApiKey`, `CertConfig.DNSEnv` values, and token/password/key fields of
    /// `LimitConfig.IpRecorderConfig`. For `v2sp config check -c FILE`.
    pub fn masked_json(&self) -> String {
        let mut value = match serde_json::to_value(self) {
            Ok(v) => v,
            Err(e) => return format!("{{\"error\": {:?}}}", e.to_string()),
        };
        if let Some(nodes) = value.get_mut("Nodes").and_then(serde_json::Value::as_array_mut) {
            for node in nodes {
                if let Some(host) = node.get_mut("ApiHost") {
                    if let Some(s) = host.as_str() {
                        *host = serde_json::Value::String(mask_url(s));
                    }
                }
                if let Some(key) = node.get_mut("ApiKey") {
                    if let Some(s) = key.as_str() {
                        *key = serde_json::Value::String(mask_secret(s));
                    }
                }
                if let Some(env) = node
                    .get_mut("CertConfig")
                    .and_then(|c| c.get_mut("DNSEnv"))
                    .and_then(serde_json::Value::as_object_mut)
                {
                    for v in env.values_mut() {
                        let masked = mask_secret(v.as_str().unwrap_or_default());
                        *v = serde_json::Value::String(masked);
                    }
                }
                if let Some(rec) = node
                    .get_mut("LimitConfig")
                    .and_then(|l| l.get_mut("IpRecorderConfig"))
                {
                    mask_nested_secrets(rec);
                }
            }
        }
        serde_json::to_string_pretty(&value).unwrap_or_else(|e| format!("{{\"error\": {:?}}}", e.to_string()))
    }
}

/// Mask the password of `user:password@` and the values of `token`/`key` query parameters.
fn mask_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = match base.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            match authority.rsplit_once('@') {
                Some((userinfo, host)) => {
                    let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
                    let pass = if userinfo.contains(':') { ":***" } else { "" };
                    format!("{scheme}://{user}{pass}@{host}{path}")
                }
                None => base.to_owned(),
            }
        }
        None => base.to_owned(),
    };
    if let Some(q) = query {
        let parts: Vec<String> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, v))
                    if ["token", "key", "apikey", "api_key"].contains(&k.to_ascii_lowercase().as_str()) =>
                {
                    format!("{k}={}", mask_secret(v))
                }
                _ => kv.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&parts.join("&"));
    }
    out
}

fn mask_nested_secrets(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                let k = k.to_ascii_lowercase();
                let secret = k.contains("token") || k.contains("password") || k.contains("key");
                match child {
                    serde_json::Value::String(s) if secret => *s = mask_secret(s),
                    _ => mask_nested_secrets(child),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(mask_nested_secrets),
        _ => {}
    }
}

#[cfg(test)]
#[allow(clippy::panic)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::unwrap_used)]
    fn metrics_listen_is_checked() {
        let p = Path::new("/etc/v2sp/config.json");
        let ok = parse_str(r#"{"Nodes": [], "Metrics": {"Listen": "127.0.0.1:9555"}}"#, p).unwrap();
        assert_eq!(ok.config.metrics.listen, Some("127.0.0.1:9555".parse().unwrap()));
        assert!(ok.warnings.is_empty(), "{:?}", ok.warnings);
        let off = parse_str(r#"{"Nodes": [], "Metrics": {"Listen": ""}}"#, p).unwrap();
        assert_eq!(off.config.metrics.listen, None);
        let public = parse_str(r#"{"Nodes": [], "Metrics": {"Listen": "0.0.0.0:9555"}}"#, p).unwrap();
        assert!(public
            .warnings
            .iter()
            .any(|w| w.to_string().contains("no authentication")));
        let bad = parse_str(r#"{"Nodes": [], "Metrics": {"Listen": "localhost"}}"#, p).unwrap_err();
        assert!(bad.to_string().contains("Metrics.Listen"), "{bad}");
    }

    #[test]
    fn mask_secret_keeps_two_chars() {
        assert_eq!(mask_secret("abcdefgh"), "ab***");
        assert_eq!(mask_secret("abcd"), "***");
        assert_eq!(mask_secret(""), "");
        assert_eq!(mask_secret("ключ-секрет"), "кл***");
    }

    #[test]
    fn mask_url_hides_credentials() {
        assert_eq!(mask_url("https://p.example/api"), "https://p.example/api");
        assert_eq!(
            mask_url("https://u:secret@p.example/a?b=1"),
            "https://u:***@p.example/a?b=1"
        );
        assert_eq!(
            mask_url("https://p.example/api?token=abcdefgh&x=1"),
            "https://p.example/api?token=ab***&x=1"
        );
        assert_eq!(mask_url("http://p?"), "http://p?");
    }

    #[test]
    fn watched_files_lists_main_includes_and_dns() {
        let text = r#"{"Cores": [{"DnsConfigPath": "/etc/v2sp/dns.json"}],
            "Nodes": [{"ApiKey": "kkkkkkkk", "NodeID": 1}, {"ApiKey": "kkkkkkkk", "NodeID": 2}]}"#;
        let loaded = match parse_str(text, Path::new("/etc/v2sp/config.json")) {
            Ok(l) => l,
            Err(e) => panic!("{e}"),
        };
        let files = loaded.config.watched_files(Path::new("/etc/v2sp/config.json"));
        assert_eq!(
            files,
            vec![
                std::path::PathBuf::from("/etc/v2sp/config.json"),
                "/etc/v2sp/dns.json".into()
            ]
        );
    }

    #[test]
    fn strip_comments_is_public_and_positioned() {
        assert_eq!(strip_comments("[1,//x\n]").ok().as_deref(), Some("[1    \n]"));
        match strip_comments("\n  /* x") {
            Err(ConfigError::Syntax { line, column, .. }) => assert_eq!((line, column), (2, 3)),
            other => panic!("{other:?}"),
        }
    }
}
