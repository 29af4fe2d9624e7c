//! The config file model against fixture files shaped like operators' configs (spec §C).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use v2sp_shared::config::{
    load, parse_str, ApiDialect, CertMode, ConfigError, IoMode, Loaded, LogLevel, TimeoutsSource,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config")
        .join(name)
}

fn load_ok(name: &str) -> Loaded {
    match load(&fixture(name)) {
        Ok(l) => l,
        Err(e) => panic!("{name}: {e}"),
    }
}

fn load_err(name: &str) -> ConfigError {
    match load(&fixture(name)) {
        Ok(l) => panic!("{name}: loaded, expected an error: {:?}", l.config),
        Err(e) => e,
    }
}

fn parse_ok(text: &str) -> Loaded {
    match parse_str(text, Path::new("config.json")) {
        Ok(l) => l,
        Err(e) => panic!("{e}\n--- in ---\n{text}"),
    }
}

fn parse_err(text: &str) -> String {
    match parse_str(text, Path::new("config.json")) {
        Ok(l) => panic!("parsed, expected an error: {:?}\n--- in ---\n{text}", l.config),
        Err(e) => e.to_string(),
    }
}

/// 1-based (line, column in characters) of the first occurrence of `marker` in `text`.
fn pos_of(text: &str, marker: &str) -> (usize, usize) {
    let at = text.find(marker).expect("marker present");
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, col)
}

fn warning_paths(l: &Loaded) -> Vec<String> {
    l.warnings.iter().map(|w| w.path.clone()).collect()
}

fn has_warning(l: &Loaded, path: &str, needle: &str) -> bool {
    l.warnings
        .iter()
        .any(|w| w.path == path && w.message.contains(needle))
}

const UNSPEC: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);

#[test]
fn config_defaults_for_a_minimal_node() {
    let l = parse_ok(r#"{"Nodes": [{"ApiKey": "abcdefgh", "NodeID": 1}]}"#);
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    let c = &l.config;
    assert_eq!(c.log.level, LogLevel::Info);
    assert_eq!(c.log.output, "");
    assert!(c.cores.is_empty());
    assert_eq!(c.state_dir, PathBuf::from("/var/lib/v2sp"));
    assert_eq!(c.dataplane.workers, 0);
    assert_eq!(c.dataplane.io, IoMode::Auto);
    assert_eq!(c.dataplane.shm_dir, PathBuf::from("/dev/shm/v2sp"));
    assert!(!c.dataplane.allow_private_destinations);
    let t = &c.dataplane.timeouts;
    assert_eq!(
        (
            t.handshake,
            t.conn_idle,
            t.uplink_only,
            t.downlink_only,
            t.connect
        ),
        (4, 300, 2, 5, 10)
    );
    assert_eq!(c.dataplane.timeouts_from, TimeoutsSource::Default);
    let n = &c.nodes[0];
    assert_eq!(n.api_host, "http://127.0.0.1");
    assert_eq!(n.node_id, 1);
    assert_eq!(n.node_type, "");
    assert_eq!(n.timeout_secs, 30);
    assert_eq!(n.api_send_ip, None);
    assert_eq!(n.api_dialect, ApiDialect::Auto);
    assert_eq!(n.name, None);
    assert_eq!(n.listen_ip, UNSPEC);
    assert_eq!(n.send_ip, UNSPEC);
    assert_eq!(n.dns_type, "AsIs");
    assert_eq!(n.outbound_domain_strategy(), "AsIs");
    assert_eq!((n.report_min_traffic_kb, n.device_online_min_traffic_kb), (0, 0));
    assert!(!n.enable_proxy_protocol && !n.enable_dns && !n.enable_tfo && !n.disable_iv_check);
    assert!(!n.disable_sniffing && !n.enable_fallback && n.fallbacks.is_empty());
    assert!(n.sniff_override_destination);
    assert_eq!(n.cert.cert_mode, CertMode::None);
    assert_eq!(n.limit.speed_limit_mbps, 0);
    assert_eq!(n.tag(), "[http://127.0.0.1]-:1");
    assert_eq!(n.tag_with_type("vless"), "[http://127.0.0.1]-vless:1");
    assert_eq!((n.origin.line, n.origin.column, n.origin.index), (1, 12, 0));
}

#[test]
fn config_seed_style_flat_nodes() {
    let l = load_ok("seed_flat.json");
    let c = &l.config;
    assert_eq!(c.log.level, LogLevel::Error);
    assert_eq!(c.cores.len(), 1);
    let core = &c.cores[0];
    assert_eq!(core.core_type, "xray");
    assert_eq!(core.log.access_path, "none");
    assert_eq!(core.log.error_path, "/etc/v2sp/error.log");
    assert_eq!(core.route_config_path, "/etc/v2sp/route.json");
    assert_eq!(core.connection, None);

    let a = &c.nodes[0];
    assert_eq!(a.api_host, "https://panel.example.com/api/v1/server/node");
    assert_eq!(a.api_key, "0123456789abcdef");
    assert_eq!(a.node_id, 26);
    assert_eq!(a.node_type, "vless");
    assert_eq!(a.timeout_secs, 30);
    assert_eq!(a.device_online_min_traffic_kb, 200);
    assert_eq!(a.device_online_min_traffic_bytes(), 200_000);
    assert_eq!(
        a.report_min_traffic_kb, 0,
        "MinReportTraffic is not ReportMinTraffic"
    );
    assert_eq!(a.cert.cert_mode, CertMode::Http);
    assert_eq!(a.cert.cert_domain, "node1.example.com");
    assert_eq!(a.cert.email, "ops@example.com");
    assert_eq!(a.tag(), "[https://panel.example.com/api/v1/server/node]-vless:26");

    let b = &c.nodes[1];
    assert_eq!(b.node_type, "vmess", "v2ray means vmess");
    assert_eq!(b.timeout_secs, 5, "Timeout <= 0 means 5");
    assert_eq!(b.origin.index, 1);

    // the seed example's keys that match no field are warnings with hints
    assert!(has_warning(&l, "Nodes[0].MinReportTraffic", "ReportMinTraffic"));
    assert!(has_warning(&l, "Nodes[0].TCPFastOpen", "EnableTFO"));
    assert!(has_warning(&l, "Nodes[0].SniffEnabled", "unknown key"));
    assert_eq!(l.warnings.len(), 3, "{:?}", l.warnings);
    let text = std::fs::read_to_string(fixture("seed_flat.json")).unwrap();
    let w = l
        .warnings
        .iter()
        .find(|w| w.path == "Nodes[0].TCPFastOpen")
        .unwrap();
    assert_eq!((w.line, w.column), pos_of(&text, "\"TCPFastOpen\""));
    assert_eq!(w.file, fixture("seed_flat.json"));
}

#[test]
fn config_nested_api_config_and_options() {
    let l = load_ok("nested.json");
    // The fixture (a Go agent's config) enables PROXY protocol without saying from whom: v2sp
    // then takes PROXY headers from loopback only, and says so once.
    assert_eq!(l.warnings.len(), 1, "{:?}", l.warnings);
    assert!(
        l.warnings[0].path.ends_with("ProxyProtocolFrom"),
        "{:?}",
        l.warnings
    );
    let c = &l.config;
    assert_eq!(c.log.level, LogLevel::Debug);
    let n = &c.nodes[0];
    assert_eq!(n.api_host, "http://10.0.0.1:8080");
    assert_eq!(n.node_id, 3);
    assert_eq!(n.node_type, "trojan");
    assert_eq!(n.timeout_secs, 5);
    assert_eq!(n.api_send_ip.as_deref(), Some("10.0.0.2"));
    assert_eq!(n.rule_list_path.as_deref(), Some("/etc/v2sp/rules.txt"));
    assert_eq!(n.name.as_deref(), Some("trojan-hk"));
    assert_eq!(n.tag(), "trojan-hk");
    assert_eq!(n.listen_ip, "::".parse::<IpAddr>().unwrap());
    assert_eq!(n.send_ip, "192.0.2.7".parse::<IpAddr>().unwrap());
    assert_eq!(n.report_min_traffic_kb, 64);
    assert_eq!(n.report_min_traffic_bytes(), 65536);
    assert_eq!(n.device_online_min_traffic_kb, 100);
    assert!(n.enable_proxy_protocol && n.enable_dns && n.enable_tfo && n.disable_iv_check);
    assert!(n.disable_sniffing && n.enable_fallback);
    assert_eq!(n.dns_type, "UseIPv4");
    assert_eq!(n.outbound_domain_strategy(), "UseIPv4");
    assert_eq!(n.fallbacks.len(), 2);
    assert_eq!(n.fallbacks[0].dest, "80");
    assert_eq!(n.fallbacks[1].sni, "a.example");
    assert_eq!(n.fallbacks[1].alpn, "h2");
    assert_eq!(n.fallbacks[1].path, "/ws");
    assert_eq!(n.fallbacks[1].dest, "127.0.0.1:8443");
    assert_eq!(n.fallbacks[1].proxy_protocol_ver, 2);
    let lim = &n.limit;
    assert_eq!(
        (lim.speed_limit_mbps, lim.device_limit, lim.conn_limit),
        (100, 3, 50)
    );
    assert!(lim.ip_recorder.is_some());
    assert!(lim.enable_dynamic_speed_limit);
    let dynl = lim.dynamic_speed_limit.as_ref().unwrap();
    assert_eq!(
        (
            dynl.periodic_secs,
            dynl.traffic,
            dynl.speed_limit_mbps,
            dynl.expire_time_min
        ),
        (60, 1000, 10, 30)
    );
    assert_eq!(n.cert.cert_mode, CertMode::Dns);
    assert_eq!(n.cert.provider, "cloudflare");
    assert_eq!(n.cert.cert_file, "/etc/v2sp/cert/{domain}.crt");
    assert_eq!(
        n.cert.dns_env.get("CF_DNS_API_TOKEN").map(String::as_str),
        Some("cf-token-value-123")
    );
    assert!(n.cert.reject_unknown_sni);
}

#[test]
fn config_masked_json_hides_secrets() {
    let l = load_ok("nested.json");
    let out = l.config.masked_json();
    for secret in [
        "supersecretkey",
        "cf-token-value-123",
        "recordertoken",
        "redispassword",
        "\"zz\"",
    ] {
        assert!(!out.contains(secret), "{secret} leaked:\n{out}");
    }
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let node = &v["Nodes"][0];
    assert_eq!(node["ApiKey"], "su***");
    assert_eq!(node["CertConfig"]["DNSEnv"]["CF_DNS_API_TOKEN"], "cf***");
    assert_eq!(node["CertConfig"]["DNSEnv"]["CF_ZONE_API_TOKEN"], "***");
    assert_eq!(node["NodeID"], 3);
    assert_eq!(node["Timeout"], 5);
    assert_eq!(node["CertConfig"]["CertMode"], "dns");
    assert_eq!(node["ApiDialect"], "auto");
    assert_eq!(v["StateDir"], "/var/lib/v2sp");
    assert_eq!(v["Log"]["Level"], "debug");
}

#[test]
fn config_include_is_relative_to_the_including_file() {
    let l = load_ok("include_main.json");
    let c = &l.config;
    assert_eq!(c.nodes.len(), 3);
    let a = &c.nodes[0];
    assert_eq!((a.node_id, a.node_type.as_str()), (1, "vless"));
    assert_eq!(a.origin.file, fixture("nodes/node_a.json"));
    assert_eq!(a.origin.index, 0);
    let b = &c.nodes[1];
    assert_eq!(
        (b.node_id, b.node_type.as_str()),
        (2, "anytls"),
        "keys beside Include are ignored"
    );
    assert_eq!(b.fallbacks.len(), 2);
    assert_eq!(b.fallbacks[0].dest, "127.0.0.1:8080");
    assert_eq!(b.fallbacks[0].alpn, "");
    assert_eq!(b.fallbacks[1].dest, "[::1]:8443");
    assert_eq!(b.fallbacks[1].alpn, "h2");
    assert_eq!(c.nodes[2].node_type, "shadowsocks");
    assert!(has_warning(
        &l,
        "Nodes[1].NodeID",
        "ignored because Include is set"
    ));
    let bogus = l
        .warnings
        .iter()
        .find(|w| w.path == "Nodes[1].Options.Bogus")
        .expect("warning from included file");
    assert_eq!(bogus.file, fixture("./nodes/node_b.json"));
    assert_eq!((bogus.line, bogus.column), (9, 5));
}

#[test]
fn config_remote_include_is_a_clear_error() {
    let e = load_err("include_remote.json");
    let msg = e.to_string();
    assert!(msg.contains(":3:17: Nodes[0].Include: remote includes"), "{msg}");
    assert_eq!(e.key_path(), Some("Nodes[0].Include"));
}

#[test]
fn config_missing_include_names_the_file() {
    let e = load_err("include_missing.json");
    let msg = e.to_string();
    assert!(
        msg.contains("Nodes[0].Include: cannot read included file"),
        "{msg}"
    );
    assert!(msg.contains("does_not_exist.json"), "{msg}");
    assert_eq!(e.position(), Some((3, 17)));
}

#[test]
fn config_include_errors_point_into_the_included_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("n.json"), "{\n  \"NodeID\": true\n}\n").unwrap();
    std::fs::write(dir.path().join("loop.json"), r#"{"Include": "loop.json"}"#).unwrap();
    let main = dir.path().join("config.json");
    std::fs::write(&main, r#"{"Nodes": [{"Include": "n.json"}]}"#).unwrap();
    let msg = load(&main).unwrap_err().to_string();
    let expected = format!(
        "{}:2:13: Nodes[0].NodeID: expected an integer, found true",
        dir.path().join("n.json").display()
    );
    assert_eq!(msg, expected);

    std::fs::write(&main, r#"{"Nodes": [{"Include": "loop.json"}]}"#).unwrap();
    let msg = load(&main).unwrap_err().to_string();
    assert!(msg.contains("Include nested deeper than"), "{msg}");
}

#[test]
fn config_comments_and_trailing_commas() {
    let l = load_ok("comments.json");
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    let c = &l.config;
    assert_eq!(c.log.level, LogLevel::Warn);
    let n = &c.nodes[0];
    assert_eq!(n.api_host, "https://panel.example.com/api?x=1//not-a-comment");
    assert_eq!(n.api_key, "key/*notacomment*/,]");
    assert_eq!(n.node_type, "vmess");
    // the node object starts on line 9 of the original file, comments and all
    assert_eq!((n.origin.line, n.origin.column), (9, 5));
}

#[test]
fn config_xray_connection_config_maps_onto_timeouts() {
    let l = load_ok("xray_conn.json");
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    let c = &l.config;
    assert_eq!(c.cores[0].core_type, "sing");
    assert_eq!(c.cores[0].log.level, "info");
    assert!(!c.cores[0].log.timestamp);
    let ntp = c.cores[0].ntp.as_ref().unwrap();
    assert!(ntp.enable);
    assert_eq!((ntp.server.as_str(), ntp.server_port), ("pool.ntp.org", 123));
    assert_eq!(c.cores[1].name, "x1");
    assert_eq!(c.cores[1].log.level, "warning");
    assert_eq!(c.cores[1].asset_path, "/etc/v2sp/");
    let x = c.cores[1].connection.as_ref().unwrap();
    assert_eq!(
        (
            x.handshake,
            x.conn_idle,
            x.uplink_only,
            x.downlink_only,
            x.buffer_size
        ),
        (8, 120, 2, 9, 32)
    );
    let t = &c.dataplane.timeouts;
    assert_eq!(
        (
            t.handshake,
            t.conn_idle,
            t.uplink_only,
            t.downlink_only,
            t.connect
        ),
        (8, 120, 2, 9, 10)
    );
    assert_eq!(c.dataplane.timeouts_from, TimeoutsSource::XrayConnectionConfig(1));
    assert!(c.nodes.is_empty());
}

#[test]
fn config_v2sp_extensions() {
    let l = load_ok("extensions.json");
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    let c = &l.config;
    assert_eq!(c.state_dir, PathBuf::from("/srv/v2sp/state"));
    assert_eq!(c.metrics.listen, Some("127.0.0.1:9555".parse().unwrap()));
    let dp = &c.dataplane;
    assert_eq!((dp.workers, dp.io), (4, IoMode::Epoll));
    assert_eq!(dp.shm_dir, PathBuf::from("/dev/shm/v2sp-test"));
    assert!(dp.allow_private_destinations);
    assert_eq!(
        (dp.handshake_limits.per_worker, dp.handshake_limits.per_ip),
        (1000, 50)
    );
    let t = &dp.timeouts;
    assert_eq!(
        (
            t.handshake,
            t.conn_idle,
            t.uplink_only,
            t.downlink_only,
            t.connect
        ),
        (6, 600, 2, 5, 3)
    );
    assert_eq!(
        dp.timeouts_from,
        TimeoutsSource::Dataplane,
        "Dataplane.Timeouts wins over XrayConnectionConfig"
    );
    assert_eq!(
        c.nodes[0].standalone_file(),
        Some(PathBuf::from("/etc/v2sp/nodes.json"))
    );
    assert_eq!(c.nodes[0].api_dialect, ApiDialect::Single);
    assert_eq!(c.nodes[1].standalone_file(), None);

    // a relative file:// path is relative to the directory of the config file
    let l = parse_str(
        r#"{"Nodes": [{"ApiHost": "file://standalone-nodes.json", "NodeID": 1}]}"#,
        Path::new("/etc/v2sp/config.json"),
    )
    .unwrap();
    assert_eq!(
        l.config.nodes[0].standalone_file(),
        Some(PathBuf::from("/etc/v2sp/standalone-nodes.json"))
    );
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    assert_eq!(c.nodes[1].api_dialect, ApiDialect::UniProxy);
}

#[test]
fn xboard_api_version_and_machine_entries() {
    use v2sp_shared::config::ApiVersion;
    let l = parse_str(
        r#"{"Nodes": [
            {"ApiHost": "https://p.example", "ApiKey": "kkkkkkkk", "NodeID": 1, "ApiVersion": "v2",
             "ApiCAFile": "ca/panel.pem"},
            {"ApiHost": "https://p.example", "ApiKey": "mmmmmmmm", "MachineID": 7}
        ]}"#,
        Path::new("/etc/v2sp/config.json"),
    )
    .unwrap();
    let n = &l.config.nodes;
    assert_eq!(n[0].api_version, ApiVersion::V2);
    // Relative to the declaring file; unset = web PKI.
    assert_eq!(n[0].api_ca_path(), Some(PathBuf::from("/etc/v2sp/ca/panel.pem")));
    assert_eq!(n[1].api_ca_path(), None);
    assert!(!n[0].is_machine());
    assert_eq!(n[1].api_version, ApiVersion::Auto);
    assert_eq!(n[1].machine_id, Some(7));
    assert!(n[1].is_machine());
    assert_eq!(n[1].tag(), "[https://p.example]-machine:7");
    for (bad, msg) in [
        (
            r#""ApiVersion": "v3""#,
            "Nodes[0].ApiVersion: expected \"auto\", \"v1\" or \"v2\"",
        ),
        (
            r#""MachineID": 0"#,
            "Nodes[0].MachineID: must be a positive integer",
        ),
    ] {
        let doc = format!(r#"{{"Nodes": [{{"ApiKey": "kkkkkkkk", "NodeID": 1, {bad}}}]}}"#);
        let e = parse_str(&doc, Path::new("/c.json")).unwrap_err().to_string();
        assert!(e.contains(msg), "{e}");
    }
}

#[test]
fn config_unknown_keys_are_warnings_with_positions() {
    let l = load_ok("unknown_keys.json");
    let text = std::fs::read_to_string(fixture("unknown_keys.json")).unwrap();
    let c = &l.config;
    assert_eq!(c.log.level, LogLevel::Info);
    assert!(has_warning(&l, "Log.Level", "unknown log level \"verbose\""));
    assert!(has_warning(&l, "Log.Colour", "unknown key"));
    assert!(has_warning(&l, "Extra", "unknown key"));
    assert!(has_warning(
        &l,
        "Cores[0].ConnectionConfig",
        "XrayConnectionConfig"
    ));
    assert!(has_warning(&l, "Nodes[0].ApiHots", "did you mean ApiHost?"));
    assert!(has_warning(&l, "Nodes[0].nodeid", "duplicate key"));
    // keys match case-insensitively; the last duplicate wins
    let n = &c.nodes[0];
    assert_eq!(n.api_host, "https://p.example");
    assert_eq!(n.api_key, "kkkkkkkk");
    assert_eq!(n.node_id, 6);
    assert_eq!(n.node_type, "hysteria2");
    let extra = l.warnings.iter().find(|w| w.path == "Extra").unwrap();
    assert_eq!((extra.line, extra.column), pos_of(&text, "\"Extra\""));
    assert_eq!(
        extra.to_string(),
        format!(
            "{}:3:3: Extra: unknown key \"Extra\" (ignored)",
            fixture("unknown_keys.json").display()
        )
    );
    assert_eq!(warning_paths(&l).len(), 6, "{:?}", l.warnings);
}

#[test]
fn config_truncated_file_error_position() {
    let e = load_err("broken_truncated.json");
    let (line, col) = e.position().unwrap();
    assert_eq!((line, col), (6, 1));
    let msg = e.to_string();
    assert!(
        msg.ends_with(":6:1: unexpected end of file while reading an object (truncated file?)"),
        "{msg}"
    );
}

#[test]
fn config_wrong_type_error_names_file_line_column_and_key_path() {
    let text = std::fs::read_to_string(fixture("broken_type.json")).unwrap();
    assert_eq!(pos_of(&text, "\"abc\""), (7, 31));
    let msg = parse_err(&text);
    assert_eq!(
        msg,
        "config.json:7:31: Nodes[1].NodeID: expected an integer, found \"abc\""
    );
    let e = load_err("broken_type.json");
    assert_eq!(e.file(), fixture("broken_type.json"));
}

#[test]
fn config_duplicate_names_are_an_error() {
    let e = load_err("broken_dup_names.json");
    let msg = e.to_string();
    assert!(
        msg.contains(":4:5: Nodes[1].Name: duplicate node Name \"edge\": Nodes[0] at"),
        "{msg}"
    );
    assert!(
        msg.contains("broken_dup_names.json:3:5 has the same one"),
        "{msg}"
    );

    // without Name, the tag [ApiHost]-type:NodeID must be unique too
    let msg = parse_err(
        r#"{"Nodes": [
            {"ApiHost": "https://p", "ApiKey": "kkkkk", "NodeID": 1, "NodeType": "vless"},
            {"ApiHost": "https://p", "ApiKey": "kkkkk", "NodeID": 1, "NodeType": "vless"}]}"#,
    );
    assert!(msg.contains("Nodes[1]: duplicate node tag"), "{msg}");
    assert!(msg.contains("[https://p]-vless:1"), "{msg}");
}

#[test]
fn config_validation_errors() {
    let node = |extra: &str| {
        format!(
            r#"{{"Nodes": [{{"ApiHost": "https://p.example", "ApiKey": "kkkkkkkk", "NodeID": 1{extra}}}]}}"#
        )
    };
    let cases: &[(&str, &str)] = &[
        (
            r#"{"Nodes": [{"ApiKey": "k"}]}"#,
            "config.json:1:12: Nodes[0].NodeID: missing",
        ),
        (
            r#"{"Nodes": [{"NodeID": 0}]}"#,
            "config.json:1:23: Nodes[0].NodeID: must be a positive integer, found 0",
        ),
        (
            r#"{"Nodes": [{"NodeID": -4}]}"#,
            "Nodes[0].NodeID: must be a positive integer, found -4",
        ),
        (
            r#"{"Nodes": [{"NodeID": 1.5}]}"#,
            "config.json:1:23: Nodes[0].NodeID: expected an integer, found 1.5",
        ),
        (
            r#"{"Nodes": [{"NodeID": 99999999999999999999}]}"#,
            "Nodes[0].NodeID: integer 99999999999999999999 is out of range",
        ),
        (
            &node(r#", "NodeType": "mieru""#),
            "Nodes[0].NodeType: unsupported node type \"mieru\"",
        ),
        (
            r#"{"Nodes": [{"ApiHost": "panel.example.com", "NodeID": 1}]}"#,
            "config.json:1:24: Nodes[0].ApiHost: \"panel.example.com\" is not a URL",
        ),
        (
            r#"{"Nodes": [{"ApiHost": "https://p:0x50", "NodeID": 1}]}"#,
            "Nodes[0].ApiHost: \"https://p:0x50\": invalid port",
        ),
        (
            r#"{"Nodes": [{"ApiHost": "file://", "NodeID": 1}]}"#,
            "Nodes[0].ApiHost: \"file://\": a file ApiHost needs a path",
        ),
        (
            &node(r#", "Timeout": "30""#),
            "Nodes[0].Timeout: expected an integer, found \"30\"",
        ),
        (
            &node(r#", "EnableTFO": "true""#),
            "Nodes[0].EnableTFO: expected true or false, found \"true\"",
        ),
        (
            &node(r#", "EnableTFO": 1"#),
            "Nodes[0].EnableTFO: expected true or false, found 1",
        ),
        (
            &node(r#", "ListenIP": "localhost""#),
            "Nodes[0].ListenIP: expected an IP address, found \"localhost\"",
        ),
        (
            &node(r#", "ApiSendIP": "1.2.3""#),
            "Nodes[0].ApiSendIP: expected an IP address",
        ),
        (
            &node(r#", "ApiDialect": "v2""#),
            "Nodes[0].ApiDialect: expected \"auto\", \"single\" or \"uniproxy\", found \"v2\"",
        ),
        (
            &node(r#", "CertConfig": {"CertMode": "file", "CertFile": "/c.pem"}"#),
            "Nodes[0].CertConfig.CertMode: CertMode \"file\" needs KeyFile to be set",
        ),
        (
            &node(r#", "CertConfig": {"CertMode": "dns", "CertFile": "/c", "KeyFile": "/k"}"#),
            "CertMode \"dns\" needs CertDomain and Provider to be set",
        ),
        (
            &node(r#", "CertConfig": {"CertMode": "acme"}"#),
            "Nodes[0].CertConfig.CertMode: unknown CertMode \"acme\"",
        ),
        (
            &node(r#", "CertConfig": {"DNSEnv": {"A": 1}}"#),
            "Nodes[0].CertConfig.DNSEnv.A: expected a string, found 1",
        ),
        (
            &node(r#", "FallBackConfigs": [{"SNI": "x"}]"#),
            "Nodes[0].FallBackConfigs[0].Dest: missing",
        ),
        (
            &node(r#", "FallBackConfigs": 3"#),
            "Nodes[0].FallBackConfigs: expected an array (xray form) or an object (sing form)",
        ),
        (
            &node(r#", "LimitConfig": []"#),
            "Nodes[0].LimitConfig: expected an object, found an array",
        ),
        (
            r#"{"Nodes": {}}"#,
            "config.json:1:11: Nodes: expected an array, found an object",
        ),
        (
            r#"{"Cores": [{"Type": 1}]}"#,
            "Cores[0].Type: expected a string, found 1",
        ),
        (r#"{"StateDir": "state"}"#, "StateDir: must be an absolute path"),
        (
            r#"{"Dataplane": {"IO": "poll"}}"#,
            "Dataplane.IO: expected \"auto\", \"uring\" or \"epoll\"",
        ),
        (
            r#"{"Dataplane": {"Workers": -1}}"#,
            "Dataplane.Workers: must be between 0 and",
        ),
        (
            r#"{"Dataplane": {"Timeouts": {"ConnIdle": "300"}}}"#,
            "Dataplane.Timeouts.ConnIdle: expected an integer",
        ),
        (
            r#"{"Cores": [{"XrayConnectionConfig": {"handshake": -1}}]}"#,
            "Cores[0].XrayConnectionConfig.handshake: must be between 0",
        ),
        (
            r#"[1, 2]"#,
            "config.json:1:1: (top level): expected an object with Log, Cores and Nodes, found an array",
        ),
        ("", "config.json:1:1: the file is empty"),
        (
            "{\n  \"Log\": {} /* open",
            "config.json:2:13: unterminated /* comment",
        ),
        (
            "{\"Log\": {'Level': 1}}",
            "config.json:1:10: expected a double-quoted key",
        ),
        (
            "{\"Nodes\": [\n  {\"NodeID\": 1,,}]}",
            "config.json:2:17: expected a double-quoted key",
        ),
    ];
    for (text, want) in cases {
        let got = parse_err(text);
        assert!(
            got.contains(want),
            "\n text: {text}\n  got: {got}\n want: …{want}…"
        );
    }
}

#[test]
fn config_lenient_values_give_warnings() {
    let l = parse_ok(
        r#"{"Log": {"Level": "trace"}, "Nodes": [{"ApiHost": "https://p", "NodeID": 1,
            "ReportMinTraffic": -5, "LimitConfig": {"SpeedLimit": -1, "IPLimit": 2},
            "FallBackConfigs": [{"Dest": "80"}], "DNSType": "UseIPv4v6", "Core": "sing",
            "Log": null, "Name": ""}]}"#,
    );
    let n = &l.config.nodes[0];
    assert_eq!(n.report_min_traffic_kb, 0);
    assert_eq!(n.limit.speed_limit_mbps, 0);
    assert_eq!(n.limit.device_limit, 2, "IPLimit is accepted as DeviceLimit");
    assert_eq!(n.dns_type, "UseIPv4v6");
    assert_eq!(n.name, None, "empty Name means the automatic tag");
    assert!(has_warning(&l, "Log.Level", "using info"));
    assert!(has_warning(&l, "Nodes[0].ApiKey", "ApiKey is empty"));
    assert!(has_warning(&l, "Nodes[0].ReportMinTraffic", "negative"));
    assert!(has_warning(&l, "Nodes[0].LimitConfig.SpeedLimit", "negative"));
    assert!(has_warning(
        &l,
        "Nodes[0].FallBackConfigs",
        "EnableFallback is false"
    ));
    assert!(has_warning(&l, "Nodes[0].DNSType", "unknown DNSType"));
    assert!(has_warning(&l, "Nodes[0].Core", "one engine"));
    assert!(has_warning(&l, "Nodes[0].Log", "unknown key"));
}

#[test]
fn config_null_keeps_defaults_and_bom_is_tolerated() {
    let l = parse_ok("\u{feff}{\"Nodes\": [{\"ApiKey\": \"abcdefgh\", \"NodeID\": 2, \"ApiHost\": null, \"Timeout\": null}], \"Cores\": null}");
    let n = &l.config.nodes[0];
    assert_eq!(n.api_host, "http://127.0.0.1");
    assert_eq!(n.timeout_secs, 30);
}

#[test]
fn config_missing_file_and_invalid_utf8() {
    let e = load(Path::new("/nonexistent/v2sp/config.json")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("/nonexistent/v2sp/config.json: cannot read config file"),
        "{e}"
    );
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("config.json");
    std::fs::write(&p, b"{\n  \"Log\": \"\xff\"}").unwrap();
    let e = load(&p).unwrap_err();
    assert_eq!(e.position(), Some((2, 11)));
    assert!(e.to_string().contains("invalid UTF-8"), "{e}");
}

/// The example files that ship in deploy/ must load without errors or warnings.
#[test]
fn config_deploy_examples_load_cleanly() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    for name in ["config.example.json", "standalone.json"] {
        let path = deploy.join(name);
        if !path.exists() {
            continue; // deploy/ belongs to another engineer; check what is there
        }
        let l = match load(&path) {
            Ok(l) => l,
            Err(e) => panic!("{e}"),
        };
        assert!(l.warnings.is_empty(), "{name}: {:?}", l.warnings);
        assert!(!l.config.nodes.is_empty(), "{name}");
    }
}
