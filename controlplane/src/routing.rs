//! A node's routing rules and outbounds (`NodeConfig.route_rules`, `.outbounds`): the panel's
//! `custom_outbounds`, `custom_routes` and `direct`/`proxy` routes, plus the local files in
//! V2bX's format (`Cores[].OutboundConfigPath`: a JSON array of Xray outbounds;
//! `Cores[].RouteConfigPath`: an Xray routing object with `rules`). The policy is
//! `v2sp_shared::route`; this module reads the sources and skips what cannot be used, one log
//! line per skipped rule or outbound, so nothing else changes.
//!
//! Rule order: `custom_routes`, then the local route file's rules, then the panel's routes.
//! Outbounds: the panel's, then the local file's (the first one with a tag wins).

use std::path::PathBuf;

use serde_json::Value;
use v2sp_shared::panel::NodeInfo;
use v2sp_shared::route::{
    json_list, outbound_from_xray, rule_from_panel, rule_from_xray, split_panel_rule, OutboundSpec,
    RouteRule, RouteTarget, MAX_ENTRIES_PER_NODE, MAX_OUTBOUNDS, MAX_RULES,
};

/// Local files, from the first `Cores` entry that names each (v2sp runs one engine, so they
/// apply to every node; `inboundTag` in a rule picks nodes by tag).
#[derive(Clone, Debug, Default)]
pub struct LocalRouting {
    pub route_file: Option<PathBuf>,
    pub outbound_file: Option<PathBuf>,
}

impl LocalRouting {
    pub fn from_config(cfg: &v2sp_shared::config::Config) -> Self {
        let first = |f: fn(&v2sp_shared::config::CoreConfig) -> &str| {
            cfg.cores
                .iter()
                .map(f)
                .map(str::trim)
                .find(|p| !p.is_empty())
                .map(PathBuf::from)
        };
        LocalRouting {
            route_file: first(|c| &c.route_config_path),
            outbound_file: first(|c| &c.outbound_config_path),
        }
    }
}

impl LocalRouting {
    /// Modification time and size of each local file (`None`: absent or none configured), to
    /// notice an edit.
    pub fn stamp(&self) -> Vec<Option<(std::time::SystemTime, u64)>> {
        [&self.route_file, &self.outbound_file]
            .into_iter()
            .map(|f| {
                let m = std::fs::metadata(f.as_ref()?).ok()?;
                Some((m.modified().ok()?, m.len()))
            })
            .collect()
    }
}

/// A local file's JSON; a missing file is nothing (V2bX's installs may not ship one), an
/// unreadable or invalid one is logged and read as nothing.
fn read_json(path: &Option<PathBuf>) -> Option<Value> {
    let p = path.as_ref()?;
    let text = match std::fs::read_to_string(p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(file = %p.display(), "routing file unreadable, ignored: {e}");
            return None;
        }
    };
    match serde_json::from_str(&text) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(file = %p.display(), "routing file is not JSON, ignored: {e}");
            None
        }
    }
}

/// A panel column that may arrive as JSON text instead of JSON (a column the panel did not
/// cast); unparsable text is logged and read as nothing.
fn column(tag: &str, info: &NodeInfo, key: &str) -> Option<Value> {
    match info.extra.get(key)? {
        Value::String(t) if t.trim().is_empty() => None,
        Value::String(t) => match serde_json::from_str(t) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(node = %tag, "{key} skipped: not JSON: {e}");
                None
            }
        },
        v => Some(v.clone()),
    }
}

/// The node's rules and outbounds. Rules naming an outbound that does not exist (other than
/// `direct`/`block`, which mean the node's freedom and a blackhole) are skipped.
pub fn node_routing(tag: &str, info: &NodeInfo, local: &LocalRouting) -> (Vec<RouteRule>, Vec<OutboundSpec>) {
    let mut outbounds: Vec<OutboundSpec> = Vec::new();
    let local_outbounds = read_json(&local.outbound_file);
    let local_list = local_outbounds.as_ref().map(|v| match v.get("outbounds") {
        Some(o) => json_list(o),
        None => json_list(v),
    });
    let panel_outbounds = column(tag, info, "custom_outbounds");
    let sources = [
        ("custom_outbounds", panel_outbounds.as_ref().map(json_list)),
        ("OutboundConfigPath", local_list),
    ];
    for (source, list) in sources {
        for (i, v) in list.unwrap_or_default().into_iter().enumerate() {
            match outbound_from_xray(v) {
                Ok(o) if outbounds.iter().any(|x| x.tag == o.tag) => {
                    tracing::warn!(node = %tag, "{source}[{i}] skipped: tag {:?} is taken", o.tag)
                }
                Ok(_) if outbounds.len() >= MAX_OUTBOUNDS => {
                    tracing::warn!(node = %tag, "{source}[{i}] skipped: more than {MAX_OUTBOUNDS} outbounds")
                }
                Ok(o) => outbounds.push(o),
                Err(why) => tracing::warn!(node = %tag, "{source}[{i}] skipped: {why}"),
            }
        }
    }
    let mut rules: Vec<RouteRule> = Vec::new();
    let mut entries = 0usize;
    let mut add = |r: RouteRule| {
        let known = match &r.target {
            Some(RouteTarget::Tag(t)) => {
                outbounds.iter().any(|o| &o.tag == t) || t == "direct" || t == "block"
            }
            Some(_) => true,
            None => false,
        };
        if !known {
            tracing::warn!(node = %tag, rule = %r.name, "route skipped: it names an outbound that does not exist ({:?})", r.target);
        } else if rules.len() >= MAX_RULES {
            tracing::warn!(node = %tag, rule = %r.name, "route skipped: more than {MAX_RULES} rules");
        } else if entries + r.entries() > MAX_ENTRIES_PER_NODE {
            tracing::warn!(node = %tag, rule = %r.name, "route skipped: the node's rules would hold more than {MAX_ENTRIES_PER_NODE} entries");
        } else {
            entries += r.entries();
            rules.push(r);
        }
    };
    if let Some(v) = column(tag, info, "custom_routes").as_ref() {
        // Xboard stores the column verbatim: a list of rules, or a routing object.
        let list = match v.get("rules") {
            Some(r) => json_list(r),
            None => json_list(v),
        };
        for (i, r) in list.into_iter().enumerate() {
            let name = format!("custom_routes[{i}]");
            match rule_from_xray(r, &name) {
                Ok(r) => add(r),
                Err(why) => tracing::warn!(node = %tag, rule = %name, "route skipped: {why}"),
            }
        }
    }
    if let Some(v) = read_json(&local.route_file) {
        if let Some(ds) = v.get("domainStrategy").and_then(Value::as_str) {
            if !ds.eq_ignore_ascii_case("AsIs") {
                tracing::debug!(node = %tag, "route file domainStrategy {ds:?}: rules match as the client named the destination (AsIs)");
            }
        }
        let list = match v.get("rules") {
            Some(r) => json_list(r),
            None => json_list(&v),
        };
        for (i, r) in list.into_iter().enumerate() {
            let name = format!("RouteConfigPath rules[{i}]");
            match rule_from_xray(r, &name) {
                Ok(r) => add(r),
                Err(why) => tracing::warn!(node = %tag, rule = %name, "route skipped: {why}"),
            }
        }
    }
    for r in &info.routes {
        match rule_from_panel(r.id, &r.matches, &r.action, r.action_value.as_deref()) {
            Ok(Some(rule)) => split_panel_rule(rule).into_iter().for_each(&mut add),
            Ok(None) => {}
            Err(why) => tracing::warn!(node = %tag, route = r.id, "route skipped: {why}"),
        }
    }
    (rules, outbounds)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use v2sp_shared::route::OutboundKind;

    fn info(json: &str) -> NodeInfo {
        NodeInfo::decode(json.as_bytes()).unwrap()
    }

    #[test]
    fn panel_sources_in_order_bad_entries_skipped() {
        let i = info(
            r#"{"protocol":"shadowsocks","server_port":8388,"cipher":"aes-128-gcm",
            "routes":[{"id":1,"match":["ads.test"],"action":"block"},
                      {"id":2,"match":{"0":"lan.test","3":"10.0.0.0/8"},"action":"direct","action_value":null},
                      {"id":3,"match":["up.test"],"action":"proxy","action_value":"socks-up"},
                      {"id":4,"match":["x.test"],"action":"proxy","action_value":"missing"},
                      {"id":5,"match":["d.test"],"action":"dns","action_value":"1.1.1.1"}],
            "custom_outbounds":[{"tag":"socks-up","protocol":"socks","settings":{"servers":[{"address":"127.0.0.1","port":1080}]}},
                                {"tag":"bad","protocol":"wireguard"},
                                {"tag":"socks-up","protocol":"blackhole"},
                                {"tag":"ss","protocol":"shadowsocks","settings":{"servers":[{"address":"127.0.0.1","port":8388,"method":"2022-blake3-aes-128-gcm","password":"short"}]}}],
            "custom_routes":[{"type":"field","domain":["domain:c.test"],"outboundTag":"socks-up"},
                             {"type":"field","protocol":["bittorrent"],"outboundTag":"block"},
                             {"type":"field","outboundTag":"socks-up"},
                             {"type":"field","domain":["domain:y.test"],"outboundTag":"nowhere"}]}"#,
        );
        let (rules, outs) = node_routing("n", &i, &LocalRouting::default());
        assert_eq!(outs.len(), 1, "{outs:?}");
        assert!(matches!(outs[0].kind, OutboundKind::Socks { .. }));
        let names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "custom_routes[0]",
                "custom_routes[1]",
                "route 2",
                "route 2",
                "route 3"
            ]
        );
        assert_eq!(rules[2].target, Some(RouteTarget::Direct));
        assert_eq!(rules[4].target, Some(RouteTarget::Tag("socks-up".into())));
    }

    #[test]
    fn columns_sent_as_json_text() {
        let i = info(
            r#"{"server_port":1,
                "custom_outbounds":"[{\"tag\":\"h\",\"protocol\":\"blackhole\"}]",
                "custom_routes":"[{\"port\":\"25\",\"outboundTag\":\"h\"}]"}"#,
        );
        let (rules, outs) = node_routing("n", &i, &LocalRouting::default());
        assert_eq!((rules.len(), outs.len()), (1, 1));
        let i = info(r#"{"server_port":1,"custom_outbounds":"{not json","custom_routes":""}"#);
        let (rules, outs) = node_routing("n", &i, &LocalRouting::default());
        assert!(rules.is_empty() && outs.is_empty());
    }

    #[test]
    fn empty_php_shapes_are_nothing() {
        let i = info(r#"{"server_port":1,"custom_outbounds":[],"custom_routes":{},"routes":[]}"#);
        let (rules, outs) = node_routing("n", &i, &LocalRouting::default());
        assert!(rules.is_empty() && outs.is_empty());
    }

    #[test]
    fn local_files_in_v2bx_format() {
        let dir = tempfile::tempdir().unwrap();
        let route = dir.path().join("route.json");
        let out = dir.path().join("custom_outbound.json");
        // V2bX's default files.
        std::fs::write(
            &route,
            r#"{"domainStrategy":"AsIs","rules":[
                {"type":"field","outboundTag":"block","ip":["geoip:private","127.0.0.0/8","fc00::/7"]},
                {"type":"field","outboundTag":"block","protocol":["bittorrent"]},
                {"type":"field","outboundTag":"IPv4_out","network":"udp,tcp"}]}"#,
        )
        .unwrap();
        std::fs::write(
            &out,
            r#"[{"tag":"IPv4_out","protocol":"freedom","settings":{"domainStrategy":"UseIPv4v6"}},
                {"tag":"IPv6_out","protocol":"freedom","settings":{"domainStrategy":"UseIPv6"}},
                {"protocol":"blackhole","tag":"block"}]"#,
        )
        .unwrap();
        let local = LocalRouting {
            route_file: Some(route),
            outbound_file: Some(out),
        };
        let i = info(
            r#"{"server_port":1,"custom_routes":[{"domain":["domain:p.test"],"outboundTag":"IPv6_out"}],
                "routes":[{"id":9,"match":["q.test"],"action":"direct"}]}"#,
        );
        let (rules, outs) = node_routing("n", &i, &local);
        assert_eq!(
            outs.iter().map(|o| o.tag.as_str()).collect::<Vec<_>>(),
            ["IPv4_out", "IPv6_out", "block"]
        );
        let names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "custom_routes[0]",
                "RouteConfigPath rules[0]",
                "RouteConfigPath rules[1]",
                "RouteConfigPath rules[2]",
                "route 9"
            ]
        );
        // Missing and broken files are nothing (logged), not an error.
        std::fs::write(dir.path().join("bad.json"), "{").unwrap();
        let local = LocalRouting {
            route_file: Some(dir.path().join("bad.json")),
            outbound_file: Some(dir.path().join("missing.json")),
        };
        let (rules, outs) = node_routing("n", &info(r#"{"server_port":1}"#), &local);
        assert!(rules.is_empty() && outs.is_empty());
        // An edit is noticed (the node worker rebuilds its config then).
        let before = local.stamp();
        assert_eq!(before.len(), 2);
        assert!(before[0].is_some() && before[1].is_none());
        std::fs::write(dir.path().join("bad.json"), "{}  ").unwrap();
        assert_ne!(local.stamp(), before);
    }
}
