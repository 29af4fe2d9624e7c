//! `v2sp upgrade`: asks the running data plane to hand its listening sockets to a successor
//! started from the binary now installed, and waits for the outcome. The data plane does the
//! work (see `v2sp_dataplane::upgrade`); this verb finds it, signals it (SIGUSR2 through a
//! pidfd, after checking that the registered pid is a data plane) and reports what it wrote.

use std::path::Path;
use std::time::{Duration, Instant};

use v2sp_shared::shm::{ControlShm, UPGRADE_STATUS_FILE};

/// What the data plane being replaced reported.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Upgraded { old: u32, new: u32 },
    Failed { old: u32, why: String },
}

/// Parses the status line the data plane writes.
pub fn parse_status(s: &str) -> Option<Outcome> {
    let mut it = s.trim().splitn(3, ' ');
    match (it.next()?, it.next()?.parse().ok()?) {
        ("ok", old) => Some(Outcome::Upgraded {
            old,
            new: it.next()?.parse().ok()?,
        }),
        ("failed", old) => Some(Outcome::Failed {
            old,
            why: it.next().unwrap_or("").to_string(),
        }),
        _ => None,
    }
}

/// Runs the verb; the process exit code.
pub fn run(dir: &Path, timeout: Duration) -> i32 {
    match upgrade(dir, timeout) {
        Ok(Outcome::Upgraded { old, new }) => {
            println!("upgraded: data plane pid {new} serves; pid {old} drains its open connections (Dataplane.DrainSeconds) and exits");
            0
        }
        Ok(Outcome::Failed { old, why }) => {
            eprintln!("upgrade failed, pid {old} goes on serving: {why}");
            1
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

fn upgrade(dir: &Path, timeout: Duration) -> anyhow::Result<Outcome> {
    let shm = ControlShm::open_existing(dir)
        .map_err(|e| anyhow::anyhow!("{e} (is v2sp running with Dataplane.ShmDir {}?)", dir.display()))?;
    let pid = shm.dataplane_pid();
    if pid == 0 {
        anyhow::bail!("no data plane is running");
    }
    let Some(p) = crate::supervise::adoptable(pid) else {
        anyhow::bail!("pid {pid}, registered as the data plane, is not one");
    };
    let status = dir.join(UPGRADE_STATUS_FILE);
    match std::fs::remove_file(&status) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => anyhow::bail!("cannot remove {}: {e}", status.display()),
    }
    p.signal(libc::SIGUSR2)
        .map_err(|e| anyhow::anyhow!("cannot signal the data plane (pid {pid}): {e}"))?;
    eprintln!("asked the data plane (pid {pid}) to start its successor; waiting…");
    let end = Instant::now() + timeout;
    loop {
        if let Ok(s) = std::fs::read_to_string(&status) {
            match parse_status(&s) {
                Some(o) => return Ok(o),
                None => anyhow::bail!("{} says {s:?}", status.display()),
            }
        }
        if p.exited() {
            anyhow::bail!("the data plane (pid {pid}) exited without reporting an outcome");
        }
        if Instant::now() >= end {
            anyhow::bail!(
                "no outcome after {} s; see the data plane's log",
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_parse() {
        assert_eq!(
            parse_status("ok 10 20\n"),
            Some(Outcome::Upgraded { old: 10, new: 20 })
        );
        assert_eq!(
            parse_status("failed 10 the new data plane exited (exit status: 1)"),
            Some(Outcome::Failed {
                old: 10,
                why: "the new data plane exited (exit status: 1)".into()
            })
        );
        assert_eq!(parse_status("ok 10"), None);
        assert_eq!(parse_status("maybe 1 2"), None);
        assert_eq!(parse_status(""), None);
    }
}
