//! A real client process in front of the load generator (sing-box, shoes, Xray): a SOCKS5
//! inbound on a free loopback port and the suite's protocol to the server under test. It
//! inherits the bench's pinning, so it runs on the load generator's CPUs and is counted with it
//! (`procstat::LOADGEN_HELPER_PID`).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The client process, killed on drop.
pub struct FrontProcess {
    child: Child,
    pub socks: SocketAddr,
}

/// Starts `name`'s client with its SOCKS5 inbound on a free port and waits (≤ 5 s per try,
/// 3 tries: a free port may be taken meanwhile) until it listens. `command(port, log_stem)`
/// writes the client's config for that port (files named from `log_stem` in `dir`) and returns
/// the command; its output goes to `<log_stem>.log` in `dir`.
pub fn spawn_front(
    name: &str,
    dir: &Path,
    mut command: impl FnMut(u16, &str) -> anyhow::Result<Command>,
) -> anyhow::Result<FrontProcess> {
    let mut last = String::new();
    for _ in 0..3 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let stem = format!("{}-client-{port}", name.to_ascii_lowercase().replace(' ', "-"));
        let mut cmd = command(port, &stem)?;
        let log_path = dir.join(format!("{stem}.log"));
        let log = std::fs::File::create(&log_path)?;
        let child = cmd
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn the {name} client"))?;
        let mut c = FrontProcess {
            child,
            socks: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if std::net::TcpStream::connect(c.socks).is_ok() {
                crate::procstat::LOADGEN_HELPER_PID.store(c.child.id(), Ordering::Relaxed);
                return Ok(c);
            }
            if !matches!(c.child.try_wait(), Ok(None)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        last = std::fs::read_to_string(&log_path).unwrap_or_default();
        drop(c);
    }
    bail!("the {name} client never listened; log:\n{last}")
}

impl Drop for FrontProcess {
    fn drop(&mut self) {
        let _ = crate::procstat::LOADGEN_HELPER_PID.compare_exchange(
            self.child.id(),
            0,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
