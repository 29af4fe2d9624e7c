//! I/O backend selection: io_uring when the probe passes, epoll otherwise.

use std::fmt;

/// The I/O backend a core uses for its sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoBackend {
    Uring,
    Epoll,
}

impl fmt::Display for IoBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoBackend::Uring => "uring",
            IoBackend::Epoll => "epoll",
        })
    }
}

/// Decides the backend. Precedence: `V2SP_IO` env (`uring`/`epoll`) > config `io` > probe.
/// `V2SP_IO_PROBE_FAIL=1` makes the probe fail (test hook). Forcing `uring` when the probe
/// fails falls back to epoll with the reason, because a data plane that cannot serve is worse.
pub fn select_backend(config_io: &str) -> (IoBackend, String) {
    let env = std::env::var("V2SP_IO").ok();
    let probe_fail = std::env::var("V2SP_IO_PROBE_FAIL")
        .map(|v| v == "1")
        .unwrap_or(false);
    decide(env.as_deref(), config_io, || {
        if probe_fail {
            Err("probe disabled by V2SP_IO_PROBE_FAIL=1".to_string())
        } else {
            crate::sys::uring::probe()
        }
    })
}

/// Pure decision (tested): `probe` runs only when uring is a candidate.
pub fn decide(
    env: Option<&str>,
    config_io: &str,
    probe: impl FnOnce() -> Result<(), String>,
) -> (IoBackend, String) {
    let want = env
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| config_io.trim().to_ascii_lowercase());
    match want.as_str() {
        "epoll" => (IoBackend::Epoll, "forced epoll".into()),
        forced => match probe() {
            Ok(()) => (IoBackend::Uring, "io_uring probe passed".into()),
            Err(why) if forced == "uring" => (
                IoBackend::Epoll,
                format!("uring requested but unavailable ({why}); using epoll"),
            ),
            Err(why) => (IoBackend::Epoll, format!("io_uring unavailable ({why})")),
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn env_wins_over_config() {
        assert_eq!(decide(Some("epoll"), "uring", || Ok(())).0, IoBackend::Epoll);
        assert_eq!(decide(Some("uring"), "epoll", || Ok(())).0, IoBackend::Uring);
        assert_eq!(decide(None, "epoll", || Ok(())).0, IoBackend::Epoll);
        assert_eq!(decide(Some(""), "auto", || Ok(())).0, IoBackend::Uring);
    }

    #[test]
    fn failed_probe_means_epoll() {
        assert_eq!(decide(None, "auto", || Err("no".into())).0, IoBackend::Epoll);
        let (b, why) = decide(Some("uring"), "", || Err("seccomp".into()));
        assert_eq!(b, IoBackend::Epoll);
        assert!(why.contains("seccomp"));
    }

    #[test]
    fn real_probe_runs_without_panicking() {
        let _ = crate::sys::uring::probe();
    }
}
