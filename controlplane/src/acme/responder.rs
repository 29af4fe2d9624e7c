//! The HTTP-01 responder: a plain HTTP listener that answers
//! `GET /.well-known/acme-challenge/<token>` with the key authorization, only while an order
//! is being validated (it stops when dropped). One thread, one connection at a time, a request
//! head of at most 4 KiB read within 5 s; anything else gets 404.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const PREFIX: &str = "/.well-known/acme-challenge/";
const MAX_HEAD: usize = 4096;
const READ_WITHIN: Duration = Duration::from_secs(5);

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

fn serve(listener: &TcpListener, tokens: &Tokens, stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((s, peer)) => {
                if let Err(e) = answer(s, tokens) {
                    tracing::debug!(%peer, error = %e, "ACME HTTP-01 responder: request failed");
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
