//! Xboard's v2 node API, end to end: the real `v2sp` binary against the panel simulator
//! (`SimOptions::v2`), this test acting as the data plane through shared memory. Tested
//! against the simulator only: Xboard itself cannot be installed on the test machines.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use v2sp_shared::panel::Action;
use v2sp_testsupport::panel_sim::{user, Fault, PanelSim, SimOptions};

mod common;
use common::{log_of, pump, sigterm, spawn_agent, wait_totals, Env, FakeDataplane};

const UUIDS: [&str; 4] = [
    "a7b4b8ab-42d7-4c48-a0c5-91fd4bd53c37",
    "0e9f6d1c-5a4b-4c3d-8e2f-1a2b3c4d5e6f",
    "f47ac10b-58cc-4372-a567-0e02b2c3d479",
    "3d6f0a8e-2b1c-4e5f-9a7b-8c9d0e1f2a3b",
];

fn ss_node(port: u16) -> Value {
    json!({"node_type":"shadowsocks","server_port":port,"cipher":"aes-128-gcm",
           "base_config":{"push_interval":1,"pull_interval":1}})
}

fn env_with(nodes: Vec<Value>) -> Env {
    Env::with_nodes(nodes)
}

fn node_entry(sim: &PanelSim, id: u32, version: &str) -> Value {
    json!({"ApiHost": sim.base_url(), "ApiKey": "test-token", "NodeID": id,
           "NodeType": "shadowsocks", "Timeout": 2, "ApiVersion": version})
}

impl FakeDataplane {
    fn served(&mut self) -> BTreeMap<u16, (u16, Vec<u32>)> {
        self.core.tick();
        let Some((_, cfg)) = self.shm.read_config().unwrap() else {
            return BTreeMap::new();
        };
        cfg.nodes
            .iter()
            .map(|n| {
                let ids = self
                    .core
                    .users(n.slot)
                    .map(|v| {
                        let mut ids: Vec<u32> = v.iter().map(|u| u.user_id).collect();
                        ids.sort_unstable();
                        ids
                    })
                    .unwrap_or_default();
                (n.port, (n.slot, ids))
            })
            .collect()
    }

    /// Waits until the node on `port` serves exactly `ids`; returns its slot and how long it
    /// took.
    fn wait_users(&mut self, port: u16, ids: &[u32], within: Duration) -> (u16, Duration) {
        let start = Instant::now();
        loop {
            if let Some((slot, got)) = self.served().get(&port) {
                if got == ids {
                    return (*slot, start.elapsed());
                }
            }
            assert!(
                start.elapsed() < within,
                "node on port {port} never served users {ids:?} within {within:?}: {:?}",
                self.served()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn v2_sim() -> PanelSim {
    PanelSim::start(SimOptions {
        token: "test-token".into(),
        v2: true,
        ..SimOptions::default()
    })
    .unwrap()
}

fn add_node(sim: &PanelSim, id: u32, port: u16, users: usize) {
    sim.set_node(id, ss_node(port));
    sim.set_users(
        id,
        UUIDS
            .iter()
            .take(users)
            .enumerate()
            .map(|(i, u)| user(i as u32 + 1, u))
            .collect(),
    );
}

#[test]
fn v2_report_exact_through_outage_and_bad_answers() {
    let sim = v2_sim();
    sim.set_ws_enabled(false);
    add_node(&sim, 1, 18451, 3);
    let env = env_with(vec![node_entry(&sim, 1, "auto")]);
    let mut agent = spawn_agent(&env);
    let mut dp = FakeDataplane::attach(&env.dir.path().join("shm"));
    let (slot, _) = dp.wait_users(18451, &[1, 2, 3], Duration::from_secs(20));
    let phases = [
        Fault::None,
        Fault::status_after_apply(500),
        Fault::AcceptThenDropReply,
        Fault::Html,
        Fault::cdn_html_200(),
        Fault::Outage,
        Fault::Outage,
        Fault::Outage,
        Fault::None,
    ];
    let phase_len = Duration::from_millis(1500);
    let mut expected = BTreeMap::new();
    let mut phase = 0usize;
    pump(
        &mut dp,
        slot,
        phase_len * phases.len() as u32,
        &mut expected,
        |t| {
            let want = ((t.as_millis() / phase_len.as_millis()) as usize).min(phases.len() - 1);
            if want != phase {
                phase = want;
                sim.clear_faults();
                sim.set_fault(Action::Report, phases[phase].clone());
            }
        },
    );
    sim.clear_faults();
    wait_totals(&sim, &mut dp, 1, &expected, &env);
    assert!(
        sim.requests_for(Action::Push).is_empty(),
        "v1 push used with a v2 panel"
    );
    assert!(
        sim.requests_for(Action::Alive).is_empty(),
        "v1 alive used with a v2 panel"
    );
    let reports = sim.requests_for(Action::Report);
    assert!(!reports.is_empty());
    for r in sim.requests().iter().filter(|r| r.method == "POST") {
        assert_eq!(
            r.header("content-type"),
            Some("application/json"),
            "{} {}",
            r.method,
            r.path
        );
    }
    let traffic: Vec<_> = reports
        .iter()
        .filter(|r| String::from_utf8_lossy(&r.body).contains("\"traffic\""))
        .collect();
    assert!(traffic.iter().all(|r| r.header("x-v2sp-report-id").is_some()));
    // Resends were verbatim: one body per report id.
    let mut bodies: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for r in &traffic {
        let id = r.header("x-v2sp-report-id").unwrap().to_string();
        let prev = bodies.entry(id.clone()).or_insert_with(|| r.body.clone());
        assert_eq!(prev, &r.body, "report {id} resent with a different body");
    }
    let applied: Vec<_> = sim.pushes().into_iter().filter(|p| !p.duplicate).collect();
    let mut ids: Vec<_> = applied.iter().map(|p| p.report_id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), applied.len(), "a report id applied twice");
    // Status inside the report: CPU, memory, disk as the panel expects.
    let status = sim.status_of(1).expect("no status in any report");
    assert!(status["mem"]["total"].as_u64().unwrap() > 0, "{status}");
    assert!(status["disk"]["total"].as_u64().unwrap() > 0, "{status}");
    let cpu = status["cpu"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&cpu));
    let metrics = sim.metrics_of(1).expect("no metrics in any report");
    assert!(metrics["uptime"].as_u64().unwrap() > 0, "{metrics}");
    sigterm(&mut agent);
}

/// `ApiVersion: auto` against a panel without the v2 API (stock v1 simulator): one handshake
/// probe answered 404, then plain v1 for good; with `v2` forced, no probe decides anything.
#[test]
fn auto_falls_back_to_v1_and_v2_is_used_when_forced() {
    use v2sp_control::panel::{ApiVersion, NodeApi, Panel, PanelClient, PushOutcome};
    let v1 = PanelSim::start(SimOptions {
        single_path: None,
        ..SimOptions::default()
    })
    .unwrap();
    add_node(&v1, 26, 18452, 1);
    let mut c = PanelClient::new(NodeApi::new(v1.base_url(), v1.token(), 26)).unwrap();
    assert_eq!(c.version(), ApiVersion::Auto);
    c.config().unwrap();
    assert_eq!(c.version(), ApiVersion::V1);
    let body = BTreeMap::from([(1u32, [5u64, 6u64])]);
    assert_eq!(c.push(&body, "r-1"), PushOutcome::Accepted);
    let reqs = v1.requests();
    assert_eq!(reqs[0].path, "/api/v2/server/handshake");
    assert_eq!(reqs[0].status, Some(404));
    assert_eq!(reqs.iter().filter(|r| r.path.starts_with("/api/v2/")).count(), 1);
    assert_eq!(v1.requests_for(Action::Push).len(), 1);

    let v2 = v2_sim();
    add_node(&v2, 26, 18453, 1);
    let mut api = NodeApi::new(v2.base_url(), v2.token(), 26);
    api.version = ApiVersion::V2;
    let mut c = PanelClient::new(api).unwrap();
    assert_eq!(c.push(&body, "r-2"), PushOutcome::Accepted);
    let r = &v2.requests_for(Action::Report)[0];
    assert_eq!(r.body, br#"{"traffic":{"1":[5,6]}}"#.to_vec());
    assert_eq!(r.header("x-v2sp-report-id"), Some("r-2"));
    assert_eq!(v2.totals(26), BTreeMap::from([(1, (5, 6))]));
    // The same id again (an unknown outcome resent) is counted once.
    assert_eq!(c.push(&body, "r-2"), PushOutcome::Accepted);
    assert_eq!(v2.totals(26), BTreeMap::from([(1, (5, 6))]));
}

fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn devices_reports(sim: &PanelSim) -> usize {
    sim.ws_received()
        .iter()
        .filter(|m| m["event"] == "report.devices")
        .count()
}

/// The WebSocket channel: a user removal reaches the data plane's table within 1 s while REST
/// still lists the user (and later REST polls, answered 304, do not bring it back); an added
/// user is served within 1 s; after the panel drops the channel the agent reconnects, sends
/// its device snapshot at once and applies pushes again.
#[test]
fn websocket_user_sync_and_reconnect() {
    let sim = v2_sim();
    add_node(&sim, 1, 18454, 3);
    let env = env_with(vec![node_entry(&sim, 1, "v2")]);
    let mut agent = spawn_agent(&env);
    let mut dp = FakeDataplane::attach(&env.dir.path().join("shm"));
    dp.wait_users(18454, &[1, 2, 3], Duration::from_secs(20));
    wait_for("the WebSocket channel", Duration::from_secs(10), || {
        sim.ws_live() == 1
    });
    wait_for("report.devices after connect", Duration::from_secs(5), || {
        devices_reports(&sim) >= 1
    });

    // Removal: the panel pushes it; REST still lists user 2.
    assert_eq!(
        sim.ws_send(
            1,
            "sync.user.delta",
            json!({"action": "remove", "users": [{"id": 2}]})
        ),
        1
    );
    let (_, took) = dp.wait_users(18454, &[1, 3], Duration::from_secs(1));
    eprintln!("WebSocket removal reached the data plane in {took:?}");
    // Two more REST pull intervals: the REST list (unchanged, 304) does not undo the push.
    let pulls = sim.requests_for(Action::User).len();
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        assert_eq!(dp.served()[&18454].1, vec![1, 3], "{}", log_of(&env));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        sim.requests_for(Action::User).len() > pulls,
        "REST polling goes on while connected"
    );

    // Addition (PHP shape: users as an object with numeric keys).
    sim.ws_send(
        1,
        "sync.user.delta",
        json!({"action": "add", "users": {"0": user(4, UUIDS[3])}}),
    );
    let (_, took) = dp.wait_users(18454, &[1, 3, 4], Duration::from_secs(1));
    eprintln!("WebSocket addition reached the data plane in {took:?}");

    // Garbage frames are skipped, the channel stays up.
    sim.ws_send_raw(1, "<html>not json</html>");
    sim.ws_send_raw(1, r#"{"event":"sync.users","data":{"users":"nope"}}"#);
    sim.ws_send(1, "ping", json!({}));
    wait_for("pong", Duration::from_secs(2), || {
        sim.ws_received().iter().any(|m| m["event"] == "pong")
    });
    assert_eq!(dp.served()[&18454].1, vec![1, 3, 4]);

    // The panel drops the channel: reconnect, devices at once, pushes applied again.
    let devices_before = devices_reports(&sim);
    sim.ws_drop();
    wait_for("a reconnect", Duration::from_secs(10), || {
        sim.ws_accepted() >= 2 && sim.ws_live() == 1
    });
    wait_for(
        "report.devices after the reconnect",
        Duration::from_secs(2),
        || devices_reports(&sim) > devices_before,
    );
    // On connect the panel sent its full list again (REST's 1,2,3): applied as is.
    dp.wait_users(18454, &[1, 2, 3], Duration::from_secs(2));
    sim.ws_send(1, "sync.users", json!({"users": [user(3, UUIDS[2])]}));
    dp.wait_users(18454, &[3], Duration::from_secs(1));
    assert!(
        sim.ws_received().iter().any(|m| m["event"] == "node.status"),
        "node.status is sent while connected"
    );
    // The metrics Xboard stores (§3.2): users, users online, this node's speeds.
    let status = sim
        .ws_received()
        .into_iter()
        .rfind(|m| m["event"] == "node.status")
        .unwrap();
    for k in [
        "uptime",
        "total_users",
        "active_users",
        "active_connections",
        "inbound_speed",
        "outbound_speed",
        "ws",
    ] {
        assert!(
            status["data"].get(k).is_some(),
            "node.status without {k}: {status}"
        );
    }
    // The data plane's open connections of the node are Xboard's "online connections".
    let (slot, _) = dp.wait_users(18454, &[3], Duration::from_secs(1));
    let mut counts = vec![0u64; v2sp_shared::shm::layout::MAX_NODES];
    counts[usize::from(slot)] = 3;
    dp.core.set_node_conns(&counts);
    // And per user (Xboard's `report.online`): user 3 has two connections on this core.
    dp.core
        .set_user_conns(&BTreeMap::from([((slot, 3), 2), ((slot + 1, 3), 9)]))
        .unwrap();
    wait_for("report.online", Duration::from_secs(5), || {
        sim.online_conns_of(1) == Some(BTreeMap::from([(3, 2)]))
    });
    wait_for(
        "active_connections in node.status",
        Duration::from_secs(5),
        || {
            sim.ws_received()
                .iter()
                .any(|m| m["event"] == "node.status" && m["data"]["active_connections"] == 3)
        },
    );
    sigterm(&mut agent);
}

/// Xboard's device rule (spec §5): an address the panel lists online for the user on any node
/// is let in at the limit. The lists of `sync.devices` reach the data plane as a set it can
/// ask about one address (ports stripped as the panel does, IPv4-mapped the same address).
#[test]
fn websocket_device_lists_reach_the_data_plane() {
    let sim = v2_sim();
    add_node(&sim, 1, 18457, 2);
    let env = env_with(vec![node_entry(&sim, 1, "v2")]);
    let mut agent = spawn_agent(&env);
    let mut dp = FakeDataplane::attach(&env.dir.path().join("shm"));
    let (slot, _) = dp.wait_users(18457, &[1, 2], Duration::from_secs(20));
    wait_for("the WebSocket channel", Duration::from_secs(10), || {
        sim.ws_live() == 1
    });
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    assert!(!dp.core.known_elsewhere(slot, 1, ip("198.51.100.7")));
    // PHP shapes: an object for the list of user 1, an empty array for user 2.
    sim.ws_send(
        1,
        "sync.devices",
        json!({"users": {"1": {"0": "198.51.100.7", "1": "[2001:db8::5]:443"}, "2": []}}),
    );
    wait_for(
        "the device lists in shared memory",
        Duration::from_secs(3),
        || dp.core.known_elsewhere(slot, 1, ip("198.51.100.7")),
    );
    assert!(dp.core.known_elsewhere(slot, 1, ip("::ffff:198.51.100.7")));
    assert!(dp.core.known_elsewhere(slot, 1, ip("2001:db8::5")));
    assert!(
        !dp.core.known_elsewhere(slot, 2, ip("198.51.100.7")),
        "another user's address"
    );
    assert!(!dp.core.known_elsewhere(slot, 1, ip("198.51.100.8")));
    // A newer list replaces the old one.
    sim.ws_send(1, "sync.devices", json!({"users": {"2": ["203.0.113.9"]}}));
    wait_for("the newer lists", Duration::from_secs(3), || {
        dp.core.known_elsewhere(slot, 2, ip("203.0.113.9"))
    });
    assert!(!dp.core.known_elsewhere(slot, 1, ip("198.51.100.7")));
    sigterm(&mut agent);
}

/// Machine mode: one entry `{ApiHost, ApiKey: <machine token>, MachineID}` without `NodeID`
/// serves both nodes the panel lists, each reported exactly (machine auth on every call), a
/// WebSocket event reaches only the node it names, and a node unbound from the machine stops
/// being served.
#[test]
fn machine_mode_serves_two_nodes_exactly() {
    let sim = v2_sim();
    add_node(&sim, 1, 18455, 3);
    add_node(&sim, 2, 18456, 3);
    sim.set_machine(7, "machine-token-0123", vec![1, 2]);
    let env = env_with(vec![
        json!({"ApiHost": sim.base_url(), "ApiKey": "machine-token-0123",
                                   "MachineID": 7, "Timeout": 2}),
    ]);
    let mut agent = spawn_agent(&env);
    let mut dp = FakeDataplane::attach(&env.dir.path().join("shm"));
    let (s1, _) = dp.wait_users(18455, &[1, 2, 3], Duration::from_secs(20));
    let (s2, _) = dp.wait_users(18456, &[1, 2, 3], Duration::from_secs(20));
    let mut expected: BTreeMap<u32, BTreeMap<u32, (u64, u64)>> = BTreeMap::new();
    let start = Instant::now();
    let mut i = 0u64;
    while start.elapsed() < Duration::from_secs(4) {
        for (node, slot) in [(1u32, s1), (2u32, s2)] {
            for uid in 1..=3u32 {
                let (up, down) = (100 * u64::from(node) + i, 3 * i + u64::from(uid));
                dp.core.add_traffic(slot, uid, up, down);
                let e = expected.entry(node).or_default().entry(uid).or_default();
                e.0 += up;
                e.1 += down;
            }
        }
        dp.core.tick();
        i += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_totals(&sim, &mut dp, 1, &expected[&1], &env);
    wait_totals(&sim, &mut dp, 2, &expected[&2], &env);
    // Every per-node call used machine auth.
    for r in sim
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/api/v2/server/"))
    {
        assert_eq!(r.query_param("machine_id"), Some("7"), "{}", r.path);
        assert_eq!(r.query_param("token"), Some("machine-token-0123"));
    }
    // One channel for the machine; an event names its node.
    wait_for("the machine's channel", Duration::from_secs(10), || {
        sim.ws_live() == 1
    });
    sim.ws_send(
        2,
        "sync.user.delta",
        json!({"action": "remove", "users": [{"id": 1}]}),
    );
    dp.wait_users(18456, &[2, 3], Duration::from_secs(1));
    assert_eq!(dp.served()[&18455].1, vec![1, 2, 3]);
    wait_for("node.status with node_id", Duration::from_secs(5), || {
        sim.ws_received()
            .iter()
            .any(|m| m["event"] == "node.status" && m["data"]["node_id"] == 2)
    });
    let ms = sim
        .machine_status(7)
        .expect("machine/status sent every push interval");
    assert!(ms["mem"]["total"].as_u64().unwrap() > 0, "{ms}");
    // Node 2 leaves the machine: `sync.nodes` (and the next list) stop it.
    sim.set_machine(7, "machine-token-0123", vec![1]);
    wait_for("node 2 unpublished", Duration::from_secs(5), || {
        !dp.served().contains_key(&18456)
    });
    assert!(dp.served().contains_key(&18455));
    sigterm(&mut agent);
}

/// v1 `POST status` (UniProxy dialect): every field the panel validates (cpu 0–100; mem, swap,
/// disk total/used as integers), JSON `Content-Type`; a 422 is an error, not a panic.
#[test]
fn v1_status_has_what_the_panel_validates() {
    use v2sp_control::hoststat::{metrics, HostStat};
    use v2sp_control::panel::{ApiVersion, Dialect, NodeApi, Panel, PanelClient};
    let sim = PanelSim::start(SimOptions {
        single_path: None,
        ..SimOptions::default()
    })
    .unwrap();
    add_node(&sim, 26, 18457, 1);
    let mut api = NodeApi::new(sim.base_url(), sim.token(), 26);
    api.version = ApiVersion::V1;
    api.dialect = Dialect::UniProxy;
    let mut c = PanelClient::new(api).unwrap();
    let mut host = HostStat::default();
    c.status(&host.sample(), &metrics(), &BTreeMap::new()).unwrap();
    let r = &sim.requests_for(Action::Status)[0];
    assert_eq!(r.path, "/api/v1/server/UniProxy/status");
    assert_eq!(r.header("content-type"), Some("application/json"));
    let s = sim.status_of(26).unwrap();
    for k in ["mem", "swap", "disk"] {
        assert!(s[k]["total"].is_u64() && s[k]["used"].is_u64(), "{s}");
    }
    assert!(s["mem"]["total"].as_u64().unwrap() >= s["mem"]["used"].as_u64().unwrap());
    sim.set_fault(
        Action::Status,
        Fault::json_refusal(422, "The given data was invalid."),
    );
    let e = c
        .status(&host.sample(), &metrics(), &BTreeMap::new())
        .unwrap_err();
    assert_eq!(e.status(), Some(422), "{e}");
}

/// WebSocket upgrades refused (503) and an `invalid token` error frame: the node is served over
/// REST meanwhile, and the channel comes up once the panel accepts it.
#[test]
fn websocket_refused_then_accepted_rest_serves_meanwhile() {
    let sim = v2_sim();
    sim.set_ws_refuse(true);
    add_node(&sim, 1, 18458, 2);
    let env = env_with(vec![node_entry(&sim, 1, "auto")]);
    let mut agent = spawn_agent(&env);
    let mut dp = FakeDataplane::attach(&env.dir.path().join("shm"));
    dp.wait_users(18458, &[1, 2], Duration::from_secs(20));
    // REST changes still arrive while there is no channel.
    sim.set_users(1, vec![user(1, UUIDS[0])]);
    dp.wait_users(18458, &[1], Duration::from_secs(5));
    assert_eq!(sim.ws_accepted(), 0);
    sim.set_ws_refuse(false);
    wait_for("the channel after the refusals", Duration::from_secs(40), || {
        sim.ws_live() == 1
    });
    sim.ws_send(
        1,
        "sync.user.delta",
        json!({"action": "add", "users": [user(3, UUIDS[2])]}),
    );
    dp.wait_users(18458, &[1, 3], Duration::from_secs(1));
    assert_eq!(
        agent.try_wait().unwrap(),
        None,
        "the agent never exits because of the panel"
    );
    sigterm(&mut agent);
}

/// A CA, and a certificate it signed for `localhost`: (CA PEM, certificate PEM, key PEM).
fn private_ca() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    (ca.pem(), leaf.pem(), key.serialize_pem())
}

/// The panel as operators deploy it: behind nginx terminating https and wss, here with a
/// private CA that `ApiCAFile` names. REST and the WebSocket channel both go through nginx
/// (the handshake's URL is `wss://` because nginx sends X-Forwarded-Proto), and a removal
/// pushed over wss reaches the data plane within 1 s.
#[test]
fn wss_panel_behind_nginx_trusted_by_api_ca_file() {
    let sim = v2_sim();
    add_node(&sim, 1, 18461, 3);
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::create_dir_all(d.join("logs")).unwrap();
    let (ca, cert, key) = private_ca();
    std::fs::write(d.join("ca.pem"), ca).unwrap();
    std::fs::write(d.join("cert.pem"), cert).unwrap();
    std::fs::write(d.join("key.pem"), key).unwrap();
    let port = v2sp_testsupport::harness::free_port();
    let conf = format!(
        "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/logs/error.log;\n\
         events {{ worker_connections 64; }}\n\
         http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};\n\
           uwsgi_temp_path {d}; scgi_temp_path {d};\n\
           map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}\n\
           server {{ listen 127.0.0.1:{port} ssl; server_name localhost;\n\
             ssl_certificate {d}/cert.pem; ssl_certificate_key {d}/key.pem;\n\
             location / {{ proxy_pass http://{sim}; proxy_http_version 1.1; proxy_buffering off;\n\
               proxy_set_header Host $http_host; proxy_set_header X-Forwarded-Proto https;\n\
               proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection $connection_upgrade;\n\
               proxy_read_timeout 300s; }} }} }}\n",
        d = d.display(),
        sim = sim.addr(),
    );
    std::fs::write(d.join("nginx.conf"), conf).unwrap();
    let mut cmd = std::process::Command::new(v2sp_testsupport::harness::peer("nginx").unwrap());
    cmd.arg("-p").arg(d).arg("-c").arg(d.join("nginx.conf"));
    let nginx = v2sp_testsupport::harness::Proc::spawn("nginx", cmd, d.join("stdout.log")).unwrap();
    v2sp_testsupport::harness::wait_tcp(port, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("nginx: {e:#}\n{}", nginx.log()));

    let entry = json!({"ApiHost": format!("https://localhost:{port}"), "ApiKey": "test-token", "NodeID": 1,
        "NodeType": "shadowsocks", "Timeout": 2, "ApiVersion": "v2",
        "ApiCAFile": d.join("ca.pem")});
    let env = env_with(vec![entry]);
    let mut agent = spawn_agent(&env);
    let mut dp = FakeDataplane::attach(&env.dir.path().join("shm"));
    dp.wait_users(18461, &[1, 2, 3], Duration::from_secs(20));
    wait_for("the wss channel", Duration::from_secs(10), || sim.ws_live() == 1);
    sim.ws_send(
        1,
        "sync.user.delta",
        json!({"action": "remove", "users": [{"id": 2}]}),
    );
    let (_, took) = dp.wait_users(18461, &[1, 3], Duration::from_secs(1));
    eprintln!("removal over wss reached the data plane in {took:?}");
    assert!(
        !sim.requests_for(Action::Handshake).is_empty(),
        "the handshake went through nginx"
    );
    sigterm(&mut agent);
}
