//! The one port allocator of the test suite.
//!
//! A test that picks a port, releases it and hands it to a server later races with everything
//! else on the machine that binds port 0 or opens a connection: the kernel gives those sockets
//! ports from its ephemeral range (`net.ipv4.ip_local_port_range`, 32768–60999 by default) and
//! may give out the very port just released. That is how a node and the panel simulator once
//! both got 127.0.0.1:46131 on a fresh machine.
//!
//! So ports handed out here come from **outside** the ephemeral range (the larger gap it leaves),
//! where the kernel never places a `bind(0)` socket or a connection's local end; and each is
//! claimed across processes (cargo runs test binaries, nextest runs tests, in parallel) by an
//! advisory lock on `/tmp/v2sp-test-ports/<port>` held until this process exits. A port is
//! also checked free (TCP and UDP on 127.0.0.1) before it is handed out, for anything on the
//! machine that was not started by these tests. Servers that may take any port keep binding
//! port 0: the kernel cannot give them a port that is held, nor one this allocator hands out.

use std::fs::File;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::sync::Mutex;

/// Locks held by this process (dropped, and so released, only at exit).
static CLAIMED: Mutex<Vec<(u16, File)>> = Mutex::new(Vec::new());

const LOCK_DIR: &str = "/tmp/v2sp-test-ports";

/// The range this allocator draws from: the larger of the two gaps the ephemeral range leaves
/// between 1024 and 65535 (v2sp's own sysctl file widens the ephemeral range to 10000–65535,
/// leaving 1024–9999).
fn pool() -> (u16, u16) {
    let (lo, hi) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|v| v.parse::<u32>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    // Well-known services cluster low; start the low gap at 2000.
    let below = (2000u32, lo.saturating_sub(1));
    let above = (hi.saturating_add(1), 65535u32);
    let size = |(a, b): (u32, u32)| b.saturating_sub(a);
    let (a, b) = if size(below) >= size(above) { below } else { above };
    (
        u16::try_from(a).unwrap_or(u16::MAX),
        u16::try_from(b).unwrap_or(u16::MAX),
    )
}

/// A loopback port free for TCP and UDP that no other test process holds and that this
/// process has not handed out before. Panics after a bounded number of tries (the range has
/// thousands of ports; running out means something leaks claims).
#[allow(clippy::panic)]
pub fn claim() -> u16 {
    let (lo, hi) = pool();
    let _ = std::fs::create_dir_all(LOCK_DIR);
    let span = u32::from(hi - lo) + 1;
    // Start where the pid points, so parallel processes rarely contend for the same locks.
    let mut at = (std::process::id().wrapping_mul(2654435761) ^ nanos()) % span;
    let mut claimed = CLAIMED.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..span.min(20_000) {
        at = (at + 1) % span;
        let port = lo + u16::try_from(at).unwrap_or(0);
        if claimed.iter().any(|(p, _)| *p == port) {
            continue;
        }
        let Ok(f) = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(format!("{LOCK_DIR}/{port}"))
        else {
            continue;
        };
        if f.try_lock().is_err() {
            continue;
        }
        let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, port));
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, port));
        if tcp.is_err() || udp.is_err() {
            continue;
        }
        claimed.push((port, f));
        return port;
    }
    panic!("no free test port in {lo}..={hi}");
}

fn nanos() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_outside_the_ephemeral_range_and_bindable() {
        let (lo, hi) = pool();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let p = claim();
            assert!((lo..=hi).contains(&p));
            assert!(seen.insert(p), "port {p} handed out twice");
        }
        // A kernel-chosen port is never one of ours.
        for _ in 0..200 {
            let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            assert!(!seen.contains(&l.local_addr().unwrap().port()));
        }
    }

    #[test]
    fn another_process_cannot_claim_a_held_port() {
        let p = claim();
        let f = File::options()
            .write(true)
            .open(format!("{LOCK_DIR}/{p}"))
            .unwrap();
        // flock is per open file description: a second open of the file, as another process
        // would make, cannot take the lock while we hold it.
        assert!(f.try_lock().is_err());
    }
}
