//! AnyTLS (server side, inside TLS): the authentication header, then a session of frames that
//! carries many client streams (sing-box's `anytls` outbound reuses one session for many
//! connections).
//!
//! ```text
//! authentication (client → server, once, right after the TLS handshake):
//! +------------------+----------------+-----------------+
//! | SHA256(password) | padding length | padding         |
//! +------------------+----------------+-----------------+
//! |       32         |   2 (u16 BE)   | that many bytes |
//! +------------------+----------------+-----------------+
//!
//! then frames, both ways:
//! +-----+-----------+-------------+------------------+
//! | cmd | stream id | data length | data             |
//! +-----+-----------+-------------+------------------+
//! |  1  | 4 (u32 BE)|  2 (u16 BE) | data length B    |
//! +-----+-----------+-------------+------------------+
//! cmd  0 waste               padding, data discarded                     (both ways)
//!      1 syn                 open stream id (no data)                    (client)
//!      2 psh                 stream data; the first bytes of a stream    (both ways)
//!                            are its destination, a SOCKS address:
//!                            ATYP 1 IPv4 (4 B) / 3 domain (1 B length + name) / 4 IPv6
//!                            (16 B), then the port (u16 BE)
//!      3 fin                 stream closed (no data)                     (both ways)
//!      4 settings            "k=v" lines: v=2, client=…, padding-md5=…   (client, first)
//!      5 alert               text, then the session closes               (server)
//!      6 updatePaddingScheme the server's scheme (sent when the client's  (server)
//!                            padding-md5 differs)
//! since protocol version 2 (client settings v >= 2):
//!      7 synack              stream opened (no data) / failed (data =    (server)
//!                            error text), after the outbound connect
//!      8 heartRequest        answered by heartResponse, same stream id   (both ways)
//!      9 heartResponse
//!     10 serverSettings      "v=2", sent right after the client's settings (server)
//! Only waste, psh, settings, alert, updatePaddingScheme, synack and serverSettings carry
//! data: for the others the length field is ignored (as the reference server does).
//!
//! UDP: a stream to `sp.v2.udp-over-tcp.arpa` carries sing-box UDP-over-TCP v2 ([`session`]):
//! +------------+---------------------+   then packets:
//! | is_connect | destination (SOCKS) |   connect:  | length u16 BE | payload |
//! +------------+---------------------+   else:     | addr | port | length | payload |
//! |     1      |      variable       |   addr: 0 IPv4 (4 B) / 1 IPv6 (16 B) / 2 domain (1 B
//! +------------+---------------------+   length + name), port u16 BE
//! ```
//!
//! The user is looked up by the 32-byte SHA-256 (`cred::CredKind::Sha256Password`) once the
//! first 32 bytes are in; anything else goes to the node's fallback with every byte read
//! (`Next::Fallback`), as the reference server does. The session is a
//! [`crate::DatagramStreamCodec`]: TCP streams become mux sub-streams
//! (`node/mux_tcp.rs`), UDP-over-TCP streams datagram flows (`node/udp_stream.rs`).
//!
//! Padding: the client pads its first packets by the scheme; the reference servers
//! (anytls-go, sing-anytls) do not pad what they send, and neither do we. The server's scheme
//! matters only to clients: it is sent to those whose `padding-md5` differs.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use crate::{AuthContext, Destination, Next, Step, StreamHandshake, WireError};

pub mod session;

pub use session::Session;

/// The reference implementation's default padding scheme (anytls-go, sing-anytls).
pub const DEFAULT_PADDING_SCHEME: &str = "stop=8
0=30-30
1=100-400
2=400-500,c,500-1000,c,500-1000,c,500-1000,c,500-1000
3=9-9,500-1000
4=500-1000
5=500-1000
6=500-1000
7=500-1000";

const HASH_LEN: usize = 32;
/// Hash and padding length.
const AUTH_HEAD: usize = HASH_LEN + 2;

/// A node's padding scheme: the raw text sent to clients and its MD5 (lower-case hex), which
/// clients report in their settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaddingScheme {
    pub raw: Vec<u8>,
    pub md5_hex: String,
}

impl PaddingScheme {
    /// From the panel's lines (joined with `\n`, as sing-box joins its `padding_scheme`);
    /// none = [`DEFAULT_PADDING_SCHEME`]. Like the reference, a scheme needs a numeric `stop`.
    pub fn from_lines(lines: &[String]) -> Result<Self, String> {
        let raw = if lines.is_empty() {
            DEFAULT_PADDING_SCHEME.to_string()
        } else {
            lines.join("\n")
        };
        let has_stop = raw
            .split('\n')
            .filter_map(|l| l.split_once('='))
            .any(|(k, v)| k == "stop" && v.parse::<u32>().is_ok());
        if !has_stop {
            return Err("anytls padding_scheme has no `stop=N` line".to_string());
        }
        Ok(Self::from_raw(raw.into_bytes()))
    }

    fn from_raw(raw: Vec<u8>) -> Self {
        use md5::{Digest as _, Md5};
        let md5_hex = hex::encode(Md5::digest(&raw));
        PaddingScheme { raw, md5_hex }
    }
}

impl Default for PaddingScheme {
    fn default() -> Self {
        Self::from_raw(DEFAULT_PADDING_SCHEME.as_bytes().to_vec())
    }
}

fn port_at(buf: &[u8], at: usize) -> Option<u16> {
    let b = buf.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([*b.first()?, *b.get(1)?]))
}

/// Address-type bytes of one address encoding.
#[derive(Clone, Copy)]
pub(crate) struct AddrTypes {
    pub v4: u8,
    pub domain: u8,
    pub v6: u8,
}

/// SOCKS5 (stream destinations, UDP-over-TCP request): 1 / 3 / 4.
pub(crate) const SOCKS: AddrTypes = AddrTypes {
    v4: 1,
    domain: 3,
    v6: 4,
};
/// sing's UDP-over-TCP packet addresses: 0 / 2 / 1.
pub(crate) const UOT: AddrTypes = AddrTypes {
    v4: 0,
    domain: 2,
    v6: 1,
};

/// Address and port at the start of `buf`: `Ok(None)` while incomplete, else the destination
/// and its encoded length.
pub(crate) fn address(buf: &[u8], t: AddrTypes) -> Result<Option<(Destination, usize)>, WireError> {
    let Some(&atyp) = buf.first() else {
        return Ok(None);
    };
    if atyp == t.domain {
        let Some(&n) = buf.get(1) else {
            return Ok(None);
        };
        let n = usize::from(n);
        if n == 0 {
            return Err(WireError::Malformed("anytls: empty domain"));
        }
        let (Some(name), Some(port)) = (buf.get(2..2 + n), port_at(buf, 2 + n)) else {
            return Ok(None);
        };
        let name =
            std::str::from_utf8(name).map_err(|_| WireError::Malformed("anytls: domain is not UTF-8"))?;
        return Ok(Some((Destination::Domain(name.to_string(), port), 2 + n + 2)));
    }
    let ip_len = if atyp == t.v4 {
        4
    } else if atyp == t.v6 {
        16
    } else {
        return Err(WireError::Malformed("anytls: unknown address type"));
    };
    let (Some(ip), Some(port)) = (buf.get(1..1 + ip_len), port_at(buf, 1 + ip_len)) else {
        return Ok(None);
    };
    let ip: std::net::IpAddr = match <[u8; 4]>::try_from(ip) {
        Ok(b) => Ipv4Addr::from(b).into(),
        Err(_) => {
            let b: [u8; 16] = ip
                .try_into()
                .map_err(|_| WireError::Malformed("anytls: bad address"))?;
            Ipv6Addr::from(b).into()
        }
    };
    Ok(Some((Destination::Ip(SocketAddr::new(ip, port)), 1 + ip_len + 2)))
}

/// Appends `addr` in encoding `t` (IPv4-mapped IPv6 as IPv4).
pub(crate) fn put_address(out: &mut Vec<u8>, addr: SocketAddr, t: AddrTypes) {
    match addr.ip().to_canonical() {
        std::net::IpAddr::V4(v4) => {
            out.push(t.v4);
            out.extend_from_slice(&v4.octets());
        }
        std::net::IpAddr::V6(v6) => {
            out.push(t.v6);
            out.extend_from_slice(&v6.octets());
        }
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// Whether `buf` (shorter than a hash) is already a complete HTTP/1 request head: a probe
/// that a web server would answer now, so it goes to the fallback without waiting for 32
/// bytes that may never come.
fn is_http_probe(buf: &[u8]) -> bool {
    buf.first().is_some_and(u8::is_ascii_uppercase)
        && buf.windows(4).any(|w| w == b"\r\n\r\n")
        && buf
            .iter()
            .all(|b| b.is_ascii_graphic() || matches!(b, b' ' | b'\r' | b'\n'))
}

/// One connection's authentication header.
pub struct AnytlsHandshake {
    scheme: Arc<PaddingScheme>,
    /// Every byte fed until the header's first 34 bytes are in (for the fallback).
    buf: Vec<u8>,
    user: Option<v2sp_shared::shm::UserRef>,
    /// Padding bytes still to skip once the user is known.
    pad_left: usize,
}

impl AnytlsHandshake {
    pub fn new(scheme: Arc<PaddingScheme>) -> Self {
        AnytlsHandshake {
            scheme,
            buf: Vec::new(),
            user: None,
            pad_left: 0,
        }
    }

    fn reject(&mut self, error: WireError) -> Step {
        Step::Done(Next::Fallback {
            error,
            consumed: std::mem::take(&mut self.buf),
        })
    }

    fn done(&mut self, user: v2sp_shared::shm::UserRef, initial: Vec<u8>) -> Step {
        Step::Done(Next::UdpOverStream {
            user,
            reply: Vec::new(),
            initial,
            codec: Box::new(Session::new(self.scheme.clone())),
            framing: None,
        })
    }
}

impl StreamHandshake for AnytlsHandshake {
    fn feed(&mut self, data: &[u8], ctx: &dyn AuthContext) -> Result<Step, WireError> {
        if let Some(user) = self.user {
            // Skipping the padding; what follows it is the session.
            let skip = self.pad_left.min(data.len());
            self.pad_left -= skip;
            if self.pad_left > 0 {
                return Ok(Step::NeedMore(self.pad_left));
            }
            let rest = data.get(skip..).unwrap_or_default().to_vec();
            return Ok(self.done(user, rest));
        }
        self.buf.extend_from_slice(data);
        let Some(hash) = self.buf.get(..HASH_LEN) else {
            if is_http_probe(&self.buf) {
                return Ok(self.reject(WireError::Auth("anytls: not a password hash")));
            }
            return Ok(Step::NeedMore(HASH_LEN - self.buf.len()));
        };
        let Some(user) = ctx.lookup(hash) else {
            return Ok(self.reject(WireError::Auth("anytls: unknown password")));
        };
        let Some(pad) = port_at(&self.buf, HASH_LEN) else {
            return Ok(Step::NeedMore(AUTH_HEAD - self.buf.len()));
        };
        let pad = usize::from(pad);
        let after = self.buf.get(AUTH_HEAD..).unwrap_or_default();
        if after.len() >= pad {
            let rest = after.get(pad..).unwrap_or_default().to_vec();
            self.buf = Vec::new();
            return Ok(self.done(user, rest));
        }
        self.pad_left = pad - after.len();
        self.user = Some(user);
        self.buf = Vec::new();
        Ok(Step::NeedMore(self.pad_left))
    }
}

#[cfg(test)]
mod tests;
