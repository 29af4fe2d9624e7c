//! What the control plane's end-to-end tests share: the real `v2sp` binary run against the
//! panel simulator with `--no-dataplane`, and the test itself standing in for the data plane
//! through shared memory (a fake writer of counters).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use v2sp_shared::shm::{CoreShm, DataplaneShm};
use v2sp_testsupport::panel_sim::PanelSim;

/// A temporary directory with the agent's config file.
pub(crate) struct Env {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) cfg: PathBuf,
}

impl Env {
    /// A config with these node entries, state and shared memory inside the directory.
    pub(crate) fn with_nodes(nodes: Vec<serde_json::Value>) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let cfg = serde_json::json!({
            "Log": {"Level": "info"},
            "StateDir": dir.path().join("state"),
            "Dataplane": {"ShmDir": dir.path().join("shm"), "AllowPrivateDestinations": true},
            "Nodes": nodes,
        });
        let path = dir.path().join("config.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
        Env { dir, cfg: path }
    }

    pub(crate) fn shm_dir(&self) -> PathBuf {
        self.dir.path().join("shm")
    }
}

/// The agent process; killed when dropped, so a failing test leaves no agent behind.
pub(crate) struct Agent(Child);

impl std::ops::Deref for Agent {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Agent {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `v2sp run --no-dataplane`, its log appended to the directory's `agent.log`.
pub(crate) fn spawn_agent(env: &Env) -> Agent {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(env.dir.path().join("agent.log"))
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_v2sp"))
        .args(["run", "--no-dataplane", "-c"])
        .arg(&env.cfg)
        .env("V2SP_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map(Agent)
        .unwrap()
}

pub(crate) fn log_of(env: &Env) -> String {
    std::fs::read_to_string(env.dir.path().join("agent.log")).unwrap_or_default()
}

pub(crate) fn kill(pid: u32, sig: &str) {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
}

/// SIGTERM, then wait (20 s at most) for the agent to exit.
pub(crate) fn sigterm(child: &mut Child) {
    kill(child.id(), "TERM");
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    panic!("agent did not stop on SIGTERM");
}

/// The test's stand-in for the data plane: one registered core.
pub(crate) struct FakeDataplane {
    pub(crate) shm: DataplaneShm,
    pub(crate) core: CoreShm,
}

impl FakeDataplane {
    pub(crate) fn attach(shm_dir: &Path) -> FakeDataplane {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(shm) = DataplaneShm::attach(shm_dir) {
                shm.register(1, 2).unwrap();
                let core = shm.core(0).unwrap();
                return FakeDataplane { shm, core };
            }
            assert!(
                Instant::now() < deadline,
                "control plane never created shared memory"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Pump traffic for users 1–3 for `dur`, calling `during(elapsed)` between rounds; adds what
/// was counted to `expected`.
pub(crate) fn pump(
    dp: &mut FakeDataplane,
    slot: u16,
    dur: Duration,
    expected: &mut BTreeMap<u32, (u64, u64)>,
    mut during: impl FnMut(Duration),
) {
    let start = Instant::now();
    let mut i = 0u64;
    while start.elapsed() < dur {
        for uid in 1..=3u32 {
            let (up, down) = (1000 + i * uid as u64, 7 * i + uid as u64);
            dp.core.add_traffic(slot, uid, up, down);
            let e = expected.entry(uid).or_default();
            e.0 += up;
            e.1 += down;
        }
        dp.core.tick();
        during(start.elapsed());
        i += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait (25 s at most, acknowledging harvests meanwhile) until the panel's totals for `node`
/// equal `expected`.
pub(crate) fn wait_totals(
    sim: &PanelSim,
    dp: &mut FakeDataplane,
    node: u32,
    expected: &BTreeMap<u32, (u64, u64)>,
    env: &Env,
) {
    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        dp.core.tick();
        let got = sim.totals(node);
        if &got == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "panel totals {got:?} != counted {expected:?}\n--- agent log ---\n{}",
            log_of(env)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
