//! The HTTP/1.1 request head both Upgrade transports start with, parsed from the plaintext the
//! client sent (after TLS, if any).
//!
//! ```text
//! GET /path?query HTTP/1.1\r\n          request line: method SP target SP version
//! Host: example.com\r\n                 header: name ":" OWS value OWS
//! Connection: Upgrade\r\n
//! Upgrade: websocket\r\n
//! ...\r\n
//! \r\n                                  end of head; what follows belongs to the transport
//! ```

use crate::proto::WireError;

/// Longest request head accepted (xray's httpupgrade reads at most 12 KiB; an early-data
/// header of 2048 bytes is ~2.7 KiB of base64).
pub const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 100;

/// A parsed request head.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// Request target as sent (path and query).
    pub target: String,
    pub headers: Vec<(String, String)>,
    /// Length of the head including the blank line (the transport's bytes start here).
    pub len: usize,
}

impl Request {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The target's path (before any `?`).
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    /// Whether the Host header matches `want` as xray checks it: case-insensitive, the port
    /// of the request's Host ignored.
    pub fn host_is(&self, want: &str) -> bool {
        let got = self.header("host").unwrap_or_default().to_ascii_lowercase();
        let host = match got.strip_prefix('[') {
            // [v6]:port
            Some(rest) => rest.split(']').next().unwrap_or_default().to_string(),
            None => match got.rsplit_once(':') {
                Some((h, _)) if !h.contains(':') => h.to_string(),
                _ => got.clone(),
            },
        };
        let want = want.trim().to_ascii_lowercase();
        let want = want.trim_start_matches('[').trim_end_matches(']');
        host == want
    }

    /// Whether a comma-separated header contains `token` (case-insensitive).
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// Parses the head at the start of `buf`: `Ok(None)` while incomplete.
pub fn parse_request(buf: &[u8]) -> Result<Option<Request>, WireError> {
    // Reject a non-HTTP client as early as its first bytes show it.
    if let Some(&b) = buf.first() {
        if !b.is_ascii_uppercase() {
            return Err(WireError::Malformed("http: not a request line"));
        }
    }
    let Some(end) = find_head_end(buf) else {
        if buf.len() >= MAX_HEAD {
            return Err(WireError::Malformed("http: request head too long"));
        }
        return Ok(None);
    };
    let head = buf.get(..end).unwrap_or_default();
    let head = std::str::from_utf8(head).map_err(|_| WireError::Malformed("http: head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(WireError::Malformed("http: bad request line"));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(WireError::Malformed("http: bad method"));
    }
    if !target.starts_with('/') {
        return Err(WireError::Malformed("http: target is not a path"));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(WireError::Malformed("http: not HTTP/1.x"));
    }
    let mut headers = Vec::new();
    for l in lines {
        if l.is_empty() {
            continue;
        }
        let (k, v) = l
            .split_once(':')
            .ok_or(WireError::Malformed("http: header without a colon"))?;
        if k.is_empty() || k.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
            return Err(WireError::Malformed("http: bad header name"));
        }
        if headers.len() >= MAX_HEADERS {
            return Err(WireError::Malformed("http: too many headers"));
        }
        headers.push((k.to_string(), v.trim_matches([' ', '\t']).to_string()));
    }
    Ok(Some(Request {
        method: method.to_string(),
        target: target.to_string(),
        headers,
        len: end + 4,
    }))
}

/// Offset of the `\r\n\r\n` ending the head (searched within [`MAX_HEAD`]).
fn find_head_end(buf: &[u8]) -> Option<usize> {
    let lim = buf.get(..MAX_HEAD).unwrap_or(buf);
    lim.windows(4).position(|w| w == b"\r\n\r\n")
}

/// A short error response; the connection is closed after it.
pub fn error_response(status: &str) -> Vec<u8> {
    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").into_bytes()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_a_head_incrementally() {
        let req = b"GET /ws?ed=2048 HTTP/1.1\r\nHost: Example.COM:443\r\nConnection: keep-alive, Upgrade\r\nX-Empty:\r\n\r\nrest";
        for cut in 0..req.len() - 4 {
            assert_eq!(parse_request(&req[..cut]).unwrap(), None, "cut {cut}");
        }
        let r = parse_request(req).unwrap().unwrap();
        assert_eq!(r.len, req.len() - 4);
        assert_eq!(r.method, "GET");
        assert_eq!(r.path(), "/ws");
        assert_eq!(r.header("HOST"), Some("Example.COM:443"));
        assert_eq!(r.header("x-empty"), Some(""));
        assert!(r.host_is("example.com"));
        assert!(!r.host_is("example.org"));
        assert!(r.header_has_token("connection", "upgrade"));
    }

    #[test]
    fn garbage_and_oversized_heads_are_refused() {
        assert!(parse_request(b"\x16\x03\x01").is_err());
        assert!(parse_request(b"GET /a HTTP/2\r\n\r\n").is_err());
        assert!(parse_request(b"GET a HTTP/1.1\r\n\r\n").is_err());
        assert!(parse_request(b"GET /a HTTP/1.1\r\nbad header\r\n\r\n").is_err());
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_HEAD, b'a');
        assert!(parse_request(&big).is_err());
    }

    #[test]
    fn ipv6_hosts() {
        let r = parse_request(b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(r.host_is("::1"));
        assert!(r.host_is("[::1]"));
    }
}
