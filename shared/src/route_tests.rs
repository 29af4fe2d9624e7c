#![allow(clippy::unwrap_used)]
use super::*;
use serde_json::json;

fn q<'a>(domain: Option<&'a str>, ip: Option<&str>, port: u16) -> RouteQuery<'a> {
    RouteQuery {
        node_tag: "node-a",
        user_id: 7,
        user_uuid: Some("b831381d-6324-4d53-ad4f-8cda48b30811"),
        domain,
        ip: ip.map(|s| s.parse().unwrap()),
        port,
        network: Network::Tcp,
        protocol: None,
        source: Some("203.0.113.9".parse().unwrap()),
    }
}

fn table(rules: Vec<RouteRule>) -> RouteTable {
    let (t, skipped) = RouteTable::compile(&rules);
    assert!(skipped.is_empty(), "{skipped:?}");
    t
}

fn target<'a>(t: &'a RouteTable, q: &RouteQuery<'_>) -> Option<&'a RouteTarget> {
    t.decide(q).map(|h| h.target)
}

fn tag(s: &str) -> RouteTarget {
    RouteTarget::Tag(s.into())
}

#[test]
fn xray_rules_decode_in_their_json_shapes() {
    let r = rule_from_xray(
        &json!({"type": "field", "domain": ["domain:example.com", "full:a.test", "keyword:goog", "regexp:^x\\.", "plain"],
                "ip": ["10.0.0.0/8", "geoip:private", "1.2.3.4"], "port": "53,443,1000-2000",
                "network": "tcp,udp", "protocol": ["tls"], "user": ["7"], "inboundTag": ["node-a"],
                "source": ["203.0.113.0/24"], "outboundTag": "up"}),
        "custom_routes[0]",
    )
    .unwrap();
    assert_eq!(
        r.domain,
        vec![
            "domain:example.com",
            "full:a.test",
            "keyword:goog",
            "regexp:^x\\.",
            "keyword:plain"
        ]
    );
    assert_eq!(r.ip, vec!["10.0.0.0/8", "private", "1.2.3.4/32"]);
    assert_eq!(r.port, vec![(53, 53), (443, 443), (1000, 2000)]);
    assert_eq!(r.network, vec!["tcp", "udp"]);
    assert_eq!(r.target, Some(tag("up")));
    // A port as a number; a PHP object for a list.
    let r = rule_from_xray(
        &json!({"port": 8080, "domain": {"0": "a.test", "2": "b.test"}, "outboundTag": "x"}),
        "r",
    )
    .unwrap();
    assert_eq!(r.port, vec![(8080, 8080)]);
    assert_eq!(r.domain, vec!["keyword:a.test", "keyword:b.test"]);
}

#[test]
fn bad_xray_rules_are_refused_with_a_reason() {
    for (v, why) in [
        (json!({"domain": ["a.test"]}), "outboundTag"),
        (json!({"outboundTag": "x"}), "no condition"),
        (json!({"balancerTag": "b", "domain": ["a"]}), "balancer"),
        (json!({"port": "70000", "outboundTag": "x"}), "port"),
        (json!({"port": "20-10", "outboundTag": "x"}), "range"),
        (json!({"network": "sctp", "outboundTag": "x"}), "network"),
        (json!({"sourcePort": "1", "outboundTag": "x"}), "sourcePort"),
        (json!({"domain": ["geosite:cn"], "outboundTag": "x"}), "geo"),
        (json!({"ip": ["geoip:cn"], "outboundTag": "x"}), "geo"),
        (json!({"ip": ["300.1.1.1"], "outboundTag": "x"}), "ip"),
        (json!("x"), "object"),
    ] {
        let e = rule_from_xray(&v, "r").unwrap_err();
        assert!(e.contains(why), "{v}: {e}");
    }
    // Some unusable entries: the rule keeps the others (it matches less, never more).
    let r = rule_from_xray(
        &json!({"domain": ["geosite:cn", "a.test"], "outboundTag": "x"}),
        "r",
    )
    .unwrap();
    assert_eq!(r.domain, vec!["keyword:a.test"]);
}

#[test]
fn panel_routes_become_rules() {
    let r = rule_from_panel(
        5,
        &["example.com".into(), "*.b.test".into(), "10.0.0.0/8".into()],
        "proxy",
        Some("up"),
    )
    .unwrap()
    .unwrap();
    assert_eq!(r.name, "route 5");
    assert_eq!(r.domain, vec!["domain:example.com", "domain:b.test"]);
    assert_eq!(r.ip, vec!["10.0.0.0/8"]);
    let split = split_panel_rule(r);
    assert_eq!(split.len(), 2);
    let t = table(split);
    // Domain entries and networks are alternatives.
    assert_eq!(
        target(&t, &q(Some("www.example.com"), None, 443)),
        Some(&tag("up"))
    );
    assert_eq!(target(&t, &q(None, Some("10.1.2.3"), 443)), Some(&tag("up")));
    assert_eq!(target(&t, &q(Some("example.org"), None, 443)), None);
    let d = rule_from_panel(6, &["a.test".into()], "direct", None)
        .unwrap()
        .unwrap();
    assert_eq!(d.target, Some(RouteTarget::Direct));
    assert!(rule_from_panel(1, &["a.test".into()], "block", None)
        .unwrap()
        .is_none());
    assert!(rule_from_panel(1, &["a.test".into()], "dns", Some("1.1.1.1"))
        .unwrap()
        .is_none());
    assert!(rule_from_panel(1, &["a.test".into()], "proxy", None)
        .unwrap_err()
        .contains("action_value"));
    assert!(rule_from_panel(1, &["geosite:cn".into()], "direct", None).is_err());
    assert!(rule_from_panel(1, &[], "direct", None).is_err());
    assert!(rule_from_panel(1, &["a".into()], "teleport", None).is_err());
}

#[test]
fn first_matching_rule_wins_and_all_conditions_must_hold() {
    let rules = vec![
        rule_from_xray(
            &json!({"domain": ["domain:a.test"], "port": "443", "outboundTag": "one"}),
            "0",
        )
        .unwrap(),
        rule_from_xray(&json!({"domain": ["domain:a.test"], "outboundTag": "two"}), "1").unwrap(),
        rule_from_xray(
            &json!({"ip": ["192.0.2.0/24"], "network": "udp", "outboundTag": "udp"}),
            "2",
        )
        .unwrap(),
        rule_from_xray(
            &json!({"user": ["9", "node-a|c0ffee00-0000-4000-8000-000000000000"], "outboundTag": "u"}),
            "3",
        )
        .unwrap(),
        rule_from_xray(&json!({"inboundTag": ["node-b"], "outboundTag": "b"}), "4").unwrap(),
        rule_from_xray(&json!({"protocol": ["bittorrent"], "outboundTag": "bt"}), "5").unwrap(),
        rule_from_xray(&json!({"source": ["198.51.100.0/24"], "outboundTag": "src"}), "6").unwrap(),
    ];
    let t = table(rules);
    assert_eq!(target(&t, &q(Some("x.a.test"), None, 443)), Some(&tag("one")));
    assert_eq!(target(&t, &q(Some("x.a.test"), None, 80)), Some(&tag("two")));
    assert_eq!(target(&t, &q(None, Some("192.0.2.1"), 53)), None, "tcp, not udp");
    let udp = RouteQuery {
        network: Network::Udp,
        ..q(None, Some("192.0.2.1"), 53)
    };
    assert_eq!(target(&t, &udp), Some(&tag("udp")));
    let user9 = RouteQuery {
        user_id: 9,
        ..q(None, Some("1.1.1.1"), 80)
    };
    assert_eq!(target(&t, &user9), Some(&tag("u")));
    let by_uuid = RouteQuery {
        user_uuid: Some("C0FFEE00-0000-4000-8000-000000000000"),
        ..q(None, Some("1.1.1.1"), 80)
    };
    assert_eq!(target(&t, &by_uuid), Some(&tag("u")));
    let node_b = RouteQuery {
        node_tag: "node-b",
        ..q(None, Some("1.1.1.1"), 80)
    };
    assert_eq!(target(&t, &node_b), Some(&tag("b")));
    let bt = RouteQuery {
        protocol: Some("bittorrent"),
        ..q(None, Some("1.1.1.1"), 80)
    };
    assert_eq!(target(&t, &bt), Some(&tag("bt")));
    let src = RouteQuery {
        source: Some("198.51.100.7".parse().unwrap()),
        ..q(None, Some("1.1.1.1"), 80)
    };
    assert_eq!(target(&t, &src), Some(&tag("src")));
    assert_eq!(target(&t, &q(None, Some("1.1.1.1"), 80)), None);
    assert!(t.wants_sniff(false), "protocol rule");
}

#[test]
fn only_rules_that_name_the_destination_may_open_private_ranges() {
    let t = table(vec![
        rule_from_xray(&json!({"ip": ["geoip:private"], "outboundTag": "lan"}), "0").unwrap(),
        rule_from_xray(&json!({"network": "tcp,udp", "outboundTag": "all"}), "1").unwrap(),
    ]);
    let h = t.decide(&q(None, Some("10.0.0.1"), 80)).unwrap();
    assert_eq!((h.target, h.names_destination), (&tag("lan"), true));
    let h = t.decide(&q(None, Some("8.8.8.8"), 80)).unwrap();
    assert_eq!((h.target, h.names_destination), (&tag("all"), false));
    for ip in [
        "127.0.0.1",
        "192.168.1.1",
        "::1",
        "fd00::1",
        "::ffff:10.0.0.1",
        "169.254.0.1",
        "100.64.0.1",
    ] {
        assert!(is_private(ip.parse().unwrap()), "{ip}");
    }
    for ip in ["8.8.8.8", "2606:4700::1111", "100.128.0.1"] {
        assert!(!is_private(ip.parse().unwrap()), "{ip}");
    }
}

#[test]
fn outbounds_decode_in_xray_shapes() {
    let o = |v| outbound_from_xray(&v);
    assert_eq!(
        o(json!({"tag": "out", "protocol": "freedom", "sendThrough": "192.0.2.1", "settings": {"domainStrategy": "UseIPv4"}}))
            .unwrap(),
        OutboundSpec {
            tag: "out".into(),
            kind: OutboundKind::Freedom {
                send_through: "192.0.2.1".into(),
                domain_strategy: "UseIPv4".into()
            }
        }
    );
    // PHP's empty settings map is `[]`.
    assert_eq!(
        o(json!({"tag": "b", "protocol": "blackhole", "settings": []}))
            .unwrap()
            .kind,
        OutboundKind::Blackhole
    );
    assert_eq!(
        o(json!({"tag": "s", "protocol": "socks", "settings": {"servers": [{"address": "127.0.0.1", "port": 1080,
            "users": [{"user": "u", "pass": "p"}]}]}}))
        .unwrap()
        .kind,
        OutboundKind::Socks {
            server: "127.0.0.1:1080".into(),
            user: "u".into(),
            pass: "p".into()
        }
    );
    // Newer Xray's flat form; IPv6 in brackets; a port as a string.
    assert_eq!(
        o(json!({"tag": "h", "protocol": "http", "settings": {"address": "::1", "port": "8080"}}))
            .unwrap()
            .kind,
        OutboundKind::Http {
            server: "[::1]:8080".into(),
            user: String::new(),
            pass: String::new()
        }
    );
    assert_eq!(
        o(json!({"tag": "ss", "protocol": "shadowsocks", "settings": {"servers": [{"address": "up.test", "port": 8388,
            "method": "AES-128-GCM", "password": "pw"}]}, "streamSettings": {"network": "tcp", "security": "none"}}))
        .unwrap()
        .kind,
        OutboundKind::Shadowsocks {
            server: "up.test:8388".into(),
            method: "aes-128-gcm".into(),
            password: "pw".into()
        }
    );
    assert_eq!(
        o(json!({"tag": "vm", "protocol": "vmess", "settings": {"vnext": [{"address": "127.0.0.1", "port": 10086,
            "users": [{"id": "3f1d2c4b-5a69-4788-9b0a-1c2d3e4f5a6b", "alterId": 0, "security": "auto"}]}]}}))
        .unwrap()
        .kind,
        OutboundKind::Vmess {
            server: "127.0.0.1:10086".into(),
            uuid: "3f1d2c4b-5a69-4788-9b0a-1c2d3e4f5a6b".into(),
            security: "aes-128-gcm".into(),
            tls: None
        }
    );
    assert_eq!(
        o(
            json!({"tag": "vl", "protocol": "vless", "settings": {"address": "up.test", "port": 443,
            "id": "3f1d2c4b-5a69-4788-9b0a-1c2d3e4f5a6b", "encryption": "none"}})
        )
        .unwrap()
        .kind,
        OutboundKind::Vless {
            server: "up.test:443".into(),
            uuid: "3f1d2c4b-5a69-4788-9b0a-1c2d3e4f5a6b".into(),
            tls: None
        }
    );
    // Trojan over TLS: the name defaults to the server's address.
    assert_eq!(
        o(json!({"tag": "tj", "protocol": "trojan", "settings": {"servers": [{"address": "up.test", "port": 443, "password": "p"}]},
                 "streamSettings": {"network": "tcp", "security": "tls", "tlsSettings": {"allowInsecure": true, "alpn": ["h2"]}}}))
        .unwrap()
        .kind,
        OutboundKind::Trojan {
            server: "up.test:443".into(),
            password: "p".into(),
            tls: Some(OutboundTls {
                server_name: "up.test".into(),
                allow_insecure: true,
                alpn: vec!["h2".into()]
            })
        }
    );
    for (v, why) in [
        (
            json!({"tag": "x", "protocol": "vless", "settings": {"address": "a", "port": 1, "id": "nope"}}),
            "uuid",
        ),
        (
            json!({"tag": "x", "protocol": "vless", "settings": {"address": "a", "port": 1,
                "id": "3f1d2c4b-5a69-4788-9b0a-1c2d3e4f5a6b", "flow": "xtls-rprx-vision"}}),
            "flow",
        ),
        (
            json!({"tag": "x", "protocol": "vmess", "settings": {"address": "a", "port": 1,
                "id": "3f1d2c4b-5a69-4788-9b0a-1c2d3e4f5a6b", "security": "zero"}}),
            "security",
        ),
        (
            json!({"tag": "x", "protocol": "trojan", "settings": {"address": "a", "port": 1, "password": "p"},
                   "streamSettings": {"security": "reality"}}),
            "reality",
        ),
        (json!({"protocol": "freedom"}), "tag"),
        (json!({"tag": "x"}), "protocol"),
        (json!({"tag": "x", "protocol": "wireguard"}), "not supported"),
        (
            json!({"tag": "x", "protocol": "freedom", "sendThrough": "eth0"}),
            "sendThrough",
        ),
        (
            json!({"tag": "x", "protocol": "freedom", "settings": {"domainStrategy": "Sometimes"}}),
            "domainStrategy",
        ),
        (
            json!({"tag": "x", "protocol": "socks", "settings": {"servers": []}}),
            "no server",
        ),
        (
            json!({"tag": "x", "protocol": "socks", "settings": {"address": "a", "port": 0}}),
            "port",
        ),
        (
            json!({"tag": "x", "protocol": "socks", "proxy_tag": "y", "settings": {"address": "a", "port": 1}}),
            "chained",
        ),
        (
            json!({"tag": "x", "protocol": "socks", "settings": {"address": "a", "port": 1}, "streamSettings": {"security": "tls"}}),
            "only TCP",
        ),
        (
            json!({"tag": "x", "protocol": "shadowsocks", "settings": {"address": "a", "port": 1, "method": "m"}}),
            "password",
        ),
    ] {
        let e = o(v.clone()).unwrap_err();
        assert!(e.contains(why), "{v}: {e}");
    }
}

#[test]
fn json_lists_in_php_shapes() {
    assert_eq!(json_list(&json!([])).len(), 0);
    assert_eq!(json_list(&json!({})).len(), 0);
    assert_eq!(json_list(&json!({"0": {"a": 1}, "1": {"b": 2}})).len(), 2);
    assert_eq!(json_list(&json!({"tag": "x"})).len(), 1);
    assert_eq!(json_list(&json!(null)).len(), 0);
}
