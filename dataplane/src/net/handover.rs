//! Listening sockets handed from a data plane to its successor (`v2sp upgrade`).
//!
//! The running process starts the successor with the sockets' descriptors inherited and
//! described in `V2SP_LISTEN_FDS`:
//!
//! ```text
//!   V2SP_LISTEN_FDS = entry ("," entry)*
//!   entry           = kind "@" socket-address "=" fd      kind = "tcp" | "udp"
//!   e.g.              tcp@[::]:8443=7,tcp@[::]:8443=8,udp@127.0.0.1:9000=9
//! ```
//!
//! A node's listener is one socket per core in a `SO_REUSEPORT` group; the successor takes
//! the very sockets (not new members of the group), so every connection already in an accept
//! queue is served: by the old process if it accepted it before it stopped, else by the new
//! one. Nothing from the environment is trusted: each descriptor must be open, a socket of the
//! named kind, bound to the named address (and listening, for TCP), or it is closed and the
//! core binds a fresh socket instead.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, OnceLock};

use socket2::{SockRef, Type};

/// The environment variable that lists inherited sockets.
pub const LISTEN_FDS_ENV: &str = "V2SP_LISTEN_FDS";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SockKind {
    Tcp,
    Udp,
}

impl SockKind {
    fn name(self) -> &'static str {
        match self {
            SockKind::Tcp => "tcp",
            SockKind::Udp => "udp",
        }
    }
}

/// One socket as the successor will find it.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: SockKind,
    pub addr: SocketAddr,
    pub fd: RawFd,
}

/// `V2SP_LISTEN_FDS` for `entries`.
pub fn encode(entries: &[Entry]) -> String {
    entries
        .iter()
        .map(|e| format!("{}@{}={}", e.kind.name(), e.addr, e.fd))
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses `V2SP_LISTEN_FDS`. Descriptors 0–2 and repeated descriptors are refused (the
/// whole value: a parent that writes nonsense is not half-trusted).
pub fn parse(s: &str) -> Result<Vec<Entry>, String> {
    let mut out: Vec<Entry> = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let bad = || format!("{LISTEN_FDS_ENV}: {item:?} is not kind@address=fd");
        let (head, fd) = item.rsplit_once('=').ok_or_else(bad)?;
        let (kind, addr) = head.split_once('@').ok_or_else(bad)?;
        let kind = match kind {
            "tcp" => SockKind::Tcp,
            "udp" => SockKind::Udp,
            _ => return Err(bad()),
        };
        let addr: SocketAddr = addr.parse().map_err(|_| bad())?;
        let fd: RawFd = fd.parse().map_err(|_| bad())?;
        if fd < 3 {
            return Err(format!("{LISTEN_FDS_ENV}: descriptor {fd} is a standard stream"));
        }
        if out.iter().any(|e| e.fd == fd) {
            return Err(format!("{LISTEN_FDS_ENV}: descriptor {fd} listed twice"));
        }
        out.push(Entry { kind, addr, fd });
    }
    Ok(out)
}

/// Whether `fd` is what `kind`/`addr` say: a socket of that type bound to that address,
/// listening if TCP.
fn check(fd: &OwnedFd, kind: SockKind, addr: SocketAddr) -> Result<(), String> {
    let s = SockRef::from(fd);
    let ty = s.r#type().map_err(|e| format!("not a socket: {e}"))?;
    let want = match kind {
        SockKind::Tcp => Type::STREAM,
        SockKind::Udp => Type::DGRAM,
    };
    if ty != want {
        return Err(format!("a socket of type {ty:?}, not {want:?}"));
    }
    let local = s
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or("not bound to an IP address")?;
    if local != addr {
        return Err(format!("bound to {local}, not {addr}"));
    }
    if kind == SockKind::Tcp && !s.is_listener().unwrap_or(false) {
        return Err("not listening".into());
    }
    Ok(())
}

type Pool = HashMap<(SockKind, SocketAddr), Vec<OwnedFd>>;

fn pool() -> &'static Mutex<Pool> {
    static POOL: OnceLock<Mutex<Pool>> = OnceLock::new();
    POOL.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Takes the sockets `V2SP_LISTEN_FDS` lists into this process (call first thing in `main`,
/// before any other file is opened, so that no descriptor number can be claimed twice).
/// The variable stays set but is never passed on: a successor gets its own list.
/// Returns how many sockets are usable and a line per one refused.
pub fn inherit_from_env() -> (usize, Vec<String>) {
    let Some(v) = std::env::var_os(LISTEN_FDS_ENV) else {
        return (0, Vec::new());
    };
    let entries = match parse(&v.to_string_lossy()) {
        Ok(e) => e,
        Err(e) => return (0, vec![e]),
    };
    let mut problems = Vec::new();
    let mut ok = 0;
    let mut p = pool().lock().unwrap_or_else(|e| e.into_inner());
    for e in entries {
        let Some(fd) = crate::sys::adopt_inherited_fd(e.fd) else {
            problems.push(format!(
                "inherited {}@{} (fd {}): not open",
                e.kind.name(),
                e.addr,
                e.fd
            ));
            continue;
        };
        if let Err(why) = check(&fd, e.kind, e.addr) {
            problems.push(format!(
                "inherited {}@{} (fd {}): {why}; closed",
                e.kind.name(),
                e.addr,
                e.fd
            ));
            continue;
        }
        ok += 1;
        p.entry((e.kind, e.addr)).or_default().push(fd);
    }
    (ok, problems)
}

/// An inherited socket for `kind`/`addr`, if one is left (each is handed out once).
pub fn take(kind: SockKind, addr: SocketAddr) -> Option<socket2::Socket> {
    let mut p = pool().lock().unwrap_or_else(|e| e.into_inner());
    let list = p.get_mut(&(kind, addr))?;
    let fd = list.pop()?;
    if list.is_empty() {
        p.remove(&(kind, addr));
    }
    Some(socket2::Socket::from(fd))
}

/// Closes inherited sockets no core took (a node the new config no longer has, or more cores
/// in the old process than in this one). Connections still queued on a closed TCP listener
/// are reset by the kernel: the count is logged. Returns how many were closed.
pub fn close_unclaimed() -> usize {
    let mut p = pool().lock().unwrap_or_else(|e| e.into_inner());
    let mut n = 0;
    for ((kind, addr), fds) in p.drain() {
        for fd in fds {
            tracing::warn!(kind = kind.name(), %addr, fd = fd.as_raw_fd(), "closing an inherited socket no node took");
            n += 1;
        }
    }
    n
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn encode_and_parse_agree() {
        let list = vec![
            Entry {
                kind: SockKind::Tcp,
                addr: "[::]:8443".parse().unwrap(),
                fd: 7,
            },
            Entry {
                kind: SockKind::Udp,
                addr: "127.0.0.1:9000".parse().unwrap(),
                fd: 9,
            },
        ];
        let s = encode(&list);
        assert_eq!(s, "tcp@[::]:8443=7,udp@127.0.0.1:9000=9");
        assert_eq!(parse(&s).unwrap(), list);
        assert_eq!(parse("").unwrap(), vec![]);
    }

    #[test]
    fn nonsense_is_refused_whole() {
        for bad in [
            "tcp@[::]:8443",
            "sctp@[::]:1=5",
            "tcp@localhost:1=5",
            "tcp@127.0.0.1:1=x",
            "tcp@127.0.0.1:1=2",
            "tcp@127.0.0.1:1=5,udp@127.0.0.1:1=5",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_socket_is_checked_against_its_description() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let fd = OwnedFd::from(l);
        assert!(check(&fd, SockKind::Tcp, addr).is_ok());
        assert!(check(&fd, SockKind::Udp, addr).is_err(), "wrong kind");
        let other: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(check(&fd, SockKind::Tcp, other).is_err(), "wrong address");
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let ua = u.local_addr().unwrap();
        assert!(check(&OwnedFd::from(u), SockKind::Udp, ua).is_ok());
        // bound but not listening
        let s = socket2::Socket::new(socket2::Domain::IPV4, Type::STREAM, None).unwrap();
        s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        let sa = s.local_addr().unwrap().as_socket().unwrap();
        assert!(check(&OwnedFd::from(s), SockKind::Tcp, sa).is_err());
    }
}
