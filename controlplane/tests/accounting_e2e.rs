//! End to end: the real `v2sp` binary against the panel simulator, with this test acting as the
//! data plane through shared memory (a fake writer of counters). Proves that traffic survives
//! panel outages and `kill -9` of the control plane, exactly once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use v2sp_shared::panel::Action;
use v2sp_shared::shm::{Command as ShmCommand, IpEvent, IpEventKind};
use v2sp_testsupport::panel_sim::{user, Fault, PanelSim, SimOptions};

mod common;
use common::{kill, log_of, pump, sigterm, spawn_agent, wait_totals, Env, FakeDataplane};

const UUIDS: [&str; 3] = [
    "a7b4b8ab-42d7-4c48-a0c5-91fd4bd53c37",
    "0e9f6d1c-5a4b-4c3d-8e2f-1a2b3c4d5e6f",
    "f47ac10b-58cc-4372-a567-0e02b2c3d479",
];

fn ss_node(port: u16) -> serde_json::Value {
    json!({"node_type":"shadowsocks","server_port":port,"cipher":"aes-128-gcm",
           "base_config":{"push_interval":1,"pull_interval":1}})
}

fn env_with(nodes: &[(String, u32)]) -> Env {
    Env::with_nodes(
        nodes
            .iter()
            .map(|(host, id)| json!({"ApiHost": host, "ApiKey": "test-token", "NodeID": id, "NodeType": "shadowsocks", "Timeout": 2}))
            .collect(),
    )
}

impl FakeDataplane {
    /// Slot and user count of each served node, by port.
    fn served(&mut self) -> BTreeMap<u16, (u16, usize)> {
        self.core.tick();
        let Some((_, cfg)) = self.shm.read_config().unwrap() else {
            return BTreeMap::new();
        };
        cfg.nodes
            .iter()
            .map(|n| (n.port, (n.slot, self.core.users(n.slot).map_or(0, |v| v.len()))))
            .collect()
    }

    fn wait_served(&mut self, port: u16, users: usize) -> u16 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(&(slot, n)) = self.served().get(&port) {
                if n == users {
                    return slot;
                }
            }
            assert!(
                Instant::now() < deadline,
                "node on port {port} never served {users} users: {:?}",
                self.served()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn sim_with_node(id: u32, port: u16) -> PanelSim {
    let sim = PanelSim::start(SimOptions {
        token: "test-token".into(),
        ..SimOptions::default()
    })
    .unwrap();
    sim.set_node(id, ss_node(port));
    sim.set_users(
        id,
        UUIDS
            .iter()
            .enumerate()
            .map(|(i, u)| user(i as u32 + 1, u))
            .collect(),
    );
    sim
}

#[test]
fn panel_outage_loses_and_doubles_nothing() {
    let sim = sim_with_node(1, 18388);
    let env = env_with(&[(sim.single_url(), 1)]);
    let mut agent = spawn_agent(&env);
    let mut dp = FakeDataplane::attach(&env.dir.path().join("shm"));
    let slot = dp.wait_served(18388, 3);
    let mut expected = BTreeMap::new();
    // 10 s of traffic; the panel is down from 2 s to 7 s (five push intervals: the "10-minute
    // outage" at 1 s intervals), and answers 500 / garbage around it.
    let mut phase = 0;
    pump(&mut dp, slot, Duration::from_secs(10), &mut expected, |t| {
        let want = match t.as_millis() {
            0..=1999 => 0,
            2000..=6999 => 1,
            7000..=7999 => 2,
            _ => 3,
        };
        if want != phase {
            phase = want;
            sim.clear_faults();
            match phase {
                1 => sim.set_fault(Action::Push, Fault::Outage),
                2 => sim.set_fault(Action::Push, Fault::Status(500)),
                _ => {}
            }
        }
    });
    wait_totals(&sim, &mut dp, 1, &expected, &env);
    sigterm(&mut agent);
}

/// Every answer that is not the panel's own JSON 2xx, one after another with traffic flowing:
/// 500 and 502 after the panel recorded the push, a reset after recording, a CDN's HTML 200
/// (not recorded), empty 200s (recorded or not), garbage, an answer slower than `Timeout`
/// (recorded after the agent gave up), a JSON 4xx refusal, then recovery. Zero bytes lost or
/// doubled at the panel.
#[test]
fn every_unacknowledged_answer_loses_and_doubles_nothing() {
    let sim = sim_with_node(1, 18397);
    let env = env_with(&[(sim.single_url(), 1)]);
    let mut agent = spawn_agent(&env);
    let mut dp = FakeDataplane::attach(&env.dir.path().join("shm"));
    let slot = dp.wait_served(18397, 3);
    let faults = [
        Fault::None,
        Fault::status_after_apply(500),
        // A batch the panel recorded, then an outage: its retries never connect, and it must
        // still not be merged into newer traffic under a new id.
        Fault::Outage,
        Fault::status_after_apply(502),
        Fault::AcceptThenDropReply,
        Fault::cdn_html_200(),
        Fault::empty_200(false),
        Fault::empty_200(true),
        Fault::Garbage,
        Fault::Slow(Duration::from_millis(2600)),
        // Last, and counted: the next two pushes are refused whenever they come (a busy machine
        // may push only once per phase), then the panel takes them.
        Fault::json_refusal(422, "node is being migrated"),
    ];
    let phase_len = Duration::from_millis(1800);
    let mut expected = BTreeMap::new();
    let mut phase = 0usize;
    pump(
        &mut dp,
        slot,
        phase_len * faults.len() as u32,
        &mut expected,
        |t| {
            let want = ((t.as_millis() / phase_len.as_millis()) as usize).min(faults.len() - 1);
            if want != phase {
                phase = want;
                sim.clear_faults();
                if phase == faults.len() - 1 {
                    sim.set_fault_times(Action::Push, faults[phase].clone(), 2);
                } else {
                    sim.set_fault(Action::Push, faults[phase].clone());
                }
            }
        },
    );
    wait_totals(&sim, &mut dp, 1, &expected, &env);
    let log = log_of(&env);
    assert!(log.contains("REFUSED"), "a refusal is logged loudly\n{log}");
    // No batch was ever re-batched under a new id after it may have reached the panel: every
    // report id the panel applied was applied once.
    let applied: Vec<_> = sim.pushes().into_iter().filter(|p| !p.duplicate).collect();
    let mut ids: Vec<_> = applied.iter().map(|p| p.report_id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), applied.len(), "a report id applied twice");
    sigterm(&mut agent);
}

/// A node that started while the panel answered garbage runs on the default 60 s timers; once
/// the panel answers `push_interval: 1`, pushes follow at once, not a minute later.
#[test]
fn intervals_from_a_recovered_panel_take_effect_at_once() {
    let sim = sim_with_node(1, 18398);
    sim.set_fault(Action::Config, Fault::Garbage);
    let env = env_with(&[(sim.single_url(), 1)]);
    let mut agent = spawn_agent(&env);
    let mut dp = FakeDataplane::attach(&env.dir.path().join("shm"));
    // Let the first (garbage) pull and the first push round happen on the defaults.
    std::thread::sleep(Duration::from_millis(1500));
    sim.clear_faults();
    let slot = dp.wait_served(18398, 3);
    let mut expected = BTreeMap::new();
    pump(&mut dp, slot, Duration::from_secs(4), &mut expected, |_| {});
    // 60 s timers would deliver nothing within this wait.
    wait_totals(&sim, &mut dp, 1, &expected, &env);
    assert!(
        sim.requests_for(Action::Push).len() >= 2,
        "pushes every second once the panel's interval is known\n{}",
        log_of(&env)
    );
    sigterm(&mut agent);
}

#[test]
fn kill_9_of_the_control_plane_loses_and_doubles_nothing() {
    let sim = sim_with_node(1, 18389);
    let env = env_with(&[(sim.single_url(), 1)]);
    let mut agent = spawn_agent(&env);
    let mut dp = FakeDataplane::attach(&env.dir.path().join("shm"));
    let slot = dp.wait_served(18389, 3);
    let mut expected = BTreeMap::new();
    // Lost replies make the agent retry batches the panel already took.
    sim.set_fault_times(Action::Push, Fault::AcceptThenDropReply, 3);
    for round in 0..4u64 {
        pump(
            &mut dp,
            slot,
            Duration::from_millis(1300 + 170 * round),
            &mut expected,
            |_| {},
        );
        agent.kill().unwrap();
        agent.wait().unwrap();
        if round == 1 {
            sim.set_fault_times(Action::Push, Fault::AcceptThenDropReply, 2);
        }
        agent = spawn_agent(&env);
    }
    pump(&mut dp, slot, Duration::from_secs(2), &mut expected, |_| {});
    wait_totals(&sim, &mut dp, 1, &expected, &env);
    sigterm(&mut agent);
    let log = log_of(&env);
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn sigterm_pushes_the_last_bytes() {
    let sim = sim_with_node(1, 18390);
    let env = env_with(&[(sim.single_url(), 1)]);
    let mut agent = spawn_agent(&env);
    let mut dp = FakeDataplane::attach(&env.dir.path().join("shm"));
    let slot = dp.wait_served(18390, 3);
    let mut expected = BTreeMap::new();
    pump(&mut dp, slot, Duration::from_millis(300), &mut expected, |_| {});
    // Stop right away: the final harvest + push must deliver everything.
    let pid = agent.id();
    kill(pid, "TERM");
    let deadline = Instant::now() + Duration::from_secs(20);
    while agent.try_wait().unwrap().is_none() {
        dp.core.tick(); // keep acknowledging harvests while it drains
        assert!(Instant::now() < deadline, "agent did not stop");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(sim.totals(1), expected, "{}", log_of(&env));
}

#[test]
fn one_broken_panel_does_not_affect_another_node() {
    let good = sim_with_node(1, 18391);
    let bad = sim_with_node(2, 18392);
    for a in Action::ALL {
        bad.set_fault(a, Fault::Html);
    }
    let env = env_with(&[(good.single_url(), 1), (bad.single_url(), 2)]);
    let mut agent = spawn_agent(&env);
    let mut dp = FakeDataplane::attach(&env.dir.path().join("shm"));
    let slot = dp.wait_served(18391, 3);
    let mut expected = BTreeMap::new();
    pump(&mut dp, slot, Duration::from_secs(2), &mut expected, |_| {});
    wait_totals(&good, &mut dp, 1, &expected, &env);
    assert!(!dp.served().contains_key(&18392));
    // The broken panel recovers: its node comes up without a restart.
    bad.clear_faults();
    dp.wait_served(18392, 3);
    assert_eq!(
        agent.try_wait().unwrap(),
        None,
        "agent must never exit because of a panel"
    );
    sigterm(&mut agent);
}

#[test]
fn empty_user_list_removes_every_user() {
    let sim = sim_with_node(1, 18393);
    let env = env_with(&[(sim.single_url(), 1)]);
    let mut agent = spawn_agent(&env);
    let mut dp = FakeDataplane::attach(&env.dir.path().join("shm"));
    dp.wait_served(18393, 3);
    sim.set_users(1, vec![]);
    dp.wait_served(18393, 0);
    assert!(log_of(&env).contains("NO users"));
    sigterm(&mut agent);
}

#[test]
fn panel_down_at_start_then_up() {
    let sim = sim_with_node(1, 18394);
    sim.set_fault(Action::Config, Fault::Status(502));
    let env = env_with(&[(sim.single_url(), 1)]);
    let mut agent = spawn_agent(&env);
    let mut dp = FakeDataplane::attach(&env.dir.path().join("shm"));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        agent.try_wait().unwrap(),
        None,
        "a panel error at start must not exit"
    );
    sim.clear_faults();
    dp.wait_served(18394, 3);
    sigterm(&mut agent);
}

#[test]
fn config_file_change_adds_and_removes_nodes_without_restart() {
    let a = sim_with_node(1, 18395);
    let b = sim_with_node(2, 18396);
    let env = env_with(&[(a.single_url(), 1)]);
    let mut agent = spawn_agent(&env);
    let mut dp = FakeDataplane::attach(&env.dir.path().join("shm"));
    dp.wait_served(18395, 3);
    let pid = agent.id();
    // Add node 2 to the file: it comes up while node 1 keeps its slot.
    let slot_a = dp.served()[&18395].0;
    let both = env_with(&[(a.single_url(), 1), (b.single_url(), 2)]);
    std::fs::copy(&both.cfg, &env.cfg).unwrap();
    // env_with(both) points at its own dirs; keep this agent's State/Shm dirs.
    let text = std::fs::read_to_string(&env.cfg).unwrap().replace(
        &both.dir.path().display().to_string(),
        &env.dir.path().display().to_string(),
    );
    std::fs::write(&env.cfg, text).unwrap();
    dp.wait_served(18396, 3);
    assert_eq!(dp.served()[&18395].0, slot_a, "unchanged node keeps its slot");
    // Remove node 1: it is no longer served.
    let only_b = std::fs::read_to_string(&both.cfg).unwrap().replace(
        &both.dir.path().display().to_string(),
        &env.dir.path().display().to_string(),
    );
    let mut v: serde_json::Value = serde_json::from_str(&only_b).unwrap();
    v["Nodes"].as_array_mut().unwrap().remove(0);
    std::fs::write(&env.cfg, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while dp.served().contains_key(&18395) {
        assert!(
            Instant::now() < deadline,
            "removed node still served\n{}",
            log_of(&env)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A broken file is rejected and changes nothing.
    std::fs::write(&env.cfg, b"{ this is not json").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(dp.served().contains_key(&18396));
    assert_eq!(agent.id(), pid);
    assert_eq!(agent.try_wait().unwrap(), None);
    assert!(log_of(&env).contains("config reload rejected"));
    sigterm(&mut agent);
}

#[test]
fn status_reports_nodes_users_and_the_data_plane() {
    let sim = sim_with_node(1, 18397);
    let env = env_with(&[(sim.single_url(), 1)]);
    let mut agent = spawn_agent(&env);
    let mut dp = FakeDataplane::attach(&env.dir.path().join("shm"));
    dp.wait_served(18397, 3);
    let out = Command::new(env!("CARGO_BIN_EXE_v2sp"))
        .args(["status", "--json", "--shm-dir"])
        .arg(env.dir.path().join("shm"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["dataplane_alive"], true, "{v}");
    assert_eq!(v["backend"], "epoll");
    assert_eq!(v["nodes"][0]["users"], 3);
    sigterm(&mut agent);
    // Without shared memory: a clear error, non-zero exit.
    let out = Command::new(env!("CARGO_BIN_EXE_v2sp"))
        .args(["status", "--shm-dir", "/nonexistent"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is v2sp running?"));
}

/// `GET /metrics` text, or `None` while the endpoint is not up yet.
fn scrape(addr: std::net::SocketAddr) -> Option<String> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).ok()?;
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut s = String::new();
    c.read_to_string(&mut s).ok()?;
    assert!(s.starts_with("HTTP/1.1 200 OK"), "{s}");
    Some(s)
}

/// The value of the sample whose line starts with `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_show_counted_and_reported_bytes() {
    let sim = sim_with_node(1, 18398);
    let env = env_with(&[(sim.single_url(), 1)]);
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&env.cfg).unwrap()).unwrap();
    cfg["Metrics"] = json!({"Listen": addr.to_string()});
    std::fs::write(&env.cfg, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    let mut agent = spawn_agent(&env);
    let mut dp = FakeDataplane::attach(&env.dir.path().join("shm"));
    let slot = dp.wait_served(18398, 3);
    let mut expected = BTreeMap::new();
    pump(&mut dp, slot, Duration::from_millis(600), &mut expected, |_| {});
    wait_totals(&sim, &mut dp, 1, &expected, &env);
    let (up, down) = expected.values().fold((0, 0), |t, &(u, d)| (t.0 + u, t.1 + d));
    let node = format!("node=\"{}\"", log_tag(&sim));
    // The panel has everything; the metrics catch up within a harvest/push round.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let t = scrape(addr).unwrap_or_default();
        let reported = sample(
            &t,
            &format!("v2sp_traffic_reported_bytes_total{{{node},direction=\"down\"}}"),
        );
        if reported == Some(down) || Instant::now() > deadline {
            break t;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let get = |series: String| sample(&text, &series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
    assert_eq!(
        get(format!(
            "v2sp_traffic_counted_bytes_total{{{node},direction=\"up\"}}"
        )),
        up
    );
    assert_eq!(
        get(format!(
            "v2sp_traffic_counted_bytes_total{{{node},direction=\"down\"}}"
        )),
        down
    );
    assert_eq!(
        get(format!(
            "v2sp_traffic_reported_bytes_total{{{node},direction=\"up\"}}"
        )),
        up
    );
    assert_eq!(
        get(format!(
            "v2sp_traffic_reported_bytes_total{{{node},direction=\"down\"}}"
        )),
        down
    );
    assert_eq!(
        get(format!(
            "v2sp_traffic_unreported_bytes{{{node},direction=\"up\"}}"
        )),
        0
    );
    assert_eq!(get(format!("v2sp_node_users{{{node}}}")), 3);
    assert!(get(format!("v2sp_panel_pulls_total{{{node},result=\"ok\"}}")) >= 1);
    assert_eq!(get("v2sp_dataplane_up".into()), 1);
    sigterm(&mut agent);
}

/// The node tag the agent gives a node of this test's config (`[<ApiHost>]-shadowsocks:1`).
fn log_tag(sim: &PanelSim) -> String {
    format!("[{}]-shadowsocks:1", sim.single_url())
}

impl FakeDataplane {
    /// Answers the control plane's next `ResyncIps` with a snapshot of `online` (slot, uid,
    /// ip, seq), as the data plane's core 0 does. Panics if none comes within 20 s.
    fn answer_resync(&mut self, online: &[(u16, u32, &str, u64)], begin: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            self.core.tick();
            if let Some(ShmCommand::ResyncIps) = self.core.pop_command() {
                break;
            }
            assert!(Instant::now() < deadline, "no resync request");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(self
            .core
            .push_event(IpEvent::marker(IpEventKind::ResyncBegin, begin)));
        for &(node, user_id, ip, seq) in online {
            assert!(self.core.push_event(IpEvent {
                kind: IpEventKind::Snapshot,
                online: true,
                node,
                user_id,
                ip: ip.parse().unwrap(),
                seq,
            }));
        }
        assert!(self
            .core
            .push_event(IpEvent::marker(IpEventKind::ResyncEnd, begin)));
    }
}

/// Waits for an alive report of node 1 that lists exactly `ips` for user 1 (reports keep coming
/// every push interval while traffic is pumped).
fn wait_alive(sim: &PanelSim, dp: &mut FakeDataplane, slot: u16, ips: &[&str], env: &Env) {
    let want: Vec<String> = ips.iter().map(|s| s.to_string()).collect();
    let seen_before = sim.alive_reports(1).len();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        dp.core.add_traffic(slot, 1, 10_000, 10_000);
        dp.core.tick();
        let reports = sim.alive_reports(1);
        if reports
            .iter()
            .skip(seen_before)
            .any(|r| r.get(&1).map_or(ips.is_empty(), |v| *v == want))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no alive report with {want:?} for user 1: {:?}\n{}",
            reports.iter().skip(seen_before).collect::<Vec<_>>(),
            log_of(env)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A restarted control plane has not seen the online events of connections that stay open
/// (the data plane outlives it). It asks for a resync and reports those IPs again; an IP
/// whose offline event it missed is dropped.
#[test]
fn restarted_control_plane_resyncs_online_ips() {
    let sim = sim_with_node(1, 18399);
    let env = env_with(&[(sim.single_url(), 1)]);
    let mut agent = spawn_agent(&env);
    let mut dp = FakeDataplane::attach(&env.dir.path().join("shm"));
    let slot = dp.wait_served(18399, 3);
    dp.answer_resync(&[], 50); // first sight of this data plane: nothing online yet
    for (ip, seq) in [("10.0.0.1", 100), ("10.0.0.2", 101)] {
        assert!(dp.core.push_event(IpEvent {
            kind: IpEventKind::Transition,
            online: true,
            node: slot,
            user_id: 1,
            ip: ip.parse().unwrap(),
            seq,
        }));
    }
    wait_alive(&sim, &mut dp, slot, &["10.0.0.1", "10.0.0.2"], &env);
    agent.kill().unwrap();
    agent.wait().unwrap();
    agent = spawn_agent(&env);
    // Meanwhile 10.0.0.2 went offline (an event no one read) and 10.0.0.1 stays connected.
    dp.answer_resync(&[(slot, 1, "10.0.0.1", 100)], 200);
    wait_alive(&sim, &mut dp, slot, &["10.0.0.1"], &env);
    sigterm(&mut agent);
}
