//! XHTTP (Xray's `xhttp`, once `splithttp`), server side, sans-IO: what a request is, what we
//! answer, and the reordering of packet-up uploads. The HTTP/1.1 and HTTP/2 plumbing and the
//! sessions' I/O are the data plane's (`node/xhttp.rs`).
//!
//! ```text
//! download    GET  {path}{session}            200, body = the stream's bytes for the client
//! packet-up   POST {path}{session}/{seq}      body = upload bytes seq (0, 1, 2, …), 200 at once
//! stream-up   POST {path}{session}            body = all upload bytes, streamed
//! stream-one  POST {path}                     body = upload, response body = download
//! any request ?x_padding=000…  (or in the Referer's query): padding of xPaddingBytes length
//! any answer  X-Padding: 000…  Access-Control-Allow-Origin: *  Access-Control-Allow-Methods
//! ```
//!
//! A session is one stream of the inner protocol (a VLESS connection): its upload is the
//! packets in `seq` order (or the one streaming POST), its download the GET's body. The client
//! opens the GET and the uploads in any order, on one HTTP/2 connection or several HTTP/1.1
//! ones.
//!
//! Facts from Xray-core's `transport/internet/splithttp` (server `hub.go`, defaults
//! `config.go`; v24.11 to 2026), our own code.

use std::collections::BTreeMap;

use v2sp_shared::dpconfig::XhttpSettings;

/// Longest session id accepted (Xray's clients send a 36-character UUID).
pub const MAX_SESSION_ID: usize = 64;

/// What a request is, once its method, host and path are checked.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// The session's download (its GET).
    Download { session: &'a str },
    /// Upload packet `seq` of the session (packet-up).
    Packet { session: &'a str, seq: u64 },
    /// The session's whole upload in one streaming body (stream-up).
    UploadStream { session: &'a str },
    /// Upload and download in one request (stream-one).
    StreamOne,
}

/// Why a request is refused: the status we answer with, and what is logged.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 404: wrong host or path (what any web server says).
    NotFound,
    /// 400 with the reason for the log.
    BadRequest(&'static str),
    /// 405: a method XHTTP does not use.
    MethodNotAllowed,
}

impl Refusal {
    pub fn status(&self) -> u16 {
        match self {
            Refusal::NotFound => 404,
            Refusal::BadRequest(_) => 400,
            Refusal::MethodNotAllowed => 405,
        }
    }
}

/// Which uploads the node accepts (`mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Auto,
    PacketUp,
    StreamUp,
    StreamOne,
}

/// A node's XHTTP settings, checked once.
#[derive(Clone, Debug)]
pub struct Xhttp {
    /// Base path, with its leading and trailing `/`.
    path: String,
    host: String,
    pub mode: Mode,
    pub padding: (u32, u32),
    pub max_each_post: usize,
    pub max_buffered_posts: usize,
    pub no_sse_header: bool,
}

impl Xhttp {
    pub fn new(s: &XhttpSettings) -> Self {
        let mut path = s.path.clone();
        if !path.starts_with('/') {
            path.insert(0, '/');
        }
        if !path.ends_with('/') {
            path.push('/');
        }
        Xhttp {
            path,
            host: s.host.to_ascii_lowercase(),
            mode: match s.mode.as_str() {
                "packet-up" => Mode::PacketUp,
                "stream-up" => Mode::StreamUp,
                "stream-one" => Mode::StreamOne,
                _ => Mode::Auto,
            },
            padding: (s.padding_min.min(s.padding_max), s.padding_max),
            max_each_post: usize::try_from(s.max_each_post_bytes)
                .unwrap_or(usize::MAX)
                .max(1),
            max_buffered_posts: usize::try_from(s.max_buffered_posts).unwrap_or(usize::MAX).max(1),
            no_sse_header: s.no_sse_header,
        }
    }

    /// What the request is. `host` is the Host header (or HTTP/2 `:authority`), `target` the
    /// request target (path and query), `referer` the Referer header (newer clients carry the
    /// padding in its query).
    pub fn classify<'a>(
        &self,
        method: &str,
        host: Option<&str>,
        target: &'a str,
        referer: Option<&str>,
    ) -> Result<Request<'a>, Refusal> {
        if !self.host.is_empty() {
            let h = host.unwrap_or_default();
            if !host_without_port(h).eq_ignore_ascii_case(&self.host) {
                return Err(Refusal::NotFound);
            }
        }
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let Some(rest) = path.strip_prefix(self.path.as_str()) else {
            // `/path` without its trailing slash is still the base path (stream-one's POST).
            if path.len() + 1 == self.path.len() && self.path.starts_with(path) && method == "POST" {
                return self.stream_one(query, referer);
            }
            return Err(Refusal::NotFound);
        };
        self.check_padding(query, referer)?;
        let mut parts = rest.split('/');
        let session = parts.next().unwrap_or_default();
        let seq = parts.next().unwrap_or_default();
        if parts.next().is_some_and(|p| !p.is_empty()) {
            return Err(Refusal::NotFound);
        }
        if session.is_empty() {
            return match method {
                "POST" => self.stream_one(query, referer),
                "GET" => Err(Refusal::BadRequest("no session id")),
                _ => Err(Refusal::MethodNotAllowed),
            };
        }
        if session.len() > MAX_SESSION_ID
            || !session
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(Refusal::BadRequest("bad session id"));
        }
        match (method, seq) {
            ("GET", "") => Ok(Request::Download { session }),
            ("POST", "") => match self.mode {
                Mode::Auto | Mode::StreamUp => Ok(Request::UploadStream { session }),
                _ => Err(Refusal::BadRequest("stream-up is not allowed")),
            },
            ("POST", seq) => {
                if !matches!(self.mode, Mode::Auto | Mode::PacketUp) {
                    return Err(Refusal::BadRequest("packet-up is not allowed"));
                }
                // Digits only: `+1` and `01` are other sequence numbers' spellings.
                let seq = (seq.len() <= 20 && seq.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| seq.parse::<u64>().ok())
                    .flatten()
                    .filter(|_| seq == "0" || !seq.starts_with('0'))
                    .ok_or(Refusal::BadRequest("bad sequence number"))?;
                Ok(Request::Packet { session, seq })
            }
            ("GET", _) => Err(Refusal::NotFound),
            _ => Err(Refusal::MethodNotAllowed),
        }
    }

    fn stream_one<'a>(&self, query: &str, referer: Option<&str>) -> Result<Request<'a>, Refusal> {
        self.check_padding(query, referer)?;
        match self.mode {
            Mode::Auto | Mode::StreamOne | Mode::StreamUp => Ok(Request::StreamOne),
            Mode::PacketUp => Err(Refusal::BadRequest("stream-one is not allowed")),
        }
    }

    /// A client's `x_padding` (in the query, or in the Referer's query) must have a length in
    /// the node's range. A request without any is accepted: Xray's clients before 2025 send it
    /// only in the query, some CDNs strip the Referer, and the padding proves nothing anyway.
    fn check_padding(&self, query: &str, referer: Option<&str>) -> Result<(), Refusal> {
        let from_referer = referer
            .and_then(|r| r.split_once('?'))
            .map(|(_, q)| q)
            .and_then(x_padding);
        match x_padding(query).or(from_referer) {
            None => Ok(()),
            Some(p) if (self.padding.0 as usize..=self.padding.1 as usize).contains(&p.len()) => Ok(()),
            Some(_) => Err(Refusal::BadRequest("padding length out of range")),
        }
    }

    /// The headers of every answer: CORS (Xray's browser dialer needs them) and `X-Padding` of
    /// a length in the node's range, `roll` picking it (a random number in `0..=span`).
    pub fn common_headers(&self, roll: impl FnOnce(u32) -> u32) -> Vec<(&'static str, String)> {
        let (lo, hi) = self.padding;
        let n = lo.saturating_add(roll(hi.saturating_sub(lo)).min(hi.saturating_sub(lo)));
        let mut h = vec![
            ("access-control-allow-origin", "*".to_string()),
            ("access-control-allow-methods", "GET, POST".to_string()),
        ];
        if n > 0 {
            h.push(("x-padding", "0".repeat(n as usize)));
        }
        h
    }

    /// The extra headers of a download (the GET, or stream-one's answer): no buffering by
    /// nginx, no caching, and an event stream for middleboxes unless `noSSEHeader`.
    pub fn download_headers(&self) -> Vec<(&'static str, &'static str)> {
        let mut h = vec![("x-accel-buffering", "no"), ("cache-control", "no-store")];
        if !self.no_sse_header {
            h.push(("content-type", "text/event-stream"));
        }
        h
    }
}

/// The value of `x_padding` in a query string.
fn x_padding(query: &str) -> Option<&str> {
    query.split('&').find_map(|kv| kv.strip_prefix("x_padding="))
}

fn host_without_port(h: &str) -> &str {
    if let Some(rest) = h.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default();
    }
    h.rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(h, |(host, _)| host)
}

/// Why a packet cannot join the upload.
#[derive(Debug, PartialEq, Eq)]
pub enum QueueError {
    /// Its number is already delivered or held (a replayed or repeated POST).
    Duplicate,
    /// Its number is further ahead than the session may hold packets.
    TooFarAhead,
    /// The upload already ended (a stream-up body, or the session closed).
    Closed,
}

/// Whether a packet was taken.
#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    Taken,
    /// No room now: the caller holds the packet (and its POST) until [`UploadQueue::pop`]
    /// frees some, which keeps the client's own window of posts as the bound.
    Full,
}

/// The packet-up reorder buffer of one session: packets come in any order, leave in `seq`
/// order. Bounded by count ([`Xhttp::max_buffered_posts`] held out of order) and by bytes; the
/// next expected packet is always taken, so a full buffer never waits for a packet it cannot
/// take.
pub struct UploadQueue<B> {
    next: u64,
    held: BTreeMap<u64, B>,
    held_bytes: usize,
    max_posts: usize,
    max_bytes: usize,
    closed: bool,
}

impl<B: AsRef<[u8]>> UploadQueue<B> {
    pub fn new(max_posts: usize, max_bytes: usize) -> Self {
        UploadQueue {
            next: 0,
            held: BTreeMap::new(),
            held_bytes: 0,
            max_posts: max_posts.max(1),
            max_bytes,
            closed: false,
        }
    }

    /// Offers packet `seq`.
    pub fn push(&mut self, seq: u64, data: B) -> Result<Push, (QueueError, B)> {
        if self.closed {
            return Err((QueueError::Closed, data));
        }
        if seq < self.next || self.held.contains_key(&seq) {
            return Err((QueueError::Duplicate, data));
        }
        // A window of `max_posts` numbers ahead of the next: a client keeps at most that many
        // POSTs in flight (Xray's scMaxConcurrentPosts/scMaxBufferedPosts).
        if seq - self.next > self.max_posts as u64 * 4 {
            return Err((QueueError::TooFarAhead, data));
        }
        let len = data.as_ref().len();
        if seq != self.next && (self.held.len() >= self.max_posts || self.held_bytes + len > self.max_bytes) {
            return Ok(Push::Full);
        }
        self.held_bytes += len;
        self.held.insert(seq, data);
        Ok(Push::Taken)
    }

    /// Whether packet `seq` of `len` bytes would be taken now: the caller asks before it reads
    /// a POST's body, so a packet that must wait waits unread (HTTP/2's stream window, or the
    /// TCP window of an HTTP/1.1 connection, bounds it) instead of held in memory.
    pub fn fits(&self, seq: u64, len: usize) -> bool {
        seq == self.next
            || (seq > self.next
                && self.held.len() < self.max_posts
                && self.held_bytes + len <= self.max_bytes)
    }

    /// The next packet in order, if it is here.
    pub fn pop(&mut self) -> Option<B> {
        let data = self.held.remove(&self.next)?;
        self.held_bytes -= data.as_ref().len();
        self.next += 1;
        Some(data)
    }

    /// No more packets are taken (what is held can still be popped).
    pub fn close(&mut self) {
        self.closed = true;
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Bytes held (delivered ones not counted).
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// The next sequence number the upload waits for.
    pub fn next_seq(&self) -> u64 {
        self.next
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn x(mode: &str) -> Xhttp {
        Xhttp::new(&XhttpSettings {
            path: "/xh".to_string(),
            host: "Example.com".to_string(),
            mode: mode.to_string(),
            ..XhttpSettings::default()
        })
    }

    const SID: &str = "0c8a1e2f-5b6d-4c3e-9f1a-2b3c4d5e6f70";

    #[test]
    fn requests_of_each_mode() {
        let a = x("auto");
        let h = Some("example.com:443");
        assert_eq!(
            a.classify(
                "GET",
                h,
                &format!("/xh/{SID}?x_padding={}", "0".repeat(100)),
                None
            ),
            Ok(Request::Download { session: SID })
        );
        assert_eq!(
            a.classify("POST", h, &format!("/xh/{SID}/17"), None),
            Ok(Request::Packet {
                session: SID,
                seq: 17
            })
        );
        assert_eq!(
            a.classify("POST", h, &format!("/xh/{SID}"), None),
            Ok(Request::UploadStream { session: SID })
        );
        assert_eq!(a.classify("POST", h, "/xh/", None), Ok(Request::StreamOne));
        assert_eq!(a.classify("POST", h, "/xh", None), Ok(Request::StreamOne));
        // Modes refuse the other uploads.
        assert!(matches!(
            x("packet-up").classify("POST", h, &format!("/xh/{SID}"), None),
            Err(Refusal::BadRequest(_))
        ));
        assert!(matches!(
            x("stream-up").classify("POST", h, &format!("/xh/{SID}/0"), None),
            Err(Refusal::BadRequest(_))
        ));
        assert!(matches!(
            x("packet-up").classify("POST", h, "/xh/", None),
            Err(Refusal::BadRequest(_))
        ));
    }

    #[test]
    fn strangers_get_what_a_web_server_says() {
        let a = x("auto");
        let h = Some("example.com");
        assert_eq!(
            a.classify("GET", Some("other.com"), &format!("/xh/{SID}"), None),
            Err(Refusal::NotFound)
        );
        assert_eq!(
            a.classify("GET", None, &format!("/xh/{SID}"), None),
            Err(Refusal::NotFound)
        );
        assert_eq!(a.classify("GET", h, "/", None), Err(Refusal::NotFound));
        assert_eq!(a.classify("GET", h, "/xhx/a", None), Err(Refusal::NotFound));
        assert_eq!(
            a.classify("GET", h, &format!("/xh/{SID}/1/2"), None),
            Err(Refusal::NotFound)
        );
        assert_eq!(
            a.classify("PUT", h, &format!("/xh/{SID}"), None),
            Err(Refusal::MethodNotAllowed)
        );
        assert!(matches!(
            a.classify("GET", h, "/xh/", None),
            Err(Refusal::BadRequest(_))
        ));
        assert!(matches!(
            a.classify("GET", h, "/xh/a%20b", None),
            Err(Refusal::BadRequest(_))
        ));
        let long = "a".repeat(MAX_SESSION_ID + 1);
        assert!(matches!(
            a.classify("GET", h, &format!("/xh/{long}"), None),
            Err(Refusal::BadRequest(_))
        ));
        for seq in ["-1", "+1", "01", "1.0", "99999999999999999999999", "x"] {
            assert!(
                matches!(
                    a.classify("POST", h, &format!("/xh/{SID}/{seq}"), None),
                    Err(Refusal::BadRequest(_))
                ),
                "{seq}"
            );
        }
        // IPv6 Host with a port.
        let v6 = x("auto");
        let v6 = Xhttp {
            host: "::1".to_string(),
            ..v6
        };
        assert!(v6
            .classify("GET", Some("[::1]:8443"), &format!("/xh/{SID}"), None)
            .is_ok());
    }

    #[test]
    fn padding_length_is_checked_where_the_client_put_it() {
        let a = x("auto");
        let h = Some("example.com");
        let t = |n: usize| format!("/xh/{SID}?x_padding={}", "0".repeat(n));
        assert!(a.classify("GET", h, &t(100), None).is_ok());
        assert!(a.classify("GET", h, &t(1000), None).is_ok());
        assert!(matches!(
            a.classify("GET", h, &t(99), None),
            Err(Refusal::BadRequest(_))
        ));
        assert!(matches!(
            a.classify("GET", h, &t(1001), None),
            Err(Refusal::BadRequest(_))
        ));
        let referer = format!("https://example.com/xh/?x_padding={}", "0".repeat(10));
        assert!(matches!(
            a.classify("GET", h, &format!("/xh/{SID}"), Some(&referer)),
            Err(Refusal::BadRequest(_))
        ));
        let referer = format!("https://example.com/xh/?x_padding={}", "0".repeat(500));
        assert!(a
            .classify("GET", h, &format!("/xh/{SID}"), Some(&referer))
            .is_ok());
    }

    #[test]
    fn answers_carry_padding_in_range() {
        let a = x("auto");
        for roll in [0, 450, 900, u32::MAX] {
            let h = a.common_headers(|span| roll.min(span + 7));
            let pad = h.iter().find(|(k, _)| *k == "x-padding").unwrap();
            assert!((100..=1000).contains(&pad.1.len()), "{}", pad.1.len());
        }
        assert!(a
            .download_headers()
            .contains(&("content-type", "text/event-stream")));
        let quiet = Xhttp {
            no_sse_header: true,
            ..x("auto")
        };
        assert!(!quiet.download_headers().iter().any(|(k, _)| *k == "content-type"));
    }

    #[test]
    fn packets_leave_in_order_within_bounds() {
        let mut q: UploadQueue<Vec<u8>> = UploadQueue::new(3, 10);
        assert_eq!(q.push(2, vec![2; 4]).unwrap(), Push::Taken);
        assert_eq!(q.push(1, vec![1; 4]).unwrap(), Push::Taken);
        assert_eq!(q.pop(), None);
        assert!(q.fits(0, 1000) && q.fits(3, 2) && !q.fits(3, 3));
        // Out of order and over the byte budget: wait.
        assert_eq!(q.push(3, vec![3; 4]).unwrap(), Push::Full);
        // The next expected packet is always taken, whatever the budget says.
        assert_eq!(q.push(0, vec![0; 40]).unwrap(), Push::Taken);
        assert_eq!(q.pop(), Some(vec![0; 40]));
        assert_eq!(q.pop(), Some(vec![1; 4]));
        assert_eq!(q.push(3, vec![3; 4]).unwrap(), Push::Taken);
        assert_eq!(q.pop(), Some(vec![2; 4]));
        assert_eq!(q.pop(), Some(vec![3; 4]));
        assert_eq!(q.held_bytes(), 0);
        assert_eq!(q.next_seq(), 4);
        assert!(matches!(q.push(1, vec![]), Err((QueueError::Duplicate, _))));
        assert!(matches!(
            q.push(4 + 13, vec![]),
            Err((QueueError::TooFarAhead, _))
        ));
        q.close();
        assert!(matches!(q.push(4, vec![]), Err((QueueError::Closed, _))));
    }
}
