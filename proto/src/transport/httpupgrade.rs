//! HTTP Upgrade transport, as xray serves it: one HTTP/1.1 request head (path and optional
//! Host checked; `Connection: upgrade` and `Upgrade: websocket` required), a 101 reply, then
//! the raw stream — no framing, so the relay can still splice where the protocol passes bytes
//! unchanged.
//!
//! ```text
//! client: GET /path HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n...\r\n\r\n
//!         [protocol bytes right away when the client uses early data (xray `?ed=N`)]
//! server: HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n
//! then:   raw protocol bytes both ways
//! ```
//!
//! xray's httpupgrade "early data" is only that the client does not wait for the 101 before
//! writing, so bytes after the head are the protocol's first bytes. A request xray refuses is
//! closed without a reply; so is ours.

use v2sp_shared::dpconfig::HttpPathSettings;

use super::http::HeadReader;
use super::{TransportHandshake, Upgrade, Upgraded};
use crate::WireError;

/// The reply xray (Go's `http.Response.Write`) sends.
pub const REPLY: &[u8] =
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";

pub struct HttpUpgradeHandshake {
    cfg: HttpPathSettings,
    head: HeadReader,
}

impl HttpUpgradeHandshake {
    pub fn new(cfg: &HttpPathSettings) -> Self {
        HttpUpgradeHandshake {
            cfg: cfg.clone(),
            head: HeadReader::default(),
        }
    }
}

impl TransportHandshake for HttpUpgradeHandshake {
    fn feed(&mut self, data: &[u8]) -> Result<Upgrade, WireError> {
        let Some(req) = self.head.feed(data)? else {
            return Ok(Upgrade::NeedMore);
        };
        let host_ok = self.cfg.host.is_empty() || req.host_is(&self.cfg.host);
        // xray compares the lower-cased first value exactly (no token list).
        let conn = req.header("connection").unwrap_or_default().to_ascii_lowercase();
        let upgrade = req.header("upgrade").unwrap_or_default().to_ascii_lowercase();
        if !host_ok || req.path() != self.cfg.path || conn != "upgrade" || upgrade != "websocket" {
            return Ok(Upgrade::Reject(Vec::new()));
        }
        let rest = self.head.take_rest(req.len);
        Ok(Upgrade::Done(Upgraded {
            reply: REPLY.to_vec(),
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

    fn cfg(host: &str) -> HttpPathSettings {
        HttpPathSettings {
            path: "/up".into(),
            host: host.into(),
        }
    }

    #[test]
    fn upgrade_with_bytes_after_the_head() {
        let mut h = HttpUpgradeHandshake::new(&cfg("h.example"));
        let req = b"GET /up HTTP/1.1\r\nHost: H.example:8080\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nUser-Agent: x\r\n\r\n";
        let (a, b) = req.split_at(20);
        assert!(matches!(h.feed(a).unwrap(), Upgrade::NeedMore));
        let mut second = b.to_vec();
        second.extend_from_slice(b"\x01\x02payload");
        match h.feed(&second).unwrap() {
            Upgrade::Done(u) => {
                assert_eq!(u.reply, REPLY);
                assert_eq!(u.rest, b"\x01\x02payload");
                assert!(u.early.is_empty() && u.framing.is_none());
            }
            _ => panic!("not upgraded"),
        }
    }

    #[test]
    fn wrong_path_host_or_headers_close_silently() {
        for req in [
            &b"GET /other HTTP/1.1\r\nHost: h.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"[..],
            b"GET /up HTTP/1.1\r\nHost: x.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"GET /up HTTP/1.1\r\nHost: h.example\r\nConnection: keep-alive\r\nUpgrade: websocket\r\n\r\n",
            b"GET /up HTTP/1.1\r\nHost: h.example\r\nConnection: Upgrade\r\n\r\n",
        ] {
            let mut h = HttpUpgradeHandshake::new(&cfg("h.example"));
            match h.feed(req).unwrap() {
                Upgrade::Reject(r) => assert!(r.is_empty()),
                _ => panic!("accepted {}", String::from_utf8_lossy(req)),
            }
        }
        let mut h = HttpUpgradeHandshake::new(&cfg(""));
        assert!(h.feed(b"\x16\x03\x01\x02\x00").is_err());
    }
}
