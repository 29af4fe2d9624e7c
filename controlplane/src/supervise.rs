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
    /// A data plane started by an earlier control plane (not our child), held by a pidfd.
    adopted: Option<crate::sys::PidFd>,
    /// Data planes we started that handed over to a successor and drain (reaped when done).
    draining: Vec<Child>,
    /// Adopted data planes that handed over to a successor and drain.
    draining_adopted: Vec<crate::sys::PidFd>,
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
            adopted: running.and_then(adoptable),
            draining: Vec::new(),
            draining_adopted: Vec::new(),
            restarts: 0,
            next_start: Instant::now(),
        };
        match &d.adopted {
            Some(p) => tracing::info!(pid = p.pid(), "adopting the running data plane"),
            None => d.spawn()?,
        }
        Ok(d)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--shm-dir").arg(&self.shm_dir);
        let child = crate::sys::unblocked_signals(&mut cmd)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start the data plane {}: {e}", self.bin.display()))?;
        tracing::info!(pid = child.id(), bin = %self.bin.display(), "data plane started");
        self.child = Some(child);
        Ok(())
    }

    /// Restart the child if it died (backoff 1 s doubling to 30 s). `registered` is the live
    /// data plane registered in shared memory: after an upgrade (`v2sp upgrade`) the process
    /// we started drains and exits while its successor serves; the successor is adopted, not
    /// doubled by a restart.
    pub fn check(&mut self, registered: Option<u32>) {
        let mine = match (&self.adopted, &self.child) {
            (Some(p), _) => Some(p.pid()),
            (None, Some(c)) => Some(c.id()),
            _ => None,
        };
        if let Some(pid) = registered.filter(|&r| Some(r) != mine) {
            if let Some(p) = adoptable(pid) {
                tracing::info!(pid, "a successor data plane serves (upgrade); following it");
                if let Some(old) = self.adopted.replace(p) {
                    self.draining_adopted.push(old);
                }
                // The one we started drains and exits on its own; reap it then.
                if let Some(c) = self.child.take() {
                    self.draining.push(c);
                }
            }
        }
        self.draining
            .retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_)) | Err(_)));
        self.draining_adopted.retain(|p| !p.exited());
        if let Some(p) = &self.adopted {
            if !p.exited() {
                return;
            }
            tracing::error!(pid = p.pid(), "adopted data plane exited; starting a new one");
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
        // Predecessors still draining after an upgrade stop now too.
        let mut draining = std::mem::take(&mut self.draining);
        for c in &draining {
            crate::sys::signal_pid(c.id(), libc::SIGTERM);
        }
        for p in std::mem::take(&mut self.draining_adopted) {
            let _ = p.signal(libc::SIGTERM);
        }
        self.stop_current(grace);
        for c in &mut draining {
            if !matches!(c.try_wait(), Ok(Some(_))) {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    fn stop_current(mut self, grace: Duration) {
        if let Some(p) = self.adopted.take() {
            let _ = p.signal(libc::SIGTERM);
            let deadline = Instant::now() + grace;
            while !p.exited() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if !p.exited() {
                tracing::warn!(pid = p.pid(), "data plane did not stop in time; killing it");
                let _ = p.signal(libc::SIGKILL);
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

/// The process registered in shared memory as the data plane, if it is alive and is one: a
/// pidfd taken first, then its executable checked, so the handle cannot name another process
/// that got the same pid later (and a stale or forged pid is never signalled).
pub(crate) fn adoptable(pid: u32) -> Option<crate::sys::PidFd> {
    let fd = crate::sys::PidFd::open(pid).ok()?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let name = exe.file_name()?.to_string_lossy().into_owned();
    // "v2sp-dataplane", or "v2sp-dataplane (deleted)" after an upgrade replaced the file.
    if !name.starts_with("v2sp-dataplane") {
        tracing::warn!(pid, exe = %exe.display(), "the pid registered as the data plane is another program; not adopting it");
        return None;
    }
    // Checked after the exe: the pid was still this process when /proc was read.
    (!fd.exited() && alive(pid)).then_some(fd)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn child_sigblk(unblocked: bool) -> String {
        let mut cmd = Command::new("cat");
        cmd.arg("/proc/self/status").stdout(std::process::Stdio::piped());
        if unblocked {
            crate::sys::unblocked_signals(&mut cmd);
        }
        let out = cmd.output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("SigBlk:"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// The control plane blocks SIGTERM to wait for it with sigwait; the data plane it starts
    /// must not inherit that (it was: every stop ended in SIGKILL after the timeout).
    #[test]
    fn children_start_with_no_signal_blocked() {
        std::thread::spawn(|| {
            crate::sys::block_signals();
            assert_ne!(
                child_sigblk(false),
                "0000000000000000",
                "the mask is inherited by default"
            );
            assert_eq!(child_sigblk(true), "0000000000000000");
        })
        .join()
        .unwrap();
    }

    /// Issue 11: a pid from shared memory that is not a data plane is never adopted (and so
    /// never signalled); a data plane is, and is stopped through its pidfd.
    #[test]
    fn adopts_only_a_data_plane_and_signals_it_by_pidfd() {
        let mut other = Command::new("sleep").arg("30").spawn().unwrap();
        assert!(adoptable(other.id()).is_none(), "not a data plane");
        let _ = other.kill();
        let _ = other.wait();
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("v2sp-dataplane");
        std::fs::copy("/bin/sleep", &fake).unwrap();
        let mut dp = Command::new(&fake).arg("30").spawn().unwrap();
        let p = adoptable(dp.id()).expect("a data plane is adopted");
        assert!(!p.exited());
        let child = DataplaneChild {
            bin: fake.clone(),
            shm_dir: dir.path().to_path_buf(),
            child: None,
            adopted: Some(p),
            draining: Vec::new(),
            draining_adopted: Vec::new(),
            restarts: 0,
            next_start: Instant::now(),
        };
        child.stop(Duration::from_secs(5));
        let status = dp.wait().unwrap();
        assert!(!status.success(), "stopped by a signal: {status:?}");
    }
}
