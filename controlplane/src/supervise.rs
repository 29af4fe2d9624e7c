//! Running `v2sp-dataplane` as a child when systemd does not run it as its own unit.
//! A crashed data plane is restarted with backoff; its counters survive in shared memory.
//!
//! The data plane deliberately outlives a control plane that is killed (connections keep
//! flowing). A restarted control plane therefore first looks for a live data plane registered
//! in shared memory and adopts it instead of starting a second one (two would share the
//! SO_REUSEPORT ports and split the traffic between an up-to-date and a stale process).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub struct DataplaneChild {
    bin: PathBuf,
    shm_dir: PathBuf,
    child: Option<Child>,
    /// A data plane started by an earlier control plane (not our child).
    adopted: Option<u32>,
    restarts: u32,
    next_start: Instant,
}

/// `--dataplane-bin`, `$V2SP_DATAPLANE_BIN`, next to this executable, or `$PATH`.
fn locate(explicit: Option<PathBuf>) -> PathBuf {
    if let Some(p) = explicit.or_else(|| std::env::var_os("V2SP_DATAPLANE_BIN").map(PathBuf::from)) {
        return p;
    }
    if let Ok(me) = std::env::current_exe() {
        let sib = me.with_file_name("v2sp-dataplane");
        if sib.exists() {
            return sib;
        }
    }
    PathBuf::from("v2sp-dataplane")
}

impl DataplaneChild {
    /// Adopt `running` (the pid registered in shared memory, if alive) or start a new one.
    pub fn start(
        bin: Option<PathBuf>,
        shm_dir: &Path,
        running: Option<u32>,
    ) -> anyhow::Result<DataplaneChild> {
        let mut d = DataplaneChild {
            bin: locate(bin),
            shm_dir: shm_dir.to_path_buf(),
            child: None,
            adopted: running.filter(|&p| alive(p)),
            restarts: 0,
            next_start: Instant::now(),
        };
        match d.adopted {
            Some(pid) => tracing::info!(pid, "adopting the running data plane"),
            None => d.spawn()?,
        }
        Ok(d)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let child = Command::new(&self.bin)
            .arg("--shm-dir")
            .arg(&self.shm_dir)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start the data plane {}: {e}", self.bin.display()))?;
        tracing::info!(pid = child.id(), bin = %self.bin.display(), "data plane started");
        self.child = Some(child);
        Ok(())
    }

    /// Restart the child if it died (backoff 1 s doubling to 30 s).
    pub fn check(&mut self) {
        if let Some(pid) = self.adopted {
            if alive(pid) {
                return;
            }
            tracing::error!(pid, "adopted data plane exited; starting a new one");
            self.adopted = None;
        }
        if let Some(c) = self.child.as_mut() {
            match c.try_wait() {
                Ok(None) => return,
                Ok(Some(status)) => {
                    tracing::error!(%status, "data plane exited; restarting");
                    self.child = None;
                    self.restarts += 1;
                    let backoff =
                        Duration::from_secs(1u64 << self.restarts.min(5)).min(Duration::from_secs(30));
                    self.next_start = Instant::now() + backoff;
                }
                Err(e) => tracing::warn!(error = %e, "cannot poll the data plane"),
            }
        }
        if self.child.is_none() && Instant::now() >= self.next_start {
            if let Err(e) = self.spawn() {
                tracing::error!(error = %e, "data plane restart failed");
                self.next_start = Instant::now() + Duration::from_secs(30);
            }
        }
    }

    /// SIGTERM, wait up to `grace` for the drain, then SIGKILL.
    pub fn stop(mut self, grace: Duration) {
        if let Some(pid) = self.adopted.take() {
            crate::sys::signal_pid(pid, libc::SIGTERM);
            let deadline = Instant::now() + grace;
            while alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if alive(pid) {
                tracing::warn!(pid, "data plane did not stop in time; killing it");
                crate::sys::signal_pid(pid, libc::SIGKILL);
            }
            return;
        }
        let Some(mut c) = self.child.take() else { return };
        crate::sys::signal_pid(c.id(), libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        tracing::warn!("data plane did not stop in time; killing it");
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Whether a process exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3 (after the parenthesised name) is the state; Z = zombie.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}
