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

use crate::WireError;

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

/// A request head arriving in pieces. The search for its end resumes where the previous one
/// stopped (less 3 bytes, for a `\r\n\r\n` split between reads), so a head sent a byte at a
/// time costs O(n) rather than O(n²); the head is parsed once, when complete.
#[derive(Default)]
pub struct HeadReader {
    buf: Vec<u8>,
    /// Bytes at the front of `buf` known not to hold the end of the head (but for their last 3).
    scanned: usize,
    /// Bytes compared in all searches so far (tests: the search is linear).
    #[cfg(test)]
    pub(crate) examined: usize,
}

impl HeadReader {
    /// Appends `data`; the request once its head is complete (`Ok(None)` while it is not).
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<Request>, WireError> {
        self.buf.extend_from_slice(data);
        check_first_byte(&self.buf)?;
        let from = self.scanned.saturating_sub(3);
        let lim = self.buf.len().min(MAX_HEAD);
        let window = self.buf.get(from..lim).unwrap_or_default();
        #[cfg(test)]
        {
            self.examined += window.len();
        }
        let Some(at) = window.windows(4).position(|w| w == b"\r\n\r\n") else {
            self.scanned = lim;
            if self.buf.len() >= MAX_HEAD {
                return Err(WireError::Malformed("http: request head too long"));
            }
            return Ok(None);
        };
        parse_head(&self.buf, from + at).map(Some)
    }

    /// The bytes after a head of `len` bytes (what the client sent after its request); the
    /// buffer is freed.
    pub fn take_rest(&mut self, len: usize) -> Vec<u8> {
        let rest = self.buf.get(len..).unwrap_or_default().to_vec();
        self.buf = Vec::new();
        self.scanned = 0;
        rest
    }
}

/// Rejects a non-HTTP client as early as its first bytes show it.
fn check_first_byte(buf: &[u8]) -> Result<(), WireError> {
    match buf.first() {
        Some(b) if !b.is_ascii_uppercase() => Err(WireError::Malformed("http: not a request line")),
        _ => Ok(()),
    }
}

/// Parses the head at the start of `buf`: `Ok(None)` while incomplete.
pub fn parse_request(buf: &[u8]) -> Result<Option<Request>, WireError> {
    check_first_byte(buf)?;
    let Some(end) = find_head_end(buf) else {
        if buf.len() >= MAX_HEAD {
            return Err(WireError::Malformed("http: request head too long"));
        }
        return Ok(None);
    };
    parse_head(buf, end).map(Some)
}

/// Parses the head `buf[..end]` (`end`: where its `\r\n\r\n` starts).
fn parse_head(buf: &[u8], end: usize) -> Result<Request, WireError> {
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
    Ok(Request {
        method: method.to_string(),
        target: target.to_string(),
        headers,
        len: end + 4,
    })
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

    /// A head fed a byte at a time is searched once (today's main searched it again from
    /// byte 0 on every read: ~n²/2 comparisons for n bytes), and a `\r\n\r\n` split across
    /// reads anywhere is still found.
    #[test]
    fn head_search_resumes_where_it_stopped() {
        let mut req = b"GET /ws HTTP/1.1\r\nHost: h\r\nX-Pad: ".to_vec();
        let prefix = req.len();
        req.resize(MAX_HEAD - 100, b'a');
        req.extend_from_slice(b"\r\n\r\nafter");
        let mut h = HeadReader::default();
        let mut got = None;
        for (i, b) in req.iter().enumerate() {
            if let Some(r) = h.feed(&[*b]).unwrap() {
                got = Some((i, r));
                break;
            }
        }
        let (at, r) = got.unwrap();
        assert_eq!(at, req.len() - 6, "found at the last byte of the blank line");
        assert_eq!(r.len, req.len() - 5);
        assert_eq!(r.header("x-pad").map(str::len), Some(MAX_HEAD - 100 - prefix));
        // Each byte is compared at most 4 times (3 bytes of overlap per read).
        assert!(h.examined <= 4 * req.len(), "examined {}", h.examined);
        assert_eq!(h.take_rest(r.len), b"");
        // Every split of a request into two reads, and the rest after the head.
        let req = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nrest";
        for cut in 0..req.len() {
            let mut h = HeadReader::default();
            let (r, mut rest) = match h.feed(&req[..cut]).unwrap() {
                // The head was complete in the first read: the second is all "rest".
                Some(r) => (r, req[cut..].to_vec()),
                None => (h.feed(&req[cut..]).unwrap().unwrap(), Vec::new()),
            };
            assert_eq!(r.len, req.len() - 4, "cut {cut}");
            let mut got = h.take_rest(r.len);
            got.append(&mut rest);
            assert_eq!(got, b"rest", "cut {cut}");
        }
        // The size bound holds for a head fed in pieces.
        let mut h = HeadReader::default();
        let mut res = Ok(None);
        for _ in 0..(MAX_HEAD / 1000 + 1) {
            res = h.feed(&[b'G'; 1000]);
            if res.is_err() {
                break;
            }
        }
        assert!(res.is_err());
        assert!(HeadReader::default().feed(b"\x16\x03").is_err());
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
