//! Zero-downtime upgrade of the data plane (`v2sp upgrade`, `systemctl reload
//! v2sp-dataplane`): the running process starts the binary now installed at its own path as
//! a successor, hands it every listening socket, and once the successor serves, stops
//! accepting and drains its open connections.
//!
//! ```text
//!  old (serving)                         successor
//!  SIGUSR2
//!  dup every listening socket ──exec──▶  takes the sockets (V2SP_LISTEN_FDS), attaches to
//!  (fds inherited, described in env)     the shm, counts in a free block of core slots
//!                                        (V2SP_CORE_BASE), listens on every core,
//!  waits on the ready pipe      ◀── "R" ─ registers as the data plane
//!  MAINPID=successor (systemd)
//!  stops accepting (a connection the kernel already gave it is still served), drains for
//!  Dataplane.DrainSeconds, exits
//! ```
//!
//! Both processes count into their own per-core traffic files in the same shared memory,
//! which the control plane harvests alike, so nothing is lost or counted twice. If the
//! successor exits, fails or is not ready in time, it is killed and the old process goes on
//! as if nothing happened. The outcome is written to `upgrade-status` in the shm directory
//! for the `v2sp upgrade` verb.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use crate::net::handover::{self, Entry};
use crate::node::Engine;

/// The successor writes one byte to this descriptor when it serves.
pub const READY_FD_ENV: &str = "V2SP_UPGRADE_READY_FD";
/// The first core slot the successor counts in.
pub const CORE_BASE_ENV: &str = "V2SP_CORE_BASE";
/// Where the outcome of the last upgrade is written, in the shm directory.
pub use v2sp_shared::shm::UPGRADE_STATUS_FILE as STATUS_FILE;

/// How long a successor may take to serve (attach, read the config, start every core).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The executable to start: the path this process was started from, which now holds the
/// installed binary (`/proc/self/exe` names the replaced file, "… (deleted)").
pub fn installed_binary() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let s = exe.to_string_lossy();
    Ok(match s.strip_suffix(" (deleted)") {
        Some(p) => PathBuf::from(p),
        None => exe,
    })
}

/// A successor started and not yet serving: [`Pending::poll`] it from the main loop (which
/// goes on with its heartbeats and config generations meanwhile).
pub struct Pending {
    pub pid: u32,
    exe: PathBuf,
    child: Child,
    ready: std::sync::mpsc::Receiver<Option<bool>>,
    deadline: std::time::Instant,
}

/// A successor that serves.
pub struct Successor {
    pub pid: u32,
    /// It took the QUIC hand-off link (`node::quic_handoff`): the open QUIC connections of
    /// this process keep their packets.
    pub quic_handoff: bool,
    /// Never waited on: the successor outlives this process and is re-parented.
    _child: Child,
}

/// Starts the successor. `Err` says why it could not be started; nothing changed.
pub fn start_successor(engine: &Engine, args: &[std::ffi::OsString]) -> Result<Pending, String> {
    let socks = engine
        .handover_sockets(Duration::from_secs(5))
        .ok_or("not every core answered with its sockets in 5 s")?;
    let exe = installed_binary().map_err(|e| format!("cannot find this binary's path: {e}"))?;
    let (mut ready_r, ready_w) = std::io::pipe().map_err(|e| format!("pipe: {e}"))?;
    let ready_w = OwnedFd::from(ready_w);
    // The duplicates made for the successor lose close-on-exec; they are closed here right
    // after the spawn (nothing else in this process starts programs).
    let mut entries = Vec::with_capacity(socks.len());
    for (kind, addr, fd) in &socks {
        crate::sys::set_cloexec(fd.as_fd(), false).map_err(|e| format!("fcntl: {e}"))?;
        entries.push(Entry {
            kind: *kind,
            addr: *addr,
            fd: fd.as_raw_fd(),
        });
    }
    crate::sys::set_cloexec(ready_w.as_fd(), false).map_err(|e| format!("fcntl: {e}"))?;
    let mut cmd = Command::new(&exe);
    cmd.args(args)
        .env(handover::LISTEN_FDS_ENV, handover::encode(&entries))
        .env(READY_FD_ENV, ready_w.as_raw_fd().to_string());
    // The link over which the successor hands back the packets of this process's QUIC
    // connections; without it they are closed at the hand-over and their clients redial.
    #[cfg(feature = "quic")]
    let link = match crate::node::quic_handoff::pair_for_successor() {
        Ok(fd) => {
            crate::sys::set_cloexec(fd.as_fd(), false).map_err(|e| format!("fcntl: {e}"))?;
            cmd.env(
                crate::node::quic_handoff::FORWARD_FD_ENV,
                fd.as_raw_fd().to_string(),
            );
            Some(fd)
        }
        Err(e) => {
            tracing::warn!("no QUIC hand-off link ({e}): open QUIC connections will redial the successor");
            None
        }
    };
    let spawned = cmd.spawn();
    drop(socks);
    drop(ready_w);
    #[cfg(feature = "quic")]
    drop(link);
    let child = spawned.map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    let pid = child.id();
    tracing::info!(pid, exe = %exe.display(), sockets = entries.len(), "successor started; waiting until it serves");
    // The read ends with the byte, or with EOF when the successor exits (every copy of the
    // write end is then closed).
    let (tx, ready) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("v2sp-upgrade".into())
        .spawn(move || {
            let mut b = [0u8; 1];
            // `R`: serving; `Q`: serving, and it took the QUIC hand-off link.
            let _ = tx.send(match ready_r.read(&mut b) {
                Ok(1) if b[0] == b'R' => Some(false),
                Ok(1) if b[0] == b'Q' => Some(true),
                _ => None,
            });
        })
        .map_err(|e| format!("thread: {e}"))?;
    Ok(Pending {
        pid,
        exe,
        child,
        ready,
        deadline: std::time::Instant::now() + READY_TIMEOUT,
    })
}

impl Pending {
    /// `None` while the successor starts; then whether it serves, or why not (it is then
    /// killed and reaped, and this process goes on as before).
    pub fn poll(self) -> Result<Result<Successor, String>, Pending> {
        use std::sync::mpsc::TryRecvError;
        let why = match self.ready.try_recv() {
            Ok(Some(quic_handoff)) => {
                return Ok(Ok(Successor {
                    pid: self.pid,
                    quic_handoff,
                    _child: self.child,
                }))
            }
            Ok(None) | Err(TryRecvError::Disconnected) => {
                format!(
                    "the new data plane {} exited before it served",
                    self.exe.display()
                )
            }
            Err(TryRecvError::Empty) if std::time::Instant::now() < self.deadline => return Err(self),
            Err(TryRecvError::Empty) => {
                format!(
                    "the new data plane was not serving after {} s",
                    READY_TIMEOUT.as_secs()
                )
            }
        };
        Ok(Err(self.abandon(&why)))
    }

    /// Kills and reaps the successor; returns `why` with its exit status.
    pub fn abandon(mut self, why: &str) -> String {
        let _ = self.child.kill();
        let status = self.child.wait().map(|s| s.to_string()).unwrap_or_default();
        format!("{why} ({status}); this process goes on serving")
    }
}

/// In a successor: the ready pipe from the environment (take it first thing in `main`,
/// with the sockets). `None` in a process started normally.
pub fn ready_pipe_from_env() -> Option<std::fs::File> {
    let fd = std::env::var(READY_FD_ENV).ok()?.parse().ok()?;
    crate::sys::adopt_inherited_fd(fd).map(std::fs::File::from)
}

/// In a successor: tells the process it replaces that it serves now, and whether it took the
/// QUIC hand-off link (`Q`; an older predecessor passes none, so it never sees `Q`).
pub fn report_ready(mut pipe: std::fs::File, quic_handoff: bool) -> std::io::Result<()> {
    pipe.write_all(if quic_handoff { b"Q" } else { b"R" })
}

/// In a successor: the first core slot to count in (`V2SP_CORE_BASE`), if given.
pub fn core_base_from_env() -> Option<u16> {
    std::env::var(CORE_BASE_ENV).ok()?.parse().ok()
}

/// Writes the outcome of an upgrade for the `v2sp upgrade` verb: `ok <old pid> <new pid>`
/// or `failed <old pid> <reason>`. Written to a new file, then renamed over the old one.
pub fn write_status(shm_dir: &Path, line: &str) {
    let tmp = shm_dir.join(format!("{STATUS_FILE}.{}", std::process::id()));
    let done = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()))
        .and_then(|()| std::fs::rename(&tmp, shm_dir.join(STATUS_FILE)));
    if let Err(e) = done {
        let _ = std::fs::remove_file(&tmp);
        tracing::warn!("cannot write {}: {e}", shm_dir.join(STATUS_FILE).display());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn status_is_replaced_whole() {
        let d = tempfile::tempdir().unwrap();
        write_status(d.path(), "failed 1 broken");
        write_status(d.path(), "ok 1 2");
        assert_eq!(
            std::fs::read_to_string(d.path().join(STATUS_FILE)).unwrap(),
            "ok 1 2\n"
        );
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }
}
