//! Request URLs for both dialects (spec §B.1, §B.2).
//!
//! Single endpoint: `ApiHost` + `?action=X` (or `&action=X` when `ApiHost` already has a query,
//! or just `action=X` when it ends in `?`/`&`), then `&node_id=N[&node_type=T]&token=K`.
//! UniProxy: `ApiHost` (query split off, trailing `/` dropped) + `/api/v1/server/UniProxy/X`
//! (the prefix is not doubled when `ApiHost` already ends with it), then `?` + `ApiHost`'s own
//! query + `node_id=N[&node_type=T]&token=K`.

use v2sp_shared::panel::{Action, UNIPROXY_PATH};

use super::{Dialect, NodeApi, PanelError};

/// Xboard's v2 node API prefix.
pub const V2_PATH: &str = "/api/v2/server";

/// The URL builder of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    api_host: String,
    /// `node_id=…[&node_type=…]&token=…`, already encoded.
    params: String,
}

impl Endpoint {
    pub fn new(api: &NodeApi) -> Result<Endpoint, PanelError> {
        let api_host = api.api_host.trim().to_string();
        let lower = api_host.to_ascii_lowercase();
        if !(lower.starts_with("http://") || lower.starts_with("https://")) {
            return Err(PanelError::Config(format!(
                "ApiHost {api_host:?} must start with http:// or https:// (or file:// for a standalone panel)"
            )));
        }
        if authority(&api_host).is_empty() {
            return Err(PanelError::Config(format!(
                "ApiHost {api_host:?} has no host name"
            )));
        }
        if api_host.contains('#') {
            return Err(PanelError::Config(format!(
                "ApiHost {api_host:?} must not contain a #fragment"
            )));
        }
        let mut params = match api.machine_id {
            // The machine itself (handshake, machine/nodes) names no node.
            Some(m) if api.node_id == 0 => format!("machine_id={m}"),
            Some(m) => format!("machine_id={m}&node_id={}", api.node_id),
            None => format!("node_id={}", api.node_id),
        };
        if let Some(t) = api.node_type.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
            params.push_str("&node_type=");
            params.push_str(&encode(t));
        }
        params.push_str("&token=");
        params.push_str(&encode(&api.api_key));
        Ok(Endpoint { api_host, params })
    }

    pub fn api_host(&self) -> &str {
        &self.api_host
    }

    /// URL of `action` in `dialect` (`Auto` is treated as `Single`).
    pub fn url(&self, dialect: Dialect, action: Action) -> String {
        match dialect {
            Dialect::Auto | Dialect::Single => self.single(action),
            Dialect::UniProxy => self.uniproxy(action),
        }
    }

    /// URL of `action` under Xboard's v2 prefix: `ApiHost` (query split off, trailing `/` and
    /// a `/api/v1/server/UniProxy` suffix dropped) + `/api/v2/server/<action>?` + `ApiHost`'s
    /// own query + the auth parameters (`machine_id=M&` first in machine mode).
    pub fn v2_url(&self, action: Action) -> String {
        let (base, query) = match self.api_host.split_once('?') {
            Some((b, q)) => (b, q.trim_matches('&')),
            None => (self.api_host.as_str(), ""),
        };
        let mut base = base.trim_end_matches('/');
        if ends_with_uniproxy(base) {
            base = &base[..base.len() - UNIPROXY_PATH.len()];
        }
        let mut url = format!("{base}{V2_PATH}/{}?", action.as_str());
        if !query.is_empty() {
            url.push_str(query);
            url.push('&');
        }
        url.push_str(&self.params);
        url
    }

    fn single(&self, action: Action) -> String {
        let h = &self.api_host;
        let sep = if h.ends_with('?') || h.ends_with('&') {
            ""
        } else if h.contains('?') {
            "&"
        } else {
            "?"
        };
        format!("{h}{sep}action={}&{}", action.as_str(), self.params)
    }

    fn uniproxy(&self, action: Action) -> String {
        let (base, query) = match self.api_host.split_once('?') {
            Some((b, q)) => (b, q.trim_matches('&')),
            None => (self.api_host.as_str(), ""),
        };
        let base = base.trim_end_matches('/');
        let prefix = if ends_with_uniproxy(base) {
            ""
        } else {
            UNIPROXY_PATH
        };
        let mut url = format!("{base}{prefix}/{}?", action.as_str());
        if !query.is_empty() {
            url.push_str(query);
            url.push('&');
        }
        url.push_str(&self.params);
        url
    }
}

fn ends_with_uniproxy(path: &str) -> bool {
    let p = path.trim_end_matches('/');
    p.len() >= UNIPROXY_PATH.len()
        && p.is_char_boundary(p.len() - UNIPROXY_PATH.len())
        && p[p.len() - UNIPROXY_PATH.len()..].eq_ignore_ascii_case(UNIPROXY_PATH)
}

/// `host[:port]` of an absolute URL.
fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    &rest[..end]
}

/// (path, has_query) of an absolute URL.
fn path_and_query(url: &str) -> (&str, bool) {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let start = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let after = &rest[start..];
    match after.split_once('?') {
        Some((p, _)) => (p, true),
        None => (after, false),
    }
}

/// The dialect to use for `api_host` when `requested` is `Auto`; `Auto` back means "probe":
/// try the single endpoint, and on 404 try UniProxy (see [`Dialect::Auto`]).
pub fn resolve_dialect(api_host: &str, requested: Dialect) -> Dialect {
    if requested != Dialect::Auto {
        return requested;
    }
    let (path, has_query) = path_and_query(api_host.trim());
    if ends_with_uniproxy(path) {
        Dialect::UniProxy
    } else if (path.is_empty() || path == "/") && !has_query {
        Dialect::Auto
    } else {
        Dialect::Single
    }
}

/// Percent-encode a query value (RFC 3986 unreserved characters pass).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn ep(host: &str, node_type: Option<&str>) -> Endpoint {
        let mut api = NodeApi::new(host, "K", 26);
        api.node_type = node_type.map(String::from);
        Endpoint::new(&api).unwrap()
    }

    #[test]
    fn single_endpoint_separators() {
        let e = ep("https://panel.example/api", Some("vless"));
        assert_eq!(
            e.url(Dialect::Single, Action::Config),
            "https://panel.example/api?action=config&node_id=26&node_type=vless&token=K"
        );
        let e = ep("https://p.example/api.php?s=1", None);
        assert_eq!(
            e.url(Dialect::Single, Action::User),
            "https://p.example/api.php?s=1&action=user&node_id=26&token=K"
        );
        let e = ep("https://p.example/api.php?", None);
        assert_eq!(
            e.url(Dialect::Single, Action::Push),
            "https://p.example/api.php?action=push&node_id=26&token=K"
        );
        let e = ep("https://p.example/api.php?s=1&", Some(""));
        assert_eq!(
            e.url(Dialect::Single, Action::Alive),
            "https://p.example/api.php?s=1&action=alive&node_id=26&token=K"
        );
    }

    #[test]
    fn uniproxy_paths() {
        let e = ep("https://panel.example/", Some("vless"));
        assert_eq!(
            e.url(Dialect::UniProxy, Action::AliveList),
            "https://panel.example/api/v1/server/UniProxy/alivelist?node_id=26&node_type=vless&token=K"
        );
        let e = ep("https://panel.example/api/v1/server/UniProxy/", None);
        assert_eq!(
            e.url(Dialect::UniProxy, Action::Config),
            "https://panel.example/api/v1/server/UniProxy/config?node_id=26&token=K"
        );
        let e = ep("http://127.0.0.1:8080/sub?x=1", None);
        assert_eq!(
            e.url(Dialect::UniProxy, Action::User),
            "http://127.0.0.1:8080/sub/api/v1/server/UniProxy/user?x=1&node_id=26&token=K"
        );
    }

    #[test]
    fn v2_paths() {
        let e = ep("https://panel.example/", Some("vless"));
        assert_eq!(
            e.v2_url(Action::Report),
            "https://panel.example/api/v2/server/report?node_id=26&node_type=vless&token=K"
        );
        let e = ep("https://panel.example/api/v1/server/UniProxy?x=1", None);
        assert_eq!(
            e.v2_url(Action::Handshake),
            "https://panel.example/api/v2/server/handshake?x=1&node_id=26&token=K"
        );
        let mut api = NodeApi::new("http://h:8/", "T", 3);
        api.machine_id = Some(7);
        assert_eq!(
            Endpoint::new(&api).unwrap().v2_url(Action::MachineNodes),
            "http://h:8/api/v2/server/machine/nodes?machine_id=7&node_id=3&token=T"
        );
    }

    #[test]
    fn token_is_encoded() {
        let mut api = NodeApi::new("http://h/api", "a b&c=d/é", 1);
        api.node_type = Some("vless".into());
        let e = Endpoint::new(&api).unwrap();
        assert!(e
            .url(Dialect::Single, Action::Config)
            .ends_with("token=a%20b%26c%3Dd%2F%C3%A9"));
    }

    #[test]
    fn bad_hosts_are_config_errors() {
        for h in ["panel.example/api", "ftp://x/", "https://", "https://h/api#x"] {
            let e = Endpoint::new(&NodeApi::new(h, "K", 1)).unwrap_err();
            assert!(matches!(e, PanelError::Config(_)), "{h}: {e}");
        }
    }

    #[test]
    fn auto_rule() {
        assert_eq!(resolve_dialect("https://p.example", Dialect::Auto), Dialect::Auto);
        assert_eq!(
            resolve_dialect("https://p.example/", Dialect::Auto),
            Dialect::Auto
        );
        assert_eq!(
            resolve_dialect("https://p.example/?a=1", Dialect::Auto),
            Dialect::Single
        );
        assert_eq!(
            resolve_dialect("https://p.example/api", Dialect::Auto),
            Dialect::Single
        );
        assert_eq!(
            resolve_dialect("https://p.example/api/v1/server/UniProxy", Dialect::Auto),
            Dialect::UniProxy
        );
        assert_eq!(
            resolve_dialect("https://p.example/x/api/v1/server/uniproxy/", Dialect::Auto),
            Dialect::UniProxy
        );
        assert_eq!(
            resolve_dialect("https://p.example/", Dialect::Single),
            Dialect::Single
        );
    }
}
