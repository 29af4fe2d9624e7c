//! The HTTP-01 responder: a plain HTTP listener that answers
//! `GET /.well-known/acme-challenge/<token>` with the key authorization, only while an order
//! is being validated (it stops when dropped). A request head of at most 4 KiB read within 5 s;
//! anything else gets 404.
//!
//! Connections are answered concurrently, one short-lived thread each, at most
//! [`MAX_CONNS`] at once and [`MAX_PER_IP`] from one address; past either cap a connection is
//! closed at once. Served one at a time, a few silent connections (5 s each) would have kept the
//! CA's validators (several vantage points, each with its own timeout) from ever being
//! answered; the per-address cap keeps one client from taking every place.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const PREFIX: &str = "/.well-known/acme-challenge/";
const MAX_HEAD: usize = 4096;
const READ_WITHIN: Duration = Duration::from_secs(5);
/// Connections answered at once.
pub(crate) const MAX_CONNS: usize = 64;
/// Connections answered at once from one address.
pub(crate) const MAX_PER_IP: usize = 4;

type Tokens = Arc<Mutex<HashMap<String, String>>>;

pub(crate) struct Responder {
    tokens: Tokens,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Responder {
    /// Binds `listen` now (so a taken port is an error before the challenge is answered).
    pub(crate) fn start(listen: SocketAddr) -> std::io::Result<Responder> {
        let listener = TcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        let tokens: Tokens = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (t, s) = (tokens.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("acme-http01".into())
            .spawn(move || serve(&listener, &t, &s))?;
        Ok(Responder {
            tokens,
            stop,
            thread: Some(thread),
        })
    }

    /// Serve `key_authorization` for `token` from now on.
    pub(crate) fn add(&self, token: &str, key_authorization: &str) {
        if let Ok(mut m) = self.tokens.lock() {
            m.insert(token.to_string(), key_authorization.to_string());
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connections being answered, per source address.
type Active = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// A place among the connections being answered; given back when dropped.
struct Place {
    active: Active,
    ip: IpAddr,
}

impl Place {
    fn take(active: &Active, ip: IpAddr) -> Option<Place> {
        let mut m = active.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = m.values().sum();
        let here = m.get(&ip).copied().unwrap_or(0);
        if total >= MAX_CONNS || here >= MAX_PER_IP {
            return None;
        }
        m.insert(ip, here + 1);
        Some(Place {
            active: active.clone(),
            ip,
        })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut m = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

fn serve(listener: &TcpListener, tokens: &Tokens, stop: &AtomicBool) {
    let active: Active = Arc::default();
    let mut refused = 0u64;
    while !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((s, peer)) => {
                let Some(place) = Place::take(&active, peer.ip()) else {
                    refused += 1;
                    if refused.is_power_of_two() {
                        tracing::warn!(%peer, refused, "ACME HTTP-01 responder: too many connections at once; closing new ones");
                    }
                    continue; // `s` dropped: closed
                };
                let tokens = tokens.clone();
                let spawned = std::thread::Builder::new()
                    .name("acme-http01-conn".into())
                    .stack_size(64 << 10)
                    .spawn(move || {
                        let _place = place;
                        if let Err(e) = answer(s, &tokens) {
                            tracing::debug!(%peer, error = %e, "ACME HTTP-01 responder: request failed");
                        }
                    });
                if let Err(e) = spawned {
                    tracing::warn!("ACME HTTP-01 responder: cannot start a thread: {e}");
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn answer(mut s: TcpStream, tokens: &Tokens) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_write_timeout(Some(READ_WITHIN))?;
    let deadline = Instant::now() + READ_WITHIN;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || head.len() >= MAX_HEAD {
            return Ok(()); // too slow or too long: close without an answer
        }
        s.set_read_timeout(Some(left))?;
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(buf.get(..n).unwrap_or_default());
    }
    let body = challenge_token(&head).and_then(|t| tokens.lock().ok().and_then(|m| m.get(t).cloned()));
    let reply = match body {
        Some(b) => format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
            b.len()
        ),
        None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string(),
    };
    s.write_all(reply.as_bytes())
}

/// The token of a `GET /.well-known/acme-challenge/<token> HTTP/1.x` request head (tokens are
/// base64url, RFC 8555 §8.3); `None` for anything else.
pub(crate) fn challenge_token(head: &[u8]) -> Option<&str> {
    let line_end = head.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(head.get(..line_end)?).ok()?;
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || method != "GET" || !version.starts_with("HTTP/1.") {
        return None;
    }
    // Absolute form (`http://host/...`) is allowed by HTTP/1.1; validators send origin form.
    let path = match target.strip_prefix("http://") {
        Some(rest) => &rest[rest.find('/')?..],
        None => target,
    };
    let token = path.strip_prefix(PREFIX)?;
    let ok = !token.is_empty()
        && token
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
    ok.then_some(token)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn challenge_paths() {
        fn t(s: &str) -> Option<&str> {
            challenge_token(s.as_bytes())
        }
        assert_eq!(
            t("GET /.well-known/acme-challenge/abc-DEF_123 HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some("abc-DEF_123")
        );
        assert_eq!(
            t("GET http://a.test/.well-known/acme-challenge/tok HTTP/1.0\r\n\r\n"),
            Some("tok")
        );
        for bad in [
            "GET /.well-known/acme-challenge/ HTTP/1.1\r\n\r\n",
            "GET /.well-known/acme-challenge/../../etc/passwd HTTP/1.1\r\n\r\n",
            "GET /.well-known/acme-challenge/a.b HTTP/1.1\r\n\r\n",
            "POST /.well-known/acme-challenge/tok HTTP/1.1\r\n\r\n",
            "GET /.well-known/acme-challenge/tok HTTP/2\r\n\r\n",
            "GET /.well-known/acme-challenge/tok  HTTP/1.1\r\n\r\n",
            "GET /other/tok HTTP/1.1\r\n\r\n",
            "GET /.well-known/acme-challenge/tok HTTP/1.1",
            "GET http://a.test HTTP/1.1\r\n\r\n",
            "\u{fffd}\r\n\r\n",
            "",
        ] {
            assert_eq!(t(bad), None, "{bad:?}");
        }
    }

    fn get(addr: SocketAddr, req: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        // The responder may close before reading everything (an over-long head).
        let _ = s.write_all(req.as_bytes());
        let mut out = String::new();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.read_to_string(&mut out);
        out
    }

    /// Issue 11: silent connections (each held up to 5 s) do not keep a validator from being
    /// answered, and one address cannot take more than its share of places.
    #[test]
    fn silent_connections_do_not_hold_up_a_validator() {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let r = Responder::start(port).unwrap();
        r.add("tok", "tok.thumb");
        let from = |ip: &str| {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            s.bind(&SocketAddr::new(ip.parse().unwrap(), 0).into()).unwrap();
            s.connect(&port.into()).unwrap();
            TcpStream::from(s)
        };
        // One address opens 20 silent connections: it holds 4 places, the others are closed.
        let silent: Vec<TcpStream> = (0..20).map(|_| from("127.0.0.2")).collect();
        std::thread::sleep(Duration::from_millis(300));
        let closed = silent
            .iter()
            .filter(|s| {
                let mut s = *s;
                s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
                // A timeout: still open (waiting for its head). EOF or a reset: closed.
                !matches!(s.read(&mut [0u8; 1]), Err(ref e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
            })
            .count();
        assert_eq!(closed, 20 - MAX_PER_IP, "connections beyond the per-address cap");
        // A validator from another address is answered at once, not after 20 × 5 s.
        let started = Instant::now();
        let ok = get(
            port,
            "GET /.well-known/acme-challenge/tok HTTP/1.1\r\nHost: a\r\n\r\n",
        );
        assert!(ok.ends_with("tok.thumb"), "{ok}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "answered after {:?}",
            started.elapsed()
        );
        drop(silent);
    }

    #[test]
    fn serves_known_tokens_only_and_stops() {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let r = Responder::start(port).unwrap();
        r.add("tok", "tok.thumb");
        let ok = get(
            port,
            "GET /.well-known/acme-challenge/tok HTTP/1.1\r\nHost: a\r\n\r\n",
        );
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.ends_with("\r\n\r\ntok.thumb"), "{ok}");
        let miss = get(port, "GET /.well-known/acme-challenge/other HTTP/1.1\r\n\r\n");
        assert!(miss.starts_with("HTTP/1.1 404"), "{miss}");
        // An endless head is cut off, not buffered.
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(10_000));
        assert_eq!(get(port, &long), "");
        drop(r);
        assert!(TcpStream::connect(port).is_err(), "stopped with its order");
    }
}
