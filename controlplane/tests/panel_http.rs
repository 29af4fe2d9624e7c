//! PanelClient against the panel simulator: dialects, auto-detect, headers, ETag/304,
//! body-hash de-duplication, user-list quirks, alivelist.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde_json::json;
use v2sp_control::panel::{
    Action, Dialect, Fetch, NodeApi, Panel, PanelClient, PanelError, PushBody, RetryPolicy, UserList,
};
use v2sp_testsupport::panel_sim::{user, PanelSim, SimDialect, SimOptions};

const U1: &str = "2b4f9e9c-1b5e-4d1c-9d6a-1f0c6b7a8e01";
const U2: &str = "7c1d2e3f-4a5b-4c6d-8e9f-0a1b2c3d4e5f";

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        retries: 3,
        base: Duration::from_millis(2),
        cap: Duration::from_millis(10),
    }
}

fn api(sim: &PanelSim, host: String, dialect: Dialect) -> NodeApi {
    let mut a = NodeApi::new(host, sim.token(), 26);
    a.node_type = Some("vless".into());
    a.timeout = Duration::from_secs(2);
    a.dialect = dialect;
    // These tests count the v1 requests of each dialect; `ApiVersion: auto` would add one
    // v2 handshake probe first (tests/xboard_v2.rs covers that).
    a.version = v2sp_control::panel::ApiVersion::V1;
    a
}

fn client(api: NodeApi) -> PanelClient {
    PanelClient::new(api).unwrap().with_retry(fast_retry())
}

fn vless_node() -> serde_json::Value {
    json!({"node_type": "vless", "server_port": 443, "tls": 2, "network": "tcp",
        "tls_settings": {"server_name": "www.example.com", "server_port": "443", "private_key": "k", "short_id": "ab"},
        "base_config": {"push_interval": 10, "pull_interval": 20}})
}

fn sim_with_node(opts: SimOptions) -> PanelSim {
    let sim = PanelSim::start(opts).unwrap();
    sim.set_node(26, vless_node());
    sim.set_users(26, vec![user(1, U1), user(2, U2)]);
    sim
}

#[test]
fn single_endpoint_request_shape_and_etag() {
    let sim = sim_with_node(SimOptions::default());
    let mut c = client(api(&sim, sim.single_url(), Dialect::Auto));
    assert_eq!(
        c.dialect(),
        Dialect::Single,
        "a host with a path is the single endpoint"
    );

    let Fetch::Changed { value, etag } = c.config().unwrap() else {
        panic!("first fetch must be Changed")
    };
    assert_eq!(value.server_port, 443);
    assert_eq!(value.base_config.pull_interval_secs, 20);
    let etag = etag.expect("simulator sends an ETag");
    assert_eq!(c.config().unwrap(), Fetch::Unchanged);

    let reqs = sim.requests_for(Action::Config);
    assert_eq!(reqs.len(), 2);
    let first = &reqs[0];
    assert_eq!(first.method, "GET");
    assert_eq!(first.path, "/api/v2sp");
    assert_eq!(first.dialect, Some(SimDialect::Single));
    let keys: Vec<&str> = first.query.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["action", "node_id", "node_type", "token"]);
    assert_eq!(first.query_param("node_id"), Some("26"));
    assert_eq!(first.query_param("node_type"), Some("vless"));
    assert_eq!(first.query_param("token"), Some(sim.token()));
    assert_eq!(
        first.header("user-agent"),
        Some(concat!("v2sp/", env!("CARGO_PKG_VERSION")))
    );
    assert_eq!(
        first.header("if-none-match"),
        None,
        "no header while no ETag is stored"
    );
    assert_eq!(
        reqs[1].header("if-none-match"),
        Some(etag.as_str()),
        "ETag sent back verbatim"
    );
    assert_eq!(reqs[1].status, Some(304));

    // Users: same conditional behaviour, independent validator.
    let users = c.users().unwrap().changed().unwrap();
    assert_eq!(users.users.len(), 2);
    assert_eq!(c.users().unwrap(), Fetch::Unchanged);

    // A change on the panel is seen.
    sim.set_users(26, vec![user(1, U1)]);
    let users = c.users().unwrap().changed().unwrap();
    assert_eq!(users.users.iter().map(|u| u.id).collect::<Vec<_>>(), vec![1]);
}

#[test]
fn node_type_is_omitted_when_not_configured() {
    let sim = sim_with_node(SimOptions::default());
    let mut a = api(&sim, sim.single_url(), Dialect::Single);
    a.node_type = Some(String::new());
    let mut c = client(a);
    c.config().unwrap();
    let r = &sim.requests_for(Action::Config)[0];
    assert_eq!(r.query_param("node_type"), None);
    assert!(r.query_param("token").is_some());
}

#[test]
fn uniproxy_dialect_all_actions() {
    let sim = sim_with_node(SimOptions {
        single_path: None,
        ..SimOptions::default()
    });
    sim.set_alive(BTreeMap::from([(1, 2)]));
    let mut c = client(api(&sim, sim.uniproxy_url(), Dialect::UniProxy));
    assert!(matches!(c.config().unwrap(), Fetch::Changed { .. }));
    assert!(matches!(c.users().unwrap(), Fetch::Changed { .. }));
    assert_eq!(c.alivelist().unwrap().counts, BTreeMap::from([(1, 2)]));
    let body = PushBody::from([(1, [100, 200])]);
    assert_eq!(c.push(&body, "r-1"), v2sp_control::panel::PushOutcome::Accepted);
    c.alive(&BTreeMap::from([(1, vec!["192.0.2.7".to_string()])]))
        .unwrap();

    let reqs = sim.requests();
    assert_eq!(reqs.len(), 5);
    for r in &reqs {
        assert_eq!(r.dialect, Some(SimDialect::UniProxy), "{r:?}");
        assert!(r.path.starts_with("/api/v1/server/UniProxy/"));
    }
    let push = &sim.requests_for(Action::Push)[0];
    assert_eq!(push.method, "POST");
    assert_eq!(push.header("content-type"), Some("application/json"));
    assert_eq!(push.header("x-v2sp-report-id"), Some("r-1"));
    assert_eq!(push.body, br#"{"1":[100,200]}"#.to_vec());
    assert_eq!(sim.totals(26), BTreeMap::from([(1, (100, 200))]));
    assert_eq!(sim.alive_reports(26).len(), 1);
}

#[test]
fn auto_detects_a_stock_panel_on_a_bare_host_and_remembers() {
    let sim = sim_with_node(SimOptions {
        single_path: None,
        ..SimOptions::default()
    });
    let mut c = client(api(&sim, sim.base_url(), Dialect::Auto));
    assert_eq!(c.dialect(), Dialect::Auto);
    assert!(matches!(c.config().unwrap(), Fetch::Changed { .. }));
    assert_eq!(c.dialect(), Dialect::UniProxy);
    let reqs = sim.requests();
    assert_eq!(reqs.len(), 2, "one 404 probe, then UniProxy");
    assert_eq!(reqs[0].status, Some(404));
    assert_eq!(reqs[0].path, "/");
    assert_eq!(reqs[1].dialect, Some(SimDialect::UniProxy));
    sim.clear_requests();
    c.users().unwrap();
    let reqs = sim.requests();
    assert_eq!(reqs.len(), 1, "dialect remembered");
    assert_eq!(reqs[0].dialect, Some(SimDialect::UniProxy));
}

#[test]
fn auto_keeps_single_endpoint_when_it_answers_on_a_bare_host() {
    let sim = sim_with_node(SimOptions {
        single_path: Some("/".into()),
        uniproxy: false,
        ..SimOptions::default()
    });
    let mut c = client(api(&sim, sim.base_url(), Dialect::Auto));
    c.config().unwrap();
    assert_eq!(c.dialect(), Dialect::Single);
    assert_eq!(sim.requests().len(), 1);
}

#[test]
fn auto_on_bare_host_with_neither_dialect_reports_the_404() {
    let sim = sim_with_node(SimOptions {
        single_path: Some("/elsewhere".into()),
        uniproxy: false,
        ..SimOptions::default()
    });
    let mut c = client(api(&sim, sim.base_url(), Dialect::Auto));
    let e = c.config().unwrap_err();
    assert_eq!(e.status(), Some(404), "{e}");
    assert_eq!(c.dialect(), Dialect::Auto, "nothing learned");
}

#[test]
fn auto_uses_uniproxy_when_the_host_names_it() {
    let sim = sim_with_node(SimOptions {
        single_path: None,
        ..SimOptions::default()
    });
    let host = format!("{}/api/v1/server/UniProxy", sim.base_url());
    let mut c = client(api(&sim, host, Dialect::Auto));
    assert_eq!(c.dialect(), Dialect::UniProxy);
    c.config().unwrap();
    let reqs = sim.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].path, "/api/v1/server/UniProxy/config");
}

#[test]
fn body_hash_makes_unchanged_without_etag() {
    let sim = sim_with_node(SimOptions {
        etag: false,
        ..SimOptions::default()
    });
    let mut c = client(api(&sim, sim.single_url(), Dialect::Single));
    let Fetch::Changed { etag, .. } = c.config().unwrap() else {
        panic!()
    };
    assert_eq!(etag, None);
    assert_eq!(c.config().unwrap(), Fetch::Unchanged);
    assert!(matches!(c.users().unwrap(), Fetch::Changed { .. }));
    assert_eq!(c.users().unwrap(), Fetch::Unchanged);
    for r in sim.requests() {
        assert_eq!(r.header("if-none-match"), None);
        assert_eq!(r.status, Some(200));
    }
    let mut changed = vless_node();
    changed["server_port"] = json!(8443);
    sim.set_node(26, changed);
    assert_eq!(c.config().unwrap().changed().unwrap().server_port, 8443);
    // forget_cache forces a Changed even for identical bytes.
    c.forget_cache();
    assert!(matches!(c.config().unwrap(), Fetch::Changed { .. }));
}

#[test]
fn undecodable_body_is_not_remembered() {
    let sim = sim_with_node(SimOptions {
        etag: false,
        ..SimOptions::default()
    });
    sim.set_node(26, json!({"node_type": "vless", "server_port": "abc"}));
    let mut c = client(api(&sim, sim.single_url(), Dialect::Single));
    for _ in 0..2 {
        // The same broken body again is an error again, never "unchanged" (unlike v2sp seed).
        match c.config().unwrap_err() {
            PanelError::Decode { action, source } => {
                assert_eq!(action, Action::Config);
                assert_eq!(source.path, "server_port");
            }
            other => panic!("expected Decode, got {other}"),
        }
    }
    sim.set_node(26, vless_node());
    assert!(matches!(c.config().unwrap(), Fetch::Changed { .. }));
}

#[test]
fn errors_carry_the_panel_message() {
    let sim = sim_with_node(SimOptions::default());
    let mut a = api(&sim, sim.single_url(), Dialect::Single);
    a.api_key = "wrong".into();
    let mut c = client(a);
    match c.config().unwrap_err() {
        PanelError::Status { code, message, .. } => {
            assert_eq!(code, 403);
            assert_eq!(message, "token is error");
        }
        other => panic!("{other}"),
    }
    let mut a = api(&sim, sim.single_url(), Dialect::Single);
    a.node_id = 999;
    let e = client(a).users().unwrap_err();
    assert_eq!(e.status(), Some(404));
    assert!(e.to_string().contains("Server does not exist"), "{e}");
    assert_eq!(e.fault(), v2sp_control::panel::Fault::Panel);
}

#[test]
fn user_list_quirks_through_the_client() {
    let sim = sim_with_node(SimOptions::default());
    sim.set_users(
        26,
        vec![
            json!({"id": "1", "uuid": U1, "speed_limit": "100", "device_limit": 2.0}),
            json!({"id": 2, "uuid": null}),
            json!({"id": 3, "uuid": U2, "speed_limit": null, "device_limit": null, "u": 5, "transfer_enable": 9}),
        ],
    );
    let mut c = client(api(&sim, sim.single_url(), Dialect::Single));
    let UserList { users, skipped } = c.users().unwrap().changed().unwrap();
    assert_eq!(
        users
            .iter()
            .map(|u| (u.id, u.speed_limit, u.device_limit))
            .collect::<Vec<_>>(),
        vec![(1, 100, 2), (3, 0, 0)]
    );
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].id, Some(2));
    // An emptied list is a change (the caller decides what to do with it).
    sim.set_users(26, vec![]);
    assert_eq!(c.users().unwrap().changed().unwrap().users.len(), 0);
}

#[test]
fn alivelist_fail_open() {
    let sim = sim_with_node(SimOptions::default());
    sim.set_alive(BTreeMap::from([(1, 3), (2, 1)]));
    let mut c = client(api(&sim, sim.single_url(), Dialect::Single));
    assert_eq!(c.alivelist_fail_open(), BTreeMap::from([(1, 3), (2, 1)]));
    sim.set_fault(Action::AliveList, v2sp_testsupport::Fault::Garbage);
    assert!(matches!(c.alivelist(), Err(PanelError::Decode { .. })));
    assert_eq!(c.alivelist_fail_open(), BTreeMap::new());
}

#[test]
fn send_ip_binds_the_source_address() {
    let sim = sim_with_node(SimOptions::default());
    let mut a = api(&sim, sim.single_url(), Dialect::Single);
    let src: IpAddr = "127.0.0.2".parse().unwrap();
    a.send_ip = Some(src);
    let mut c = client(a);
    c.config().unwrap();
    assert_eq!(sim.requests()[0].peer.map(|p| p.ip()), Some(src));

    let mut a = api(&sim, sim.single_url(), Dialect::Single);
    a.send_ip = Some("192.0.2.123".parse().unwrap());
    match PanelClient::new(a) {
        Err(PanelError::Config(m)) => assert!(m.contains("ApiSendIP"), "{m}"),
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn bad_api_host_is_a_config_error() {
    for host in ["panel.example/api", "https://", "ftp://x/"] {
        match PanelClient::new(NodeApi::new(host, "k", 1)) {
            Err(e @ PanelError::Config(_)) => assert_eq!(e.fault(), v2sp_control::panel::Fault::Config),
            other => panic!("{host}: {other:?}"),
        }
    }
}
