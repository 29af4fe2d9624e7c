//! Process harness for end-to-end tests: the real `v2sp` (which spawns the real
//! `v2sp-dataplane`) against the panel simulator, real third-party clients (`sslocal`,
//! `sing-box`) in front of it, and a local echo target behind it. Loopback only; every wait
//! is bounded.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::panel_sim::{PanelSim, SimOptions};

/// Where the workspace's binaries are: `$V2SP_BIN_DIR`, else the target dir this test binary
/// was built into (`target/<profile>/deps/<test>` → `target/<profile>`).
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("V2SP_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// A third-party peer binary from `scripts/install-test-deps.sh`; a clear error if missing.
pub fn peer(name: &str) -> anyhow::Result<PathBuf> {
    let root = std::env::var_os("V2SP_PEERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/v2sp-peers"));
    let p = root.join("bin").join(name);
    if p.exists() {
        Ok(p)
    } else {
        bail!(
            "{} not found: run scripts/install-test-deps.sh (it installs the real peers the tests talk to)",
            p.display()
        )
    }
}

/// A free loopback TCP+UDP port for a server the test starts on a port of its choosing (a
/// node, a client's SOCKS inbound): see [`crate::ports`] for why it can never be one that
/// anything else on the machine holds or will be given.
pub fn free_port() -> u16 {
    crate::ports::claim()
}

/// Debian's dnsmasq as a DNS server on a free loopback port that answers every name under
/// `domain` with 127.0.0.1 and nothing else (no upstream, no hosts file); returns it and the
/// port.
pub fn dnsmasq(domain: &str, dir: &Path) -> anyhow::Result<(Proc, u16)> {
    let port = free_port();
    let mut cmd = Command::new(peer("dnsmasq")?);
    cmd.args([
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--conf-file=/dev/null",
        "--bind-interfaces",
        "--listen-address=127.0.0.1",
        "--log-queries",
        "--log-facility=-",
        "--pid-file=",
    ])
    .arg(format!("--address=/{domain}/127.0.0.1"))
    .arg(format!("--port={port}"));
    Ok((Proc::spawn("dnsmasq", cmd, dir.join("dnsmasq.log"))?, port))
}

pub fn wait_tcp(port: u16, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on 127.0.0.1:{port} after {within:?}")
}

/// Waits until some process has a UDP socket bound to `port` (from `/proc/net/udp` and
/// `udp6`): QUIC listeners answer nothing that a plain probe could send.
pub fn wait_udp(port: u16, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    let needle = format!(":{port:04X} ");
    while Instant::now() < deadline {
        for table in ["/proc/net/udp", "/proc/net/udp6"] {
            let text = std::fs::read_to_string(table).unwrap_or_default();
            // Each line: `sl local_address rem_address …`; the local address ends in `:PORT`.
            if text.lines().skip(1).any(|l| {
                l.split_whitespace()
                    .nth(1)
                    .is_some_and(|a| format!("{a} ").ends_with(&needle))
            }) {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("no UDP socket is bound to port {port} after {within:?}")
}

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> anyhow::Result<Proc> {
        let f = std::fs::File::create(&log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Proc {
            child,
            name: name.to_string(),
            log,
        })
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM and wait (bounded), then SIGKILL.
    pub fn terminate(&mut self, grace: Duration) {
        // SAFETY-free: `kill` the command, not libc, keeps this crate without unsafe.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Per node id, per user id: (upload, download) bytes the panel must end up with.
pub type Totals = BTreeMap<u32, BTreeMap<u32, (u64, u64)>>;

/// Adds what one transfer moved to `totals`.
pub fn expect(totals: &mut Totals, node: u32, user: u32, up: u64, down: u64) {
    let e = totals.entry(node).or_default().entry(user).or_default();
    e.0 += up;
    e.1 += down;
}

/// Local config that makes v2sp generate (and keep in `dir`) a self-signed certificate for
/// `domain` on every TLS node.
pub fn self_signed_certs(dir: &Path, domain: &str) -> Value {
    json!({"CertConfig": {"CertMode": "self", "CertDomain": domain,
        "CertFile": dir.join("{domain}.crt"), "KeyFile": dir.join("{domain}.key")}})
}

/// One node on the simulated panel.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub node_id: u32,
    pub port: u16,
    /// Panel `config` reply.
    pub info: Value,
    /// Panel users (`{"id","uuid",…}`).
    pub users: Vec<Value>,
}

/// Panel simulator + `v2sp run` (+ data plane) in a temp dir.
pub struct V2sp {
    pub dir: tempfile::TempDir,
    pub sim: PanelSim,
    pub agent: Proc,
    pub nodes: Vec<NodeSpec>,
}

impl V2sp {
    /// Start with these nodes; `extra` is merged into each node's local config entry.
    pub fn start(nodes: Vec<NodeSpec>, extra: Value) -> anyhow::Result<V2sp> {
        Self::start_with(nodes, extra, json!({}))
    }

    /// As [`V2sp::start`]; `dataplane` is merged into the config's `Dataplane` object.
    pub fn start_with(nodes: Vec<NodeSpec>, extra: Value, dataplane: Value) -> anyhow::Result<V2sp> {
        Self::start_with_sim(nodes, extra, dataplane, &|_| {})
    }

    /// As [`V2sp::start_with`]; `prepare` runs on the panel simulator after the nodes and users
    /// are set and before v2sp starts (to inject faults the agent meets at start).
    pub fn start_with_sim(
        nodes: Vec<NodeSpec>,
        extra: Value,
        dataplane: Value,
        prepare: &dyn Fn(&PanelSim),
    ) -> anyhow::Result<V2sp> {
        Self::start_with_bin(
            nodes,
            extra,
            dataplane,
            prepare,
            &bin_dir().join("v2sp-dataplane"),
        )
    }

    /// As [`V2sp::start_with_sim`], with the data plane started from `dataplane_bin` (a copy
    /// the test may replace, as an upgrade does).
    pub fn start_with_bin(
        nodes: Vec<NodeSpec>,
        extra: Value,
        dataplane: Value,
        prepare: &dyn Fn(&PanelSim),
        dataplane_bin: &Path,
    ) -> anyhow::Result<V2sp> {
        Self::start_inner(nodes, extra, dataplane, prepare, dataplane_bin, false)
    }

    /// As [`V2sp::start`], against Xboard's v2 API: the simulator serves `/api/v2/server/*` and
    /// the WebSocket channel, and every node entry says `ApiVersion: v2`.
    pub fn start_v2(nodes: Vec<NodeSpec>, extra: Value) -> anyhow::Result<V2sp> {
        Self::start_inner(
            nodes,
            extra,
            json!({}),
            &|_| {},
            &bin_dir().join("v2sp-dataplane"),
            true,
        )
    }

    /// As [`V2sp::start_with`]; `top` is merged into the config file's top level (`Cores`).
    pub fn start_with_top(
        nodes: Vec<NodeSpec>,
        extra: Value,
        dataplane: Value,
        top: Value,
    ) -> anyhow::Result<V2sp> {
        Self::start_inner_top(
            nodes,
            extra,
            dataplane,
            &|_| {},
            &bin_dir().join("v2sp-dataplane"),
            false,
            top,
        )
    }

    fn start_inner(
        nodes: Vec<NodeSpec>,
        extra: Value,
        dataplane: Value,
        prepare: &dyn Fn(&PanelSim),
        dataplane_bin: &Path,
        v2: bool,
    ) -> anyhow::Result<V2sp> {
        Self::start_inner_top(nodes, extra, dataplane, prepare, dataplane_bin, v2, json!({}))
    }

    fn start_inner_top(
        nodes: Vec<NodeSpec>,
        extra: Value,
        dataplane: Value,
        prepare: &dyn Fn(&PanelSim),
        dataplane_bin: &Path,
        v2: bool,
        top: Value,
    ) -> anyhow::Result<V2sp> {
        let dir = tempfile::tempdir()?;
        let sim = PanelSim::start(SimOptions {
            token: "e2e-token".into(),
            v2,
            ..SimOptions::default()
        })?;
        let mut entries = Vec::new();
        for n in &nodes {
            sim.set_node(n.node_id, n.info.clone());
            sim.set_users(n.node_id, n.users.clone());
            let mut e = json!({"ApiHost": sim.single_url(), "ApiKey": "e2e-token", "NodeID": n.node_id,
                               "NodeType": n.info.get("node_type").cloned().unwrap_or(json!("shadowsocks")),
                               "ListenIP": "127.0.0.1", "Timeout": 3});
            if v2 {
                e["ApiHost"] = json!(sim.base_url());
                e["ApiVersion"] = json!("v2");
            }
            if let (Some(m), Some(x)) = (e.as_object_mut(), extra.as_object()) {
                for (k, v) in x {
                    m.insert(k.clone(), v.clone());
                }
            }
            entries.push(e);
        }
        let mut dp =
            json!({"ShmDir": dir.path().join("shm"), "AllowPrivateDestinations": true, "Workers": 2});
        if let (Some(m), Some(x)) = (dp.as_object_mut(), dataplane.as_object()) {
            for (k, v) in x {
                m.insert(k.clone(), v.clone());
            }
        }
        let mut cfg = json!({
            "Log": {"Level": "info"},
            "StateDir": dir.path().join("state"),
            "Dataplane": dp,
            "Nodes": entries,
        });
        if let (Some(m), Some(x)) = (cfg.as_object_mut(), top.as_object()) {
            for (k, v) in x {
                m.insert(k.clone(), v.clone());
            }
        }
        let cfg_path = dir.path().join("config.json");
        std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg)?)?;
        prepare(&sim);
        let bins = bin_dir();
        let mut cmd = Command::new(bins.join("v2sp"));
        cmd.arg("run")
            .arg("-c")
            .arg(&cfg_path)
            .env("V2SP_DATAPLANE_BIN", dataplane_bin);
        let agent = Proc::spawn("v2sp", cmd, dir.path().join("v2sp.log"))?;
        let me = V2sp {
            dir,
            sim,
            agent,
            nodes,
        };
        for n in &me.nodes {
            // Hysteria 2 and TUIC nodes listen on UDP (QUIC) only.
            let quic = matches!(
                n.info.get("node_type").and_then(Value::as_str),
                Some("hysteria2" | "hysteria" | "tuic")
            );
            let up = if quic {
                wait_udp(n.port, Duration::from_secs(30))
            } else {
                wait_tcp(n.port, Duration::from_secs(30))
            };
            up.with_context(|| format!("v2sp log:\n{}", me.agent.log()))?;
        }
        // The data plane registers once every core is ready (after its listeners are up).
        let deadline = Instant::now() + Duration::from_secs(30);
        while me.dataplane_pid() == 0 {
            if Instant::now() > deadline {
                bail!("data plane never registered\n{}", me.agent.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(me)
    }

    pub fn shm_dir(&self) -> PathBuf {
        self.dir.path().join("shm")
    }

    /// The data plane's pid as registered in shared memory (0 if none).
    pub fn dataplane_pid(&self) -> u32 {
        match v2sp_shared::shm::ControlShm::open_existing(&self.shm_dir()) {
            Ok(s) => s.status().dataplane_pid,
            Err(e) => {
                eprintln!("cannot read shared memory in {}: {e}", self.shm_dir().display());
                0
            }
        }
    }

    /// Ends an interop test: panics with every failure and the v2sp log if there were any,
    /// then waits (20 s at most) until the panel holds exactly `expected` for each node
    /// (user id → (upload, download) bytes).
    #[allow(clippy::panic)] // failing the calling test is this helper's job
    pub fn finish(&self, failures: &[String], expected: &Totals) {
        if !failures.is_empty() {
            panic!(
                "{} failures:\n{}\n--- v2sp log ---\n{}",
                failures.len(),
                failures.join("\n"),
                self.agent.log()
            );
        }
        for (node, exp) in expected {
            if let Err(e) = self.wait_totals(*node, exp, Duration::from_secs(20)) {
                panic!("node {node}: {e:#}");
            }
        }
    }

    /// After a speed-limited upload to `sink` by `user` of `node` ended: waits until the panel's
    /// upload total equals the bytes that reached the sink (what the client had buffered
    /// still drains at the limit) and both stay put for 2 s; panics after `within`.
    pub fn wait_upload_settles(&self, sink: &Sink, node: u32, user: u32, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let got = sink.bytes.load(std::sync::atomic::Ordering::SeqCst);
            let totals = self.sim.totals(node);
            if totals.get(&user) == Some(&(got, 0)) {
                std::thread::sleep(Duration::from_secs(2));
                let again = sink.bytes.load(std::sync::atomic::Ordering::SeqCst);
                if again == got && self.sim.totals(node).get(&user) == Some(&(got, 0)) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "panel {totals:?}, sink {got}\n{}",
                self.agent.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until `closed` (an [`eof_counter`]'s count) reaches `n`: the data plane closed the
    /// destination side of a removed user's connections. Panics after 10 s.
    pub fn wait_destinations_closed(&self, closed: &std::sync::atomic::AtomicUsize, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while closed.load(std::sync::atomic::Ordering::SeqCst) < n {
            assert!(
                Instant::now() < deadline,
                "destination still open after the user's removal\n{}",
                self.agent.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The removal of user `uid` of `node` (the panel's list becomes `remaining`) cuts off a
    /// client behind the SOCKS5 proxy at `socks`: a stream it holds to an [`eof_counter`]
    /// ("hi" → "ok", counted) is closed on both sides, and a new connection is refused. Returns
    /// the totals the panel must end with.
    pub fn assert_removal_cuts_off(
        &self,
        socks: u16,
        client_log: &dyn Fn() -> String,
        (node, uid): (u32, u32),
        remaining: Vec<Value>,
    ) -> anyhow::Result<Totals> {
        let (hport, hclosed) = eof_counter(Duration::from_secs(60))?;
        let mut s = socks5_connect(socks, hport).with_context(client_log)?;
        let mut ok = [0u8; 2];
        s.write_all(b"hi")
            .and_then(|()| s.read_exact(&mut ok))
            .with_context(|| format!("{}\n{}", client_log(), self.agent.log()))?;
        ensure!(&ok == b"ok", "the destination answered {ok:?}");
        let mut expected: Totals = BTreeMap::new();
        expect(&mut expected, node, uid, 2, 2);
        self.wait_totals(node, &expected[&node], Duration::from_secs(20))?;
        self.sim.set_users(node, remaining);
        self.wait_destinations_closed(&hclosed, 1);
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut b = [0u8; 16];
        ensure!(matches!(s.read(&mut b), Ok(0) | Err(_)), "stream still open");
        // A new connection of the removed user is refused. Each core takes a new user table at
        // its next tick (every 100 ms); the closed connection proves one core has, and the new
        // connection may land on the other, so give that one time even on a loaded machine.
        std::thread::sleep(Duration::from_secs(1));
        let echo = Echo::start()?;
        ensure!(
            tcp_echo_through(socks, echo.port, &payload(1000, 1)).is_err(),
            "removed user still served"
        );
        Ok(expected)
    }

    /// `v2sp upgrade` on this instance's shm directory: whether it succeeded, and what it
    /// printed.
    pub fn upgrade(&self) -> (bool, String) {
        upgrade_at(&self.shm_dir())
    }

    /// Wait until the panel's totals for `node` equal `expected` (bounded).
    pub fn wait_totals(
        &self,
        node: u32,
        expected: &BTreeMap<u32, (u64, u64)>,
        within: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.sim.totals(node);
            if &got == expected {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "node {node}: panel totals {got:?}, expected {expected:?}\n--- v2sp log ---\n{}",
                    self.agent.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for V2sp {
    /// Stop gracefully (the agent stops its data plane), then make sure no data plane is left:
    /// it is designed to outlive a killed control plane.
    fn drop(&mut self) {
        let dp = self.dataplane_pid();
        self.agent.terminate(Duration::from_secs(15));
        if dp != 0 {
            let _ = Command::new("kill").arg("-KILL").arg(dp.to_string()).status();
        }
    }
}

/// A TCP+UDP echo server on 127.0.0.1 (each TCP connection echoes until EOF, then closes).
pub struct Echo {
    pub port: u16,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Echo {
    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn start() -> anyhow::Result<Echo> {
        let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = tcp.local_addr()?.port();
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, port))?;
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        std::thread::spawn(move || {
            for s in tcp.incoming().flatten() {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut s = s;
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = s.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(&buf[..n], from);
            }
        });
        Ok(Echo { port, accepted })
    }
}

/// A TCP sink that counts the bytes it receives (for rate measurements).
pub struct Sink {
    pub port: u16,
    pub bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Sink {
    pub fn start() -> anyhow::Result<Sink> {
        let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = tcp.local_addr()?.port();
        let bytes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let b = bytes.clone();
        std::thread::spawn(move || {
            for s in tcp.incoming().flatten() {
                let b = b.clone();
                std::thread::spawn(move || {
                    let mut s = s;
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        b.fetch_add(n as u64, std::sync::atomic::Ordering::SeqCst);
                    }
                });
            }
        });
        Ok(Sink { port, bytes })
    }

    /// Bytes per second that reached the sink over `window`, after `skip` (the burst a speed
    /// limit's bucket starts with).
    pub fn rate_after(&self, skip: Duration, window: Duration) -> f64 {
        rate_after(&self.bytes, skip, window)
    }
}

/// Held by a test while it measures a rate that its neighbours' CPU use would skew (a
/// window-bound sender such as Brutal does not make up for time it is not scheduled): tests
/// that hold it run one at a time, whether as threads of one test binary or as processes
/// (nextest). Released when dropped.
pub fn rate_measurement_lock() -> anyhow::Result<std::fs::File> {
    let path = std::env::temp_dir().join("v2sp-rate-measurement.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| path.display().to_string())?;
    f.lock().with_context(|| format!("lock {}", path.display()))?;
    Ok(f)
}

/// Bytes per second `bytes` grew by over `window`, after `skip`.
pub fn rate_after(bytes: &std::sync::atomic::AtomicU64, skip: Duration, window: Duration) -> f64 {
    std::thread::sleep(skip);
    let b0 = bytes.load(std::sync::atomic::Ordering::SeqCst);
    let t0 = Instant::now();
    std::thread::sleep(window);
    (bytes.load(std::sync::atomic::Ordering::SeqCst) - b0) as f64 / t0.elapsed().as_secs_f64()
}

/// A TCP source on 127.0.0.1: writes 64 KiB chunks to each connection as fast as it takes
/// them, until the connection fails (for download rate measurements).
pub struct Source {
    pub port: u16,
}

impl Source {
    pub fn start() -> anyhow::Result<Source> {
        let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = tcp.local_addr()?.port();
        std::thread::spawn(move || {
            for s in tcp.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut s = s;
                    let chunk = payload(64 * 1024, 7);
                    while s.write_all(&chunk).is_ok() {}
                });
            }
        });
        Ok(Source { port })
    }
}

/// `n` threads that each open a stream to `127.0.0.1:port` (a [`Source`]) through the SOCKS5
/// proxy at `socks` and read as fast as they can until `until` (or a read fails or waits 5 s);
/// the bytes read by all of them, and the threads.
pub fn download_until(
    socks: u16,
    port: u16,
    n: u64,
    until: Instant,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicU64>,
    Vec<std::thread::JoinHandle<()>>,
) {
    let bytes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let threads = (0..n)
        .map(|_| {
            let s = socks5_connect(socks, port);
            let bytes = bytes.clone();
            std::thread::spawn(move || {
                let Ok(mut s) = s else { return };
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = vec![0u8; 64 * 1024];
                while Instant::now() < until {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => {
                            bytes.fetch_add(k as u64, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                }
            })
        })
        .collect();
    (bytes, threads)
}

/// A UDP path between a client and a server on loopback with a fixed delay each way: what a
/// long path looks like to congestion control (which, at loopback's RTT of a fraction of a
/// millisecond, is bounded by its minimum window instead of its rate). The client sends to
/// `port`; the server sees the line's own address as its client. Nothing is lost or
/// reordered. Stops when dropped.
pub struct DelayLine {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl DelayLine {
    pub fn start(server: u16, one_way: Duration) -> anyhow::Result<DelayLine> {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::mpsc;
        use std::sync::{Arc, Mutex};
        let front = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = front.local_addr()?.port();
        let back = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        back.connect((Ipv4Addr::LOCALHOST, server))?;
        for s in [&front, &back] {
            // Readers wake up now and then to see whether the line was dropped.
            s.set_read_timeout(Some(Duration::from_millis(100)))?;
            let _ = socket2::SockRef::from(s).set_recv_buffer_size(4 << 20);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
        type Queue = (
            mpsc::Sender<(Instant, Vec<u8>)>,
            mpsc::Receiver<(Instant, Vec<u8>)>,
        );
        let (up_tx, up_rx): Queue = mpsc::channel();
        let (down_tx, down_rx): Queue = mpsc::channel();
        // Readers: stamp each datagram with the time it may leave.
        {
            let (front, stop, client) = (front.try_clone()?, stop.clone(), client.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::SeqCst) {
                    if let Ok((n, from)) = front.recv_from(&mut buf) {
                        if let Ok(mut c) = client.lock() {
                            *c = Some(from);
                        }
                        if up_tx.send((Instant::now() + one_way, buf[..n].to_vec())).is_err() {
                            return;
                        }
                    }
                }
            });
        }
        {
            let (back, stop) = (back.try_clone()?, stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::SeqCst) {
                    if let Ok(n) = back.recv(&mut buf) {
                        if down_tx
                            .send((Instant::now() + one_way, buf[..n].to_vec()))
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            });
        }
        // Writers: in order, each datagram once its time has come (the delay is the same for
        // all, so the queue is in time order). They end when their reader has.
        std::thread::spawn(move || {
            while let Ok((due, d)) = up_rx.recv() {
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                let _ = back.send(&d);
            }
        });
        std::thread::spawn(move || {
            while let Ok((due, d)) = down_rx.recv() {
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                let to = client.lock().ok().and_then(|c| *c);
                if let Some(to) = to {
                    let _ = front.send_to(&d, to);
                }
            }
        });
        Ok(DelayLine { port, stop })
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Echo transfers through the SOCKS5 proxy at `socks` to `echo_port`: payloads of the sizes in
/// `sizes.0` one after another, then those in `sizes.1` at once (payload `k` of each
/// seeded `seed + k`, resp. `seed + 1000 + k`). Returns the bytes moved each way; each
/// failure is pushed to `failures` as a line naming `what`, with `log()` (the client's log)
/// appended.
pub fn echo_transfers(
    socks: u16,
    echo_port: u16,
    sizes: (&[usize], &[usize]),
    seed: u64,
    what: &str,
    log: &dyn Fn() -> String,
    failures: &mut Vec<String>,
) -> u64 {
    let (sequential, concurrent) = sizes;
    let mut moved = 0;
    for (k, &n) in sequential.iter().enumerate() {
        match tcp_echo_through(socks, echo_port, &payload(n, seed + k as u64)) {
            Ok(b) => moved += b,
            Err(e) => failures.push(format!("{what} sequential {k}: {e:#}\n{}", log())),
        }
    }
    let threads: Vec<_> = concurrent
        .iter()
        .enumerate()
        .map(|(k, &n)| {
            let data = payload(n, seed + 1000 + k as u64);
            std::thread::spawn(move || tcp_echo_through(socks, echo_port, &data))
        })
        .collect();
    for (k, t) in threads.into_iter().enumerate() {
        match t.join() {
            Ok(Ok(b)) => moved += b,
            Ok(Err(e)) => failures.push(format!("{what} concurrent {k}: {e:#}\n{}", log())),
            Err(_) => failures.push(format!("{what} concurrent {k}: the transfer thread panicked")),
        }
    }
    moved
}

/// A destination that refuses (a closed port) fails its stream alone: nothing goes through
/// to it, and the next transfer to `echo_port` works. Returns the bytes that one moved.
pub fn refused_then_works(
    socks: u16,
    echo_port: u16,
    what: &str,
    log: &dyn Fn() -> String,
    failures: &mut Vec<String>,
) -> u64 {
    if tcp_echo_through(socks, free_port(), &payload(4096, 5)).is_ok() {
        failures.push(format!("{what}: data went through to a closed port"));
    }
    match tcp_echo_through(socks, echo_port, &payload(70_000, 6)) {
        Ok(b) => b,
        Err(e) => {
            failures.push(format!("{what} after a refused stream: {e:#}\n{}", log()));
            0
        }
    }
}

/// `v2sp upgrade --shm-dir shm`: whether it succeeded, and what it printed.
pub fn upgrade_at(shm: &Path) -> (bool, String) {
    let out = Command::new(bin_dir().join("v2sp"))
        .args(["upgrade", "--timeout", "60", "--shm-dir"])
        .arg(shm)
        .output();
    match out {
        Ok(out) => (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ),
        Err(e) => (false, format!("cannot run v2sp upgrade: {e}")),
    }
}

/// Whether process `pid` runs (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
    })
}

/// `n` threads that each open a stream to `127.0.0.1:port` through the SOCKS5 proxy at
/// `socks` and upload 16 KiB chunks as fast as they can until `until` (or a write fails or
/// blocks for 5 s).
pub fn upload_until(socks: u16, port: u16, n: u64, until: Instant) -> Vec<std::thread::JoinHandle<()>> {
    (0..n)
        .map(|k| {
            let s = socks5_connect(socks, port);
            std::thread::spawn(move || {
                let Ok(mut s) = s else { return };
                let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
                let chunk = payload(16 * 1024, k);
                while Instant::now() < until {
                    if s.write_all(&chunk).is_err() {
                        break;
                    }
                }
            })
        })
        .collect()
}

/// A TCP proxy in front of `upstream` that records every byte the client sent (for replay
/// tests: what an eavesdropper on the path would capture).
pub struct Recorder {
    pub port: u16,
    pub captured: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl Recorder {
    pub fn start(upstream: u16) -> anyhow::Result<Recorder> {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = l.local_addr()?.port();
        let captured = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let cap = captured.clone();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let Ok(u) = TcpStream::connect((Ipv4Addr::LOCALHOST, upstream)) else {
                    continue;
                };
                let idx = {
                    let mut g = cap.lock().unwrap_or_else(|p| p.into_inner());
                    g.push(Vec::new());
                    g.len() - 1
                };
                let (mut c2, mut u2) = match (c.try_clone(), u.try_clone()) {
                    (Ok(a), Ok(b)) => (a, b),
                    _ => continue,
                };
                let cap2 = cap.clone();
                std::thread::spawn(move || {
                    let mut c = c;
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = c.read(&mut buf) {
                        if n == 0 || u2.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        if let Some(v) = cap2.lock().unwrap_or_else(|p| p.into_inner()).get_mut(idx) {
                            v.extend_from_slice(&buf[..n]);
                        }
                    }
                    let _ = u2.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let mut u = u;
                    let _ = std::io::copy(&mut u, &mut c2);
                    let _ = c2.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Ok(Recorder { port, captured })
    }
}

/// Deterministic pseudo-random payload.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn sha256(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// SOCKS5 CONNECT through `socks` to 127.0.0.1:`port`.
pub fn socks5_connect(socks: u16, port: u16) -> anyhow::Result<TcpStream> {
    let mut s = socks5_greet(socks)?;
    let p = port.to_be_bytes();
    s.write_all(&[5, 1, 0, 1, 127, 0, 0, 1, p[0], p[1]])?;
    let mut rep = [0u8; 10];
    s.read_exact(&mut rep)?;
    if rep[1] != 0 {
        bail!("socks CONNECT failed with code {}", rep[1]);
    }
    Ok(s)
}

/// A destination that answers "ok" to each connection's first bytes, then holds it open and
/// counts the EOFs it sees (connections the proxy closed), waiting `hold` at most each.
pub fn eof_counter(hold: Duration) -> anyhow::Result<(u16, std::sync::Arc<std::sync::atomic::AtomicUsize>)> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    let closed = std::sync::Arc::new(AtomicUsize::new(0));
    let c2 = closed.clone();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let c3 = c2.clone();
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(hold));
                let mut b = [0u8; 64];
                if matches!(s.read(&mut b), Ok(n) if n > 0) && s.write_all(b"ok").is_ok() {
                    while let Ok(n) = s.read(&mut b) {
                        if n == 0 {
                            c3.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                    }
                }
            });
        }
    });
    Ok((port, closed))
}

/// Connects to a SOCKS5 server on loopback and does the no-auth greeting.
fn socks5_greet(socks: u16) -> anyhow::Result<TcpStream> {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, socks))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(&[5, 1, 0])?;
    let mut r = [0u8; 2];
    s.read_exact(&mut r)?;
    if r != [5, 0] {
        bail!("socks greeting refused: {r:?}");
    }
    Ok(s)
}

/// A SOCKS5 CONNECT to `host:port` by name (address type 3): the proxy client passes the name
/// on, and the server resolves it (or refuses it by name).
pub fn socks5_connect_domain(socks: u16, host: &str, port: u16) -> anyhow::Result<TcpStream> {
    let mut s = socks5_greet(socks)?;
    let len = u8::try_from(host.len())?;
    let mut req = vec![5, 1, 0, 3, len];
    req.extend_from_slice(host.as_bytes());
    req.extend_from_slice(&port.to_be_bytes());
    s.write_all(&req)?;
    let mut rep = [0u8; 4];
    s.read_exact(&mut rep)?;
    if rep[1] != 0 {
        bail!("socks CONNECT failed with code {}", rep[1]);
    }
    // The bound address: IPv4 (4), name (1 + len) or IPv6 (16), then the port.
    let rest = match rep[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        _ => {
            let mut l = [0u8; 1];
            s.read_exact(&mut l)?;
            usize::from(l[0]) + 2
        }
    };
    let mut skip = vec![0u8; rest];
    s.read_exact(&mut skip)?;
    Ok(s)
}

/// A burst as a browser or an app opening many connections at once makes: `total` SOCKS5
/// connections through `socks` to the echo server, `in_flight` at a time, each sending `size`
/// bytes and reading them back within `per_conn`. Returns one line per failed connection
/// (empty: all served). Bounded: every connection has its own deadline and the whole burst
/// ends after `total` attempts.
pub fn echo_burst(
    socks: u16,
    echo: u16,
    total: usize,
    in_flight: usize,
    size: usize,
    per_conn: Duration,
) -> Vec<String> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    let next = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let one = move |i: usize| -> anyhow::Result<()> {
        let data = payload(size, i as u64 + 1);
        let mut s = socks5_connect(socks, echo)?;
        s.set_read_timeout(Some(per_conn))?;
        s.set_write_timeout(Some(per_conn))?;
        s.write_all(&data)?;
        let mut back = vec![0u8; size];
        s.read_exact(&mut back)
            .with_context(|| format!("no echo within {per_conn:?}"))?;
        if back != data {
            bail!("echo altered");
        }
        Ok(())
    };
    let workers: Vec<_> = (0..in_flight.max(1))
        .map(|_| {
            let (next, failures) = (next.clone(), failures.clone());
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= total {
                    return;
                }
                if let Err(e) = one(i) {
                    failures
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(format!("connection {i}: {e:#}"));
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let v = failures.lock().unwrap_or_else(|p| p.into_inner()).clone();
    v
}

/// Send `data` through a SOCKS5 connection to the echo server and check it comes back intact.
/// Returns the bytes moved each way.
pub fn tcp_echo_through(socks: u16, echo: u16, data: &[u8]) -> anyhow::Result<u64> {
    let mut s = socks5_connect(socks, echo)?;
    let mut w = s.try_clone()?;
    let to_send = data.to_vec();
    // No half-close: some clients (sing-box) end the whole tunnel when their SOCKS side sends
    // FIN. Read exactly what was sent, then close.
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        for chunk in to_send.chunks(32 * 1024) {
            w.write_all(chunk)?;
        }
        Ok(())
    });
    let mut back = vec![0u8; data.len()];
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut got = 0;
    while got < back.len() {
        match s.read(&mut back[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Err(anyhow::anyhow!("reading the echo after {got} bytes: {e}")),
        }
    }
    back.truncate(got);
    writer.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
    if sha256(&back) != sha256(data) {
        bail!(
            "echo mismatch: sent {} bytes, got {} bytes back",
            data.len(),
            back.len()
        );
    }
    Ok(data.len() as u64)
}

/// As [`tcp_echo_through`], but the writes are spread evenly over `over` (a transfer that
/// lasts, e.g. across a client's port hops) while the echo is read concurrently. Returns the
/// bytes moved each way.
pub fn paced_echo_through(socks: u16, echo: u16, data: &[u8], over: Duration) -> anyhow::Result<u64> {
    const CHUNK: usize = 16 * 1024;
    let mut s = socks5_connect(socks, echo)?;
    let mut w = s.try_clone()?;
    let to_send = data.to_vec();
    let chunks = data.len().div_ceil(CHUNK).max(1) as u32;
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let start = Instant::now();
        for (k, chunk) in to_send.chunks(CHUNK).enumerate() {
            let at = start + over * k as u32 / chunks;
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            w.write_all(chunk)?;
        }
        Ok(())
    });
    let mut back = vec![0u8; data.len()];
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let deadline = Instant::now() + over + Duration::from_secs(60);
    let mut got = 0;
    while got < back.len() && Instant::now() < deadline {
        match s.read(&mut back[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Err(anyhow::anyhow!("reading the echo after {got} bytes: {e}")),
        }
    }
    back.truncate(got);
    writer.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
    if sha256(&back) != sha256(data) {
        bail!(
            "echo mismatch: sent {} bytes, got {} bytes back",
            data.len(),
            back.len()
        );
    }
    Ok(data.len() as u64)
}

/// Send datagrams through a SOCKS5 UDP association to the echo server; every datagram must
/// come back intact. Returns the payload bytes sent (each echoed once).
pub fn udp_echo_through(socks: u16, echo: u16, count: usize, size: usize) -> anyhow::Result<u64> {
    let mut ctl = TcpStream::connect((Ipv4Addr::LOCALHOST, socks))?;
    ctl.set_read_timeout(Some(Duration::from_secs(10)))?;
    ctl.write_all(&[5, 1, 0])?;
    let mut r = [0u8; 2];
    ctl.read_exact(&mut r)?;
    ctl.write_all(&[5, 3, 0, 1, 0, 0, 0, 0, 0, 0])?;
    let mut rep = [0u8; 10];
    ctl.read_exact(&mut rep)?;
    if rep[1] != 0 {
        bail!("socks UDP ASSOCIATE failed with code {}", rep[1]);
    }
    let relay = SocketAddr::from(([127, 0, 0, 1], u16::from_be_bytes([rep[8], rep[9]])));
    let u = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    u.set_read_timeout(Some(Duration::from_secs(5)))?;
    let p = echo.to_be_bytes();
    let mut total = 0u64;
    for i in 0..count {
        let body = payload(size, i as u64 + 1);
        let mut pkt = vec![0, 0, 0, 1, 127, 0, 0, 1, p[0], p[1]];
        pkt.extend_from_slice(&body);
        // UDP may drop: retry a few times; every datagram sent counts as upload, so a retry
        // would double count — instead, send once and require it back.
        u.send_to(&pkt, relay)?;
        let mut buf = vec![0u8; 65536];
        let (n, _) = u
            .recv_from(&mut buf)
            .with_context(|| format!("datagram {i} not echoed"))?;
        if buf.get(10..n) != Some(&body[..]) {
            bail!("datagram {i} came back altered");
        }
        total += size as u64;
    }
    drop(ctl);
    Ok(total)
}

/// `sslocal` as a SOCKS5 client of a Shadowsocks server.
pub fn sslocal(server_port: u16, method: &str, password: &str, dir: &Path) -> anyhow::Result<(Proc, u16)> {
    sslocal_from(server_port, method, password, dir, None)
}

/// `sslocal` whose connections to the server come from `source` (e.g. 127.0.0.3).
pub fn sslocal_from(
    server_port: u16,
    method: &str,
    password: &str,
    dir: &Path,
    source: Option<&str>,
) -> anyhow::Result<(Proc, u16)> {
    let bin = peer("sslocal")?;
    spawn_listening("sslocal", dir, |socks| {
        let mut cmd = Command::new(&bin);
        cmd.args([
            "-b",
            &format!("127.0.0.1:{socks}"),
            "-s",
            &format!("127.0.0.1:{server_port}"),
        ])
        .args(["-m", method, "-k", password, "-U"]);
        if let Some(src) = source {
            cmd.args(["--outbound-bind-addr", src]);
        }
        Ok(cmd)
    })
}

/// Start a client that listens on a port we pick, retrying on another port when the chosen one
/// was taken meanwhile (tests run in parallel) and the client exited.
pub(crate) fn spawn_listening(
    name: &str,
    dir: &Path,
    make: impl Fn(u16) -> anyhow::Result<Command>,
) -> anyhow::Result<(Proc, u16)> {
    for _ in 0..5 {
        let port = free_port();
        let mut p = Proc::spawn(name, make(port)?, dir.join(format!("{name}-{port}.log")))?;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return Ok((p, port));
            }
            if matches!(p.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    bail!("{name} never started listening (5 ports tried)")
}

/// The sing-box client with a SOCKS inbound and a Shadowsocks outbound.
pub fn sing_box_ss(
    server_port: u16,
    method: &str,
    password: &str,
    dir: &Path,
) -> anyhow::Result<(Proc, u16)> {
    let bin = peer("sing-box")?;
    spawn_listening("sing-box", dir, |socks| {
        let cfg = json!({
            "log": {"level": "warn"},
            "inbounds": [{"type": "socks", "tag": "in", "listen": "127.0.0.1", "listen_port": socks}],
            "outbounds": [{"type": "shadowsocks", "tag": "ss", "server": "127.0.0.1", "server_port": server_port,
                            "method": method, "password": password}],
        });
        let path = dir.join(format!("sing-box-{socks}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(&cfg)?)?;
        let mut cmd = Command::new(&bin);
        cmd.arg("run").arg("-c").arg(&path).current_dir(dir);
        Ok(cmd)
    })
}

/// The sing-box client with a SOCKS inbound and a TLS-family outbound: `protocol` is `trojan`
/// (`secret` = password) or `vless` (`secret` = uuid, no flow); `tls` is the outbound's `tls`
/// object as sing-box takes it (`None`: plaintext, e.g. VLESS behind an external terminator).
pub fn sing_box_tls(
    server_port: u16,
    protocol: &str,
    secret: &str,
    tls: Option<Value>,
    dir: &Path,
) -> anyhow::Result<(Proc, u16)> {
    sing_box_transport(server_port, protocol, secret, tls, None, dir)
}

/// As [`sing_box_tls`], with the outbound's V2Ray `transport` object as sing-box takes it
/// (`{"type": "ws", "path": …}`; `None`: raw TCP).
pub fn sing_box_transport(
    server_port: u16,
    protocol: &str,
    secret: &str,
    tls: Option<Value>,
    transport: Option<Value>,
    dir: &Path,
) -> anyhow::Result<(Proc, u16)> {
    let mut out = json!({"type": protocol, "tag": "out", "server": "127.0.0.1", "server_port": server_port});
    let key = if protocol == "vless" { "uuid" } else { "password" };
    if let Some(o) = out.as_object_mut() {
        o.insert(key.to_string(), json!(secret));
        if let Some(t) = tls {
            o.insert("tls".to_string(), t);
        }
        if let Some(t) = transport {
            o.insert("transport".to_string(), t);
        }
    }
    sing_box_outbound(out, dir)
}

/// Debian's V2Ray 4.34 as a client: SOCKS inbound, a `vless` (`secret` = uuid) or `trojan`
/// (`secret` = password) outbound with the given v4 `streamSettings`.
pub fn v2ray_client(
    server_port: u16,
    protocol: &str,
    secret: &str,
    stream: Value,
    dir: &Path,
) -> anyhow::Result<(Proc, u16)> {
    let settings = if protocol == "vless" {
        json!({"vnext": [{"address": "127.0.0.1", "port": server_port,
                          "users": [{"id": secret, "encryption": "none"}]}]})
    } else {
        json!({"servers": [{"address": "127.0.0.1", "port": server_port, "password": secret}]})
    };
    v2ray_outbound(
        json!({"protocol": protocol, "settings": settings, "streamSettings": stream}),
        dir,
    )
}

/// The sing-box client with a SOCKS inbound and the given outbound object (its `tag` is set).
pub fn sing_box_outbound(mut out: Value, dir: &Path) -> anyhow::Result<(Proc, u16)> {
    let bin = peer("sing-box")?;
    if let Some(o) = out.as_object_mut() {
        o.insert("tag".to_string(), json!("out"));
    }
    spawn_listening("sing-box", dir, |socks| {
        let cfg = json!({
            "log": {"level": "warn"},
            "inbounds": [{"type": "socks", "tag": "in", "listen": "127.0.0.1", "listen_port": socks}],
            "outbounds": [out],
        });
        let path = dir.join(format!("sing-box-{socks}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(&cfg)?)?;
        let mut cmd = Command::new(&bin);
        cmd.arg("run").arg("-c").arg(&path).current_dir(dir);
        Ok(cmd)
    })
}

/// Debian's v2ray (4.x) as a client: a SOCKS inbound and the given outbound object.
pub fn v2ray_outbound(out: Value, dir: &Path) -> anyhow::Result<(Proc, u16)> {
    let bin = peer("v2ray")?;
    spawn_listening("v2ray", dir, |socks| {
        let cfg = json!({
            "log": {"loglevel": "warning"},
            "inbounds": [{"listen": "127.0.0.1", "port": socks, "protocol": "socks",
                          "settings": {"auth": "noauth", "udp": false}}],
            "outbounds": [out],
        });
        let path = dir.join(format!("v2ray-{socks}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(&cfg)?)?;
        let mut cmd = Command::new(&bin);
        cmd.arg("-config").arg(&path).current_dir(dir);
        Ok(cmd)
    })
}

/// Whether this process sits in a network namespace whose only interface is loopback (read from
/// `/proc/self/net/dev`, which shows the namespace of the reading process).
pub fn in_loopback_only_netns() -> bool {
    let Ok(dev) = std::fs::read_to_string("/proc/self/net/dev") else {
        return false;
    };
    let names: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    names == ["lo"]
}

/// Runs the calling test inside a fresh network namespace with nothing but loopback (up): for
/// peers the project runs only there (Xray, from a third-party repackaging). Returns `true` in
/// that namespace — the caller goes on with its body — and `false` in the outer process once the
/// inner run passed; panics with the inner run's output when it failed. `test` is the test's
/// full name (`module::name` as libtest prints it). The inner run is the same test binary,
/// `--exact test`, under `unshare --net`, bounded by `within`.
#[allow(clippy::panic)]
pub fn run_in_loopback_netns(test: &str, within: Duration) -> bool {
    const INNER: &str = "V2SP_TEST_IN_NETNS";
    if std::env::var_os(INNER).is_some() {
        assert!(
            in_loopback_only_netns(),
            "{INNER} is set but this namespace has interfaces besides lo"
        );
        return true;
    }
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let mut cmd = Command::new("timeout");
    cmd.arg(format!("{}s", within.as_secs().max(1)))
        .args(["unshare", "--net", "--", "sh", "-c"])
        .arg(r#"ip link set lo up && exec "$0" --exact "$1" --nocapture --test-threads 1"#)
        .arg(&exe)
        .arg(test)
        .env(INNER, "1")
        .stdin(Stdio::null());
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {test} in a network namespace (unshare): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The inner libtest must have run exactly this one test and passed it.
    if !out.status.success() || !text.contains("1 passed") {
        panic!(
            "{test} in its loopback-only namespace failed ({}):\n{text}",
            out.status
        );
    }
    false
}

/// Xray (24.11.21, `scripts/install-test-deps.sh --with-xray`) as a client: a SOCKS inbound and
/// the given outbound object. Refuses to start outside a loopback-only network namespace.
pub fn xray_outbound(out: Value, dir: &Path) -> anyhow::Result<(Proc, u16)> {
    if !in_loopback_only_netns() {
        bail!("Xray runs only inside a loopback-only network namespace (see run_in_loopback_netns)");
    }
    let bin = peer("xray")?;
    spawn_listening("xray", dir, |socks| {
        let cfg = json!({
            "log": {"loglevel": "warning"},
            "inbounds": [{"listen": "127.0.0.1", "port": socks, "protocol": "socks",
                          "settings": {"auth": "noauth", "udp": true, "ip": "127.0.0.1"}}],
            "outbounds": [out],
        });
        let path = dir.join(format!("xray-{socks}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(&cfg)?)?;
        let mut cmd = Command::new(&bin);
        cmd.arg("run").arg("-c").arg(&path).current_dir(dir);
        Ok(cmd)
    })
}

/// VmRSS of `pid` in bytes (0 when the process is gone): what the adversarial tests bound.
pub fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Runs `nft` with `args` and `stdin` (the port-hopping tests, in a network namespace they
/// made): its standard output, or why it failed.
pub fn nft(args: &[&str], stdin: &str) -> anyhow::Result<String> {
    use std::io::Write as _;
    let mut child = Command::new("nft")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("nft (scripts/install-test-deps.sh installs nftables)")?;
    child
        .stdin
        .take()
        .context("nft's stdin")?
        .write_all(stdin.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("nft {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Echoes `data` over an open tunnel (sha256-checked); `Ok(false)` when the tunnel closed
/// before any byte came back, which is what a refused or blocked destination looks like from
/// behind a SOCKS client.
pub fn echo_or_refused(s: &mut TcpStream, data: &[u8]) -> anyhow::Result<bool> {
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    if s.write_all(data).is_err() {
        return Ok(false);
    }
    let mut back = vec![0u8; data.len()];
    let mut got = 0;
    while got < back.len() {
        match s.read(back.get_mut(got..).unwrap_or_default()) {
            Ok(0) | Err(_) if got == 0 => return Ok(false),
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => bail!("reading the echo after {got} bytes: {e}"),
        }
    }
    ensure!(
        sha256(back.get(..got).unwrap_or_default()) == sha256(data),
        "echo mismatch: {got} of {} bytes",
        data.len()
    );
    Ok(true)
}

/// A pebble (the ACME test CA) for one test.
pub struct Pebble {
    pub proc: Proc,
    /// The ACME directory URL.
    pub directory: String,
    /// Its listener certificate (made here: the Debian package ships none), to trust its API.
    pub listener_cert: PathBuf,
    /// The management API port (`/roots/0`: the issuing root).
    pub mgmt: u16,
}

/// How a test wants pebble.
pub struct PebbleOpts {
    /// Where its validation authority resolves names.
    pub dns_port: u16,
    /// Where it validates HTTP-01 and TLS-ALPN-01.
    pub http_port: u16,
    pub tls_port: u16,
    /// Validity of issued certificates (pebble's default when `None`).
    pub validity_secs: Option<u64>,
    /// Every order validates anew (no authorization reuse), so a renewal exercises the
    /// challenge too.
    pub fresh_authz: bool,
}

/// Starts pebble in `dir` and waits until its API listens.
pub fn pebble(dir: &Path, o: &PebbleOpts) -> anyhow::Result<Pebble> {
    let listener =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
    let (cert, key) = (dir.join("pebble-cert.pem"), dir.join("pebble-key.pem"));
    std::fs::write(&cert, listener.cert.pem())?;
    std::fs::write(&key, listener.signing_key.serialize_pem())?;
    let (api, mgmt) = (free_port(), free_port());
    let mut config = json!({
        "listenAddress": format!("127.0.0.1:{api}"),
        "managementListenAddress": format!("127.0.0.1:{mgmt}"),
        "certificate": cert,
        "privateKey": key,
        "httpPort": o.http_port,
        "tlsPort": o.tls_port,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false,
    });
    if let Some(v) = o.validity_secs {
        config["certificateValidityPeriod"] = json!(v);
    }
    let config_path = dir.join("pebble.json");
    std::fs::write(
        &config_path,
        serde_json::to_vec_pretty(&json!({ "pebble": config }))?,
    )?;
    let mut cmd = Command::new(peer("pebble")?);
    cmd.arg("-config")
        .arg(&config_path)
        .arg("-dnsserver")
        .arg(format!("127.0.0.1:{}", o.dns_port))
        .env("PEBBLE_VA_NOSLEEP", "1")
        // Deterministic: no nonces rejected at random (the badNonce retry is still in place).
        .env("PEBBLE_WFE_NONCEREJECT", "0");
    if o.fresh_authz {
        cmd.env("PEBBLE_AUTHZREUSE", "0");
    }
    let p = Proc::spawn("pebble", cmd, dir.join("pebble.log"))?;
    wait_tcp(api, Duration::from_secs(20)).with_context(|| format!("pebble\n{}", p.log()))?;
    Ok(Pebble {
        proc: p,
        directory: format!("https://127.0.0.1:{api}/dir"),
        listener_cert: cert,
        mgmt,
    })
}
