//! Trojan (server side, inside TLS): the request header, parsed incrementally from the
//! decrypted stream.
//!
//! ```text
//! +-----------------------+---------+-----+------+----------+----------+---------+---------+
//! | hex(SHA224(password)) |  CRLF   | CMD | ATYP | DST.ADDR | DST.PORT |  CRLF   | payload |
//! +-----------------------+---------+-----+------+----------+----------+---------+---------+
//! |          56           | 0D 0A   |  1  |  1   | variable |  2 (BE)  | 0D 0A   |   ...   |
//! +-----------------------+---------+-----+------+----------+----------+---------+---------+
//! CMD:  0x01 CONNECT, 0x03 UDP ASSOCIATE
//! ATYP: 0x01 IPv4 (4 B), 0x03 domain (1 B length + name), 0x04 IPv6 (16 B)
//! ```
//!
//! The user is looked up by the 28-byte SHA-224 (`cred::CredKind::TrojanSha224`) as soon as the
//! first 58 bytes are in; after a CONNECT header the stream is unchanged (`codec: None`: TLS is
//! the only framing); after UDP ASSOCIATE it carries packets ([`udp`]). Anything else goes to
//! the node's fallback with every byte read (`Next::Fallback`).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::{AuthContext, Destination, Next, Step, StreamHandshake, WireError};

pub mod udp;

pub const HASH_HEX_LEN: usize = 56;
const CMD_CONNECT: u8 = 1;
const CMD_UDP_ASSOCIATE: u8 = 3;
const ATYP_V4: u8 = 1;
const ATYP_DOMAIN: u8 = 3;
const ATYP_V6: u8 = 4;
/// Longest possible header: hash, CRLF, cmd, atyp, 1 + 255 domain, port, CRLF.
pub const MAX_HEADER: usize = HASH_HEX_LEN + 2 + 2 + 1 + 255 + 2 + 2;

/// Parsed request header.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub hash: [u8; 28],
    pub cmd: u8,
    pub dest: Destination,
    /// Header length (payload starts here).
    pub len: usize,
}

/// Decodes the 56 lower- or upper-case hex characters of the password hash.
pub fn decode_hash(hex56: &[u8]) -> Result<[u8; 28], WireError> {
    let mut out = [0u8; 28];
    if hex56.len() != HASH_HEX_LEN {
        return Err(WireError::Malformed("trojan: hash is not 56 hex characters"));
    }
    hex::decode_to_slice(hex56, &mut out).map_err(|_| WireError::Malformed("trojan: hash is not hex"))?;
    Ok(out)
}

fn port_at(buf: &[u8], at: usize) -> Option<u16> {
    let b = buf.get(at..at + 2)?;
    Some(u16::from_be_bytes([*b.first()?, *b.get(1)?]))
}

/// Address at the start of `buf`: `Ok(None)` while incomplete, else the destination and its
/// length (ATYP included).
fn address(buf: &[u8]) -> Result<Option<(Destination, usize)>, WireError> {
    let Some(&atyp) = buf.first() else {
        return Ok(None);
    };
    let (ip_len, ctor): (usize, fn(&[u8]) -> std::net::IpAddr) = match atyp {
        ATYP_V4 => (4, |b| {
            let mut o = [0u8; 4];
            o.copy_from_slice(b);
            Ipv4Addr::from(o).into()
        }),
        ATYP_V6 => (16, |b| {
            let mut o = [0u8; 16];
            o.copy_from_slice(b);
            Ipv6Addr::from(o).into()
        }),
        ATYP_DOMAIN => {
            let Some(&n) = buf.get(1) else {
                return Ok(None);
            };
            let n = usize::from(n);
            if n == 0 {
                return Err(WireError::Malformed("trojan: empty domain"));
            }
            let (Some(name), Some(port)) = (buf.get(2..2 + n), port_at(buf, 2 + n)) else {
                return Ok(None);
            };
            let name =
                std::str::from_utf8(name).map_err(|_| WireError::Malformed("trojan: domain is not UTF-8"))?;
            return Ok(Some((Destination::Domain(name.to_string(), port), 2 + n + 2)));
        }
        _ => return Err(WireError::Malformed("trojan: unknown address type")),
    };
    let (Some(ip), Some(port)) = (buf.get(1..1 + ip_len), port_at(buf, 1 + ip_len)) else {
        return Ok(None);
    };
    Ok(Some((
        Destination::Ip(SocketAddr::new(ctor(ip), port)),
        1 + ip_len + 2,
    )))
}

/// Parses the header from the start of `buf`: `Ok(None)` while incomplete.
pub fn parse_request(buf: &[u8]) -> Result<Option<Request>, WireError> {
    let Some(h) = buf.get(..HASH_HEX_LEN) else {
        return Ok(None);
    };
    let hash = decode_hash(h)?;
    let rest = buf.get(HASH_HEX_LEN..).unwrap_or_default();
    match rest.get(..2) {
        None => return Ok(None),
        Some(b"\r\n") => {}
        Some(_) => return Err(WireError::Malformed("trojan: no CRLF after the hash")),
    }
    let Some(&cmd) = rest.get(2) else {
        return Ok(None);
    };
    if cmd != CMD_CONNECT && cmd != CMD_UDP_ASSOCIATE {
        return Err(WireError::Malformed("trojan: unknown command"));
    }
    let Some((dest, alen)) = address(rest.get(3..).unwrap_or_default())? else {
        return Ok(None);
    };
    let end = HASH_HEX_LEN + 3 + alen;
    match buf.get(end..end + 2) {
        None => Ok(None),
        Some(b"\r\n") => Ok(Some(Request {
            hash,
            cmd,
            dest,
            len: end + 2,
        })),
        Some(_) => Err(WireError::Malformed("trojan: no CRLF after the request")),
    }
}

/// One connection's header state.
#[derive(Default)]
pub struct TrojanHandshake {
    buf: Vec<u8>,
    authed: bool,
}

impl TrojanHandshake {
    /// Not ours: the node's fallback gets every byte read so far (xray/trojan-gfw behaviour);
    /// without one the core looks like a server still waiting for more bytes.
    fn reject(&mut self, error: WireError) -> Step {
        Step::Done(Next::Fallback {
            error,
            consumed: std::mem::take(&mut self.buf),
        })
    }
}

impl StreamHandshake for TrojanHandshake {
    fn feed(&mut self, data: &[u8], ctx: &dyn AuthContext) -> Result<Step, WireError> {
        self.buf.extend_from_slice(data);
        if !self.authed {
            // A probe (an HTTP request, say) goes to the fallback as soon as a byte shows it is
            // not a hex hash, not after 56 bytes that may never come.
            if !self.buf.iter().take(HASH_HEX_LEN).all(u8::is_ascii_hexdigit) {
                return Ok(self.reject(WireError::Auth("trojan: not a password hash")));
            }
            let Some(h) = self.buf.get(..HASH_HEX_LEN) else {
                return Ok(Step::NeedMore(HASH_HEX_LEN - self.buf.len()));
            };
            let Ok(hash) = decode_hash(h) else {
                return Ok(self.reject(WireError::Auth("trojan: not a password hash")));
            };
            if ctx.lookup(&hash).is_none() {
                return Ok(self.reject(WireError::Auth("trojan: unknown password")));
            }
            self.authed = true;
        }
        let req = match parse_request(&self.buf) {
            Ok(Some(r)) => r,
            Ok(None) if self.buf.len() < MAX_HEADER => return Ok(Step::NeedMore(0)),
            Ok(None) => return Ok(self.reject(WireError::Malformed("trojan: header too long"))),
            Err(e) => return Ok(self.reject(e)),
        };
        let Some(user) = ctx.lookup(&req.hash) else {
            return Ok(self.reject(WireError::Auth("trojan: unknown password")));
        };
        let initial_upload = self.buf.get(req.len..).unwrap_or_default().to_vec();
        self.buf = Vec::new();
        if req.cmd == CMD_UDP_ASSOCIATE {
            return Ok(Step::Done(Next::UdpOverStream {
                user,
                reply: Vec::new(),
                initial: initial_upload,
                codec: Box::new(udp::TrojanUdp),
                framing: None,
            }));
        }
        Ok(Step::Done(Next::Forward {
            dest: req.dest,
            user,
            initial_upload,
            reply: Vec::new(),
            codec: None,
        }))
    }
}

#[cfg(test)]
mod tests;
