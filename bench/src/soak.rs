//! `v2sp-bench soak` (issue 11): v2sp under a long, mixed load, as a node meets it over days
//! compressed into minutes, and checked for what must never drift.
//!
//! * One v2sp (control plane + data plane) against the panel simulator, one node per suite
//!   (Shadowsocks AEAD and 2022, Trojan, VLESS, VMess, AnyTLS by default), served on every core.
//! * Load through our own clients: `conns` connections held open (each lives 20–120 s, then is
//!   closed and opened again), and `active` workers doing downloads, uploads and echo rounds
//!   of random sizes without pause. Connections are opened at most 32 at a time, so the load
//!   ramps up instead of hitting the per-address handshake cap.
//! * Every `churn` seconds each node's user list changes (one extra user removed, one added;
//!   the loaded user stays); every `fault` seconds the panel misbehaves on traffic reports
//!   (500, HTML 200 after applying, reset, an answer lost after applying, a CDN page, 502 after
//!   applying, a 15 s outage of the whole panel).
//! * Every `sample` seconds: RSS and open fds of both processes, connections held, transfers.
//!
//! Exactness: every byte a completed transfer moved is added to what the panel must receive
//! for the node's user (payload only, as v2sp counts: the 9-byte request up; `D n`: n down;
//! `U n`: n up, 8 down; echo: what was sent, each way). At the end the load stops, the faults
//! are cleared, and the panel's totals must equal that, to the byte, for every node. A transfer
//! that failed makes its node's total uncertain by at most its size; the report says so.
//!
//! Nothing here asserts speed: the figures are RSS and fds over time, and the exactness verdict.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;
use tokio::sync::{watch, Semaphore};
use v2sp_testsupport::panel_sim::{Fault, PanelSim, SimOptions};

use crate::client::ss::USER_UUID;
use crate::client::tls::SERVER_NAME;
use crate::client::Suite;
use crate::conn::{Conn, Via};
use crate::procstat;
use crate::target::{self, CMD_DOWNLOAD, CMD_IDLE, CMD_PING, CMD_UPLOAD, REQ_LEN};

/// What to run.
pub struct SoakPlan {
    pub duration: Duration,
    /// Connections held open at once.
    pub conns: usize,
    /// Workers transferring without pause.
    pub active: usize,
    pub churn: Duration,
    pub fault: Duration,
    pub sample: Duration,
    pub suites: Vec<Suite>,
    /// Data-plane workers and I/O backend.
    pub workers: usize,
    pub io: String,
    pub v2sp: PathBuf,
    pub out: PathBuf,
}

/// One reading.
#[derive(Clone, Debug)]
pub struct Sample {
    pub t_s: u64,
    pub control_rss_kib: u64,
    pub dataplane_rss_kib: u64,
    pub control_fds: usize,
    pub dataplane_fds: usize,
    pub held: usize,
    pub transfers: u64,
    pub failed: u64,
}

impl Sample {
    /// The figures in the order of the CSV and the report's table, joined by `sep`.
    fn row(&self, sep: &str) -> String {
        [
            self.t_s,
            self.control_rss_kib,
            self.dataplane_rss_kib,
            self.control_fds as u64,
            self.dataplane_fds as u64,
            self.held as u64,
            self.transfers,
            self.failed,
        ]
        .map(|v| v.to_string())
        .join(sep)
    }
}

/// Per node: what the clients moved (up, down), what may be uncertain, what the panel got.
#[derive(Clone, Debug)]
pub struct NodeResult {
    pub suite: String,
    pub expected: (u64, u64),
    pub uncertain: u64,
    pub reported: (u64, u64),
}

pub struct SoakOutcome {
    pub samples: Vec<Sample>,
    pub nodes: Vec<NodeResult>,
    pub transfers: u64,
    pub failed: u64,
    pub opened: u64,
    pub faults: Vec<String>,
    pub churn_rounds: u64,
    pub data_plane_restarted: bool,
}

impl SoakOutcome {
    /// Every node's total equals what the clients moved, or, where transfers failed midway,
    /// lies between what the completed ones moved and that plus the failed ones' sizes.
    pub fn exact(&self) -> bool {
        self.nodes.iter().all(|n| n.verdict() != Verdict::Wrong)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Exact,
    WithinFailed,
    Wrong,
}

impl NodeResult {
    pub fn verdict(&self) -> Verdict {
        let (e, r) = (self.expected, self.reported);
        if e == r {
            Verdict::Exact
        } else if r.0 >= e.0 && r.1 >= e.1 && (r.0 - e.0) + (r.1 - e.1) <= self.uncertain {
            Verdict::WithinFailed
        } else {
            Verdict::Wrong
        }
    }
}

/// Connections this process and the data plane can hold with their fd limit: each held
/// connection costs two fds here (client and target side) and two in the data plane.
pub fn conns_that_fit(wanted: usize) -> usize {
    let limit = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse::<usize>().ok()))
        })
        .unwrap_or(1024);
    wanted.min(limit.saturating_sub(512) / 2)
}

/// Expected bytes per node index: (up, down, uncertain).
type Ledger = Mutex<Vec<(u64, u64, u64)>>;

struct Load {
    vias: Vec<Via>,
    target: SocketAddr,
    ledger: Ledger,
    opens: Semaphore,
    held: AtomicUsize,
    opened: AtomicU64,
    transfers: AtomicU64,
    failed: AtomicU64,
}

impl Load {
    fn add(&self, node: usize, up: u64, down: u64) {
        let mut l = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = l.get_mut(node) {
            e.0 += up;
            e.1 += down;
        }
    }

    fn uncertain(&self, node: usize, n: u64) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut l = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = l.get_mut(node) {
            e.2 += n;
        }
    }

    /// Opens a connection; `held` ones wait for one of the 32 opening slots (the transfer
    /// workers do not queue behind thousands of reopening holders).
    async fn open(&self, node: usize, first: &[u8], held: bool) -> anyhow::Result<Conn> {
        let _permit = if held {
            Some(self.opens.acquire().await?)
        } else {
            None
        };
        let via = self.vias.get(node).context("no such node")?;
        let c = tokio::time::timeout(Duration::from_secs(20), Conn::open(via, self.target, first))
            .await
            .context("open timed out")??;
        self.opened.fetch_add(1, Ordering::Relaxed);
        Ok(c)
    }
}

/// xorshift64*: the load's choices need spread, not quality.
struct Rng(u64);

impl Rng {
    fn seeded(salt: u64) -> Rng {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Rng((t ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn uuid(&mut self) -> String {
        let h = format!("{:016x}{:016x}", self.next(), self.next());
        format!(
            "{}-{}-4{}-a{}-{}",
            &h[..8],
            &h[8..12],
            &h[13..16],
            &h[17..20],
            &h[20..32]
        )
    }
}

/// One held connection after another until `stop`: idle (`I`: 9 bytes up, 1 down), each for
/// 20–120 s.
async fn holder(load: Arc<Load>, node: usize, mut stop: watch::Receiver<bool>, salt: u64) {
    let mut rng = Rng::seeded(salt);
    while !*stop.borrow() {
        let conn = async {
            let mut c = load.open(node, &target::request(CMD_IDLE, 0), true).await?;
            c.recv_exact(1).await?;
            anyhow::Ok(c)
        }
        .await;
        let c = match conn {
            Ok(c) => c,
            Err(_) => {
                load.uncertain(node, REQ_LEN as u64 + 1);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        load.add(node, REQ_LEN as u64, 1);
        load.held.fetch_add(1, Ordering::Relaxed);
        let life = Duration::from_secs(20 + rng.below(100));
        tokio::select! {
            _ = tokio::time::sleep(life) => {}
            _ = stop.changed() => {}
        }
        drop(c);
        load.held.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Transfers of random kinds and sizes until `stop`, through node `node % suites`.
async fn worker(load: Arc<Load>, first_node: usize, stop: watch::Receiver<bool>, salt: u64) {
    let mut rng = Rng::seeded(salt);
    let nodes = load.vias.len();
    let mut node = first_node;
    while !*stop.borrow() {
        node = (node + 1) % nodes;
        let n = (64 << 10) + rng.below(2 << 20);
        let r = tokio::time::timeout(Duration::from_secs(60), async {
            match rng.below(3) {
                0 => {
                    let mut c = load.open(node, &target::request(CMD_DOWNLOAD, n), false).await?;
                    c.drain(n).await?;
                    anyhow::Ok((REQ_LEN as u64, n))
                }
                1 => {
                    let mut c = load.open(node, &target::request(CMD_UPLOAD, n), false).await?;
                    c.send_filler(n, 64 << 10).await?;
                    c.recv_exact(8).await?;
                    Ok((REQ_LEN as u64 + n, 8))
                }
                _ => {
                    let msg = vec![0x42u8; 256];
                    let mut first = target::request(CMD_PING, msg.len() as u64).to_vec();
                    first.extend_from_slice(&msg);
                    let mut c = load.open(node, &first, false).await?;
                    c.recv_exact(msg.len()).await?;
                    for _ in 0..19 {
                        c.send(&msg).await?;
                        c.recv_exact(msg.len()).await?;
                    }
                    Ok((REQ_LEN as u64 + 20 * 256, 20 * 256))
                }
            }
        })
        .await;
        match r {
            Ok(Ok((up, down))) => {
                load.add(node, up, down);
                load.transfers.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                load.uncertain(node, REQ_LEN as u64 + n);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Open fds of `pid`.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn user(id: u32, uuid: &str) -> serde_json::Value {
    json!({"id": id, "uuid": uuid, "speed_limit": 0, "device_limit": 0})
}

/// The faults injected on traffic reports, in turn: (name, fault, how many reports).
fn faults() -> Vec<(&'static str, Fault, u32)> {
    vec![
        ("500", Fault::Status(500), 2),
        ("HTML 200 after applying", Fault::Html, 1),
        ("reset before applying", Fault::Reset, 2),
        ("answer lost after applying", Fault::AcceptThenDropReply, 1),
        ("CDN HTML 200", Fault::cdn_html_200(), 2),
        ("502 after applying", Fault::status_after_apply(502), 1),
        ("15 s outage", Fault::Outage, 0),
    ]
}

/// The v2sp control plane (which starts its data plane), stopped on drop.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let pid = self.0.id();
        let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(15) {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn dataplane_of(control: u32) -> Option<u32> {
    procstat::children_of(control)
        .into_iter()
        .find(|(_, comm)| comm.starts_with("v2sp-datapl"))
        .map(|(p, _)| p)
}

/// Runs the soak on the current runtime (the load generator's).
pub async fn soak(plan: &SoakPlan) -> anyhow::Result<SoakOutcome> {
    std::fs::create_dir_all(&plan.out)?;
    let sim = Arc::new(PanelSim::start(SimOptions {
        token: "soak".into(),
        ..SimOptions::default()
    })?);
    let mut ports = Vec::new();
    let mut rng = Rng::seeded(7);
    let mut extra: Vec<Vec<(u32, String)>> = Vec::new();
    let mut next_id = 1000u32;
    for (i, suite) in plan.suites.iter().enumerate() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let node_id = i as u32 + 1;
        sim.set_node(node_id, crate::servers::v2sp_panel_node(suite, port, 5)?);
        let users: Vec<(u32, String)> = (0..20)
            .map(|_| {
                next_id += 1;
                (next_id, rng.uuid())
            })
            .collect();
        let mut list = vec![user(1, USER_UUID)];
        list.extend(users.iter().map(|(id, u)| user(*id, u)));
        sim.set_users(node_id, list);
        extra.push(users);
        ports.push(port);
    }
    let dir = plan.out.join("v2sp");
    std::fs::create_dir_all(&dir)?;
    let nodes: Vec<serde_json::Value> = plan
        .suites
        .iter()
        .enumerate()
        .map(|(i, suite)| {
            let mut n = json!({"ApiHost": sim.base_url(), "ApiKey": "soak", "NodeID": i + 1,
                "NodeType": crate::servers::suite_protocol(suite).unwrap_or("shadowsocks"),
                "ListenIP": "127.0.0.1", "Timeout": 3});
            if let Some(t) = suite.tls() {
                n["CertConfig"] = json!({"CertMode": "file", "CertDomain": SERVER_NAME,
                    "CertFile": t.cert_file, "KeyFile": t.key_file});
            }
            n
        })
        .collect();
    let cfg = json!({
        "Log": {"Level": "warn"},
        "StateDir": dir.join("state"),
        "Dataplane": {"Workers": plan.workers, "IO": plan.io, "ShmDir": dir.join("shm"),
                      "AllowPrivateDestinations": true},
        "Nodes": nodes,
    });
    let cfg_path = dir.join("config.json");
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg)?)?;
    let log = std::fs::File::create(dir.join("v2sp.log"))?;
    let agent = Agent(
        Command::new(&plan.v2sp)
            .arg("run")
            .arg("-c")
            .arg(&cfg_path)
            .env("V2SP_IO", &plan.io)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {}", plan.v2sp.display()))?,
    );
    let control = agent.0.id();
    let target = target::start().await?;
    let vias: Vec<Via> = plan
        .suites
        .iter()
        .zip(&ports)
        .map(|(s, p)| Via::Proxy {
            addr: SocketAddr::from(([127, 0, 0, 1], *p)),
            suite: s.clone(),
        })
        .collect();
    for (via, s) in vias.iter().zip(&plan.suites) {
        crate::scenarios::probe(via, target, Duration::from_secs(30))
            .await
            .with_context(|| format!("{} never served", s.name()))?;
    }
    let Some(dataplane) = dataplane_of(control) else {
        bail!("the data plane of v2sp (pid {control}) is not running");
    };
    let load = Arc::new(Load {
        ledger: Mutex::new(vec![(0, 0, 0); vias.len()]),
        vias,
        target,
        opens: Semaphore::new(32),
        held: AtomicUsize::new(0),
        opened: AtomicU64::new(0),
        transfers: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    // The probes moved bytes too: start from the panel's totals once they are reported.
    let base = settle(&sim, &vec![(0, 0); plan.suites.len()], Duration::from_secs(20)).await;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let nodes = plan.suites.len();
    for i in 0..plan.conns {
        tasks.push(tokio::spawn(holder(
            load.clone(),
            i % nodes,
            stop_rx.clone(),
            i as u64,
        )));
    }
    for i in 0..plan.active {
        tasks.push(tokio::spawn(worker(
            load.clone(),
            i % nodes,
            stop_rx.clone(),
            1_000_000 + i as u64,
        )));
    }

    let start = Instant::now();
    let mut samples = Vec::new();
    let mut faults_done = Vec::new();
    let (mut next_sample, mut next_churn, mut next_fault) = (start, start + plan.churn, start + plan.fault);
    let mut outage_until: Option<Instant> = None;
    let mut churn_rounds = 0;
    let fault_list = faults();
    let mut csv = String::from(
        "t_s,control_rss_kib,dataplane_rss_kib,control_fds,dataplane_fds,held,transfers,failed\n",
    );
    while start.elapsed() < plan.duration {
        let now = Instant::now();
        if now >= next_sample {
            let s = Sample {
                t_s: start.elapsed().as_secs(),
                control_rss_kib: procstat::proc_rss_kib(control).unwrap_or(0),
                dataplane_rss_kib: procstat::proc_rss_kib(dataplane).unwrap_or(0),
                control_fds: fds(control),
                dataplane_fds: fds(dataplane),
                held: load.held.load(Ordering::Relaxed),
                transfers: load.transfers.load(Ordering::Relaxed),
                failed: load.failed.load(Ordering::Relaxed),
            };
            let _ = writeln!(csv, "{}", s.row(","));
            eprintln!(
                "[soak {:>5} s] RSS control {} KiB, data plane {} KiB; fds {}/{}; held {}; transfers {}; failed {}",
                s.t_s,
                s.control_rss_kib,
                s.dataplane_rss_kib,
                s.control_fds,
                s.dataplane_fds,
                s.held,
                s.transfers,
                s.failed
            );
            samples.push(s);
            std::fs::write(plan.out.join("samples.csv"), &csv)?;
            next_sample += plan.sample;
        }
        if now >= next_churn {
            for (i, users) in extra.iter_mut().enumerate() {
                let gone = rng.below(users.len() as u64) as usize;
                users.remove(gone);
                next_id += 1;
                users.push((next_id, rng.uuid()));
                let mut list = vec![user(1, USER_UUID)];
                list.extend(users.iter().map(|(id, u)| user(*id, u)));
                sim.set_users(i as u32 + 1, list);
            }
            churn_rounds += 1;
            next_churn += plan.churn;
        }
        if outage_until.is_some_and(|t| now >= t) {
            sim.clear_faults();
            outage_until = None;
        }
        if now >= next_fault {
            let (name, fault, times) = fault_list[faults_done.len() % fault_list.len()].clone();
            if times == 0 {
                sim.set_fault(v2sp_shared::panel::Action::Push, fault);
                outage_until = Some(now + Duration::from_secs(15));
            } else {
                sim.set_fault_times(v2sp_shared::panel::Action::Push, fault, times);
            }
            faults_done.push(name.to_string());
            next_fault += plan.fault;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    sim.clear_faults();
    let data_plane_restarted = dataplane_of(control) != Some(dataplane);
    let ledger = load.ledger.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let want: Vec<(u64, u64)> = ledger
        .iter()
        .zip(&base)
        .map(|(l, b)| (l.0 + b.0, l.1 + b.1))
        .collect();
    let got = settle(&sim, &want, Duration::from_secs(90)).await;
    drop(agent);
    let nodes = plan
        .suites
        .iter()
        .zip(ledger.iter().zip(base.iter().zip(&got)))
        .map(|(s, (l, (b, g)))| NodeResult {
            suite: s.name().to_string(),
            expected: (l.0, l.1),
            uncertain: l.2,
            reported: (g.0.saturating_sub(b.0), g.1.saturating_sub(b.1)),
        })
        .collect();
    Ok(SoakOutcome {
        samples,
        nodes,
        transfers: load.transfers.load(Ordering::Relaxed),
        failed: load.failed.load(Ordering::Relaxed),
        opened: load.opened.load(Ordering::Relaxed),
        faults: faults_done,
        churn_rounds,
        data_plane_restarted,
    })
}

/// The panel's totals for user 1 of every node, once they equal `want` (or stop changing for
/// 15 s, or `within` passed).
async fn settle(sim: &PanelSim, want: &[(u64, u64)], within: Duration) -> Vec<(u64, u64)> {
    let t = Instant::now();
    let mut last = Vec::new();
    let mut stable_since = Instant::now();
    loop {
        let got: Vec<(u64, u64)> = (0..want.len())
            .map(|i| sim.totals(i as u32 + 1).get(&1).copied().unwrap_or((0, 0)))
            .collect();
        if got != last {
            stable_since = Instant::now();
            last = got.clone();
        }
        let idle = want.iter().all(|w| *w == (0, 0));
        let done = if idle {
            // Waiting for the probes' bytes: settled once nothing changed for 12 s (> 2 pushes).
            stable_since.elapsed() > Duration::from_secs(12) && got.iter().all(|g| g.0 > 0)
        } else {
            got == want || stable_since.elapsed() > Duration::from_secs(15)
        };
        if done || t.elapsed() > within {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `report.md` for an outcome.
pub fn report(plan: &SoakPlan, o: &SoakOutcome) -> String {
    let mut r = String::new();
    let _ = writeln!(r, "# v2sp soak\n");
    let _ = writeln!(
        r,
        "{:.1} min, {} connections held (each 20–120 s, then reopened), {} transfer workers, \
         users changed every {} s, a panel fault every {} s; data plane: {} worker(s), {}.\n",
        plan.duration.as_secs_f64() / 60.0,
        plan.conns,
        plan.active,
        plan.churn.as_secs(),
        plan.fault.as_secs(),
        plan.workers,
        plan.io
    );
    let _ = writeln!(
        r,
        "Connections opened: {}; transfers completed: {}; failed: {}; user-list changes: {} per node; \
         faults injected: {}; data plane restarted: {}.\n",
        o.opened,
        o.transfers,
        o.failed,
        o.churn_rounds,
        o.faults.len(),
        o.data_plane_restarted
    );
    let _ = writeln!(r, "## Exactness (user 1 of each node, bytes)\n");
    let _ = writeln!(
        r,
        "| suite | moved up | reported up | moved down | reported down | uncertain | |"
    );
    let _ = writeln!(r, "|---|---:|---:|---:|---:|---:|---|");
    for n in &o.nodes {
        let verdict = match n.verdict() {
            Verdict::Exact => "exact",
            Verdict::WithinFailed => "within the failed transfers",
            Verdict::Wrong => "**WRONG**",
        };
        let _ = writeln!(
            r,
            "| {} | {} | {} | {} | {} | {} | {verdict} |",
            n.suite, n.expected.0, n.reported.0, n.expected.1, n.reported.1, n.uncertain
        );
    }
    let _ = writeln!(r, "\n## Over time\n");
    let _ = writeln!(
        r,
        "| t (s) | control RSS (KiB) | data plane RSS (KiB) | control fds | data plane fds | held | transfers | failed |"
    );
    let _ = writeln!(r, "|---:|---:|---:|---:|---:|---:|---:|---:|");
    let step = (o.samples.len() / 30).max(1);
    for (i, s) in o.samples.iter().enumerate() {
        if i % step == 0 || i + 1 == o.samples.len() {
            let _ = writeln!(r, "| {} |", s.row(" | "));
        }
    }
    if let (Some(first), Some(max)) = (
        o.samples.iter().find(|s| s.held > 0),
        o.samples.iter().map(|s| s.dataplane_rss_kib).max(),
    ) {
        let last = o.samples.last().map_or(0, |s| s.dataplane_rss_kib);
        let _ = writeln!(
            r,
            "\nData plane RSS: {} KiB at the first sample under load, {max} KiB at most, {last} KiB at the end.",
            first.dataplane_rss_kib
        );
    }
    let _ = writeln!(r, "\nFaults, in order: {}.", o.faults.join(", "));
    r
}

/// Where a soak writes by default.
pub fn default_out() -> PathBuf {
    Path::new("results").join(format!(
        "soak-{}",
        crate::report::utc_string().replace([':', ' '], "-")
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn uuids_have_the_version_and_variant_panels_expect() {
        let mut r = Rng::seeded(1);
        for _ in 0..100 {
            let u = r.uuid();
            assert_eq!(u.len(), 36, "{u}");
            assert_eq!(&u[14..15], "4");
            assert_eq!(&u[19..20], "a");
            assert!(u.chars().all(|c| c == '-' || c.is_ascii_hexdigit()), "{u}");
        }
    }

    #[test]
    fn a_failed_transfer_widens_the_range_and_nothing_else() {
        let n = |e: (u64, u64), r: (u64, u64), uncertain| NodeResult {
            suite: String::new(),
            expected: e,
            uncertain,
            reported: r,
        };
        assert_eq!(n((10, 20), (10, 20), 0).verdict(), Verdict::Exact);
        assert_eq!(n((10, 20), (15, 21), 6).verdict(), Verdict::WithinFailed);
        assert_eq!(
            n((10, 20), (15, 21), 5).verdict(),
            Verdict::Wrong,
            "more than failed"
        );
        assert_eq!(n((10, 20), (9, 20), 100).verdict(), Verdict::Wrong, "a lost byte");
    }

    #[test]
    fn conns_are_capped_by_the_fd_limit() {
        assert!(conns_that_fit(usize::MAX) < usize::MAX / 2);
        assert_eq!(conns_that_fit(3), 3);
    }
}
