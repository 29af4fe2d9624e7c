//! Prometheus metrics (`Metrics.Listen` in the config): `GET /metrics` in the text exposition
//! format 0.0.4, served by the control plane. The data plane serves no HTTP; what it does is
//! read from shared memory (connections, cores, users) at scrape time, and what the control
//! plane does (panel calls, harvested and reported bytes) is counted by the node workers and
//! the harvester in [`NodeMetrics`].
//!
//! Counters are per process: they restart at 0 with the control plane, which Prometheus
//! treats as a counter reset. Bytes are the *counted* payload bytes, the same figures the panel
//! is sent.
//!
//! The endpoint has no authentication, like most exporters: keep it on loopback or a private
//! network (the config loader warns otherwise).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use v2sp_shared::shm::Status;

use crate::agent::Shared;

/// What the control plane counts for one node (by slot), since it started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeCounters {
    pub pulls_ok: u64,
    pub pulls_failed: u64,
    pub pushes_ok: u64,
    pub pushes_failed: u64,
    /// Reports the panel refused with a JSON 4xx (kept and resent; see the README's API).
    pub reports_refused: u64,
    /// Unix seconds of the last complete pull / push (0 = none yet).
    pub last_pull_ok: u64,
    pub last_push_ok: u64,
    /// Bytes harvested from the data plane into the journal: [up, down].
    pub counted: [u64; 2],
    /// Bytes the panel accepted: [up, down].
    pub reported: [u64; 2],
}

/// Per-node counters shared by the node workers, the harvester and the scrape thread.
#[derive(Default)]
pub struct NodeMetrics {
    nodes: Mutex<BTreeMap<u16, NodeCounters>>,
    /// `Metrics.TopUsers` (0 = per-user counting off).
    top_users: u32,
    /// Counted bytes per (slot, user id) since start: [up, down]. Only with `top_users` > 0.
    users: Mutex<std::collections::HashMap<(u16, u32), [u64; 2]>>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl NodeMetrics {
    /// Counters that also keep per-user bytes for the `top` biggest users (0 = not).
    pub fn with_top_users(top: u32) -> NodeMetrics {
        NodeMetrics {
            top_users: top,
            ..NodeMetrics::default()
        }
    }

    fn users(&self) -> MutexGuard<'_, std::collections::HashMap<(u16, u32), [u64; 2]>> {
        self.users.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes newly journalled for one user (no-op unless `TopUsers` is on).
    pub fn counted_user(&self, slot: u16, user_id: u32, up: u64, down: u64) {
        if self.top_users == 0 {
            return;
        }
        let mut u = self.users();
        let e = u.entry((slot, user_id)).or_default();
        e[0] = e[0].saturating_add(up);
        e[1] = e[1].saturating_add(down);
    }

    /// The `TopUsers` users with the most bytes (up + down), biggest first:
    /// (slot, user id, [up, down]).
    pub fn top_users(&self) -> Vec<(u16, u32, [u64; 2])> {
        if self.top_users == 0 {
            return Vec::new();
        }
        let mut v: Vec<_> = self.users().iter().map(|(&(s, u), &b)| (s, u, b)).collect();
        let total = |b: &[u64; 2]| b[0].saturating_add(b[1]);
        v.sort_unstable_by(|a, b| total(&b.2).cmp(&total(&a.2)).then((a.0, a.1).cmp(&(b.0, b.1))));
        v.truncate(self.top_users as usize);
        v
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u16, NodeCounters>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn pull(&self, slot: u16, ok: bool) {
        let mut m = self.lock();
        let n = m.entry(slot).or_default();
        if ok {
            n.pulls_ok += 1;
            n.last_pull_ok = unix_now();
        } else {
            n.pulls_failed += 1;
        }
    }

    /// One push round; `accepted` = [up, down] the panel took in it.
    pub fn push(&self, slot: u16, ok: bool, accepted: [u64; 2]) {
        let mut m = self.lock();
        let n = m.entry(slot).or_default();
        if ok {
            n.pushes_ok += 1;
            n.last_push_ok = unix_now();
        } else {
            n.pushes_failed += 1;
        }
        n.reported[0] = n.reported[0].saturating_add(accepted[0]);
        n.reported[1] = n.reported[1].saturating_add(accepted[1]);
    }

    /// The panel refused a report with a JSON 4xx (the batch is kept and resent).
    pub fn refused(&self, slot: u16) {
        let mut m = self.lock();
        m.entry(slot).or_default().reports_refused += 1;
    }

    /// Bytes newly journalled from one harvested bank.
    pub fn counted(&self, slot: u16, up: u64, down: u64) {
        let mut m = self.lock();
        let n = m.entry(slot).or_default();
        n.counted[0] = n.counted[0].saturating_add(up);
        n.counted[1] = n.counted[1].saturating_add(down);
    }

    /// A node left the config: its series go away.
    pub fn forget(&self, slot: u16) {
        self.lock().remove(&slot);
        self.users().retain(|&(s, _), _| s != slot);
    }

    pub fn snapshot(&self) -> BTreeMap<u16, NodeCounters> {
        self.lock().clone()
    }
}

/// Everything one scrape shows, gathered first so that rendering is a pure function.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub status: Status,
    /// Node slot → tag, for every node the control plane knows.
    pub tags: BTreeMap<u16, String>,
    pub counters: BTreeMap<u16, NodeCounters>,
    /// Journalled bytes the panel has not accepted yet, by slot: [up, down].
    pub unreported: BTreeMap<u16, [u64; 2]>,
    /// `Metrics.TopUsers` biggest users: (slot, user id, [up, down]); empty when off.
    pub top_users: Vec<(u16, u32, [u64; 2])>,
}

/// Escapes a label value (text format: backslash, double quote and newline).
fn label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// One metric family: `# HELP`, `# TYPE`, then its samples (`labels` without braces).
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

/// The text exposition of `s`.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::with_capacity(4096);
    let st = &s.status;
    let tag = |slot: u16| {
        label(
            s.tags
                .get(&slot)
                .map_or_else(|| format!("slot-{slot}"), Clone::clone)
                .as_str(),
        )
    };
    family(
        &mut out,
        "v2sp_dataplane_up",
        "gauge",
        "1 while the data plane process is alive.",
        &[(String::new(), u64::from(st.dataplane_alive))],
    );
    let backend = match st.dataplane_backend {
        1 => "io_uring",
        2 => "epoll",
        _ => "unknown",
    };
    family(
        &mut out,
        "v2sp_dataplane_info",
        "gauge",
        "The data plane's I/O backend.",
        &[(format!("backend=\"{backend}\""), 1)],
    );
    family(
        &mut out,
        "v2sp_config_generation",
        "gauge",
        "Generation of the data-plane config: published by the control plane, applied by the data plane.",
        &[
            ("plane=\"control\"".into(), st.config_gen),
            ("plane=\"data\"".into(), st.dataplane_config_gen),
        ],
    );
    let per_core = |f: &dyn Fn(&v2sp_shared::shm::CoreStatus) -> u64| -> Vec<(String, u64)> {
        st.cores
            .iter()
            .map(|c| (format!("core=\"{}\"", c.core), f(c)))
            .collect()
    };
    family(
        &mut out,
        "v2sp_core_running",
        "gauge",
        "1 while a data-plane core thread runs.",
        &per_core(&|c| u64::from(c.running)),
    );
    family(
        &mut out,
        "v2sp_connections_open",
        "gauge",
        "Client connections open on a data-plane core.",
        &per_core(&|c| c.open_conns),
    );
    family(
        &mut out,
        "v2sp_connections_accepted_total",
        "counter",
        "Client connections accepted by a data-plane core since it started.",
        &per_core(&|c| c.accepted_total),
    );
    let (uh_up, uh_down) = st.cores.iter().fold((0u64, 0u64), |t, c| {
        (
            t.0.saturating_add(c.unharvested_up),
            t.1.saturating_add(c.unharvested_down),
        )
    });
    family(
        &mut out,
        "v2sp_traffic_unharvested_bytes",
        "gauge",
        "Counted bytes still in the data plane's shared-memory banks (not yet journalled).",
        &[
            ("direction=\"up\"".into(), uh_up),
            ("direction=\"down\"".into(), uh_down),
        ],
    );
    family(
        &mut out,
        "v2sp_node_users",
        "gauge",
        "Users published to the data plane for a node.",
        &st.nodes
            .iter()
            .map(|&(slot, users)| (format!("node=\"{}\"", tag(slot)), u64::from(users)))
            .collect::<Vec<_>>(),
    );
    let per_node = |f: &dyn Fn(&NodeCounters) -> u64| -> Vec<(String, u64)> {
        s.counters
            .iter()
            .map(|(&slot, c)| (format!("node=\"{}\"", tag(slot)), f(c)))
            .collect()
    };
    let per_node_result = |ok: &dyn Fn(&NodeCounters) -> u64, failed: &dyn Fn(&NodeCounters) -> u64| {
        let mut v = Vec::new();
        for (&slot, c) in &s.counters {
            let t = tag(slot);
            v.push((format!("node=\"{t}\",result=\"ok\""), ok(c)));
            v.push((format!("node=\"{t}\",result=\"error\""), failed(c)));
        }
        v
    };
    let per_node_dir = |f: &dyn Fn(&NodeCounters) -> [u64; 2]| {
        let mut v = Vec::new();
        for (&slot, c) in &s.counters {
            let t = tag(slot);
            let [up, down] = f(c);
            v.push((format!("node=\"{t}\",direction=\"up\""), up));
            v.push((format!("node=\"{t}\",direction=\"down\""), down));
        }
        v
    };
    family(
        &mut out,
        "v2sp_traffic_counted_bytes_total",
        "counter",
        "Payload bytes counted for a node's users and journalled by this control plane.",
        &per_node_dir(&|c| c.counted),
    );
    family(
        &mut out,
        "v2sp_traffic_reported_bytes_total",
        "counter",
        "Payload bytes the panel accepted for a node.",
        &per_node_dir(&|c| c.reported),
    );
    let mut unreported = Vec::new();
    for (&slot, &[up, down]) in &s.unreported {
        let t = tag(slot);
        unreported.push((format!("node=\"{t}\",direction=\"up\""), up));
        unreported.push((format!("node=\"{t}\",direction=\"down\""), down));
    }
    family(
        &mut out,
        "v2sp_traffic_unreported_bytes",
        "gauge",
        "Journalled bytes the panel has not accepted yet (they survive restarts).",
        &unreported,
    );
    family(
        &mut out,
        "v2sp_panel_pulls_total",
        "counter",
        "Pull rounds (config, users, online counts) by result.",
        &per_node_result(&|c| c.pulls_ok, &|c| c.pulls_failed),
    );
    family(
        &mut out,
        "v2sp_panel_pushes_total",
        "counter",
        "Push rounds (traffic, online IPs) by result.",
        &per_node_result(&|c| c.pushes_ok, &|c| c.pushes_failed),
    );
    family(
        &mut out,
        "v2sp_panel_reports_refused_total",
        "counter",
        "Traffic reports the panel refused with a JSON 4xx; each is kept and resent under the same report id until taken.",
        &per_node(&|c| c.reports_refused),
    );
    family(
        &mut out,
        "v2sp_panel_last_pull_success_timestamp_seconds",
        "gauge",
        "Unix time of the last complete pull (0 = none yet).",
        &per_node(&|c| c.last_pull_ok),
    );
    family(
        &mut out,
        "v2sp_panel_last_push_success_timestamp_seconds",
        "gauge",
        "Unix time of the last complete push (0 = none yet).",
        &per_node(&|c| c.last_push_ok),
    );
    if !s.top_users.is_empty() {
        let mut v = Vec::new();
        for &(slot, user, [up, down]) in &s.top_users {
            let t = tag(slot);
            v.push((format!("node=\"{t}\",user=\"{user}\",direction=\"up\""), up));
            v.push((format!("node=\"{t}\",user=\"{user}\",direction=\"down\""), down));
        }
        family(
            &mut out,
            "v2sp_user_traffic_bytes_total",
            "counter",
            "Bytes counted for a user since the control plane started, for the Metrics.TopUsers biggest users only.",
            &v,
        );
    }
    out
}

/// What a request gets: status line and body.
fn respond(request_head: &[u8], scrape: &dyn Fn() -> String) -> (&'static str, &'static str, String) {
    let line = request_head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_ascii_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", scrape()),
        ("GET", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "see /metrics\n".into(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "GET only\n".into(),
        ),
    }
}

/// Reads a request head (bounded: 8 KiB, 2 s) and answers it; the connection then closes.
fn serve_one(mut c: TcpStream, scrape: &dyn Fn() -> String) {
    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = c.set_write_timeout(Some(Duration::from_secs(2)));
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(buf.get(..n).unwrap_or_default()),
        }
    }
    if head.is_empty() {
        return;
    }
    let (status, ctype, body) = respond(&head, scrape);
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = c.write_all(reply.as_bytes());
}

/// Gathers a snapshot from the running agent.
fn gather(shared: &Shared) -> Snapshot {
    let status = shared.shm.status();
    let counters = shared.metrics.snapshot();
    let tags: BTreeMap<u16, String> = counters
        .keys()
        .copied()
        .chain(status.nodes.iter().map(|&(slot, _)| slot))
        .map(|slot| (slot, shared.tag_of(slot)))
        .collect();
    let unreported = tags
        .iter()
        .map(|(&slot, t)| {
            let (up, down) = shared.acct.unreported(t);
            (slot, [up, down])
        })
        .collect();
    Snapshot {
        status,
        tags,
        counters,
        unreported,
        top_users: shared.metrics.top_users(),
    }
}

/// Binds `addr` and serves scrapes on a thread of its own for the life of the process. A bind
/// failure is returned (the agent logs it and runs on without metrics).
pub fn start(addr: SocketAddr, shared: Arc<Shared>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for c in listener.incoming() {
                match c {
                    Ok(c) => serve_one(c, &|| render(&gather(&shared))),
                    // Out of descriptors and the like: do not spin.
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        })?;
    Ok(bound)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use v2sp_shared::shm::CoreStatus;

    use super::*;

    fn sample() -> Snapshot {
        let mut counters = BTreeMap::new();
        counters.insert(
            3,
            NodeCounters {
                pulls_ok: 5,
                pulls_failed: 1,
                pushes_ok: 4,
                pushes_failed: 2,
                reports_refused: 1,
                last_pull_ok: 1_700_000_000,
                last_push_ok: 1_700_000_001,
                counted: [100, 2000],
                reported: [90, 1900],
            },
        );
        Snapshot {
            status: Status {
                dataplane_alive: true,
                dataplane_backend: 1,
                config_gen: 7,
                dataplane_config_gen: 7,
                nodes: vec![(3, 12)],
                cores: vec![
                    CoreStatus {
                        core: 0,
                        running: true,
                        open_conns: 10,
                        accepted_total: 99,
                        unharvested_up: 1,
                        unharvested_down: 2,
                    },
                    CoreStatus {
                        core: 1,
                        running: true,
                        open_conns: 5,
                        accepted_total: 50,
                        unharvested_up: 3,
                        unharvested_down: 4,
                    },
                ],
                ..Status::default()
            },
            tags: BTreeMap::from([(3, "[https://p.example]-vless:\"1\"".to_string())]),
            counters,
            unreported: BTreeMap::from([(3, [10, 100])]),
            top_users: Vec::new(),
        }
    }

    #[test]
    fn top_users_only_when_on_and_only_the_biggest() {
        let off = NodeMetrics::default();
        off.counted_user(3, 1, 10, 10);
        assert!(off.top_users().is_empty());
        assert!(!render(&sample()).contains("v2sp_user_traffic_bytes_total"));

        let m = NodeMetrics::with_top_users(2);
        m.counted_user(3, 1, 10, 0);
        m.counted_user(3, 2, 500, 500);
        m.counted_user(3, 3, 0, 100);
        m.counted_user(3, 1, 5, 0);
        assert_eq!(m.top_users(), vec![(3, 2, [500, 500]), (3, 3, [0, 100])]);
        let t = render(&Snapshot {
            top_users: m.top_users(),
            ..sample()
        });
        assert!(t.contains(
            "v2sp_user_traffic_bytes_total{node=\"[https://p.example]-vless:\\\"1\\\"\",user=\"2\",direction=\"down\"} 500"
        ), "{t}");
        assert!(!t.contains("user=\"1\""), "{t}");
        m.forget(3);
        assert!(m.top_users().is_empty());
    }

    #[test]
    fn renders_every_family_with_escaped_labels() {
        let t = render(&sample());
        for line in [
            "v2sp_dataplane_up 1",
            "v2sp_dataplane_info{backend=\"io_uring\"} 1",
            "v2sp_config_generation{plane=\"data\"} 7",
            "v2sp_connections_open{core=\"1\"} 5",
            "v2sp_connections_accepted_total{core=\"0\"} 99",
            "v2sp_traffic_unharvested_bytes{direction=\"down\"} 6",
            "v2sp_node_users{node=\"[https://p.example]-vless:\\\"1\\\"\"} 12",
            "v2sp_traffic_counted_bytes_total{node=\"[https://p.example]-vless:\\\"1\\\"\",direction=\"down\"} 2000",
            "v2sp_traffic_reported_bytes_total{node=\"[https://p.example]-vless:\\\"1\\\"\",direction=\"up\"} 90",
            "v2sp_traffic_unreported_bytes{node=\"[https://p.example]-vless:\\\"1\\\"\",direction=\"down\"} 100",
            "v2sp_panel_pulls_total{node=\"[https://p.example]-vless:\\\"1\\\"\",result=\"error\"} 1",
            "v2sp_panel_pushes_total{node=\"[https://p.example]-vless:\\\"1\\\"\",result=\"ok\"} 4",
            "v2sp_panel_last_push_success_timestamp_seconds{node=\"[https://p.example]-vless:\\\"1\\\"\"} 1700000001",
        ] {
            assert!(t.lines().any(|l| l == line), "missing {line:?} in\n{t}");
        }
        // Every sample belongs to a family declared just before it.
        let mut declared = std::collections::HashSet::new();
        for l in t.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                declared.insert(rest.split(' ').next().unwrap().to_string());
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap();
                assert!(declared.contains(name), "{name} has no TYPE line");
            }
        }
    }

    /// The Grafana dashboard in `deploy/` (issue 15) asks only for series this endpoint
    /// renders, grouped only by labels those series carry: a renamed metric or label would
    /// otherwise leave a panel silently empty. Also checks what Grafana needs to import it.
    #[test]
    fn grafana_dashboard_asks_only_for_rendered_series_and_labels() {
        use std::collections::{HashMap, HashSet};
        let dash: serde_json::Value =
            serde_json::from_str(include_str!("../../deploy/grafana-dashboard.json")).unwrap();
        let m = NodeMetrics::with_top_users(1);
        m.counted_user(3, 2, 500, 500);
        let text = render(&Snapshot {
            top_users: m.top_users(),
            ..sample()
        });
        // name -> label names of its samples
        let mut series: HashMap<&str, HashSet<&str>> = HashMap::new();
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, rest) = l.split_at(l.find(['{', ' ']).unwrap());
            let labels = series.entry(name).or_default();
            if let Some(inner) = rest.strip_prefix('{').and_then(|r| r.split_once("} ")) {
                // Label values here hold no `,` or `=` besides the escaped quotes of `sample`.
                for kv in inner.0.split("\",") {
                    labels.insert(kv.split('=').next().unwrap().trim_start_matches(','));
                }
            }
        }
        let panels = dash["panels"].as_array().unwrap();
        let mut ids = HashSet::new();
        let mut exprs = Vec::new();
        for p in panels {
            assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate panel id in {p}");
            for t in p["targets"].as_array().into_iter().flatten() {
                assert!(t["refId"].is_string(), "target without refId in {p}");
                exprs.push(t["expr"].as_str().unwrap().to_string());
            }
        }
        for v in dash["templating"]["list"].as_array().unwrap() {
            exprs.push(v["query"].as_str().unwrap().to_string());
        }
        assert!(exprs.len() >= 10, "{exprs:?}");
        for e in &exprs {
            let names: Vec<&str> = e
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("v2sp_"))
                .collect();
            assert!(!names.is_empty(), "no v2sp series in {e}");
            for n in &names {
                assert!(
                    series.contains_key(n),
                    "the dashboard asks for {n}, which /metrics does not render ({e})"
                );
            }
            // `by (a, b)` must name labels every series of the expression has.
            for part in e.split("by (").skip(1) {
                for label in part.split(')').next().unwrap().split(',').map(str::trim) {
                    for n in &names {
                        assert!(
                            series[n].contains(label),
                            "{e} groups {n} by {label}, which it does not carry ({:?})",
                            series[n]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn requests_other_than_get_metrics_are_refused() {
        let scrape = || "x 1\n".to_string();
        assert_eq!(respond(b"GET /metrics HTTP/1.1\r\n\r\n", &scrape).0, "200 OK");
        assert_eq!(respond(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n", &scrape).0, "200 OK");
        assert_eq!(respond(b"GET / HTTP/1.1\r\n\r\n", &scrape).0, "404 Not Found");
        assert_eq!(
            respond(b"POST /metrics HTTP/1.1\r\n\r\n", &scrape).0,
            "405 Method Not Allowed"
        );
        assert_eq!(respond(b"\xff\xfe garbage", &scrape).0, "405 Method Not Allowed");
    }

    #[test]
    fn serves_over_tcp() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (c, _) = l.accept().unwrap();
            serve_one(c, &|| render(&sample()));
        });
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut got = String::new();
        c.read_to_string(&mut got).unwrap();
        t.join().unwrap();
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
        assert!(got.contains("text/plain; version=0.0.4"));
        assert!(got.contains("\r\n\r\n# HELP v2sp_dataplane_up"));
    }
}
