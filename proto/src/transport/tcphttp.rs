//! Raw TCP behind xray's `header.type = "http"` obfuscation, server side: the client's first
//! bytes are a fake HTTP/1.1 request head, read and discarded (its path must be one of the
//! configured `request.path`s); the server's first bytes are a fake response head; then the
//! raw stream both ways (splice-eligible).
//!
//! ```text
//! client: GET / HTTP/1.1\r\nHost: www.bing.com\r\n...\r\n\r\n <protocol bytes>
//! server: HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n...Date: <RFC 7231>\r\n\r\n
//! ```
//!
//! xray sends the response head with its first write and a 404 head at close for a wrong
//! path; we send the head at once and a 404 head right away.

use v2sp_shared::dpconfig::TcpHttpSettings;

use super::http::HeadReader;
use super::{TransportHandshake, Upgrade, Upgraded};
use crate::WireError;

pub struct TcpHttpHandshake {
    cfg: TcpHttpSettings,
    head: HeadReader,
}

impl TcpHttpHandshake {
    pub fn new(cfg: &TcpHttpSettings) -> Self {
        TcpHttpHandshake {
            cfg: cfg.clone(),
            head: HeadReader::default(),
        }
    }
}

/// `Date` value as Go's `http.TimeFormat` writes it, for a Unix time.
pub fn http_date(unix: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix / 86_400;
    let secs = unix % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS.get((days % 7) as usize).unwrap_or(&"Thu"),
        d,
        MONTHS.get((m - 1) as usize).unwrap_or(&"Jan"),
        y,
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

fn head(status_line: &str, headers: &[String]) -> Vec<u8> {
    let mut s = format!("{status_line}\r\n");
    for h in headers {
        s.push_str(h);
        s.push_str("\r\n");
    }
    if !headers
        .iter()
        .any(|h| h.to_ascii_lowercase().starts_with("date:"))
    {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        s.push_str(&format!("Date: {}\r\n", http_date(now)));
    }
    s.push_str("\r\n");
    s.into_bytes()
}

impl TransportHandshake for TcpHttpHandshake {
    fn feed(&mut self, data: &[u8]) -> Result<Upgrade, WireError> {
        let Some(req) = self.head.feed(data)? else {
            return Ok(Upgrade::NeedMore);
        };
        if !self.cfg.paths.iter().any(|p| p == req.path()) {
            let h = ["Connection: close".to_string(), "Content-Length: 0".to_string()];
            return Ok(Upgrade::Reject(head("HTTP/1.1 404 Not Found", &h)));
        }
        let rest = self.head.take_rest(req.len);
        Ok(Upgrade::Done(Upgraded {
            reply: head(&self.cfg.status_line, &self.cfg.headers),
            early: Vec::new(),
            rest,
            framing: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn http_dates() {
        // python: email.utils.formatdate(t, usegmt=True)
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(http_date(1_795_000_000), "Wed, 18 Nov 2026 11:06:40 GMT");
    }

    #[test]
    fn fake_request_discarded_fake_response_sent() {
        let cfg = TcpHttpSettings {
            paths: vec!["/".into(), "/video".into()],
            status_line: "HTTP/1.1 200 OK".into(),
            headers: vec!["Connection: keep-alive".into(), "Date: x".into()],
        };
        let mut h = TcpHttpHandshake::new(&cfg);
        let req = b"GET /video HTTP/1.1\r\nHost: www.bing.com\r\nUser-Agent: a\r\n\r\n\x00\x01";
        match h.feed(req).unwrap() {
            Upgrade::Done(u) => {
                assert_eq!(
                    u.reply,
                    b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nDate: x\r\n\r\n"
                );
                assert_eq!(u.rest, [0, 1]);
                assert!(u.framing.is_none());
            }
            _ => panic!("not accepted"),
        }
        let mut h = TcpHttpHandshake::new(&cfg);
        match h.feed(b"GET /x HTTP/1.1\r\n\r\n").unwrap() {
            Upgrade::Reject(r) => assert!(r.starts_with(b"HTTP/1.1 404 Not Found\r\nConnection: close\r\n")),
            _ => panic!("wrong path accepted"),
        }
    }
}
